// Measures the gateway's resident memory per idle connection.
//
//   node tools/idle-rss.mjs [--bin ../../target/release/switchboard] [--n 2000] [--mode native|socketio] [--join]
//
// Starts the binary on a free port, opens one warm-up connection, reads VmRSS from
// /proc/<pid>/status, opens N authenticated idle connections (native `ws` clients, or
// socket.io-client over WebSocket), waits for the process to settle, reads VmRSS again and
// prints (after - before) / N. With --join every connection also joins its own
// conversation room. Linux only.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import jwt from 'jsonwebtoken';
import WebSocket from 'ws';
import { io } from 'socket.io-client';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const bin = opt('bin', new URL('../../../target/release/switchboard', import.meta.url).pathname);
const n = Number(opt('n', '2000'));
const mode = opt('mode', 'native');
const join = args.includes('--join');
const secret = 'idle-rss-secret-that-is-long-enough-32b';

const freePort = () =>
  new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

const rssKb = (pid) => {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]);
};

const port = await freePort();
const base = `127.0.0.1:${port}`;
// --wrap "heaptrack -o /tmp/profile" runs the binary under a profiler (RSS is then the wrapper's).
const wrap = (opt('wrap', '') || '').split(' ').filter(Boolean);
const child = spawn(wrap[0] ?? bin, [...wrap.slice(1), ...(wrap.length ? [bin] : []), 'serve', '--listen', base], {
  env: {
    ...process.env,
    SWITCHBOARD_AUTH__JWT__SECRET: secret,
    SWITCHBOARD_LIMITS__HANDSHAKE_TIMEOUT: '30s',
    // 0 = no limit: --same-user opens every connection as one user.
    SWITCHBOARD_LIMITS__MAX_CONNECTIONS_PER_USER: '0',
    SWITCHBOARD_LOG__LEVEL: 'warn',
  },
  stdio: ['ignore', 'inherit', 'inherit'],
});
const stop = () => child.kill('SIGTERM');
process.on('exit', stop);

for (let i = 0; ; i++) {
  try {
    const r = await fetch(`http://${base}/healthz`);
    if (r.ok) break;
  } catch {}
  if (i > 200) throw new Error('the gateway did not start');
  await sleep(50);
}

const sameUser = args.includes('--same-user');
const token = (i) => jwt.sign({ sub: sameUser ? 'user' : `user-${i}` }, secret, { algorithm: 'HS256', expiresIn: '1h' });

function openNative(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${base}/ws`);
    ws.on('error', reject);
    ws.on('open', () => ws.send(JSON.stringify({ op: 'connect', token: token(i) })));
    ws.on('message', (raw) => {
      const f = JSON.parse(raw.toString());
      if (f.op === 'connected') {
        if (!join) return resolve(ws);
        ws.send(JSON.stringify({ event: 'conversation:join', data: { conversationId: `c${i}` }, id: 1 }));
      } else if (f.ack === 1) {
        resolve(ws);
      }
    });
  });
}

function openSocketIo(i) {
  return new Promise((resolve, reject) => {
    const s = io(`http://${base}/messages`, { transports: ['websocket'], auth: { token: token(i) }, reconnection: false });
    s.on('connect_error', reject);
    s.on('connect', () => {
      if (!join) return resolve(s);
      s.emit('conversation:join', { conversationId: `c${i}` }, () => resolve(s));
    });
  });
}

const open = mode === 'socketio' ? openSocketIo : openNative;
const close = (c) => (mode === 'socketio' ? c.disconnect() : c.close());

// Warm-up: first-use allocations (thread-locals, lazy statics, timer wheel) are not per connection.
const warm = await Promise.all(Array.from({ length: 20 }, (_, i) => open(n + i)));
warm.forEach(close);
await sleep(1500);
const before = rssKb(child.pid);

const conns = [];
for (let i = 0; i < n; i += 100) {
  conns.push(...(await Promise.all(Array.from({ length: Math.min(100, n - i) }, (_, j) => open(i + j)))));
}
await sleep(2000);
const after = rssKb(child.pid);
const perConn = ((after - before) * 1024) / n;
console.log(
  `${mode}${join ? ' (in a room)' : ''}: ${n} idle connections, VmRSS ${before} kB -> ${after} kB, ` +
    `${(perConn / 1024).toFixed(2)} KiB (${Math.round(perConn)} B) per connection`,
);
if (args.includes('--kill')) {
  // For heap profiles: kill the server while every connection is still open, so the
  // profiler's "leaked" memory is exactly what the idle connections hold.
  const { readdirSync } = await import('node:fs');
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (cmd.includes('serve') && cmd.includes(base) && !cmd.some((c) => c.includes('heaptrack'))) {
        process.kill(Number(pid), 'SIGKILL');
      }
    } catch {}
  }
  await sleep(2000);
  process.exit(0);
}
conns.forEach(close);
await sleep(500);
stop();
process.exit(0);
