// The client against a real cluster (started by tests/browser/test_js_client.py,
// which passes the gateways' ports and a control URL to kill/restart a
// gateway and mint tokens). Each test reports what its clients received;
// the Python side compares that with PostgreSQL.
//
// env: CHATD_GW0, CHATD_GW1 (ports), CHATD_CONTROL (http://127.0.0.1:PORT)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { spawn } from 'node:child_process';
import { ChatClient, ChatError } from '../chatd-client.js';

const GW = [process.env.CHATD_GW0, process.env.CHATD_GW1];
const CONTROL = process.env.CHATD_CONTROL;
const skip = !(GW[0] && GW[1] && CONTROL) && 'needs a cluster: run through tests/browser/test_js_client.py';
const URL = (i) => `ws://127.0.0.1:${GW[i]}/ws`;
const FAST = { backoffBaseMs: 200, backoffMaxMs: 2000, retryMinMs: 200, retryMaxMs: 800 };
const clients = [];
after(() => { for (const c of clients) c.close(); });

async function control(path, init) {
  const r = await fetch(CONTROL + path, init);
  const body = await r.json();
  assert.equal(r.status, 200, `${path}: ${JSON.stringify(body)}`);
  return body;
}

const token = async (user, expIn = 3600) => (await control(`/token?user=${user}&exp_in=${expIn}`)).token;
const unique = (p) => `${p}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e6)}`;

function client(user, urls, extra = {}) {
  const c = new ChatClient({ url: urls, token: () => token(user), WebSocket, ...FAST, ...extra });
  const got = new Map(); // room -> [Message]
  c.on('message', (m) => { if (!got.has(m.room)) got.set(m.room, []); got.get(m.room).push(m); });
  c.got = (room) => got.get(room) || [];
  clients.push(c);
  return c.connect();
}

