// The README's quick start, run literally in a fresh temporary folder, so that the README
// cannot drift from what the binary does.
//
// The shell commands between the README's `<!-- quickstart:begin -->` / `:end` markers (and
// `quickstart-config`) run through `sh` in an empty folder, as a newcomer would type them.
// One line is stood in for: `cargo build --release`, which would take longer than the
// whole suite; the folder gets `target/release/switchboard` as a link to the binary under
// test instead (SB_BIN; with SB_QUICKSTART_BUILD=1 the build runs for real in the
// repository and the link points at its result). The server's address is moved to a free
// port with SWITCHBOARD_SERVER__LISTEN, an environment layer the README documents, so the
// test does not need port 3000 free.

import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, existsSync } from 'node:fs';
import path from 'node:path';
import { io } from 'socket.io-client';
import {
  BIN, REPO_ROOT, childEnv, tempDir, freePort, embeddedNotice, eventually, waitFor, runCli,
} from './helpers.mjs';

const README = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
const BINARY = 'target/release/switchboard';

/** The command lines of the README's `sh` block between `<!-- name:begin/end -->`. */
function readmeCommands(name) {
  const m = README.match(new RegExp(`<!-- ${name}:begin -->\\s*\`\`\`sh\\n([\\s\\S]*?)\`\`\`\\s*<!-- ${name}:end -->`));
  assert.ok(m, `README.md has no \`sh\` block between <!-- ${name}:begin --> and <!-- ${name}:end -->`);
  return m[1].split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

/** The program a line runs, and its first argument. */
function words(line) {
  const [program, first] = line.replace(/\s+#.*$/, '').split(/\s+/);
  return { program, first };
}

/** Whether a line starts the gateway (no subcommand, `serve`, or only flags). */
function isServe(line) {
  const { program, first } = words(line);
  return program === BINARY && (first === undefined || first === 'serve' || first.startsWith('-'));
}

/** A fresh empty folder with `target/release/switchboard` in it, as after the build. */
function freshFolder() {
  const dir = tempDir();
  mkdirSync(path.join(dir, 'target', 'release'), { recursive: true });
  let built = BIN;
  if (process.env.SB_QUICKSTART_BUILD) {
    execFileSync('cargo', ['build', '--release'], { cwd: REPO_ROOT, stdio: 'inherit' });
    built = path.join(REPO_ROOT, BINARY);
  }
  assert.ok(existsSync(built), `binary not found: ${built}`);
  symlinkSync(built, path.join(dir, BINARY));
  return dir;
}

/** Runs one line through sh in `dir`; resolves { code, stdout, stderr }. */
function sh(line, dir, env) {
  return new Promise((resolve) => {
    const p = spawn('sh', ['-c', line], { cwd: dir, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 20000);
    p.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

const servers = [];
after(() => {
  for (const s of servers) {
    if (s.exitCode === null && s.signalCode === null) s.kill('SIGKILL');
  }
});

/** Starts a serving line through sh in `dir`; resolves { proc, logs(), stop() } once /healthz answers on `port`. */
async function serveLine(line, dir, env, port) {
  const proc = spawn('sh', ['-c', `exec ${line}`], { cwd: dir, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  servers.push(proc);
  let output = '';
  proc.stdout.on('data', (d) => { output += d; });
  proc.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  await eventually(async () => {
    assert.equal(proc.exitCode, null, `\`${line}\` exited (${proc.exitCode}):\n${output}`);
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1000) });
    return res.status === 200;
  }, 15000);
  return {
    logs: () => output,
    async stop() {
      proc.kill('SIGTERM');
      return exited;
    },
  };
}

/** Runs a block's lines in order: the build is stood in for, the serving line started last. */
async function runBlock(name, dir, env, port) {
  const lines = readmeCommands(name);
  const outputs = [];
  let server;
  for (const line of lines) {
    if (words(line).program === 'cargo') {
      assert.equal(line.replace(/\s+#.*$/, ''), 'cargo build --release', 'the quick start builds once, with --release');
      continue;
    }
    assert.equal(words(line).program, BINARY, `every command is the one release binary: ${line}`);
    if (isServe(line)) {
      assert.equal(server, undefined, `two serving lines in ${name}`);
      server = await serveLine(line, dir, env, port);
    } else {
      const r = await sh(line, dir, env);
      assert.equal(r.code, 0, `\`${line}\` failed (${r.code}):\n${r.stderr}`);
      outputs.push({ line, ...r });
    }
  }
  assert.ok(server, `no line of ${name} starts the gateway`);
  return { server, outputs };
}

/** Connects to `url` with `token`, joins conversation 42 and resolves the socket. */
async function joinedSocket(url, token) {
  const socket = io(url, { auth: { token }, transports: ['websocket'], forceNew: true, reconnection: false });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  const ack = await socket.timeout(5000).emitWithAck('conversation:join', { conversationId: '42' });
  assert.deepEqual(ack, { conversationId: '42', success: true });
  return socket;
}

describe('the README quick start, literally', () => {
  it('serve with no config: the printed demo token connects and the printed curl line publishes', async () => {
    const curl = await sh('command -v curl', tempDir(), {});
    assert.equal(curl.code, 0, 'the quick start publishes with curl: install it (apt-get install curl)');
    const dir = freshFolder();
    const port = await freePort();
    const env = { SWITCHBOARD_SERVER__LISTEN: `127.0.0.1:${port}` };
    const { server } = await runBlock('quickstart', dir, env, port);
    const notice = embeddedNotice(server.logs());
    assert.ok(notice.token && notice.curl, `no start-up notice with a token and a curl line:\n${server.logs()}`);
    const url = server.logs().match(/^ {2}socket\.io\s+(\S+)$/m)?.[1];
    assert.equal(url, `http://127.0.0.1:${port}/messages`, server.logs());

    const socket = await joinedSocket(url, notice.token);
    const arrived = waitFor(socket, 'message:received', 5000);
    const published = await sh(notice.curl, dir, {});
    assert.equal(published.code, 0, `the printed curl line failed:\n${published.stderr}`);
    const { offset, ...answer } = JSON.parse(published.stdout);
    assert.deepEqual(answer, { event: 'message:received', room: 'conversation:42' });
    assert.match(offset, /^[a-z0-9]+:\d+$/, 'the README shows the offset in the answer');
    const message = await arrived;
    assert.equal(message.conversationId, '42');
    assert.equal(message.senderId, 'demo');
    assert.deepEqual(message.content, { body: 'hello from curl' });
    socket.disconnect();
    assert.equal(await server.stop(), 0);
  });

  it('your own config: init, check, token and serve with it', async () => {
    const dir = freshFolder();
    const port = await freePort();
    const env = { SWITCHBOARD_SERVER__LISTEN: `127.0.0.1:${port}` };
    const { server, outputs } = await runBlock('quickstart-config', dir, env, port);
    assert.doesNotMatch(server.logs(), /embedded development default/, 'the written config should be read');
    const minted = outputs.find((o) => words(o.line).first === 'token');
    assert.ok(minted, 'the block mints a token');
    const token = minted.stdout.trim();
    const key = readFileSync(path.join(dir, 'switchboard.toml'), 'utf8').match(/^keys = \["([^"]+)"\]/m)?.[1];
    assert.ok(key, 'init wrote an API key');

    const socket = await joinedSocket(`http://127.0.0.1:${port}/messages`, token);
    const arrived = waitFor(socket, 'message:received', 5000);
    const res = await fetch(`http://127.0.0.1:${port}/api/v1/emit`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        event: 'message:received',
        data: {
          conversationId: '42', messageId: 'm1', senderId: 'bob', type: 'text',
          content: { body: 'hi' }, status: 'sent', timestamp: '2026-11-26T10:00:00Z',
        },
      }),
    });
    assert.equal(res.status, 200, await res.text());
    assert.equal((await arrived).senderId, 'bob');
    socket.disconnect();
    assert.equal(await server.stop(), 0);
    // The same binary answers `token` for another user of this config.
    const again = await runCli(['token', '--sub', 'bob'], { cwd: dir });
    assert.equal(again.code, 0, again.stderr);
  });
});
