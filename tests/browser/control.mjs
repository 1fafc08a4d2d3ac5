// The line protocol between an e2e script and test_browser.py, which owns
// the cluster: ask("kill gateway0") prints "@kill gateway0" and waits for
// "ok" on stdin; step() prints progress for the test's log.
import assert from 'node:assert/strict';
import readline from 'node:readline';

const stdin = readline.createInterface({ input: process.stdin });
const lines = [];
let lineWaiter = null;
stdin.on('line', (l) => { if (lineWaiter) { const w = lineWaiter; lineWaiter = null; w(l); } else lines.push(l); });

export async function ask(cmd) {
  console.log('@' + cmd);
  const reply = lines.length ? lines.shift() : await new Promise((res) => { lineWaiter = res; });
  assert.equal(reply, 'ok', `${cmd}: ${reply}`);
}

export const step = (s) => console.log(`step: ${s}`);
