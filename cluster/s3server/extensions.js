'use strict';
// The Koa middleware that runs in front of s3rver's router: SigV4 verification of every request
// (s3rver accepts any V4 signature), checks of signed bodies as they stream, and the S3 operations
// s3rver lacks or gets wrong for Tessera (PutObject with If-None-Match, ListObjects/ListObjectsV2
// in byte order with working continuation tokens, ListMultipartUploads, AbortMultipartUpload).
// Everything else falls through to s3rver.

const crypto = require('crypto');
const { Transform, pipeline } = require('stream');

const S3Error = require('s3rver/lib/models/error');
const S3Object = require('s3rver/lib/models/object');
const { verifySigV4, SigV4Error, UNSIGNED_PAYLOAD, EMPTY_SHA256 } = require('./sigv4');
const { compareUtf8 } = require('./store');

const XMLNS = 'http://s3.amazonaws.com/doc/2006-03-01/';
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const isValidBucketName = name => BUCKET_NAME.test(name) && !name.includes('..');

function s3Error(code, status, message, detail) {
  const err = new S3Error(code, message, detail);
  err.status = status; // S3Error derives the status from a table that lacks some codes
  return err;
}

function fromSigV4Error(err) {
  return err instanceof SigV4Error ? s3Error(err.code, err.status, err.message, err.detail) : err;
}

// Path-style only: /<bucket>/<key...>, both percent-decoded.
function parsePath(rawPath) {
  const decoded = decodeURIComponent(rawPath);
  const slash = decoded.indexOf('/', 1);
  if (slash === -1) return { bucket: decoded.slice(1), key: '' };
  return { bucket: decoded.slice(1, slash), key: decoded.slice(slash + 1) };
}

// Keys become file paths: "." and ".." segments would escape the bucket folder and "a//b" would
// alias "a/b", so they are refused (S3 itself accepts them; Tessera never makes them).
function checkKey(key) {
  const segments = key.split('/');
  const bad = segments.some((segment, i) =>
    segment === '.' || segment === '..' || (segment === '' && i < segments.length - 1));
  if (bad || key.length > 1024) {
    throw s3Error('InvalidArgument', 400,
      'This server does not accept keys longer than 1024 bytes or with empty, "." or ".." segments.',
      { ArgumentName: 'key', ArgumentValue: key });
  }
}

function hasBody(req) {
  return 'transfer-encoding' in req.headers || Number(req.headers['content-length'] || 0) > 0;
}

// Passes the body through and fails the stream at its end when it does not match the signed
// SHA-256 or the Content-MD5 header; the store then discards what it wrote.
function checkedBody(req, sha256Hex, md5Base64) {
  const sha256 = sha256Hex ? crypto.createHash('sha256') : null;
  const md5 = md5Base64 ? crypto.createHash('md5') : null;
  const check = new Transform({
    transform(chunk, encoding, callback) {
      if (sha256) sha256.update(chunk);
      if (md5) md5.update(chunk);
      callback(null, chunk);
    },
    flush(callback) {
      if (sha256 && sha256.digest('hex') !== sha256Hex) {
        return callback(s3Error('XAmzContentSHA256Mismatch', 400,
          "The provided 'x-amz-content-sha256' header does not match what was computed.",
          { ClientComputedContentSHA256: sha256Hex }));
      }
      if (md5 && md5.digest('base64') !== md5Base64) {
        return callback(s3Error('BadDigest', 400,
          'The Content-MD5 you specified did not match what we received.',
          { ExpectedDigest: md5Base64 }));
      }
      callback();
    },
  });
  pipeline(req, check, () => {}); // errors reach whoever reads `check`
  return check;
}

function authenticate(ctx, lookupSecret) {
  let identity;
  try {
    identity = verifySigV4(
      { method: ctx.method, url: ctx.req.url, rawHeaders: ctx.req.rawHeaders },
      { lookupSecret },
    );
  } catch (err) {
    throw fromSigV4Error(err);
  }
  const sha256Hex = identity.payloadHash === UNSIGNED_PAYLOAD ? null : identity.payloadHash;
  const md5Base64 = ctx.get('content-md5') || null;
  if (hasBody(ctx.req)) {
    if (sha256Hex || md5Base64) ctx.req = checkedBody(ctx.req, sha256Hex, md5Base64);
  } else if (sha256Hex && sha256Hex !== EMPTY_SHA256) {
    throw s3Error('XAmzContentSHA256Mismatch', 400,
      "The provided 'x-amz-content-sha256' header does not match what was computed.",
      { ClientComputedContentSHA256: sha256Hex });
  }
  return identity;
}

async function requireBucket(store, bucket) {
  if (!(await store.getBucket(bucket))) {
    throw s3Error('NoSuchBucket', 404, 'The specified bucket does not exist', { BucketName: bucket });
  }
}

