// The Node peer: the seed's stack (socket.io 4.8.1 + jsonwebtoken) serving the same
// CONTRACT §2–3 rows as Switchboard, written as a fair peer would write it: validation as
// the contract asks, no logging on the hot path, the library's defaults elsewhere.
//
//   BENCH_SECRET=... BENCH_API_KEY=... node server.js --port 3103 [--host 127.0.0.1]
//
// Several processes on one Redis (benches/cluster.sh), so that rooms span them:
//
//   node server.js --port 3103 --adapter redis --redis redis://127.0.0.1:6390
//   node server.js --port 3104 --adapter redis-streams --redis redis://127.0.0.1:6390
//
// `--adapter redis` is @socket.io/redis-adapter (Redis pub/sub, the usual choice);
// `redis-streams` is @socket.io/redis-streams-adapter (one Redis stream that every node
// reads, the counterpart of Switchboard with room history on); both over ioredis, all three
// pinned in package.json. `--adapter` and `--redis` may also come from BENCH_NODE_ADAPTER
// and BENCH_REDIS_URL. Without `--adapter` (or with `memory`) the process stands alone. With
// an adapter, room events and `user:online`/`user:offline` span the processes; the presence
// endpoints still answer for this process only (nothing the benchmarks read).
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');
const jwt = require('jsonwebtoken');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const PORT = Number(arg('--port', process.env.PORT || '3000'));
const HOST = arg('--host', '127.0.0.1');
const ADAPTER = arg('--adapter', process.env.BENCH_NODE_ADAPTER || 'memory');
const REDIS_URL = arg('--redis', process.env.BENCH_REDIS_URL || 'redis://127.0.0.1:6379');
const SECRET = process.env.BENCH_SECRET;
const API_KEYS = (process.env.BENCH_API_KEY || '').split(',').filter(Boolean);
const MAX_ID = 256;
const MAX_BODY = 1024 * 1024;
if (!SECRET) {
  console.error('peer-node: set BENCH_SECRET');
  process.exit(2);
}
if (!['memory', 'redis', 'redis-streams'].includes(ADAPTER)) {
  console.error(`peer-node: --adapter ${ADAPTER}: expected memory, redis or redis-streams`);
  process.exit(2);
}

const now = () => new Date().toISOString();
const isId = (v) => typeof v === 'string' && v.length > 0 && v.length <= MAX_ID;

// ---- HTTP API (CONTRACT §3) -------------------------------------------------------------

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}
const fail = (res, status, error, details = null) => send(res, status, { error, details });

// Which field of `data` routes each owned event, and the fields it must carry.
const OWNED = {
  'message:received': ['conversationId', ['messageId', 'senderId', 'type', 'status', 'timestamp']],
  'message:status': ['conversationId', ['messageId', 'status']],
  'typing:start': ['conversationId', ['userId']],
  'typing:stop': ['conversationId', ['userId']],
  'session:message-sent': ['sessionId', ['messageId', 'senderId', 'type', 'status', 'timestamp']],
  'session:node-executed': ['sessionId', ['nodeId', 'nodeLabel']],
  'session:status-changed': ['sessionId', ['newStatus', 'updatedAt']],
  'session:completed': ['sessionId', ['completedAt']],
};

function route(event, data) {
  const owner = OWNED[event];
  if (!owner) return { unknown: true };
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    return { invalid: 'data: must be an object' };
  }
  const [key, required] = owner;
  for (const f of [key, ...required]) {
    if (!isId(data[f])) return { invalid: `data.${f}: must be a non-empty string` };
  }
  const prefix = key === 'conversationId' ? 'conversation:' : 'session:';
  return { room: prefix + data[key] };
}

function authorized(req) {
  const h = req.headers.authorization || '';
  return h.startsWith('Bearer ') && API_KEYS.includes(h.slice(7).trim());
}

function readBody(req, res, done) {
  const type = (req.headers['content-type'] || '').split(';')[0].trim();
  if (type !== 'application/json') return fail(res, 415, 'Content-Type must be application/json');
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) {
      fail(res, 413, 'Body too large');
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (size > MAX_BODY) return;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      return fail(res, 400, 'Invalid JSON', String(e.message));
    }
    done(body);
  });
}

const httpServer = http.createServer((req, res) => {
  const url = req.url || '/';
  if (url === '/healthz' || url === '/readyz') return send(res, 200, { status: 'ok' });
  if (!url.startsWith('/api/')) return fail(res, 404, 'Not found');
  if (!authorized(req)) return fail(res, 401, 'Invalid API key');
  if (req.method === 'POST' && url === '/api/v1/emit') {
    return readBody(req, res, (body) => {
      if (body === null || typeof body !== 'object' || typeof body.event !== 'string') {
        return fail(res, 422, 'event: must be a string');
      }
      const { event, data, room } = body;
      let target = room;
      if (target === undefined || target === null) {
        const r = route(event, data);
        if (r.unknown) return fail(res, 404, `Unknown event: ${event}; give a "room"`);
        if (r.invalid) return fail(res, 422, r.invalid);
        target = r.room;
      } else if (!isId(target)) {
        return fail(res, 422, 'room: must be a non-empty string');
      }
      messages.to(target).emit(event, data);
      send(res, 200, { room: target, event });
    });
  }
  if (req.method === 'GET' && url === '/api/v1/presence') {
    return send(res, 200, { users: [...online.keys()] });
  }
  if (req.method === 'GET' && url.startsWith('/api/v1/presence/')) {
    const userId = decodeURIComponent(url.slice('/api/v1/presence/'.length));
    const n = online.get(userId) || 0;
    return send(res, 200, { userId, online: n > 0, connections: n });
  }
  return fail(res, 404, 'Not found');
});

