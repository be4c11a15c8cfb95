'use strict';
// Unit tests of the embedded S3 server's pure parts, run by `node --test` (test_s3_server.py runs
// this file). The five signed requests are the worked examples of AWS's S3 SigV4 documentation
// ("Examples: Signature Calculations", "Authenticating Requests: Using Query Parameters").

const assert = require('node:assert/strict');
const path = require('node:path');
const { test } = require('node:test');

const serverDir = path.join(__dirname, '..', '..', 'cluster', 's3server');
const { verifySigV4 } = require(path.join(serverDir, 'sigv4'));
const { pageOfKeys } = require(path.join(serverDir, 'extensions'));

const KEY_ID = 'AKIAIOSFODNN7EXAMPLE';
const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
const HOST = 'examplebucket.s3.amazonaws.com';
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const SIGNED_AT = new Date('2013-05-24T00:00:00Z');
const SCOPE = `${KEY_ID}/20130524/us-east-1/s3/aws4_request`;

const options = (overrides = {}) => ({
  lookupSecret: id => (id === KEY_ID ? SECRET : undefined),
  now: new Date(SIGNED_AT.getTime() + 60 * 1000),
  ...overrides,
});

function headerSigned(method, url, headers, signedHeaders, signature) {
  const rawHeaders = [];
  for (const [name, value] of Object.entries(headers)) rawHeaders.push(name, value);
  rawHeaders.push('Authorization',
    `AWS4-HMAC-SHA256 Credential=${SCOPE},SignedHeaders=${signedHeaders},Signature=${signature}`);
  return { method, url, rawHeaders };
}

const getObject = () => headerSigned('GET', '/test.txt',
  { Host: HOST, Range: 'bytes=0-9', 'x-amz-content-sha256': EMPTY_SHA256, 'x-amz-date': '20130524T000000Z' },
  'host;range;x-amz-content-sha256;x-amz-date',
  'f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41');

const presignedUrl = (signature = 'aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404', path_ = '/test.txt') =>
  `${path_}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=${encodeURIComponent(SCOPE)}` +
  '&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host' +
  `&X-Amz-Signature=${signature}`;

function assertRejected(request, opts, code, status) {
  assert.throws(() => verifySigV4(request, opts), err => err.code === code && err.status === status);
}

test('AWS example: GET object with a Range header', () => {
  assert.deepEqual(verifySigV4(getObject(), options()), { accessKeyId: KEY_ID, payloadHash: EMPTY_SHA256 });
});

test('AWS example: PUT object with an escaped key and a signed payload', () => {
  const request = headerSigned('PUT', '/test%24file.text', {
    Host: HOST,
    Date: 'Fri, 24 May 2013 00:00:00 GMT',
    'x-amz-date': '20130524T000000Z',
    'x-amz-storage-class': 'REDUCED_REDUNDANCY',
    'x-amz-content-sha256': '44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072',
  }, 'date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class',
  '98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd');
  assert.equal(verifySigV4(request, options()).payloadHash,
    '44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072');
});

test('AWS examples: a subresource and a sorted query string', () => {
  const headers = { Host: HOST, 'x-amz-date': '20130524T000000Z', 'x-amz-content-sha256': EMPTY_SHA256 };
  const signed = 'host;x-amz-content-sha256;x-amz-date';
  verifySigV4(headerSigned('GET', '/?lifecycle', headers, signed,
    'fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543'), options());
  verifySigV4(headerSigned('GET', '/?max-keys=2&prefix=J', headers, signed,
    '34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7'), options());
});

test('AWS example: presigned GET (UNSIGNED-PAYLOAD)', () => {
  const request = { method: 'GET', url: presignedUrl(), rawHeaders: ['Host', HOST] };
  assert.deepEqual(verifySigV4(request, options()), { accessKeyId: KEY_ID, payloadHash: 'UNSIGNED-PAYLOAD' });
});

test('a wrong secret, key, path, header or signature does not match', () => {
  assertRejected(getObject(), options({ lookupSecret: () => 'not-the-secret' }), 'SignatureDoesNotMatch', 403);
  assertRejected(getObject(), options({ lookupSecret: () => undefined }), 'InvalidAccessKeyId', 403);
  const otherPath = { ...getObject(), url: '/test2.txt' };
  assertRejected(otherPath, options(), 'SignatureDoesNotMatch', 403);
  const otherRange = getObject();
  otherRange.rawHeaders[3] = 'bytes=0-99';
  assertRejected(otherRange, options(), 'SignatureDoesNotMatch', 403);
  const presigned = { method: 'GET', url: presignedUrl('0'.repeat(64)), rawHeaders: ['Host', HOST] };
  assertRejected(presigned, options(), 'SignatureDoesNotMatch', 403);
  const movedPresigned = { method: 'GET', url: presignedUrl(undefined, '/other.txt'), rawHeaders: ['Host', HOST] };
  assertRejected(movedPresigned, options(), 'SignatureDoesNotMatch', 403);
  const putWithGetSignature = { method: 'PUT', url: presignedUrl(), rawHeaders: ['Host', HOST] };
  assertRejected(putWithGetSignature, options(), 'SignatureDoesNotMatch', 403);
});

