// CONTRACT §5: the native WebSocket protocol, driven with the `ws` package, beside
// socket.io-client in the same rooms. Connect (each refusal and its close code, the
// handshake timeout), every §2 client event and its ack, mixed rooms with Socket.IO
// (typing both ways, every API-published event, presence), the same across two nodes on
// one Redis, Lua hooks applying to native sockets as to Socket.IO ones, bad frames, binary and oversize closes, the ping timeout of a silent client,
// token expiry, rate abuse, shutdown.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  REPO_ROOT, configToml, startServer, signJwt, rawJwt, connect, waitFor, expectNone, emitApi,
  joinConversation, joinSession, presenceOf, expectOnline, eventually, uid, sleep, nowSec,
  standardHooks,
} from './helpers.mjs';
import { openNative, connectNative, nativeRefusal, closeAllNative } from './native.mjs';
import { startRedis } from './redis.mjs';
import path from 'node:path';

const NO_TOKEN = 'Authentication failed: No token provided';
const INVALID = 'Authentication failed: Invalid token';

const ws = (lines) => `[transports.websocket]\n${lines}\n`;

let server; // defaults, with a small frame maximum
let quick; // 1 s handshake timeout, 300 ms pings, ?userId= allowed, no leeway
let rated; // 1 event/s, burst 2, disconnect after 600 ms over the rate

before(async () => {
  [server, quick, rated] = await Promise.all([
    startServer({ toml: configToml({ extra: ws('max_frame_bytes = "64KiB"'), limits: 'max_event_bytes = "16KiB"' }) }),
    startServer({
      toml: configToml({
        auth: 'allow_query_user_id = true',
        jwt: 'leeway = "0s"',
        limits: 'handshake_timeout = "1s"',
        extra: ws('ping_interval = "300ms"'),
      }),
    }),
    startServer({
      toml: configToml({ limits: 'events_per_second = 1\nburst = 2\nrate_disconnect_after = "600ms"' }),
    }),
  ]);
});
after(async () => {
  await Promise.all([server, quick, rated].filter(Boolean).map((s) => s.stop()));
});
standardHooks(() => [server, quick, rated]);
afterEach(() => closeAllNative());

const user = (name) => {
  const sub = uid(name);
  return { sub, token: signJwt({ sub, email: `${name}@example.com` }) };
};

