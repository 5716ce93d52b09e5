// A client for the native WebSocket protocol (CONTRACT §5) on the `ws` package, for the
// end-to-end tests: it records every frame and waits for frames, events, acks and the close.

import assert from 'node:assert/strict';
import WebSocket from 'ws';

const open = new Set();

/** The native endpoint's URL for a server started with startServer(). */
export function nativeUrl(server, { path = '/ws', query = '' } = {}) {
  return server.url.replace(/^http/, 'ws') + path + query;
}

/** One native socket; `frames` holds every text frame received, parsed. */
export class NativeClient {
  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.binary = [];
    this.taken = new Set();
    this.waiters = [];
    this.nextId = 1;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        open.delete(this);
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        this.#wake();
      });
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        this.binary.push(data);
        return;
      }
      let frame;
      try {
        frame = JSON.parse(data.toString());
      } catch {
        frame = { unparsable: data.toString() };
      }
      frame.__at = Date.now();
      this.frames.push(frame);
      this.#wake();
    });
    ws.on('error', () => {});
  }

  #wake() {
    for (const w of [...this.waiters]) w();
  }

  /** Send a frame (an object is sent as JSON, a string as it is). */
  send(frame) {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** Send an event, with `id` when given. */
  emit(event, data, id) {
    const frame = { event };
    if (data !== undefined) frame.data = data;
    if (id !== undefined) frame.id = id;
    this.send(frame);
  }

  /** Resolve with the next frame (not yet taken) matching `pred`; reject after ms. */
  frame(pred, ms = 5000, what = 'a frame') {
    return new Promise((resolve, reject) => {
      const check = () => {
        const i = this.frames.findIndex((f, j) => !this.taken.has(j) && pred(f));
        if (i >= 0) {
          this.taken.add(i);
          done();
          const { __at, ...frame } = this.frames[i];
          resolve(frame);
          return true;
        }
        if (this.closeInfo) {
          done();
          reject(new Error(`socket closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for ${what}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${ms} ms waiting for ${what}; got ${JSON.stringify(this.frames)}`));
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
      };
      const waiter = () => { check(); };
      if (!check()) this.waiters.push(waiter);
    });
  }

  /** The data of the next `event` frame (matching `filter`). */
  async event(event, ms = 5000, filter = () => true) {
    const f = await this.frame((f) => f.event === event && filter(f.data), ms, `event '${event}'`);
    assert.deepEqual(Object.keys(f).sort(), ['data', 'event'], `event frames carry exactly event and data: ${JSON.stringify(f)}`);
    return f.data;
  }

  /** The data of the ack for `id`. */
  async ack(id, ms = 5000) {
    const f = await this.frame((f) => 'ack' in f && f.ack === id, ms, `ack ${JSON.stringify(id)}`);
    assert.deepEqual(Object.keys(f).sort(), ['ack', 'data'], `ack frames carry exactly ack and data: ${JSON.stringify(f)}`);
    return f.data;
  }

  /** Send an event with a fresh id and resolve with its ack's data. */
  emitAck(event, data, ms = 5000) {
    const id = this.nextId++;
    this.emit(event, data, id);
    return this.ack(id, ms);
  }

  /** Assert no `event` frame (matching `filter`) arrives within ms. */
  async expectNone(event, ms = 300, filter = () => true) {
    const from = this.frames.length;
    await new Promise((r) => setTimeout(r, ms));
    const got = this.frames.slice(from).filter((f) => f.event === event && filter(f.data));
    assert.deepEqual(got, [], `did not expect '${event}'`);
  }

  /** Resolve with {code, reason} once the server closed the socket; reject after ms. */
  async closedWith(ms = 5000) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`socket not closed after ${ms} ms`)), ms);
    });
    try {
      return await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  close() {
    try { this.ws.close(); } catch { /* gone */ }
  }
}

/** Open a WebSocket to the native endpoint without sending anything. */
export function openNative(server, { headers, path, query, autoPong = true } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(nativeUrl(server, { path, query }), { headers, autoPong, ca: server.ca });
    const client = new NativeClient(ws);
    open.add(client);
    ws.once('open', () => resolve(client));
    ws.once('error', reject);
    ws.once('unexpected-response', (_, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
  });
}

/**
 * Open a native socket and send `{"op": "connect", "token"}` (no token key when
 * `token` is undefined). Resolves with the client once `connected` arrives (client.hello
 * is that frame); rejects with an Error whose message is the `op: error` message and whose
 * `code` is the close code.
 */
export async function connectNative(server, { token, first, ...opts } = {}) {
  const client = await openNative(server, opts);
  client.send(first ?? (token === undefined ? { op: 'connect' } : { op: 'connect', token }));
  const reply = await client.frame((f) => 'op' in f, 5000, 'the connect reply').catch((e) => e);
  if (reply?.op === 'connected') {
    client.hello = reply;
    return client;
  }
  const { code } = await client.closedWith();
  const err = new Error(reply instanceof Error ? `no reply (${reply.message})` : reply.message);
  err.code = code;
  err.reply = reply;
  throw err;
}

/** Expect the native connection to be refused: resolves with {message, code, reply}. */
export async function nativeRefusal(server, opts) {
  try {
    const c = await connectNative(server, opts);
    c.close();
  } catch (err) {
    return { message: err.message, code: err.code, reply: err.reply };
  }
  assert.fail(`expected a refusal, but the native socket connected (opts: ${JSON.stringify(opts)})`);
}

/** Close every native socket opened here. */
export function closeAllNative() {
  for (const c of open) c.close();
  open.clear();
}
