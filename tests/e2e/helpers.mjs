// Shared fixture for the Switchboard end-to-end tests.
//
// Every test file starts its own gateway process(es) with its own TOML config,
// talks to it with the real socket.io-client and global fetch, and stops it.
//
// Environment:
//   SB_BIN           path of the switchboard binary (default: <repo>/target/debug/switchboard)
//   SB_E2E_VERBOSE=1 print every server's output when it stops

import { spawn, execFile } from 'node:child_process';
import { createHmac, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { afterEach, beforeEach } from 'node:test';
import jwt from 'jsonwebtoken';
import { io } from 'socket.io-client';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..');
export const BIN = process.env.SB_BIN || path.join(REPO_ROOT, 'target', 'debug', 'switchboard');

export const SECRET = 'test-secret-that-is-long-enough-0123456789';
export const API_KEY = 'test-api-key';
export const NAMESPACE = '/messages';
export const TRANSPORTS = [['websocket'], ['polling']];

/**
 * Build a config. `auth` lines go in [auth], `jwt` lines in [auth.jwt], `limits` lines in
 * [limits]; `extra` is appended verbatim (whole tables). `secret: false` leaves out
 * auth.jwt.secret.
 */
export function configToml({ auth = '', jwt: jwtLines = '', limits = '', extra = '', secret = SECRET, algorithms = ['HS256'] } = {}) {
  return [
    auth ? `[auth]\n${auth}\n` : '',
    '[auth.jwt]',
    secret ? `secret = "${secret}"` : '',
    `algorithms = ${JSON.stringify(algorithms)}`,
    jwtLines,
    '',
    '[api]',
    `keys = ["${API_KEY}"]`,
    '',
    '[transports.socketio]',
    `namespace = "${NAMESPACE}"`,
    '',
    limits ? `[limits]\n${limits}\n` : '',
    extra,
    '',
  ].join('\n');
}

export const BASE_TOML = configToml();

// ---------------------------------------------------------------------------
// Processes

const liveProcs = new Set();
process.on('exit', () => {
  for (const p of liveProcs) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/** Environment for a child: ours, minus every SWITCHBOARD_* override, plus `extra`. */
export function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SWITCHBOARD_')) env[k] = v;
  }
  return { NO_COLOR: '1', ...env, ...extra };
}

let tmpRoot;
/** A fresh directory under os.tmpdir() (removed at exit). */
export function tempDir() {
  if (!tmpRoot) {
    tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'switchboard-e2e-'));
    process.on('exit', () => {
      try { rmSync(tmpRoot, { recursive: true, force: true }); } catch { /* ignore */ }
    });
  }
  return mkdtempSync(path.join(tmpRoot, 'd-'));
}

/** Write `content` to `name` in a fresh temp directory; returns the file's path. */
export function writeTemp(name, content) {
  const file = path.join(tempDir(), name);
  writeFileSync(file, content);
  return file;
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Run the binary to completion. Resolves { code, signal, stdout, stderr } (never rejects
 * on a non-zero exit). cwd defaults to an empty temp dir so that no ./switchboard.toml is
 * picked up by accident.
 */
export function runCli(args, { env = {}, cwd, timeout = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(BIN, args, { env: childEnv(env), cwd: cwd ?? tempDir(), timeout, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err && err.code === 'ENOENT') return reject(new Error(`binary not found: ${BIN}`));
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ code, signal: err?.signal ?? null, stdout: String(stdout), stderr: String(stderr) });
      });
  });
}

/**
 * Start `switchboard serve` with the given TOML config on a free port and wait for /healthz.
 * With listenFlag: false no --listen is passed (the config or env must put it on `port`).
 * With TLS on the listener, pass scheme: 'https', the test CA's PEM as `ca` (connect() and
 * the native client trust it) and a `healthy(server)` check, since fetch cannot take a CA.
 * Returns { url, port, configPath, proc, stop(signal?), logs(), mark(), logsSince(mark) }.
 */
export async function startServer({ toml = BASE_TOML, env = {}, readyTimeout = 15000, port: fixedPort, listenFlag = true, scheme = 'http', ca, healthy } = {}) {
  const dir = tempDir();
  const configPath = path.join(dir, 'switchboard.toml');
  writeFileSync(configPath, toml);
  const port = fixedPort ?? await freePort();
  const args = ['serve', '--config', configPath];
  if (listenFlag) args.push('--listen', `127.0.0.1:${port}`);
  const server = await spawnServer({ args, env, cwd: dir, port, readyTimeout, scheme, ca, healthy });
  server.configPath = configPath;
  return server;
}

/**
 * Run the binary with `args` (no config file is written: cwd defaults to an empty temp
 * dir) and wait until `scheme`://127.0.0.1:`port`/healthz answers (or `healthy(server)` is
 * true, for TLS). Same handle as startServer.
 */
