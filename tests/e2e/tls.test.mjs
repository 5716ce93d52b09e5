// CONTRACT §1 `server.tls.*`: the public listener serves https and wss with a certificate
// signed by a CA the test makes. socket.io-client over wss:// and over https:// long-polling,
// the native protocol over wss with `ws`, the API on the internal listener; a rotated
// certificate goes to the next connection while sockets opened before it keep receiving; a
// bad new file keeps the old certificate; SIGHUP reloads at once; config errors name the key.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  configToml, startServer, runCli, signJwt, connect, waitFor, emitApi, api, joinConversation,
  eventually, uid, freePort, tempDir, writeTemp, standardHooks,
} from './helpers.mjs';
import { connectNative, closeAllNative } from './native.mjs';
import { makeCa, probeCert, httpsGet, healthyOverTls } from './tls.mjs';

let ca;
let first; // serial 1001, EC key (PKCS#8)
let second; // serial 2002, RSA key (PKCS#1)
let third; // serial 3003
let dir; // where the served files live
let server;
let internal; // { url } of the server's internal listener

const certFile = () => path.join(dir, 'cert.pem');
const keyFile = () => path.join(dir, 'key.pem');
const install = (pair) => {
  writeFileSync(certFile(), pair.cert);
  writeFileSync(keyFile(), pair.key);
};
const tlsToml = ({ cert = certFile(), key = keyFile(), reload = '200ms', internalPort } = {}) => configToml({
  extra: [
    '[server.tls]',
    cert ? `cert_file = "${cert}"` : '',
    key ? `key_file = "${key}"` : '',
    `reload_interval = "${reload}"`,
    internalPort ? `[server]\ninternal_listen = "127.0.0.1:${internalPort}"` : '',
  ].join('\n'),
});

/** Connects until the served certificate has `serial`, or fails after ms. */
const servedSerialBecomes = (port, serial, ms = 10000) => eventually(async () => {
  const got = await probeCert(port, ca.certPem);
  assert.equal(got.serial, serial, `served certificate ${JSON.stringify(got)}`);
  return got;
}, ms, 50);

const user = (name) => {
  const sub = uid(name);
  return { sub, token: signJwt({ sub }) };
};

before(async () => {
  ca = makeCa();
  first = ca.leaf({ serial: '1001', cn: 'switchboard-one' });
  second = ca.leaf({ serial: '2002', cn: 'switchboard-two', rsa: true });
  third = ca.leaf({ serial: '3003', cn: 'switchboard-three' });
  dir = tempDir();
  install(first);
  const internalPort = await freePort();
  server = await startServer({
    toml: tlsToml({ internalPort }),
    scheme: 'https',
    ca: ca.certPem,
    healthy: healthyOverTls,
  });
  internal = { url: `http://127.0.0.1:${internalPort}` };
});
after(async () => {
  closeAllNative();
  if (server) assert.equal(await server.stop(), 0, 'SIGTERM stops a TLS node with status 0');
});
standardHooks(() => server);

describe('https and wss on the public listener', () => {
  it('serves the configured certificate, trusted through the test CA, with ALPN http/1.1', async () => {
    const got = await probeCert(server.port, ca.certPem);
    assert.deepEqual(got, { serial: '1001', cn: 'switchboard-one', alpn: 'http/1.1' });
    const health = await httpsGet(`${server.url}/healthz`, ca.certPem);
    assert.deepEqual([health.status, health.json], [200, { status: 'ok' }]);
  });

  it('plain http on the TLS port gets no HTTP answer', async () => {
    const res = await fetch(`http://127.0.0.1:${server.port}/healthz`, { signal: AbortSignal.timeout(3000) })
      .then((r) => r.status, (e) => e);
    assert.ok(res instanceof Error, `a plain request got HTTP ${res}`);
  });

  it('a client that does not trust the CA is refused by its own TLS check', async () => {
    await assert.rejects(probeCert(server.port, makeCa('Another CA').certPem), /certificate/i);
  });

  for (const transports of [['websocket'], ['polling']]) {
    const via = transports[0] === 'websocket' ? 'wss://' : 'https:// long-polling';
    it(`socket.io-client over ${via}: connects, joins, receives what the API publishes`, async () => {
      const u = user('tls');
      const socket = await connect(server, { token: u.token, transports });
      assert.equal(socket.io.engine.transport.name, transports[0]);
      const conversationId = uid('c');
      await joinConversation(socket, conversationId);
      const got = waitFor(socket, 'message:status');
      const data = { conversationId, messageId: uid('m'), status: 'read' };
      const res = await emitApi(internal, { event: 'message:status', data });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(await got, data);
    });
  }

  it('socket.io-client\'s default (polling, then the upgrade to WebSocket) works over TLS', async () => {
    const socket = await connect(server, { token: user('upgrade').token, transports: ['polling', 'websocket'] });
    await eventually(() => socket.io.engine.transport.name === 'websocket', 5000);
    const conversationId = uid('c');
    await joinConversation(socket, conversationId);
  });

  it('the native protocol over wss: connects, joins, receives what the API publishes', async () => {
    const u = user('native-tls');
    const c = await connectNative(server, { token: u.token });
    assert.equal(c.hello.userId, u.sub);
    const conversationId = uid('c');
    assert.deepEqual(await c.emitAck('conversation:join', { conversationId }), { conversationId, success: true });
    const data = { conversationId, messageId: uid('m'), status: 'delivered' };
    assert.equal((await emitApi(internal, { event: 'message:status', data })).status, 200);
    assert.deepEqual(await c.event('message:status'), data);
  });
});