describe('native connect', () => {
  it('the connect frame\'s token -> {op: "connected", userId, socketId}, exactly these keys', async () => {
    const u = user('nat');
    const c = await connectNative(server, { token: u.token });
    assert.deepEqual(Object.keys(c.hello).sort(), ['op', 'socketId', 'userId']);
    assert.equal(c.hello.userId, u.sub);
    assert.match(c.hello.socketId, /^[A-Za-z0-9_-]{10,}$/);
    await expectOnline(server, u.sub, 1);
  });

  it('without a token in the frame, the upgrade request\'s Authorization: Bearer counts', async () => {
    const u = user('bearer');
    const c = await connectNative(server, { headers: { authorization: `Bearer ${u.token}` } });
    assert.equal(c.hello.userId, u.sub);
    // The frame's token wins over the header.
    const v = user('frame');
    const d = await connectNative(server, { token: v.token, headers: { authorization: `Bearer ${u.token}` } });
    assert.equal(d.hello.userId, v.sub);
  });

  const refusals = [
    ['no token key', { first: { op: 'connect' } }, NO_TOKEN],
    ['token null', { first: { op: 'connect', token: null } }, NO_TOKEN],
    ['token ""', { token: '' }, NO_TOKEN],
    ['a ?token= query is not a token source', { token: undefined, query: `?token=${signJwt({ sub: 'q' })}` }, NO_TOKEN],
    ['?userId= when not allowed', { query: '?userId=mallory' }, NO_TOKEN],
    ['a first frame that is an event', { first: { event: 'conversation:join', data: { conversationId: 'c' } } }, NO_TOKEN],
    ['a first frame that is not JSON', { first: 'hello' }, NO_TOKEN],
    ['a first frame with another op', { first: { op: 'hello', token: 'x' } }, NO_TOKEN],
    ['garbage token', { token: 'not-a-jwt' }, INVALID],
    ['a token that is not a string', { first: { op: 'connect', token: 42 } }, INVALID],
    ['wrong secret', { token: signJwt({ sub: 'x' }, 'another-secret-that-is-long-enough-000') }, INVALID],
    ['alg none', { token: rawJwt({ alg: 'none', typ: 'JWT' }, { sub: 'x', exp: nowSec() + 60 }) }, INVALID],
    ['expired', { token: signJwt({ sub: 'x', exp: nowSec() - 3600 }) }, INVALID],
    ['no sub', { token: signJwt({ email: 'x@example.com' }) }, INVALID],
  ];
  for (const [name, opts, message] of refusals) {
    it(`refused: ${name} -> {op: "error", message: "${message}"}, close 4401`, async () => {
      const r = await nativeRefusal(server, opts);
      assert.deepEqual(r.reply, { op: 'error', message });
      assert.equal(r.code, 4401);
    });
  }

  it('a first frame that is not op: connect is refused even with a valid Bearer header', async () => {
    const r = await nativeRefusal(server, {
      headers: { authorization: `Bearer ${user('hdr').token}` },
      first: { event: 'typing:start', data: { conversationId: 'c' } },
    });
    assert.deepEqual([r.reply, r.code], [{ op: 'error', message: NO_TOKEN }, 4401]);
  });

  it('?userId= applies only when allowed and there is no token; a bad token never falls back', async () => {
    const who = uid('dev');
    const c = await connectNative(quick, { query: `?userId=${who}` });
    assert.equal(c.hello.userId, who);
    const r = await nativeRefusal(quick, { query: `?userId=${who}`, token: 'bad' });
    assert.deepEqual([r.reply, r.code], [{ op: 'error', message: INVALID }, 4401]);
  });

  it('no first frame within limits.handshake_timeout -> {op: "error", message: "Handshake timeout"}, close 4408', async () => {
    const c = await openNative(quick);
    const t0 = Date.now();
    const { code } = await c.closedWith(4000);
    const waited = Date.now() - t0;
    assert.equal(code, 4408);
    assert.deepEqual(c.frames.map(({ __at, ...f }) => f), [{ op: 'error', message: 'Handshake timeout' }]);
    assert.ok(waited >= 800 && waited < 3000, `closed after ${waited} ms (timeout 1s)`);
  });

  it('a plain GET of the endpoint is refused with 426', async () => {
    const res = await fetch(`${server.url}/ws`);
    assert.equal(res.status, 426);
  });
});

const ROOM_EVENTS = [
  ['conversation:join', 'conversation:joined', 'conversationId'],
  ['conversation:leave', 'conversation:left', 'conversationId'],
  ['session:join', 'session:joined', 'sessionId'],
  ['session:leave', 'session:left', 'sessionId'],
];

describe('native client → server events', () => {
  for (const [event, reply, key] of ROOM_EVENTS) {
    it(`${event} with a numeric id -> ${reply} and the ack {ack: id, data} carry the same object`, async () => {
      const c = await connectNative(server, { token: user('j').token });
      const id = uid('room');
      if (event.endsWith(':leave')) await c.emitAck(event.replace('leave', 'join'), { [key]: id });
      c.emit(event, { [key]: id }, 41);
      const [ack, ev] = await Promise.all([c.ack(41), c.event(reply)]);
      assert.deepEqual(ack, { [key]: id, success: true });
      assert.deepEqual(ev, { [key]: id, success: true });
    });

    it(`${event} with a string id is acked with that string; without an id there is no ack`, async () => {
      const c = await connectNative(server, { token: user('j').token });
      const id = uid('room');
      if (event.endsWith(':leave')) await c.emitAck(event.replace('leave', 'join'), { [key]: id });
      c.emit(event, { [key]: id }, 'req-1');
      assert.deepEqual(await c.ack('req-1'), { [key]: id, success: true });
      await c.event(reply);
      c.emit(event, { [key]: id });
      assert.deepEqual(await c.event(reply), { [key]: id, success: true });
      await sleep(200);
      assert.equal(c.frames.filter((f) => 'ack' in f).length, 1 + (event.endsWith(':leave') ? 1 : 0));
    });
  }

  it('typing:start / typing:stop reach the room except the sender', async () => {
    const [a, b] = [user('ta'), user('tb')];
    const ca = await connectNative(server, { token: a.token });
    const cb = await connectNative(server, { token: b.token });
    const conv = uid('conv');
    await ca.emitAck('conversation:join', { conversationId: conv });
    await cb.emitAck('conversation:join', { conversationId: conv });
    ca.emit('typing:start', { conversationId: conv });
    assert.deepEqual(await cb.event('typing:start'), { conversationId: conv, userId: a.sub, isTyping: true });
    ca.emit('typing:stop', { conversationId: conv });
    assert.deepEqual(await cb.event('typing:stop'), { conversationId: conv, userId: a.sub, isTyping: false });
    await ca.expectNone('typing:start', 200);
    await ca.expectNone('typing:stop', 0);
  });

  it('a left room no longer delivers', async () => {
    const c = await connectNative(server, { token: user('l').token });
    const conv = uid('conv');
    await c.emitAck('conversation:join', { conversationId: conv });
    await c.emitAck('conversation:leave', { conversationId: conv });
    const r = await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: 'm', status: 'read' } });
    assert.equal(r.status, 200);
    await c.expectNone('message:status', 300);
  });
});

