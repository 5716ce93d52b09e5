// Several real switchboard nodes sharing one Redis (presence.plugin = broker.plugin = "redis"):
// rooms and presence span nodes, a killed node's users go offline within the TTL, and a
// Redis restart is survived by connected clients. The multi-node suites run twice: on one
// redis-server, and on the run's shared Redis Cluster (three masters, three replicas,
// `redis-cluster://`, sharded pub/sub).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  configToml, startServer, signJwt, connect, waitFor, expectNone, api, emitApi,
  joinConversation, receivedOf, eventually, uid, standardHooks, sleep, presenceOf,
  withoutOffset, assertJsonError,
} from './helpers.mjs';
import { startRedis, sharedCluster } from './redis.mjs';

/** Where the nodes keep their state: one server, or a Redis Cluster. */
const BACKENDS = [
  { name: 'one Redis', start: startRedis },
  { name: 'a Redis Cluster', start: sharedCluster },
];

const NODE_TTL_MS = 2000;

function clusterToml(redis, prefix) {
  return configToml({
    extra: [
      '[presence]',
      'plugin = "redis"',
      `node_ttl = "${NODE_TTL_MS}ms"`,
      '',
      '[broker]',
      'plugin = "redis"',
      '',
      '[redis]',
      `url = "${redis.url}"`,
      `key_prefix = "${prefix}"`,
      '',
    ].join('\n'),
  });
}

async function readyz(server) {
  const r = await api(server, 'GET', '/readyz');
  return r.status;
}

async function startCluster(redis, n) {
  const prefix = `${uid('sb')}:`;
  const nodes = [];
  for (let i = 0; i < n; i += 1) nodes.push(await startServer({ toml: clusterToml(redis, prefix) }));
  for (const s of nodes) await eventually(async () => (await readyz(s)) === 200, 10000);
  return nodes;
}

const forUser = (userId) => (d) => d && d.userId === userId;

function status(conversationId, messageId) {
  return { event: 'message:status', data: { conversationId, messageId, status: 'read' } };
}

/** Waits until `socket` has `n` `event`s, then a little longer, and returns them all. */
async function collect(socket, event, n, ms = 10000) {
  await eventually(() => receivedOf(socket, event).length >= n, ms);
  await sleep(300);
  return receivedOf(socket, event);
}

