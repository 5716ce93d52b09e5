// Security (issue: who may join what, tokens that expire, limits): room access policies
// (allow, claims, http against a small backend this test starts), public keys chosen by
// `kid` from a JWK set that is rotated while the gateway runs, connection limits per user
// and rooms per socket. Token attacks, expiry/refresh and the rate limit are in
// auth.test.mjs and bad-input.test.mjs.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import jwt from 'jsonwebtoken';
import {
  TRANSPORTS, configToml, startServer, mintToken, signJwt, writeTemp, connect, connectError,
  waitFor, expectNone, emitAck, emitApi, uid, standardHooks, sleep, eventually,
} from './helpers.mjs';

const DENIED = (room) => `Not authorized to join ${room}`;

/** A backend that allows a join when the room is listed for the user; it counts calls. */
function startPolicyBackend(secret) {
  const calls = [];
  let allow = (req) => req.room === `conversation:ok-${req.userId}`;
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const parsed = JSON.parse(body || '{}');
      calls.push({ auth: req.headers.authorization, body: parsed });
      res.statusCode = allow(parsed) ? 204 : 403;
      res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/authorize`,
    calls,
    setAllow: (f) => { allow = f; },
    close: () => new Promise((r) => server.close(r)),
  })));
}

let claims; let httpPolicy; let backend; let down; let limited; let kid;
let jwksPath; const keyA = generateKeyPairSync('rsa', { modulusLength: 2048 });
const keyB = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = (pair, id) => ({ ...pair.publicKey.export({ format: 'jwk' }), kid: id, alg: 'RS256', use: 'sig' });

before(async () => {
  backend = await startPolicyBackend('policy-secret');
  jwksPath = writeTemp('jwks.json', JSON.stringify({ keys: [jwk(keyA, 'a')] }));
  [claims, httpPolicy, down, limited, kid] = await Promise.all([
    startServer({
      toml: configToml({
        extra: '[rooms.policy]\n"conversation:" = "claims"\n"session:" = "claims"\n',
      }),
    }),
    startServer({
      toml: configToml({
        extra: `[rooms.policy]\n"conversation:" = "http"\n[rooms.http]\nurl = "${backend.url}"\nsecret = "policy-secret"\ncache_ttl = "1s"\n`,
      }),
    }),
    startServer({
      // A backend nobody listens on: every http-policy join is denied as unavailable.
      toml: configToml({
        extra: '[rooms.policy]\n"conversation:" = "http"\n[rooms.http]\nurl = "http://127.0.0.1:9/authorize"\ntimeout = "500ms"\n',
      }),
    }),
    startServer({ toml: configToml({ limits: 'max_connections_per_user = 2\nmax_rooms_per_socket = 2' }) }),
    startServer({
      toml: configToml({ secret: false, algorithms: ['RS256'], jwt: `jwks_file = "${jwksPath.replaceAll('\\', '\\\\')}"\nreload_interval = "100ms"` }),
    }),
  ]);
});

after(async () => {
  await Promise.all([claims, httpPolicy, down, limited, kid].filter(Boolean).map((s) => s.stop()));
  await backend?.close();
});

standardHooks(() => [claims, httpPolicy, down, limited, kid]);

for (const transports of TRANSPORTS) {
  describe(`room policy: claims [${transports}]`, () => {
    it('allows rooms and patterns listed in the token, denies the rest with error', async () => {
      const token = signJwt({ sub: uid('u'), rooms: ['conversation:42', 'session:*'] });
      const s = await connect(claims, { token, transports });
      assert.deepEqual(await emitAck(s, 'conversation:join', { conversationId: '42' }), { conversationId: '42', success: true });
      assert.deepEqual(await emitAck(s, 'session:join', { sessionId: 'any' }), { sessionId: 'any', success: true });
      const err = waitFor(s, 'error');
      const ack = await emitAck(s, 'conversation:join', { conversationId: '43' });
      assert.deepEqual(ack, { success: false, error: DENIED('conversation:43') });
      assert.equal((await err).message, DENIED('conversation:43'));
    });

    it('a denied socket receives none of the room\'s events', async () => {
      const member = await connect(claims, { token: signJwt({ sub: uid('m'), rooms: ['conversation:7'] }), transports });
      const outsider = await connect(claims, { token: signJwt({ sub: uid('o'), rooms: [] }), transports });
      await emitAck(member, 'conversation:join', { conversationId: '7' });
      await emitAck(outsider, 'conversation:join', { conversationId: '7' });
      const got = waitFor(member, 'message:status');
      const res = await emitApi(claims, { event: 'message:status', data: { conversationId: '7', messageId: 'm', status: 'read' } });
      assert.equal(res.status, 200);
      await got;
      await expectNone(outsider, 'message:status');
      // Nor can it send typing into the room.
      const err = waitFor(outsider, 'error');
      outsider.emit('typing:start', { conversationId: '7' });
      assert.match((await err).message, /conversation:7/);
      await expectNone(member, 'typing:start');
    });

    it('a token minted with --claim rooms=[...] carries the list', async () => {
      const token = await mintToken(claims, { sub: uid('c'), claims: { rooms: '["conversation:9"]' } });
      const s = await connect(claims, { token, transports });
      assert.equal((await emitAck(s, 'conversation:join', { conversationId: '9' })).success, true);
      assert.equal((await emitAck(s, 'conversation:join', { conversationId: '10' })).success, false);
    });
  });

  describe(`room policy: http [${transports}]`, () => {
    it('asks the backend with the shared secret; 2xx allows, 403 denies', async () => {
      const user = uid('h');
      const s = await connect(httpPolicy, { token: signJwt({ sub: user, plan: 'pro' }), transports });
      const before = backend.calls.length;
      assert.deepEqual(await emitAck(s, 'conversation:join', { conversationId: `ok-${user}` }), { conversationId: `ok-${user}`, success: true });
      const call = backend.calls[before];
      assert.equal(call.auth, 'Bearer policy-secret');
      assert.equal(call.body.userId, user);
      assert.equal(call.body.room, `conversation:ok-${user}`);
      assert.equal(call.body.claims.plan, 'pro');
      const err = waitFor(s, 'error');
      assert.equal((await emitAck(s, 'conversation:join', { conversationId: 'nope' })).success, false);
      assert.equal((await err).message, DENIED('conversation:nope'));
      // Session rooms keep the default policy (allow): the backend is not asked.
      const n = backend.calls.length;
      assert.equal((await emitAck(s, 'session:join', { sessionId: 's1' })).success, true);
      assert.equal(backend.calls.length, n);
    });

    it('caches answers for rooms.http.cache_ttl', async () => {
      const user = uid('cache');
      const room = `conversation:ok-${user}`;
      const s = await connect(httpPolicy, { token: signJwt({ sub: user }), transports });
      const count = () => backend.calls.filter((c) => c.body.userId === user && c.body.room === room).length;
      await emitAck(s, 'conversation:join', { conversationId: `ok-${user}` });
      await emitAck(s, 'conversation:leave', { conversationId: `ok-${user}` });
      await emitAck(s, 'conversation:join', { conversationId: `ok-${user}` });
      assert.equal(count(), 1, 'second join within the TTL is answered from the cache');
      await emitAck(s, 'conversation:leave', { conversationId: `ok-${user}` });
      await sleep(1200);
      await emitAck(s, 'conversation:join', { conversationId: `ok-${user}` });
      assert.equal(count(), 2, 'after the TTL the backend is asked again');
    });

    it('a backend that does not answer means deny, with a clear error', async () => {
      const s = await connect(down, { token: signJwt({ sub: uid('d') }), transports });
      const err = waitFor(s, 'error');
      const ack = await emitAck(s, 'conversation:join', { conversationId: '1' });
      assert.equal(ack.success, false);
      assert.match((await err).message, /authorization backend unavailable/);
      // The socket keeps working.
      assert.equal((await emitAck(s, 'session:join', { sessionId: 'x' })).success, true);
    });
  });

  describe(`limits [${transports}]`, () => {
    it('refuses a user\'s connection over max_connections_per_user, and admits again after one closes', async () => {
      const user = uid('lim');
      const token = signJwt({ sub: user });
      const a = await connect(limited, { token, transports });
      await connect(limited, { token, transports });
      assert.equal(await connectError(limited, { token, transports }), 'Connection refused: at most 2 connections per user');
      a.disconnect();
      await eventually(async () => {
        const s = await connect(limited, { token, transports });
        s.disconnect();
      }, 3000, 100);
    });

    it('refuses a join over max_rooms_per_socket', async () => {
      const s = await connect(limited, { token: signJwt({ sub: uid('r') }), transports });
      await emitAck(s, 'conversation:join', { conversationId: '1' });
      await emitAck(s, 'conversation:join', { conversationId: '2' });
      const err = waitFor(s, 'error');
      const ack = await emitAck(s, 'conversation:join', { conversationId: '3' });
      assert.deepEqual(ack, { success: false, error: 'Too many rooms: at most 2 per socket' });
      assert.equal((await err).message, 'Too many rooms: at most 2 per socket');
      await emitAck(s, 'conversation:leave', { conversationId: '1' });
      assert.equal((await emitAck(s, 'conversation:join', { conversationId: '3' })).success, true);
    });
  });
}

describe('public keys by kid from a JWK set', () => {
  const sign = (pair, id, sub) => jwt.sign({ sub, exp: Math.floor(Date.now() / 1000) + 600 }, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }), { algorithm: 'RS256', keyid: id });

  it('verifies by kid, refuses unknown kids, and picks up a rotated key set without a restart', async () => {
    const s = await connect(kid, { token: sign(keyA, 'a', uid('k')) });
    s.disconnect();
    assert.equal(await connectError(kid, { token: sign(keyB, 'b', uid('k')) }), 'Authentication failed: Invalid token');
    assert.equal(await connectError(kid, { token: sign(keyB, 'a', uid('k')) }), 'Authentication failed: Invalid token');
    writeFileSync(jwksPath, JSON.stringify({ keys: [jwk(keyA, 'a'), jwk(keyB, 'b')] }));
    await eventually(async () => {
      const t = await connect(kid, { token: sign(keyB, 'b', uid('k')) });
      t.disconnect();
    }, 5000, 200);
  });
});
