'use strict';
// Server-side verification of AWS Signature Version 4 for S3 requests, both forms:
//   - the Authorization header (AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...)
//   - presigned query strings (X-Amz-Algorithm, X-Amz-Credential, ..., X-Amz-Signature)
// https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-authenticating-requests.html
//
// Pure: a plain request description in, the verified identity out (or a SigV4Error). The body is
// not read here: the caller checks a signed payload hash against the body as it streams.

const crypto = require('crypto');

const ALGORITHM = 'AWS4-HMAC-SHA256';
const UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD';
const EMPTY_SHA256 = crypto.createHash('sha256').update('').digest('hex');
const MAX_CLOCK_SKEW_MS = 15 * 60 * 1000; // what S3 allows for header-signed requests
const MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600;

class SigV4Error extends Error {
  constructor(code, status, message, detail = {}) {
    super(message);
    this.code = code; // an S3 error code, e.g. SignatureDoesNotMatch
    this.status = status;
    this.detail = detail;
  }
}

// S3's UriEncode: everything except the RFC 3986 unreserved characters is %XX-encoded (UTF-8).
function uriEncode(text, keepSlash) {
  const encoded = encodeURIComponent(text).replace(
    /[!'()*]/g,
    ch => '%' + ch.charCodeAt(0).toString(16).toUpperCase(),
  );
  return keepSlash ? encoded.replace(/%2F/g, '/') : encoded;
}

function decodePercent(text, what) {
  try {
    return decodeURIComponent(text);
  } catch (err) {
    throw new SigV4Error('InvalidURI', 400, `Couldn't parse the ${what}: ${text}`);
  }
}

function splitUrl(url) {
  const q = url.indexOf('?');
  return q === -1 ? [url, ''] : [url.slice(0, q), url.slice(q + 1)];
}

// [[name, value], ...] percent-decoded, in request order ('+' is kept literally, as S3 does).
function parseQuery(rawQuery) {
  return rawQuery
    .split('&')
    .filter(pair => pair.length > 0)
    .map(pair => {
      const eq = pair.indexOf('=');
      const name = eq === -1 ? pair : pair.slice(0, eq);
      const value = eq === -1 ? '' : pair.slice(eq + 1);
      return [decodePercent(name, 'query string'), decodePercent(value, 'query string')];
    });
}

function canonicalQueryString(params) {
  return params
    .map(([name, value]) => [uriEncode(name, false), uriEncode(value, false)])
    .sort(([n1, v1], [n2, v2]) => (n1 < n2 ? -1 : n1 > n2 ? 1 : v1 < v2 ? -1 : v1 > v2 ? 1 : 0))
    .map(([name, value]) => `${name}=${value}`)
    .join('&');
}

// Clients sign the path as they encoded it; the S3 rule encodes every byte but unreserved ones and
// '/'. botocore follows the rule; a client that leaves e.g. '!' unencoded signed its raw path.
function canonicalUriCandidates(rawPath) {
  const normalized = uriEncode(decodePercent(rawPath, 'request path'), true);
  return normalized === rawPath ? [normalized] : [normalized, rawPath];
}

// rawHeaders is Node's flat [name, value, name, value, ...] list (repeats kept, in order).
function headerValues(rawHeaders) {
  const values = new Map();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toLowerCase();
    const value = String(rawHeaders[i + 1]).trim().replace(/\s+/g, ' ');
    values.set(name, values.has(name) ? `${values.get(name)},${value}` : value);
  }
  return values;
}

function parseAmzDate(text) {
  const match = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(text || '');
  if (!match) return null;
  const [, y, mo, d, h, mi, s] = match.map(Number);
  return new Date(Date.UTC(y, mo - 1, d, h, mi, s));
}

function parseCredential(credential, amzDate, malformedCode, malformedStatus) {
  const parts = (credential || '').split('/');
  if (parts.length !== 5) {
    throw new SigV4Error(malformedCode, malformedStatus, `Malformed credential: ${credential}`);
  }
  const [accessKeyId, date, region, service, terminator] = parts;
  if (date !== amzDate.slice(0, 8)) {
    throw new SigV4Error(malformedCode, malformedStatus,
      `Invalid credential date "${date}": it is not the date of X-Amz-Date "${amzDate}".`);
  }
  if (service !== 's3' || terminator !== 'aws4_request') {
    throw new SigV4Error(malformedCode, malformedStatus,
      `Invalid credential scope "${parts.slice(1).join('/')}": expected <date>/<region>/s3/aws4_request.`);
  }
  return { accessKeyId, scope: parts.slice(1).join('/'), date, region };
}