export async function spawnServer({ args, env = {}, cwd, port, readyTimeout = 15000, scheme = 'http', ca, healthy }) {
  const url = `${scheme}://127.0.0.1:${port}`;
  const proc = spawn(BIN, args, {
    env: childEnv(env),
    cwd: cwd ?? tempDir(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveProcs.add(proc);
  let output = '';
  proc.stdout.on('data', (d) => { output += d; });
  proc.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      liveProcs.delete(proc);
      server.exitCode = code;
      server.exitSignal = signal;
      resolve(code);
    });
    proc.on('error', (err) => {
      liveProcs.delete(proc);
      output += `\n[spawn error] ${err.message}\n`;
      server.exitCode = null;
      resolve(null);
    });
  });

  const server = {
    url,
    port,
    ca,
    configPath: undefined,
    proc,
    exited,
    exitCode: undefined,
    exitSignal: undefined,
    logs: () => output,
    mark: () => output.length,
    logsSince: (m) => output.slice(m),
    /** Send `signal` (SIGTERM) and wait for exit; resolves with the exit code (null if killed by a signal). */
    async stop(signal = 'SIGTERM', ms = 10000) {
      if (server.exitCode === undefined) {
        proc.kill(signal);
        const t = setTimeout(() => { try { proc.kill('SIGKILL'); } catch { /* gone */ } }, ms);
        await exited;
        clearTimeout(t);
      }
      if (process.env.SB_E2E_VERBOSE) {
        process.stderr.write(`\n----- switchboard ${url} output -----\n${output}\n-----\n`);
      }
      return server.exitCode;
    },
  };

  const deadline = Date.now() + readyTimeout;
  for (;;) {
    if (server.exitCode !== undefined) {
      throw new Error(`switchboard exited (code ${server.exitCode}, signal ${server.exitSignal}) before it was ready.\nOutput:\n${output}`);
    }
    try {
      if (healthy) {
        if (await healthy(server)) break;
      } else {
        const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) });
        await res.arrayBuffer();
        if (res.status === 200) break;
      }
    } catch { /* not up yet */ }
    if (Date.now() > deadline) {
      await server.stop('SIGKILL');
      throw new Error(`switchboard did not answer /healthz within ${readyTimeout} ms.\nOutput:\n${output}`);
    }
    await sleep(50);
  }
  return server;
}

/**
 * What the embedded default prints at start-up (no config file): { apiKey, token, curl },
 * read from the framed notice in `logs`; fields it did not print are undefined.
 */
export function embeddedNotice(logs) {
  const field = (label) => logs.match(new RegExp(`^  ${label}\\s+(\\S+)`, 'm'))?.[1];
  return {
    apiKey: field('API key'),
    token: field('demo token'),
    curl: logs.match(/^\s+(curl .*)$/m)?.[1],
  };
}

// ---------------------------------------------------------------------------
// Tokens

/**
 * Mint a token with `switchboard token`, using the server's own config file.
 * ttl is a duration string ("1h", "4s").
 */
export async function mintToken(server, { sub, ttl, email, role, claims = {} } = {}) {
  const args = ['token', '--sub', sub];
  if (ttl) args.push('--ttl', ttl);
  if (email) args.push('--email', email);
  if (role) args.push('--role', role);
  for (const [k, v] of Object.entries(claims)) args.push('--claim', `${k}=${v}`);
  args.push('--config', server.configPath ?? server);
  const r = await runCli(args);
  if (r.code !== 0) {
    throw new Error(`switchboard token failed (exit ${r.code}): ${r.stderr}`);
  }
  return r.stdout.trim();
}

const nowSec = () => Math.floor(Date.now() / 1000);

/**
 * Sign a JWT with the npm jsonwebtoken package. Defaults: HS256 with the test secret,
 * iat now and exp in one hour (unless the payload sets them or opts.noTimestamp / noExp).
 */
export function signJwt(payload, secret = SECRET, opts = {}) {
  const { noExp, ...rest } = opts;
  const body = { ...payload };
  if (!noExp && body.exp === undefined) body.exp = nowSec() + 3600;
  return jwt.sign(body, secret, { algorithm: 'HS256', ...rest });
}

/** A token built by hand: any header, any payload, HMAC-SHA of `hmacBits` with `key`, or no signature. */
export function rawJwt(header, payload, { key, hmacBits = 256 } = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const input = `${b64(header)}.${b64(payload)}`;
  if (key === undefined) return `${input}.`;
  const sig = createHmac(`sha${hmacBits}`, key).update(input).digest('base64url');
  return `${input}.${sig}`;
}

