// CONTRACT §1 `switchboard schema`: the events the configured plugins declare, as an
// AsyncAPI 3.0 document (valid by @asyncapi/parser), one JSON Schema per event, and
// TypeScript types that a typed socket.io-client and a TypeScript backend compile against
// under `tsc --strict` (and fail to compile against when a field or event is misspelt).
// The web-chat example's types are the generated file, and its script type-checks with them.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import { BIN, REPO_ROOT, configToml, runCli, tempDir, writeTemp } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const TSC = path.join(here, 'node_modules', 'typescript', 'bin', 'tsc');
const SOCKET_IO_CLIENT = path.join(here, 'node_modules', 'socket.io-client');
const POLLS_BIN = path.join(path.dirname(BIN), 'switchboard-polls');
const WEB_CHAT = path.join(REPO_ROOT, 'examples', 'web-chat');
const POLLS_CONFIG = path.join(REPO_ROOT, 'examples', 'custom-plugin', 'switchboard.toml');

const CONTRACT_CLIENT = [
  'conversation:join', 'conversation:leave', 'typing:start', 'typing:stop', 'session:join',
  'session:leave', 'auth:refresh',
];
const CONTRACT_SERVER = [
  'message:received', 'message:status', 'session:message-sent', 'session:node-executed',
  'session:status-changed', 'session:completed', 'typing:start', 'typing:stop', 'user:online',
  'user:offline', 'error', 'auth:expiring', 'auth:refreshed', 'conversation:joined',
  'conversation:left', 'session:joined', 'session:left',
];

/** Runs `bin schema …`; asserts success and returns stdout. */
async function schema(args, { bin = BIN } = {}) {
  const r = await run(bin, ['schema', ...args]);
  assert.equal(r.code, 0, `schema ${args.join(' ')} failed:\n${r.stderr}`);
  assert.equal(r.stderr, '', `schema ${args.join(' ')} wrote to stderr:\n${r.stderr}`);
  return r.stdout;
}

function run(bin, args) {
  return new Promise((resolve) => {
    execFile(bin, args, { cwd: tempDir(), env: { ...process.env, NO_COLOR: '1' }, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout: String(stdout), stderr: String(stderr) }));
  });
}

/** Diagnostics of an AsyncAPI document at warning level or above, as readable lines. */
async function asyncapiProblems(text) {
  const { document, diagnostics } = await new Parser().parse(text);
  const problems = diagnostics
    .filter((d) => d.severity <= DiagnosticSeverity.Warning)
    .map((d) => `${d.code} at ${d.path.join('.')}: ${d.message}`);
  return { document, problems };
}

/**
 * Type-checks `files` (already in `dir`) with tsc; resolves { ok, output }.
 * socket.io-client's own types come from this suite's node_modules.
 */
function tsc(dir, files, { js = false, strict = true } = {}) {
  const config = {
    compilerOptions: {
      strict,
      noEmit: true,
      target: 'es2022',
      lib: ['es2022', 'dom', 'dom.iterable'],
      module: 'esnext',
      moduleResolution: 'bundler',
      skipLibCheck: true,
      types: [],
      allowJs: js,
      checkJs: js,
      paths: { 'socket.io-client': [SOCKET_IO_CLIENT] },
    },
    files,
  };
  const project = path.join(dir, 'tsconfig.json');
  writeFileSync(project, JSON.stringify(config, null, 2));
  return new Promise((resolve) => {
    execFile(process.execPath, [TSC, '-p', project, '--pretty', 'false'], { maxBuffer: 16 << 20 },
      (err, stdout, stderr) => resolve({ ok: !err, output: String(stdout) + String(stderr) }));
  });
}