for (const backend of BACKENDS) describe(`two nodes on ${backend.name}`, () => {
  let redis;
  let a;
  let b;

  before(async () => {
    redis = await backend.start();
    [a, b] = await startCluster(redis, 2);
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await redis?.stop();
  });
  standardHooks(() => [a, b]);

  it('an API publish on either node reaches the room on both nodes, exactly once', async () => {
    const conv = uid('c');
    const sa = await connect(a, { token: signJwt({ sub: uid('alice') }) });
    const sb = await connect(b, { token: signJwt({ sub: uid('bob') }) });
    const outsider = await connect(b, { token: signJwt({ sub: uid('eve') }) });
    await joinConversation(sa, conv);
    await joinConversation(sb, conv);

    assert.equal((await emitApi(a, status(conv, 'm1'))).status, 200);
    assert.equal((await emitApi(b, status(conv, 'm2'))).status, 200);
    const want = [
      { conversationId: conv, messageId: 'm1', status: 'read' },
      { conversationId: conv, messageId: 'm2', status: 'read' },
    ];
    assert.deepEqual(await collect(sa, 'message:status', 2), want);
    assert.deepEqual(await collect(sb, 'message:status', 2), want);
    assert.deepEqual(receivedOf(outsider, 'message:status'), [], 'not a member: nothing');
  });

  it('a join is effective on the other node as soon as its reply arrives', async () => {
    const sa = await connect(a, { token: signJwt({ sub: uid('alice') }) });
    for (let i = 0; i < 10; i += 1) {
      const conv = uid('j');
      await joinConversation(sa, conv);
      const got = waitFor(sa, 'message:status', 5000, (d) => d.conversationId === conv);
      assert.equal((await emitApi(b, status(conv, `m${i}`))).status, 200);
      assert.deepEqual(await got, { conversationId: conv, messageId: `m${i}`, status: 'read' });
    }
  });

  it('typing crosses nodes and skips the sender', async () => {
    const conv = uid('c');
    const alice = uid('alice');
    const sa = await connect(a, { token: signJwt({ sub: alice }) });
    const sa2 = await connect(b, { token: signJwt({ sub: alice }) });
    const bob = uid('bob');
    const sb = await connect(b, { token: signJwt({ sub: bob }) });
    for (const s of [sa, sa2, sb]) await joinConversation(s, conv);

    const notToSender = expectNone(sa, 'typing:start', 800);
    const atBob = waitFor(sb, 'typing:start');
    const atAlicesOtherSocket = waitFor(sa2, 'typing:start');
    sa.emit('typing:start', { conversationId: conv });
    const want = { conversationId: conv, userId: alice, isTyping: true };
    assert.deepEqual(await atBob, want);
    assert.deepEqual(await atAlicesOtherSocket, want);
    await notToSender;

    const stopAtAlice = waitFor(sa, 'typing:stop');
    sb.emit('typing:stop', { conversationId: conv });
    assert.deepEqual(await stopAtAlice, { conversationId: conv, userId: bob, isTyping: false });
  });

  it('presence spans nodes: online on the first connection anywhere, offline on the last', async () => {
    const carol = uid('carol');
    const watcher = await connect(a, { token: signJwt({ sub: uid('watch') }) });
    const watcherB = await connect(b, { token: signJwt({ sub: uid('watch') }) });
    const token = signJwt({ sub: carol });

    const online = waitFor(watcher, 'user:online', 5000, forUser(carol));
    const c1 = await connect(b, { token, keep: true });
    assert.deepEqual(await online, { userId: carol });

    const noSecond = expectNone(watcher, 'user:online', 600, forUser(carol));
    const c2 = await connect(a, { token, keep: true });
    await noSecond;
    for (const s of [a, b]) {
      await eventually(async () => {
        assert.deepEqual(await presenceOf(s, carol), { userId: carol, online: true, connections: 2 });
      }, 5000);
      const list = await api(s, 'GET', '/api/v1/presence');
      assert.ok(list.json.users.includes(carol), `users on ${s.url}: ${list.text}`);
    }

    const noOffline = expectNone(watcher, 'user:offline', 600, forUser(carol));
    c1.disconnect();
    await noOffline;
    const offline = waitFor(watcher, 'user:offline', 5000, forUser(carol));
    const offlineB = waitFor(watcherB, 'user:offline', 5000, forUser(carol));
    c2.disconnect();
    assert.deepEqual(await offline, { userId: carol });
    assert.deepEqual(await offlineB, { userId: carol });
    await sleep(300);
    assert.equal(receivedOf(watcher, 'user:online').filter(forUser(carol)).length, 1, 'one user:online');
    assert.equal(receivedOf(watcher, 'user:offline').filter(forUser(carol)).length, 1, 'one user:offline');
    for (const s of [a, b]) {
      assert.deepEqual(await presenceOf(s, carol), { userId: carol, online: false, connections: 0 });
    }
  });

  it('concurrent publishers on different nodes: one order per room, everywhere, no duplicates', async () => {
    const conv = uid('order');
    const sa = await connect(a, { token: signJwt({ sub: uid('alice') }) });
    const sb = await connect(b, { token: signJwt({ sub: uid('bob') }) });
    await joinConversation(sa, conv);
    await joinConversation(sb, conv);
    const N = 60;
    const publisher = async (node, tag) => {
      for (let i = 0; i < N; i += 1) {
        const r = await emitApi(node, status(conv, `${tag}-${i}`));
        assert.equal(r.status, 200, r.text);
      }
    };
    await Promise.all([publisher(a, 'a'), publisher(b, 'b'), publisher(a, 'a2'), publisher(b, 'b2')]);
    const atA = (await collect(sa, 'message:status', 4 * N)).map((d) => d.messageId);
    const atB = (await collect(sb, 'message:status', 4 * N)).map((d) => d.messageId);
    assert.equal(atA.length, 4 * N, 'exactly once on node a');
    assert.equal(new Set(atA).size, 4 * N, 'no duplicates');
    assert.deepEqual(atA, atB, 'both nodes deliver the room in the same order');
    for (const tag of ['a', 'b', 'a2', 'b2']) {
      const seq = atA.filter((id) => id.startsWith(`${tag}-`)).map((id) => Number(id.slice(tag.length + 1)));
      assert.deepEqual(seq, [...Array(N).keys()], `publisher ${tag}'s order is kept`);
    }
  });
});

