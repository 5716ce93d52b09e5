// CONTRACT §2 "Server → client" and §3 "HTTP API": POST /api/v1/emit for every
// server → client event (validated, delivered to the derived room and nowhere else),
// explicit rooms, every error status with a JSON body, presence, health and metrics.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, API_KEY, configToml, startServer, signJwt, connect, waitFor, expectNone,
  api, emitApi, assertJsonError, joinConversation, joinSession, uid, standardHooks, disconnectAll,
  expectOnline,
withoutOffset,
} from './helpers.mjs';

let server;

before(async () => {
  server = await startServer({ toml: configToml({ limits: 'max_http_body_bytes = "2KiB"' }) });
});
after(async () => { await server?.stop(); });
standardHooks(() => server);

const ts = () => new Date().toISOString();

/** Valid payloads for every server → client event of CONTRACT §2: [label, event, data]. */
function validCases(conv, sess) {
  return [
    ['message:received', 'message:received', {
      conversationId: conv, messageId: 'm-1', senderId: 'u-1', type: 'text',
      content: { body: 'hello', entities: [1, 2] }, status: 'sent', timestamp: ts(),
    }],
    ...['sent', 'delivered', 'read'].map((status) => [`message:status (${status})`, 'message:status', { conversationId: conv, messageId: 'm-1', status }]),
    ['session:message-sent (all fields)', 'session:message-sent', {
      sessionId: sess, messageId: 'm-2', senderId: 'bot-1', senderName: 'Flow bot', senderPhone: '+15550001',
      isFromBot: true, type: 'text', content: 'Welcome!', status: 'sent', timestamp: ts(),
    }],
    ['session:message-sent (required fields only)', 'session:message-sent', {
      sessionId: sess, messageId: 'm-3', senderId: 'u-1', type: 'image', content: { url: 'x.png' }, status: 'delivered', timestamp: ts(),
    }],
    ['session:node-executed', 'session:node-executed', { sessionId: sess, nodeId: 'node-1', nodeLabel: 'Ask name' }],
    ...['running', 'waiting_input', 'completed', 'expired', 'stopped'].map((newStatus) => [`session:status-changed (${newStatus})`, 'session:status-changed', {
      sessionId: sess, newStatus, currentNodeId: 'node-2', currentNodeLabel: 'Wait', updatedAt: ts(),
    }]),
    ['session:status-changed (required fields only)', 'session:status-changed', { sessionId: sess, newStatus: 'running', updatedAt: ts() }],
    ['session:completed (all fields)', 'session:completed', {
      sessionId: sess, completedAt: ts(), completionReason: 'flow_end', totalNodes: 7, totalMessages: 12,
    }],
    ['session:completed (required fields only)', 'session:completed', { sessionId: sess, completedAt: ts(), totalNodes: 0, totalMessages: 0 }],
  ];
}