let rsaPair;
/** A 2048-bit RSA key pair (PEM strings), generated once per process. */
export function rsaKeys() {
  if (!rsaPair) {
    rsaPair = generateKeyPairSync('rsa', {
      modulusLength: 2048,
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    });
  }
  return rsaPair;
}

export const decodeJwt = (token) => jwt.decode(token);
export { nowSec };

// ---------------------------------------------------------------------------
// Sockets

const openSockets = new Set();

/**
 * Connect to the namespace. Resolves with the connected socket, rejects with the
 * connect_error Error (its .message is the server's message).
 * Every socket records what it receives in socket.received: [{ event, args, at }].
 * Sockets are disconnected by disconnectAll() after each test, unless keep: true (then the
 * caller disconnects them, e.g. in an after hook).
 */
export function connect(server, { token, auth, transports, extraHeaders, query, timeout = 5000, keep = false } = {}) {
  const authObj = auth !== undefined ? auth : (token !== undefined ? { token } : undefined);
  const socket = io(server.url + NAMESPACE, {
    transports: transports ?? ['websocket'],
    auth: authObj,
    forceNew: true,
    reconnection: false,
    extraHeaders,
    query,
    timeout,
    ca: server.ca,
  });
  if (!keep) openSockets.add(socket);
  socket.received = [];
  socket.onAny((event, ...args) => socket.received.push({ event, args, at: Date.now() }));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      socket.disconnect();
      reject(new Error(`connect timed out after ${timeout + 1000} ms`));
    }, timeout + 1000);
    const onConnect = () => { cleanup(); resolve(socket); };
    const onError = (err) => { cleanup(); socket.disconnect(); reject(err); };
    function cleanup() {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
    }
    socket.on('connect', onConnect);
    socket.on('connect_error', onError);
  });
}

/** Expect the connection to be refused; resolves with the connect_error message. */
export async function connectError(server, opts) {
  try {
    const s = await connect(server, opts);
    s.disconnect();
  } catch (err) {
    return err.message;
  }
  assert.fail(`expected connect_error, but the socket connected (opts: ${JSON.stringify(opts)})`);
}

/** Disconnect every socket opened through connect(). */
export function disconnectAll() {
  for (const s of openSockets) {
    try { s.disconnect(); } catch { /* ignore */ }
  }
  openSockets.clear();
}

/** Payloads of `event` received so far by a socket made with connect(). */
export function receivedOf(socket, event) {
  return socket.received.filter((r) => r.event === event).map((r) => r.args[0]);
}

/** Resolve with the (first argument of the) next `event` on socket; reject after ms. */
export function waitFor(socket, event, ms = 5000, filter = () => true) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => {
      if (!filter(args[0])) return;
      clearTimeout(timer);
      socket.off(event, handler);
      resolve(args[0]);
    };
    const timer = setTimeout(() => {
      socket.off(event, handler);
      reject(new Error(`timed out after ${ms} ms waiting for '${event}'`));
    }, ms);
    socket.on(event, handler);
  });
}

/** Assert that `event` does NOT arrive on socket within ms. */
export function expectNone(socket, event, ms = 300, filter = () => true) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => {
      if (!filter(args[0])) return;
      clearTimeout(timer);
      socket.off(event, handler);
      reject(new assert.AssertionError({
        message: `did not expect '${event}' but got ${JSON.stringify(args)}`,
      }));
    };
    const timer = setTimeout(() => { socket.off(event, handler); resolve(); }, ms);
    socket.on(event, handler);
  });
}

/** Emit with an acknowledgement; resolves with the ack's (first) argument. */
export function emitAck(socket, event, data, ms = 5000) {
  const s = socket.timeout(ms);
  return data === undefined ? s.emitWithAck(event) : s.emitWithAck(event, data);
}

// ---------------------------------------------------------------------------
// HTTP

/**
 * Call the HTTP API. key: API key (default the test key; null for no Authorization header;
 * a string starting with a space-separated scheme is sent verbatim via `authorization`).
 */
