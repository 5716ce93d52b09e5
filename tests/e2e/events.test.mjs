// CONTRACT §2 "Client → server": joins and leaves with their replies and acks, typing
// indicators to the room except the sender, and that a left room no longer delivers.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, configToml, startServer, signJwt, connect, waitFor, expectNone, emitAck,
  emitApi, joinConversation, joinSession, uid, standardHooks,
} from './helpers.mjs';

let server;

before(async () => {
  server = await startServer({ toml: configToml() });
});
after(async () => { await server?.stop(); });
standardHooks(() => server);

const user = (name) => {
  const sub = uid(name);
  return { sub, token: signJwt({ sub, email: `${name}@example.com`, role: 'agent' }) };
};

const ROOM_EVENTS = [
  // [client event, reply event, id key]
  ['conversation:join', 'conversation:joined', 'conversationId'],
  ['conversation:leave', 'conversation:left', 'conversationId'],
  ['session:join', 'session:joined', 'sessionId'],
  ['session:leave', 'session:left', 'sessionId'],
];

for (const transports of TRANSPORTS) {
  const T = transports[0];

  describe(`client → server [${T}]`, () => {
    for (const [event, reply, key] of ROOM_EVENTS) {
      it(`${event} without an ack -> ${reply} {${key}, success: true}`, async () => {
        const s = await connect(server, { transports, token: user('joiner').token });
        const id = uid('room');
        if (event.endsWith(':leave')) await emitAck(s, event.replace('leave', 'join'), { [key]: id });
        const p = waitFor(s, reply);
        s.emit(event, { [key]: id });
        assert.deepEqual(await p, { [key]: id, success: true });
        await expectNone(s, reply, 200);
        assert.equal(s.received.filter((r) => r.event === 'error').length, 0, 'no error expected');
      });

      it(`${event} with an ack -> ack and ${reply} carry the same object`, async () => {
        const s = await connect(server, { transports, token: user('joiner').token });
        const id = uid('room');
        if (event.endsWith(':leave')) await emitAck(s, event.replace('leave', 'join'), { [key]: id });
        const p = waitFor(s, reply);
        const ack = await emitAck(s, event, { [key]: id });
        assert.deepEqual(ack, { [key]: id, success: true });
        assert.deepEqual(await p, { [key]: id, success: true });
        assert.equal(s.received.filter((r) => r.event === 'error').length, 0, 'no error expected');
      });
    }

    it('an event emitted right after `connect` is handled (50 connect + join cycles, none lost)', async () => {
      const pending = [];
      for (let i = 0; i < 50; i += 1) {
        const s = await connect(server, { transports, token: user('eager').token });
        const conversationId = `eager-${i}`;
        pending.push(emitAck(s, 'conversation:join', { conversationId }, 3000)
          .then((ack) => (ack?.success === true ? null : `#${i}: ${JSON.stringify(ack)}`), (e) => `#${i}: ${e.message}`));
      }
      const lost = (await Promise.all(pending)).filter(Boolean);
      assert.deepEqual(lost, [], `${lost.length}/50 joins sent right after connect got no ack`);
    });

    it('one socket can be in several conversation and session rooms at once', async () => {
      const s = await connect(server, { transports, token: user('multi').token });
      const c1 = uid('c'); const c2 = uid('c'); const s1 = uid('s');
      await joinConversation(s, c1);
      await joinConversation(s, c2);
      await joinSession(s, s1);
      for (const [room, event, data] of [
        [c1, 'message:status', { conversationId: c1, messageId: 'm1', status: 'read' }],
        [c2, 'message:status', { conversationId: c2, messageId: 'm2', status: 'sent' }],
        [s1, 'session:node-executed', { sessionId: s1, nodeId: 'n1', nodeLabel: 'Start' }],
      ]) {
        const p = waitFor(s, event, 5000, (d) => d && (d.conversationId === room || d.sessionId === room));
        const r = await emitApi(server, { event, data });
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(await p, data);
      }
    });

    describe('typing indicators', () => {
      let a; let b; let c; let conv; let ua; let ub;
      const setup = async () => {
        ua = user('typer'); ub = user('reader'); const uc = user('outsider');
        conv = uid('conv');
        a = await connect(server, { transports, token: ua.token });
        b = await connect(server, { transports, token: ub.token });
        c = await connect(server, { transports, token: uc.token });
        await joinConversation(a, conv);
        await joinConversation(b, conv);
        await joinConversation(c, uid('other-conv'));
      };

      for (const [event, isTyping] of [['typing:start', true], ['typing:stop', false]]) {
        it(`${event}: other members get {conversationId, userId, isTyping: ${isTyping}}; not the sender, not outsiders`, async () => {
          await setup();
          const got = waitFor(b, event);
          const notSender = expectNone(a, event, 400);
          const notOutsider = expectNone(c, event, 400);
          a.emit(event, { conversationId: conv });
          assert.deepEqual(await got, { conversationId: conv, userId: ua.sub, isTyping });
          await notSender;
          await notOutsider;
          // and the other way round: the userId is the sender's
          const got2 = waitFor(a, event);
          const notSender2 = expectNone(b, event, 300);
          b.emit(event, { conversationId: conv });
          assert.deepEqual(await got2, { conversationId: conv, userId: ub.sub, isTyping });
          await notSender2;
        });
      }

      it('a second socket of the sender\'s own user in the room does get the indicator (only the sending socket is excluded)', async () => {
        await setup();
        const a2 = await connect(server, { transports, token: ua.token });
        await joinConversation(a2, conv);
        const got = waitFor(a2, 'typing:start');
        const gotB = waitFor(b, 'typing:start');
        const notSender = expectNone(a, 'typing:start', 400);
        a.emit('typing:start', { conversationId: conv });
        assert.deepEqual(await got, { conversationId: conv, userId: ua.sub, isTyping: true });
        assert.deepEqual(await gotB, { conversationId: conv, userId: ua.sub, isTyping: true });
        await notSender;
      });
    });

    describe('after leaving', () => {
      it('conversation:leave stops typing and message events of that room', async () => {
        const ua = user('stayer'); const ub = user('leaver');
        const conv = uid('conv');
        const a = await connect(server, { transports, token: ua.token });
        const b = await connect(server, { transports, token: ub.token });
        await joinConversation(a, conv);
        await joinConversation(b, conv);

        // Before leaving, b gets the room's events.
        let p = waitFor(b, 'typing:start');
        a.emit('typing:start', { conversationId: conv });
        await p;

        const left = await emitAck(b, 'conversation:leave', { conversationId: conv });
        assert.deepEqual(left, { conversationId: conv, success: true });

        let none = expectNone(b, 'typing:stop', 400);
        a.emit('typing:stop', { conversationId: conv });
        await none;

        const data = {
          conversationId: conv, messageId: uid('m'), senderId: ua.sub, type: 'text',
          content: { text: 'after leave' }, status: 'sent', timestamp: new Date().toISOString(),
        };
        p = waitFor(a, 'message:received');
        none = expectNone(b, 'message:received', 400);
        const r = await emitApi(server, { event: 'message:received', data });
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(await p, data);
        await none;

        // Rejoining works again.
        await joinConversation(b, conv);
        p = waitFor(b, 'typing:start');
        a.emit('typing:start', { conversationId: conv });
        assert.deepEqual(await p, { conversationId: conv, userId: ua.sub, isTyping: true });
      });

      it('session:leave stops session events', async () => {
        const a = await connect(server, { transports, token: user('s-stayer').token });
        const b = await connect(server, { transports, token: user('s-leaver').token });
        const sess = uid('sess');
        await joinSession(a, sess);
        await joinSession(b, sess);
        const data = { sessionId: sess, nodeId: 'n1', nodeLabel: 'Start' };

        let pa = waitFor(a, 'session:node-executed');
        const pb = waitFor(b, 'session:node-executed');
        let r = await emitApi(server, { event: 'session:node-executed', data });
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(await pa, data);
        assert.deepEqual(await pb, data);

        const left = await emitAck(b, 'session:leave', { sessionId: sess });
        assert.deepEqual(left, { sessionId: sess, success: true });

        pa = waitFor(a, 'session:node-executed');
        const none = expectNone(b, 'session:node-executed', 400);
        r = await emitApi(server, { event: 'session:node-executed', data: { ...data, nodeId: 'n2' } });
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(await pa, { ...data, nodeId: 'n2' });
        await none;
      });
    });
  });
}
