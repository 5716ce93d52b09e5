// CONTRACT §4 Lua hooks, end to end: the example scripts in scripts/ running in the real
// binary; a payload changed by on_outbound, a dropped event, an unauthorized join; an endless
// loop and an allocation storm that cost only their event; a reload on SIGHUP that changes
// behaviour without dropping connections.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  REPO_ROOT, configToml, startServer, signJwt, connect, waitFor, expectNone, emitAck, emitApi,
  api, joinSession, assertErrorEvent, writeTemp, eventually, uid, standardHooks, runCli,
withoutOffset,
} from './helpers.mjs';

const example = (name) => path.join(REPO_ROOT, 'scripts', name);

// A test-only script: drops, loops forever or allocates without end, depending on messageId.
const MISBEHAVE = `
function on_outbound(event, payload)
  if event ~= "message:status" then return payload end
  if payload.messageId == "drop-me" then return nil end
  if payload.messageId == "loop" then while true do end end
  if payload.messageId == "storm" then
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 65536) .. i end
  end
  return payload
end
`;

const luaSection = (scripts, more = '') =>
  `[hooks.lua]\nscripts = ${JSON.stringify(scripts)}\n${more}`;

let server;

before(async () => {
  const misbehave = writeTemp('misbehave.lua', MISBEHAVE);
  server = await startServer({
    toml: configToml({
      extra: luaSection(
        [
          example('redact-phones.lua'),
          example('server-time.lua'),
          example('mute-typing.lua'),
          example('conversation-acl.lua'),
          misbehave,
        ],
        // A timeout a loaded CI machine cannot trip by accident; a small VM for the storm.
        'timeout = "100ms"\nmemory_limit = "4MiB"\n',
      ),
    }),
  });
});
after(async () => { await server?.stop(); });
standardHooks(() => server);

const user = (name, claims = {}) => {
  const sub = uid(name);
  return { sub, token: signJwt({ sub, ...claims }) };
};

async function joinedConversation(id, claims = {}) {
  const s = await connect(server, { token: user('member', { conversations: [id], ...claims }).token });
  const ack = await emitAck(s, 'conversation:join', { conversationId: id });
  assert.deepEqual(ack, { conversationId: id, success: true });
  return s;
}

const status = (conversationId, messageId) => ({
  event: 'message:status',
  data: { conversationId, messageId, status: 'read' },
});

const luaErrors = async (kind) => {
  const r = await api(server, 'GET', '/metrics');
  const line = r.text.split('\n').find((l) => l.startsWith('switchboard_lua_errors_total{')
    && l.includes('misbehave.lua') && l.includes(`kind="${kind}"`));
  return line ? Number(line.split(' ').pop()) : 0;
};

