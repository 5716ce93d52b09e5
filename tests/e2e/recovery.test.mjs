// Connection state recovery (CONTRACT §2 *Recovery*, §5) with the unchanged
// socket.io-client 4.8 over WebSocket and long-polling, and the native protocol: a client
// whose transport drops gets every event it missed, once, in order, then live ones, and
// `socket.recovered` is true; where that cannot be done in full it is false and nothing is
// replayed. Clients reach the nodes through a small TCP forwarder (proxy.mjs) that holds
// them offline while the backend publishes, and sends them to another node when asked.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import {
  configToml, startServer, signJwt, emitApi, api, eventually, uid, sleep, nowSec, NAMESPACE, TRANSPORTS,
} from './helpers.mjs';
import { startProxy } from './proxy.mjs';
import { startRedis, sharedCluster, redisCommand } from './redis.mjs';
import { openNative } from './native.mjs';

const open = new Set();
afterEach(() => {
  for (const s of open) s.disconnect();
  open.clear();
});

function recoveryToml({ window = '2m', historySize, redis, prefix, jwt = '' } = {}) {
  const lines = ['[recovery]', 'enabled = true', `max_disconnection = "${window}"`, ''];
  if (historySize !== undefined) lines.push('[history]', `size = ${historySize}`, '');
  if (redis) {
    lines.push(
      '[presence]', 'plugin = "redis"', 'node_ttl = "2s"', '',
      '[broker]', 'plugin = "redis"', '',
      '[redis]', `url = "${redis.url}"`, `key_prefix = "${prefix}"`, '',
    );
  }
  return configToml({ jwt, extra: lines.join('\n') });
}

/**
 * A socket.io-client as an application would make it (reconnection on, quickly), recording
 * every event with all its arguments in `socket.got`.
 */
function client(url, { token, transports, auth }) {
  const socket = io(url + NAMESPACE, {
    auth: auth ?? { token },
    transports,
    forceNew: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
    randomizationFactor: 0,
  });
  open.add(socket);
  socket.got = [];
  socket.onAny((event, ...args) => socket.got.push({ event, args }));
  return socket;
}

