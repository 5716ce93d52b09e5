// CONTRACT §2 "Connecting" and "Token lifetime": token sources, the two exact
// connect_error messages, the ?userId= fallback, auth:expiring / auth:refresh and the
// disconnect at exp.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, SECRET, configToml, startServer, mintToken, signJwt, rawJwt, rsaKeys, writeTemp,
  connect, connectError, waitFor, expectNone, emitAck, presenceOf, decodeJwt, nowSec, uid,
  standardHooks, joinConversation, expectOnline,
} from './helpers.mjs';

const NO_TOKEN = 'Authentication failed: No token provided';
const INVALID = 'Authentication failed: Invalid token';

const ISSUER = 'switchboard-e2e';
const AUDIENCE = 'e2e-clients';

let base;     // defaults (leeway 60s)
let strict;   // leeway 0s, refresh_notice 2s
let issAud;   // issuer + audience configured
let query;    // allow_query_user_id = true
let rs;       // RS256 only, public key file, no secret

before(async () => {
  const { publicKey } = rsaKeys();
  const pemFile = writeTemp('jwt-public.pem', publicKey);
  [base, strict, issAud, query, rs] = await Promise.all([
    startServer({ toml: configToml() }),
    startServer({ toml: configToml({ auth: 'refresh_notice = "2s"', jwt: 'leeway = "0s"' }) }),
    startServer({ toml: configToml({ jwt: `issuer = "${ISSUER}"\naudience = "${AUDIENCE}"` }) }),
    startServer({ toml: configToml({ auth: 'allow_query_user_id = true' }) }),
    startServer({ toml: configToml({ secret: false, algorithms: ['RS256'], jwt: `public_key_file = "${pemFile.replaceAll('\\', '\\\\')}"` }) }),
  ]);
});

after(async () => {
  await Promise.all([base, strict, issAud, query, rs].filter(Boolean).map((s) => s.stop()));
});

standardHooks(() => [base, strict, issAud, query, rs]);

