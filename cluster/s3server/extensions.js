'use strict';
// The Koa middleware that runs in front of s3rver's router: SigV4 verification of every request
// (s3rver accepts any V4 signature), checks of signed bodies as they stream, and the S3 operations
// s3rver lacks or gets wrong for Tessera: conditional writes (PutObject, CompleteMultipartUpload
// and CopyObject with If-None-Match / If-Match, DeleteObject and DeleteObjects with If-Match /
// <ETag>), CopyObject and UploadPartCopy with URL-encoded sources and S3's copy-source conditions,
// ListObjects/ListObjectsV2 in byte order with working continuation tokens, ListMultipartUploads,
// AbortMultipartUpload. Everything else falls through to s3rver.

const crypto = require('crypto');
const path = require('path');
const { Transform, pipeline } = require('stream');

const S3Object = require('s3rver/lib/models/object');
const { verifySigV4, SigV4Error, UNSIGNED_PAYLOAD, EMPTY_SHA256 } = require('./sigv4');
const { compareUtf8, s3Error, noSuchKey, preconditionFailed, unquote } = require('./store');

// s3rver's own XML parser and entity decoder (dependencies of s3rver, resolved from it).
const fromS3rver = name => require(require.resolve(name, { paths: [path.dirname(require.resolve('s3rver'))] }));
const xmlParser = fromS3rver('fast-xml-parser');
const he = fromS3rver('he');

const XMLNS = 'http://s3.amazonaws.com/doc/2006-03-01/';
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const isValidBucketName = name => BUCKET_NAME.test(name) && !name.includes('..');