function once(socket, event, ms = 10000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no '${event}' within ${ms} ms`)), ms);
    socket.once(event, (...args) => { clearTimeout(t); resolve(args); });
  });
}

async function connected(socket) {
  if (!socket.connected) await once(socket, 'connect');
  return socket;
}

/** The `messageId`s of the `message:status` events a socket got, in arrival order. */
const ids = (socket, conversationId) => socket.got
  .filter((g) => g.event === 'message:status' && (!conversationId || g.args[0].conversationId === conversationId))
  .map((g) => g.args[0].messageId);

const range = (prefix, from, to) => Array.from({ length: to - from }, (_, i) => `${prefix}${from + i}`);

function status(conversationId, messageId) {
  return { event: 'message:status', data: { conversationId, messageId, status: 'read' } };
}

async function publish(server, conversationId, messageIds) {
  for (const m of messageIds) {
    const r = await emitApi(server, status(conversationId, m));
    assert.equal(r.status, 200, JSON.stringify(r.json));
  }
}

async function join(socket, conversationId) {
  const ack = await socket.timeout(5000).emitWithAck('conversation:join', { conversationId });
  assert.deepEqual(ack, { conversationId, success: true });
}

/**
 * Drops the socket's transport with `socket.io.engine.close()` while the forwarder refuses
 * new connections, so it stays offline until `back()`.
 */
async function drop(proxy, socket) {
  proxy.hold();
  const gone = once(socket, 'disconnect');
  socket.io.engine.close();
  await gone;
  // A keep-alive connection left from long-polling must not carry the reconnection.
  proxy.cut();
}

/** Lets the socket reconnect and resolves once it is connected again. */
async function back(proxy, socket) {
  const again = once(socket, 'connect');
  proxy.release();
  await again;
  return socket.recovered;
}

/**
 * Asserts the socket is in none of `rooms` now: an event published to each of them, then
 * one to a room it joined afresh, arrives in the fresh room only.
 */
async function assertInNoRoom(server, socket, rooms) {
  const fresh = uid('fresh');
  await join(socket, fresh);
  for (const room of rooms) await publish(server, room, ['stray']);
  await publish(server, fresh, ['marker']);
  await eventually(() => ids(socket, fresh).includes('marker'), 5000);
  assert.deepEqual(ids(socket).filter((m) => m === 'stray'), [], 'an event of a room it was not restored to');
}

/** A native client on `server` that sent `first` and got `connected` (in `.hello`). */
async function nativeOn(server, first) {
  const c = await openNative(server);
  c.send(first);
  c.hello = await c.frame((f) => f.op === 'connected', 5000, 'connected');
  return c;
}

async function nativeJoinRoom(c, conversationId) {
  const ack = await c.emitAck('conversation:join', { conversationId });
  assert.deepEqual(ack, { conversationId, success: true });
}

/** The message ids of the `message:status` frames `c` got (in `conversationId`, if given). */
const nativeIds = (c, conversationId) => c.frames
  .filter((f) => f.event === 'message:status' && (!conversationId || f.data.conversationId === conversationId))
  .map((f) => f.data.messageId);

/** What a native client reconnecting to recover sends, from what it last saw. */
function recoverFrom(c, token) {
  const last = c.frames.filter((f) => typeof f.offset === 'string').at(-1);
  return { op: 'connect', token, recover: { session: c.hello.session, offset: last?.offset ?? '' } };
}

for (const transports of TRANSPORTS) {
  describe(`recovery on one node, socket.io-client over ${transports[0]}`, () => {
    let server;
    let proxy;
    before(async () => {
      server = await startServer({ toml: recoveryToml() });
      proxy = await startProxy(server.port);
    });
    after(async () => {
      await proxy.close();
      await server.stop();
    });

    it('a dropped transport gets the 20 events it missed, once and in order, then live ones, and recovered is true', async () => {
      const conv = uid('conv');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
      assert.equal(socket.recovered, false, 'a first connection recovers nothing');
      await join(socket, conv);
      await publish(server, conv, range('m', 0, 3));
      await eventually(() => ids(socket).length === 3);
      const offsets = socket.got.filter((g) => g.event === 'message:status').map((g) => g.args.at(-1));
      for (const o of offsets) assert.equal(typeof o, 'string', 'each room event carries its offset last');
      assert.equal(new Set(offsets).size, 3, 'offsets differ');

      await drop(proxy, socket);
      await publish(server, conv, range('m', 3, 23));
      assert.equal(await back(proxy, socket), true, 'socket.recovered');
      await eventually(() => ids(socket).length >= 23, 5000);
      await publish(server, conv, range('m', 23, 26));
      await eventually(() => ids(socket).length >= 26, 5000);
      assert.deepEqual(ids(socket), range('m', 0, 26));
      const last = socket.got.at(-1).args.at(-1);
      assert.equal(socket._lastOffset, last, 'the client tracks the offset of the last event');
    });

    it('two rooms with their events interleaved: every missed event of both, in order', async () => {
      const a = uid('a');
      const b = uid('b');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
      await join(socket, a);
      await join(socket, b);
      await publish(server, b, ['b0']);
      await publish(server, a, ['a0']);
      await eventually(() => ids(socket).length === 2);
      // The last offset the client saw is room a's: room b's missed events must not hang on it.
      await drop(proxy, socket);
      for (let i = 1; i <= 6; i += 1) {
        await publish(server, b, [`b${i}`]);
        await publish(server, a, [`a${i}`]);
      }
      assert.equal(await back(proxy, socket), true);
      await eventually(() => ids(socket).length >= 14, 5000);
      assert.deepEqual(ids(socket, a), range('a', 0, 7));
      assert.deepEqual(ids(socket, b), range('b', 0, 7));
      const interleaved = ['b0', 'a0'];
      for (let i = 1; i <= 6; i += 1) interleaved.push(`b${i}`, `a${i}`);
      assert.deepEqual(ids(socket), interleaved, 'replayed in the order they were published');
    });

    it('a client that had received nothing yet gets what was published while it was away', async () => {
      const conv = uid('conv');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
      await join(socket, conv);
      assert.equal(socket._lastOffset, undefined);
      await drop(proxy, socket);
      await publish(server, conv, range('m', 0, 5));
      assert.equal(await back(proxy, socket), true);
      await eventually(() => ids(socket).length >= 5, 5000);
      await publish(server, conv, ['m5']);
      await eventually(() => ids(socket).length >= 6, 5000);
      assert.deepEqual(ids(socket), range('m', 0, 6));
    });

    it('a re-join of a restored room on connect answers as usual and replays nothing twice', async () => {
      const conv = uid('conv');
      const socket = client(proxy.url, { token: signJwt({ sub: 'alice' }), transports });
      // As the seed's frontend does: join on every connect.
      const acks = [];
      socket.on('connect', () => {
        socket.timeout(5000).emitWithAck('conversation:join', { conversationId: conv }).then((a) => acks.push(a));
      });
      await connected(socket);
      await eventually(() => acks.length === 1);
      await publish(server, conv, range('m', 0, 2));
      await eventually(() => ids(socket).length === 2);
      await drop(proxy, socket);
      await publish(server, conv, range('m', 2, 10));
      assert.equal(await back(proxy, socket), true);
      await eventually(() => acks.length === 2, 5000);
      assert.deepEqual(acks[1], { conversationId: conv, success: true });
      await publish(server, conv, ['m10']);
      await eventually(() => ids(socket).includes('m10'), 5000);
      assert.deepEqual(ids(socket), range('m', 0, 11));
      const joined = socket.got.filter((g) => g.event === 'conversation:joined');
      assert.equal(joined.length, 2, 'each join is answered with conversation:joined');
    });

    it('presence changes it missed reach it too', async () => {
      const watcher = uid('watcher');
      const other = uid('other');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: watcher }), transports }));
      await join(socket, uid('conv'));
      await drop(proxy, socket);
      const peer = io(server.url + NAMESPACE, { auth: { token: signJwt({ sub: other }) }, transports: ['websocket'], forceNew: true });
      open.add(peer);
      await connected(peer);
      assert.equal(await back(proxy, socket), true);
      await eventually(() => socket.got.some((g) => g.event === 'user:online' && g.args[0].userId === other), 5000);
      const online = socket.got.filter((g) => g.event === 'user:online' && g.args[0].userId === other);
      assert.equal(online.length, 1, 'once');
    });

    it('another user presenting the same pid is not recovered: recovered false, nothing replayed, in no room', async () => {
      const conv = uid('conv');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
      await join(socket, conv);
      await publish(server, conv, ['m0']);
      await eventually(() => ids(socket).length === 1);
      const pid = socket._pid;
      await drop(proxy, socket);
      await publish(server, conv, range('m', 1, 4));
      // The same client object sends its pid and offset again, now with mallory's token.
      socket.auth = { token: signJwt({ sub: 'mallory' }) };
      assert.equal(await back(proxy, socket), false);
      assert.notEqual(socket._pid, pid, 'a new session gets a new pid');
      await assertInNoRoom(server, socket, [conv]);
      assert.deepEqual(ids(socket).filter((m) => /^m\d/.test(m)), ['m0'], 'nothing replayed');
    });

    it('rooms/leave while the client is away: it recovers without that room, and nothing of it is replayed or reaches it', async () => {
      const user = uid('alice');
      const kept = uid('kept');
      const revoked = uid('revoked');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: user }), transports }));
      await join(socket, kept);
      await join(socket, revoked);
      await drop(proxy, socket);
      await publish(server, kept, ['k0']);
      await publish(server, revoked, ['r0']);
      // 404 once the node saw the transport go (a session waiting for its client is not a
      // socket); 200 while it had not yet (a long-polling client's absence shows later).
      const r = await api(server, 'POST', '/api/v1/rooms/leave', { body: { room: `conversation:${revoked}`, userId: user } });
      assert.ok([200, 404].includes(r.status), JSON.stringify(r.json));
      await publish(server, revoked, ['r1']);
      await publish(server, kept, ['k1']);
      assert.equal(await back(proxy, socket), true);
      await eventually(() => ids(socket, kept).length >= 2, 5000);
      await publish(server, revoked, ['r2']);
      await publish(server, kept, ['k2']);
      await eventually(() => ids(socket, kept).includes('k2'), 5000);
      assert.deepEqual(ids(socket, kept), ['k0', 'k1', 'k2']);
      assert.deepEqual(ids(socket, revoked), [], 'an event of the room the backend took it out of');
    });

    it('users/{id}/disconnect while the client is away: it is not recovered, and is in no room', async () => {
      const user = uid('alice');
      const conv = uid('conv');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: user }), transports }));
      await join(socket, conv);
      await drop(proxy, socket);
      await publish(server, conv, ['m0']);
      const r = await api(server, 'POST', `/api/v1/users/${user}/disconnect`, { body: { reason: 'banned' } });
      assert.ok([200, 404].includes(r.status), JSON.stringify(r.json));
      assert.equal(await back(proxy, socket), false, 'a disconnected user does not get its session back');
      await assertInNoRoom(server, socket, [conv]);
      assert.deepEqual(ids(socket).filter((m) => /^m\d/.test(m)), [], 'nothing replayed');
    });

    it('a client that disconnected on purpose starts afresh', async () => {
      const conv = uid('conv');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
      await join(socket, conv);
      await publish(server, conv, ['m0']);
      await eventually(() => ids(socket).length === 1);
      socket.disconnect();
      await publish(server, conv, ['m1']);
      socket.connect();
      await connected(socket);
      assert.equal(socket.recovered, false);
      await assertInNoRoom(server, socket, [conv]);
      assert.deepEqual(ids(socket).filter((m) => /^m\d/.test(m)), ['m0']);
    });
  });
}

describe('recovery of more events than the socket can queue', () => {
  let server;
  let proxy;
  before(async () => {
    server = await startServer({
      toml: recoveryToml(),
      env: { SWITCHBOARD_TRANSPORTS__SOCKETIO__MAX_BUFFER_SIZE: '16' },
    });
    proxy = await startProxy(server.port);
  });
  after(async () => {
    await proxy.close();
    await server.stop();
  });

  for (const transports of TRANSPORTS) {
    it(`200 missed events through a 16-packet queue all arrive, once and in order (${transports[0]})`, async () => {
      const conv = uid('conv');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
      await join(socket, conv);
      await publish(server, conv, ['m0']);
      await eventually(() => ids(socket).length === 1);
      await drop(proxy, socket);
      await publish(server, conv, range('m', 1, 201));
      assert.equal(await back(proxy, socket), true, 'socket.recovered');
      await eventually(() => ids(socket).length >= 201, 10000);
      await publish(server, conv, ['m201']);
      await eventually(() => ids(socket).length >= 202, 5000);
      assert.deepEqual(ids(socket), range('m', 0, 202));
    });
  }
});

describe('recovery on one node, a server-side disconnect', () => {
  let server;
  let proxy;
  before(async () => {
    server = await startServer({ toml: recoveryToml({ jwt: 'leeway = "0s"' }) });
    proxy = await startProxy(server.port);
  });
  after(async () => {
    await proxy.close();
    await server.stop();
  });

  it('a client the server disconnected on purpose (its token expired) starts afresh', async () => {
    const conv = uid('conv');
    const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice', exp: nowSec() + 2 }), transports: ['websocket'] }));
    await join(socket, conv);
    await publish(server, conv, ['m0']);
    await eventually(() => ids(socket).length === 1);
    const [reason] = await once(socket, 'disconnect', 10000);
    assert.equal(reason, 'io server disconnect');
    await publish(server, conv, ['m1']);
    socket.auth = { token: signJwt({ sub: 'alice' }) };
    socket.connect();
    await connected(socket);
    assert.equal(socket.recovered, false);
    await assertInNoRoom(server, socket, [conv]);
    assert.deepEqual(ids(socket, conv), ['m0']);
  });
});

describe('recovery when it cannot be done in full', () => {
  for (const transports of TRANSPORTS) {
    it(`window over: a client back after recovery.max_disconnection is a new connection (${transports[0]})`, async () => {
      // The window runs from when the server sees the socket go: over long-polling that is
      // the ping timeout, made short here.
      const server = await startServer({
        toml: recoveryToml({ window: '500ms' }),
        env: { SWITCHBOARD_TRANSPORTS__SOCKETIO__PING_INTERVAL: '300ms', SWITCHBOARD_TRANSPORTS__SOCKETIO__PING_TIMEOUT: '300ms' },
      });
      const proxy = await startProxy(server.port);
      try {
        const conv = uid('conv');
        const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
        await join(socket, conv);
        await publish(server, conv, ['m0']);
        await eventually(() => ids(socket).length === 1);
        await drop(proxy, socket);
        await publish(server, conv, ['m1']);
        // The window is what is tested: the client stays away longer than it (and than the
        // ping timeout that tells the server it went).
        await sleep(2000);
        assert.equal(await back(proxy, socket), false);
        await assertInNoRoom(server, socket, [conv]);
        assert.deepEqual(ids(socket).filter((m) => /^m\d/.test(m)), ['m0']);
      } finally {
        await proxy.close();
        await server.stop();
      }
    });
  }

  for (const transports of TRANSPORTS) {
    it(`history trimmed (${transports[0]}): more missed than history.size keeps is recovered false, nothing partial`, async () => {
      const server = await startServer({ toml: recoveryToml({ historySize: 5 }) });
      const proxy = await startProxy(server.port);
      try {
        const conv = uid('conv');
        const kept = uid('kept');
        const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
        await join(socket, conv);
        await join(socket, kept);
        await publish(server, conv, ['m0']);
        await eventually(() => ids(socket).length === 1);
        await drop(proxy, socket);
        await publish(server, conv, range('m', 1, 12));
        // The other room lost nothing, but a partial recovery is never made.
        await publish(server, kept, ['k0']);
        assert.equal(await back(proxy, socket), false);
        await assertInNoRoom(server, socket, [conv, kept]);
        assert.deepEqual(ids(socket).filter((m) => /^[mk]\d/.test(m)), ['m0']);
      } finally {
        await proxy.close();
        await server.stop();
      }
    });
  }

  it('an offset that is not one of ours is recovered false', async () => {
    const server = await startServer({ toml: recoveryToml() });
    const proxy = await startProxy(server.port);
    try {
      const conv = uid('conv');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports: ['websocket'] }));
      await join(socket, conv);
      await publish(server, conv, ['m0']);
      await eventually(() => ids(socket).length === 1);
      await drop(proxy, socket);
      socket._lastOffset = 'not-an-offset';
      assert.equal(await back(proxy, socket), false);
      await assertInNoRoom(server, socket, [conv]);
    } finally {
      await proxy.close();
      await server.stop();
    }
  });
});

describe('recovery with the native protocol', () => {
  let server;
  before(async () => { server = await startServer({ toml: recoveryToml({ historySize: 50 }), env: { RUST_LOG: 'switchboard_core=debug,info' } }); });
  after(async () => { await server.stop(); });

  const token = () => signJwt({ sub: 'alice' });
  const statusFrames = (c) => c.frames.filter((f) => f.event === 'message:status');

  async function nativeConnect(first) {
    const c = await openNative(server);
    c.send(first);
    c.hello = await c.frame((f) => f.op === 'connected', 5000, 'connected');
    return c;
  }

  async function nativeJoin(c, conversationId) {
    const ack = await c.emitAck('conversation:join', { conversationId });
    assert.deepEqual(ack, { conversationId, success: true });
  }

  it('connected carries a session; event frames carry their offset; a reconnect with recover gets what it missed, once, in order', async () => {
    const conv = uid('conv');
    const first = await nativeConnect({ op: 'connect', token: token() });
    assert.equal(typeof first.hello.session, 'string');
    assert.equal('recovered' in first.hello, false, 'a client that did not ask to recover is not told');
    await nativeJoin(first, conv);
    await publish(server, conv, range('m', 0, 3));
    await eventually(() => statusFrames(first).length === 3);
    for (const f of statusFrames(first)) {
      assert.deepEqual(Object.keys(f).sort(), ['__at', 'data', 'event', 'offset']);
      assert.equal(typeof f.offset, 'string');
    }
    const offset = statusFrames(first).at(-1).offset;
    first.ws.terminate();
    await first.closed;
    await publish(server, conv, range('m', 3, 13));
    const again = await nativeConnect({ op: 'connect', token: token(), recover: { session: first.hello.session, offset } });
    assert.equal(again.hello.recovered, true);
    await eventually(() => statusFrames(again).length >= 10, 5000);
    await publish(server, conv, ['m13']);
    await eventually(() => statusFrames(again).length >= 11, 5000);
    assert.deepEqual(statusFrames(again).map((f) => f.data.messageId), range('m', 3, 14));
    again.close();
  });

  it('two rooms with their events interleaved: every missed event of both, once, in order', async () => {
    const [c1, c2] = [uid('conv'), uid('conv')];
    const first = await nativeConnect({ op: 'connect', token: token() });
    await nativeJoin(first, c1);
    await nativeJoin(first, c2);
    await publish(server, c1, ['a0']);
    await eventually(() => nativeIds(first).length === 1);
    const again = recoverFrom(first, token());
    first.ws.terminate();
    await first.closed;
    for (let i = 1; i <= 6; i += 1) {
      await publish(server, i % 2 ? c2 : c1, [`${i % 2 ? 'b' : 'a'}${i}`]);
    }
    const back = await nativeConnect(again);
    assert.equal(back.hello.recovered, true);
    await eventually(() => nativeIds(back).length >= 6, 5000);
    assert.deepEqual(nativeIds(back, c1), ['a2', 'a4', 'a6']);
    assert.deepEqual(nativeIds(back, c2), ['b1', 'b3', 'b5']);
    assert.deepEqual(nativeIds(back), ['b1', 'a2', 'b3', 'a4', 'b5', 'a6'], 'in the order they were published');
    back.close();
  });

  it('window over: a client back after recovery.max_disconnection starts afresh', async () => {
    const short = await startServer({ toml: recoveryToml({ window: '500ms' }) });
    try {
      const conv = uid('conv');
      const first = await nativeOn(short, { op: 'connect', token: token() });
      await nativeJoinRoom(first, conv);
      await publish(short, conv, ['m0']);
      await eventually(() => nativeIds(first).length === 1);
      const again = recoverFrom(first, token());
      first.ws.terminate();
      await first.closed;
      await publish(short, conv, ['m1']);
      // The window is what is tested: the client stays away longer than it.
      await sleep(1500);
      const late = await nativeOn(short, again);
      assert.equal(late.hello.recovered, false);
      await publish(short, conv, ['m2']);
      await sleep(300);
      assert.deepEqual(nativeIds(late), [], 'in no room, nothing replayed');
      late.close();
    } finally {
      await short.stop();
    }
  });

  it('recover with another user, or after the history was trimmed: recovered false and a fresh start', async () => {
    const conv = uid('conv');
    const first = await nativeConnect({ op: 'connect', token: token() });
    await nativeJoin(first, conv);
    await publish(server, conv, ['m0']);
    await eventually(() => statusFrames(first).length === 1);
    const recover = { session: first.hello.session, offset: statusFrames(first)[0].offset };
    first.ws.terminate();
    await first.closed;

    const mallory = await nativeConnect({ op: 'connect', token: signJwt({ sub: 'mallory' }), recover });
    assert.equal(mallory.hello.recovered, false);
    assert.notEqual(mallory.hello.session, recover.session);
    mallory.close();

    await publish(server, conv, range('m', 1, 60));
    const late = await nativeConnect({ op: 'connect', token: token(), recover });
    assert.equal(late.hello.recovered, false);
    const fresh = uid('fresh');
    await nativeJoin(late, fresh);
    await publish(server, conv, ['stray']);
    await publish(server, fresh, ['marker']);
    await eventually(() => statusFrames(late).some((f) => f.data.messageId === 'marker'), 5000);
    assert.deepEqual(statusFrames(late).map((f) => f.data.messageId), ['marker']);
    late.close();
  });

  it('without recovery on, frames carry no offset and connected no session', async () => {
    const plain = await startServer({ toml: configToml() });
    try {
      const conv = uid('conv');
      const c = await openNative(plain);
      c.send({ op: 'connect', token: token(), recover: { session: 'x', offset: 'y' } });
      const hello = await c.frame((f) => f.op === 'connected');
      assert.equal('session' in hello, false);
      await nativeJoin(c, conv);
      await publish(plain, conv, ['m0']);
      const data = await c.event('message:status');
      assert.equal(data.messageId, 'm0');
      c.close();
    } finally {
      await plain.stop();
    }
  });
});

describe('GET /api/v1/history/{room}', () => {
  let server;
  before(async () => { server = await startServer({ toml: recoveryToml({ historySize: 5 }) }); });
  after(async () => { await server.stop(); });

  const history = (room, query = '') => api(server, 'GET', `/api/v1/history/${encodeURIComponent(room)}${query}`);

  it('the emit answer carries the offset; the history gives each kept event with its offset, oldest first', async () => {
    const conv = uid('conv');
    const room = `conversation:${conv}`;
    const offsets = [];
    for (const m of ['m0', 'm1', 'm2']) {
      const r = await emitApi(server, status(conv, m));
      assert.equal(r.status, 200);
      assert.equal(typeof r.json.offset, 'string');
      offsets.push(r.json.offset);
    }
    const all = await history(room);
    assert.equal(all.status, 200);
    assert.equal(all.json.room, room);
    assert.equal(all.json.complete, true);
    assert.deepEqual(all.json.events.map((e) => [e.event, e.data.messageId, e.offset]),
      [['message:status', 'm0', offsets[0]], ['message:status', 'm1', offsets[1]], ['message:status', 'm2', offsets[2]]]);
    const since = await history(room, `?since=${encodeURIComponent(offsets[0])}`);
    assert.deepEqual(since.json.events.map((e) => e.data.messageId), ['m1', 'm2']);
    assert.equal(since.json.complete, true);
    const page = await history(room, `?since=${encodeURIComponent(offsets[0])}&limit=1`);
    assert.deepEqual(page.json.events.map((e) => e.data.messageId), ['m1']);
    const none = await history(room, `?since=${encodeURIComponent(offsets[2])}`);
    assert.deepEqual(none.json, { room, events: [], complete: true });
  });

  it('takes the offset a socket received as since; typing indicators are not kept', async () => {
    const conv = uid('conv');
    const socket = await connected(client(server.url, { token: signJwt({ sub: 'alice' }), transports: ['websocket'] }));
    const typist = await connected(client(server.url, { token: signJwt({ sub: 'bob' }), transports: ['websocket'] }));
    await join(socket, conv);
    await join(typist, conv);
    await publish(server, conv, ['m0']);
    await eventually(() => ids(socket).length === 1);
    typist.emit('typing:start', { conversationId: conv });
    await eventually(() => socket.got.some((g) => g.event === 'typing:start'));
    assert.equal(socket.got.find((g) => g.event === 'typing:start').args.length, 1, 'typing:* carries no offset');
    await publish(server, conv, ['m1']);
    await eventually(() => ids(socket).length === 2);
    const seen = socket.got.find((g) => g.event === 'message:status').args.at(-1);
    const r = await history(`conversation:${conv}`, `?since=${encodeURIComponent(seen)}`);
    assert.deepEqual(r.json.events.map((e) => [e.event, e.data.messageId]), [['message:status', 'm1']]);
  });

  it('complete is false once the history no longer reaches back to since', async () => {
    const conv = uid('conv');
    const first = await emitApi(server, status(conv, 'm0'));
    await publish(server, conv, range('m', 1, 8));
    const r = await history(`conversation:${conv}`, `?since=${encodeURIComponent(first.json.offset)}`);
    assert.equal(r.status, 200);
    assert.equal(r.json.complete, false);
    assert.deepEqual(r.json.events.map((e) => e.data.messageId), range('m', 3, 8), 'the newest history.size events');
  });

  it('a room never published to has an empty, complete history; bad queries are 422; no key is 401', async () => {
    const r = await history('conversation:nobody-here');
    assert.deepEqual(r.json, { room: 'conversation:nobody-here', events: [], complete: true });
    for (const q of ['?since=not-an-offset', '?limit=0', '?limit=x']) {
      const bad = await history('conversation:x', q);
      assert.equal(bad.status, 422, q);
      assert.equal(typeof bad.json.error, 'string');
    }
    const anon = await api(server, 'GET', '/api/v1/history/conversation:x', { key: null });
    assert.equal(anon.status, 401);
  });
});

/** Where the nodes keep history and sessions: one server, or a Redis Cluster. */
const BACKENDS = [
  { name: 'one Redis', start: startRedis, restartable: true },
  // The run's shared cluster is never restarted by a test; its failover is tested with the
  // broker (plugins/broker-redis/tests/cluster.rs).
  { name: 'a Redis Cluster', start: sharedCluster, restartable: false },
];

for (const backend of BACKENDS) describe(`recovery across nodes on ${backend.name}`, () => {
  let redis;
  before(async () => { redis = await backend.start(); });
  after(async () => { await redis.stop(); });

  async function twoNodes() {
    const prefix = `${uid('sb')}:`;
    const a = await startServer({ toml: recoveryToml({ redis, prefix }) });
    const b = await startServer({ toml: recoveryToml({ redis, prefix }) });
    for (const s of [a, b]) await eventually(async () => (await api(s, 'GET', '/readyz')).status === 200, 10000);
    return [a, b];
  }

  for (const transports of TRANSPORTS) {
    it(`a client that reconnects to another node recovers there (${transports[0]})`, async () => {
      const [a, b] = await twoNodes();
      const proxy = await startProxy(a.port);
      try {
        const conv = uid('conv');
        const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
        await join(socket, conv);
        await publish(a, conv, range('m', 0, 3));
        await eventually(() => ids(socket).length === 3, 5000);
        await drop(proxy, socket);
        proxy.retarget(b.port);
        await publish(a, conv, range('m', 3, 13));
        await publish(b, conv, range('m', 13, 23));
        assert.equal(await back(proxy, socket), true);
        await eventually(() => ids(socket).length >= 23, 5000);
        await publish(a, conv, ['m23']);
        await eventually(() => ids(socket).length >= 24, 5000);
        assert.deepEqual(ids(socket), range('m', 0, 24), 'once each, in order');
        const onB = await api(b, 'GET', `/api/v1/presence/alice`);
        assert.equal(onB.json.online, true);
      } finally {
        await proxy.close();
        await a.stop();
        await b.stop();
      }
    });
  }

  for (const transports of TRANSPORTS) {
    it(`its node shutting down (a rolling deploy): the client reconnects to another node and recovers, exactly (${transports[0]})`, async () => {
      const [a, b] = await twoNodes();
      const proxy = await startProxy(a.port);
      try {
        const conv = uid('conv');
        const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
        await join(socket, conv);
        await publish(a, conv, range('m', 0, 3));
        await eventually(() => ids(socket).length === 3, 5000);
        proxy.hold();
        const gone = once(socket, 'disconnect');
        await a.stop('SIGTERM');
        const [reason] = await gone;
        assert.notEqual(reason, 'io server disconnect', 'a node that shuts down lets its clients reconnect');
        proxy.retarget(b.port);
        await publish(b, conv, range('m', 3, 13));
        assert.equal(await back(proxy, socket), true);
        await eventually(() => ids(socket).length >= 13, 5000);
        await publish(b, conv, ['m13']);
        await eventually(() => ids(socket).length >= 14, 5000);
        assert.deepEqual(ids(socket), range('m', 0, 14), 'once each, in order');
      } finally {
        await proxy.close();
        await a.stop();
        await b.stop();
      }
    });
  }

  for (const transports of TRANSPORTS) {
    it(`the node that held it killed with SIGKILL: the client recovers on another node and loses nothing (${transports[0]})`, async () => {
      const [a, b] = await twoNodes();
      const proxy = await startProxy(a.port);
      try {
        const conv = uid('conv');
        const other = uid('other');
        const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
        await join(socket, conv);
        await join(socket, other);
        await publish(a, conv, range('m', 0, 5));
        await publish(b, other, ['o0']);
        await eventually(() => ids(socket).length === 6, 5000);
        proxy.hold();
        const gone = once(socket, 'disconnect');
        await a.stop('SIGKILL');
        await gone;
        proxy.retarget(b.port);
        await publish(b, conv, range('m', 5, 25));
        await publish(b, other, ['o1']);
        assert.equal(await back(proxy, socket), true, 'recovered from the checkpoints of the node that died');
        await eventually(() => ids(socket, conv).includes('m24') && ids(socket, other).includes('o1'), 5000);
        await publish(b, conv, ['m25']);
        await eventually(() => ids(socket, conv).includes('m25'), 5000);
        const firsts = (list) => list.filter((m, i) => list.indexOf(m) === i);
        assert.deepEqual(firsts(ids(socket, conv)), range('m', 0, 26), 'nothing lost, in order');
        assert.deepEqual(firsts(ids(socket, other)), ['o0', 'o1']);
        // Repeats are allowed here (the book says which), but only of events it had before
        // the node died, replayed once, in order.
        const replayed = ids(socket, conv).slice(5);
        assert.deepEqual(replayed, firsts(replayed), 'no event twice after the reconnection');
      } finally {
        await proxy.close();
        await a.stop();
        await b.stop();
      }
    });
  }

  it('rooms/leave after the node that held the client died: it recovers on another node without that room', async () => {
    const [a, b] = await twoNodes();
    const proxy = await startProxy(a.port);
    try {
      const user = uid('alice');
      const kept = uid('kept');
      const revoked = uid('revoked');
      const socket = await connected(client(proxy.url, { token: signJwt({ sub: user }), transports: ['websocket'] }));
      await join(socket, kept);
      await join(socket, revoked);
      proxy.hold();
      const gone = once(socket, 'disconnect');
      await a.stop('SIGKILL');
      await gone;
      proxy.retarget(b.port);
      // Once B no longer counts A as alive, the call is not asked of A (and answers).
      await eventually(async () => (await api(b, 'GET', '/api/v1/nodes')).json?.nodes?.length === 1, 15000);
      const r = await api(b, 'POST', '/api/v1/rooms/leave', { body: { room: `conversation:${revoked}`, userId: user } });
      assert.equal(r.status, 404, JSON.stringify(r.json));
      await publish(b, revoked, ['r0']);
      await publish(b, kept, ['k0']);
      assert.equal(await back(proxy, socket), true, 'recovered from the records of the node that died');
      await publish(b, revoked, ['r1']);
      await publish(b, kept, ['k1']);
      await eventually(() => ids(socket, kept).includes('k1'), 5000);
      assert.deepEqual(ids(socket, kept), ['k0', 'k1']);
      assert.deepEqual(ids(socket, revoked), [], 'an event of the room the backend took it out of');
    } finally {
      await proxy.close();
      await a.stop();
      await b.stop();
    }
  });

  for (const how of ['SIGKILL', 'SIGTERM']) {
    it(`presence changes it missed reach it when its node is gone (${how}): the new node replays its own, from where the old node's marks say`, async () => {
      const [a, b] = await twoNodes();
      const proxy = await startProxy(a.port);
      try {
        const conv = uid('conv');
        const [dave, erin] = [uid('dave'), uid('erin')];
        const socket = await connected(client(proxy.url, { token: signJwt({ sub: uid('alice') }), transports: ['websocket'] }));
        await join(socket, conv);
        const daveSock = io(b.url + NAMESPACE, { auth: { token: signJwt({ sub: dave }) }, transports: ['websocket'], forceNew: true });
        open.add(daveSock);
        await connected(daveSock);
        const about = (user, event) => socket.got.filter((g) => g.event === event && g.args[0].userId === user);
        await eventually(() => about(dave, 'user:online').length === 1, 5000);
        await publish(a, conv, ['m0']);
        await eventually(() => ids(socket).length === 1, 5000);
        proxy.hold();
        const gone = once(socket, 'disconnect');
        await a.stop(how);
        await gone;
        // While the client is away: erin arrives, dave leaves.
        const erinSock = io(b.url + NAMESPACE, { auth: { token: signJwt({ sub: erin }) }, transports: ['websocket'], forceNew: true });
        open.add(erinSock);
        await connected(erinSock);
        daveSock.disconnect();
        await eventually(async () => (await api(b, 'GET', `/api/v1/presence/${dave}`)).json.online === false, 5000);
        proxy.retarget(b.port);
        assert.equal(await back(proxy, socket), true);
        await eventually(() => about(erin, 'user:online').length >= 1 && about(dave, 'user:offline').length >= 1, 5000);
        // Replayed in order: dave's offline after his online; the last word on each is right.
        const last = (user) => socket.got.filter((g) => (g.event === 'user:online' || g.event === 'user:offline') && g.args[0].userId === user).at(-1).event;
        assert.equal(last(erin), 'user:online');
        assert.equal(last(dave), 'user:offline');
      } finally {
        await proxy.close();
        await a.stop();
        await b.stop();
      }
    });
  }

  it('native: a client that reconnects to another node recovers there', async () => {
    const [a, b] = await twoNodes();
    try {
      const conv = uid('conv');
      const tok = signJwt({ sub: 'alice' });
      const first = await nativeOn(a, { op: 'connect', token: tok });
      await nativeJoinRoom(first, conv);
      await publish(a, conv, range('m', 0, 3));
      await eventually(() => nativeIds(first).length === 3, 5000);
      const again = recoverFrom(first, tok);
      first.ws.terminate();
      await first.closed;
      await publish(a, conv, range('m', 3, 8));
      await publish(b, conv, range('m', 8, 13));
      const back = await nativeOn(b, again);
      assert.equal(back.hello.recovered, true);
      await eventually(() => nativeIds(back).length >= 10, 5000);
      await publish(a, conv, ['m13']);
      await eventually(() => nativeIds(back).length >= 11, 5000);
      assert.deepEqual(nativeIds(back), range('m', 3, 14), 'once each, in order');
      back.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('native: the node that held it killed with SIGKILL: it recovers on another node and loses nothing', async () => {
    const [a, b] = await twoNodes();
    try {
      const conv = uid('conv');
      const tok = signJwt({ sub: 'alice' });
      const first = await nativeOn(a, { op: 'connect', token: tok });
      await nativeJoinRoom(first, conv);
      await publish(a, conv, range('m', 0, 5));
      await eventually(() => nativeIds(first).length === 5, 5000);
      const again = recoverFrom(first, tok);
      await a.stop('SIGKILL');
      await first.closed;
      await publish(b, conv, range('m', 5, 15));
      const back = await nativeOn(b, again);
      assert.equal(back.hello.recovered, true, 'recovered from the checkpoints of the node that died');
      await eventually(() => nativeIds(back).includes('m14'), 5000);
      await publish(b, conv, ['m15']);
      await eventually(() => nativeIds(back).includes('m15'), 5000);
      const seen = [...nativeIds(first), ...nativeIds(back)];
      const firsts = seen.filter((m, i) => seen.indexOf(m) === i);
      assert.deepEqual(firsts, range('m', 0, 16), 'nothing lost, in order');
      const after = nativeIds(back);
      assert.deepEqual(after, after.filter((m, i) => after.indexOf(m) === i), 'no event twice after the reconnection');
      back.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('native: Redis restarted empty while the client was away: recovered false, nothing replayed', { skip: !backend.restartable && 'the shared cluster is not restarted' }, async () => {
    const [a, b] = await twoNodes();
    try {
      const conv = uid('conv');
      const tok = signJwt({ sub: 'alice' });
      const first = await nativeOn(a, { op: 'connect', token: tok });
      await nativeJoinRoom(first, conv);
      await publish(a, conv, ['m0']);
      await eventually(() => nativeIds(first).length === 1, 5000);
      const again = recoverFrom(first, tok);
      first.ws.terminate();
      await first.closed;
      await redis.stop();
      await redis.start();
      for (const s of [a, b]) await eventually(async () => (await api(s, 'GET', '/readyz')).status === 200, 15000);
      await publish(a, conv, ['m1']);
      const back = await nativeOn(b, again);
      assert.equal(back.hello.recovered, false);
      await sleep(300);
      assert.deepEqual(nativeIds(back), [], 'nothing replayed, in no room');
      back.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it('the history lives in Redis: kept on one node, read on another', async () => {
    const [a, b] = await twoNodes();
    try {
      const conv = uid('conv');
      const first = await emitApi(a, status(conv, 'm0'));
      await publish(b, conv, ['m1', 'm2']);
      await a.stop();
      const r = await api(b, 'GET', `/api/v1/history/conversation:${conv}?since=${encodeURIComponent(first.json.offset)}`);
      assert.equal(r.status, 200);
      assert.equal(r.json.complete, true);
      assert.deepEqual(r.json.events.map((e) => e.data.messageId), ['m1', 'm2']);
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  for (const transports of TRANSPORTS) {
    it(`Redis restarted empty while the client was away: recovered false, nothing replayed (${transports[0]})`, { skip: !backend.restartable && 'the shared cluster is not restarted' }, async () => {
      const [a, b] = await twoNodes();
      const proxy = await startProxy(a.port);
      try {
        const conv = uid('conv');
        const socket = await connected(client(proxy.url, { token: signJwt({ sub: 'alice' }), transports }));
        await join(socket, conv);
        await publish(a, conv, range('m', 0, 3));
        await eventually(() => ids(socket).length === 3, 5000);
        await drop(proxy, socket);
        proxy.retarget(b.port);
        await redis.stop();
        await redis.start();
        for (const s of [a, b]) await eventually(async () => (await api(s, 'GET', '/readyz')).status === 200, 15000);
        await publish(b, conv, range('m', 3, 6));
        assert.equal(await back(proxy, socket), false);
        await assertInNoRoom(b, socket, [conv]);
        assert.deepEqual(ids(socket).filter((m) => /^m\d/.test(m)), range('m', 0, 3));
      } finally {
        await proxy.close();
        await a.stop();
        await b.stop();
      }
    });
  }
});

describe('a node cut off from Redis for longer than the control log keeps the calls', () => {
  it('closes every socket so that each client connects again by itself, afresh (socket.io-client over WebSocket and long-polling, native)', async () => {
    const redis = await startRedis();
    // Node B reaches Redis through a forwarder the test can cut.
    const link = await startProxy(redis.port);
    const prefix = `${uid('sb')}:`;
    const a = await startServer({ toml: recoveryToml({ redis, prefix }) });
    const b = await startServer({ toml: recoveryToml({ redis: { url: `redis://127.0.0.1:${link.port}` }, prefix }) });
    const nodes = async () => (await api(a, 'GET', '/api/v1/nodes')).json?.nodes?.length;
    try {
      for (const s of [a, b]) await eventually(async () => (await api(s, 'GET', '/readyz')).status === 200, 10000);
      await eventually(async () => (await nodes()) === 2, 10000);
      const conv = uid('conv');
      const alice = uid('alice');
      const onA = await connected(client(a.url, { token: signJwt({ sub: alice }), transports: ['websocket'] }));
      const witness = await connected(client(a.url, { token: signJwt({ sub: uid('dave') }), transports: ['websocket'] }));
      const ws = await connected(client(b.url, { token: signJwt({ sub: alice }), transports: ['websocket'] }));
      const polling = await connected(client(b.url, { token: signJwt({ sub: uid('bob') }), transports: ['polling'] }));
      for (const s of [onA, witness, ws, polling]) await join(s, conv);
      const native = await openNative(b);
      native.send({ op: 'connect', token: signJwt({ sub: uid('carol') }) });
      await native.frame((f) => f.op === 'connected', 5000, 'connected');
      const nativeAck = await native.emitAck('conversation:join', { conversationId: conv });
      assert.deepEqual(nativeAck, { conversationId: conv, success: true });
      await publish(a, conv, ['before']);
      await eventually(() => ids(ws).length === 1 && ids(polling).length === 1, 5000);

      // B loses Redis until A no longer counts it; the backend takes alice out of the room.
      link.hold();
      link.cut();
      await eventually(async () => (await nodes()) === 1, 15000);
      const left = await api(a, 'POST', '/api/v1/rooms/leave', { body: { room: `conversation:${conv}`, userId: alice } });
      assert.equal(left.status, 200, JSON.stringify(left.json));
      // The log loses the call before B is back (B stayed away longer than it keeps calls).
      const entries = await redisCommand(redis.port, 'XRANGE', `${prefix}control-log`, '-', '+');
      assert.ok(entries.length > 0, 'the call is in the log');
      await redisCommand(redis.port, 'XDEL', `${prefix}control-log`, ...entries.map((e) => e[0]));

      const dropped = [ws, polling].map((s) => once(s, 'disconnect', 20000));
      const reconnected = [ws, polling].map((s) => once(s, 'connect', 25000));
      link.release();
      for (const [reason] of await Promise.all(dropped)) {
        assert.equal(reason, 'transport close', 'socket.io-client is told to connect again, not disconnected for good');
      }
      assert.deepEqual(await native.closedWith(20000), { code: 1012, reason: 'Connect again' });
      await Promise.all(reconnected);
      assert.equal(ws.recovered, false, 'nothing is recovered of a session the node forgot');
      assert.equal(polling.recovered, false);
      const metrics = await api(b, 'GET', '/metrics');
      assert.match(metrics.text, /switchboard_errors_total\{kind="control_reset"\} 1\b/, 'the operator can see it');

      // Afresh: in no room until the client joins again.
      await publish(a, conv, ['after']);
      await eventually(() => ids(witness).length === 2, 5000);
      await join(polling, conv);
      await publish(a, conv, ['rejoined']);
      await eventually(() => ids(polling).includes('rejoined'), 5000);
      assert.deepEqual(ids(ws), ['before'], 'alice on B gets nothing of the room after the leave');
      assert.deepEqual(ids(polling), ['before', 'rejoined']);
      assert.deepEqual(ids(onA), ['before'], 'alice on A left the room');
      await eventually(() => ids(witness).length === 3, 5000);
      assert.deepEqual(ids(witness), ['before', 'after', 'rejoined']);
    } finally {
      await link.close();
      await a.stop();
      await b.stop();
      await redis.stop();
    }
  });
});
