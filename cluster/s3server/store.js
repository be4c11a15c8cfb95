'use strict';
// s3rver's filesystem store, made safe for a server that other processes rely on:
//   - objects and parts are written to a temporary file and renamed into place, so a reader
//     never sees a half-written object and a failed or rejected upload leaves nothing behind
//     (s3rver writes in place, and answers before the file is flushed);
//   - PUT with If-None-Match: * commits only if the key is free (one lock per key: this process is
//     the only writer of its data directory);
//   - multipart uploads behave like S3: unknown upload ids give NoSuchUpload, CompleteMultipartUpload
//     checks part order, part ETags and the 5 MiB minimum part size, the ETag is MD5-of-MD5s + "-N",
//     and uploads can be listed and aborted;
//   - keys are listed in UTF-8 byte order, as S3 does (s3rver walks directories in readdir order,
//     which puts "a/b" before "a-c" and makes paginated listings skip keys).
// Objects live where s3rver keeps them (<root>/<bucket>/<key>._S3rver_object plus .md5 and
// metadata.json), so a data directory written by plain s3rver stays readable.

const crypto = require('crypto');
const fs = require('fs');
const fsp = require('fs/promises');
const path = require('path');
const { Transform } = require('stream');
const { pipeline } = require('stream/promises');

const FilesystemStore = require('s3rver/lib/stores/filesystem');
const S3Error = require('s3rver/lib/models/error');
const S3Object = require('s3rver/lib/models/object');

const OBJECT_SUFFIX = '._S3rver_object';
const UPLOADS_DIR = '._S3rver_uploads';
const TEMP_MARKER = /\.tmp-[0-9a-f]{12}$/;
const MIN_PART_SIZE = 5 * 1024 * 1024;

function tempPathFor(finalPath) {
  return `${finalPath}.tmp-${crypto.randomBytes(6).toString('hex')}`;
}

async function removeQuietly(filePath) {
  await fsp.rm(filePath, { force: true });
}

// Streams `content` into a temporary file next to `finalPath`; returns its path, size and MD5.
async function writeTemp(finalPath, content) {
  await fsp.mkdir(path.dirname(finalPath), { recursive: true });
  const tempPath = tempPathFor(finalPath);
  const md5 = crypto.createHash('md5');
  let size = 0;
  const measure = new Transform({
    transform(chunk, encoding, callback) {
      md5.update(chunk);
      size += chunk.length;
      callback(null, chunk);
    },
  });
  try {
    await pipeline(content, measure, fs.createWriteStream(tempPath));
  } catch (err) {
    await removeQuietly(tempPath);
    throw err;
  }
  return { tempPath, size, md5: md5.digest() };
}

async function writeFileAtomic(finalPath, data) {
  const tempPath = tempPathFor(finalPath);
  await fsp.writeFile(tempPath, data);
  await fsp.rename(tempPath, finalPath);
}