for (const backend of BACKENDS) describe(`three nodes on ${backend.name}: a killed node`, () => {
  let redis;
  let nodes = [];

  before(async () => {
    redis = await backend.start();
    nodes = await startCluster(redis, 3);
  });
  after(async () => {
    for (const n of nodes) await n.stop();
    await redis?.stop();
  });
  standardHooks(() => nodes);

  it('kill -9 of a node: its users go offline everywhere within the TTL, once', async () => {
    const [a, b, c] = nodes;
    const dave = uid('dave'); // only on c
    const erin = uid('erin'); // on c and b
    const watchA = await connect(a, { token: signJwt({ sub: uid('watch') }) });
    const watchB = await connect(b, { token: signJwt({ sub: uid('watch') }) });
    await connect(c, { token: signJwt({ sub: dave }), keep: true });
    await connect(c, { token: signJwt({ sub: erin }), keep: true });
    const erinOnB = await connect(b, { token: signJwt({ sub: erin }) });
    await eventually(async () => (await presenceOf(a, erin)).connections === 2, 5000);

    const offA = waitFor(watchA, 'user:offline', 4 * NODE_TTL_MS, forUser(dave));
    const offB = waitFor(watchB, 'user:offline', 4 * NODE_TTL_MS, forUser(dave));
    const killedAt = Date.now();
    await c.stop('SIGKILL');
    assert.deepEqual(await offA, { userId: dave });
    assert.deepEqual(await offB, { userId: dave });
    const took = Date.now() - killedAt;
    assert.ok(took < 2 * NODE_TTL_MS, `user:offline after ${took} ms (node_ttl ${NODE_TTL_MS} ms)`);

    await sleep(NODE_TTL_MS);
    assert.equal(receivedOf(watchA, 'user:offline').filter(forUser(dave)).length, 1, 'reported once');
    assert.equal(receivedOf(watchA, 'user:offline').filter(forUser(erin)).length, 0, 'erin is still on b');
    assert.deepEqual(await presenceOf(a, dave), { userId: dave, online: false, connections: 0 });
    assert.deepEqual(await presenceOf(a, erin), { userId: erin, online: true, connections: 1 });
    assert.ok(erinOnB.connected);
  });
});

