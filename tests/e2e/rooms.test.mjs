// Room membership has one owner: a socket's burst of joins and leaves, sent without waiting,
// applies in order and counts once, and once every member left or disconnected, no node
// keeps the room's subscription in Redis (PUBSUB CHANNELS / PUBSUB SHARDCHANNELS) — on one
// redis-server with plain and sharded pub/sub, and on the run's shared Redis Cluster, whose
// every node is asked.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  configToml, startServer, signJwt, connect, emitAck, api, emitApi, joinConversation,
  receivedOf, eventually, uid, standardHooks, waitFor,
} from './helpers.mjs';
import { startRedis, redisCommand, sharedCluster } from './redis.mjs';

function nodeToml(redis, prefix, sharded) {
  return configToml({
    limits: 'events_per_second = 1000\nburst = 1000',
    extra: [
      '[broker]',
      'plugin = "redis"',
      '',
      '[redis]',
      `url = "${redis.url}"`,
      `key_prefix = "${prefix}"`,
      ...(redis.ports ? [] : [`sharded_pubsub = ${sharded}`]),
      '',
    ].join('\n'),
  });
}

/** Every port of `redis` (one server, or each node of a cluster). */
const portsOf = (redis) => redis.ports ?? [redis.port];

async function roomChannels(redis, prefix, sharded) {
  const all = [];
  for (const port of portsOf(redis)) {
    all.push(...await redisCommand(port, 'PUBSUB', sharded ? 'SHARDCHANNELS' : 'CHANNELS', `${prefix}room:*`));
  }
  return all;
}

/** Subscribers of `channel`, summed over every node. */
async function numsub(redis, sharded, channel) {
  let n = 0;
  for (const port of portsOf(redis)) {
    const r = await redisCommand(port, 'PUBSUB', sharded ? 'SHARDNUMSUB' : 'NUMSUB', channel);
    n += Number(r[1]);
  }
  return n;
}

const SETUPS = [
  { name: 'plain pub/sub', sharded: false, start: startRedis },
  { name: 'sharded pub/sub', sharded: true, start: startRedis },
  { name: 'a Redis Cluster', sharded: true, start: sharedCluster },
];

for (const { name, sharded, start } of SETUPS) {
  describe(`room subscriptions on Redis (${name})`, () => {
    let redis;
    let a;
    let b;
    const prefix = `${uid('sb')}:`;

    before(async () => {
      redis = await start();
      a = await startServer({ toml: nodeToml(redis, prefix, sharded) });
      b = await startServer({ toml: nodeToml(redis, prefix, sharded) });
      for (const s of [a, b]) {
        await eventually(async () => (await api(s, 'GET', '/readyz')).status === 200, 10000);
      }
    });
    after(async () => {
      await a?.stop();
      await b?.stop();
      await redis?.stop();
    });
    standardHooks(() => [a, b]);

    it('20 joins then a leave, sent without waiting, then a disconnect leave no subscription', async () => {
      for (const transports of [['websocket'], ['polling']]) {
        const conv = uid('c');
        const s = await connect(a, { token: signJwt({ sub: uid('u') }), transports });
        for (let i = 0; i < 20; i += 1) s.emit('conversation:join', { conversationId: conv });
        s.emit('conversation:leave', { conversationId: conv });
        const left = await waitFor(s, 'conversation:left');
        assert.deepEqual(left, { conversationId: conv, success: true });
        await eventually(() => receivedOf(s, 'conversation:joined').length === 20);
        // The leave was sent last, so it applied last: the socket is not in the room.
        const r = await emitApi(a, { event: 'message:status', data: { conversationId: conv, messageId: 'm1', status: 'read' } });
        assert.equal(r.status, 200, r.text);
        s.disconnect();
        await eventually(async () => !(await roomChannels(redis, prefix, sharded)).includes(`${prefix}room:conversation:${conv}`), 5000);
        assert.equal(receivedOf(s, 'message:status').length, 0, 'nothing of the room after the leave');
      }
    });

    it('sockets on two nodes join, leave and drop concurrently: exact delivery, then nothing subscribed', async () => {
      const conv = uid('c');
      const sockets = [];
      for (const node of [a, b]) {
        for (let i = 0; i < 5; i += 1) {
          sockets.push(await connect(node, { token: signJwt({ sub: uid('m') }) }));
        }
      }
      // Everyone joins three times at once.
      await Promise.all(sockets.flatMap((s) => [1, 2, 3].map(() => emitAck(s, 'conversation:join', { conversationId: conv }))));
      const r = await emitApi(b, { event: 'message:status', data: { conversationId: conv, messageId: 'm1', status: 'read' } });
      assert.equal(r.status, 200, r.text);
      await eventually(() => sockets.every((s) => receivedOf(s, 'message:status').length === 1), 5000);
      assert.ok((await roomChannels(redis, prefix, sharded)).includes(`${prefix}room:conversation:${conv}`));
      // Half leave, half just drop, at once.
      await Promise.all(sockets.map(async (s, i) => {
        if (i % 2 === 0) await emitAck(s, 'conversation:leave', { conversationId: conv });
        s.disconnect();
      }));
      await eventually(async () => (await roomChannels(redis, prefix, sharded)).length === 0, 5000);
      assert.deepEqual(sockets.map((s) => receivedOf(s, 'message:status').length), sockets.map(() => 1), 'exactly once each');
    });

    it('a socket still in the room keeps its node subscribed while others leave', async () => {
      const conv = uid('c');
      const stay = await connect(b, { token: signJwt({ sub: uid('stay') }) });
      await joinConversation(stay, conv);
      const go = await connect(a, { token: signJwt({ sub: uid('go') }) });
      await joinConversation(go, conv);
      await emitAck(go, 'conversation:leave', { conversationId: conv });
      go.disconnect();
      const r = await emitApi(a, { event: 'message:status', data: { conversationId: conv, messageId: 'm2', status: 'read' } });
      assert.equal(r.status, 200, r.text);
      await eventually(() => receivedOf(stay, 'message:status').length === 1, 5000);
      // Node a's socket is gone (its unsubscribe follows its disconnect); node b's stays.
      await eventually(async () => {
        assert.deepEqual(await roomChannels(redis, prefix, sharded), [`${prefix}room:conversation:${conv}`]);
        return true;
      }, 5000);
      assert.equal(await numsub(redis, sharded, `${prefix}room:conversation:${conv}`), 1, 'one node subscribed');
    });
  });
}