describe('native and Socket.IO in the same rooms', () => {
  it('typing both ways between a Socket.IO client and a native client', async () => {
    const [a, b] = [user('sio'), user('nat')];
    const s = await connect(server, { token: a.token });
    const n = await connectNative(server, { token: b.token });
    const conv = uid('conv');
    await joinConversation(s, conv);
    assert.deepEqual(await n.emitAck('conversation:join', { conversationId: conv }), { conversationId: conv, success: true });

    const seen = waitFor(s, 'typing:start');
    n.emit('typing:start', { conversationId: conv });
    assert.deepEqual(await seen, { conversationId: conv, userId: b.sub, isTyping: true });
    s.emit('typing:stop', { conversationId: conv });
    assert.deepEqual(await n.event('typing:stop'), { conversationId: conv, userId: a.sub, isTyping: false });
    await expectNone(s, 'typing:stop', 200);
    await n.expectNone('typing:start', 0);
  });

  it('every API-published event reaches both, once', async () => {
    const s = await connect(server, { token: user('sio').token });
    const n = await connectNative(server, { token: user('nat').token });
    const conv = uid('conv');
    const sess = uid('sess');
    await joinConversation(s, conv);
    await joinSession(s, sess);
    await n.emitAck('conversation:join', { conversationId: conv });
    await n.emitAck('session:join', { sessionId: sess });
    const ts = new Date().toISOString();
    const published = [
      ['message:received', { conversationId: conv, messageId: 'm1', senderId: 'u', type: 'text', content: 'hi "there" \\ é', status: 'sent', timestamp: ts }],
      ['message:status', { conversationId: conv, messageId: 'm1', status: 'delivered' }],
      ['session:message-sent', { sessionId: sess, messageId: 'm2', senderId: 'bot', isFromBot: true, type: 'text', content: 'hello', status: 'sent', timestamp: ts }],
      ['session:node-executed', { sessionId: sess, nodeId: 'n1', nodeLabel: 'Start' }],
      ['session:status-changed', { sessionId: sess, newStatus: 'running', updatedAt: ts }],
      ['session:completed', { sessionId: sess, completedAt: ts, totalNodes: 3, totalMessages: 2 }],
    ];
    for (const [event, data] of published) {
      const got = waitFor(s, event);
      const r = await emitApi(server, { event, data });
      assert.equal(r.status, 200, `${event}: ${r.text}`);
      assert.deepEqual(await got, data, `Socket.IO ${event}`);
      assert.deepEqual(await n.event(event), data, `native ${event}`);
    }
    // An explicit room for an event no plugin owns.
    const got = waitFor(s, 'custom:thing');
    assert.equal((await emitApi(server, { event: 'custom:thing', room: `conversation:${conv}`, data: { x: [1, 2] } })).status, 200);
    assert.deepEqual(await got, { x: [1, 2] });
    assert.deepEqual(await n.event('custom:thing'), { x: [1, 2] });
    await sleep(200);
    for (const [event] of published) {
      assert.equal(n.frames.filter((f) => f.event === event).length, 1, `native got ${event} once`);
      assert.equal(s.received.filter((r) => r.event === event).length, 1, `Socket.IO got ${event} once`);
    }
  });

  it('presence counts both transports; user:online / user:offline cross them', async () => {
    const watcherS = await connect(server, { token: user('watch-sio').token });
    const watcherN = await connectNative(server, { token: user('watch-nat').token });
    const u = user('both');
    const onlineS = waitFor(watcherS, 'user:online', 5000, (d) => d.userId === u.sub);
    const n = await connectNative(server, { token: u.token });
    assert.deepEqual(await onlineS, { userId: u.sub });
    assert.deepEqual(await watcherN.event('user:online', 5000, (d) => d.userId === u.sub), { userId: u.sub });
    const s = await connect(server, { token: u.token });
    await expectOnline(server, u.sub, 2);
    const list = await fetch(`${server.url}/api/v1/presence`, { headers: { authorization: 'Bearer test-api-key' } }).then((r) => r.json());
    assert.ok(list.users.includes(u.sub));
    // Second connection: no second user:online.
    await expectNone(watcherS, 'user:online', 200, (d) => d.userId === u.sub);

    n.close();
    await expectOnline(server, u.sub, 1);
    // Both watchers listen before the last socket closes: the two events arrive together.
    const offlineN = watcherN.event('user:offline', 5000, (d) => d.userId === u.sub);
    const offlineS = waitFor(watcherS, 'user:offline', 5000, (d) => d.userId === u.sub);
    s.disconnect();
    assert.deepEqual(await offlineN, { userId: u.sub });
    assert.deepEqual(await offlineS, { userId: u.sub });
    await eventually(async () => (await presenceOf(server, u.sub)).online === false);
  });

  it('a native socket\'s join is effective when its ack arrives (publish right after)', async () => {
    for (let i = 0; i < 20; i++) {
      const n = await connectNative(server, { token: user('race').token });
      const conv = uid('conv');
      await n.emitAck('conversation:join', { conversationId: conv });
      await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: `m${i}`, status: 'read' } });
      assert.equal((await n.event('message:status', 2000)).messageId, `m${i}`);
      n.close();
    }
  });
});