for (const transports of TRANSPORTS) {
  const T = transports[0];

  describe(`POST /api/v1/emit delivers to the derived room only [${T}]`, () => {
    let member; let outsider; let conv; let sess;

    before(async () => {
      conv = uid('conv'); sess = uid('sess');
      member = await connect(server, { transports, token: signJwt({ sub: uid('member') }), keep: true });
      outsider = await connect(server, { transports, token: signJwt({ sub: uid('outsider') }), keep: true });
      await joinConversation(member, conv);
      await joinSession(member, sess);
      // The outsider is in other rooms, including the *other kind* of room with the same id.
      await joinConversation(outsider, uid('conv-other'));
      await joinSession(outsider, uid('sess-other'));
      await joinSession(outsider, conv);
      await joinConversation(outsider, sess);
    });
    after(() => { member?.disconnect(); outsider?.disconnect(); });

    for (const [label, event, data0] of validCases('CONV', 'SESS')) {
      it(label, async () => {
        const data = JSON.parse(JSON.stringify(data0).replaceAll('"CONV"', JSON.stringify(conv)).replaceAll('"SESS"', JSON.stringify(sess)));
        const room = data.conversationId !== undefined ? `conversation:${conv}` : `session:${sess}`;
        const got = waitFor(member, event);
        const none = expectNone(outsider, event, 300);
        const r = await emitApi(server, { event, data });
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(withoutOffset(r.json), { room, event });
        assert.deepEqual(await got, data);
        await none;
      });
    }

    it('an explicit room delivers an event no plugin owns (custom:thing -> conversation room)', async () => {
      const data = { anything: 'goes', n: 1, nested: { ok: true } };
      const got = waitFor(member, 'custom:thing');
      const none = expectNone(outsider, 'custom:thing', 300);
      const r = await emitApi(server, { event: 'custom:thing', room: `conversation:${conv}`, data });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(withoutOffset(r.json), { room: `conversation:${conv}`, event: 'custom:thing' });
      assert.deepEqual(await got, data);
      await none;
    });

    it('an explicit room delivers to a session room', async () => {
      const data = { progress: 50 };
      const got = waitFor(member, 'custom:progress');
      const none = expectNone(outsider, 'custom:progress', 300);
      const r = await emitApi(server, { event: 'custom:progress', room: `session:${sess}`, data });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(withoutOffset(r.json), { room: `session:${sess}`, event: 'custom:progress' });
      assert.deepEqual(await got, data);
      await none;
    });

    it('a refused emit (422) delivers nothing', async () => {
      const none = expectNone(member, 'message:status', 300);
      const r = await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: 'm', status: 'seen' } });
      assert.equal(r.status, 422, r.text);
      await none;
    });

    it('an emit to a room nobody is in still answers 200', async () => {
      const c = uid('empty');
      const none = expectNone(member, 'message:status', 300);
      const r = await emitApi(server, { event: 'message:status', data: { conversationId: c, messageId: 'm', status: 'read' } });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(withoutOffset(r.json), { room: `conversation:${c}`, event: 'message:status' });
      await none;
    });
  });
}

