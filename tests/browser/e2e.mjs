// Drives the chat page in Debian's chromium (headless) through playwright-core:
// alice on gateway 0, bob on gateway 1. Run by test_browser.py, which owns the
// cluster: this script asks it to kill and restart gateway 0 by printing
// "@kill gateway0" / "@restart gateway0" and waits for "ok" on stdin.
// The last line is "@result {json}" with what each page shows, for the
// Python side to compare with PostgreSQL. Any failed check throws (exit 1).
//
// env: CHATD_GW0, CHATD_GW1 (ports), CHATD_SHOTS (screenshot dir),
//      CHROMIUM (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { ask, step } from './control.mjs';
import fs from 'node:fs';
import path from 'node:path';

const GW = [process.env.CHATD_GW0, process.env.CHATD_GW1];
const SHOTS = process.env.CHATD_SHOTS;
const WAIT = 30000;          // any single UI expectation
const RECONNECT_WAIT = 90000; // restart + jittered backoff (up to 16 s per attempt by then)
assert.ok(GW[0] && GW[1], 'CHATD_GW0 and CHATD_GW1 must be set');
assert.ok(SHOTS, 'CHATD_SHOTS must be set');


const args = ['--disable-background-networking', '--disable-component-update', '--disable-default-apps',
  '--disable-sync', '--no-first-run', '--no-default-browser-check', '--disable-domain-reliability',
  '--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication',
  '--disable-breakpad', '--disable-dev-shm-usage'];
if (process.getuid && process.getuid() === 0) args.push('--no-sandbox'); // chromium refuses root otherwise

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args });
const problems = [];

async function openUser(name, port) {
  const ctx = await browser.newContext({ viewport: { width: 640, height: 760 }, deviceScaleFactor: 1 });
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (e) => problems.push(`${name}: uncaught ${e.message}`));
  page.on('console', (m) => {
    // CSP violations are console errors; refused connections while a gateway is down are expected.
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`${name}: ${m.text()}`);
  });
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.locator('#signin-demo').waitFor({ state: 'visible' });
  await page.fill('#signin-user', name);
  await page.click('#signin-btn');
  await page.locator('#status[data-state="connected"]').waitFor();
  assert.equal(await page.textContent('#me'), name);
  return page;
}

async function join(page, room) {
  await page.fill('#join-room', room);
  await page.press('#join-room', 'Enter');
  await page.locator(`#rooms li.active[data-room="${room}"]`).waitFor();
}

async function openRoom(page, room) {
  await page.click(`#rooms li[data-room="${room}"] button`);
  await page.locator(`#timeline ol[data-room="${room}"]`).waitFor();
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

// What the open room shows: messages with their seq, then pending sends.
function timeline(page) {
  return page.evaluate(() => ({
    room: document.querySelector('#timeline ol')?.dataset.room,
    msgs: [...document.querySelectorAll('#timeline li.msg[data-seq]')].map((li) => ({
      seq: +li.dataset.seq, from: li.dataset.from, text: li.querySelector('.text').textContent })),
    pending: [...document.querySelectorAll('#timeline li.msg.pending')].map((li) => ({
      state: li.dataset.state, text: li.querySelector('.text').textContent })),
  }));
}

async function waitShown(page, texts, timeout = WAIT) {
  await page.waitForFunction((want) => {
    const have = new Set([...document.querySelectorAll('#timeline li.msg[data-seq] .text')].map((e) => e.textContent));
    return want.every((t) => have.has(t)) && !document.querySelector('#timeline li.msg.pending');
  }, texts, { timeout });
}

// Every message once, seqs consecutive, in the order they were sent.
function checkTimeline(who, tl, expected) {
  const seqs = tl.msgs.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `${who}: seqs not consecutive: ${seqs}`);
  const texts = tl.msgs.map((m) => m.text);
  assert.deepEqual(texts, expected, `${who}: timeline differs from what was sent`);
  assert.deepEqual(tl.pending, [], `${who}: pending sends left`);
}