describe('native bad input', () => {
  const bad = [
    ['not JSON', 'this is not json', null, /not JSON/],
    ['a JSON array', '[1,2,3]', null, /Malformed/],
    ['an unknown key (id readable)', { event: 'conversation:join', payload: {}, id: 5 }, 5, /payload/],
    ['no event (id readable)', { data: { conversationId: 'c' }, id: 'no-ev' }, 'no-ev', /event/],
    ['an id that is neither number nor string', { event: 'conversation:join', data: { conversationId: 'c' }, id: { a: 1 } }, null, /id/],
    ['a second op: connect', { op: 'connect', token: 'whatever', id: 9 }, 9, /already connected/],
    ['an unknown event', { event: 'nope:never', data: {}, id: 10 }, 10, /Unknown event/],
    ['a payload of the wrong shape', { event: 'conversation:join', data: { conversationId: 7 }, id: 11 }, 11, /conversationId/],
    ['an empty id', { event: 'session:join', data: { sessionId: '' }, id: 12 }, 12, /sessionId/],
  ];
  for (const [name, frame, id, mentions] of bad) {
    it(`${name} -> error {message, timestamp}${id !== null ? ' and a failed ack' : ''}; the socket stays open`, async () => {
      const c = await connectNative(server, { token: user('bad').token });
      c.send(frame);
      const err = await c.event('error');
      assert.deepEqual(Object.keys(err).sort(), ['message', 'timestamp']);
      assert.match(err.message, mentions);
      assert.ok(!Number.isNaN(Date.parse(err.timestamp)) && err.timestamp.endsWith('Z'), err.timestamp);
      if (id !== null) assert.deepEqual(await c.ack(id), { success: false, error: err.message });
      else {
        await sleep(150);
        assert.equal(c.frames.filter((f) => 'ack' in f).length, 0, 'no ack without a readable id');
      }
      // Alive and working.
      const conv = uid('ok');
      assert.deepEqual(await c.emitAck('conversation:join', { conversationId: conv }), { conversationId: conv, success: true });
      assert.ok(c.isOpen);
    });
  }

  it('an event over limits.max_event_bytes (but under the frame maximum) is an error, not a close', async () => {
    const c = await connectNative(server, { token: user('big').token });
    c.emit('typing:start', { conversationId: 'x'.repeat(20 * 1024) }, 1);
    assert.match((await c.event('error')).message, /too large/i);
    assert.equal((await c.ack(1)).success, false);
    assert.ok(c.isOpen);
  });

  it('a payload nested deeper than limits.max_depth is an error', async () => {
    const c = await connectNative(server, { token: user('deep').token });
    let data = {};
    for (let i = 0; i < 40; i++) data = { d: data };
    c.emit('conversation:join', data, 2);
    assert.match((await c.event('error')).message, /deep/i);
    assert.equal((await c.ack(2)).success, false);
  });

  it('a binary frame closes the socket with 1003', async () => {
    const c = await connectNative(server, { token: user('bin').token });
    c.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    assert.equal((await c.closedWith()).code, 1003);
  });

  it('a message over transports.websocket.max_frame_bytes closes the socket with 1009', async () => {
    const c = await connectNative(server, { token: user('huge').token });
    const bystander = await connectNative(server, { token: user('by').token });
    c.emit('typing:start', { conversationId: 'c', pad: 'x'.repeat(100 * 1024) });
    assert.equal((await c.closedWith()).code, 1009);
    const conv = uid('conv');
    assert.deepEqual(await bystander.emitAck('conversation:join', { conversationId: conv }), { conversationId: conv, success: true });
  });
});

