// A private redis-server for the cluster tests: its own free loopback port, nothing saved
// to disk (`--save "" --appendonly no`), so stop() + start() is a Redis that restarted empty.
//
// Also the Redis Cluster a test run shares (sharedCluster, below).
//
// Environment:
//   REDIS_SERVER                     the redis-server binary (default: redis-server on PATH)
//   SB_REDIS_CLUSTER   the shared cluster's nodes, host:port,… (else one is started)

import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { REPO_ROOT, freePort, sleep, tempDir } from './helpers.mjs';

const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
});

function accepts(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/**
 * Start redis-server on a free port. Returns { url, port, start(), stop() }: stop() kills it
 * (like a crash), start() starts it again, empty, on the same port.
 */
export async function startRedis() {
  const port = await freePort();
  const dir = tempDir();
  const bin = process.env.REDIS_SERVER || 'redis-server';
  let proc;

  const redis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start(timeout = 10000) {
      const deadline = Date.now() + timeout;
      for (;;) {
        proc = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
          stdio: 'ignore',
        });
        live.add(proc);
        let exited = false;
        proc.once('exit', () => { exited = true; live.delete(proc); });
        proc.once('error', (err) => { exited = true; live.delete(proc); redis.error = err; });
        while (!exited && Date.now() < deadline) {
          if (await accepts(port)) return redis;
          await sleep(20);
        }
        if (redis.error) throw new Error(`cannot start ${bin}: ${redis.error.message}`);
        if (Date.now() >= deadline) throw new Error(`redis-server did not start on port ${port}`);
        await sleep(100); // the port may still be held by the previous process: try again
      }
    },
    async stop() {
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
      while (await accepts(port)) await sleep(20);
    },
  };
  return redis.start();
}

function encode(args) {
  let out = `*${args.length}\r\n`;
  for (const a of args) {
    const s = String(a);
    out += `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
  }
  return out;
}

/** Parses one RESP2 reply from `buf` at `i`: [value, next index], or undefined if incomplete. */
function parse(buf, i = 0) {
  const eol = buf.indexOf('\r\n', i);
  if (eol < 0) return undefined;
  const type = buf[i];
  const line = buf.slice(i + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+': return [line, next];
    case '-': return [new Error(line), next];
    case ':': return [Number(line), next];
    case '$': {
      const n = Number(line);
      if (n < 0) return [null, next];
      if (buf.length < next + n + 2) return undefined;
      return [buf.slice(next, next + n), next + n + 2];
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return [null, next];
      const items = [];
      let j = next;
      for (let k = 0; k < n; k += 1) {
        const r = parse(buf, j);
        if (!r) return undefined;
        items.push(r[0]);
        j = r[1];
      }
      return [items, j];
    }
    default: throw new Error(`unexpected RESP reply: ${buf}`);
  }
}

/** Runs one command against the Redis on `port` (127.0.0.1) and resolves with its reply. */
export function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    s.setEncoding('utf8');
    s.once('error', reject);
    s.on('data', (d) => {
      buf += d;
      const r = parse(buf);
      if (!r) return;
      s.destroy();
      if (r[0] instanceof Error) reject(r[0]);
      else resolve(r[0]);
    });
    s.once('connect', () => s.write(encode(args)));
  });
}

let clusterPromise;

/**
 * The Redis Cluster of this test run (three masters, three replicas): the one
 * SB_REDIS_CLUSTER names (scripts/test.sh starts it once for every suite),
 * else one started for this process with the testkit's `redis-cluster` binary (built by
 * `cargo build --workspace --bins`). Tests share it, each under a key prefix of its own,
 * and never stop it. Returns { url, ports }.
 */
export function sharedCluster() {
  clusterPromise ??= (async () => {
    let list = process.env.SB_REDIS_CLUSTER;
    if (!list) {
      const bin = path.join(REPO_ROOT, 'target', 'debug', 'redis-cluster');
      const proc = spawn(bin, [], { stdio: ['pipe', 'pipe', 'inherit'] });
      live.add(proc);
      proc.stdout.setEncoding('utf8');
      list = await new Promise((resolve, reject) => {
        let out = '';
        proc.once('error', (e) => reject(new Error(`cannot start ${bin}: ${e.message}`)));
        proc.once('exit', (code) => reject(new Error(`${bin} exited with ${code}`)));
        proc.stdout.on('data', (d) => {
          out += d;
          const line = out.split('\n').find((l) => l.startsWith('SB_REDIS_CLUSTER='));
          if (line) resolve(line.split('=')[1].trim());
        });
      });
      // The cluster lives while this process does (its input stays open); it does not
      // keep the process alive once the tests are done.
      proc.stdout.destroy();
      proc.stdin.unref();
      proc.unref();
    }
    const addrs = list.split(',').map((a) => a.trim()).filter(Boolean);
    const ports = addrs.map((a) => Number(a.split(':').pop()));
    const [first, ...rest] = addrs;
    const url = `redis-cluster://${first}?${rest.map((a) => `node=${a}`).join('&')}`;
    return { url, ports, async stop() { /* shared: stays up for the run */ } };
  })();
  return clusterPromise;
}