describe('POST /api/v1/emit errors', () => {
  const good = () => ({ event: 'message:status', data: { conversationId: 'c-err', messageId: 'm', status: 'read' } });

  it('unknown event without a room -> 404 JSON', async () => {
    assertJsonError(await emitApi(server, { event: 'custom:thing', data: { a: 1 } }), 404);
  });

  it('bad JSON -> 400 JSON', async () => {
    assertJsonError(await emitApi(server, undefined, { rawBody: '{"event": "message:status", "data": {' }), 400);
  });

  it('a body that is JSON but not an object (nor a batch) -> 400 JSON', async () => {
    for (const raw of ['1', '"x"', 'null', 'true']) {
      assertJsonError(await emitApi(server, undefined, { rawBody: raw }), 400);
    }
  });

  it('a batch of things that are not emit bodies -> 200 with a 400 per item', async () => {
    const r = await emitApi(server, undefined, { rawBody: '[1,2,3]' });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.map((x) => x.status), [400, 400, 400]);
    for (const x of r.json) assert.match(x.error, /Body must be/);
  });

  it('wrong content-type (text/plain with a valid JSON body) -> 415 JSON', async () => {
    assertJsonError(await emitApi(server, good(), { contentType: 'text/plain' }), 415);
  });

  it('no content-type -> 415 JSON', async () => {
    const r = await fetch(`${server.url}/api/v1/emit`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}` },
      body: new Blob([JSON.stringify(good())]), // a Blob without a type sends no content-type
    });
    const text = await r.text();
    let json; try { json = JSON.parse(text); } catch { /* */ }
    assertJsonError({ status: r.status, json, text, headers: r.headers }, 415);
  });

  it('application/json; charset=utf-8 is accepted', async () => {
    const r = await emitApi(server, good(), { contentType: 'application/json; charset=utf-8' });
    assert.equal(r.status, 200, r.text);
  });

  it('a body over limits.max_http_body_bytes (2KiB) -> 413 JSON', async () => {
    const body = good();
    body.data.padding = 'x'.repeat(4096);
    assertJsonError(await emitApi(server, body), 413);
  });

  it('a body just under the limit is accepted', async () => {
    const body = { event: 'custom:pad', room: 'conversation:pad', data: { padding: 'x'.repeat(1500) } };
    const r = await emitApi(server, body);
    assert.equal(r.status, 200, r.text);
  });

  const missing = [
    ['message:received', { conversationId: 'c', messageId: 'm', senderId: 's', type: 'text', content: 'x', status: 'sent', timestamp: ts() },
      ['conversationId', 'messageId', 'senderId', 'type', 'status', 'timestamp']],
    ['message:status', { conversationId: 'c', messageId: 'm', status: 'read' }, ['conversationId', 'messageId', 'status']],
    ['session:message-sent', { sessionId: 's', messageId: 'm', senderId: 'u', type: 'text', content: 'x', status: 'sent', timestamp: ts() },
      ['sessionId', 'messageId', 'senderId', 'type', 'status', 'timestamp']],
    ['session:node-executed', { sessionId: 's', nodeId: 'n', nodeLabel: 'L' }, ['sessionId', 'nodeId', 'nodeLabel']],
    ['session:status-changed', { sessionId: 's', newStatus: 'running', updatedAt: ts() }, ['sessionId', 'newStatus', 'updatedAt']],
    ['session:completed', { sessionId: 's', completedAt: ts(), totalNodes: 1, totalMessages: 2 },
      ['sessionId', 'completedAt', 'totalNodes', 'totalMessages']],
  ];
  for (const [event, data, fields] of missing) {
    for (const field of fields) {
      it(`${event} without data.${field} -> 422 naming ${field}`, async () => {
        const d = { ...data };
        delete d[field];
        assertJsonError(await emitApi(server, { event, data: d }), 422, field);
      });
    }
  }

  const wrong = [
    ['message:status', { conversationId: 'c', messageId: 'm', status: 'seen' }, 'status'],
    ['message:status', { conversationId: 'c', messageId: 'm', status: 'READ' }, 'status'],
    ['message:status', { conversationId: 42, messageId: 'm', status: 'read' }, 'conversationId'],
    ['message:received', { conversationId: ['c'], messageId: 'm', senderId: 's', type: 'text', content: 'x', status: 'sent', timestamp: ts() }, 'conversationId'],
    ['session:status-changed', { sessionId: 's', newStatus: 'paused', updatedAt: ts() }, 'newStatus'],
    ['session:status-changed', { sessionId: 's', newStatus: 42, updatedAt: ts() }, 'newStatus'],
    ['session:completed', { sessionId: 's', completedAt: ts(), totalNodes: '7', totalMessages: 2 }, 'totalNodes'],
    ['session:completed', { sessionId: 's', completedAt: ts(), totalNodes: 7, totalMessages: 'many' }, 'totalMessages'],
    ['session:node-executed', { sessionId: 7, nodeId: 'n', nodeLabel: 'L' }, 'sessionId'],
    ['session:message-sent', { sessionId: 's', messageId: 'm', senderId: 'u', isFromBot: 'yes', type: 'text', content: 'x', status: 'sent', timestamp: ts() }, 'isFromBot'],
  ];
  for (const [event, data, field] of wrong) {
    it(`${event} with ${field} = ${JSON.stringify(data[field])} -> 422 naming ${field}`, async () => {
      assertJsonError(await emitApi(server, { event, data }), 422, field);
    });
  }

  it('missing "data" -> 400 or 422 JSON', async () => {
    const r = await emitApi(server, { event: 'message:status' });
    assert.ok([400, 422].includes(r.status), `status ${r.status}: ${r.text}`);
    assertJsonError(r, r.status);
  });

  it('an unknown field in the body -> 400 naming it', async () => {
    const r = await emitApi(server, {
      event: 'message:status',
      data: { conversationId: 'c', messageId: 'm', status: 'read' },
      rooms: ['conversation:c'],
    });
    assertJsonError(r, 400, 'rooms');
  });

  for (const event of ['connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener', 'error', 'user:online', 'user:offline', 'auth:expiring', 'conversation:joined', 'session:left']) {
    it(`a reserved event name (${event}) -> 422 naming the rule, even with a room`, async () => {
      const r = await emitApi(server, { event, data: { userId: 'spoof' }, room: 'conversation:x' });
      assertJsonError(r, 422, 'cannot be published');
    });
  }

  it('"data" not an object -> 400 or 422 JSON', async () => {
    const r = await emitApi(server, { event: 'message:status', data: 'read' });
    assert.ok([400, 422].includes(r.status), `status ${r.status}: ${r.text}`);
    assertJsonError(r, r.status);
  });
});

describe('API authentication', () => {
  const body = { event: 'message:status', data: { conversationId: 'c-auth', messageId: 'm', status: 'read' } };

  it('no Authorization header -> 401 JSON', async () => {
    assertJsonError(await emitApi(server, body, { key: null }), 401);
  });
  it('wrong key -> 401 JSON', async () => {
    assertJsonError(await emitApi(server, body, { key: 'wrong-key' }), 401);
  });
  it('the key without the Bearer scheme -> 401 JSON', async () => {
    assertJsonError(await emitApi(server, body, { authorization: API_KEY }), 401);
  });
  it('a key that is a prefix of the real one -> 401 JSON', async () => {
    assertJsonError(await emitApi(server, body, { key: API_KEY.slice(0, -1) }), 401);
  });
  it('a JWT is not an API key -> 401 JSON', async () => {
    assertJsonError(await emitApi(server, body, { key: signJwt({ sub: 'u' }) }), 401);
  });
  it('401 comes before body checks (bad JSON without a key)', async () => {
    assertJsonError(await emitApi(server, undefined, { key: null, rawBody: '{oops' }), 401);
  });
  it('GET /api/v1/presence without a key -> 401 JSON', async () => {
    assertJsonError(await api(server, 'GET', '/api/v1/presence', { key: null }), 401);
  });
  it('GET /api/v1/presence/{userId} with a wrong key -> 401 JSON', async () => {
    assertJsonError(await api(server, 'GET', '/api/v1/presence/someone', { key: 'nope' }), 401);
  });
  it('an unknown /api path -> 404 JSON', async () => {
    assertJsonError(await api(server, 'GET', '/api/v1/does-not-exist'), 404);
  });
  it('GET /api/v1/emit (wrong method) -> 405 JSON', async () => {
    assertJsonError(await api(server, 'GET', '/api/v1/emit'), 405);
  });
  it('a wrong method without a key -> 401, as for any /api call', async () => {
    assertJsonError(await api(server, 'GET', '/api/v1/emit', { key: null }), 401);
    assertJsonError(await api(server, 'GET', '/api/v1/emit', { key: 'nope' }), 401);
  });
  it('CORS: an allowed origin is answered on the API, on Socket.IO and on a preflight; another is not', async () => {
    const allowed = 'http://localhost:3000';
    const preflight = await fetch(`${server.url}/api/v1/emit`, {
      method: 'OPTIONS',
      headers: { origin: allowed, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,authorization' },
    });
    assert.equal(preflight.status, 200);
    assert.equal(preflight.headers.get('access-control-allow-origin'), allowed);
    assert.match(preflight.headers.get('access-control-allow-methods') ?? '', /POST/);
    assert.equal(preflight.headers.get('access-control-allow-credentials'), 'true');
    const conv = uid('conv');
    const emitted = await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: 'm', status: 'read' } }, { headers: { origin: allowed } });
    assert.equal(emitted.status, 200);
    assert.equal(emitted.headers.get('access-control-allow-origin'), allowed);
    assert.match(emitted.headers.get('vary') ?? '', /origin/i);
    const polling = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: allowed } });
    assert.equal(polling.status, 200);
    assert.equal(polling.headers.get('access-control-allow-origin'), allowed);
    const other = await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: 'm2', status: 'read' } }, { headers: { origin: 'http://evil.example' } });
    assert.equal(other.status, 200, 'CORS is the browser\'s to enforce; the server only withholds the header');
    assert.equal(other.headers.get('access-control-allow-origin'), null);
    const plain = await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: 'm3', status: 'read' } });
    assert.equal(plain.headers.get('access-control-allow-origin'), null);
    assert.match(plain.headers.get('vary') ?? '', /origin/i, 'a request without an Origin still says the answer varies by it');
  });
});

describe('presence API, health and metrics', () => {
  it('GET /api/v1/presence lists online users; /presence/{userId} counts connections', async () => {
    const sub = uid('pres-api');
    const s1 = await connect(server, { transports: ['websocket'], token: signJwt({ sub }) });
    const s2 = await connect(server, { transports: ['polling'], token: signJwt({ sub }) });
    await expectOnline(server, sub, 2);
    const all = await api(server, 'GET', '/api/v1/presence');
    assert.equal(all.status, 200, all.text);
    assert.ok(Array.isArray(all.json?.users), `users: ${all.text}`);
    assert.ok(all.json.users.includes(sub), `${sub} missing from ${all.text}`);
    assert.equal(all.json.users.filter((u) => u === sub).length, 1, 'a user is listed once');
    const one = await api(server, 'GET', `/api/v1/presence/${sub}`);
    assert.equal(one.status, 200, one.text);
    assert.deepEqual(one.json, { userId: sub, online: true, connections: 2 });
    s1.disconnect(); s2.disconnect();
    disconnectAll();
  });

  it('GET /api/v1/presence/{unknown} -> online false, connections 0', async () => {
    const who = uid('nobody');
    const r = await api(server, 'GET', `/api/v1/presence/${who}`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { userId: who, online: false, connections: 0 });
    const all = await api(server, 'GET', '/api/v1/presence');
    assert.ok(!all.json.users.includes(who));
  });

  it('GET /healthz -> 200 without a key', async () => {
    const r = await api(server, 'GET', '/healthz', { key: null });
    assert.equal(r.status, 200);
  });

  it('GET /readyz -> 200 with in-memory backends', async () => {
    const r = await api(server, 'GET', '/readyz', { key: null });
    assert.equal(r.status, 200, r.text);
  });

  it('GET /metrics is Prometheus text with switchboard_connections and per-event counters', async () => {
    const s = await connect(server, { transports: ['websocket'], token: signJwt({ sub: uid('metrics') }) });
    const conv = uid('metrics-conv');
    await joinConversation(s, conv);
    const r0 = await emitApi(server, { event: 'message:status', data: { conversationId: conv, messageId: 'm', status: 'read' } });
    assert.equal(r0.status, 200, r0.text);

    const r = await api(server, 'GET', '/metrics', { key: null });
    assert.equal(r.status, 200, r.text);
    const ct = r.headers.get('content-type') || '';
    // OpenMetrics text (`# EOF` at the end) says so in its content type.
    assert.match(ct, /^application\/openmetrics-text; version=1\.0\.0/, `content-type ${ct}`);
    assert.match(r.text, /# EOF\n?$/, 'an OpenMetrics exposition ends with # EOF');
    assert.match(r.text, /^# (TYPE|HELP) switchboard_connections/m, 'no switchboard_connections metadata');
    const conn = r.text.split('\n').filter((l) => l.startsWith('switchboard_connections'));
    assert.ok(conn.length > 0, 'no switchboard_connections sample');
    const total = conn.reduce((n, l) => n + Number(l.trim().split(/\s+/).pop()), 0);
    assert.ok(total >= 1, `switchboard_connections should count the open socket: ${conn.join(' | ')}`);
    const eventLines = r.text.split('\n').filter((l) => /^switchboard_\w*event\w*\{/.test(l));
    assert.ok(eventLines.length > 0, `no switchboard_*event* counter with labels in:\n${r.text}`);
    const named = eventLines.filter((l) => l.includes('"message:status"') || l.includes('"conversation:join"'));
    assert.ok(named.length > 0, `no event counter labelled with message:status or conversation:join:\n${eventLines.join('\n')}`);
    // every sample line is "name{labels} value" or "name value"
    for (const line of r.text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      assert.match(line, /^[a-zA-Z_:][\w:]*(\{.*\})? \S+/, `not a Prometheus sample: ${line}`);
    }
  });
});