async function waitFor(what, cond, ms = 60000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Once each, in seq order, nothing missing from 1.
function assertDense(list, what) {
  assert.deepEqual(list.map((m) => m.seq), list.map((_, i) => i + 1), `${what}: seqs`);
}

const report = (who, room, list) => control('/result', {
  method: 'POST',
  body: JSON.stringify({ who, room, received: list.map((m) => [m.seq, m.from, m.text]) }),
});

test('join, send, receive across gateways; typing, presence; typed errors', { skip }, async () => {
  const room = unique('basic');
  const alice = client('alice', [URL(0)]);
  const bob = client('bob', [URL(1)]);
  assert.deepEqual(await alice.join(room), { room, seq: 0 });
  await bob.join(room);
  const typing = new Promise((res) => bob.on('typing', (t) => { if (t.room === room) res(t); }));
  alice.typing(room);
  assert.equal((await typing).from, 'alice');
  const acks = [];
  for (let i = 1; i <= 5; i++) acks.push(await alice.send(room, `hello ${i}`));
  assert.ok(acks.every((a) => /^[0-9a-f]{32}$/.test(a.id) && a.cid), JSON.stringify(acks));
  await bob.send(room, 'hi alice');
  await waitFor('both see 6 messages', () => alice.got(room).length === 6 && bob.got(room).length === 6);
  for (const c of [alice, bob]) assertDense(c.got(room), c.user);
  assert.deepEqual(bob.got(room).map((m) => m.text), ['hello 1', 'hello 2', 'hello 3', 'hello 4', 'hello 5', 'hi alice']);
  // The echo of an own message settles its send: nothing left in the outbox.
  await waitFor('outbox empty', () => alice.pending().length === 0);
  assert.equal(alice.got(room)[0].cid, acks[0].cid);
  const p = await bob.presence(room);
  assert.deepEqual(p.online.sort(), ['alice', 'bob']);
  // Typed errors: the PROTOCOL codes as ChatError.code.
  await assert.rejects(alice.send(room, 'x'.repeat(5000)), (e) => e instanceof ChatError && e.code === 'too_large' && !e.retryable);
  assert.equal(alice.pending().find((o) => o.text.length === 5000).state, 'failed');
  await assert.rejects(alice.send(unique('other'), 'not a member'), (e) => e.code === 'not_member');
  await assert.rejects(alice.join('dm:bob:carol'), (e) => e.code === 'forbidden' && e.op === 'join');
  await assert.rejects(alice.join('bad room!'), (e) => e.code === 'bad_request');
  // history() reads a page without delivering it again.
  const h = await bob.history(room, { after: 2, limit: 2 });
  assert.deepEqual(h.messages.map((m) => m.seq), [3, 4]);
  assert.equal(h.more, true);
  assert.equal(bob.got(room).length, 6);
  await report('alice', room, alice.got(room));
  await report('bob', room, bob.got(room));
});

test('edits and deletes: live on the other gateway, applied to the store, caught up by a late client', { skip }, async () => {
  const room = unique('mod');
  const alice = client('alice', [URL(0)]);
  const bob = client('bob', [URL(1)]);
  await alice.join(room);
  await bob.join(room);
  const changes = [];
  bob.on('edit', (e) => { if (e.room === room) changes.push(e); });
  bob.on('delete', (e) => { if (e.room === room) changes.push(e); });
  const { id } = await alice.send(room, 'hello');
  await waitFor('bob has the message', () => bob.got(room).length === 1);
  const ed = await alice.editMessage(room, id, 'hello, edited');
  assert.equal(ed.target, id);
  await waitFor('the edit on the other gateway', () => changes.length === 1);
  assert.deepEqual([changes[0].op, changes[0].seq, changes[0].message.text, changes[0].message.edited], ['edit', 2, 'hello, edited', true]);
  await assert.rejects(bob.editMessage(room, id, 'not mine'), (e) => e instanceof ChatError && e.code === 'forbidden');
  await alice.deleteMessage(room, id);
  await waitFor('the delete', () => changes.length === 2);
  assert.deepEqual([changes[1].op, changes[1].seq, changes[1].message.deleted], ['delete', 3, true]);
  assert.deepEqual(bob.messages(room).map((m) => [m.seq, m.text, !!m.deleted]), [[1, '', true]]);
  // A client that joins later gets the message as it is now, then the changes.
  const carol = client('carol', [URL(0)]);
  const late = [];
  carol.on('edit', (e) => late.push(e.op));
  carol.on('delete', (e) => late.push(e.op));
  await carol.join(room, { history: 10 });
  await waitFor('carol caught up', () => carol.lastSeq(room) === 3);
  assert.deepEqual(late, ['edit', 'delete']);
  assert.deepEqual(carol.got(room).map((m) => [m.seq, m.text, !!m.deleted]), [[1, '', true]]);
});

test('an expired token: the provider is asked again, the client reconnects and catches up', { skip }, async () => {
  const room = unique('expiry');
  let calls = 0;
  const erin = client('erin', [URL(0)], { token: () => { calls++; return token('erin', 3); }, tokenMarginS: 0 });
  const frank = client('frank', [URL(1)]);
  await erin.join(room);
  await frank.join(room);
  const closes = [];
  erin.on('disconnect', (d) => closes.push(d.code));
  await waitFor('the gateway closes the expired connection', () => closes.length > 0, 20000);
  assert.equal(closes[0], 1008);
  for (let i = 1; i <= 3; i++) await frank.send(room, `while erin reconnects ${i}`);
  await waitFor('erin back with all 3', () => erin.state === 'connected' && erin.got(room).length === 3, 30000);
  assert.ok(calls >= 2, `token provider called ${calls} times`);
  assertDense(erin.got(room), 'erin');
  await report('erin', room, erin.got(room));
});

test('a gateway killed mid-stream: the client moves to the other, syncs, every message once in order', { skip }, async () => {
  const room = unique('kill');
  // First URL: gateway 0. Her first reconnect waits a full second: her
  // socket closes when the kernel closes the killed process's, before the
  // control request below has answered, and with a random wait under the
  // 200 ms cap she could be on gateway 1 again before the test looked (it
  // then never saw her disconnected, and the sends meant for the gap went
  // out on the new connection: a CI run failed so).
  const carol = client('carol', [URL(0), URL(1)], { random: () => 1, backoffBaseMs: 1000 });
  let closed = false;
  carol.on('disconnect', () => { closed = true; });
  const dave = client('dave', [URL(1)]);
  await carol.join(room);
  await dave.join(room);
  await waitFor('carol on gateway 0', () => carol.state === 'connected');
  assert.equal(carol.gateway, 0);
  const N = 80;
  const sent = [];
  const stream = (async () => {
    for (let i = 1; i <= N; i++) {
      sent.push(dave.send(room, `stream ${i}`));
      await new Promise((r) => setTimeout(r, 15));
    }
  })();
  await waitFor('carol receives the first 20', () => carol.got(room).length >= 20);
  closed = false;
  await control('/kill/gateway0', { method: 'POST' });
  await waitFor('carol sees the close', () => closed, 10000);
  assert.equal(carol.state, 'reconnecting');
  // Written while carol has no connection: queued, sent after the reconnect.
  const mine = [1, 2, 3].map((i) => carol.send(room, `carol offline ${i}`));
  assert.ok(carol.pending().some((o) => o.state === 'queued'));
  await stream;
  await Promise.all(sent);
  await Promise.all(mine);
  await waitFor('carol has everything', () => carol.got(room).length === N + 3);
  assert.equal(carol.gateway, 1);
  const got = carol.got(room);
  assertDense(got, 'carol');
  assert.deepEqual(got.filter((m) => m.from === 'dave').map((m) => m.text), Array.from({ length: N }, (_, i) => `stream ${i + 1}`));
  assert.deepEqual(got.filter((m) => m.from === 'carol').map((m) => m.text), ['carol offline 1', 'carol offline 2', 'carol offline 3']);
  await waitFor('dave has everything', () => dave.got(room).length === N + 3);
  assertDense(dave.got(room), 'dave');
  await report('carol', room, got);
  await report('dave', room, dave.got(room));
  await control('/restart/gateway0', { method: 'POST' });
});

test('the ten-line bot of docs/CLIENT.md (examples/pingbot.mjs) answers a ping', { skip }, async (t) => {
  const bot = spawn(process.execPath, ['examples/pingbot.mjs'], { env: { ...process.env, CHATD: `http://127.0.0.1:${GW[0]}` }, stdio: ['ignore', 'inherit', 'inherit'] });
  t.after(() => bot.kill());
  const gina = client('gina', [URL(1)]);
  await gina.join('lobby');
  // The bot joins lobby once it is up; until then a ping finds nobody.
  const deadline = Date.now() + 30000;
  while (!gina.got('lobby').some((m) => m.from === 'pingbot')) {
    assert.ok(Date.now() < deadline, 'no pong from the bot');
    assert.equal(bot.exitCode, null, 'the bot exited');
    await gina.send('lobby', '!ping');
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(gina.got('lobby').find((m) => m.from === 'pingbot').text, 'pong, gina');
});
