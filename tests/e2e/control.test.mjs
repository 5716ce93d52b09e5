// The backend's control API (CONTRACT §3): rooms/join and rooms/leave for every socket of a
// user, users/{id}/disconnect, emit to a user, batch emit, GET rooms, GET rooms/{room} and
// GET nodes; on one node (in-memory broker) and across two nodes sharing one Redis, where
// every call holds on both nodes once it answers, and fails naming a node that does not
// answer. Driven by socket.io-client (and the native protocol for the disconnect).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  configToml, startServer, signJwt, connect, api, emitApi, joinConversation,
  receivedOf, eventually, uid, standardHooks, presenceOf, expectOnline, assertJsonError, assertErrorEvent,
  withoutOffset,
} from './helpers.mjs';
import { startRedis, sharedCluster } from './redis.mjs';

const ADMIN_KEY = 'test-admin-key';

function toml(redis, prefix) {
  const lines = ['[admin]', 'enabled = true', `keys = ["${ADMIN_KEY}"]`, ''];
  if (redis) {
    lines.push(
      '[presence]', 'plugin = "redis"', 'node_ttl = "2s"', '',
      '[broker]', 'plugin = "redis"', '',
      '[redis]', `url = "${redis.url}"`, `key_prefix = "${prefix}"`, '',
    );
  }
  return configToml({ extra: lines.join('\n') });
}

const status = (conversationId, messageId) => ({ event: 'message:status', data: { conversationId, messageId, status: 'read' } });
const idsOf = (socket, conv) => receivedOf(socket, 'message:status').filter((m) => m.conversationId === conv).map((m) => m.messageId);
const post = (server, p, body, opts = {}) => api(server, 'POST', p, { body, ...opts });

/** Events `socket` received after the first `event` whose payload matches `filter`. */
function receivedAfter(socket, event, filter = () => true) {
  const i = socket.received.findIndex((r) => r.event === event && filter(r.args[0]));
  return i < 0 ? [] : socket.received.slice(i + 1);
}