async function putObject(ctx, store, bucket, key) {
  const ifNoneMatch = ctx.get('if-none-match');
  if ((ifNoneMatch && ifNoneMatch !== '*') || ctx.get('if-match')) {
    throw s3Error('NotImplemented', 501, 'Only the condition If-None-Match: * is supported on PUT.');
  }
  const object = new S3Object(bucket, key, ctx.req, ctx.headers);
  const { md5 } = await store.putObject(object, { createOnly: ifNoneMatch === '*' });
  ctx.etag = md5;
  ctx.body = '';
}

// S3's encoding-type=url: form encoding, as botocore decodes it (unquote_plus).
function listEncoder(query) {
  if (query['encoding-type'] === undefined) return text => text;
  if (query['encoding-type'] !== 'url') {
    throw s3Error('InvalidArgument', 400, 'Invalid Encoding Method specified in Request',
      { ArgumentName: 'encoding-type', ArgumentValue: query['encoding-type'] });
  }
  return text => (text === undefined ? undefined : encodeURIComponent(text).replace(/%20/g, '+'));
}

function parseMaxKeys(text, name) {
  if (text === undefined) return 1000;
  if (!/^\d+$/.test(text)) {
    throw s3Error('InvalidArgument', 400, `Provided ${name} not an integer or within integer range`,
      { ArgumentName: name, ArgumentValue: text });
  }
  return Math.min(1000, Number(text));
}

// Walks the sorted keys after `marker`, folding keys into common prefixes when a delimiter is
// given; a marker that is itself a common prefix skips every key under it.
function pageOfKeys(keys, { prefix, delimiter, marker, maxKeys }) {
  const items = [];
  let isTruncated = false;
  for (const key of keys) {
    if (marker && compareUtf8(key, marker) <= 0) continue;
    if (marker && delimiter && marker.endsWith(delimiter) && key.startsWith(marker)) continue;
    let commonPrefix;
    if (delimiter) {
      const at = key.indexOf(delimiter, prefix.length);
      if (at !== -1) commonPrefix = key.slice(0, at + delimiter.length);
    }
    const last = items[items.length - 1];
    if (commonPrefix && last && last.commonPrefix === commonPrefix) continue;
    if (items.length === maxKeys) {
      isTruncated = true;
      break;
    }
    items.push(commonPrefix ? { commonPrefix } : { key });
  }
  const last = items[items.length - 1];
  const nextMarker = isTruncated && last ? last.key ?? last.commonPrefix : undefined;
  return { items, isTruncated, nextMarker };
}

async function listObjects(ctx, store, bucket) {
  await requireBucket(store, bucket);
  const query = ctx.query;
  const v2 = query['list-type'] === '2';
  const encode = listEncoder(query);
  const prefix = query.prefix || '';
  const delimiter = query.delimiter || '';
  const maxKeys = parseMaxKeys(query['max-keys'], 'max-keys');
  let marker = v2 ? query['start-after'] || '' : query.marker || '';
  if (v2 && query['continuation-token']) {
    marker = Buffer.from(query['continuation-token'], 'base64url').toString('utf8');
  }

  const keys = maxKeys === 0 ? [] : await store.listKeys(bucket, prefix);
  const page = pageOfKeys(keys, { prefix, delimiter, marker, maxKeys });
  const contents = [];
  for (const { key } of page.items.filter(item => item.key !== undefined)) {
    const meta = await store.getMetadata(bucket, key).catch(err => (err.code === 'ENOENT' ? null : Promise.reject(err)));
    if (!meta) continue; // deleted since the listing
    contents.push({
      Key: encode(key),
      LastModified: new Date(meta['last-modified']).toISOString(),
      ETag: meta.etag,
      Size: meta['content-length'],
      StorageClass: 'STANDARD',
    });
  }
  const commonPrefixes = page.items
    .filter(item => item.commonPrefix !== undefined)
    .map(item => ({ Prefix: encode(item.commonPrefix) }));

  const shared = {
    Name: bucket,
    Prefix: encode(prefix),
    Delimiter: delimiter ? encode(delimiter) : undefined,
    MaxKeys: maxKeys,
    EncodingType: query['encoding-type'],
    IsTruncated: page.isTruncated,
    Contents: contents,
    CommonPrefixes: commonPrefixes,
  };
  const flavour = v2
    ? {
        StartAfter: query['start-after'] ? encode(query['start-after']) : undefined,
        ContinuationToken: query['continuation-token'],
        NextContinuationToken: page.nextMarker && Buffer.from(page.nextMarker, 'utf8').toString('base64url'),
        KeyCount: page.items.length,
      }
    : { Marker: encode(query.marker || ''), NextMarker: encode(page.nextMarker) };
  ctx.body = { ListBucketResult: { '@': { xmlns: XMLNS }, ...shared, ...flavour } };
}