describe('native keep-alive, expiry, rate, shutdown', () => {
  it('a silent client (pings unanswered) is closed; one that answers stays', async () => {
    const silent = await connectNative(quick, { token: signJwt({ sub: uid('silent') }), autoPong: false });
    const live = await connectNative(quick, { token: signJwt({ sub: uid('live') }) });
    let pings = 0;
    silent.ws.on('ping', () => { pings += 1; });
    const { code } = await silent.closedWith(3000);
    assert.equal(code, 4408);
    assert.ok(pings >= 2, `the server pinged (${pings})`);
    await sleep(700);
    assert.ok(live.isOpen, 'the answering client is still connected');
    const conv = uid('conv');
    assert.deepEqual(await live.emitAck('conversation:join', { conversationId: conv }), { conversationId: conv, success: true });
  });

  it('auth:expiring, auth:refresh over the native protocol; expiry without refresh closes 4401', async () => {
    const sub = uid('exp');
    const c = await connectNative(quick, { token: signJwt({ sub, exp: nowSec() + 3 }) });
    const expiring = await c.event('auth:expiring');
    assert.equal(typeof expiring.expiresAt, 'string');
    const fresh = signJwt({ sub, exp: nowSec() + 3600 });
    const ack = await c.emitAck('auth:refresh', { token: fresh });
    assert.equal(typeof ack.expiresAt, 'string');
    assert.deepEqual(await c.event('auth:refreshed'), ack);

    const d = await connectNative(quick, { token: signJwt({ sub: uid('exp2'), exp: nowSec() + 2 }) });
    const { code } = await d.closedWith(6000);
    assert.equal(code, 4401);
    assert.ok(d.frames.some((f) => f.event === 'error' && /expired/i.test(f.data.message)), JSON.stringify(d.frames));
    await sleep(1500);
    assert.ok(c.isOpen, 'the refreshed socket outlives its first token');
  });

  it('sustained rate abuse: errors, then close 4429', async () => {
    const c = await connectNative(rated, { token: signJwt({ sub: uid('flood') }) });
    const other = await connectNative(rated, { token: signJwt({ sub: uid('calm') }) });
    const flood = setInterval(() => {
      if (c.isOpen) c.emit('typing:start', { conversationId: 'c' });
    }, 10);
    try {
      assert.equal((await c.closedWith(5000)).code, 4429);
    } finally {
      clearInterval(flood);
    }
    assert.ok(c.frames.some((f) => f.event === 'error' && /rate/i.test(f.data.message)));
    assert.ok(other.isOpen);
  });

  it('SIGTERM closes native sockets with 1001 and the process exits 0', async () => {
    const own = await startServer({ toml: configToml() });
    const c = await connectNative(own, { token: signJwt({ sub: uid('bye') }) });
    const s = await connect(own, { token: signJwt({ sub: uid('bye-sio') }) });
    const closed = c.closedWith(8000);
    const code = await own.stop('SIGTERM');
    assert.equal((await closed).code, 1001);
    assert.equal(code, 0);
    s.disconnect();
  });
});