test('the mismatch error says what the server signed', () => {
  try {
    verifySigV4(getObject(), options({ lookupSecret: () => 'not-the-secret' }));
    assert.fail('accepted a wrong secret');
  } catch (err) {
    assert.match(err.detail.CanonicalRequest, /^GET\n\/test.txt\n\nhost:examplebucket/);
    assert.match(err.detail.StringToSign, /^AWS4-HMAC-SHA256\n20130524T000000Z\n20130524\/us-east-1\/s3\/aws4_request\n/);
  }
});

test('time limits: clock skew for headers, expiry and not-yet-valid for presigned URLs', () => {
  const late = new Date(SIGNED_AT.getTime() + 16 * 60 * 1000);
  assertRejected(getObject(), options({ now: late }), 'RequestTimeTooSkewed', 403);
  const early = new Date(SIGNED_AT.getTime() - 16 * 60 * 1000);
  assertRejected(getObject(), options({ now: early }), 'RequestTimeTooSkewed', 403);

  const presigned = { method: 'GET', url: presignedUrl(), rawHeaders: ['Host', HOST] };
  const justValid = new Date(SIGNED_AT.getTime() + 86400 * 1000);
  verifySigV4(presigned, options({ now: justValid }));
  const expired = new Date(SIGNED_AT.getTime() + 86401 * 1000);
  assertRejected(presigned, options({ now: expired }), 'AccessDenied', 403);
  assertRejected(presigned, options({ now: early }), 'AccessDenied', 403);
});

test('requests that are not SigV4 or are malformed are refused', () => {
  assertRejected({ method: 'GET', url: '/test.txt', rawHeaders: ['Host', HOST] }, options(), 'AccessDenied', 403);
  assertRejected({ method: 'GET', url: '/test.txt?AWSAccessKeyId=x&Expires=1&Signature=y', rawHeaders: ['Host', HOST] },
    options(), 'InvalidRequest', 400);
  assertRejected({ method: 'GET', url: '/test.txt', rawHeaders: ['Host', HOST, 'Authorization', 'AWS x:y'] },
    options(), 'InvalidRequest', 400);
  const both = { ...getObject(), url: presignedUrl() };
  assertRejected(both, options(), 'InvalidArgument', 400);
  const noDate = getObject();
  noDate.rawHeaders.splice(6, 2);
  assertRejected(noDate, options(), 'AccessDenied', 403);
  const longExpiry = { method: 'GET', url: presignedUrl().replace('X-Amz-Expires=86400', 'X-Amz-Expires=604801'), rawHeaders: ['Host', HOST] };
  assertRejected(longExpiry, options(), 'AuthorizationQueryParametersError', 400);
});

test('unsigned x-amz-* headers and aws-chunked bodies are refused', () => {
  const withMeta = getObject();
  withMeta.rawHeaders.push('x-amz-meta-owner', 'mallory');
  assertRejected(withMeta, options(), 'AccessDenied', 403);
  const presignedWithMeta = { method: 'GET', url: presignedUrl(), rawHeaders: ['Host', HOST, 'x-amz-meta-a', 'b'] };
  assertRejected(presignedWithMeta, options(), 'AccessDenied', 403);
  const chunked = getObject();
  chunked.rawHeaders[5] = 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD';
  assertRejected(chunked, options(), 'NotImplemented', 501);
});

test('listing pages: byte order, delimiter folding and markers', () => {
  const keys = ['a b/1', 'p', 'p-a', 'p/0', 'p/1', 'p/2/x', 'q']; // sorted as UTF-8 bytes
  const page = (overrides) => pageOfKeys(keys, { prefix: '', delimiter: '', marker: '', maxKeys: 1000, ...overrides });
  assert.deepEqual(page({ maxKeys: 3 }), {
    items: [{ key: 'a b/1' }, { key: 'p' }, { key: 'p-a' }], isTruncated: true, nextMarker: 'p-a',
  });
  assert.deepEqual(page({ marker: 'p-a' }).items.map(item => item.key), ['p/0', 'p/1', 'p/2/x', 'q']);
  const folded = page({ delimiter: '/' });
  assert.deepEqual(folded.items, [{ commonPrefix: 'a b/' }, { key: 'p' }, { key: 'p-a' }, { commonPrefix: 'p/' }, { key: 'q' }]);
  const afterPrefix = page({ delimiter: '/', marker: 'p/' });
  assert.deepEqual(afterPrefix.items, [{ key: 'q' }]);
  const nested = pageOfKeys(keys.filter(key => key.startsWith('p/')),
    { prefix: 'p/', delimiter: '/', marker: '', maxKeys: 1000 });
  assert.deepEqual(nested.items, [{ key: 'p/0' }, { key: 'p/1' }, { commonPrefix: 'p/2/' }]);
});
