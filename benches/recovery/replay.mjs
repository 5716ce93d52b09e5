// The replay benchmark: many unchanged socket.io-client sockets, each having missed the
// same events, reconnect at once and recover. Measures how long until every socket is
// recovered and has every missed event (exactly once, in order), from the moment they
// all start reconnecting.
//
// Run against a gateway with recovery on (benches/recovery.toml):
//   target/release/switchboard serve --config benches/recovery.toml --listen 127.0.0.1:3101 &
//   (cd benches/recovery && npm ci && node replay.mjs --url http://127.0.0.1:3101)
// Options: --sockets 100 --missed 500 --rounds 3 --secret S --api-key K
// Prints one JSON line per round, then a summary line; exits 1 on any loss or repeat.
//
// The sockets connect through a TCP proxy in this process, which cuts every connection and
// refuses new ones while the events are published, as a network failure would; then the
// sockets reconnect (socket.connect(), with the client's own pid and offset). Loopback only.

import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import jwt from 'jsonwebtoken';
import { io } from 'socket.io-client';
import { startProxy } from '../../tests/e2e/proxy.mjs';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:3101' },
    sockets: { type: 'string', default: '100' },
    missed: { type: 'string', default: '500' },
    rounds: { type: 'string', default: '3' },
    secret: { type: 'string', default: process.env.BENCH_SECRET ?? 'switchboard-bench-secret-0123456789abcdef' },
    'api-key': { type: 'string', default: process.env.BENCH_API_KEY ?? 'bench-api-key' },
    namespace: { type: 'string', default: '/messages' },
  },
});
const target = new URL(opt.url);
if (!['127.0.0.1', 'localhost', '[::1]'].includes(target.hostname)) {
  console.error(`replay: refusing a non-loopback address ${opt.url}`);
  process.exit(2);
}
const SOCKETS = Number(opt.sockets);
const MISSED = Number(opt.missed);
const ROUNDS = Number(opt.rounds);
const DEADLINE_MS = 60_000;

function state() {
  const got = clients.map((c) => c.got.length);
  return `connected ${clients.filter((c) => c.socket.connected).length}, recovered ${clients.filter((c) => c.recoveredAt !== null).length}, events per socket ${Math.min(...got)}..${Math.max(...got)}`;
}

function until(what, cond, ms = DEADLINE_MS) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() - start > ms) return reject(new Error(`replay: timed out waiting for ${what} (${state()})`));
      setTimeout(tick, 5);
    };
    tick();
  });
}

async function emit(data) {
  const res = await fetch(`${opt.url}/api/v1/emit`, {
    method: 'POST',
    headers: { authorization: `Bearer ${opt['api-key']}`, 'content-type': 'application/json' },
    body: JSON.stringify({ event: 'message:status', data }),
  });
  if (res.status !== 200) throw new Error(`replay: emit answered ${res.status}: ${await res.text()}`);
}

const proxy = await startProxy(Number(target.port));
const conversation = `replay-${process.pid}-${Date.now()}`;
const clients = [];
for (let i = 0; i < SOCKETS; i++) {
  const token = jwt.sign({ sub: `u${i}`, exp: Math.floor(Date.now() / 1000) + 3600 }, opt.secret);
  const socket = io(`${proxy.url}${opt.namespace}`, {
    auth: { token },
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
  });
  const c = { socket, got: [], recoveredAt: null };
  socket.on('message:status', (m) => c.got.push(m.messageId));
  socket.on('connect', () => {
    if (socket.recovered) c.recoveredAt = performance.now();
  });
  clients.push(c);
}
await until('every socket to connect', () => clients.every((c) => c.socket.connected));
await Promise.all(clients.map((c) => c.socket.timeout(10_000).emitWithAck('conversation:join', { conversationId: conversation })));
// One live event, so that every socket has an offset to recover from.
await emit({ conversationId: conversation, messageId: 'live-0', status: 'sent' });
await until('the first live event', () => clients.every((c) => c.got.length === 1));

const results = [];
let failed = false;
for (let round = 0; round < ROUNDS; round++) {
  for (const c of clients) {
    c.got = [];
    c.recoveredAt = null;
  }
  proxy.hold();
  proxy.cut();
  await until('every socket to see the drop', () => clients.every((c) => !c.socket.connected));
  const ids = [];
  for (let k = 0; k < MISSED; k++) {
    const id = `r${round}-${k}`;
    ids.push(id);
    await emit({ conversationId: conversation, messageId: id, status: 'delivered' });
  }
  proxy.release();
  const t0 = performance.now();
  for (const c of clients) c.socket.connect();
  await until('every socket to recover every missed event', () =>
    clients.every((c) => c.recoveredAt !== null && c.got.length >= MISSED) || clients.some((c) => c.socket.connected && !c.socket.recovered),
  );
  const t1 = performance.now();
  const notRecovered = clients.filter((c) => !c.socket.recovered).length;
  const wrong = clients.filter((c) => c.got.length !== MISSED || c.got.some((id, k) => id !== ids[k])).length;
  const perSocket = clients
    .map((c) => c.recoveredAt - t0)
    .sort((a, b) => a - b);
  const r = {
    round,
    sockets: SOCKETS,
    missed: MISSED,
    replayed: clients.reduce((n, c) => n + c.got.length, 0),
    not_recovered: notRecovered,
    lost_or_repeated: wrong,
    all_recovered_ms: Math.round(t1 - t0),
    connected_p50_ms: Math.round(perSocket[Math.floor(SOCKETS / 2)]),
  };
  results.push(r);
  console.log(JSON.stringify(r));
  if (notRecovered || wrong) failed = true;
}
const worst = Math.max(...results.map((r) => r.all_recovered_ms));
console.log(JSON.stringify({ summary: true, rounds: ROUNDS, worst_all_recovered_ms: worst, ok: !failed }));
for (const c of clients) c.socket.close();
await proxy.close();
process.exit(failed ? 1 : 0);