describe('certificate rotation', () => {
  it('a new certificate written over the files goes to the next connection; open sockets keep receiving', async () => {
    const conversationId = uid('rot');
    const before = await connect(server, { token: user('before').token, transports: ['websocket'] });
    const polling = await connect(server, { token: user('before-poll').token, transports: ['polling'] });
    const native = await connectNative(server, { token: user('before-native').token });
    await joinConversation(before, conversationId);
    await joinConversation(polling, conversationId);
    await native.emitAck('conversation:join', { conversationId });
    assert.equal((await probeCert(server.port, ca.certPem)).serial, '1001');

    const mark = server.mark();
    install(second);
    const got = await servedSerialBecomes(server.port, '2002');
    assert.equal(got.cn, 'switchboard-two');
    await eventually(() => server.logsSince(mark).includes('TLS certificate reloaded'), 5000);

    // Sockets opened with the old certificate are still there and still get events.
    const data = { conversationId, messageId: uid('m'), status: 'read' };
    const events = [waitFor(before, 'message:status'), waitFor(polling, 'message:status')];
    assert.equal((await emitApi(internal, { event: 'message:status', data })).status, 200);
    assert.deepEqual(await Promise.all(events), [data, data]);
    assert.deepEqual(await native.event('message:status'), data);
    assert.ok(before.connected && polling.connected && native.isOpen);

    // And a new client connects with the new certificate.
    const after = await connect(server, { token: user('after').token, transports: ['websocket'] });
    await joinConversation(after, conversationId);
  });

  it('a bad new file keeps the certificate in use and logs a warning; a good one then loads', async () => {
    const mark = server.mark();
    const current = (await probeCert(server.port, ca.certPem)).serial;
    writeFileSync(certFile(), '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n');
    await eventually(() => server.logsSince(mark).includes('TLS certificate not reloaded'), 5000);
    assert.match(server.logsSince(mark), /server\.tls\.cert_file/);
    assert.equal((await probeCert(server.port, ca.certPem)).serial, current);
    const socket = await connect(server, { token: user('still').token, transports: ['websocket'] });
    assert.ok(socket.connected);

    // A key that is not the certificate's is refused the same way.
    const mark2 = server.mark();
    writeFileSync(certFile(), third.cert); // the key file still holds the previous key
    await eventually(() => /is not the key of the certificate/.test(server.logsSince(mark2)), 5000);
    assert.equal((await probeCert(server.port, ca.certPem)).serial, current);

    writeFileSync(keyFile(), third.key);
    await servedSerialBecomes(server.port, '3003');
    const metrics = await api(internal, 'GET', '/metrics');
    assert.match(metrics.text, /switchboard_errors_total\{kind="tls_reload"\} [1-9]/);
  });
});

describe('SIGHUP', () => {
  it('reloads the certificate at once, however long the reload interval', async () => {
    const own = tempDir();
    const cert = path.join(own, 'cert.pem');
    const key = path.join(own, 'key.pem');
    writeFileSync(cert, first.cert);
    writeFileSync(key, first.key);
    const node = await startServer({
      toml: tlsToml({ cert, key, reload: '1h' }),
      scheme: 'https',
      ca: ca.certPem,
      healthy: healthyOverTls,
    });
    try {
      assert.equal((await probeCert(node.port, ca.certPem)).serial, '1001');
      writeFileSync(cert, second.cert);
      writeFileSync(key, second.key);
      node.proc.kill('SIGHUP');
      await servedSerialBecomes(node.port, '2002');
      assert.match(node.logs(), /TLS certificate reloaded.*SIGHUP|SIGHUP.*TLS certificate reloaded/);
    } finally {
      assert.equal(await node.stop(), 0);
    }
  });
});

describe('TLS config errors stop start-up with status 2, naming the key', () => {
  const cases = [
    ['only cert_file', () => ({ cert: certFile(), key: null }), 'server.tls.key_file: missing'],
    ['only key_file', () => ({ cert: null, key: keyFile() }), 'server.tls.cert_file: missing'],
    ['a cert file that does not exist', () => ({ cert: path.join(dir, 'absent.pem') }), 'server.tls.cert_file: cannot read'],
    ['a cert file that is not PEM', () => ({ cert: writeTemp('junk.pem', 'hello\n') }), 'server.tls.cert_file: no PEM certificate'],
    ['a key file with no key', () => ({ key: writeTemp('nokey.pem', first.cert) }), 'server.tls.key_file: no PEM private key'],
    ['a key that is not the certificate\'s', () => ({ cert: writeTemp('c.pem', first.cert), key: writeTemp('k.pem', second.key) }), 'server.tls.key_file:'],
  ];
  for (const [name, files, message] of cases) {
    it(`${name} -> "${message}…"`, async () => {
      const config = writeTemp('switchboard.toml', tlsToml(files()));
      for (const cmd of [['check'], ['serve', '--listen', `127.0.0.1:${await freePort()}`]]) {
        const r = await runCli([...cmd, '--config', config]);
        assert.equal(r.code, 2, `${cmd[0]}: exit ${r.code}\n${r.stderr}`);
        assert.match(r.stderr, /invalid configuration/);
        assert.ok(r.stderr.includes(message), `${cmd[0]} stderr should say "${message}":\n${r.stderr}`);
        assert.doesNotMatch(r.stderr, /panicked|RUST_BACKTRACE/);
      }
    });
  }

  it('switchboard check prints the TLS files and the internal listener', async () => {
    const config = writeTemp('switchboard.toml', tlsToml({ internalPort: 9191 }));
    const r = await runCli(['check', '--config', config]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes(`cert_file = "${certFile()}"`), r.stdout);
    assert.ok(r.stdout.includes(`key_file = "${keyFile()}"`), r.stdout);
    assert.ok(r.stdout.includes('internal_listen = "127.0.0.1:9191"'), r.stdout);
  });
});