for (const transports of TRANSPORTS) {
  const T = transports[0];

  describe(`connect and authenticate [${T}]`, () => {
    it('a token minted by `switchboard token` in auth.token connects, identity = sub', async () => {
      const sub = uid(`auth-cli-${T}`);
      const token = await mintToken(base, { sub, ttl: '1h', email: 'a@example.com', role: 'agent' });
      assert.equal(token.split('.').length, 3, `not a JWT: ${token}`);
      const claims = decodeJwt(token);
      assert.equal(claims.sub, sub);
      assert.equal(claims.email, 'a@example.com');
      assert.equal(claims.role, 'agent');
      const s = await connect(base, { transports, token });
      assert.ok(s.connected);
      await expectOnline(base, sub, 1);
    });

    it('a valid token in the Authorization: Bearer header connects', async () => {
      const sub = uid(`auth-hdr-${T}`);
      const s = await connect(base, { transports, extraHeaders: { Authorization: `Bearer ${signJwt({ sub })}` } });
      assert.ok(s.connected);
      await expectOnline(base, sub);
    });

    it('an empty auth.token falls through to the Authorization header', async () => {
      const sub = uid(`auth-hdr2-${T}`);
      const s = await connect(base, {
        transports, auth: { token: '' }, extraHeaders: { Authorization: `Bearer ${signJwt({ sub })}` },
      });
      assert.ok(s.connected);
      await expectOnline(base, sub);
    });

    it('auth.token is preferred: a bad auth.token with a good header is refused', async () => {
      const msg = await connectError(base, {
        transports, auth: { token: 'not-a-jwt' }, extraHeaders: { Authorization: `Bearer ${signJwt({ sub: 'x' })}` },
      });
      assert.equal(msg, INVALID);
    });

    describe('no token', () => {
      const cases = [
        ['no auth at all', {}],
        ['auth: {}', { auth: {} }],
        ['auth.token null', { auth: { token: null } }],
        ['auth.token ""', { auth: { token: '' } }],
        ['only a ?token= query parameter', { query: { token: signJwt({ sub: 'q' }) } }],
        ['Authorization header with an empty bearer', { extraHeaders: { Authorization: 'Bearer ' } }],
        ['Authorization header that is not Bearer', { extraHeaders: { Authorization: `Basic ${Buffer.from('a:b').toString('base64')}` } }],
        ['?userId= while auth.allow_query_user_id is off', { query: { userId: 'alice' } }],
      ];
      for (const [name, opts] of cases) {
        it(`${name} -> "${NO_TOKEN}"`, async () => {
          assert.equal(await connectError(base, { transports, ...opts }), NO_TOKEN);
        });
      }
    });

    describe('invalid tokens', () => {
      const now = nowSec();
      const { privateKey, publicKey } = rsaKeys();
      const cases = [
        ['garbage', () => 'not-a-jwt'],
        ['bad signature (other secret)', () => signJwt({ sub: 'u' }, 'another-secret-that-is-long-enough-987654')],
        ['tampered payload', () => {
          const [h, , sig] = signJwt({ sub: 'u' }).split('.');
          const p = Buffer.from(JSON.stringify({ sub: 'admin', exp: now + 3600 })).toString('base64url');
          return `${h}.${p}.${sig}`;
        }],
        ['alg none, no signature', () => rawJwt({ alg: 'none', typ: 'JWT' }, { sub: 'u', exp: now + 3600 })],
        ['alg none with an HMAC signature', () => rawJwt({ alg: 'none', typ: 'JWT' }, { sub: 'u', exp: now + 3600 }, { key: SECRET })],
        ['HS512 with the right secret (only HS256 accepted)', () => signJwt({ sub: 'u' }, SECRET, { algorithm: 'HS512' })],
        ['HS384 with the right secret (only HS256 accepted)', () => signJwt({ sub: 'u' }, SECRET, { algorithm: 'HS384' })],
        ['RS256-signed (only HS256 accepted)', () => signJwt({ sub: 'u' }, privateKey, { algorithm: 'RS256' })],
        ['HS256 keyed with a public key PEM', () => rawJwt({ alg: 'HS256', typ: 'JWT' }, { sub: 'u', exp: now + 3600 }, { key: publicKey })],
        ['expired beyond the default 60s leeway', () => signJwt({ sub: 'u', iat: now - 1000, exp: now - 300 })],
        ['nbf beyond the default leeway', () => signJwt({ sub: 'u', nbf: now + 600 })],
        ['no sub', () => signJwt({ email: 'nosub@example.com' })],
      ];
      for (const [name, make] of cases) {
        it(`${name} -> "${INVALID}"`, async () => {
          assert.equal(await connectError(base, { transports, token: make() }), INVALID);
        });
      }

      it(`a token that is not a string (42) -> "${INVALID}"`, async () => {
        assert.equal(await connectError(base, { transports, auth: { token: 42 } }), INVALID);
      });

      it(`a token that is an object -> "${INVALID}"`, async () => {
        assert.equal(await connectError(base, { transports, auth: { token: { sub: 'u' } } }), INVALID);
      });

      it(`a bad token in the Authorization header -> "${INVALID}"`, async () => {
        const msg = await connectError(base, { transports, extraHeaders: { Authorization: 'Bearer not-a-jwt' } });
        assert.equal(msg, INVALID);
      });

      it('expired 10 s ago is still accepted within the default 60 s leeway', async () => {
        // connect() resolving means the handshake was accepted (the server may end the
        // connection right after, at exp).
        await connect(base, { transports, token: signJwt({ sub: uid('leeway'), iat: nowSec() - 100, exp: nowSec() - 10 }) });
      });

      it('nbf 10 s in the future is accepted within the default 60 s leeway', async () => {
        const s = await connect(base, { transports, token: signJwt({ sub: uid('leeway-nbf'), nbf: nowSec() + 10 }) });
        assert.ok(s.connected);
      });
    });

    describe('leeway "0s"', () => {
      it(`expired 2 s ago -> "${INVALID}"`, async () => {
        const t = signJwt({ sub: 'u', iat: nowSec() - 60, exp: nowSec() - 2 });
        assert.equal(await connectError(strict, { transports, token: t }), INVALID);
      });
      it(`nbf 30 s in the future -> "${INVALID}"`, async () => {
        const t = signJwt({ sub: 'u', nbf: nowSec() + 30 });
        assert.equal(await connectError(strict, { transports, token: t }), INVALID);
      });
      it('nbf in the past connects', async () => {
        const s = await connect(strict, { transports, token: signJwt({ sub: uid('nbf'), nbf: nowSec() - 5 }) });
        assert.ok(s.connected);
      });
    });

    describe('issuer and audience configured', () => {
      it('matching iss and aud connect', async () => {
        const s = await connect(issAud, { transports, token: signJwt({ sub: uid('ia'), iss: ISSUER, aud: AUDIENCE }) });
        assert.ok(s.connected);
      });
      const cases = [
        ['wrong issuer', { iss: 'someone-else', aud: AUDIENCE }],
        ['missing issuer', { aud: AUDIENCE }],
        ['wrong audience', { iss: ISSUER, aud: 'other-clients' }],
        ['missing audience', { iss: ISSUER }],
      ];
      for (const [name, claims] of cases) {
        it(`${name} -> "${INVALID}"`, async () => {
          assert.equal(await connectError(issAud, { transports, token: signJwt({ sub: 'u', ...claims }) }), INVALID);
        });
      }
    });

    describe('RS256 with auth.jwt.public_key_file (no secret)', () => {
      it('an RS256 token signed with the matching private key connects', async () => {
        const sub = uid('rs');
        const s = await connect(rs, { transports, token: signJwt({ sub }, rsaKeys().privateKey, { algorithm: 'RS256' }) });
        assert.ok(s.connected);
        await expectOnline(rs, sub);
      });
      it(`HS256 keyed with the public key PEM (HS/RS confusion) -> "${INVALID}"`, async () => {
        const t = rawJwt({ alg: 'HS256', typ: 'JWT' }, { sub: 'u', exp: nowSec() + 3600 }, { key: rsaKeys().publicKey });
        assert.equal(await connectError(rs, { transports, token: t }), INVALID);
      });
      it(`an RS256 token from another key -> "${INVALID}"`, async () => {
        const { privateKey } = (await import('node:crypto')).generateKeyPairSync('rsa', {
          modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' },
        });
        assert.equal(await connectError(rs, { transports, token: signJwt({ sub: 'u' }, privateKey, { algorithm: 'RS256' }) }), INVALID);
      });
      it(`an HS256 token signed with the test secret -> "${INVALID}"`, async () => {
        assert.equal(await connectError(rs, { transports, token: signJwt({ sub: 'u' }) }), INVALID);
      });
    });

    describe('?userId= fallback (auth.allow_query_user_id = true)', () => {
      it('?userId=alice with no token connects as alice', async () => {
        const userId = uid(`alice-${T}`);
        const s = await connect(query, { transports, query: { userId } });
        assert.ok(s.connected);
        await expectOnline(query, userId, 1);
      });
      it('?userId= with an empty auth.token (no token) connects as that user', async () => {
        const userId = uid(`alice2-${T}`);
        const s = await connect(query, { transports, auth: { token: '' }, query: { userId } });
        assert.ok(s.connected);
        await expectOnline(query, userId);
      });
      it(`a bad token with ?userId= never falls back -> "${INVALID}"`, async () => {
        assert.equal(await connectError(query, { transports, token: 'not-a-jwt', query: { userId: 'alice' } }), INVALID);
      });
      it(`an expired token with ?userId= -> "${INVALID}"`, async () => {
        const t = signJwt({ sub: 'u', iat: nowSec() - 1000, exp: nowSec() - 500 });
        assert.equal(await connectError(query, { transports, token: t, query: { userId: 'alice' } }), INVALID);
      });
      it('a valid token wins over ?userId= (identity is the sub)', async () => {
        const sub = uid(`tok-${T}`);
        const other = uid(`mallory-${T}`);
        const s = await connect(query, { transports, token: signJwt({ sub }), query: { userId: other } });
        assert.ok(s.connected);
        await expectOnline(query, sub);
        assert.equal((await presenceOf(query, other)).online, false);
      });
      it(`no token and no ?userId= -> "${NO_TOKEN}"`, async () => {
        assert.equal(await connectError(query, { transports }), NO_TOKEN);
      });
      it(`an empty ?userId= with no token -> "${NO_TOKEN}"`, async () => {
        assert.equal(await connectError(query, { transports, query: { userId: '' } }), NO_TOKEN);
      });
    });
  });

  // Token lifetime: server `strict` has leeway 0s and refresh_notice 2s; tokens live 4s.
  describe(`token lifetime [${T}]`, () => {
    /** expiresAt may be epoch seconds, epoch ms or an ISO string: return epoch ms. */
    function toMs(v) {
      if (typeof v === 'number') return v < 1e12 ? v * 1000 : v;
      assert.equal(typeof v, 'string', `expiresAt is neither a number nor a string: ${JSON.stringify(v)}`);
      const ms = Date.parse(v);
      assert.ok(!Number.isNaN(ms), `expiresAt is not a date: ${v}`);
      return ms;
    }

    it('auth:expiring arrives before exp; auth:refresh with a fresh token for the same sub extends the connection', async () => {
      const sub = uid(`life-${T}`);
      const token = await mintToken(strict, { sub, ttl: '4s' });
      const expMs = decodeJwt(token).exp * 1000;
      const s = await connect(strict, { transports, token });
      const disconnected = [];
      s.on('disconnect', (reason) => disconnected.push(reason));

      const expiring = await waitFor(s, 'auth:expiring', 5000);
      const noticeAt = Date.now();
      assert.ok(expiring && typeof expiring === 'object', `auth:expiring payload: ${JSON.stringify(expiring)}`);
      assert.ok(Math.abs(toMs(expiring.expiresAt) - expMs) <= 1000,
        `auth:expiring.expiresAt ${JSON.stringify(expiring.expiresAt)} should be the token's exp ${new Date(expMs).toISOString()}`);
      assert.ok(noticeAt < expMs - 500, `auth:expiring came too late: ${expMs - noticeAt} ms before exp`);
      assert.ok(noticeAt > expMs - 3500, `auth:expiring came too early: ${expMs - noticeAt} ms before exp (notice is 2s)`);

      const fresh = await mintToken(strict, { sub, ttl: '1h' });
      const freshExpMs = decodeJwt(fresh).exp * 1000;
      const refreshed = waitFor(s, 'auth:refreshed', 5000);
      const ack = await emitAck(s, 'auth:refresh', { token: fresh });
      const ev = await refreshed;
      assert.ok(Math.abs(toMs(ev.expiresAt) - freshExpMs) <= 1000,
        `auth:refreshed.expiresAt ${JSON.stringify(ev.expiresAt)} should be the new token's exp ${new Date(freshExpMs).toISOString()}`);
      assert.ok(ack && typeof ack === 'object', `auth:refresh ack: ${JSON.stringify(ack)}`);
      assert.notEqual(ack.success, false, `auth:refresh ack reports failure: ${JSON.stringify(ack)}`);
      assert.deepEqual(ack, ev, 'the ack should carry what auth:refreshed carries');

      // The old exp passes: the socket stays.
      await expectNone(s, 'disconnect', Math.max(0, expMs + 1500 - Date.now()));
      assert.deepEqual(disconnected, []);
      assert.ok(s.connected);
      await joinConversation(s, uid('after-refresh'));
    });

    it('auth:refresh with a token for another sub or a bad token gets `error`; without refresh the socket is disconnected at exp', async () => {
      const sub = uid(`life2-${T}`);
      const token = await mintToken(strict, { sub, ttl: '4s' });
      const expMs = decodeJwt(token).exp * 1000;
      const s = await connect(strict, { transports, token });
      const disconnectP = waitFor(s, 'disconnect', Math.max(1000, expMs - Date.now() + 3000));
      disconnectP.catch(() => {});

      // Another user's token.
      const otherToken = await mintToken(strict, { sub: uid('someone-else'), ttl: '1h' });
      let errP = waitFor(s, 'error', 2000);
      let ack = await emitAck(s, 'auth:refresh', { token: otherToken });
      let err = await errP;
      assert.equal(typeof err?.message, 'string', `error payload: ${JSON.stringify(err)}`);
      assert.ok(!Number.isNaN(Date.parse(err.timestamp)), `error.timestamp: ${JSON.stringify(err)}`);
      assert.equal(ack?.success, false, `ack for a refused refresh: ${JSON.stringify(ack)}`);
      assert.equal(typeof ack.error, 'string');

      // A token that does not verify.
      errP = waitFor(s, 'error', 2000);
      ack = await emitAck(s, 'auth:refresh', { token: signJwt({ sub }, 'wrong-secret-wrong-secret-wrong-secret') });
      err = await errP;
      assert.equal(typeof err?.message, 'string');
      assert.equal(ack?.success, false, `ack for a refused refresh: ${JSON.stringify(ack)}`);

      // No refresh event was granted.
      assert.equal(s.received.filter((r) => r.event === 'auth:refreshed').length, 0, 'auth:refreshed must not be sent for a refused token');

      const reason = await disconnectP;
      const at = Date.now();
      assert.ok(at >= expMs - 300, `disconnected ${expMs - at} ms before exp (reason ${reason})`);
      assert.ok(at <= expMs + 2500, `disconnected ${at - expMs} ms after exp (reason ${reason})`);
      assert.equal(s.connected, false);
    });
  });
}

