// CONTRACT §2 bad input: every refused client event gets an `error` event
// {message, timestamp} on that socket alone (and {success: false, error} as ack when asked),
// and the socket keeps working. Limits: size, id length, depth, rate; transport maximum.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS, configToml, startServer, signJwt, connect, waitFor, expectNone, emitAck,
  assertErrorEvent, emitApi, uid, standardHooks, sleep,
} from './helpers.mjs';

let server;   // tight limits, generous rate
let rated;    // burst 3, 2/s

before(async () => {
  [server, rated] = await Promise.all([
    startServer({
      toml: configToml({
        limits: [
          'max_event_bytes = "1KiB"',
          'max_id_chars = 16',
          'max_depth = 4',
          'max_http_body_bytes = "2KiB"',
          'events_per_second = 1000',
          'burst = 1000',
        ].join('\n'),
      }),
    }),
    startServer({ toml: configToml({ limits: 'events_per_second = 2\nburst = 3' }) }),
  ]);
});
after(async () => { await Promise.all([server, rated].filter(Boolean).map((s) => s.stop())); });
standardHooks(() => [server, rated]);

/** Nested object `levels` deep: {a: {a: ... {}}}. */
function nested(levels) {
  let o = {};
  for (let i = 1; i < levels; i += 1) o = { a: o };
  return o;
}

// [name, event, payload (undefined = no argument), field the message must name or null]
const CASES = [
  ['payload is a string', 'conversation:join', 'c1', null],
  ['payload is a number', 'conversation:join', 42, null],
  ['payload is an array', 'conversation:join', ['c1'], null],
  ['payload is null', 'conversation:join', null, null],
  ['no payload at all', 'conversation:join', undefined, null],
  ['missing conversationId', 'conversation:join', {}, 'conversationId'],
  ['conversationId is a number', 'conversation:join', { conversationId: 123 }, 'conversationId'],
  ['conversationId is an object', 'conversation:join', { conversationId: { id: 'c1' } }, 'conversationId'],
  ['conversationId is empty', 'conversation:join', { conversationId: '' }, 'conversationId'],
  ['conversationId longer than max_id_chars (17 > 16)', 'conversation:join', { conversationId: 'x'.repeat(17) }, 'conversationId'],
  ['conversation:leave with a number id', 'conversation:leave', { conversationId: 7 }, 'conversationId'],
  ['typing:start without conversationId', 'typing:start', { foo: 'bar' }, 'conversationId'],
  ['typing:stop with an empty id', 'typing:stop', { conversationId: '' }, 'conversationId'],
  ['session:join with a number id', 'session:join', { sessionId: 42 }, 'sessionId'],
  ['session:join missing sessionId', 'session:join', { conversationId: 'c1' }, 'sessionId'],
  ['session:leave with an id longer than max_id_chars', 'session:leave', { sessionId: 's'.repeat(40) }, 'sessionId'],
  ['payload deeper than max_depth (10 levels > 4)', 'conversation:join', { conversationId: 'c1', extra: nested(10) }, null],
  ['unknown event', 'nope:nothing', { conversationId: 'c1' }, null],
  ['event bigger than max_event_bytes (2000 B > 1 KiB)', 'conversation:join', { conversationId: 'c1', pad: 'x'.repeat(2000) }, null],
  ['event of 200 KiB (over max_event_bytes, under the 1 MiB transport maximum)', 'conversation:join', { conversationId: 'c1', pad: 'x'.repeat(200 * 1024) }, null],
];

function emitNoAck(socket, event, payload) {
  if (payload === undefined) socket.emit(event);
  else socket.emit(event, payload);
}

/** The socket still works: a join gets its reply and its ack. */
async function stillWorks(socket) {
  const conversationId = uid('ok');
  const ev = waitFor(socket, 'conversation:joined');
  const ack = await emitAck(socket, 'conversation:join', { conversationId });
  assert.deepEqual(ack, { conversationId, success: true });
  assert.deepEqual(await ev, { conversationId, success: true });
  assert.ok(socket.connected);
}

