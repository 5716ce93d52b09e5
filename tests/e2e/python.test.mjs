// python-socketio 5 (tests/python/client.py, pinned by tests/python/requirements.txt) against
// a node with recovery on: with `auth.recovery = false` it gets today's wire — every event
// with exactly its payload, no offset argument its fixed-arity handlers would choke on — and
// a dropped connection starts afresh (CONTRACT §2 *Recovery*, last point).

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import {
  configToml, startServer, signJwt, emitApi, eventually, uid, REPO_ROOT, TRANSPORTS,
  connect, joinConversation, disconnectAll,
} from './helpers.mjs';
import { startProxy } from './proxy.mjs';

const PYTHON_DIR = path.join(REPO_ROOT, 'tests', 'python');
const PYTHON = process.env.SB_PYTHON || path.join(PYTHON_DIR, '.venv', 'bin', 'python');

/** Runs client.py; `lines` collects its JSON lines, `stderr` what it logged. */
function python(url, token, conversationId, transport) {
  assert.ok(existsSync(PYTHON), `no ${PYTHON}: scripts/test.sh makes it (python3 -m venv tests/python/.venv and pip install -r tests/python/requirements.txt)`);
  const proc = spawn(PYTHON, [path.join(PYTHON_DIR, 'client.py'), url, token, conversationId, transport], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const run = { proc, lines: [], stderr: '' };
  readline.createInterface({ input: proc.stdout }).on('line', (l) => {
    try {
      run.lines.push(JSON.parse(l));
    } catch {
      run.lines.push({ step: 'unparsable', line: l });
    }
  });
  proc.stderr.on('data', (d) => { run.stderr += d; });
  run.exited = new Promise((r) => proc.once('exit', r));
  run.stop = async () => {
    proc.stdin.end();
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await run.exited;
    clearTimeout(t);
  };
  return run;
}

const steps = (run, step) => run.lines.filter((l) => l.step === step);

describe('python-socketio 5 with auth.recovery = false', () => {
  let server;
  let proxy;
  before(async () => {
    server = await startServer({ toml: configToml({ extra: '[recovery]\nenabled = true\n' }) });
    proxy = await startProxy(server.port);
  });
  after(async () => {
    await proxy.close();
    await server.stop();
  });
  afterEach(() => disconnectAll());

  for (const [transport] of TRANSPORTS) {
    it(`gets today's wire over ${transport}: one argument per event, and a fresh start after a drop`, async () => {
      const conv = uid('conv');
      // A socket.io-client in the same room tracks offsets: one room, both kinds of member.
      const tracking = await connect(server, { token: signJwt({ sub: 'js-user' }) });
      await joinConversation(tracking, conv);
      const run = python(proxy.url, signJwt({ sub: 'py-user' }), conv, transport);
      try {
        await eventually(() => steps(run, 'joined').length === 1, 15000);
        assert.deepEqual(steps(run, 'joined')[0].ack, { conversationId: conv, success: true });
        for (const m of ['m0', 'm1', 'm2']) {
          const r = await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: m, status: 'read' } });
          assert.equal(r.status, 200);
        }
        await eventually(() => steps(run, 'status').length === 3, 5000);
        assert.deepEqual(steps(run, 'status').map((l) => l.data.messageId), ['m0', 'm1', 'm2']);
        const seen = () => tracking.received.filter((r) => r.event === 'message:status');
        await eventually(() => seen().length === 3, 5000);
        assert.deepEqual(seen().map((r) => r.args[0].messageId), ['m0', 'm1', 'm2'], 'the tracking socket gets each once');
        for (const r of seen()) assert.equal(typeof r.args[1], 'string', 'with its offset');
        const joined = steps(run, 'event').filter((l) => l.event === 'conversation:joined');
        assert.deepEqual(joined.map((l) => l.args), [1], 'conversation:joined carries its payload alone');

        // The connection drops; what is published meanwhile is not replayed (no recovery).
        proxy.hold();
        proxy.cut();
        await eventually(() => steps(run, 'disconnected').length === 1, 10000);
        const r = await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: 'missed', status: 'read' } });
        assert.equal(r.status, 200);
        proxy.release();
        await eventually(() => steps(run, 'joined').length === 2, 15000);
        await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: 'm3', status: 'read' } });
        await eventually(() => steps(run, 'status').some((l) => l.data.messageId === 'm3'), 5000);
        assert.deepEqual(steps(run, 'status').map((l) => l.data.messageId), ['m0', 'm1', 'm2', 'm3']);
        assert.doesNotMatch(run.stderr, /TypeError|Traceback/, run.stderr);
      } catch (e) {
        e.message += `\npython-socketio said:\n${run.lines.map((l) => JSON.stringify(l)).join('\n')}\n${run.stderr}`;
        throw e;
      } finally {
        await run.stop();
      }
    });
  }
});