function suite(name, { redis: withRedis, start = startRedis }) {
  describe(`the control API, ${name}`, () => {
    let redis;
    let a;
    let b;

    before(async () => {
      if (withRedis) {
        redis = await start();
        const prefix = `${uid('ctl')}:`;
        a = await startServer({ toml: toml(redis, prefix) });
        b = await startServer({ toml: toml(redis, prefix) });
        for (const s of [a, b]) await eventually(async () => (await api(s, 'GET', '/readyz')).status === 200, 10000);
        // Both nodes see each other before the tests start.
        await eventually(async () => (await api(a, 'GET', '/api/v1/nodes')).json?.nodes?.length === 2, 10000);
      } else {
        a = await startServer({ toml: toml() });
        b = a;
      }
    });
    after(async () => {
      await a?.stop();
      if (b !== a) await b?.stop();
      await redis?.stop();
    });
    standardHooks(() => [a, b]);

    it('rooms/leave: every socket of the user leaves, is told, and gets nothing of the room after; others still do', async () => {
      const conv = uid('conv');
      const room = `conversation:${conv}`;
      const aliceId = uid('alice');
      const alice1 = await connect(b, { token: signJwt({ sub: aliceId }) });
      const alice2 = await connect(a, { token: signJwt({ sub: aliceId }), transports: ['polling'] });
      const carol = await connect(b, { token: signJwt({ sub: uid('carol') }) });
      const bob = await connect(a, { token: signJwt({ sub: uid('bob') }) });
      for (const s of [alice1, alice2, carol, bob]) await joinConversation(s, conv);

      // Publishing while the leave is under way: whatever it crosses, nothing follows the reply.
      const burst = (async () => {
        for (let i = 0; i < 20; i += 1) await emitApi(a, status(conv, `during-${i}`));
      })();
      const left = await post(a, '/api/v1/rooms/leave', { room, userId: aliceId });
      await burst;
      assert.equal(left.status, 200, left.text);
      assert.deepEqual(left.json, { room, userId: aliceId, sockets: 2 });
      for (const s of [alice1, alice2]) {
        await eventually(() => receivedOf(s, 'conversation:left').length === 1, 5000);
        assert.deepEqual(receivedOf(s, 'conversation:left'), [{ conversationId: conv, success: true }]);
      }

      for (let i = 0; i < 5; i += 1) assert.equal((await emitApi(a, status(conv, `after-${i}`))).status, 200);
      const wanted = [...Array(20).keys()].map((i) => `during-${i}`).concat([...Array(5).keys()].map((i) => `after-${i}`));
      // carol shares alice1's node and bob alice2's: once they have everything, so would alice.
      await eventually(() => idsOf(carol, conv).length === 25 && idsOf(bob, conv).length === 25, 5000);
      assert.deepEqual(idsOf(carol, conv), wanted);
      assert.deepEqual(idsOf(bob, conv), wanted);
      for (const s of [alice1, alice2]) {
        assert.deepEqual(idsOf(s, conv).filter((m) => m.startsWith('after-')), [], 'nothing published after the 200');
        const late = receivedAfter(s, 'conversation:left').filter((r) => r.event === 'message:status');
        assert.deepEqual(late, [], 'no event of the room follows conversation:left');
      }
      const detail = await api(a, 'GET', `/api/v1/rooms/${encodeURIComponent(room)}`);
      assert.equal(detail.status, 200);
      assert.equal(detail.json.sockets, 2);
      assert.ok(!detail.json.users.includes(aliceId));
    });

    it('rooms/join: every socket of the user joins, gets the reply its own join gives, and receives the room', async () => {
      const user = uid('dana');
      const s1 = await connect(a, { token: signJwt({ sub: user }) });
      const s2 = await connect(b, { token: signJwt({ sub: user }), transports: ['polling'] });
      const conv = uid('conv');
      const joined = await post(b, '/api/v1/rooms/join', { room: `conversation:${conv}`, userId: user });
      assert.equal(joined.status, 200, joined.text);
      assert.deepEqual(joined.json, { room: `conversation:${conv}`, userId: user, sockets: 2 });
      for (const s of [s1, s2]) {
        await eventually(() => receivedOf(s, 'conversation:joined').length === 1, 5000);
        assert.deepEqual(receivedOf(s, 'conversation:joined'), [{ conversationId: conv, success: true }]);
      }
      assert.equal((await emitApi(a, status(conv, 'm1'))).status, 200);
      for (const s of [s1, s2]) await eventually(() => idsOf(s, conv).includes('m1'), 5000);

      // A session room, and a room no plugin owns.
      const sess = uid('sess');
      await post(a, '/api/v1/rooms/join', { room: `session:${sess}`, userId: user });
      await eventually(() => receivedOf(s2, 'session:joined').length === 1, 5000);
      assert.deepEqual(receivedOf(s2, 'session:joined'), [{ sessionId: sess, success: true }]);
      const custom = `team:${uid('t')}`;
      const r = await post(a, '/api/v1/rooms/join', { room: custom, userId: user });
      assert.equal(r.json.sockets, 2);
      await eventually(() => receivedOf(s1, 'room:joined').length === 1, 5000);
      assert.deepEqual(receivedOf(s1, 'room:joined'), [{ room: custom }]);
      const pub = await emitApi(b, { event: 'team:notice', data: { text: 'hi' }, room: custom });
      assert.equal(pub.status, 200);
      for (const s of [s1, s2]) await eventually(() => receivedOf(s, 'team:notice').length === 1, 5000);
      const left = await post(a, '/api/v1/rooms/leave', { room: custom, userId: user });
      assert.equal(left.json.sockets, 2);
      await eventually(() => receivedOf(s2, 'room:left').length === 1, 5000);
      assert.deepEqual(receivedOf(s2, 'room:left'), [{ room: custom }]);

      // Joining again is idempotent: still two sockets, no second reply.
      const again = await post(a, '/api/v1/rooms/join', { room: `conversation:${conv}`, userId: user });
      assert.equal(again.json.sockets, 2);
    });

    it('emit to a user reaches every socket of that user, on every node, and nobody else', async () => {
      const user = uid('erin');
      const other = uid('frank');
      const s1 = await connect(a, { token: signJwt({ sub: user }) });
      const s2 = await connect(b, { token: signJwt({ sub: user }), transports: ['polling'] });
      const o = await connect(a, { token: signJwt({ sub: other }) });
      const r = await emitApi(b, { event: 'notification', data: { text: 'for erin' }, user });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.json, { user, event: 'notification', sockets: 2 });
      for (const s of [s1, s2]) {
        await eventually(() => receivedOf(s, 'notification').length === 1, 5000);
        assert.deepEqual(receivedOf(s, 'notification'), [{ text: 'for erin' }]);
      }
      const mine = await emitApi(a, { event: 'notification', data: { text: 'for frank' }, user: other });
      assert.equal(mine.json.sockets, 1);
      await eventually(() => receivedOf(o, 'notification').length === 1, 5000);
      assert.deepEqual(receivedOf(o, 'notification'), [{ text: 'for frank' }], 'frank got only his own');
      // A declared event is still checked against its shape.
      const bad = await emitApi(a, { event: 'message:status', data: { messageId: 'x' }, user });
      assertJsonError(bad, 422, 'conversationId');
    });

    it('a batch is applied in order, with a result per item; a bad item does not stop the others', async () => {
      const conv = uid('conv');
      const s = await connect(b, { token: signJwt({ sub: uid('gina') }) });
      await joinConversation(s, conv);
      const r = await emitApi(a, [
        status(conv, 'b0'),
        { event: 'message:status', data: { conversationId: conv } },
        status(conv, 'b1'),
        { event: 'no:such:event', data: {} },
        { event: 'message:status', data: {}, room: 5 },
        status(conv, 'b2'),
      ]);
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.json.map((x) => x.status), [200, 422, 200, 404, 400, 200]);
      const { status: first, ...answer } = r.json[0];
      assert.equal(first, 200);
      assert.deepEqual(withoutOffset(answer), { room: `conversation:${conv}`, event: 'message:status' });
      assert.match(r.json[1].error, /status/);
      assert.match(r.json[4].error, /room/);
      await eventually(() => idsOf(s, conv).length === 3, 5000);
      assert.deepEqual(idsOf(s, conv), ['b0', 'b1', 'b2']);
      const offsets = [0, 2, 5].map((i) => Number(r.json[i].offset.split(':')[1]));
      assert.deepEqual([...offsets].sort((x, y) => x - y), offsets, 'kept in order');
    });

    it('GET rooms pages by name with a prefix and a cursor; GET rooms/{room} lists its users', async () => {
      const base = uid('list');
      const u1 = uid('hank');
      const u2 = uid('ivy');
      const h1 = await connect(a, { token: signJwt({ sub: u1 }) });
      const h2 = await connect(b, { token: signJwt({ sub: u1 }) });
      const i1 = await connect(b, { token: signJwt({ sub: u2 }) });
      for (const n of [1, 2, 3]) await joinConversation(h1, `${base}-${n}`);
      await joinConversation(h2, `${base}-1`);
      await joinConversation(i1, `${base}-1`);
      await joinConversation(i1, `${base}-3`);
      const prefix = `conversation:${base}-`;
      const p1 = await api(a, 'GET', `/api/v1/rooms?prefix=${encodeURIComponent(prefix)}&limit=2`);
      assert.equal(p1.status, 200, p1.text);
      assert.deepEqual(p1.json.rooms, [
        { room: `${prefix}1`, users: 2, sockets: 3 },
        { room: `${prefix}2`, users: 1, sockets: 1 },
      ]);
      assert.equal(typeof p1.json.next, 'string');
      const p2 = await api(b, 'GET', `/api/v1/rooms?prefix=${encodeURIComponent(prefix)}&limit=2&cursor=${encodeURIComponent(p1.json.next)}`);
      assert.deepEqual(p2.json, { rooms: [{ room: `${prefix}3`, users: 2, sockets: 2 }], next: null });
      // A room a page, asking each node in turn: every room once, with its members on every
      // node, and no next page after the last.
      const walked = [];
      let cursor = null;
      let pages = 0;
      do {
        const q = `prefix=${encodeURIComponent(prefix)}&limit=1${cursor == null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`;
        const p = await api(pages % 2 ? b : a, 'GET', `/api/v1/rooms?${q}`);
        assert.equal(p.status, 200, p.text);
        walked.push(...p.json.rooms);
        cursor = p.json.next;
        pages += 1;
      } while (cursor != null && pages < 10);
      assert.deepEqual(walked, [
        { room: `${prefix}1`, users: 2, sockets: 3 },
        { room: `${prefix}2`, users: 1, sockets: 1 },
        { room: `${prefix}3`, users: 2, sockets: 2 },
      ]);
      assert.equal(pages, 3, 'the last room\'s page has no next');
      const one = await api(b, 'GET', `/api/v1/rooms/${encodeURIComponent(`${prefix}1`)}`);
      assert.deepEqual(one.json, { room: `${prefix}1`, users: [u1, u2].sort(), sockets: 3 });
      const none = await api(a, 'GET', `/api/v1/rooms/${encodeURIComponent(`${prefix}9`)}`);
      assert.deepEqual(none.json, { room: `${prefix}9`, users: [], sockets: 0 });
      for (const q of ['?limit=0', '?limit=5000', '?limit=x']) assertJsonError(await api(a, 'GET', `/api/v1/rooms${q}`), 422, 'limit');
      assertJsonError(await api(a, 'GET', '/api/v1/rooms?sort=busy'), 400);
    });

    it('GET nodes describes every node; the admin key opens the API too', async () => {
      const user = uid('jack');
      await connect(b, { token: signJwt({ sub: user }) });
      const r = await api(a, 'GET', '/api/v1/nodes', { key: ADMIN_KEY });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.nodes.length, withRedis ? 2 : 1);
      for (const n of r.json.nodes) {
        assert.equal(typeof n.id, 'string');
        for (const k of ['connections', 'users', 'uptimeSecs', 'eventsIn', 'eventsOut']) assert.equal(typeof n[k], 'number', k);
        assert.match(n.version, /^\d+\.\d+\.\d+/);
        assert.ok(Array.isArray(n.errors));
      }
      const total = r.json.nodes.reduce((s, n) => s + n.connections, 0);
      assert.ok(total >= 1);
      assert.equal((await api(a, 'GET', '/api/v1/nodes', { key: 'not-a-key' })).status, 401);
    });

    it('users/{id}/disconnect closes every socket of the user on every node; socket.io-client does not reconnect', async () => {
      const user = uid('kim');
      const s1 = await connect(a, { token: signJwt({ sub: user }), keep: true });
      const s2 = await connect(b, { token: signJwt({ sub: user }), transports: ['polling'], keep: true });
      // Let the clients reconnect by themselves, as they do by default.
      s1.io.reconnection(true);
      s2.io.reconnection(true);
      const native = new WebSocket(`${b.url.replace('http', 'ws')}/ws`);
      const frames = [];
      native.on('message', (d) => frames.push(JSON.parse(String(d))));
      const closed = new Promise((resolve) => native.on('close', (code, reason) => resolve({ code, reason: String(reason) })));
      await new Promise((resolve) => native.once('open', resolve));
      native.send(JSON.stringify({ op: 'connect', token: signJwt({ sub: user }) }));
      await eventually(() => frames.some((f) => f.op === 'connected'), 5000);
      await expectOnline(a, user, 3, 5000);
      const gone = [s1, s2].map((s) => new Promise((resolve) => s.once('disconnect', resolve)));
      const r = await post(a, `/api/v1/users/${encodeURIComponent(user)}/disconnect`, { reason: 'banned' });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.json, { userId: user, sockets: 3 });
      assert.deepEqual(await Promise.all(gone), ['io server disconnect', 'io server disconnect']);
      assert.deepEqual(await closed, { code: 4403, reason: 'Disconnected by the server' });
      const told = frames.find((f) => f.event === 'error');
      assertErrorEvent(told.data, 'banned');
      assertErrorEvent(receivedOf(s1, 'error')[0], 'banned');
      // None left anywhere once it answered.
      assert.equal((await presenceOf(a, user)).connections, 0);
      assert.equal((await presenceOf(b, user)).connections, 0);
      assert.equal(s1.active, false, 'socket.io-client does not reconnect by itself');
      assert.equal(s2.active, false);
      const again = await post(a, `/api/v1/users/${encodeURIComponent(user)}/disconnect`, {});
      assertJsonError(again, 404, user);
    });

    it('bad input gets a 4xx naming the problem, and the node stays healthy', async () => {
      const user = uid('lee');
      const s = await connect(a, { token: signJwt({ sub: user }) });
      const cases = [
        [post(a, '/api/v1/rooms/join', { room: 'conversation:x', userId: uid('nobody') }), 404, 'no socket'],
        [post(a, '/api/v1/rooms/leave', { room: 'conversation:x', userId: uid('nobody') }), 404, 'no socket'],
        [post(a, `/api/v1/users/${uid('nobody')}/disconnect`, {}), 404, 'no socket'],
        [emitApi(a, { event: 'notification', data: {}, user: uid('nobody') }), 404, 'no socket'],
        [post(a, '/api/v1/rooms/join', { room: '', userId: user }), 422, 'room'],
        [post(a, '/api/v1/rooms/join', { room: 'x'.repeat(2000), userId: user }), 422, 'room'],
        [post(a, '/api/v1/rooms/join', { room: 'conversation:x', userId: 5 }), 400, 'userId'],
        [post(a, '/api/v1/rooms/join', { room: 'conversation:x' }), 400, 'userId'],
        [post(a, '/api/v1/rooms/join', { room: 'conversation:x', userId: user, extra: 1 }), 400, 'extra'],
        [api(a, 'POST', '/api/v1/rooms/join', { rawBody: '' , contentType: 'application/json' }), 400],
        [api(a, 'POST', '/api/v1/rooms/leave', { rawBody: '{"room":', contentType: 'application/json' }), 400],
        [api(a, 'POST', '/api/v1/rooms/join', { rawBody: 'room=x', contentType: 'text/plain' }), 415],
        [post(a, `/api/v1/users/${user}/disconnect`, { reason: 7 }), 400, 'reason'],
        [emitApi(a, { event: 'notification', data: {}, user: uid('u'), room: 'conversation:1' }), 400, 'not both'],
        [emitApi(a, []), 400, 'empty batch'],
        [emitApi(a, { event: 'connect', data: {}, room: 'conversation:1' }), 422, 'reserved by Socket.IO'],
        [emitApi(a, { event: 'disconnect', data: {}, user }), 422, 'reserved by Socket.IO'],
        [emitApi(a, { event: 'user:online', data: { userId: 'x' }, room: 'conversation:1' }), 422, "gateway's own"],
        [emitApi(a, { event: 'conversation:joined', data: {}, user }), 422, "gateway's own"],
        [emitApi(a, { event: 'error', data: { message: 'spoofed' }, room: 'conversation:1' }), 422, "gateway's own"],
        [emitApi(a, Array.from({ length: 10000 }, (_, i) => status('x', `m${i}-${'p'.repeat(100)}`))), 413, 'Body too large'],
        [emitApi(a, Array.from({ length: 1001 }, () => ({ event: 'x', data: {}, room: 'r' }))), 413, '1000'],
      ];
      for (const [call, code, mentions] of cases) assertJsonError(await call, code, mentions);
      // An error about one field names it in `details.field` too, as the API's reference says.
      const fields = [
        [post(a, '/api/v1/rooms/join', { room: '', userId: user }), 422, 'room'],
        [post(a, '/api/v1/rooms/leave', { room: 'conversation:x', userId: ' ' }), 422, 'userId'],
        [post(a, '/api/v1/rooms/join', { room: 'conversation:x', userId: 5 }), 400, 'userId'],
        [post(a, `/api/v1/users/${user}/disconnect`, { reason: 'r'.repeat(201) }), 422, 'reason'],
        [api(a, 'GET', '/api/v1/rooms?limit=0'), 422, 'limit'],
        [emitApi(a, { event: '', data: {}, room: 'conversation:1' }), 422, 'event'],
        [emitApi(a, { event: 'connect', data: {}, room: 'conversation:1' }), 422, 'event'],
        [emitApi(a, { event: 'notification', data: {}, room: '' }), 422, 'room'],
        [emitApi(a, { ...status('c1', 'm1'), data: { conversationId: 'c1', messageId: 'm1', status: 'lost' } }), 422, 'data.status'],
        [emitApi(a, { event: 'message:status', data: { conversationId: 'c1', status: 'read' }, user }), 422, 'data.messageId'],
        [emitApi(a, { event: 'message:status', data: { conversationId: 7, messageId: 'm1', status: 'read' } }), 422, 'data.conversationId'],
        [emitApi(a, { event: 'message:status', data: [] }), 422, 'data'],
      ];
      for (const [call, code, field] of fields) {
        const res = await call;
        assert.equal(res.status, code, res.text);
        assert.equal(res.json?.details?.field, field, res.text);
      }
      assert.equal((await api(a, 'GET', '/healthz')).status, 200);
      assert.equal(s.connected, true);
      const ok = await emitApi(a, { event: 'notification', data: { ok: true }, user });
      assert.equal(ok.status, 200);
      await eventually(() => receivedOf(s, 'notification').length === 1, 5000);
    });

    if (withRedis) {
      it('a node that does not answer in time fails the call with 503 naming it; never a 200 that does not hold', async () => {
        const user = uid('mo');
        await connect(b, { token: signJwt({ sub: user }) });
        // b's id, from its start-up line; the cluster lists it.
        const bId = b.logs().match(/serving .*node=([0-9a-f]{32})/)?.[1];
        assert.ok(bId, b.logs());
        assert.ok((await api(a, 'GET', '/api/v1/nodes')).json.nodes.some((n) => n.id === bId));
        b.proc.kill('SIGSTOP');
        try {
          const r = await post(a, `/api/v1/users/${user}/disconnect`, {});
          assertJsonError(r, 503, bId);
          const rooms = await api(a, 'GET', '/api/v1/rooms');
          assertJsonError(rooms, 503, bId);
        } finally {
          b.proc.kill('SIGCONT');
        }
        await eventually(async () => (await api(a, 'GET', '/api/v1/nodes')).status === 200, 5000);
      });
    }
  });
}

suite('on one node', { redis: false });
suite('across two nodes on one Redis', { redis: true });
suite('across two nodes on a Redis Cluster', { redis: true, start: sharedCluster });
