// CONTRACT §2 user:online / user:offline and §3 presence API: online on a user's first
// connection only, offline when the last one closes, never to the connecting socket itself.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, configToml, startServer, signJwt, connect, waitFor, expectNone, api,
  presenceOf, receivedOf, eventually, uid, standardHooks, sleep, expectOnline,
} from './helpers.mjs';

let server;

before(async () => {
  server = await startServer({ toml: configToml() });
});
after(async () => { await server?.stop(); });
standardHooks(() => server);

const forUser = (userId) => (d) => d && d.userId === userId;

for (const transports of TRANSPORTS) {
  const T = transports[0];

  describe(`presence [${T}]`, () => {
    it('user:online once on the first connection, user:offline once when the last closes; API follows', async () => {
      const A = uid(`pa-${T}`);
      const B = uid(`pb-${T}`);
      const tokenA = signJwt({ sub: A });
      const observer = await connect(server, { transports, token: signJwt({ sub: B }) });

      // First socket of A: B sees user:online {userId: A}.
      let online = waitFor(observer, 'user:online', 5000, forUser(A));
      const a1 = await connect(server, { transports, token: tokenA });
      assert.deepEqual(await online, { userId: A });
      await eventually(async () => {
        assert.deepEqual(await presenceOf(server, A), { userId: A, online: true, connections: 1 });
      });
      const list = await api(server, 'GET', '/api/v1/presence');
      assert.ok(list.json.users.includes(A), `users: ${list.text}`);
      assert.ok(list.json.users.includes(B), `users: ${list.text}`);

      // Second socket of A: no second user:online.
      const noSecondOnline = expectNone(observer, 'user:online', 400, forUser(A));
      const a2 = await connect(server, { transports, token: tokenA });
      await noSecondOnline;
      await eventually(async () => {
        assert.deepEqual(await presenceOf(server, A), { userId: A, online: true, connections: 2 });
      });

      // Close one of A's sockets: no user:offline.
      const noOffline = expectNone(observer, 'user:offline', 400, forUser(A));
      a1.disconnect();
      await noOffline;
      await eventually(async () => {
        assert.deepEqual(await presenceOf(server, A), { userId: A, online: true, connections: 1 });
      });

      // Close the last one: user:offline {userId: A}.
      const offline = waitFor(observer, 'user:offline', 5000, forUser(A));
      a2.disconnect();
      assert.deepEqual(await offline, { userId: A });
      await eventually(async () => {
        assert.deepEqual(await presenceOf(server, A), { userId: A, online: false, connections: 0 });
      });
      const list2 = await api(server, 'GET', '/api/v1/presence');
      assert.ok(!list2.json.users.includes(A), `A still listed: ${list2.text}`);

      // Exactly once each over the whole sequence.
      await sleep(200);
      assert.equal(receivedOf(observer, 'user:online').filter(forUser(A)).length, 1, 'user:online for A exactly once');
      assert.equal(receivedOf(observer, 'user:offline').filter(forUser(A)).length, 1, 'user:offline for A exactly once');
    });

    it('the presence API counts a socket as soon as the client has seen `connect` (50 connects, no lag)', async () => {
      const late = [];
      for (let i = 0; i < 50; i += 1) {
        const sub = uid(`now-${T}`);
        const s = await connect(server, { transports, token: signJwt({ sub }) });
        const p = await presenceOf(server, sub);
        if (!p.online || p.connections !== 1) late.push(p);
        s.disconnect();
      }
      assert.deepEqual(late, [], `presence lagged behind the connect for ${late.length}/50 sockets`);
    });

    it('a socket that disconnects right after `connect` still ends presence (30 quick connect/disconnect cycles, no ghost)', async () => {
      const observer = await connect(server, { transports, token: signJwt({ sub: uid('obs-q') }) });
      const users = [];
      for (let i = 0; i < 30; i += 1) {
        const sub = uid(`quick-${T}`);
        users.push(sub);
        const s = await connect(server, { transports, token: signJwt({ sub }) });
        s.disconnect();
      }
      await sleep(1000);
      const ghosts = [];
      for (const sub of users) {
        const p = await presenceOf(server, sub);
        if (p.online || p.connections !== 0) ghosts.push(p);
      }
      const offline = new Set(receivedOf(observer, 'user:offline').map((d) => d.userId));
      const missing = users.filter((u) => !offline.has(u));
      assert.deepEqual(ghosts, [], `${ghosts.length}/30 users stayed online after their only socket closed`);
      assert.deepEqual(missing, [], `${missing.length}/30 users never got user:offline`);
    });

    it('the connecting socket does not receive its own user:online; other sockets of the same user do not either on later connections', async () => {
      const A = uid(`self-${T}`);
      const a1 = await connect(server, { transports, token: signJwt({ sub: A }) });
      const a2 = await connect(server, { transports, token: signJwt({ sub: A }) });
      await sleep(300);
      assert.deepEqual(receivedOf(a1, 'user:online').filter(forUser(A)), [], 'a1 got user:online about itself');
      assert.deepEqual(receivedOf(a2, 'user:online').filter(forUser(A)), [], 'a2 got user:online about its own user');
    });

    it('an existing socket sees user:online for others; a new socket is not told about users already online', async () => {
      const X = uid(`x-${T}`);
      const Y = uid(`y-${T}`);
      const x = await connect(server, { transports, token: signJwt({ sub: X }) });
      const online = waitFor(x, 'user:online', 5000, forUser(Y));
      const y = await connect(server, { transports, token: signJwt({ sub: Y }) });
      assert.deepEqual(await online, { userId: Y });
      await sleep(200);
      assert.deepEqual(receivedOf(y, 'user:online').filter(forUser(X)), [], 'user:online is not a replay of who is online');
      // Y leaves: X sees user:offline, and Y's own socket closing does not echo to x twice.
      const offline = waitFor(x, 'user:offline', 5000, forUser(Y));
      y.disconnect();
      assert.deepEqual(await offline, { userId: Y });
    });

    it('a refused connection (bad token) changes nothing: no user:online, not in presence', async () => {
      const observer = await connect(server, { transports, token: signJwt({ sub: uid('obs') }) });
      const none = expectNone(observer, 'user:online', 400);
      const sub = uid(`refused-${T}`);
      await assert.rejects(connect(server, { transports, token: signJwt({ sub }, 'another-secret-that-is-long-enough-987654') }));
      await none;
      assert.deepEqual(await presenceOf(server, sub), { userId: sub, online: false, connections: 0 });
    });

    it('an abrupt transport close (no disconnect packet) still ends presence', async () => {
      const A = uid(`abrupt-${T}`);
      const observer = await connect(server, { transports, token: signJwt({ sub: uid('obs2') }) });
      const a = await connect(server, { transports, token: signJwt({ sub: A }) });
      await expectOnline(server, A, 1); // (closing right after connect is covered above)
      const offline = waitFor(observer, 'user:offline', 5000, forUser(A));
      // Close the engine.io transport without a Socket.IO DISCONNECT packet.
      if (T === 'websocket') a.io.engine.transport.ws.terminate();
      else a.io.engine.close();
      assert.deepEqual(await offline, { userId: A });
      await eventually(async () => {
        assert.deepEqual(await presenceOf(server, A), { userId: A, online: false, connections: 0 });
      });
    });
  });
}

describe('presence across transports', () => {
  it('a websocket and a polling socket of one user count as two connections, one online event', async () => {
    const A = uid('mixed');
    const observer = await connect(server, { transports: ['websocket'], token: signJwt({ sub: uid('obs3') }) });
    const online = waitFor(observer, 'user:online', 5000, forUser(A));
    const a1 = await connect(server, { transports: ['websocket'], token: signJwt({ sub: A }) });
    await online;
    const none = expectNone(observer, 'user:online', 300, forUser(A));
    const a2 = await connect(server, { transports: ['polling'], token: signJwt({ sub: A }) });
    await none;
    await eventually(async () => {
      assert.deepEqual(await presenceOf(server, A), { userId: A, online: true, connections: 2 });
    });
    const noOffline = expectNone(observer, 'user:offline', 300, forUser(A));
    a1.disconnect();
    await noOffline;
    const offline = waitFor(observer, 'user:offline', 5000, forUser(A));
    a2.disconnect();
    await offline;
  });
});
