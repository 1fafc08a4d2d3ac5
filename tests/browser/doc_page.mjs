// The page of docs/CLIENT.md ("A page"), as printed there, in chromium:
// served at /demo.html of gateway 0's origin (playwright answers that path
// and the page's /my-app/chat-token; /chatd-client.js comes from the
// gateway). ida writes first; jon's page opens later, shows ida's message
// from history, writes; ida's page shows jon's message live. Run by
// test_js_client.py, which owns the cluster.
//
// env: CHATD_GW0 (port), CHROMIUM (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const GW = process.env.CHATD_GW0;
assert.ok(GW, 'CHATD_GW0 must be set');
const ORIGIN = `http://127.0.0.1:${GW}`;
const doc = fs.readFileSync(new URL('../../docs/CLIENT.md', import.meta.url), 'utf8');
const section = doc.slice(doc.indexOf('## A page'));
const html = section.slice(section.indexOf('```html') + 7, section.indexOf('```', section.indexOf('```html') + 7));
assert.match(html, /ChatClient/, 'no page found in docs/CLIENT.md');

// A document playwright fulfils has no address of its own, so chromium's
// Local Network Access checks take it for a public page and block its
// WebSocket to 127.0.0.1; served by a real local server, the page would pass.
const args = ['--disable-background-networking', '--no-first-run', '--disable-dev-shm-usage',
  '--disable-features=LocalNetworkAccessChecks'];
if (process.getuid && process.getuid() === 0) args.push('--no-sandbox');
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args });
const problems = [];

async function open(user) {
  const ctx = await browser.newContext();
  await ctx.route(`${ORIGIN}/demo.html`, (r) => r.fulfill({ contentType: 'text/html; charset=utf-8', body: html }));
  await ctx.route(`${ORIGIN}/my-app/chat-token`, async (r) => {
    const t = await fetch(`${ORIGIN}/api/dev/token`, { method: 'POST', body: JSON.stringify({ user }) });
    r.fulfill({ contentType: 'text/plain', body: (await t.json()).token });
  });
  const page = await ctx.newPage();
  page.setDefaultTimeout(30000);
  page.on('pageerror', (e) => problems.push(`${user}: ${e.message}`));
  page.on('console', (m) => console.log(`${user} console: ${m.text()}`));
  await page.goto(`${ORIGIN}/demo.html`);
  await page.waitForFunction(() => document.title === 'connected').catch(async (e) => { console.log('title', await page.title(), problems); throw e; });
  return page;
}

const log = (page) => page.evaluate(() => [...document.querySelectorAll('#log li')].map((li) => li.textContent));
async function say(page, text) {
  await page.fill('#t', text);
  await page.press('#t', 'Enter');
}

const ida = await open('ida');
await say(ida, 'written before jon came');
await ida.waitForFunction(() => document.querySelectorAll('#log li').length === 1);
const jon = await open('jon');
await jon.waitForFunction(() => document.querySelectorAll('#log li').length === 1); // from history
await say(jon, 'hello ida');
await ida.waitForFunction(() => document.querySelectorAll('#log li').length === 2);
await jon.waitForFunction(() => document.querySelectorAll('#log li').length === 2);
await ida.waitForTimeout(500); // a duplicate would land now
const want = ['ida: written before jon came', 'jon: hello ida'];
assert.deepEqual(await log(ida), want);
assert.deepEqual(await log(jon), want);
assert.deepEqual(problems, []);
await browser.close();
console.log('doc page ok');