describe('a Redis restart while clients stay connected', () => {
  let redis;
  let a;
  let b;

  before(async () => {
    redis = await startRedis();
    [a, b] = await startCluster(redis, 2);
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await redis?.stop();
  });
  standardHooks(() => [a, b]);

  it('readyz turns 503 then 200, local delivery continues until a node could be counted out, then is refused, cross-node delivery resumes, presence is re-registered, a user first seen during the outage is announced', async () => {
    const conv = uid('c');
    const alice = uid('alice');
    const bob = uid('bob');
    const sa = await connect(a, { token: signJwt({ sub: alice }) });
    const sb = await connect(b, { token: signJwt({ sub: bob }) });
    await joinConversation(sa, conv);
    await joinConversation(sb, conv);
    const markA = a.mark();

    await redis.stop();
    for (const s of [a, b]) await eventually(async () => (await readyz(s)) === 503, 10000);

    // A keeps delivering to its own clients, telling the publisher so, until B could have
    // counted it out; from then on it refuses, saying why (a control call answered without
    // it must not be undone by its own deliveries).
    const during = (socket) => receivedOf(socket, 'message:status').filter((d) => d.messageId.startsWith('during-')).map((d) => d.messageId);
    const localOnly = [];
    const deadline = Date.now() + 15000;
    let refused;
    while (!refused) {
      assert.ok(Date.now() < deadline, `A still delivers on its own after 15 s: ${localOnly.length} publishes`);
      const id = `during-${localOnly.length}`;
      const res = await emitApi(a, status(conv, id));
      if (res.status === 200) {
        assert.deepEqual(withoutOffset(res.json), { room: `conversation:${conv}`, event: 'message:status', localOnly: true }, 'the publisher is told');
        localOnly.push(id);
        await sleep(100);
      } else {
        refused = res;
      }
    }
    assertJsonError(refused, 503, 'count it out');
    const again = await emitApi(a, status(conv, 'during-refused'));
    assertJsonError(again, 503, 'count it out');
    await eventually(() => during(sa).length === localOnly.length, 5000);
    await sleep(300);
    assert.deepEqual(during(sa), localOnly, 'A\'s client got what was answered localOnly, and nothing refused');
    assert.deepEqual(during(sb), [], 'B cannot be reached');

    // A user who comes online while Redis is away is accepted; the announcement waits.
    const carol = uid('carol');
    const onlineBefore = receivedOf(sa, 'user:online').length;
    const sc = await connect(a, { token: signJwt({ sub: carol }) });
    await sleep(300);
    assert.equal(receivedOf(sa, 'user:online').length, onlineBefore, 'not announced while Redis is away');

    await redis.start();
    for (const s of [a, b]) await eventually(async () => (await readyz(s)) === 200, 20000);
    assert.ok(sa.connected && sb.connected, 'clients stayed connected');

    const afterA = await emitApi(a, status(conv, 'after-a'));
    assert.deepEqual(withoutOffset(afterA.json), { room: `conversation:${conv}`, event: 'message:status' }, 'reaches the cluster again');
    await emitApi(b, status(conv, 'after-b'));
    const after = (socket) => receivedOf(socket, 'message:status').filter((d) => d.messageId.startsWith('after-')).map((d) => d.messageId);
    await eventually(() => after(sa).length === 2 && after(sb).length === 2, 5000);
    await sleep(300);
    assert.deepEqual(after(sa), ['after-a', 'after-b']);
    assert.deepEqual(after(sb), ['after-a', 'after-b']);

    // Presence came back without anyone leaving.
    for (const user of [alice, bob]) {
      await eventually(async () => (await presenceOf(b, user)).connections === 1, 5000);
    }
    assert.equal(receivedOf(sa, 'user:offline').length, 0, 'nobody was announced offline');
    await eventually(async () => (await presenceOf(b, carol)).connections === 1, 5000);
    const carolOnline = await collect(sa, 'user:online', onlineBefore + 1);
    assert.deepEqual(carolOnline.slice(onlineBefore), [{ userId: carol }], 'carol is announced once she is registered, nobody else again');
    assert.ok(receivedOf(sb, 'user:online').filter(forUser(carol)).length <= 1, 'at most once on the other node');
    assert.equal(receivedOf(sc, 'user:online').filter(forUser(carol)).length, 0, 'not to carol herself');

    // The outage was logged once, not once per event.
    const logs = a.logsSince(markA);
    const lines = logs.split('\n').filter((l) => l.includes('room broker: Redis unreachable'));
    assert.equal(lines.length, 1, `broker outage lines:\n${lines.join('\n')}`);
  });
});