function parseAuthorizationHeader(value) {
  const space = value.indexOf(' ');
  const algorithm = space === -1 ? value : value.slice(0, space);
  if (algorithm !== ALGORITHM) {
    throw new SigV4Error('InvalidRequest', 400,
      `The authorization mechanism you have provided is not supported. Please use ${ALGORITHM}.`);
  }
  const fields = new Map();
  for (const item of value.slice(space + 1).split(',')) {
    const eq = item.indexOf('=');
    if (eq !== -1) fields.set(item.slice(0, eq).trim(), item.slice(eq + 1).trim());
  }
  for (const name of ['Credential', 'SignedHeaders', 'Signature']) {
    if (!fields.get(name)) {
      throw new SigV4Error('AuthorizationHeaderMalformed', 400,
        `The authorization header is malformed; missing ${name}.`);
    }
  }
  return fields;
}

// Everything the signature needs, from whichever of the two forms the request uses.
function describeHeaderAuth(request, headers, now) {
  const fields = parseAuthorizationHeader(headers.get('authorization'));
  const amzDate = headers.get('x-amz-date');
  const signedAt = parseAmzDate(amzDate);
  if (!signedAt) {
    throw new SigV4Error('AccessDenied', 403,
      'AWS authentication requires a valid x-amz-date header (yyyyMMddTHHmmssZ).');
  }
  if (Math.abs(now - signedAt) > MAX_CLOCK_SKEW_MS) {
    throw new SigV4Error('RequestTimeTooSkewed', 403,
      'The difference between the request time and the current time is too large.',
      { RequestTime: amzDate, ServerTime: now.toISOString(), MaxAllowedSkewMilliseconds: MAX_CLOCK_SKEW_MS });
  }
  const payloadHash = headers.get('x-amz-content-sha256');
  if (!payloadHash) {
    throw new SigV4Error('InvalidRequest', 400,
      'Missing required header for this request: x-amz-content-sha256');
  }
  return {
    credential: parseCredential(fields.get('Credential'), amzDate, 'AuthorizationHeaderMalformed', 400),
    signedHeaders: fields.get('SignedHeaders'),
    signature: fields.get('Signature'),
    amzDate,
    queryParams: parseQuery(splitUrl(request.url)[1]),
    payloadHash,
  };
}

function describePresigned(request, query, now) {
  const get = name => (query.find(([n]) => n === name) || [])[1];
  if (get('X-Amz-Algorithm') !== ALGORITHM) {
    throw new SigV4Error('AuthorizationQueryParametersError', 400,
      `X-Amz-Algorithm only supports "${ALGORITHM}"`);
  }
  for (const name of ['X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature']) {
    if (!get(name)) {
      throw new SigV4Error('AuthorizationQueryParametersError', 400,
        `Query-string authentication version 4 requires the ${name} parameter.`);
    }
  }
  const amzDate = get('X-Amz-Date');
  const signedAt = parseAmzDate(amzDate);
  if (!signedAt) {
    throw new SigV4Error('AuthorizationQueryParametersError', 400,
      'X-Amz-Date must be in the ISO8601 Long Format "yyyyMMdd\'T\'HHmmss\'Z\'"');
  }
  const expiresText = get('X-Amz-Expires');
  const expiresS = Number(expiresText);
  if (!/^\d+$/.test(expiresText) || expiresS < 1 || expiresS > MAX_PRESIGN_EXPIRY_S) {
    throw new SigV4Error('AuthorizationQueryParametersError', 400,
      `X-Amz-Expires must be an integer number of seconds from 1 to ${MAX_PRESIGN_EXPIRY_S}.`);
  }
  const expiresAt = new Date(signedAt.getTime() + expiresS * 1000);
  if (now > expiresAt) {
    throw new SigV4Error('AccessDenied', 403, 'Request has expired',
      { 'X-Amz-Expires': expiresText, Expires: expiresAt.toISOString(), ServerTime: now.toISOString() });
  }
  if (signedAt - now > MAX_CLOCK_SKEW_MS) {
    throw new SigV4Error('AccessDenied', 403, 'Request is not valid yet',
      { 'X-Amz-Date': amzDate, ServerTime: now.toISOString() });
  }
  return {
    credential: parseCredential(get('X-Amz-Credential'), amzDate, 'AuthorizationQueryParametersError', 400),
    signedHeaders: get('X-Amz-SignedHeaders'),
    signature: get('X-Amz-Signature'),
    amzDate,
    queryParams: query.filter(([name]) => name !== 'X-Amz-Signature'),
    // a presigned URL does not sign the body unless it says so
    payloadHash: get('X-Amz-Content-Sha256') || UNSIGNED_PAYLOAD,
  };
}

function checkPayloadHash(payloadHash) {
  if (payloadHash === UNSIGNED_PAYLOAD || /^[0-9a-f]{64}$/.test(payloadHash)) return;
  if (payloadHash.startsWith('STREAMING-')) {
    throw new SigV4Error('NotImplemented', 501,
      `x-amz-content-sha256 "${payloadHash}" (aws-chunked upload) is not supported by this server; ` +
      'send a plain body signed with its SHA-256 or UNSIGNED-PAYLOAD.');
  }
  throw new SigV4Error('InvalidArgument', 400,
    'x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a lowercase hex SHA-256 value.',
    { ArgumentName: 'x-amz-content-sha256', ArgumentValue: payloadHash });
}