export async function api(server, method, p, { body, key = API_KEY, authorization, contentType, rawBody, headers = {} } = {}) {
  const h = { ...headers };
  if (authorization !== undefined) h.authorization = authorization;
  else if (key !== null) h.authorization = `Bearer ${key}`;
  let payload;
  if (rawBody !== undefined) payload = rawBody;
  else if (body !== undefined) payload = JSON.stringify(body);
  if (payload !== undefined) h['content-type'] = contentType ?? 'application/json';
  else if (contentType) h['content-type'] = contentType;
  const res = await fetch(server.url + p, { method, headers: h, body: payload, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text, headers: res.headers };
}

/** POST /api/v1/emit. */
export const emitApi = (server, body, opts = {}) => api(server, 'POST', '/api/v1/emit', { body, ...opts });

/** Assert an HTTP error response: the status, a JSON body with an `error` string. */
export function assertJsonError(res, status, mentions) {
  assert.equal(res.status, status, `expected HTTP ${status}, got ${res.status}: ${res.text}`);
  assert.ok(res.json && typeof res.json === 'object', `error body is not JSON: ${JSON.stringify(res.text)}`);
  assert.equal(typeof res.json.error, 'string', `error body has no string 'error': ${res.text}`);
  assert.ok(res.json.error.length > 0, 'error message is empty');
  const ct = res.headers.get('content-type') || '';
  assert.match(ct, /application\/json/, `error content-type is ${ct}`);
  if (mentions) {
    assert.ok(res.json.error.includes(mentions) || JSON.stringify(res.json.details ?? '').includes(mentions),
      `error should name '${mentions}': ${res.text}`);
  }
}

/** Assert an `error` event payload: { message: non-empty string, timestamp: ISO 8601 }. */
export function assertErrorEvent(payload, mentions) {
  assert.ok(payload && typeof payload === 'object', `error payload is not an object: ${JSON.stringify(payload)}`);
  assert.equal(typeof payload.message, 'string', `error.message is not a string: ${JSON.stringify(payload)}`);
  assert.ok(payload.message.length > 0, 'error.message is empty');
  assert.equal(typeof payload.timestamp, 'string', `error.timestamp is not a string: ${JSON.stringify(payload)}`);
  assert.match(payload.timestamp, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$/,
    `error.timestamp is not ISO 8601: ${payload.timestamp}`);
  assert.ok(!Number.isNaN(Date.parse(payload.timestamp)), `unparseable timestamp ${payload.timestamp}`);
  if (mentions instanceof RegExp) assert.match(payload.message, mentions);
  else if (mentions) assert.ok(payload.message.includes(mentions), `error message should name '${mentions}': ${payload.message}`);
}

/** Join a conversation and wait for the ack; asserts success. */
export async function joinConversation(socket, conversationId) {
  const ack = await emitAck(socket, 'conversation:join', { conversationId });
  assert.deepEqual(ack, { conversationId, success: true });
}

/** Join a session and wait for the ack; asserts success. */
export async function joinSession(socket, sessionId) {
  const ack = await emitAck(socket, 'session:join', { sessionId });
  assert.deepEqual(ack, { sessionId, success: true });
}

/** Fetch the presence record of one user. */
export async function presenceOf(server, userId) {
  const r = await api(server, 'GET', `/api/v1/presence/${encodeURIComponent(userId)}`);
  assert.equal(r.status, 200, `presence of ${userId}: ${r.status} ${r.text}`);
  return r.json;
}

/** Assert (polling up to ms) that the presence API reports `userId` with `connections` (or online when omitted). */
export async function expectOnline(server, userId, connections, ms = 2000) {
  return eventually(async () => {
    const p = await presenceOf(server, userId);
    assert.equal(p.online, true, `presence of ${userId}: ${JSON.stringify(p)}`);
    if (connections !== undefined) assert.equal(p.connections, connections, `presence of ${userId}: ${JSON.stringify(p)}`);
    return p;
  }, ms);
}

/** Poll `fn` until it returns truthy (or throws no more), up to ms. */
export async function eventually(fn, ms = 2000, every = 50) {
  const deadline = Date.now() + ms;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v !== false) return v;
    } catch (e) { lastErr = e; }
    if (Date.now() > deadline) throw lastErr ?? new Error(`condition not met within ${ms} ms`);
    await sleep(every);
  }
}

/** A unique id for this run: prefix-<random>. */
let counter = 0;
export function uid(prefix = 'id') {
  counter += 1;
  return `${prefix}-${process.pid.toString(36)}${counter.toString(36)}`;
}

/**
 * Install per-test hooks: disconnect every socket after each test and, when a test
 * failed, print what the given servers logged while it ran.
 */
export function standardHooks(getServers) {
  const marks = new Map();
  beforeEach(() => {
    for (const s of [getServers()].flat()) if (s) marks.set(s, s.mark());
  });
  afterEach((t) => {
    disconnectAll();
    if (t && t.passed === false) {
      for (const s of [getServers()].flat()) {
        if (!s) continue;
        const out = s.logsSince(marks.get(s) ?? 0).trim();
        if (out) {
          const tail = out.split('\n').slice(-60).join('\n');
          console.log(`switchboard ${s.url} output during '${t.name}':\n${tail}`);
        }
      }
    }
  });
}

/**
 * An emit answer without its `offset` (the event's place in the room's history, `epoch:n`),
 * after checking the offset's form when there is one.
 */
export function withoutOffset(json) {
  if (!json || typeof json !== 'object' || json.offset === undefined) return json;
  assert.match(json.offset, /^[a-z0-9]+:\d+$/, `offset ${json.offset}`);
  const { offset, ...rest } = json;
  return rest;
}
