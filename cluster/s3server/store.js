'use strict';
// s3rver's filesystem store, made safe for a server that other processes rely on:
//   - objects and parts are written to a temporary file and renamed into place, so a reader
//     never sees a half-written object and a failed or rejected upload leaves nothing behind
//     (s3rver writes in place, and answers before the file is flushed);
//   - conditional writes as S3 does them: PutObject, CompleteMultipartUpload and CopyObject with
//     If-None-Match: * or If-Match: <etag>, DeleteObject with If-Match. The condition is evaluated
//     and the write committed while holding a per-key lock, so two writers racing with the same
//     If-Match ETag cannot both succeed (this process is the only writer of its data directory);
//   - multipart uploads behave like S3: unknown upload ids give NoSuchUpload, CompleteMultipartUpload
//     checks part order, part ETags and the 5 MiB minimum part size, the ETag is MD5-of-MD5s + "-N",
//     a conditional completion answers 409 ConditionalRequestConflict when the key was written
//     after the upload started, and uploads can be listed and aborted;
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
const UPLOAD_STATE_FILE = 'key-state.json'; // what the key held when the upload started
const TEMP_MARKER = /\.tmp-[0-9a-f]{12}$/;
const MIN_PART_SIZE = 5 * 1024 * 1024;

const PRECONDITION_MESSAGE = 'At least one of the pre-conditions you specified did not hold';

// An S3 error with an explicit status (S3Error derives it from a table that lacks some codes).
function s3Error(code, status, message, detail) {
  const err = new S3Error(code, message, detail);
  err.status = status;
  return err;
}

const preconditionFailed = condition =>
  s3Error('PreconditionFailed', 412, PRECONDITION_MESSAGE, { Condition: condition });
const noSuchKey = key => s3Error('NoSuchKey', 404, 'The specified key does not exist.', { Key: key });
const conditionalConflict = (condition, key) => s3Error('ConditionalRequestConflict', 409,
  'The conditional request cannot succeed due to a conflicting operation against this resource.',
  { Condition: condition, Key: key });

// S3 compares ETags without their quotes: "abc" and abc are the same tag.
const unquote = etag => String(etag).replace(/^"+|"+$/g, '');

function tempPathFor(finalPath) {
  return `${finalPath}.tmp-${crypto.randomBytes(6).toString('hex')}`;
}

async function removeQuietly(filePath) {
  await fsp.rm(filePath, { force: true });
}

// Opens a new file for writing next to `finalPath`, creating its folder. A delete of a sibling
// key may prune the (empty) folder between the mkdir and the open: then the folder is made again.
async function openTemp(finalPath) {
  for (let attempt = 0; ; attempt += 1) {
    await fsp.mkdir(path.dirname(finalPath), { recursive: true });
    const tempPath = tempPathFor(finalPath);
    try {
      return { tempPath, handle: await fsp.open(tempPath, 'wx') };
    } catch (err) {
      if (err.code !== 'ENOENT' || attempt >= 3) throw err;
    }
  }
}