async function sideBySide(a, b, file) {
  const [sa, sb] = [await a.screenshot(), await b.screenshot()];
  const ctx = await browser.newContext({ viewport: { width: 1300, height: 800 }, deviceScaleFactor: 1 });
  const p = await ctx.newPage();
  const img = (buf, who) => `<figure><figcaption>${who}</figcaption><img src="data:image/png;base64,${buf.toString('base64')}"></figure>`;
  await p.setContent(`<style>body{margin:0;display:flex;gap:12px;padding:8px;background:#c9ced8;font:14px system-ui}
    figure{margin:0} figcaption{padding:2px 4px;color:#333} img{display:block;border:1px solid #999}</style>
    ${img(sa, 'window 1: alice on gateway 0 (killed and restarted during the test)')}${img(sb, 'window 2: bob on gateway 1')}`);
  await p.screenshot({ path: file, fullPage: true });
  await ctx.close();
}

fs.mkdirSync(SHOTS, { recursive: true });
step('sign in: alice on gateway 0, bob on gateway 1');
const alice = await openUser('alice', GW[0]);
const bob = await openUser('bob', GW[1]);

step('join lobby and random; exchange messages');
await join(alice, 'random');
await join(alice, 'lobby');
await join(bob, 'random');
await join(bob, 'lobby');
const sent = [];
const say = async (page, text) => { sent.push(text); await send(page, text); await waitShown(page, [text]); };
await say(alice, 'Hi Bob! Are you on the other gateway?');
await waitShown(bob, ['Hi Bob! Are you on the other gateway?']);
await say(bob, 'Yes, gateway 1. Every message gets the same seq on both sides.');
const xss = '<img src=x onerror="window.__pwned=1"> <b>this is text, not bold</b>';
await say(bob, xss);
await waitShown(alice, [xss]);

step('safe rendering: markup shows as text');
assert.equal(await alice.evaluate(() => document.querySelectorAll('#timeline img, #timeline b').length), 0, 'message text became HTML');
assert.equal(await alice.evaluate(() => window.__pwned), undefined, 'message text ran script');

step('typing indicator and presence');
await bob.locator('#text').pressSequentially('I am typing', { delay: 20 });
await alice.locator('#typing', { hasText: 'bob is typing' }).waitFor();
await bob.fill('#text', '');
for (const [page, other] of [[alice, 'bob'], [bob, 'alice']]) {
  await page.locator(`#online .user[data-user="${other}"]`).waitFor({ timeout: 15000 }); // presence is polled every 10 s
}

step('unread counts and read marks');
await openRoom(bob, 'random');
await send(bob, 'Anyone in #random?'); // alice is in lobby: random gets an unread message
await waitShown(bob, ['Anyone in #random?']);
await openRoom(bob, 'lobby');
await alice.locator('#rooms li[data-room="random"] .unread:not([hidden])', { hasText: '1' }).waitFor();
await openRoom(alice, 'random');
await waitShown(alice, ['Anyone in #random?']);
await alice.locator('#rooms li[data-room="random"] .unread[hidden]').waitFor({ state: 'attached' });
await openRoom(alice, 'lobby');
// After a reload the counts come from the server (`rooms`) alone: the read
// mark must have been stored. It is written asynchronously, so a reload
// may come before it; a mark that never arrives fails after 10 tries.
let marked = false;
for (let i = 0; i < 10 && !marked; i++) {
  await alice.reload();
  await alice.locator('#status[data-state="connected"]').waitFor();
  await alice.locator('#rooms li[data-room="random"]').waitFor();
  await alice.locator('#timeline li.msg[data-seq]').first().waitFor(); // rooms answered, lobby loaded
  marked = (await alice.locator('#rooms li[data-room="random"] .unread').getAttribute('hidden')) !== null;
  if (!marked) await alice.waitForTimeout(500);
}
assert.ok(marked, 'the read mark of #random was not stored: unread again after reload');