function compareUtf8(a, b) {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

class AtomicFilesystemStore extends FilesystemStore {
  constructor(rootDirectory) {
    super(rootDirectory);
    this.keyLocks = new Map(); // final object path -> tail of the promise chain of its commits
  }

  // Runs fn() after every earlier commit of the same path finished.
  async withKeyLock(objectPath, fn) {
    const previous = this.keyLocks.get(objectPath) || Promise.resolve();
    const current = previous.catch(() => {}).then(fn);
    const tail = current.catch(() => {});
    this.keyLocks.set(objectPath, tail);
    try {
      return await current;
    } finally {
      if (this.keyLocks.get(objectPath) === tail) this.keyLocks.delete(objectPath);
    }
  }

  // Commits a written temp file as an object. The metadata goes first: a reader that finds the
  // object file finds its metadata too (an overwrite shows new metadata with the old bytes for
  // the instant between the two renames).
  async commitObject(bucket, key, tempPath, metadata, etag, { createOnly = false } = {}) {
    const objectPath = this.getResourcePath(bucket, key, 'object');
    try {
      await this.withKeyLock(objectPath, async () => {
        if (createOnly && (await this.existsObject(bucket, key))) {
          throw new S3Error('PreconditionFailed',
            'At least one of the pre-conditions you specified did not hold',
            { Condition: 'If-None-Match' });
        }
        const json = {
          ...Object.fromEntries(Object.entries(metadata).filter(([name]) => S3Object.ALLOWED_METADATA.includes(name))),
          ...Object.fromEntries(Object.entries(metadata).filter(([name]) => name.startsWith('x-amz-meta-'))),
        };
        await writeFileAtomic(this.getResourcePath(bucket, key, 'metadata.json'), JSON.stringify(json, null, 2));
        await writeFileAtomic(this.getResourcePath(bucket, key, 'object.md5'), etag);
        await fsp.rename(tempPath, objectPath);
      });
    } finally {
      await removeQuietly(tempPath); // no-op after a successful rename
    }
  }

  async putObject(object, { createOnly = false } = {}) {
    const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
    const { tempPath, size, md5 } = await writeTemp(objectPath, object.content);
    const etag = md5.toString('hex');
    await this.commitObject(object.bucket, object.key, tempPath, object.metadata, etag, { createOnly });
    return { size, md5: etag };
  }

  uploadDir(bucket, uploadId) {
    return path.join(this.getBucketPath(bucket), UPLOADS_DIR, uploadId);
  }

  // The upload's key and start time, or a NoSuchUpload error.
  async getUpload(bucket, uploadId) {
    const dir = this.uploadDir(bucket, uploadId);
    try {
      const keyFile = path.join(dir, 'key');
      const [key, stat] = await Promise.all([fsp.readFile(keyFile, 'utf8'), fsp.stat(keyFile)]);
      return { uploadId, key, initiated: stat.mtime, dir };
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
      throw new S3Error('NoSuchUpload',
        'The specified upload does not exist. The upload ID may be invalid, or the upload may ' +
        'have been aborted or completed.', { UploadId: uploadId });
    }
  }

  async putPart(bucket, uploadId, partNumber, content) {
    const { dir } = await this.getUpload(bucket, uploadId);
    const partPath = path.join(dir, String(Number(partNumber)));
    const { tempPath, size, md5 } = await writeTemp(partPath, content);
    const etag = md5.toString('hex');
    await writeFileAtomic(`${partPath}.md5`, etag);
    await fsp.rename(tempPath, partPath);
    return { size, md5: etag };
  }

  async checkParts(dir, parts) {
    if (parts.length === 0) {
      throw new S3Error('MalformedXML', 'The XML you provided did not list any part.');
    }
    const stats = [];
    for (const [index, part] of parts.entries()) {
      if (index > 0 && part.number <= parts[index - 1].number) {
        throw new S3Error('InvalidPartOrder',
          'The list of parts was not in ascending order. Parts must be ordered by part number.');
      }
      const partPath = path.join(dir, String(part.number));
      const storedEtag = await fsp.readFile(`${partPath}.md5`, 'utf8').catch(() => null);
      if (storedEtag === null || storedEtag !== part.etag) {
        throw new S3Error('InvalidPart',
          'One or more of the specified parts could not be found. The part may not have been ' +
          "uploaded, or the specified entity tag may not match the part's entity tag.",
          { PartNumber: part.number, ETag: part.etag });
      }
      stats.push({ ...part, path: partPath, size: (await fsp.stat(partPath)).size });
    }
    for (const part of stats.slice(0, -1)) {
      if (part.size < MIN_PART_SIZE) {
        throw new S3Error('EntityTooSmall',
          'Your proposed upload is smaller than the minimum allowed object size.',
          { PartNumber: part.number, ProposedSize: part.size, MinSizeAllowed: MIN_PART_SIZE });
      }
    }
    return stats;
  }

  async putObjectMultipart(bucket, uploadId, parts) {
    const upload = await this.getUpload(bucket, uploadId);
    const metadata = JSON.parse(await fsp.readFile(path.join(upload.dir, 'metadata'), 'utf8'));
    const checked = await this.checkParts(upload.dir, parts);

    const objectPath = this.getResourcePath(bucket, upload.key, 'object');
    async function* concatenated() {
      for (const part of checked) yield* fs.createReadStream(part.path);
    }
    const { tempPath, size } = await writeTemp(objectPath, concatenated());
    const md5OfMd5s = crypto.createHash('md5');
    for (const part of checked) md5OfMd5s.update(Buffer.from(part.etag, 'hex'));
    const etag = `${md5OfMd5s.digest('hex')}-${checked.length}`;

    await this.commitObject(bucket, upload.key, tempPath, metadata, etag);
    await fsp.rm(upload.dir, { recursive: true, force: true });
    return { size, md5: etag };
  }

  async abortUpload(bucket, uploadId) {
    const { dir } = await this.getUpload(bucket, uploadId);
    await fsp.rm(dir, { recursive: true, force: true });
  }

  async listUploads(bucket) {
    const root = path.join(this.getBucketPath(bucket), UPLOADS_DIR);
    const ids = await fsp.readdir(root).catch(err => (err.code === 'ENOENT' ? [] : Promise.reject(err)));
    const uploads = [];
    for (const uploadId of ids) {
      try {
        uploads.push(await this.getUpload(bucket, uploadId));
      } catch (err) {
        if (err.code !== 'NoSuchUpload') throw err; // completed or aborted meanwhile
      }
    }
    return uploads.sort((a, b) => compareUtf8(a.key, b.key) || compareUtf8(a.uploadId, b.uploadId));
  }

  // Every key of the bucket that starts with prefix, in UTF-8 byte order.
  async listKeys(bucket, prefix) {
    const bucketPath = this.getBucketPath(bucket);
    const startDir = prefix.slice(0, prefix.lastIndexOf('/') + 1); // deepest folder the prefix fixes
    const keys = [];
    const walk = async relDir => {
      let entries;
      try {
        entries = await fsp.readdir(path.join(bucketPath, relDir), { withFileTypes: true });
      } catch (err) {
        if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return;
        throw err;
      }
      for (const entry of entries) {
        const rel = relDir + entry.name;
        if (entry.isDirectory()) {
          if (rel !== UPLOADS_DIR) await walk(`${rel}/`);
        } else if (entry.name.endsWith(OBJECT_SUFFIX)) {
          const key = rel.slice(0, -OBJECT_SUFFIX.length);
          if (key.startsWith(prefix)) keys.push(key);
        }
      }
    };
    await walk(startDir);
    return keys.sort(compareUtf8);
  }

  // Removes temporary files left by a process that was killed while writing.
  async sweepTempFiles() {
    const sweep = async dir => {
      const entries = await fsp.readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const entry of entries) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await sweep(full);
        else if (TEMP_MARKER.test(entry.name)) await removeQuietly(full);
      }
    };
    await sweep(this.rootDirectory);
  }
}

module.exports = { AtomicFilesystemStore, compareUtf8, MIN_PART_SIZE };