// ---- Socket.IO (CONTRACT §2) ------------------------------------------------------------

const io = new Server(httpServer, {
  cors: { origin: ['http://localhost:3000'], credentials: true },
});
const messages = io.of('/messages');
const online = new Map(); // userId -> open connections

messages.use((socket, next) => {
  const a = socket.handshake.auth || {};
  let token = a.token;
  if (token === undefined || token === null || token === '') {
    const h = socket.handshake.headers.authorization || '';
    token = h.startsWith('Bearer ') ? h.slice(7) : '';
  }
  if (!token) return next(new Error('Authentication failed: No token provided'));
  if (typeof token !== 'string') return next(new Error('Authentication failed: Invalid token'));
  jwt.verify(token, SECRET, { algorithms: ['HS256'], clockTolerance: 60 }, (err, claims) => {
    if (err || !claims || typeof claims.sub !== 'string' || claims.sub === '') {
      return next(new Error('Authentication failed: Invalid token'));
    }
    socket.data.userId = claims.sub;
    socket.data.email = claims.email;
    socket.data.role = claims.role;
    next();
  });
});

function refuse(socket, ack, message) {
  socket.emit('error', { message, timestamp: now() });
  if (typeof ack === 'function') ack({ success: false, error: message });
}

function roomHandler(socket, key, prefix, joining) {
  const reply = `${prefix}:${joining ? 'joined' : 'left'}`;
  return (payload, ack) => {
    if (typeof payload === 'function') [payload, ack] = [undefined, payload];
    const id = payload && payload[key];
    if (!isId(id)) return refuse(socket, ack, `Invalid payload: ${key} must be a non-empty string`);
    if (joining) socket.join(`${prefix}:${id}`);
    else socket.leave(`${prefix}:${id}`);
    const out = { [key]: id, success: true };
    socket.emit(reply, out);
    if (typeof ack === 'function') ack(out);
  };
}

function typingHandler(socket, event, isTyping) {
  return (payload, ack) => {
    if (typeof payload === 'function') [payload, ack] = [undefined, payload];
    const id = payload && payload.conversationId;
    if (!isId(id)) return refuse(socket, ack, 'Invalid payload: conversationId must be a non-empty string');
    const room = `conversation:${id}`;
    if (!socket.rooms.has(room)) return refuse(socket, ack, `Join ${room} before sending ${event}`);
    socket.to(room).emit(event, { conversationId: id, userId: socket.data.userId, isTyping });
    if (typeof ack === 'function') ack({ success: true });
  };
}

const KNOWN = new Set([
  'conversation:join', 'conversation:leave', 'session:join', 'session:leave',
  'typing:start', 'typing:stop',
]);

messages.on('connection', (socket) => {
  const user = socket.data.userId;
  const n = (online.get(user) || 0) + 1;
  online.set(user, n);
  if (n === 1) socket.broadcast.emit('user:online', { userId: user });

  socket.on('conversation:join', roomHandler(socket, 'conversationId', 'conversation', true));
  socket.on('conversation:leave', roomHandler(socket, 'conversationId', 'conversation', false));
  socket.on('session:join', roomHandler(socket, 'sessionId', 'session', true));
  socket.on('session:leave', roomHandler(socket, 'sessionId', 'session', false));
  socket.on('typing:start', typingHandler(socket, 'typing:start', true));
  socket.on('typing:stop', typingHandler(socket, 'typing:stop', false));
  socket.onAny((event, ...args) => {
    if (KNOWN.has(event)) return;
    const ack = args.find((a) => typeof a === 'function');
    refuse(socket, ack, `Unknown event: ${event}`);
  });

  socket.on('disconnect', () => {
    const left = (online.get(user) || 1) - 1;
    if (left > 0) {
      online.set(user, left);
    } else {
      online.delete(user);
      messages.emit('user:offline', { userId: user });
    }
  });
});

// ---- Several processes on one Redis ------------------------------------------------------

const redisClients = [];

async function redisClient() {
  // Required only here, so that a standalone peer needs none of it.
  const Redis = require('ioredis');
  const client = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 3 });
  client.on('error', (e) => console.error(`peer-node: redis: ${e.message}`));
  await client.connect();
  redisClients.push(client);
  return client;
}

async function useAdapter() {
  if (ADAPTER === 'redis') {
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = await redisClient();
    const sub = await redisClient();
    io.adapter(createAdapter(pub, sub));
    // The adapter subscribes (PSUBSCRIBE) without telling when Redis has it; a PING on the
    // same connection is answered after it, so listening after the PONG means no event
    // published later is missed.
    await sub.ping();
  } else if (ADAPTER === 'redis-streams') {
    const { createAdapter } = require('@socket.io/redis-streams-adapter');
    const client = await redisClient();
    io.adapter(createAdapter(client));
    // The stream is read from `$` (what is added from now on) by a duplicate connection
    // blocked in XREAD; give it a moment to be in place before accepting clients.
    await new Promise((r) => setTimeout(r, 200));
  }
}

useAdapter().then(
  () => httpServer.listen(PORT, HOST),
  (e) => {
    console.error(`peer-node: cannot use the ${ADAPTER} adapter at ${REDIS_URL}: ${e.message}`);
    process.exit(1);
  },
);
const stop = () => {
  io.close();
  for (const c of redisClients) c.disconnect();
  httpServer.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