// Streams `content` into a temporary file next to `finalPath`; returns its path, size and MD5.
async function writeTemp(finalPath, content) {
  const { tempPath, handle } = await openTemp(finalPath);
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
    await pipeline(content, measure, handle.createWriteStream());
  } catch (err) {
    await handle.close().catch(() => {});
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

// Stored metadata: the system headers s3rver keeps plus the x-amz-meta-* ones.
function storableMetadata(metadata) {
  return {
    ...Object.fromEntries(Object.entries(metadata).filter(([name]) => S3Object.ALLOWED_METADATA.includes(name))),
    ...Object.fromEntries(Object.entries(metadata).filter(([name]) => name.startsWith('x-amz-meta-'))),
  };
}

/**
 * A write condition, as S3 evaluates it when the write commits:
 *   {ifNoneMatch: '*'}   the key must be free, else 412 PreconditionFailed (If-None-Match);
 *   {ifMatch: etag}      the key must hold an object with this ETag (quotes ignored): no object is
 *                        404 NoSuchKey, another ETag 412 PreconditionFailed (If-Match).
 * `since` (CompleteMultipartUpload only) is the key's state when the upload started: a write to
 * the key after that makes an otherwise satisfied condition 409 ConditionalRequestConflict, and so
 * does If-None-Match on a key that held an object then and is free now.
 * @typedef {{ifMatch?: string, ifNoneMatch?: string, since?: object | null}} WriteCondition
 */

class AtomicFilesystemStore extends FilesystemStore {
  constructor(rootDirectory) {
    super(rootDirectory);
    this.keyLocks = new Map(); // final object path -> tail of the promise chain of its commits
  }

  // Runs fn() after every earlier locked operation on the same path finished.
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

  // What the key holds now: null, or its ETag (unquoted) and the identity of its file (a new one
  // for every write: commits rename a fresh file into place).
  async keyState(bucket, key) {
    const objectPath = this.getResourcePath(bucket, key, 'object');
    let stat;
    try {
      stat = await fsp.stat(objectPath, { bigint: true });
    } catch (err) {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return null;
      throw err;
    }
    let etag = await fsp.readFile(`${objectPath}.md5`, 'utf8').catch(err =>
      (err.code === 'ENOENT' ? null : Promise.reject(err)));
    if (etag === null) {
      // written by plain s3rver: its getMetadata computes and stores the MD5
      const meta = await this.getMetadata(bucket, key).catch(err => (err.code === 'ENOENT' ? null : Promise.reject(err)));
      if (meta === null) return null;
      etag = meta.etag;
    }
    return {
      etag: unquote(etag),
      id: `${stat.dev}:${stat.ino}:${stat.mtimeNs}:${stat.size}`,
      size: Number(stat.size),
      lastModified: new Date(Number(stat.mtimeMs)),
    };
  }

  // Throws the S3 error of a condition that does not hold for `state` (see WriteCondition).
  static checkCondition(key, state, condition) {
    if (!condition) return;
    const { ifMatch, ifNoneMatch, since } = condition;
    if (ifNoneMatch !== undefined) {
      if (state) throw preconditionFailed('If-None-Match');
      if (since) throw conditionalConflict('If-None-Match', key); // it existed when the upload began
    }
    if (ifMatch !== undefined) {
      if (!state) throw noSuchKey(key);
      if (ifMatch !== '*' && unquote(ifMatch) !== state.etag) throw preconditionFailed('If-Match');
      if (since !== undefined && (since === null || since.id !== state.id)) {
        throw conditionalConflict('If-Match', key); // written since the upload began
      }
    }
  }

  // Evaluates a condition now, without the lock: to refuse a doomed write before doing its work.
  async precheck(bucket, key, condition) {
    if (condition) AtomicFilesystemStore.checkCondition(key, await this.keyState(bucket, key), condition);
  }

  // Commits a written temp file as an object, if `condition` holds when the commit runs. The
  // metadata goes first: a reader that finds the object file finds its metadata too. Readers that
  // take the key's lock (getObject) never see the instant between the renames. Returns the state
  // of the new object.
  async commitObject(bucket, key, tempPath, metadata, etag, { condition } = {}) {
    const objectPath = this.getResourcePath(bucket, key, 'object');
    try {
      return await this.withKeyLock(objectPath, async () => {
        if (condition) AtomicFilesystemStore.checkCondition(key, await this.keyState(bucket, key), condition);
        await writeFileAtomic(this.getResourcePath(bucket, key, 'metadata.json'),
          JSON.stringify(storableMetadata(metadata), null, 2));
        await writeFileAtomic(this.getResourcePath(bucket, key, 'object.md5'), etag);
        await fsp.rename(tempPath, objectPath);
        return this.keyState(bucket, key);
      });
    } finally {
      await removeQuietly(tempPath); // no-op after a successful rename
    }
  }

  // GetObject and HeadObject: s3rver's, with the metadata (ETag, size) read and the file opened
  // under the key's lock, so that no commit runs between the two. Once open, the file's bytes stay
  // those of that commit however the key changes. Without the lock a reader could pair one
  // commit's ETag with another's bytes (and then pass an If-Match with stale data) or send a
  // Content-Length that is not the length of the bytes it streams.
  async getObject(bucket, key, options) {
    return this.withKeyLock(this.getResourcePath(bucket, key, 'object'), () => super.getObject(bucket, key, options));
  }

  /** @param {{condition?: WriteCondition}} [options] */
  async putObject(object, { condition } = {}) {
    const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
    const { tempPath, size, md5 } = await writeTemp(objectPath, object.content);
    const etag = md5.toString('hex');
    await this.commitObject(object.bucket, object.key, tempPath, object.metadata, etag, { condition });
    return { size, md5: etag };
  }

  // The stored metadata of an object (what a COPY metadata directive carries over); {} if none.
  async getStoredMetadata(bucket, key) {
    const text = await fsp.readFile(this.getResourcePath(bucket, key, 'metadata.json'), 'utf8').catch(err =>
      (err.code === 'ENOENT' ? '{}' : Promise.reject(err)));
    return JSON.parse(text);
  }

  /**
   * The source of a copy: its state, stored metadata and an open handle on its file, all taken
   * under the key's lock (so they belong to one commit); null if there is no object. The caller
   * closes the handle (a stream made with handle.createReadStream() closes it when it ends).
   */
  async openObject(bucket, key) {
    const objectPath = this.getResourcePath(bucket, key, 'object');
    return this.withKeyLock(objectPath, async () => {
      const state = await this.keyState(bucket, key);
      if (!state) return null;
      const metadata = await this.getStoredMetadata(bucket, key);
      try {
        return { state, metadata, handle: await fsp.open(objectPath, 'r') };
      } catch (err) {
        if (err.code === 'ENOENT') return null;
        throw err;
      }
    });
  }

  /**
   * Server-side copy: the bytes of an opened source (see openObject) become a new object at the
   * destination (a fresh MD5 ETag, as S3 gives a CopyObject result), committed under the
   * destination's lock if `condition` holds. `metadata` is what the destination gets. Returns the
   * new object's state.
   */
  async copyObjectAtomic(source, destBucket, destKey, metadata, { condition } = {}) {
    await this.precheck(destBucket, destKey, condition);
    const destPath = this.getResourcePath(destBucket, destKey, 'object');
    const { tempPath, md5 } = await writeTemp(destPath, source.handle.createReadStream());
    return this.commitObject(destBucket, destKey, tempPath, metadata, md5.toString('hex'), { condition });
  }

  /**
   * DeleteObject, under the key's lock. With `ifMatch` (an ETag or '*') the key must hold a
   * matching object: none is 404 NoSuchKey, another ETag 412 PreconditionFailed. Without it a
   * missing key is not an error. Returns whether an object was removed.
   */
  async deleteObjectLocked(bucket, key, { ifMatch } = {}) {
    const objectPath = this.getResourcePath(bucket, key, 'object');
    const removed = await this.withKeyLock(objectPath, async () => {
      const state = await this.keyState(bucket, key);
      if (ifMatch !== undefined) AtomicFilesystemStore.checkCondition(key, state, { ifMatch });
      if (!state) return false;
      await removeQuietly(objectPath); // first: a reader that still finds the object finds its metadata
      await Promise.all([
        removeQuietly(this.getResourcePath(bucket, key, 'object.md5')),
        removeQuietly(this.getResourcePath(bucket, key, 'metadata.json')),
      ]);
      return true;
    });
    if (removed) await this.pruneEmptyFolders(bucket, key);
    return removed;
  }

  // Removes the folders of a deleted key that became empty (a concurrent writer's folder is not
  // empty, or is made again by openTemp).
  async pruneEmptyFolders(bucket, key) {
    const bucketPath = this.getBucketPath(bucket);
    const parts = key.split('/').slice(0, -1);
    while (parts.length) {
      try {
        await fsp.rmdir(path.join(bucketPath, ...parts));
      } catch (err) {
        if (['ENOTEMPTY', 'EEXIST', 'ENOENT', 'ENOTDIR'].includes(err.code)) return;
        throw err;
      }
      parts.pop();
    }
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

  // UploadPartCopy: bytes range.start..range.end (inclusive) of an opened source (see openObject),
  // or all of it without a range, become part N.
  async putPartCopy(bucket, uploadId, partNumber, source, range) {
    const { md5 } = await this.putPart(bucket, uploadId, partNumber, source.handle.createReadStream(range));
    const partPath = path.join(this.uploadDir(bucket, uploadId), String(Number(partNumber)));
    return { md5, lastModified: (await fsp.stat(partPath)).mtime };
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

  // Starts an upload as s3rver does, first noting what the key holds (see WriteCondition.since).
  async initiateUpload(bucket, key, uploadId, metadata) {
    const dir = this.uploadDir(bucket, uploadId);
    await fsp.mkdir(dir, { recursive: true });
    const state = await this.keyState(bucket, key);
    await fsp.writeFile(path.join(dir, UPLOAD_STATE_FILE), JSON.stringify(state && { id: state.id }));
    await super.initiateUpload(bucket, key, uploadId, metadata);
  }

  // The key's state when the upload started: null (free), {id}, or undefined (not recorded).
  async uploadStartState(upload) {
    const text = await fsp.readFile(path.join(upload.dir, UPLOAD_STATE_FILE), 'utf8').catch(err =>
      (err.code === 'ENOENT' ? undefined : Promise.reject(err)));
    return text === undefined ? undefined : JSON.parse(text);
  }

  /**
   * CompleteMultipartUpload. With a `condition` (If-None-Match: * or If-Match) that does not hold
   * when the object would commit, nothing is written and the upload stays, so that it can be
   * completed again or aborted (as S3 does).
   * @param {{condition?: {ifMatch?: string, ifNoneMatch?: string}}} [options]
   */
  async putObjectMultipart(bucket, uploadId, parts, { condition } = {}) {
    const upload = await this.getUpload(bucket, uploadId);
    const metadata = JSON.parse(await fsp.readFile(path.join(upload.dir, 'metadata'), 'utf8'));
    const fullCondition = condition && { ...condition, since: await this.uploadStartState(upload) };
    await this.precheck(bucket, upload.key, fullCondition); // before assembling the object
    const checked = await this.checkParts(upload.dir, parts);

    const objectPath = this.getResourcePath(bucket, upload.key, 'object');
    async function* concatenated() {
      for (const part of checked) yield* fs.createReadStream(part.path);
    }
    const { tempPath, size } = await writeTemp(objectPath, concatenated());
    const md5OfMd5s = crypto.createHash('md5');
    for (const part of checked) md5OfMd5s.update(Buffer.from(part.etag, 'hex'));
    const etag = `${md5OfMd5s.digest('hex')}-${checked.length}`;

    await this.commitObject(bucket, upload.key, tempPath, metadata, etag, { condition: fullCondition });
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

module.exports = { AtomicFilesystemStore, compareUtf8, s3Error, noSuchKey, preconditionFailed, unquote, MIN_PART_SIZE };
