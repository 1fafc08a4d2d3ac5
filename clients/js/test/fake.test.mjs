// The client's bookkeeping against a scripted server (a fake WebSocket): the
// cases a real cluster produces only by chance — a live message past a gap,
// a redelivered one, an unknown event, a 1012 close, a failed upgrade — are
// played here frame by frame. No cluster needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, ChatError, newCid } from '../chatd-client.js';

// One fake socket per connection attempt; the test plays the server.
function fakeServer() {
  const sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      sockets.push(this);
      if (srv.onConnect) queueMicrotask(() => srv.onConnect(this));
    }
    send(s) { this.sent.push(JSON.parse(s)); if (srv.onFrame) srv.onFrame(this, JSON.parse(s)); }
    close() { this.readyState = 3; }
    // server side
    open(hello = {}) {
      this.readyState = 1;
      this.onopen?.({});
      this.push({ op: 'hello', user: 'u', gateway: 0, heartbeat: 25, ...hello });
    }
    push(o) { this.onmessage?.({ data: JSON.stringify(o) }); }
    drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: '' }); }
    reqs(op) { return this.sent.filter((f) => f.op === op); }
  }
  const srv = { sockets, WebSocket: FakeWS, onConnect: null, onFrame: null };
  return srv;
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
async function until(what, cond, ms = 3000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out: ' + what);
    await tick(2);
  }
}
const msg = (room, seq, extra = {}) => ({ op: 'msg', room, seq, id: 'i' + seq, from: 'v', text: 't' + seq, ts: 1, ...extra });

function make(srv, extra = {}) {
  const c = new ChatClient({ url: ['ws://a/ws', 'ws://b/ws'], token: 'tok', WebSocket: srv.WebSocket,
    backoffBaseMs: 5, backoffMaxMs: 20, retryMinMs: 1, retryMaxMs: 5, ...extra });
  const got = [];
  c.on('message', (m) => got.push(m.seq));
  c.got = got;
  return c;
}

test('dedup by (room, seq), gap detection by sync, delivery in order', async (t) => {
  const srv = fakeServer();
  const c = make(srv, { rooms: { r: 2 } });
  t.after(() => c.close());
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  const ws = srv.sockets[0];
  ws.open();
  // After hello: sync of the tracked room from its last seq.
  await until('sync after hello', () => ws.reqs('sync').length === 1);
  let s = ws.reqs('sync')[0];
  assert.deepEqual([s.room, s.after], ['r', 2]);
  ws.push({ op: 'history', rid: s.rid, room: 'r', messages: [msg('r', 3)], more: false });
  await tick();                          // the catch-up is over
  ws.push(msg('r', 3));                  // redelivered: dropped
  ws.push(msg('r', 4));
  ws.push(msg('r', 6));                  // gap: 5 missing -> sync after 4, 6 held back
  await until('gap sync', () => ws.reqs('sync').length === 2);
  s = ws.reqs('sync')[1];
  assert.equal(s.after, 4);
  assert.deepEqual(c.got, [3, 4]);
  ws.push(msg('r', 7));                  // also held until 5 comes
  ws.push({ op: 'history', rid: s.rid, room: 'r', messages: [msg('r', 5), msg('r', 6)], more: false });
  await tick();
  assert.deepEqual(c.got, [3, 4, 5, 6, 7]);
  ws.push(msg('r', 5));
  ws.push(msg('r', 7));
  assert.deepEqual(c.got, [3, 4, 5, 6, 7]);
  assert.equal(c.lastSeq('r'), 7);
});

test('unknown events are ignored (a later protocol extension), and seen by event listeners', async (t) => {
  const srv = fakeServer();
  const c = make(srv);
  t.after(() => c.close());
  const seen = [];
  const errors = [];
  c.on('event', (e) => seen.push(e.op));
  c.on('error', (e) => errors.push(e));
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  const ws = srv.sockets[0];
  ws.open();
  ws.push({ op: 'edited', room: 'r', seq: 9, target: 'x', text: 'y' });
  ws.push({ op: 'something_new' });
  ws.push({ no_op: true });
  ws.onmessage({ data: 'not json' });
  ws.push(msg('r', 1));
  assert.deepEqual(c.got, [1]);
  assert.deepEqual(seen, ['hello', 'edited', 'something_new', undefined, 'msg']);
  assert.equal(c.lastSeq('r'), 1);
  assert.deepEqual(errors, []);
  assert.equal(c.state, 'connected');
});

