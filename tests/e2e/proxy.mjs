// A tiny TCP forwarder for the recovery tests: clients connect to it instead of a node, so
// a test can hold a client offline for as long as it wants (new connections are refused
// while held) and send its reconnection to another node, as a load balancer would.

import net from 'node:net';

/**
 * Listen on a free loopback port and forward every connection to `targetPort`.
 * Returns { port, url, hold(), release(), retarget(port), cut(), close() }.
 */
export function startProxy(targetPort) {
  let target = targetPort;
  let held = false;
  const pairs = new Set();
  const server = net.createServer((client) => {
    if (held) {
      client.destroy();
      return;
    }
    const upstream = net.connect({ host: '127.0.0.1', port: target });
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({
        port,
        url: `http://127.0.0.1:${port}`,
        /** Refuse new connections (open ones carry on) until release(). */
        hold() { held = true; },
        /** Accept connections again. */
        release() { held = false; },
        /** Send new connections to `port`; open ones are cut (a balancer that moved). */
        retarget(port) {
          target = port;
          this.cut();
        },
        /** Cut every open connection, as a network failure would. */
        cut() {
          for (const { client, upstream } of pairs) {
            client.destroy();
            upstream.destroy();
          }
          pairs.clear();
        },
        close() {
          this.cut();
          return new Promise((r) => server.close(() => r()));
        },
      });
    });
  });
}
