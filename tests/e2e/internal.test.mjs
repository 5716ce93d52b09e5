// CONTRACT §1 `server.internal_listen`: with it set, /api/*, /metrics, /readyz and /admin/
// answer only on the internal address (the public one gives the API's JSON 404), /healthz on
// both, Socket.IO and the native protocol only on the public one; without it, everything is
// on server.listen. SIGTERM stops both listeners.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  configToml, startServer, signJwt, connect, waitFor, emitApi, api, assertJsonError,
  joinConversation, expectOnline, uid, freePort, standardHooks,
} from './helpers.mjs';

let split; // with server.internal_listen
let inner; // { url } of split's internal listener
let single; // without it

const internalToml = (port) => configToml({ extra: `[server]\ninternal_listen = "127.0.0.1:${port}"\n` });

before(async () => {
  const port = await freePort();
  [split, single] = await Promise.all([
    startServer({ toml: internalToml(port) }),
    startServer(),
  ]);
  inner = { url: `http://127.0.0.1:${port}` };
});
after(async () => {
  await Promise.all([split, single].filter(Boolean).map((s) => s.stop()));
});
standardHooks(() => [split, single]);

const OPERATOR = [
  ['GET', '/api/v1/presence'],
  ['GET', '/api/v1/presence/alice'],
  ['POST', '/api/v1/emit'],
  ['GET', '/api/v1/nowhere'],
  ['GET', '/metrics'],
  ['GET', '/readyz'],
  ['GET', '/admin/'],
  ['GET', '/admin'],
];

describe('with server.internal_listen', () => {
  for (const [method, p] of OPERATOR) {
    it(`public ${method} ${p} -> 404 with the JSON error, even with a valid API key`, async () => {
      const body = method === 'POST' ? { event: 'message:status', data: { conversationId: 'c', messageId: 'm', status: 'read' } } : undefined;
      const res = await api(split, method, p, { body });
      assertJsonError(res, 404);
      assert.equal(res.json.error, 'Not found');
    });
  }

  it('/healthz answers on both listeners', async () => {
    for (const target of [split, inner]) {
      const res = await api(target, 'GET', '/healthz', { key: null });
      assert.deepEqual([res.status, res.json], [200, { status: 'ok' }], target.url);
    }
  });

  it('the internal listener serves the API (key still required), /metrics and /readyz', async () => {
    assertJsonError(await api(inner, 'GET', '/api/v1/presence', { key: null }), 401);
    assertJsonError(await api(inner, 'GET', '/api/v1/presence', { key: 'wrong' }), 401);
    const presence = await api(inner, 'GET', '/api/v1/presence');
    assert.equal(presence.status, 200, presence.text);
    assert.ok(Array.isArray(presence.json.users));
    const metrics = await api(inner, 'GET', '/metrics', { key: null });
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /^# HELP switchboard_/m);
    const ready = await api(inner, 'GET', '/readyz', { key: null });
    assert.deepEqual([ready.status, ready.json], [200, { status: 'ready' }]);
  });

  it('a publish on the internal listener reaches a socket on the public one; presence too', async () => {
    const sub = uid('pub');
    const socket = await connect(split, { token: signJwt({ sub }) });
    const conversationId = uid('c');
    await joinConversation(socket, conversationId);
    await expectOnline(inner, sub, 1);
    const data = { conversationId, messageId: uid('m'), status: 'read' };
    const got = waitFor(socket, 'message:status');
    const res = await emitApi(inner, { event: 'message:status', data });
    const { offset, ...rest } = res.json;
    assert.deepEqual([res.status, rest], [200, { event: 'message:status', room: `conversation:${conversationId}` }]);
    assert.match(offset, /^[a-z0-9]+:\d+$/, 'the emit answer carries the event\'s history offset');
    assert.deepEqual(await got, data);
  });

  it('clients cannot connect on the internal listener', async () => {
    await assert.rejects(connect(inner, { token: signJwt({ sub: uid('x') }), timeout: 2000 }));
    const ws = await api(inner, 'GET', '/ws');
    assert.equal(ws.status, 404);
  });
});

describe('without server.internal_listen', () => {
  it('every route is on server.listen', async () => {
    assert.equal((await api(single, 'GET', '/api/v1/presence')).status, 200);
    assert.equal((await api(single, 'GET', '/metrics', { key: null })).status, 200);
    assert.equal((await api(single, 'GET', '/readyz', { key: null })).status, 200);
    assert.equal((await api(single, 'GET', '/healthz', { key: null })).status, 200);
    const sub = uid('one');
    const socket = await connect(single, { token: signJwt({ sub }) });
    const conversationId = uid('c');
    await joinConversation(socket, conversationId);
    const data = { conversationId, messageId: uid('m'), status: 'sent' };
    const got = waitFor(socket, 'message:status');
    assert.equal((await emitApi(single, { event: 'message:status', data })).status, 200);
    assert.deepEqual(await got, data);
  });
});

const refused = (port) => new Promise((resolve) => {
  const s = net.connect(port, '127.0.0.1');
  s.once('connect', () => { s.destroy(); resolve(false); });
  s.once('error', () => resolve(true));
});

describe('shutdown and start-up', () => {
  it('SIGTERM stops both listeners and exits 0', async () => {
    const port = await freePort();
    const node = await startServer({ toml: internalToml(port) });
    assert.equal((await api({ url: `http://127.0.0.1:${port}` }, 'GET', '/healthz')).status, 200);
    assert.equal(await node.stop('SIGTERM'), 0);
    assert.ok(await refused(node.port), 'the public port is closed');
    assert.ok(await refused(port), 'the internal port is closed');
  });

  it('an internal address already in use stops start-up, naming server.internal_listen', async () => {
    const taken = net.createServer();
    await new Promise((r) => taken.listen(0, '127.0.0.1', r));
    try {
      await assert.rejects(
        startServer({ toml: internalToml(taken.address().port), readyTimeout: 5000 }),
        /server\.internal_listen/,
      );
    } finally {
      taken.close();
    }
  });

  it('server.internal_listen equal to server.listen is a config error', async () => {
    const port = await freePort();
    await assert.rejects(
      startServer({ toml: internalToml(port), port, readyTimeout: 5000 }),
      /exited \(code 2[^)]*\)[\s\S]*server\.internal_listen: .* is server\.listen too/,
    );
  });
});