test('outbox: a cid always sent; unacked sends resent with the same cid after the reconnect and the catch-up', async (t) => {
  const srv = fakeServer();
  const c = make(srv, { rooms: { r: 0 } });
  t.after(() => c.close());
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  let ws = srv.sockets[0];
  ws.open();
  await until('sync', () => ws.reqs('sync').length === 1);
  ws.push({ op: 'history', rid: ws.reqs('sync')[0].rid, room: 'r', messages: [], more: false });
  const p1 = c.send('r', 'one');
  const p2 = c.send('r', 'two');
  await until('sends', () => ws.reqs('send').length === 2);
  const [s1, s2] = ws.reqs('send');
  assert.ok(s1.cid && s2.cid && s1.cid !== s2.cid);
  ws.push({ op: 'ack', rid: s1.rid, room: 'r', id: 'id1', cid: s1.cid });
  assert.deepEqual(await p1, { id: 'id1', cid: s1.cid, room: 'r' });
  // "two" was stored but its ack is lost with the connection; "three" is written offline.
  ws.drop(1006);
  const p3 = c.send('r', 'three');
  assert.equal(c.pending().find((o) => o.text === 'three').state, 'queued');
  await until('reconnect', () => srv.sockets.length === 2);
  ws = srv.sockets[1];
  assert.equal(ws.url.split('?')[0], 'ws://b/ws'); // the next gateway of the list
  ws.open();
  await until('sync', () => ws.reqs('sync').length === 1);
  assert.equal(ws.reqs('send').length, 0, 'sends wait for the catch-up');
  // The catch-up brings "one" and "two" (stored before the close): "two" is settled by its echo.
  ws.push({ op: 'history', rid: ws.reqs('sync')[0].rid, room: 'r', messages: [
    msg('r', 1, { from: 'u', cid: s1.cid, text: 'one' }), msg('r', 2, { from: 'u', cid: s2.cid, text: 'two', id: 'id2' })], more: false });
  assert.deepEqual(await p2, { id: 'id2', cid: s2.cid, room: 'r' });
  await until('resend', () => ws.reqs('send').length === 1);
  const s3 = ws.reqs('send')[0];
  assert.equal(s3.text, 'three');
  // unavailable (stored maybe): retried with the same cid
  ws.push({ op: 'error', rid: s3.rid, code: 'unavailable', message: 'kafka', stored: 'maybe' });
  await until('retry', () => ws.reqs('send').length === 2);
  assert.equal(ws.reqs('send')[1].cid, s3.cid);
  ws.push({ op: 'ack', rid: ws.reqs('send')[1].rid, room: 'r', id: 'id3', cid: s3.cid });
  assert.equal((await p3).id, 'id3');
  // A refusal for good rejects with the protocol's code.
  const p4 = c.send('r', 'x'.repeat(10));
  await until('send 4', () => ws.reqs('send').length === 3);
  ws.push({ op: 'error', rid: ws.reqs('send')[2].rid, code: 'too_large', message: 'too long' });
  await assert.rejects(p4, (e) => e instanceof ChatError && e.code === 'too_large' && e.op === 'send' && !e.retryable);
  assert.deepEqual(c.got, [1, 2]);
});

test('close 1012 reconnects at once; other closes back off with jitter; the token provider is asked again after a failed upgrade or 1008', async (t) => {
  const srv = fakeServer();
  let calls = 0;
  const rnd = [];
  const c = make(srv, { token: () => `tok${++calls}`, backoffBaseMs: 100, backoffMaxMs: 1000,
    random: () => { rnd.push(1); return 0.5; } });
  t.after(() => c.close());
  const states = [];
  c.on('state', (s) => states.push(s));
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  srv.sockets[0].open();
  assert.equal(calls, 1);
  srv.sockets[0].drop(1012);
  assert.equal(states.at(-1).retryIn, 0);
  await until('at once', () => srv.sockets.length === 2, 50);
  srv.sockets[1].drop(1006);             // failed upgrade: never opened
  // full jitter: random * min(max, base * 2^attempt); attempt 1 -> 0.5 * 200
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.equal(states.at(-1).retryIn, 100);
  await until('third', () => srv.sockets.length === 3);
  assert.equal(calls, 2, 'a failed upgrade asks the provider again');
  assert.match(srv.sockets[2].url, /token=tok2$/);
  srv.sockets[2].open();
  srv.sockets[2].drop(1006);             // an ordinary close of a working connection: same token
  await until('fourth', () => srv.sockets.length === 4);
  assert.equal(calls, 2);
  srv.sockets[3].open();
  srv.sockets[3].drop(1008);             // token expired
  await until('fifth', () => srv.sockets.length === 5);
  assert.equal(calls, 3);
});

