// CONTRACT §1 "The binary": check, plugins, token, config layering, bad configs that
// name the key, and clean shutdown on SIGTERM / SIGINT.

import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import {
  SECRET, TRANSPORTS, configToml, writeTemp, runCli, startServer, mintToken, signJwt,
  connect, waitFor, freePort, tempDir, nowSec, uid, standardHooks, sleep, rsaKeys,
} from './helpers.mjs';

const servers = [];
standardHooks(() => servers);
after(async () => { await Promise.all(servers.map((s) => s.stop('SIGKILL'))); });

function assertNoPanic(out) {
  assert.doesNotMatch(out, /panicked at|stack backtrace|RUST_BACKTRACE/, `looks like a panic:\n${out}`);
}

/** `check` on a config that must be refused: non-zero exit, stderr names `key`. */
async function assertRefused(toml, key, { env } = {}) {
  const file = writeTemp('bad.toml', toml);
  const r = await runCli(['check', '--config', file], { env });
  assert.notEqual(r.code, 0, `check should fail for ${key}; stdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.ok(r.stderr.includes(key), `stderr should name '${key}':\n${r.stderr}`);
  assertNoPanic(r.stderr + r.stdout);
  return r;
}

function portIsClosed(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    sock.once('connect', () => { sock.destroy(); resolve(false); });
    sock.once('error', () => resolve(true));
  });
}

describe('switchboard plugins', () => {
  it('lists jwt, memory, conversation, typing, session and socketio, one per line', async () => {
    const r = await runCli(['plugins']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.split('\n').filter((l) => l.trim());
    for (const name of ['jwt', 'memory', 'conversation', 'typing', 'session', 'socketio']) {
      assert.ok(lines.some((l) => new RegExp(`\\b${name}\\b`).test(l)), `plugin '${name}' not listed:\n${r.stdout}`);
    }
    assert.ok(lines.length >= 6, `expected one line per plugin:\n${r.stdout}`);
  });
});

describe('switchboard check', () => {
  it('a good config exits 0 and prints the effective config with the secret redacted', async () => {
    const file = writeTemp('good.toml', configToml());
    const r = await runCli(['check', '--config', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.trim().length > 0, 'check printed nothing');
    assert.ok(!r.stdout.includes(SECRET), `the JWT secret appears in check's output:\n${r.stdout}`);
    assert.ok(!r.stderr.includes(SECRET), 'the JWT secret appears on stderr');
    assert.ok(r.stdout.includes('/messages'), `effective config should show the namespace:\n${r.stdout}`);
    // Effective config includes defaults that the file did not set.
    assert.ok(r.stdout.includes('max_event_bytes'), `effective config should include limits defaults:\n${r.stdout}`);
  });

  it('the default config file is ./switchboard.toml in the working directory', async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'switchboard.toml'), configToml({ limits: 'max_event_bytes = "huge"' }));
    const r = await runCli(['check'], { cwd: dir });
    assert.notEqual(r.code, 0, `./switchboard.toml should have been read and refused:\n${r.stdout}`);
    assert.ok(r.stderr.includes('limits.max_event_bytes'), r.stderr);
  });

  it('an RS256-only config needs no secret', async () => {
    const pem = writeTemp('pub.pem', rsaKeys().publicKey);
    const file = writeTemp('rs.toml', configToml({ secret: false, algorithms: ['RS256'], jwt: `public_key_file = "${pem}"` }));
    const r = await runCli(['check', '--config', file]);
    assert.equal(r.code, 0, r.stderr);
  });

  it('limits.max_event_bytes = "huge" -> non-zero, names limits.max_event_bytes', async () => {
    await assertRefused(configToml({ limits: 'max_event_bytes = "huge"' }), 'limits.max_event_bytes');
  });

  it('a misspelled key [server] lisen -> non-zero, names server.lisen', async () => {
    await assertRefused(configToml({ extra: '[server]\nlisen = "x"' }), 'server.lisen');
  });

  it('an HS algorithm without auth.jwt.secret -> non-zero, names auth.jwt.secret', async () => {
    await assertRefused(configToml({ secret: false }), 'auth.jwt.secret');
  });

  it('RS256 without auth.jwt.public_key_file -> non-zero, names auth.jwt.public_key_file', async () => {
    await assertRefused(configToml({ secret: false, algorithms: ['RS256'] }), 'auth.jwt.public_key_file');
  });

  it('a duration without a unit -> non-zero, names auth.jwt.leeway', async () => {
    await assertRefused(configToml({ jwt: 'leeway = "soon"' }), 'auth.jwt.leeway');
  });

  it('a wrong type (limits.burst = "many") -> non-zero, names limits.burst', async () => {
    await assertRefused(configToml({ limits: 'burst = "many"' }), 'limits.burst');
  });

  it('an unknown algorithm -> non-zero, names auth.jwt.algorithms', async () => {
    await assertRefused(configToml({ algorithms: ['HS999'] }), 'auth.jwt.algorithms');
  });

  it('a TOML syntax error -> non-zero without a panic', async () => {
    const file = writeTemp('syntax.toml', '[auth.jwt\nsecret = ');
    const r = await runCli(['check', '--config', file]);
    assert.notEqual(r.code, 0);
    assert.ok(r.stderr.trim().length > 0, 'no message on stderr');
    assertNoPanic(r.stderr + r.stdout);
  });

  it('a --config file that does not exist -> non-zero, names the file', async () => {
    const missing = path.join(tempDir(), 'nope.toml');
    const r = await runCli(['check', '--config', missing]);
    assert.notEqual(r.code, 0);
    assert.ok(r.stderr.includes('nope.toml'), r.stderr);
    assertNoPanic(r.stderr + r.stdout);
  });

  it('SWITCHBOARD_* environment overrides the file (bad value named by key path)', async () => {
    const file = writeTemp('good.toml', configToml());
    const r = await runCli(['check', '--config', file], { env: { SWITCHBOARD_LIMITS__MAX_EVENT_BYTES: 'huge' } });
    assert.notEqual(r.code, 0, r.stdout);
    assert.ok(r.stderr.includes('limits.max_event_bytes'), r.stderr);
  });

  it('SWITCHBOARD_* environment overrides the file (value shown by check)', async () => {
    const file = writeTemp('good.toml', configToml());
    const r = await runCli(['check', '--config', file], { env: { SWITCHBOARD_TRANSPORTS__SOCKETIO__NAMESPACE: '/from-env' } });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes('/from-env'), r.stdout);
  });

  it('serve with a bad config exits non-zero before binding', async () => {
    const port = await freePort();
    const file = writeTemp('bad.toml', configToml({ limits: 'max_event_bytes = "huge"' }));
    const r = await runCli(['serve', '--config', file, '--listen', `127.0.0.1:${port}`], { timeout: 10000 });
    assert.notEqual(r.code, 0, 'serve should refuse the config');
    assert.equal(r.signal, null, 'serve did not exit by itself');
    assert.ok(r.stderr.includes('limits.max_event_bytes'), r.stderr);
    assertNoPanic(r.stderr + r.stdout);
    assert.ok(await portIsClosed(port));
  });
});