describe('why a client was refused: logged with the reason, rate-limited, counted in /metrics', () => {
  let server;
  before(async () => {
    server = await startServer({ toml: configToml({ jwt: `leeway = "0s"\nissuer = "${ISSUER}"\naudience = "${AUDIENCE}"` }) });
  });
  after(async () => { await server?.stop(); });

  const good = { iss: ISSUER, aud: AUDIENCE };
  const cases = [
    ['expired', () => signJwt({ sub: 'u', ...good, exp: nowSec() - 30 })],
    ['not_yet_valid', () => signJwt({ sub: 'u', ...good, nbf: nowSec() + 600 })],
    ['bad_signature', () => signJwt({ sub: 'u', ...good }, 'another-secret-another-secret-another-secret')],
    ['wrong_issuer', () => signJwt({ sub: 'u', iss: 'someone-else', aud: AUDIENCE })],
    ['wrong_audience', () => signJwt({ sub: 'u', iss: ISSUER, aud: 'someone-else' })],
    ['no_sub', () => signJwt({ ...good })],
    ['algorithm_not_accepted', () => rawJwt({ alg: 'none', typ: 'JWT' }, { sub: 'u', ...good, exp: nowSec() + 60 })],
    ['malformed', () => 'not-a-jwt'],
  ];

  async function refusedCount(reason) {
    const res = await fetch(`${server.url}/metrics`);
    const text = await res.text();
    const m = text.match(new RegExp(`^switchboard_auth_refused_total\\{reason="${reason}"\\} (\\d+)$`, 'm'));
    assert.ok(m, `no switchboard_auth_refused_total{reason="${reason}"} in /metrics:\n${text}`);
    return Number(m[1]);
  }

  for (const [reason, token] of cases) {
    it(`${reason}: the client gets exactly "${INVALID}", the log and the metric say ${reason}`, async () => {
      const mark = server.mark();
      const before = await refusedCount(reason);
      assert.equal(await connectError(server, { token: token() }), INVALID);
      assert.equal(await refusedCount(reason), before + 1);
      const lines = server.logsSince(mark).split('\n').filter((l) => l.includes('token refused'));
      assert.equal(lines.length, 1, `one log line:\n${server.logsSince(mark)}`);
      assert.match(lines[0], /INFO/);
      assert.ok(lines[0].includes(`reason="${reason}"`), lines[0]);
      assert.ok(lines[0].includes('during="connect"'), lines[0]);
    });
  }

  it('no token: the client gets exactly the no-token message, counted as no_token', async () => {
    const before = await refusedCount('no_token');
    assert.equal(await connectError(server, {}), NO_TOKEN);
    assert.equal(await refusedCount('no_token'), before + 1);
  });

  it('repeats of one reason within 10 s are counted but not logged again', async () => {
    // A reason of its own, so the first refusal here is the first of the window.
    const token = signJwt({ sub: 'u', ...good }, SECRET, { noExp: true });
    const mark = server.mark();
    const before = await refusedCount('no_exp');
    for (let i = 0; i < 4; i += 1) {
      assert.equal(await connectError(server, { token }), INVALID);
    }
    assert.equal(await refusedCount('no_exp'), before + 4);
    const lines = server.logsSince(mark).split('\n').filter((l) => l.includes('reason="no_exp"'));
    assert.equal(lines.length, 1, `at most one line per reason per 10 s:\n${server.logsSince(mark)}`);
  });
});
