// A client that reads slower than it is sent to: its outgoing queue fills. On Socket.IO
// (`transports.socketio.max_buffer_size` packets) what does not fit is dropped and counted
// in switchboard_errors_total{kind="queue_full"}; an ack waits for room instead, so the
// client's emitWithAck still gets its answer once it reads again. On the native protocol
// (`transports.websocket.max_queued_frames`) the socket is closed with 1013, counted the
// same way.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  configToml, startServer, signJwt, connect, emitAck, emitApi, joinConversation, uid,
  standardHooks, api, eventually,
} from './helpers.mjs';
import { connectNative, closeAllNative } from './native.mjs';

let server;

before(async () => {
  server = await startServer({
    toml: configToml(),
    env: {
      SWITCHBOARD_TRANSPORTS__SOCKETIO__MAX_BUFFER_SIZE: '4',
      SWITCHBOARD_TRANSPORTS__WEBSOCKET__MAX_QUEUED_FRAMES: '4',
    },
  });
});
after(async () => { closeAllNative(); await server?.stop(); });
standardHooks(() => server);

/** The value of one sample of /metrics (0 when absent). */
async function metric(name) {
  const r = await api(server, 'GET', '/metrics', { key: null });
  assert.equal(r.status, 200);
  const line = r.text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

const QUEUE_FULL = 'switchboard_errors_total{kind="queue_full"}';
const HANDLED = 'switchboard_inbound_seconds_count';

/** Publishes 200 KiB messages into `conv` until the node counts another full queue. */
async function publishUntilFull(conv) {
  const full = await metric(QUEUE_FULL);
  const content = { text: 'x'.repeat(200 * 1024) };
  for (let sent = 0; (await metric(QUEUE_FULL)) === full; sent += 1) {
    assert.ok(sent < 400, `no queue was full after ${sent} events of 200 KiB`);
    const r = await emitApi(server, {
      event: 'message:received',
      data: {
        conversationId: conv, messageId: `m-${sent}`, senderId: 'u-1', type: 'text',
        content, status: 'sent', timestamp: new Date().toISOString(),
      },
    });
    assert.equal(r.status, 200, r.text);
  }
}

/** The node's recent errors of kind `queue_full`. */
async function queueFullErrors() {
  const r = await api(server, 'GET', '/api/v1/nodes');
  assert.equal(r.status, 200, r.text);
  return r.json.nodes.flatMap((n) => n.errors ?? []).filter((e) => e.kind === 'queue_full');
}

describe('a client that does not keep up', () => {
  it('on Socket.IO, gets the ack of an event it sent while its outgoing queue was full', async () => {
    const sub = uid('slow');
    const s = await connect(server, { transports: ['websocket'], token: signJwt({ sub }) });
    const conv = uid('conv');
    await joinConversation(s, conv);

    // Stop reading: the kernel's buffers fill, then the socket's queue.
    const tcp = s.io.engine.transport.ws._socket;
    tcp.pause();
    await publishUntilFull(conv);

    // An event with an ack, handled while the queue is still full.
    const handled = await metric(HANDLED);
    const other = uid('conv');
    const acked = emitAck(s, 'conversation:join', { conversationId: other }, 30000);
    await eventually(async () => (await metric(HANDLED)) > handled, 10000);

    tcp.resume();
    assert.deepEqual(await acked, { conversationId: other, success: true });

    // The node says what the client missed.
    const errors = await queueFullErrors();
    assert.ok(
      errors.some((e) => e.message.includes(`1 socket of conversation:${conv}`) && e.message.includes('outgoing queue was full')),
      `no queue_full for the room among the recent errors: ${JSON.stringify(errors).slice(0, 500)}`,
    );
  });

  it('on the native protocol, is closed with 1013 and counted', async () => {
    const sub = uid('slow-native');
    const c = await connectNative(server, { token: signJwt({ sub }) });
    const conv = uid('conv');
    assert.deepEqual(await c.emitAck('conversation:join', { conversationId: conv }), { conversationId: conv, success: true });

    const tcp = c.ws._socket;
    tcp.pause();
    await publishUntilFull(conv);
    tcp.resume();
    const { code, reason } = await c.closedWith(10000);
    assert.equal(code, 1013, `closed with ${code} ${reason}`);
    const errors = await queueFullErrors();
    assert.ok(
      errors.some((e) => e.message.includes(`socket ${c.hello.socketId} closed with 1013`)),
      `no queue_full for the socket among the recent errors: ${JSON.stringify(errors).slice(0, 500)}`,
    );
  });
});