describe('switchboard schema --format asyncapi', () => {
  it('is a valid AsyncAPI 3.0 document for the embedded default (no config file)', async () => {
    const text = await schema([]);
    const { document, problems } = await asyncapiProblems(text);
    assert.deepEqual(problems, []);
    assert.ok(document, 'the parser returned no document');
    const doc = JSON.parse(text);
    assert.equal(doc.asyncapi, '3.0.0');
    // Both transports and the HTTP API as servers.
    assert.deepEqual(Object.keys(doc.servers).sort(), ['http', 'native', 'socketio']);
    assert.equal(doc.servers.native.pathname, '/ws');
    // Rooms as channels with their parameters.
    const conversation = doc.channels.conversationRoom;
    assert.equal(conversation.address, 'conversation:{conversationId}');
    assert.ok(conversation.parameters.conversationId, JSON.stringify(conversation));
    assert.equal(doc.channels.sessionRoom.address, 'session:{sessionId}');
    // Every contract event as a message, client events with their acks, and the emit body.
    const names = Object.values(doc.components.messages).map((m) => m.name);
    for (const e of [...CONTRACT_CLIENT, ...CONTRACT_SERVER]) assert.ok(names.includes(e), `${e} missing: ${names}`);
    for (const e of CONTRACT_CLIENT) assert.ok(names.includes(`${e} ack`), `${e}'s ack missing`);
    assert.ok(names.includes('POST /api/v1/emit'));
    const ops = Object.values(doc.operations);
    assert.ok(ops.some((o) => o.action === 'receive' && o.reply), 'client events have a reply (the ack)');
    // The constraints validation enforces.
    const status = doc.components.schemas.MessageStatus.properties.status;
    assert.deepEqual(status.enum, ['sent', 'delivered', 'read']);
    const newStatus = doc.components.schemas.StatusChanged.properties.newStatus;
    assert.deepEqual(newStatus.enum, ['running', 'waiting_input', 'completed', 'expired', 'stopped']);
    assert.deepEqual(doc.components.schemas.Id, {
      ...doc.components.schemas.Id, type: 'string', minLength: 1, maxLength: 256,
    });
    assert.ok(doc.components.schemas.StatusChanged.required.includes('updatedAt'));
    assert.ok(!doc.components.schemas.StatusChanged.required.includes('currentNodeId'));
  });

  it('follows the config: namespace, limits, TLS-less hosts, recovery offsets', async () => {
    const toml = configToml({
      limits: 'max_id_chars = 64',
      extra: '[recovery]\nenabled = true\n[transports.websocket]\nenabled = false\n',
    });
    const text = await schema(['--config', writeTemp('s.toml', toml)]);
    const { problems } = await asyncapiProblems(text);
    assert.deepEqual(problems, []);
    const doc = JSON.parse(text);
    assert.equal(doc.channels.connection.address, '/messages');
    assert.equal(doc.components.schemas.Id.maxLength, 64);
    assert.deepEqual(Object.keys(doc.servers).sort(), ['http', 'socketio'], 'the native transport is off');
    const received = Object.values(doc.components.messages).find((m) => m.name === 'message:received');
    assert.match(received.description, /offset/);
    const typing = Object.values(doc.components.messages).find((m) => m.name === 'typing:start' && m.summary.startsWith('To'));
    assert.equal(typing.description, undefined, 'typing is never kept, so carries no offset');
  });

  it("lists a custom plugin's events (the polls example's binary)", async () => {
    const text = await schema(['--config', POLLS_CONFIG], { bin: POLLS_BIN });
    const { problems } = await asyncapiProblems(text);
    assert.deepEqual(problems, []);
    const doc = JSON.parse(text);
    assert.equal(doc.channels.pollRoom.address, 'poll:{pollId}');
    const names = Object.values(doc.components.messages).map((m) => m.name);
    for (const e of ['poll:join', 'poll:leave', 'poll:vote', 'poll:joined', 'poll:voted', 'poll:closed']) {
      assert.ok(names.includes(e), `${e} missing: ${names}`);
    }
  });
});

describe('switchboard schema --format json-schema', () => {
  it('has one schema per event, with its definitions', async () => {
    const doc = JSON.parse(await schema(['--format', 'json-schema']));
    for (const e of CONTRACT_CLIENT) {
      assert.ok(doc.clientToServer[e], `${e} missing`);
      assert.ok(doc.acks[e], `${e}'s ack missing`);
    }
    for (const e of CONTRACT_SERVER) assert.ok(doc.serverToClient[e], `${e} missing`);
    const join = doc.clientToServer['conversation:join'];
    assert.equal(join.$schema, 'https://json-schema.org/draft/2020-12/schema');
    assert.equal(join.$ref, '#/$defs/ConversationRoom');
    assert.deepEqual(join.$defs.ConversationRoom.required, ['conversationId']);
    assert.ok(join.$defs.Id, 'the Id definition travels with the schema');
    const status = doc.serverToClient['message:status'];
    assert.deepEqual(status.$defs.MessageStatus.properties.status.enum, ['sent', 'delivered', 'read']);
    assert.ok(doc.api['POST /api/v1/emit'].anyOf, 'the emit body (single or batch)');
  });
});