function hmac(key, text) {
  return crypto.createHmac('sha256', key).update(text, 'utf8').digest();
}

function signingKey(secret, credential) {
  const dateKey = hmac(`AWS4${secret}`, credential.date);
  return hmac(hmac(hmac(dateKey, credential.region), 's3'), 'aws4_request');
}

function buildCanonicalRequest(method, canonicalUri, auth, headers) {
  const names = auth.signedHeaders.split(';');
  const canonicalHeaders = names.map(name => `${name}:${headers.get(name) ?? ''}\n`).join('');
  return [
    method,
    canonicalUri,
    canonicalQueryString(auth.queryParams),
    canonicalHeaders,
    auth.signedHeaders,
    auth.payloadHash,
  ].join('\n');
}

function buildStringToSign(auth, canonicalRequest) {
  const hashed = crypto.createHash('sha256').update(canonicalRequest, 'utf8').digest('hex');
  return [ALGORITHM, auth.amzDate, auth.credential.scope, hashed].join('\n');
}

function signaturesEqual(expectedHex, providedHex) {
  const expected = Buffer.from(expectedHex, 'utf8');
  const provided = Buffer.from(providedHex, 'utf8');
  return expected.length === provided.length && crypto.timingSafeEqual(expected, provided);
}

/**
 * Verify a request's SigV4 signature.
 *
 * @param {{method: string, url: string, rawHeaders: string[]}} request  url is the raw request
 *   target (path and query exactly as received).
 * @param {{lookupSecret: (accessKeyId: string) => string | undefined, now?: Date}} options
 * @returns {{accessKeyId: string, payloadHash: string}} payloadHash is UNSIGNED-PAYLOAD or the hex
 *   SHA-256 the client signed, which the caller must check against the body.
 * @throws {SigV4Error}
 */
function verifySigV4(request, { lookupSecret, now = new Date() }) {
  const headers = headerValues(request.rawHeaders);
  const [rawPath, rawQuery] = splitUrl(request.url);
  const query = parseQuery(rawQuery);
  const byHeader = headers.has('authorization');
  const byQuery = query.some(([name]) => name === 'X-Amz-Algorithm' || name === 'X-Amz-Signature');
  if (byHeader && byQuery) {
    throw new SigV4Error('InvalidArgument', 400,
      'Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the ' +
      'Authorization header should be specified');
  }
  if (!byHeader && !byQuery) {
    if (query.some(([name]) => name === 'Signature' || name === 'AWSAccessKeyId')) {
      throw new SigV4Error('InvalidRequest', 400,
        `Signature version 2 is not supported. Please use ${ALGORITHM}.`);
    }
    throw new SigV4Error('AccessDenied', 403, 'Access Denied: anonymous requests are not allowed.');
  }

  const auth = byHeader ? describeHeaderAuth(request, headers, now) : describePresigned(request, query, now);
  checkPayloadHash(auth.payloadHash);

  const signedNames = auth.signedHeaders.split(';');
  if (!signedNames.includes('host')) {
    throw new SigV4Error('AccessDenied', 403, 'The host header must be signed.');
  }
  // Unsigned x-amz-* headers would let whoever holds a presigned URL add e.g. user metadata.
  const unsigned = [...headers.keys()].filter(
    name => name.startsWith('x-amz-') && !signedNames.includes(name));
  if (unsigned.length > 0) {
    throw new SigV4Error('AccessDenied', 403,
      'There were headers present in the request which were not signed',
      { HeadersNotSigned: unsigned.join(', ') });
  }

  const accessKeyId = auth.credential.accessKeyId;
  const secret = lookupSecret(accessKeyId);
  if (secret === undefined) {
    throw new SigV4Error('InvalidAccessKeyId', 403,
      'The AWS Access Key Id you provided does not exist in our records.',
      { AWSAccessKeyId: accessKeyId });
  }

  const key = signingKey(secret, auth.credential);
  let firstAttempt;
  for (const canonicalUri of canonicalUriCandidates(rawPath)) {
    const canonicalRequest = buildCanonicalRequest(request.method, canonicalUri, auth, headers);
    const stringToSign = buildStringToSign(auth, canonicalRequest);
    const expected = crypto.createHmac('sha256', key).update(stringToSign, 'utf8').digest('hex');
    if (signaturesEqual(expected, auth.signature)) {
      return { accessKeyId, payloadHash: auth.payloadHash };
    }
    firstAttempt = firstAttempt || { canonicalRequest, stringToSign };
  }
  throw new SigV4Error('SignatureDoesNotMatch', 403,
    'The request signature we calculated does not match the signature you provided. ' +
    'Check your key and signing method.',
    {
      AWSAccessKeyId: accessKeyId,
      SignatureProvided: auth.signature,
      StringToSign: firstAttempt.stringToSign,
      CanonicalRequest: firstAttempt.canonicalRequest,
    });
}

module.exports = { verifySigV4, SigV4Error, UNSIGNED_PAYLOAD, EMPTY_SHA256, uriEncode };