describe('Lua hooks', () => {
  it('on_outbound changes the payload: phones redacted, serverTime added', async () => {
    const s = await connect(server, { token: user('agent').token });
    const sessionId = uid('sess');
    await joinSession(s, sessionId);
    const got = waitFor(s, 'session:message-sent');
    const before = Math.floor(Date.now() / 1000);
    const res = await emitApi(server, {
      event: 'session:message-sent',
      data: {
        sessionId, messageId: 'm1', senderId: 'u1', senderPhone: '+15551234567', type: 'text',
        content: 'call +1 (555) 123-4567 now', status: 'sent', timestamp: '2026-01-01T00:00:00.000Z',
      },
    });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.dropped, undefined);
    const msg = await got;
    assert.equal(msg.content, 'call +* (***) ***-**67 now');
    assert.equal(msg.senderPhone, '+*********67');
    assert.equal(msg.messageId, 'm1');
    assert.ok(Number.isInteger(msg.serverTime) && msg.serverTime >= before, JSON.stringify(msg));
  });

  it('a dropped event never arrives; the HTTP emit answers 200 with dropped: true', async () => {
    const id = uid('conv');
    const s = await joinedConversation(id);
    const res = await emitApi(server, status(id, 'drop-me'));
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(withoutOffset(res.json), { room: `conversation:${id}`, event: 'message:status', dropped: true });
    await expectNone(s, 'message:status', 300);
    const next = waitFor(s, 'message:status');
    const ok = await emitApi(server, status(id, 'kept'));
    assert.equal(ok.json.dropped, undefined);
    assert.equal((await next).messageId, 'kept');
  });

  it('an unauthorized join gets error, a failed ack and no room events', async () => {
    const s = await connect(server, { token: user('outsider', { conversations: ['allowed'] }).token });
    const err = waitFor(s, 'error');
    const ack = await emitAck(s, 'conversation:join', { conversationId: 'forbidden' });
    assert.equal(ack.success, false);
    assert.match(ack.error, /forbidden/);
    assertErrorEvent(await err, 'forbidden');
    await emitApi(server, status('forbidden', 'secret'));
    await expectNone(s, 'message:status', 300);
    // The listed conversation is allowed.
    assert.deepEqual(await emitAck(s, 'conversation:join', { conversationId: 'allowed' }),
      { conversationId: 'allowed', success: true });
  });

  it('typing of a muted user is dropped, others still type', async () => {
    const id = uid('conv');
    const watcher = await joinedConversation(id);
    const muted = await joinedConversation(id, { muted: true });
    const talker = await joinedConversation(id);
    const ack = await emitAck(muted, 'typing:start', { conversationId: id });
    assert.equal(ack.success, false);
    await expectNone(watcher, 'typing:start', 300);
    const seen = waitFor(watcher, 'typing:start');
    talker.emit('typing:start', { conversationId: id });
    assert.equal((await seen).conversationId, id);
  });

  for (const [messageId, kind] of [['loop', 'timeout'], ['storm', 'memory']]) {
    it(`${messageId === 'loop' ? 'while true do end' : 'an allocation storm'} costs only its event (${kind})`, async () => {
      const id = uid('conv');
      const s = await joinedConversation(id);
      const before = await luaErrors(kind);
      const t0 = Date.now();
      const bad = await emitApi(server, status(id, messageId));
      assert.equal(bad.status, 200, bad.text);
      assert.equal(bad.json.dropped, true, 'on_error = drop');
      assert.ok(Date.now() - t0 < 3000, `answered in ${Date.now() - t0} ms`);
      await expectNone(s, 'message:status', 200);
      // The gateway keeps serving: this socket, a new one, the same hook on a good event.
      const other = await joinedConversation(id);
      const both = [waitFor(s, 'message:status'), waitFor(other, 'message:status')];
      await emitApi(server, status(id, 'after'));
      for (const m of await Promise.all(both)) assert.equal(m.messageId, 'after');
      assert.ok(s.connected);
      assert.equal(await luaErrors(kind), before + 1, `switchboard_lua_errors_total{kind="${kind}"}`);
    });
  }
});

describe('Lua hooks config', () => {
  it('a script that does not compile stops start-up, naming the key, the file and the line', async () => {
    const bad = writeTemp('broken.lua', 'function on_outbound(event, payload)\n  return payload +\nend\n');
    const config = writeTemp('switchboard.toml', configToml({ extra: luaSection([bad]) }));
    const r = await runCli(['serve', '--config', config, '--listen', '127.0.0.1:0']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /hooks\.lua\.scripts\[0\]: .*broken\.lua:3:/);
    assert.doesNotMatch(r.stderr, /panicked|RUST_BACKTRACE/);
  });
});

describe('Lua hooks reload', () => {
  let hup;
  let script;
  const version = (v) => `function on_outbound(event, payload)\n  payload.version = ${v}\n  return payload\nend\n`;

  before(async () => {
    script = writeTemp('versioned.lua', version(1));
    hup = await startServer({
      toml: configToml({ extra: luaSection([script], 'watch = false\n') }),
    });
  });
  after(async () => { await hup?.stop(); });
  standardHooks(() => hup);

  it('rewriting the script and SIGHUP change behaviour without dropping connections', async () => {
    const id = uid('conv');
    const s = await connect(hup, { token: user('member').token });
    assert.deepEqual(await emitAck(s, 'conversation:join', { conversationId: id }),
      { conversationId: id, success: true });
    const socketId = s.id;
    const first = waitFor(s, 'message:status');
    await emitApi(hup, status(id, 'one'));
    assert.equal((await first).version, 1);

    writeFileSync(script, version(2));
    hup.proc.kill('SIGHUP');
    await eventually(async () => {
      const got = waitFor(s, 'message:status', 2000, (m) => m.messageId === 'probe');
      await emitApi(hup, status(id, 'probe'));
      return (await got).version === 2;
    }, 5000, 100);

    // A script that no longer compiles keeps version 2 running.
    writeFileSync(script, 'function on_outbound(event, payload)\n  return payload +\nend\n');
    const mark = hup.mark();
    hup.proc.kill('SIGHUP');
    await eventually(() => hup.logsSince(mark).includes('versioned.lua:3'), 5000, 50);
    const still = waitFor(s, 'message:status', 2000, (m) => m.messageId === 'three');
    await emitApi(hup, status(id, 'three'));
    assert.equal((await still).version, 2);

    assert.ok(s.connected, 'the socket stayed connected');
    assert.equal(s.id, socketId, 'the same connection');
    assert.equal(s.received.filter((r) => r.event === 'error').length, 0);
    assert.equal(hup.exitCode, undefined, 'SIGHUP did not stop the gateway');
  });
});
