// The chat page in Debian's firefox-esr (headless), driven by puppeteer-core
// over WebDriver BiDi (no browser download): alice on gateway 0, bob on
// gateway 1. Shorter than e2e.mjs (chromium), which covers every feature of
// the page; this one covers what a browser engine could change: sign-in,
// live messages both ways, text that must not become markup, the page's CSP,
// and the WebSocket reconnect after gateway 0 is SIGKILLed (with a message
// queued while offline), then the catch-up by sync.
// Same contract with test_browser.py: "@kill gateway0" / "@restart gateway0"
// on stdout, "ok" on stdin; the last line is "@result {json}".
//
// env: CHATD_GW0, CHATD_GW1 (ports), FIREFOX (default /usr/bin/firefox-esr)
import puppeteer from 'puppeteer-core';
import assert from 'node:assert/strict';
import { ask, step } from './control.mjs';

const GW = [process.env.CHATD_GW0, process.env.CHATD_GW1];
const WAIT = 30000;
const RECONNECT_WAIT = 90000;
assert.ok(GW[0] && GW[1], 'CHATD_GW0 and CHATD_GW1 must be set');


const browser = await puppeteer.launch({
  browser: 'firefox', executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr', headless: true,
});
console.log(`browser: ${await browser.version()}`);
const problems = [];

async function openUser(name, port) {
  const ctx = await browser.createBrowserContext(); // own storage: one user per context
  const page = await ctx.newPage();
  await page.setViewport({ width: 640, height: 760 });
  page.setDefaultTimeout(WAIT);
  // Firefox reports a refused WebSocket connection (expected while gateway 0
  // is down) as a script error; anything else is a real one.
  page.on('pageerror', (e) => {
    if (!/can.t establish a connection to the server at ws:/.test(e.message)) problems.push(`${name}: uncaught ${e.message}`);
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content.Security.Policy|Refused to/i.test(m.text())) problems.push(`${name}: ${m.text()}`);
  });
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForSelector('#signin-demo', { visible: true });
  await page.locator('#signin-user').fill(name);
  await page.click('#signin-btn');
  await page.waitForSelector('#status[data-state="connected"]');
  assert.equal(await page.$eval('#me', (e) => e.textContent), name);
  return page;
}

async function enter(page, sel, text) {
  await page.locator(sel).fill(text);
  await page.focus(sel);
  await page.keyboard.press('Enter');
}

function timeline(page) {
  return page.evaluate(() => ({
    room: document.querySelector('#timeline ol')?.dataset.room,
    msgs: [...document.querySelectorAll('#timeline li.msg[data-seq]')].map((li) => ({
      seq: +li.dataset.seq, from: li.dataset.from, text: li.querySelector('.text').textContent })),
    pending: [...document.querySelectorAll('#timeline li.msg.pending')].length,
  }));
}

async function waitShown(page, texts, timeout = WAIT) {
  await page.waitForFunction((want) => {
    const have = new Set([...document.querySelectorAll('#timeline li.msg[data-seq] .text')].map((e) => e.textContent));
    return want.every((t) => have.has(t)) && !document.querySelector('#timeline li.msg.pending');
  }, { timeout }, texts);
}

step('sign in: alice on gateway 0, bob on gateway 1');
const alice = await openUser('alice', GW[0]);
const bob = await openUser('bob', GW[1]);

step('join lobby; messages both ways');
for (const p of [alice, bob]) {
  await enter(p, '#join-room', 'lobby');
  await p.waitForSelector('#rooms li.active[data-room="lobby"]');
}
const sent = [];
const say = async (page, text) => { sent.push(text); await enter(page, '#text', text); await waitShown(page, [text]); };
await say(alice, 'Hello from Firefox, gateway 0');
await waitShown(bob, sent);
const xss = '<img src=x onerror="window.__pwned=1"> <b>text, not bold</b>';
await say(bob, xss);
await waitShown(alice, sent);
assert.equal(await alice.evaluate(() => document.querySelectorAll('#timeline img, #timeline b').length), 0, 'message text became HTML');
assert.equal(await alice.evaluate(() => window.__pwned), undefined, 'message text ran script');

step('gateway 0 killed: alice reconnects, the message she queued goes out once');
await ask('kill gateway0');
await alice.waitForSelector('#status[data-state="reconnecting"], #status[data-state="connecting"]');
await say(bob, 'While you were away');
const offline = 'Typed in Firefox while offline';
sent.push(offline);
await enter(alice, '#text', offline);
await alice.waitForSelector('#timeline li.pending[data-state="queued"]');
await ask('restart gateway0');
await alice.waitForSelector('#status[data-state="connected"]', { timeout: RECONNECT_WAIT });
await waitShown(alice, sent);
await waitShown(bob, sent);
await new Promise((r) => setTimeout(r, 1500)); // late duplicates would land now

const result = {};
for (const [who, page] of [['alice', alice], ['bob', bob]]) {
  const tl = await timeline(page);
  assert.equal(tl.room, 'lobby');
  const seqs = tl.msgs.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `${who}: seqs not consecutive: ${seqs}`);
  assert.deepEqual(tl.msgs.map((m) => m.text), sent, `${who}: timeline differs from what was sent`);
  assert.equal(tl.pending, 0, `${who}: pending sends left`);
  result[who] = tl.msgs;
}
assert.deepEqual(problems, [], 'page errors');
await browser.close();
console.log('@result ' + JSON.stringify({ room: 'lobby', pages: result }));
process.exit(0);