describe('switchboard token', () => {
  it('mints an HS256 token with sub, email, role, extra claims and the ttl, verifiable with the secret', async () => {
    const file = writeTemp('good.toml', configToml());
    const sub = uid('tok');
    const token = await mintToken(file, { sub, ttl: '1h', email: 'e@example.com', role: 'admin', claims: { team: 'blue' } });
    const decoded = jwt.verify(token, SECRET, { algorithms: ['HS256'], complete: true });
    assert.equal(decoded.header.alg, 'HS256');
    const p = decoded.payload;
    assert.equal(p.sub, sub);
    assert.equal(p.email, 'e@example.com');
    assert.equal(p.role, 'admin');
    assert.equal(p.team, 'blue');
    assert.ok(Math.abs(p.exp - (nowSec() + 3600)) <= 5, `exp ${p.exp} should be ~1h from now`);
  });

  it('--ttl 4s gives exp about 4 s from now', async () => {
    const file = writeTemp('good.toml', configToml());
    const token = await mintToken(file, { sub: 'short', ttl: '4s' });
    const p = jwt.verify(token, SECRET, { algorithms: ['HS256'] });
    assert.ok(Math.abs(p.exp - (nowSec() + 4)) <= 2, `exp ${p.exp} vs now ${nowSec()}`);
  });

  it('token without --sub fails without a panic', async () => {
    const file = writeTemp('good.toml', configToml());
    const r = await runCli(['token', '--config', file]);
    assert.notEqual(r.code, 0);
    assertNoPanic(r.stderr + r.stdout);
  });
});

describe('config layering for serve', () => {
  it('--listen wins over server.listen in the file', async () => {
    const filePort = await freePort();
    const server = await startServer({ toml: configToml({ extra: `[server]\nlisten = "127.0.0.1:${filePort}"` }) });
    servers.push(server);
    assert.ok(await portIsClosed(filePort), 'the file\'s port should not be bound when --listen is given');
    await server.stop();
  });

  it('SWITCHBOARD_SERVER__LISTEN wins over the file', async () => {
    const filePort = await freePort();
    const envPort = await freePort();
    const server = await startServer({
      toml: configToml({ extra: `[server]\nlisten = "127.0.0.1:${filePort}"` }),
      env: { SWITCHBOARD_SERVER__LISTEN: `127.0.0.1:${envPort}` },
      port: envPort,
      listenFlag: false,
    });
    servers.push(server);
    assert.ok(await portIsClosed(filePort));
    assert.equal(await server.stop(), 0);
  });
});

describe('shutdown', () => {
  for (const signal of ['SIGTERM', 'SIGINT']) {
    it(`${signal}: connected clients (websocket and polling) get disconnect, exit code 0`, async (t) => {
      const server = await startServer({ toml: configToml() });
      servers.push(server);
      const sockets = [];
      for (const transports of TRANSPORTS) {
        sockets.push(await connect(server, { transports, token: signJwt({ sub: uid(`bye-${transports[0]}`) }) }));
      }
      const disconnects = sockets.map((s) => waitFor(s, 'disconnect', 10000));
      server.proc.kill(signal);
      const reasons = await Promise.all(disconnects);
      t.diagnostic(`disconnect reasons: ${reasons.join(', ')}`);
      const code = await Promise.race([server.exited, sleep(10000).then(() => 'timeout')]);
      assert.notEqual(code, 'timeout', `switchboard did not exit within 10 s of ${signal}`);
      assert.equal(code, 0, `exit code after ${signal}; output:\n${server.logs()}`);
      assert.equal(server.exitSignal, null, 'the process should exit by itself, not die of the signal');
      assert.ok(await portIsClosed(server.port));
      assertNoPanic(server.logs());
    });
  }

  it('SIGTERM with no clients exits 0 promptly', async () => {
    const server = await startServer({ toml: configToml() });
    servers.push(server);
    const t0 = Date.now();
    const code = await server.stop('SIGTERM');
    assert.equal(code, 0);
    assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
  });
});