test('requests wait for the connection; a reply lost with the connection rejects with disconnected', async (t) => {
  const srv = fakeServer();
  const c = make(srv);
  t.after(() => c.close());
  const joined = c.join('lobby');        // before connect: sent after hello
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  const ws = srv.sockets[0];
  ws.open();
  await until('join', () => ws.reqs('join').length === 1);
  ws.push({ op: 'ok', rid: ws.reqs('join')[0].rid, room: 'lobby', seq: 41 });
  assert.deepEqual(await joined, { room: 'lobby', seq: 41 });
  assert.equal(c.lastSeq('lobby'), 41);  // tracked from its head
  await until('sync', () => ws.reqs('sync').length === 1);
  const f = c.presence('lobby');
  await until('presence', () => ws.reqs('presence').length === 1);
  ws.push({ op: 'error', rid: ws.reqs('sync')[0].rid, code: 'not_member', message: 'no' });
  ws.drop(1006);
  await assert.rejects(f, (e) => e.code === 'disconnected' && e.retryable);
  assert.equal(c.lastSeq('lobby'), null, 'a room the server says we are not in is no longer tracked');
});

test('a request left unanswered drops the connection; the send goes out again on the next one, same cid', async (t) => {
  const srv = fakeServer();
  const c = make(srv, { requestTimeoutMs: 100 });
  t.after(() => c.close());
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  srv.sockets[0].open();                 // then never answers: a stuck gateway
  const p = c.send('r', 'stuck');
  await until('send', () => srv.sockets[0].reqs('send').length === 1);
  const cid = srv.sockets[0].reqs('send')[0].cid;
  assert.match(cid, /^c[0-9a-f]{24}$/);
  await until('a new connection', () => srv.sockets.length === 2);
  const ws = srv.sockets[1];
  ws.open();
  await until('resend', () => ws.reqs('send').length === 1);
  assert.equal(ws.reqs('send')[0].cid, cid);
  ws.push({ op: 'ack', rid: ws.reqs('send')[0].rid, room: 'r', id: 'x', cid });
  assert.equal((await p).id, 'x');
});

test('cids without a global crypto (a runtime that has none)', () => {
  const d = Object.getOwnPropertyDescriptor(globalThis, 'crypto');
  Object.defineProperty(globalThis, 'crypto', { value: undefined, configurable: true, writable: true });
  try {
    const a = new Set(Array.from({ length: 1000 }, newCid));
    assert.equal(a.size, 1000);
    for (const c of a) assert.match(c, /^c[0-9a-f]{24}$/);
  } finally {
    if (d) Object.defineProperty(globalThis, 'crypto', d);
    else delete globalThis.crypto;
  }
});

test('retries of a refused sync or send back off: the random part doubles with each refusal in a row', async (t) => {
  const srv = fakeServer();
  const c = make(srv, { retryMinMs: 100, retryMaxMs: 300, backoffMaxMs: 1000, random: () => 1 });
  t.after(() => c.close());
  assert.deepEqual([0, 1, 2, 3, 9].map((n) => c.jitter(n)), [300, 500, 900, 1100, 1100]);
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  const ws = srv.sockets[0];
  ws.open();
  const at = [];
  srv.onFrame = (w, f) => { if (f.op === 'send') at.push(Date.now()); };
  c.send('r', 'x');
  await until('send', () => ws.reqs('send').length === 1);
  for (let i = 1; i <= 2; i++) {
    ws.push({ op: 'error', rid: ws.reqs('send').at(-1).rid, code: 'rate_limited', message: 'slow down' });
    await until(`retry ${i}`, () => ws.reqs('send').length === i + 1, 5000);
  }
  const gaps = [at[1] - at[0], at[2] - at[1]];
  assert.ok(gaps[0] >= 290 && gaps[1] >= 490, `retry pauses ${gaps}`);
});

test('a token provider that throws is reported (op "token") and asked again after a backoff', async (t) => {
  const srv = fakeServer();
  let calls = 0;
  const c = make(srv, { token: async () => { if (++calls === 1) throw new Error('idp down'); return 'tok'; } });
  t.after(() => c.close());
  const errors = [];
  c.on('error', (e) => errors.push(e));
  c.connect();
  await until('socket after the retry', () => srv.sockets.length === 1);
  assert.equal(calls, 2);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].op, 'token');
  assert.match(errors[0].message, /idp down/);
  srv.sockets[0].open();
  assert.equal(c.state, 'connected');
});