describe('native and Socket.IO across two nodes on one Redis', () => {
  let redis;
  let a;
  let b;
  before(async () => {
    redis = await startRedis();
    const prefix = `${uid('sbws')}:`;
    const toml = configToml({
      extra: [
        '[presence]', 'plugin = "redis"', 'node_ttl = "2s"', '',
        '[broker]', 'plugin = "redis"', '',
        '[redis]', `url = "${redis.url}"`, `key_prefix = "${prefix}"`, '',
      ].join('\n'),
    });
    a = await startServer({ toml });
    b = await startServer({ toml });
    for (const s of [a, b]) {
      await eventually(async () => (await fetch(`${s.url}/readyz`)).status === 200, 10000);
    }
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await redis?.stop();
  });
  standardHooks(() => [a, b]);

  it('a native socket on one node and a Socket.IO socket on the other share rooms and presence', async () => {
    const [nu, su] = [user('n-node-a'), user('s-node-b')];
    const s = await connect(b, { token: su.token });
    const onlineOnB = waitFor(s, 'user:online', 5000, (d) => d.userId === nu.sub);
    const n = await connectNative(a, { token: nu.token });
    assert.deepEqual(await onlineOnB, { userId: nu.sub });
    await expectOnline(b, nu.sub, 1, 5000);

    const conv = uid('conv');
    await n.emitAck('conversation:join', { conversationId: conv });
    await joinConversation(s, conv);

    const typing = waitFor(s, 'typing:start');
    n.emit('typing:start', { conversationId: conv });
    assert.deepEqual(await typing, { conversationId: conv, userId: nu.sub, isTyping: true });
    s.emit('typing:stop', { conversationId: conv });
    assert.deepEqual(await n.event('typing:stop'), { conversationId: conv, userId: su.sub, isTyping: false });

    for (const [i, node] of [a, b].entries()) {
      const data = { conversationId: conv, messageId: `m${i}`, status: 'read' };
      const got = waitFor(s, 'message:status', 5000, (d) => d.messageId === `m${i}`);
      assert.equal((await emitApi(node, { event: 'message:status', data })).status, 200);
      assert.deepEqual(await got, data);
      assert.deepEqual(await n.event('message:status', 5000, (d) => d.messageId === `m${i}`), data);
    }
    await sleep(300);
    assert.equal(n.frames.filter((f) => f.event === 'message:status').length, 2, 'each publish once');

    const offlineOnB = waitFor(s, 'user:offline', 5000, (d) => d.userId === nu.sub);
    n.close();
    assert.deepEqual(await offlineOnB, { userId: nu.sub });
  });
});

describe('Lua hooks apply to native sockets as to Socket.IO ones', () => {
  let hooked;
  before(async () => {
    const script = (name) => path.join(REPO_ROOT, 'scripts', name);
    hooked = await startServer({
      toml: configToml({
        extra: `[hooks.lua]\nscripts = ${JSON.stringify([script('redact-phones.lua'), script('conversation-acl.lua')])}\ntimeout = "100ms"\n`,
      }),
    });
  });
  after(async () => { await hooked?.stop(); });
  standardHooks(() => hooked);

  it('authorize refuses a join with error + failed ack; on_outbound changes what both transports get', async () => {
    const conv = uid('conv');
    const n = await connectNative(hooked, { token: signJwt({ sub: uid('n'), conversations: [conv] }) });
    const s = await connect(hooked, { token: signJwt({ sub: uid('s'), conversations: [conv] }) });
    n.emit('conversation:join', { conversationId: 'not-mine' }, 1);
    const err = await n.event('error');
    assert.match(err.message, /Not authorized/);
    assert.deepEqual(await n.ack(1), { success: false, error: err.message });
    assert.deepEqual(await n.emitAck('conversation:join', { conversationId: conv }), { conversationId: conv, success: true });

    const sess = uid('sess');
    await n.emitAck('session:join', { sessionId: sess });
    await joinSession(s, sess);
    const data = {
      sessionId: sess, messageId: 'm1', senderId: 'u', senderPhone: '+15551234567', type: 'text',
      content: 'call me at +1 555 123 4567', status: 'sent', timestamp: new Date().toISOString(),
    };
    const viaSio = waitFor(s, 'session:message-sent');
    assert.equal((await emitApi(hooked, { event: 'session:message-sent', data })).status, 200);
    const native = await n.event('session:message-sent');
    assert.deepEqual(native, await viaSio, 'both transports get the same hooked payload');
    assert.notEqual(native.senderPhone, data.senderPhone);
    assert.ok(native.senderPhone.endsWith('67') && native.senderPhone.includes('*'), native.senderPhone);
    assert.ok(!native.content.includes('123 4567'), native.content);
  });
});