const MAX_KEY_BYTES = 1024;
const MAX_COPY_SOURCE_SIZE = 5 * 1024 * 1024 * 1024; // CopyObject and each UploadPartCopy
const MAX_COMPLETE_BODY_BYTES = 4 * 1024 * 1024; // 10,000 parts take about 1 MB of XML
// A key's last segment becomes "<segment>._S3rver_metadata.json.tmp-<12 hex>" (39 more bytes) in a
// file system that allows 255 bytes per name.
const MAX_NAME_BYTES = 255;
const MAX_LAST_SEGMENT_BYTES = MAX_NAME_BYTES - 39;
const CONTROL_CHARACTER = /[\u0000-\u001f\u007f-\u009f]/;

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
// alias "a/b", so they are refused, and so are control characters (a NUL cannot be in a path) and
// segments longer than a file name can be (S3 itself accepts all of these; Tessera never makes
// them). Keys over 1024 UTF-8 bytes get S3's own KeyTooLongError.
function checkKey(key, argumentName = 'key') {
  const size = Buffer.byteLength(key, 'utf8');
  if (size > MAX_KEY_BYTES) {
    throw s3Error('KeyTooLongError', 400, 'Your key is too long', { MaxSizeAllowed: MAX_KEY_BYTES, Size: size });
  }
  if (CONTROL_CHARACTER.test(key)) {
    // the key is not echoed: a control character cannot be written in XML 1.0
    throw s3Error('InvalidArgument', 400,
      'This server does not accept keys with control characters (U+0000-U+001F, U+007F-U+009F).',
      { ArgumentName: argumentName });
  }
  const segments = key.split('/');
  const bad = segments.some((segment, i) =>
    segment === '.' || segment === '..' || (segment === '' && i < segments.length - 1));
  if (bad) {
    throw s3Error('InvalidArgument', 400,
      'This server does not accept keys with empty, "." or ".." segments.',
      { ArgumentName: argumentName, ArgumentValue: key });
  }
  const tooLong = segments.some((segment, i) => Buffer.byteLength(segment, 'utf8') >
    (i === segments.length - 1 ? MAX_LAST_SEGMENT_BYTES : MAX_NAME_BYTES));
  if (tooLong) {
    throw s3Error('InvalidArgument', 400,
      `This server does not accept key segments longer than ${MAX_NAME_BYTES} bytes ` +
      `(${MAX_LAST_SEGMENT_BYTES} for the last one).`,
      { ArgumentName: argumentName, ArgumentValue: key });
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

function notImplementedHeader(header, additionalMessage) {
  const detail = additionalMessage ? { Header: header, additionalMessage } : { Header: header };
  return s3Error('NotImplemented', 501, 'A header you provided implies functionality that is not implemented', detail);
}

// The write condition of PutObject, CompleteMultipartUpload and CopyObject, checked as S3 checks
// it before anything is written: If-None-Match takes only "*", If-Match only an ETag, and not
// both at once (501 NotImplemented otherwise). Undefined when the request has neither.
function writeCondition(ctx) {
  const ifMatch = ctx.get('if-match') || undefined;
  const ifNoneMatch = ctx.get('if-none-match') || undefined;
  if (ifMatch !== undefined && ifNoneMatch !== undefined) {
    throw notImplementedHeader('If-Match,If-None-Match', 'Multiple conditional request headers present in the request');
  }
  if (ifNoneMatch !== undefined && ifNoneMatch !== '*') {
    throw notImplementedHeader('If-None-Match', "We don't accept the provided value of If-None-Match header for this API");
  }
  if (ifMatch === '*') {
    throw notImplementedHeader('If-Match', "We don't accept the provided value of If-Match header for this API");
  }
  return ifMatch === undefined && ifNoneMatch === undefined ? undefined : { ifMatch, ifNoneMatch };
}

async function putObject(ctx, store, bucket, key) {
  const condition = writeCondition(ctx);
  const object = new S3Object(bucket, key, ctx.req, ctx.headers);
  const { md5 } = await store.putObject(object, { condition });
  ctx.etag = md5;
  ctx.body = '';
}

// DeleteObject; If-Match (an ETag or "*") makes it conditional: a missing key is then 404
// NoSuchKey and another ETag 412. The size and time conditions are for directory buckets only
// (501 on general purpose buckets, as here).
async function deleteObject(ctx, store, bucket, key) {
  await requireBucket(store, bucket);
  for (const header of ['x-amz-if-match-last-modified-time', 'x-amz-if-match-size']) {
    if (ctx.get(header)) throw notImplementedHeader(header);
  }
  await store.deleteObjectLocked(bucket, key, { ifMatch: ctx.get('if-match') || undefined });
  ctx.status = 204;
}

async function readBody(req, limit) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw s3Error('MaxMessageLengthExceeded', 400, 'Your request was too big.');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function malformedXml() {
  return s3Error('MalformedXML', 400,
    'The XML you provided was not well-formed or did not validate against our published schema.');
}

// The <Part> list of a CompleteMultipartUpload body: [{number, etag}] (ETags without quotes).
function parseCompleteBody(text) {
  if (xmlParser.validate(text) !== true) throw malformedXml();
  // parseNodeValue off: an all-digit ETag must stay a string
  const body = xmlParser.parse(text, { parseNodeValue: false, tagValueProcessor: value => he.decode(value) });
  const parts = body.CompleteMultipartUpload && body.CompleteMultipartUpload.Part;
  if (!parts) throw malformedXml();
  return [].concat(parts).map(part => {
    if (!part || typeof part !== 'object' || part.ETag === undefined || !/^\d+$/.test(String(part.PartNumber))) {
      throw malformedXml();
    }
    return { number: Number(part.PartNumber), etag: String(part.ETag).replace(/"/g, '') };
  });
}

// CompleteMultipartUpload, with If-None-Match: * or If-Match (a failed condition leaves the upload
// in place). The new ETag comes in the body, as in S3, and in an ETag header too.
async function completeMultipartUpload(ctx, store, bucket, key, uploadId) {
  const condition = writeCondition(ctx);
  const parts = parseCompleteBody(await readBody(ctx.req, MAX_COMPLETE_BODY_BYTES));
  const { md5 } = await store.putObjectMultipart(bucket, uploadId, parts, { condition });
  ctx.etag = md5;
  ctx.body = {
    CompleteMultipartUploadResult: {
      '@': { xmlns: XMLNS },
      Location: ctx.href.split('?')[0],
      Bucket: bucket,
      Key: key,
      ETag: JSON.stringify(md5),
    },
  };
}

// DeleteObjects (POST ?delete): each key deleted as DeleteObject does, under its lock, with its
// <ETag> as an If-Match condition; a key the server refuses (see checkKey) or a failed condition
// is an <Error> entry, as S3 reports per-key failures. s3rver's own version took keys unchecked
// ("../x" reached outside the bucket) and ignored <ETag>.
async function deleteObjects(ctx, store, bucket) {
  await requireBucket(store, bucket);
  const text = await readBody(ctx.req, MAX_COMPLETE_BODY_BYTES);
  if (xmlParser.validate(text) !== true) throw malformedXml();
  const body = xmlParser.parse(text, { parseNodeValue: false, tagValueProcessor: value => he.decode(value) });
  const request = body.Delete;
  if (!request || request.Object === undefined) throw malformedXml();
  const objects = [].concat(request.Object);
  if (objects.length > 1000 || objects.some(object => !object || typeof object !== 'object' || object.Key === undefined)) {
    throw malformedXml();
  }
  for (const name of ['LastModifiedTime', 'Size']) {
    // like x-amz-if-match-last-modified-time / -size: directory buckets only
    if (objects.some(object => object[name] !== undefined)) throw notImplementedHeader(name);
  }
  const quiet = String(request.Quiet).toLowerCase() === 'true';
  const deleted = [];
  const errors = [];
  for (const object of objects) {
    const key = String(object.Key);
    try {
      if (!key) throw s3Error('InvalidArgument', 400, 'User key must have a length greater than 0.');
      checkKey(key);
      const ifMatch = object.ETag === undefined ? undefined : String(object.ETag);
      await store.deleteObjectLocked(bucket, key, { ifMatch });
      if (!quiet) deleted.push({ Key: key });
    } catch (err) {
      if (!err.status || err.status >= 500) throw err;
      errors.push({ Key: CONTROL_CHARACTER.test(key) ? undefined : key, Code: err.code, Message: err.message });
    }
  }
  ctx.body = { DeleteResult: { '@': { xmlns: XMLNS }, Deleted: deleted, Error: errors } };
}

function invalidCopySource(message = 'Copy Source must mention the source bucket and key: sourcebucket/sourcekey') {
  return s3Error('InvalidArgument', 400, message, { ArgumentName: 'x-amz-copy-source' });
}

// x-amz-copy-source: "[/]bucket/key[?versionId=id]", URL-encoded.
function parseCopySource(header) {
  const q = header.indexOf('?');
  const raw = q === -1 ? header : header.slice(0, q);
  const versionId = q === -1 ? undefined : new URLSearchParams(header.slice(q + 1)).get('versionId');
  let decoded;
  try {
    decoded = decodeURIComponent(raw);
  } catch (err) {
    throw invalidCopySource();
  }
  if (decoded.startsWith('/')) decoded = decoded.slice(1);
  const slash = decoded.indexOf('/');
  if (slash <= 0 || slash === decoded.length - 1) throw invalidCopySource();
  const source = { bucket: decoded.slice(0, slash), key: decoded.slice(slash + 1) };
  if (!isValidBucketName(source.bucket)) {
    throw s3Error('InvalidBucketName', 400, 'The specified bucket is not valid.', { BucketName: source.bucket });
  }
  checkKey(source.key, 'x-amz-copy-source');
  if (versionId !== undefined && versionId !== null && versionId !== 'null') {
    // no versioning here: "null" is the only version there is
    throw s3Error('InvalidArgument', 400, 'Invalid version id specified',
      { ArgumentName: 'versionId', ArgumentValue: versionId });
  }
  return source;
}

function httpDateSeconds(text) {
  if (!text) return null;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? null : Math.floor(ms / 1000);
}

// S3's x-amz-copy-source-if-* conditions on the source object, in S3's order of evaluation; a
// true If-Match overrides If-Unmodified-Since and a present If-None-Match overrides
// If-Modified-Since, which is ignored when it lies in the future. Failures are 412.
function checkCopySourceConditions(ctx, source) {
  const etagMatches = list => list.split(',').map(tag => unquote(tag.trim())).some(tag => tag === '*' || tag === source.etag);
  const lastModified = Math.floor(source.lastModified.getTime() / 1000);
  const ifMatch = ctx.get('x-amz-copy-source-if-match');
  const ifNoneMatch = ctx.get('x-amz-copy-source-if-none-match');
  const ifUnmodifiedSince = httpDateSeconds(ctx.get('x-amz-copy-source-if-unmodified-since'));
  const ifModifiedSince = httpDateSeconds(ctx.get('x-amz-copy-source-if-modified-since'));
  if (ifMatch) {
    if (!etagMatches(ifMatch)) throw preconditionFailed('x-amz-copy-source-If-Match');
  } else if (ifUnmodifiedSince !== null && lastModified > ifUnmodifiedSince) {
    throw preconditionFailed('x-amz-copy-source-If-Unmodified-Since');
  }
  if (ifNoneMatch) {
    if (etagMatches(ifNoneMatch)) throw preconditionFailed('x-amz-copy-source-If-None-Match');
  } else if (ifModifiedSince !== null && ifModifiedSince <= Date.now() / 1000 && lastModified <= ifModifiedSince) {
    throw preconditionFailed('x-amz-copy-source-If-Modified-Since');
  }
}

function copySourceTooLarge() {
  return s3Error('InvalidRequest', 400,
    `The specified copy source is larger than the maximum allowable size for a copy source: ${MAX_COPY_SOURCE_SIZE}`);
}

// Opens the source object of a copy (see store.openObject) and checks S3's conditions on it; the
// caller closes `source.handle`.
async function openCopySource(ctx, store) {
  const { bucket, key } = parseCopySource(ctx.get('x-amz-copy-source'));
  await requireBucket(store, bucket);
  const source = await store.openObject(bucket, key);
  if (!source) throw noSuchKey(key);
  try {
    checkCopySourceConditions(ctx, source.state);
  } catch (err) {
    await source.handle.close();
    throw err;
  }
  return { ...source, bucket, key };
}

// CopyObject (PUT with x-amz-copy-source), atomic like a PUT and with the same destination
// conditions (If-None-Match: * / If-Match).
async function copyObject(ctx, store, bucket, key) {
  await requireBucket(store, bucket);
  const condition = writeCondition(ctx);
  const directive = ctx.get('x-amz-metadata-directive') || 'COPY';
  if (directive !== 'COPY' && directive !== 'REPLACE') {
    throw s3Error('InvalidArgument', 400, 'Unknown metadata directive.',
      { ArgumentName: 'x-amz-metadata-directive', ArgumentValue: directive });
  }
  const storageClass = ctx.get('x-amz-storage-class');
  const source = await openCopySource(ctx, store);
  try {
    if (source.state.size > MAX_COPY_SOURCE_SIZE) throw copySourceTooLarge();
    if (source.bucket === bucket && source.key === key && directive === 'COPY' && !storageClass) {
      throw s3Error('InvalidRequest', 400,
        'This copy request is illegal because it is trying to copy an object to itself without changing ' +
        "the object's metadata, storage class, website redirect location or encryption attributes.");
    }
    let metadata = directive === 'REPLACE' ? ctx.headers : source.metadata;
    if (directive === 'COPY' && storageClass) metadata = { ...metadata, 'x-amz-storage-class': storageClass };
    metadata = new S3Object(bucket, key, null, metadata).metadata; // checks the storage class
    const copied = await store.copyObjectAtomic(source, bucket, key, metadata, { condition });
    ctx.body = {
      CopyObjectResult: {
        '@': { xmlns: XMLNS },
        LastModified: copied.lastModified.toISOString(),
        ETag: JSON.stringify(copied.etag),
      },
    };
  } finally {
    await source.handle.close();
  }
}

// UploadPartCopy: a byte range (x-amz-copy-source-range: bytes=first-last) or all of an object,
// at most 5 GiB, becomes a part of a multipart upload.
async function uploadPartCopy(ctx, store, bucket, key, uploadId, partNumber) {
  const upload = await store.getUpload(bucket, uploadId);
  if (upload.key !== key) throw s3Error('NoSuchUpload', 404, 'The specified upload does not exist.', { UploadId: uploadId });
  const rangeHeader = ctx.get('x-amz-copy-source-range');
  const match = rangeHeader ? /^bytes=(\d+)-(\d+)$/.exec(rangeHeader) : null;
  if (rangeHeader && !match) {
    throw s3Error('InvalidArgument', 400,
      'The x-amz-copy-source-range value must be of the form bytes=first-last where first and last ' +
      'are the zero-based offsets of the first and last bytes to copy',
      { ArgumentName: 'x-amz-copy-source-range', ArgumentValue: rangeHeader });
  }
  const source = await openCopySource(ctx, store);
  try {
    const { size } = source.state;
    let range = size > 0 ? { start: 0, end: size - 1 } : undefined; // an empty part otherwise
    if (match) {
      range = { start: Number(match[1]), end: Number(match[2]) };
      if (range.start > range.end || range.end >= size) {
        throw s3Error('InvalidRequest', 400, `The specified copy range is invalid for the source object size: ${size}`);
      }
    }
    if (range && range.end - range.start + 1 > MAX_COPY_SOURCE_SIZE) throw copySourceTooLarge();
    const { md5, lastModified } = await store.putPartCopy(bucket, uploadId, partNumber, source, range);
    ctx.body = {
      CopyPartResult: { '@': { xmlns: XMLNS }, LastModified: lastModified.toISOString(), ETag: JSON.stringify(md5) },
    };
  } finally {
    await source.handle.close();
  }
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
      if (ctx.method === 'POST' && 'delete' in query) return deleteObjects(ctx, store, bucket);
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
    const plain = Object.keys(query).every(name => name.startsWith('X-Amz-') || name === 'x-id');
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
      return completeMultipartUpload(ctx, store, bucket, key, query.uploadId);
    }
    if (ctx.method === 'PUT' && 'uploadId' in query && 'partNumber' in query && ctx.get('x-amz-copy-source')) {
      await requireBucket(store, bucket);
      return uploadPartCopy(ctx, store, bucket, key, query.uploadId, query.partNumber);
    }
    if (ctx.method === 'PUT' && plain) {
      await requireBucket(store, bucket);
      return ctx.get('x-amz-copy-source') ? copyObject(ctx, store, bucket, key) : putObject(ctx, store, bucket, key);
    }
    if (ctx.method === 'DELETE' && plain) return deleteObject(ctx, store, bucket, key);
    if (ctx.method === 'DELETE' && ctx.get('if-match')) {
      throw notImplementedHeader('If-Match'); // e.g. with a versionId: never ignored silently
    }
    return next();
  };
}

module.exports = { tesseraExtensions, pageOfKeys, parsePath, parseCopySource, isValidBucketName };