describe('switchboard schema --format typescript', () => {
  /** A folder with the generated types and the typed client, ready for tsc. */
  async function typedProject(client = readFileSync(path.join(here, 'typed', 'client.ts'), 'utf8')) {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'switchboard-events.ts'), await schema(['--format', 'typescript']));
    writeFileSync(path.join(dir, 'client.ts'), client);
    return dir;
  }

  it('types a socket.io-client and emit bodies that compile under tsc --strict', async () => {
    const dir = await typedProject();
    const r = await tsc(dir, ['client.ts']);
    assert.ok(r.ok, r.output);
  });

  it('refuses, under tsc, a misspelt field, a wrong enum value and an unknown event', async () => {
    const client = readFileSync(path.join(here, 'typed', 'client.ts'), 'utf8');
    const cases = [
      ['an emit body field', 'data: { conversationId: "42", messageId: "m1", status: "read" } },',
        'data: { conversationID: "42", messageId: "m1", status: "read" } },', /conversationID/],
      ['a client event field', 'socket.emit("session:join", { sessionId: "s1" });',
        'socket.emit("session:join", { sessionid: "s1" });', /sessionid/],
      ['an enum value', 'newStatus: "waiting_input"', 'newStatus: "paused"', /"paused"/],
      ['a client event name', 'socket.emit("typing:start", { conversationId: "42" });',
        'socket.emit("typing:begin", { conversationId: "42" });', /"typing:begin"/],
      ['a server event field', 'console.log(n.sessionId, n.nodeId, n.nodeLabel)',
        'console.log(n.sessionId, n.nodeId, n.label)', /'label'/],
      ['an ack field', 'if (reply.success) console.log(reply.conversationId);',
        'if (reply.success) console.log(reply.conversation);', /'conversation'/],
    ];
    for (const [what, from, to, mention] of cases) {
      assert.ok(client.includes(from), `client.ts no longer contains ${from}`);
      const dir = await typedProject(client.replace(from, to));
      const r = await tsc(dir, ['client.ts']);
      assert.ok(!r.ok, `tsc accepted ${what} misspelt (${to})`);
      assert.match(r.output, mention, `tsc's errors for ${what}:\n${r.output}`);
    }
  });

  it("types a custom plugin's events (the polls example's binary)", async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'switchboard-events.ts'),
      await schema(['--format', 'typescript', '--config', POLLS_CONFIG], { bin: POLLS_BIN }));
    writeFileSync(path.join(dir, 'polls.ts'), `
      import { io, Socket } from "socket.io-client";
      import type { ClientToServerEvents, ServerToClientEvents, EmitBody } from "./switchboard-events";
      const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io("http://127.0.0.1:3000/polls");
      socket.emit("poll:join", { pollId: "p1" }, (r) => console.log(r.success));
      socket.emit("poll:vote", { pollId: "p1", option: "yes" });
      socket.on("poll:voted", ({ pollId, option, userId }) => console.log(pollId, option, userId));
      socket.on("poll:closed", ({ results }) => console.log(results["yes"] + 1));
      export const close: EmitBody = { event: "poll:closed", data: { pollId: "p1", results: { yes: 2 } } };
    `);
    const r = await tsc(dir, ['polls.ts']);
    assert.ok(r.ok, r.output);
  });
});

describe('the web-chat example is typed by the generated file', () => {
  it('ships exactly what `schema --format typescript` prints for its config', async () => {
    const generated = await schema(['--format', 'typescript', '--config', path.join(WEB_CHAT, 'switchboard.toml')]);
    const shipped = readFileSync(path.join(WEB_CHAT, 'public', 'switchboard-events.d.ts'), 'utf8');
    assert.equal(shipped, generated,
      'examples/web-chat/public/switchboard-events.d.ts is stale: regenerate it with '
      + '`switchboard schema --format typescript --config examples/web-chat/switchboard.toml`');
  });

  it('type-checks app.js (tsc --checkJs) against it', async () => {
    const dir = tempDir();
    copyFileSync(path.join(WEB_CHAT, 'public', 'app.js'), path.join(dir, 'app.js'));
    copyFileSync(path.join(WEB_CHAT, 'public', 'switchboard-events.d.ts'), path.join(dir, 'switchboard-events.d.ts'));
    const r = await tsc(dir, ['app.js'], { js: true, strict: false });
    assert.ok(r.ok, r.output);
  });
});

describe('switchboard schema refuses what it cannot do', () => {
  it('an unknown format, naming the formats', async () => {
    const r = await runCli(['schema', '--format', 'openapi']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /asyncapi/);
    assert.match(r.stderr, /typescript/);
  });

  it('a bad config, naming the key', async () => {
    const file = writeTemp('bad.toml', configToml({ limits: 'max_id_chars = "many"' }));
    const r = await runCli(['schema', '--config', file]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /limits\.max_id_chars/);
    assert.equal(r.stdout, '');
  });
});
