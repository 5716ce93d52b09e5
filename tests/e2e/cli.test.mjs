// CONTRACT §1 "The binary": check, plugins, token, config layering, bad configs that
// name the key, and clean shutdown on SIGTERM / SIGINT.

import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, readFileSync, mkdirSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import {
  SECRET, API_KEY, TRANSPORTS, configToml, writeTemp, runCli, startServer, spawnServer, mintToken,
  signJwt, connect, connectError, waitFor, freePort, tempDir, nowSec, uid, standardHooks, sleep,
  rsaKeys, api, embeddedNotice, eventually,
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

// The exact variables Kubernetes puts into every pod beside a Service named `switchboard`.
const K8S_SERVICE_LINKS = {
  SWITCHBOARD_PORT: 'tcp://10.0.0.1:3000',
  SWITCHBOARD_SERVICE_HOST: '10.0.0.1',
  SWITCHBOARD_SERVICE_PORT: '3000',
  SWITCHBOARD_PORT_3000_TCP: 'tcp://10.0.0.1:3000',
  SWITCHBOARD_PORT_3000_TCP_PROTO: 'tcp',
  SWITCHBOARD_PORT_3000_TCP_PORT: '3000',
  SWITCHBOARD_PORT_3000_TCP_ADDR: '10.0.0.1',
};

describe('no config file: the embedded development default', () => {
  it('serves with a generated secret and API key, printing a demo token and a curl line that work', async () => {
    const port = await freePort();
    const server = await spawnServer({ args: ['--listen', `127.0.0.1:${port}`], port });
    servers.push(server);
    const notice = embeddedNotice(server.logs());
    assert.ok(notice.apiKey && notice.token && notice.curl, `no notice:\n${server.logs()}`);
    assert.match(server.logs(), /JWT secret\s+\S{32,}\s+\(random, generated for this run/);
    // The printed secret is the one the node verifies with: a token signed with it connects.
    const printed = server.logs().match(/JWT secret\s+(\S{32,})/)[1];
    const mine = await connect(server, { token: signJwt({ sub: 'own-token' }, printed) });
    assert.ok(mine.connected);
    mine.disconnect();
    assert.ok(notice.apiKey.length >= 43, notice.apiKey);
    assert.ok(notice.curl.includes(`http://127.0.0.1:${port}/api/v1/emit`), notice.curl);
    const claims = jwt.decode(notice.token);
    assert.equal(claims.sub, 'demo');
    assert.ok(Math.abs(claims.exp - (nowSec() + 3600)) <= 5, `exp ${claims.exp}`);
    const s = await connect(server, { token: notice.token });
    assert.ok(s.connected);
    const r = await api(server, 'GET', '/api/v1/presence', { key: notice.apiKey });
    assert.equal(r.status, 200, r.text);
    assert.ok(r.json.users.includes('demo'), r.text);
    assert.equal((await api(server, 'GET', '/api/v1/presence', { key: 'not-the-key' })).status, 401);
    assert.equal(await server.stop(), 0);
  });

  it('two runs get different secrets: a token of one run is refused by the next', async () => {
    const port = await freePort();
    const first = await spawnServer({ args: ['--listen', `127.0.0.1:${port}`], port });
    servers.push(first);
    const { token } = embeddedNotice(first.logs());
    assert.equal(await first.stop(), 0);
    const second = await spawnServer({ args: ['--listen', `127.0.0.1:${port}`], port });
    servers.push(second);
    assert.equal(await connectError(second, { token }), 'Authentication failed: Invalid token');
    await second.stop();
  });

  it('SWITCHBOARD_AUTH__JWT__SECRET makes the secret not random: `token` then mints tokens that verify', async () => {
    const port = await freePort();
    const env = { SWITCHBOARD_AUTH__JWT__SECRET: SECRET };
    const server = await spawnServer({ args: ['--listen', `127.0.0.1:${port}`], env, port });
    servers.push(server);
    assert.match(server.logs(), /JWT secret\s+from env SWITCHBOARD_AUTH__JWT__SECRET/);
    const r = await runCli(['token', '--sub', 'alice'], { env });
    assert.equal(r.code, 0, r.stderr);
    const s = await connect(server, { token: r.stdout.trim() });
    assert.ok(s.connected);
    await server.stop();
  });

  it('with the secret and the API keys from the environment it is an ordinary config: any address, no notice', async () => {
    const port = await freePort();
    const server = await spawnServer({
      args: [],
      env: { SWITCHBOARD_AUTH__JWT__SECRET: SECRET, SWITCHBOARD_API__KEYS: API_KEY, SWITCHBOARD_SERVER__LISTEN: `0.0.0.0:${port}` },
      port,
    });
    servers.push(server);
    assert.doesNotMatch(server.logs(), /embedded development default/);
    assert.equal((await api(server, 'GET', '/api/v1/presence')).status, 200);
    await server.stop();
  });

  it('refuses a non-loopback address with exit 2, pointing at `switchboard init`', async () => {
    const port = await freePort();
    const r = await runCli(['--listen', `0.0.0.0:${port}`], { timeout: 10000 });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /server\.listen: `0\.0\.0\.0:\d+` is not a loopback address/);
    assert.ok(r.stderr.includes('switchboard init'), r.stderr);
    assert.ok(r.stderr.includes('(from command-line flags)'), r.stderr);
    assertNoPanic(r.stderr);
    assert.ok(await portIsClosed(port));
  });

  it('`token` with no config file refuses and says why', async () => {
    const r = await runCli(['token', '--sub', 'alice']);
    assert.equal(r.code, 2);
    assert.ok(r.stderr.includes('random secret'), r.stderr);
    assert.ok(r.stderr.includes('demo token'), r.stderr);
    assert.ok(r.stderr.includes('switchboard init'), r.stderr);
    assert.equal(r.stdout, '');
  });

  it('`check` with no config file validates the embedded default', async () => {
    const r = await runCli(['check']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /embedded development default/);
    assert.match(r.stdout, /secret = "<redacted>"/);
  });
});

describe('switchboard init', () => {
  it('writes ./switchboard.toml with fresh secrets that check accepts, token signs with and serve uses', async () => {
    const dir = tempDir();
    const r = await runCli(['init'], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const file = path.join(dir, 'switchboard.toml');
    const text = readFileSync(file, 'utf8');
    const secret = text.match(/^secret = "([^"]+)"/m)?.[1];
    const key = text.match(/^keys = \["([^"]+)"\]/m)?.[1];
    assert.ok(secret && secret.length >= 43 && /^[A-Za-z0-9_-]+$/.test(secret), `secret: ${secret}`);
    assert.ok(key && key.length >= 43 && key !== secret, `key: ${key}`);
    assert.equal(statSync(file).mode & 0o077, 0, 'the file should be readable by its owner only');
    assert.match(text, /^# /m, 'the config should be commented');
    const check = await runCli(['check'], { cwd: dir });
    assert.equal(check.code, 0, check.stderr);
    assert.ok(!check.stdout.includes(secret), 'check must redact the secret');
    const minted = await runCli(['token', '--sub', 'alice'], { cwd: dir });
    assert.equal(minted.code, 0, minted.stderr);
    jwt.verify(minted.stdout.trim(), secret, { algorithms: ['HS256'] });

    const again = await runCli(['init'], { cwd: dir });
    assert.equal(again.code, 2);
    assert.ok(again.stderr.includes('--force'), again.stderr);
    assert.equal(readFileSync(file, 'utf8'), text, 'init must not overwrite without --force');
    const forced = await runCli(['init', '--force'], { cwd: dir });
    assert.equal(forced.code, 0, forced.stderr);
    assert.notEqual(readFileSync(file, 'utf8'), text);
  });

  it('writes to a given path', async () => {
    const file = path.join(tempDir(), 'other.toml');
    const r = await runCli(['init', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await runCli(['check', '--config', file])).code, 0);
  });
});

describe('environment from Kubernetes', () => {
  it('serves with the exact service-link variables set, logging one warning that names them', async () => {
    const server = await startServer({ toml: configToml(), env: K8S_SERVICE_LINKS });
    servers.push(server);
    const s = await connect(server, { token: signJwt({ sub: uid('k8s') }) });
    assert.ok(s.connected);
    const warnings = server.logs().split('\n').filter((l) => l.includes('ignoring environment variables'));
    assert.equal(warnings.length, 1, `expected one warning:\n${server.logs()}`);
    for (const name of Object.keys(K8S_SERVICE_LINKS)) {
      assert.ok(warnings[0].includes(name), `the warning should name ${name}: ${warnings[0]}`);
    }
    assert.match(warnings[0], /WARN/);
    assert.doesNotMatch(server.logs(), /unknown key/);
    assert.equal(await server.stop(), 0);
  });

  it('lists from the environment: a,b and JSON', async () => {
    for (const keys of ['k1,k2', '["k1","k2"]']) {
      const server = await startServer({ toml: configToml(), env: { SWITCHBOARD_API__KEYS: keys } });
      servers.push(server);
      for (const key of ['k1', 'k2']) {
        const r = await api(server, 'GET', '/api/v1/presence', { key });
        assert.equal(r.status, 200, `${keys}: ${key}: ${r.text}`);
      }
      assert.equal((await api(server, 'GET', '/api/v1/presence')).status, 401, 'the file\'s key is replaced');
      await server.stop();
    }
  });
});

describe('config errors and checks', () => {
  it('every problem in one report, each with its key and origin', async () => {
    const file = writeTemp('many.toml', configToml({
      limits: 'max_event_bytes = "huge"\nburst = "many"',
      jwt: 'leeway = "soon"',
      extra: '[log]\nlevel = "verbose!!"',
    }));
    const r = await runCli(['check', '--config', file], { env: { SWITCHBOARD_PRESENCE__NODE_TTL: '10' } });
    assert.equal(r.code, 2, r.stderr);
    for (const key of ['limits.max_event_bytes', 'limits.burst', 'auth.jwt.leeway', 'log.level']) {
      assert.match(r.stderr, new RegExp(`^  ${key.replaceAll('.', '\\.')}: .*\\(from file .*many\\.toml\\)$`, 'm'), `${key}:\n${r.stderr}`);
    }
    assert.match(r.stderr, /^ {2}presence\.node_ttl: .*\(from env SWITCHBOARD_PRESENCE__NODE_TTL\)$/m);
    assertNoPanic(r.stderr);
  });

  it('log.level = "verbose!!" is refused by check and by serve', async () => {
    const file = writeTemp('log.toml', configToml({ extra: '[log]\nlevel = "verbose!!"' }));
    const r = await runCli(['check', '--config', file]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /log\.level: `verbose!!`/);
    const s = await runCli(['serve', '--config', file, '--listen', `127.0.0.1:${await freePort()}`]);
    assert.equal(s.code, 2);
    assert.match(s.stderr, /log\.level/);
  });

  it('a relative server.static_dir is the config file\'s folder\'s, whatever the working directory', async () => {
    const dir = tempDir();
    mkdirSync(path.join(dir, 'public'));
    writeFileSync(path.join(dir, 'public', 'index.html'), '<h1>static ok</h1>');
    const configPath = path.join(dir, 'switchboard.toml');
    writeFileSync(configPath, configToml({ extra: '[server]\nstatic_dir = "public"' }));
    const port = await freePort();
    const other = await spawnServer({ args: ['--config', configPath, '--listen', `127.0.0.1:${port}`], port, cwd: tempDir() });
    servers.push(other);
    const res = await fetch(`${other.url}/index.html`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '<h1>static ok</h1>');
    await other.stop();
  });

  it('a server.static_dir that does not exist is a config error naming the key', async () => {
    await assertRefused(configToml({ extra: '[server]\nstatic_dir = "no-such-folder"' }), 'server.static_dir');
  });

  it('check\'s own output fed back is refused: <redacted> is a placeholder, not a secret', async () => {
    const good = writeTemp('good.toml', configToml());
    const printed = await runCli(['check', '--config', good]);
    assert.equal(printed.code, 0, printed.stderr);
    const r = await assertRefused(printed.stdout, 'auth.jwt.secret');
    assert.ok(r.stderr.includes('api.keys'), r.stderr);
    assert.match(r.stderr, /placeholder/);
  });

  it('an empty api.keys is warned about at start-up', async () => {
    const server = await startServer({ toml: configToml().replace(`keys = ["${API_KEY}"]`, 'keys = []') });
    servers.push(server);
    assert.match(server.logs(), /WARN.*api\.keys is empty: the HTTP API \(\/api\/\*\) refuses every call/);
    await server.stop();
  });

  it('the start-up line names the node, its transports and plugins; connects and disconnects are logged at info', async () => {
    const server = await startServer({ toml: configToml({ extra: '[recovery]\nenabled = true\n' }) });
    servers.push(server);
    const line = server.logs().split('\n').find((l) => l.includes('switchboard serving'));
    assert.ok(line, server.logs());
    assert.match(line, / node="?[0-9a-f]{32}"?/);
    for (const part of ['transports=socketio,websocket', 'auth=jwt', 'presence=memory', 'broker=memory', 'events=conversation,typing,session', 'recovery=true']) {
      assert.ok(line.includes(part), `${part} in ${line}`);
    }
    const user = `log-${Date.now()}`;
    const socket = await connect(server, { token: signJwt({ sub: user }) });
    await eventually(() => new RegExp(`INFO .* connected socket=\\S+ user=${user} transport=socketio`).test(server.logs()), 5000);
    socket.disconnect();
    await eventually(() => new RegExp(`INFO .* disconnected socket=\\S+ user=${user} transport=socketio reason=closed`).test(server.logs()), 5000);
    await server.stop();
  });

  it('logs carry no ANSI colour when stderr is not a terminal, even without NO_COLOR', async () => {
    const server = await startServer({ toml: configToml(), env: { NO_COLOR: '' } });
    servers.push(server);
    await server.stop();
    assert.ok(!server.logs().includes('\x1b['), `ANSI escapes in piped logs:\n${JSON.stringify(server.logs().slice(0, 300))}`);
  });
});

describe('command line', () => {
  it('--listen localhost:PORT resolves and logs the address it bound', async () => {
    const port = await freePort();
    const file = writeTemp('good.toml', configToml());
    const server = await spawnServer({ args: ['--config', file, '--listen', `localhost:${port}`], port });
    servers.push(server);
    assert.match(server.logs(), new RegExp(`serving listen=127\\.0\\.0\\.1:${port}`));
    await server.stop();
  });

  it('token refuses an empty --sub', async () => {
    const file = writeTemp('good.toml', configToml());
    const r = await runCli(['token', '--sub', '', '--config', file]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--sub must not be empty/);
    assert.equal(r.stdout, '');
  });

  for (const [claim, flag] of [['sub', '--sub'], ['exp', '--ttl'], ['iat', 'time of minting'], ['nbf', 'not settable']]) {
    it(`token refuses --claim ${claim}=… and says what sets it`, async () => {
      const file = writeTemp('good.toml', configToml());
      const r = await runCli(['token', '--sub', 'a', '--claim', `${claim}=x`, '--config', file]);
      assert.equal(r.code, 2, r.stdout);
      assert.ok(r.stderr.includes(`--claim ${claim}=`) && r.stderr.includes(flag), r.stderr);
      assert.equal(r.stdout, '');
    });
  }
});
