// A batch of emits against as many single emits: the server's CPU time per emit, read
// from /proc/<pid>/stat, for `POST /api/v1/emit` with one body at a time and with arrays
// of --batch bodies. Run against a release gateway with no sockets (the cost is the HTTP
// publish path: key check, parse, validate, route, hooks, encode, broker):
//   target/release/switchboard serve --config benches/switchboard.toml --listen 127.0.0.1:3101 &
//   node benches/api/batch.mjs --url http://127.0.0.1:3101 --pid $!
// Options: --emits 20000 --batch 100 --api-key K. Loopback only; Node 20's fetch.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:3101' },
    pid: { type: 'string' },
    emits: { type: 'string', default: '20000' },
    batch: { type: 'string', default: '100' },
    'api-key': { type: 'string', default: process.env.BENCH_API_KEY ?? 'bench-api-key' },
  },
});
if (!['127.0.0.1', 'localhost', '[::1]'].includes(new URL(opt.url).hostname)) {
  console.error(`batch: refusing a non-loopback address ${opt.url}`);
  process.exit(2);
}
if (!opt.pid) {
  console.error('batch: --pid of the server is needed to read its CPU time');
  process.exit(2);
}
const EMITS = Number(opt.emits);
const BATCH = Number(opt.batch);
const TICK = 100; // USER_HZ

function cpuSeconds() {
  const stat = readFileSync(`/proc/${opt.pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICK;
}

const body = (i) => ({
  event: 'message:status',
  data: { conversationId: `bench-${i % 100}`, messageId: `m${i}`, status: 'delivered' },
});

async function post(payload) {
  const res = await fetch(`${opt.url}/api/v1/emit`, {
    method: 'POST',
    headers: { authorization: `Bearer ${opt['api-key']}`, 'content-type': 'application/json' },
    body: JSON.stringify(payload),
  });
  const json = await res.json();
  if (res.status !== 200) throw new Error(`emit answered ${res.status}: ${JSON.stringify(json)}`);
  return json;
}

async function run(label, fn) {
  const cpu0 = cpuSeconds();
  const t0 = performance.now();
  await fn();
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds() - cpu0;
  const r = { label, emits: EMITS, server_cpu_s: +cpu.toFixed(3), server_cpu_us_per_emit: +((cpu / EMITS) * 1e6).toFixed(2), wall_s: +wall.toFixed(3), emits_per_s: Math.round(EMITS / wall) };
  console.log(JSON.stringify(r));
  return r;
}

// Warm up, then alternate so that both see the same machine.
for (let i = 0; i < 500; i++) await post(body(i));
const results = [];
for (let round = 0; round < 3; round++) {
  results.push(await run('single', async () => {
    for (let i = 0; i < EMITS; i++) await post(body(i));
  }));
  results.push(await run(`batch of ${BATCH}`, async () => {
    for (let i = 0; i < EMITS; i += BATCH) {
      const items = Array.from({ length: Math.min(BATCH, EMITS - i) }, (_, k) => body(i + k));
      const answer = await post(items);
      if (answer.some((a) => a.status !== 200)) throw new Error(`a batch item failed: ${JSON.stringify(answer.find((a) => a.status !== 200))}`);
    }
  }));
}
const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const single = median(results.filter((r) => r.label === 'single').map((r) => r.server_cpu_us_per_emit));
const batched = median(results.filter((r) => r.label !== 'single').map((r) => r.server_cpu_us_per_emit));
console.log(JSON.stringify({ summary: true, single_us_per_emit: single, batch_us_per_emit: batched, ratio: +(batched / single).toFixed(3) }));