async function listMultipartUploads(ctx, store, bucket) {
  await requireBucket(store, bucket);
  const query = ctx.query;
  const encode = listEncoder(query);
  const prefix = query.prefix || '';
  const maxUploads = parseMaxKeys(query['max-uploads'], 'max-uploads');
  const keyMarker = query['key-marker'] || '';
  const uploadIdMarker = query['upload-id-marker'] || '';
  const after = upload => {
    const byKey = compareUtf8(upload.key, keyMarker);
    return byKey > 0 || (byKey === 0 && uploadIdMarker !== '' && upload.uploadId > uploadIdMarker);
  };
  const matching = (await store.listUploads(bucket)).filter(
    upload => upload.key.startsWith(prefix) && (keyMarker === '' || after(upload)));
  const page = matching.slice(0, maxUploads);
  const isTruncated = matching.length > page.length;
  const last = page[page.length - 1];
  ctx.body = {
    ListMultipartUploadsResult: {
      '@': { xmlns: XMLNS },
      Bucket: bucket,
      KeyMarker: encode(keyMarker),
      UploadIdMarker: uploadIdMarker,
      NextKeyMarker: isTruncated ? encode(last.key) : undefined,
      NextUploadIdMarker: isTruncated ? last.uploadId : undefined,
      Prefix: encode(prefix),
      MaxUploads: maxUploads,
      EncodingType: query['encoding-type'],
      IsTruncated: isTruncated,
      Upload: page.map(upload => ({
        Key: encode(upload.key),
        UploadId: upload.uploadId,
        Initiated: upload.initiated.toISOString(),
        StorageClass: 'STANDARD',
      })),
    },
  };
}

function checkMultipartQuery(query) {
  if ('uploadId' in query && !/^[0-9a-f]{32}$/.test(query.uploadId)) {
    throw s3Error('NoSuchUpload', 404, 'The specified upload does not exist.', { UploadId: query.uploadId });
  }
  if ('partNumber' in query && !/^([1-9]\d{0,3}|10000)$/.test(query.partNumber)) {
    throw s3Error('InvalidArgument', 400, 'Part number must be an integer between 1 and 10000, inclusive',
      { ArgumentName: 'partNumber', ArgumentValue: query.partNumber });
  }
}

/**
 * @param {{store: import('./store').AtomicFilesystemStore, lookupSecret: (id: string) => string | undefined}} options
 */
function tesseraExtensions({ store, lookupSecret }) {
  return async function extensions(ctx, next) {
    if (ctx.method === 'OPTIONS') return next(); // CORS preflight carries no credentials
    let target;
    try {
      target = parsePath(ctx.path);
    } catch (err) {
      throw s3Error('InvalidURI', 400, "Couldn't parse the specified URI.", { URI: ctx.path });
    }
    authenticate(ctx, lookupSecret);
    const { bucket, key } = target;
    const query = ctx.query;
    if (!bucket) return next(); // ListBuckets
    if (!isValidBucketName(bucket)) {
      // also keeps "/.." and friends from naming a folder outside the data directory
      throw s3Error('InvalidBucketName', 400, 'The specified bucket is not valid.', { BucketName: bucket });
    }
    if (!key) {
      if (ctx.method === 'GET' && 'uploads' in query) return listMultipartUploads(ctx, store, bucket);
      const bucketSubresource = Object.keys(query).some(name =>
        !['list-type', 'prefix', 'delimiter', 'max-keys', 'marker', 'start-after',
          'continuation-token', 'encoding-type', 'fetch-owner', 'x-id'].includes(name));
      if (ctx.method === 'GET' && !bucketSubresource) return listObjects(ctx, store, bucket);
      if (ctx.method === 'HEAD' && !bucketSubresource) {
        // s3rver would answer HEAD with a whole listing
        await requireBucket(store, bucket);
        ctx.status = 200;
        return undefined;
      }
      return next();
    }

    checkKey(key);
    checkMultipartQuery(query);
    if (ctx.method === 'DELETE' && 'uploadId' in query) {
      await requireBucket(store, bucket);
      const upload = await store.getUpload(bucket, query.uploadId);
      if (upload.key !== key) throw s3Error('NoSuchUpload', 404, 'The specified upload does not exist.');
      await store.abortUpload(bucket, query.uploadId);
      ctx.status = 204;
      return undefined;
    }
    if (ctx.method === 'POST' && 'uploadId' in query) {
      await requireBucket(store, bucket);
      const upload = await store.getUpload(bucket, query.uploadId);
      if (upload.key !== key) throw s3Error('NoSuchUpload', 404, 'The specified upload does not exist.');
      return next();
    }
    const plainPut = ctx.method === 'PUT' &&
      Object.keys(query).every(name => name.startsWith('X-Amz-') || name === 'x-id');
    if (plainPut && !ctx.get('x-amz-copy-source')) {
      await requireBucket(store, bucket);
      return putObject(ctx, store, bucket, key);
    }
    return next();
  };
}

module.exports = { tesseraExtensions, pageOfKeys, parsePath, isValidBucketName };