step('direct message: alice starts it, bob finds it in his list');
await alice.fill('#dm-user', 'bob');
await alice.press('#dm-user', 'Enter');
await alice.locator('#rooms li.active[data-room="dm:alice:bob"]').waitFor();
assert.equal(await alice.textContent('#room-title'), '@bob');
await send(alice, 'psst, this one is just for you');
await waitShown(alice, ['psst, this one is just for you']);
await bob.locator('#rooms li[data-room="dm:alice:bob"] .unread:not([hidden])', { hasText: '1' }).waitFor();
assert.equal(await bob.textContent('#rooms li[data-room="dm:alice:bob"] .name'), '@alice');
await openRoom(bob, 'dm:alice:bob');
await waitShown(bob, ['psst, this one is just for you']);
await openRoom(alice, 'lobby');
await openRoom(bob, 'lobby');
await say(alice, 'Great. I will test a gateway crash now.');
await waitShown(bob, sent);
await waitShown(alice, sent);

step('gateway 0 frozen (SIGSTOP), then killed (SIGKILL): alice reconnects, nothing lost or doubled');
await ask('stop gateway0');
const inflight = 'Sent as the gateway froze';
await send(alice, inflight); // written to the socket, never acked: resent after the reconnect
await alice.locator('#timeline li.pending[data-state="sending"]').waitFor();
await ask('kill gateway0');
await alice.locator('#status[data-state="reconnecting"], #status[data-state="connecting"]').waitFor();
for (let i = 1; i <= 3; i++) await say(bob, `While you were away ${i}`);
sent.push(inflight); // alice's resend reaches the server after bob's three
const offline = ['Typed while offline 1', 'Typed while offline 2'];
for (const t of offline) { sent.push(t); await send(alice, t); }
await alice.waitForFunction(() => document.querySelectorAll('#timeline li.pending[data-state="queued"]').length === 3);
assert.match(await alice.textContent('#status'), /3 queued/);
await ask('restart gateway0');
await alice.locator('#status[data-state="connected"]').waitFor({ timeout: RECONNECT_WAIT });
await waitShown(alice, sent);
await waitShown(bob, sent);
// late duplicates (a resend acked twice, a live copy after sync) would land now
await alice.waitForTimeout(1500);

const result = {};
for (const [who, page] of [['alice', alice], ['bob', bob]]) {
  const tl = await timeline(page);
  assert.equal(tl.room, 'lobby');
  checkTimeline(who, tl, sent);
  result[who] = tl.msgs;
}
assert.deepEqual(result.alice, result.bob, 'alice and bob see different timelines');

step('every message of the room delivered again (at-least-once delivery) adds nothing');
// The page's client library (window.chatd.client) gets each stored message
// of the room as a live frame once more, as a redelivery would bring it.
const again = await alice.evaluate(async () => {
  const c = window.chatd.client;
  const h = await c.history('lobby', { after: 0, limit: 1000 });
  for (const m of h.messages) c.onFrame({ ...m, op: 'msg' });
  return h.messages.length;
});
assert.equal(again, sent.length);
await alice.waitForTimeout(300);
checkTimeline('alice after a full re-sync', await timeline(alice), sent);

step('screenshot: two users chatting, bob typing');
await bob.locator('#text').pressSequentially('Got all of them, in order', { delay: 15 });
await alice.locator('#typing', { hasText: 'bob is typing' }).waitFor();
await sideBySide(alice, bob, path.join(SHOTS, 'screenshot-chat.png'));
await bob.fill('#text', '');

step('phone width');
await bob.setViewportSize({ width: 375, height: 740 });
assert.ok(await bob.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'page overflows a phone-width screen');
assert.ok(await bob.locator('#timeline').isVisible());
await bob.screenshot({ path: path.join(SHOTS, 'screenshot-phone.png') });
await bob.click('#back');
assert.ok(await bob.locator('#rooms').isVisible(), 'back does not show the rooms list');
assert.ok(!(await bob.locator('#timeline').isVisible()));

assert.deepEqual(problems, [], 'page errors');
await browser.close();
console.log('@result ' + JSON.stringify({ room: 'lobby', pages: result }));
process.exit(0);