test('a page with first: seqs the server no longer holds are skipped (gone), not asked for again', async (t) => {
  const srv = fakeServer();
  const c = make(srv, { rooms: { r: 2 } });
  t.after(() => c.close());
  const gone = [];
  c.on('gone', (g) => gone.push(g));
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  const ws = srv.sockets[0];
  ws.open();
  await until('sync after hello', () => ws.reqs('sync').length === 1);
  let s = ws.reqs('sync')[0];
  // 3..5 were deleted by retention: the page starts at 6 and says so.
  ws.push({ op: 'history', rid: s.rid, room: 'r', messages: [msg('r', 6), msg('r', 7)], more: false, first: 6 });
  await until('delivered', () => c.got.length === 2);
  assert.deepEqual(c.got, [6, 7]);
  assert.deepEqual(gone, [{ room: 'r', from: 3, to: 5 }]);
  // A live message past a gap; the sync finds the room emptied up to 9
  // (an empty page with first): 8 is skipped, 10 delivered, no more syncs.
  ws.push(msg('r', 10));
  await until('gap sync', () => ws.reqs('sync').length === 2);
  s = ws.reqs('sync')[1];
  assert.equal(s.after, 7);
  ws.push({ op: 'history', rid: s.rid, room: 'r', messages: [], more: false, first: 10 });
  await until('delivered after the gone seqs', () => c.got.length === 3);
  assert.deepEqual(c.got, [6, 7, 10]);
  assert.deepEqual(gone[1], { room: 'r', from: 8, to: 9 });
  await tick(30);
  assert.equal(ws.reqs('sync').length, 2);
  assert.equal(c.lastSeq('r'), 10);
});

test('edits and deletes: in seq order with the messages, applied to the store, through a gap sync', async (t) => {
  const srv = fakeServer();
  const c = make(srv, { rooms: { r: 0 } });
  t.after(() => c.close());
  const changes = [];
  c.on('edit', (e) => changes.push(['edit', e.seq, e.target, e.message && e.message.text]));
  c.on('delete', (e) => changes.push(['delete', e.seq, e.target, e.message && e.message.deleted]));
  c.connect();
  await until('socket', () => srv.sockets.length === 1);
  const ws = srv.sockets[0];
  ws.open();
  await until('sync after hello', () => ws.reqs('sync').length === 1);
  let s = ws.reqs('sync')[0];
  ws.push({ op: 'history', rid: s.rid, room: 'r', messages: [msg('r', 1), msg('r', 2)], more: false });
  await tick();
  // live: an edit of 1
  ws.push({ op: 'edit', room: 'r', seq: 3, id: 'e3', from: 'v', target: 'i1', text: 'one, better', ts: 2 });
  // a delete of 2 at seq 5 arrives before seq 4 (an edit of 2): held, sync after 3
  ws.push({ op: 'delete', room: 'r', seq: 5, id: 'd5', from: 'v', target: 'i2', ts: 3 });
  await until('gap sync', () => ws.reqs('sync').length === 2);
  s = ws.reqs('sync')[1];
  assert.equal(s.after, 3);
  assert.deepEqual(changes, [['edit', 3, 'i1', 'one, better']]);
  ws.push({ op: 'history', rid: s.rid, room: 'r', more: false, messages: [
    { op: 'edit', room: 'r', seq: 4, id: 'e4', from: 'v', target: 'i2', text: '', ts: 3 },
    { op: 'delete', room: 'r', seq: 5, id: 'd5', from: 'v', target: 'i2', ts: 3 }] });
  await tick();
  ws.push({ op: 'delete', room: 'r', seq: 5, id: 'd5', from: 'v', target: 'i2', ts: 3 }); // redelivered: dropped
  ws.push({ op: 'edit', room: 'r', seq: 6, id: 'e6', from: 'v', target: 'nope', text: 'x', ts: 4 }); // not held
  await tick();
  assert.deepEqual(changes, [['edit', 3, 'i1', 'one, better'], ['edit', 4, 'i2', 't2'],
    ['delete', 5, 'i2', true], ['edit', 6, 'nope', null]]);
  assert.deepEqual(c.got, [1, 2]); // edits and deletes are not 'message' events
  assert.equal(c.lastSeq('r'), 6);
  const now = c.messages('r');
  assert.deepEqual(now.map((m) => [m.seq, m.text, !!m.edited, !!m.deleted]),
    [[1, 'one, better', true, false], [2, '', false, true]]);
  // the ops: a request with the target id and a cid, the ack's fields back
  const p = c.editMessage('r', 'i1', 'again');
  await until('edit request', () => ws.reqs('edit').length === 1);
  const e = ws.reqs('edit')[0];
  assert.deepEqual([e.room, e.id, e.text, typeof e.cid], ['r', 'i1', 'again', 'string']);
  ws.push({ op: 'ack', rid: e.rid, room: 'r', id: 'e7', cid: e.cid, target: 'i1' });
  assert.deepEqual(await p, { id: 'e7', target: 'i1', room: 'r', cid: e.cid });
  const q = c.deleteMessage('r', 'i9', { cid: 'dd' });
  await until('delete request', () => ws.reqs('delete').length === 1);
  const d = ws.reqs('delete')[0];
  assert.equal(d.cid, 'dd');
  ws.push({ op: 'error', rid: d.rid, code: 'forbidden', message: 'only its sender may edit or delete a message' });
  await assert.rejects(q, (err) => err instanceof ChatError && err.code === 'forbidden' && !err.retryable);
});
