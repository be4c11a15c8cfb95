#!/usr/bin/env node
'use strict';
// Tessera's embedded S3-compatible server: s3rver (used as a library) with SigV4 verification,
// atomic writes and the operations it lacks (see extensions.js and store.js).
//
//   TESSERA_S3_SECRET_ACCESS_KEY=... node server.js --data-dir DIR --access-key-id ID \
//       [--host 127.0.0.1] [--port 0] [--bucket NAME ...] [--exit-with-parent] [--verbose]
//
// The secret comes from the environment so that it never shows in `ps`. On stdout the server
// prints exactly one JSON line: {"ready": true, "port": N} once it listens, or
// {"ready": false, "error": "...", "code": "..."} if it cannot start (then exits with status 1).
// Logs go to stderr. SIGTERM or SIGINT: stop accepting, finish in-flight requests (at most
// 5 s), exit 0. With --exit-with-parent it also exits when its parent process dies.

const fs = require('fs');
const { parseArgs } = require('util');

const S3rver = require('s3rver');
const { DUMMY_ACCOUNT } = require('s3rver/lib/models/account');
const { AtomicFilesystemStore } = require('./store');
const { tesseraExtensions, isValidBucketName } = require('./extensions');

const SECRET_ENV = 'TESSERA_S3_SECRET_ACCESS_KEY';
const SHUTDOWN_GRACE_MS = 5000;
const PARENT_POLL_MS = 500;

function report(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function fail(message, code = 'INVALID_ARGUMENT') {
  report({ ready: false, error: message, code });
  process.exit(1);
}

function parseOptions() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        'data-dir': { type: 'string' },
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '0' },
        bucket: { type: 'string', multiple: true, default: [] },
        'access-key-id': { type: 'string' },
        'exit-with-parent': { type: 'boolean', default: false },
        verbose: { type: 'boolean', default: false },
      },
      strict: true,
    }));
  } catch (err) {
    fail(err.message);
  }
  const port = Number(values.port);
  const secret = process.env[SECRET_ENV];
  delete process.env[SECRET_ENV];
  if (!values['data-dir']) fail('--data-dir is required');
  if (!values['access-key-id']) fail('--access-key-id is required');
  if (!secret) fail(`the secret access key must be given in the environment variable ${SECRET_ENV}`);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port must be 0..65535, got ${values.port}`);
  for (const name of values.bucket) {
    if (!isValidBucketName(name)) fail(`invalid bucket name: ${JSON.stringify(name)}`);
  }
  return {
    dataDir: values['data-dir'],
    host: values.host,
    port,
    buckets: values.bucket,
    accessKeyId: values['access-key-id'],
    secret,
    exitWithParent: values['exit-with-parent'],
    verbose: values.verbose,
  };
}

function buildApp(options) {
  const app = new S3rver({
    address: options.host,
    port: options.port,
    directory: options.dataDir,
    silent: true,
    vhostBuckets: false, // path-style only: a host name is never taken for a bucket
    configureBuckets: options.buckets.map(name => ({ name })),
  });
  app.store = app.context.store = new AtomicFilesystemStore(options.dataDir);

  // Only the configured key pair is valid (s3rver ships a fixed S3RVER/S3RVER account).
  DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
  DUMMY_ACCOUNT.createKeyPair(options.accessKeyId, options.secret);
  const lookupSecret = id => (id === options.accessKeyId ? options.secret : undefined);

  // s3rver's last middleware is its router; ours goes just before it, after the XML encoder
  // and error handler, so our errors and bodies come out as S3 XML too.
  const router = app.middleware.pop();
  if (options.verbose) {
    app.use(async (ctx, next) => {
      const started = Date.now();
      try {
        await next();
      } finally {
        process.stderr.write(`${ctx.method} ${ctx.url} ${ctx.status} ${Date.now() - started}ms\n`);
      }
    });
  }
  app.use(tesseraExtensions({ store: app.store, lookupSecret }));
  app.use(router);
  app.on('error', err => {
    if (!err.status || err.status >= 500) process.stderr.write(`[s3server] ${err.stack || err}\n`);
  });
  return app;
}

function installShutdown(app, exitWithParent) {
  let stopping = false;
  const shutdown = reason => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`[s3server] stopping (${reason})\n`);
    const server = app.httpServer;
    if (!server) process.exit(0);
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    setTimeout(() => {
      server.closeAllConnections();
      process.exit(0);
    }, SHUTDOWN_GRACE_MS).unref();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  if (exitWithParent) {
    // No PR_SET_PDEATHSIG in Node: watch for being re-parented instead.
    const parent = process.ppid;
    setInterval(() => {
      if (process.ppid !== parent) shutdown(`parent ${parent} exited`);
    }, PARENT_POLL_MS).unref();
  }
}

// What s3rver's run() does, but with listen errors caught: its listen() passes a 'listening'
// callback and leaves 'error' unhandled, so a taken port crashed the process with a stack trace.
async function listen(app, options) {
  await app.configureBuckets();
  app.httpServer = await new Promise((resolve, reject) => {
    const server = app.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve(server);
    });
    server.once('error', reject);
  });
  return app.httpServer.address();
}

async function main() {
  const options = parseOptions();
  fs.mkdirSync(options.dataDir, { recursive: true });
  const app = buildApp(options);
  installShutdown(app, options.exitWithParent);
  await app.store.sweepTempFiles();
  let address;
  try {
    address = await listen(app, options);
  } catch (err) {
    fail(`cannot listen on ${options.host}:${options.port}: ${err.message}`, err.code || 'LISTEN_FAILED');
  }
  report({ ready: true, port: address.port });
  process.stdout.on('error', () => {}); // whoever read the ready line may be gone
  process.stderr.write(
    `[s3server] listening on ${options.host}:${address.port}, data in ${options.dataDir}, pid ${process.pid}\n`);
}

main().catch(err => fail(err.stack || String(err), err.code || 'START_FAILED'));