for (const transports of TRANSPORTS) {
  const T = transports[0];

  describe(`bad input [${T}]`, () => {
    for (const [name, event, payload, field] of CASES) {
      it(`${name} -> error event (+ {success: false} ack); the socket keeps working`, async () => {
        const s = await connect(server, { transports, token: signJwt({ sub: uid('bad') }) });
        const bystander = await connect(server, { transports, token: signJwt({ sub: uid('by') }) });
        const noLeak = expectNone(bystander, 'error', 400);

        // Without an ack.
        let errP = waitFor(s, 'error');
        emitNoAck(s, event, payload);
        const err1 = await errP;
        assertErrorEvent(err1, field);

        // With an ack: ack {success: false, error: message} and the error event.
        errP = waitFor(s, 'error');
        const ack = await emitAck(s, event, payload);
        const err2 = await errP;
        assertErrorEvent(err2, field);
        assert.deepEqual(ack, { success: false, error: err2.message }, `ack: ${JSON.stringify(ack)}`);

        // No success reply was sent for the refused event.
        for (const reply of ['conversation:joined', 'conversation:left', 'session:joined', 'session:left']) {
          assert.equal(s.received.filter((r) => r.event === reply).length, 0, `unexpected ${reply}`);
        }
        await noLeak;
        await stillWorks(s);
      });
    }

    it('an id of exactly max_id_chars (16) is accepted', async () => {
      const s = await connect(server, { transports, token: signJwt({ sub: uid('edge') }) });
      const conversationId = 'y'.repeat(16);
      const ack = await emitAck(s, 'conversation:join', { conversationId });
      assert.deepEqual(ack, { conversationId, success: true });
      const sack = await emitAck(s, 'session:join', { sessionId: conversationId });
      assert.deepEqual(sack, { sessionId: conversationId, success: true });
    });

    it('a refused join does not join: the socket gets no events of that room', async () => {
      const s = await connect(server, { transports, token: signJwt({ sub: uid('nojoin') }) });
      const long = 'z'.repeat(17);
      for (const conversationId of [long, 42]) {
        const ack = await emitAck(s, 'conversation:join', { conversationId });
        assert.equal(ack?.success, false, `join ${conversationId}: ${JSON.stringify(ack)}`);
      }
      const none = expectNone(s, 'custom:probe', 300);
      for (const room of [`conversation:${long}`, 'conversation:42']) {
        const r = await emitApi(server, { event: 'custom:probe', room, data: { room } });
        assert.equal(r.status, 200, r.text);
      }
      await none;
    });

    it('the error message names the offending field for a bad conversationId', async () => {
      const s = await connect(server, { transports, token: signJwt({ sub: uid('field') }) });
      const errP = waitFor(s, 'error');
      s.emit('conversation:join', { conversationId: 99 });
      const err = await errP;
      assert.match(err.message, /conversationId/);
    });

    it('a frame over the 1 MiB transport maximum (2 MiB) closes that connection only', async () => {
      const victim = await connect(server, { transports, token: signJwt({ sub: uid('big') }) });
      const other = await connect(server, { transports, token: signJwt({ sub: uid('stay') }) });
      const otherDisc = expectNone(other, 'disconnect', 1000);
      const gone = waitFor(victim, 'disconnect', 8000);
      victim.emit('conversation:join', { conversationId: 'c1', pad: 'x'.repeat(2 * 1024 * 1024) });
      const reason = await gone;
      assert.equal(typeof reason, 'string');
      assert.equal(victim.connected, false);
      await otherDisc;
      assert.ok(other.connected, 'the other socket must stay connected');
      await stillWorks(other);
    });
  });

  describe(`rate limit: events_per_second 2, burst 3 [${T}]`, () => {
    it('10 events at once: some are refused with an error about the rate; the socket stays and recovers', async () => {
      const s = await connect(rated, { transports, token: signJwt({ sub: uid('rate') }) });
      const bystander = await connect(rated, { transports, token: signJwt({ sub: uid('rate-by') }) });
      const noLeak = expectNone(bystander, 'error', 800);
      const acks = [];
      for (let i = 0; i < 10; i += 1) {
        acks.push(emitAck(s, 'conversation:join', { conversationId: `r${i}` }, 4000).catch((e) => ({ timeout: e.message })));
      }
      const results = await Promise.all(acks);
      await sleep(300);
      const ok = results.filter((r) => r && r.success === true);
      const refused = results.filter((r) => r && r.success === false);
      const errors = s.received.filter((r) => r.event === 'error').map((r) => r.args[0]);
      assert.ok(ok.length >= 3, `at least the burst (3) should pass: ${JSON.stringify(results)}`);
      assert.ok(ok.length <= 5, `no more than burst + refill should pass quickly: ${JSON.stringify(results)}`);
      assert.ok(refused.length >= 5, `most of the 10 must be refused: ${JSON.stringify(results)}`);
      assert.equal(ok.length + refused.length, 10, `every event gets an ack: ${JSON.stringify(results)}`);
      assert.ok(errors.length >= 1, 'error events expected');
      for (const e of errors) assertErrorEvent(e);
      assert.ok(errors.some((e) => /rate/i.test(e.message)), `an error should mention the rate: ${JSON.stringify(errors)}`);
      assert.ok(refused.every((r) => typeof r.error === 'string' && r.error.length > 0));
      await noLeak;
      assert.ok(s.connected, 'rate limiting must not disconnect');

      await sleep(1600); // the bucket refills (2/s)
      await stillWorks(s);
    });

    it('events paced under the refill rate are all accepted', async () => {
      const s = await connect(rated, { transports, token: signJwt({ sub: uid('steady') }) });
      for (let i = 0; i < 5; i += 1) {
        if (i >= 3) await sleep(600); // the burst (3) is spent; 2/s refills one token per 500 ms
        const ack = await emitAck(s, 'conversation:join', { conversationId: `s${i}` });
        assert.deepEqual(ack, { conversationId: `s${i}`, success: true });
      }
      assert.equal(s.received.filter((r) => r.event === 'error').length, 0);
    });
  });
}
