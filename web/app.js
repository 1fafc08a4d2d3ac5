// chatd browser client. Protocol: docs/PROTOCOL.md; reconnecting follows its
// "How a client reconnects": per room the highest seq held, dedup by
// (room, seq), gap -> sync, jittered backoff to the same URL (a Service may
// route it to another gateway), after hello sync every room, then resend the
// unacknowledged sends with their original cid.
//
// Untrusted text (messages, user and room names) only ever reaches the page
// through textContent; the page's CSP forbids inline script besides.
'use strict';

const PAGE = 50;               // messages per history page
const SYNC_LIMIT = 200;        // per sync request while catching up
const GAP_RESET = 1000;        // behind more than this: reload the latest page, older ones on scroll
const TYPING_EVERY_MS = 3000;  // send `typing` at most this often while typing
const TYPING_SHOW_MS = 5000;   // show someone's typing this long after their last event
const PRESENCE_MS = 10000;     // presence has no event: poll the open room
const PROBE_TIMEOUT_MS = 10000;
const READ_DELAY_MS = 500;
const BACKOFF_BASE_MS = 500, BACKOFF_MAX_MS = 30000;
const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
const USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;

const $ = (id) => document.getElementById(id);

// el('li', {class: 'x', 'data-seq': 3}, 'text', child...): text nodes only, never HTML.
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) e.setAttribute(k, String(v));
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

const S = {
  user: null, token: null, demo: false,
  ws: null, connected: false, flushed: false, everOpened: false,
  attempt: 0, retryAt: 0, retryTimer: 0, countdown: 0,
  rid: 0, waiting: new Map(),          // rid -> reply callback, for the current socket only
  heartbeat: 25, lastRx: 0, probeAt: 0,
  rooms: new Map(),                    // name -> Room
  current: null,
  outbox: [],                          // {cid, room, text, state: queued|sending|acked|failed, why}
};

// ---------------------------------------------------------------- storage
// sessionStorage: per tab, so two windows of one browser can be two users.
const store = {
  get(k) { try { return JSON.parse(sessionStorage.getItem('chatd.' + k)); } catch { return null; } },
  set(k, v) { try { sessionStorage.setItem('chatd.' + k, JSON.stringify(v)); } catch { /* private mode */ } },
  del(k) { try { sessionStorage.removeItem('chatd.' + k); } catch { /* private mode */ } },
};

function saveOutbox() {
  store.set('outbox', S.outbox.filter((o) => o.state !== 'acked' && o.state !== 'failed')
    .map(({ cid, room, text }) => ({ cid, room, text })));
}

function newCid() {
  // getRandomValues works on plain http:// too (randomUUID needs a secure context).
  const b = crypto.getRandomValues(new Uint8Array(12));
  return 'w' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

// ---------------------------------------------------------------- status
function setStatus(state, text) {
  S.statusState = state;
  S.statusText = text;
  const s = $('status');
  s.dataset.state = state;
  const queued = S.outbox.filter((o) => o.state === 'queued' || o.state === 'sending').length;
  s.textContent = text + (queued && state !== 'connected' ? ` · ${queued} queued` : '');
  $('retry').hidden = state !== 'reconnecting';
}

function refreshStatus() { setStatus(S.statusState, S.statusText); }

let noticeTimer = 0;
function notice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { n.hidden = true; }, 6000);
}

// ---------------------------------------------------------------- tokens
function jwtClaims(token) {
  try {
    const p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(Array.from(atob(p), (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join(''));
    const c = JSON.parse(json);
    return c && typeof c.sub === 'string' ? c : null;
  } catch { return null; }
}

function tokenExpired(token) {
  const c = jwtClaims(token);
  return !c || typeof c.exp !== 'number' || c.exp * 1000 <= Date.now();
}

// The gateway authenticates a history request before it looks at the room,
// so an invalid room name answers 401 for a bad token, 400 for a good one,
// without touching any backend.
async function tokenAccepted(token) {
  try {
    const r = await fetch('/api/rooms/!/messages', { headers: { Authorization: 'Bearer ' + token } });
    return r.status !== 401;
  } catch { return true; } // network trouble says nothing about the token
}

async function devToken(user) {
  const r = await fetch('/api/dev/token', { method: 'POST', body: JSON.stringify({ user }) });
  if (r.status === 404) throw new Error('this server does not issue demo tokens: paste a token');
  if (!r.ok) throw new Error(`the server refused the name (HTTP ${r.status})`);
  return (await r.json()).token;
}

// ---------------------------------------------------------------- sign in / out
async function initSignin() {
  let demo = false;
  try { // an empty body answers 400 when dev tokens are on, 404 when off
    demo = (await fetch('/api/dev/token', { method: 'POST', body: '{}' })).status === 400;
  } catch { /* offline: offer both */ demo = true; }
  S.demo = demo;
  showSigninForm(demo ? 'demo' : 'paste');
}

function showSigninForm(which) {
  $('signin').hidden = false;
  $('app').hidden = true;
  $('signin-demo').hidden = which !== 'demo';
  $('signin-paste').hidden = which !== 'paste';
  $('back-demo').hidden = !S.demo;
  (which === 'demo' ? $('signin-user') : $('signin-token')).focus();
}

async function signinWith(token, user) {
  $('signin-error').textContent = '';
  const c = jwtClaims(token);
  if (!c) throw new Error('that is not a JWT');
  if (tokenExpired(token)) throw new Error('the token has expired (or has no exp)');
  if (!(await tokenAccepted(token))) throw new Error('the server rejected the token');
  start(token, user || c.sub);
}

function start(token, user) {
  S.token = token;
  S.user = user;
  store.set('token', token);
  store.set('user', user);
  store.set('demo', S.demo);
  S.outbox = (store.get('outbox') || []).filter((o) => o && ROOM_RE.test(o.room) && typeof o.text === 'string')
    .map((o) => ({ ...o, state: 'queued' }));
  $('signin').hidden = true;
  $('app').hidden = false;
  $('me').textContent = user;
  $('me').hidden = $('signout').hidden = false;
  const want = store.get('current');
  if (typeof want === 'string' && ROOM_RE.test(want)) openRoom(roomOf(want));
  for (const o of S.outbox) roomOf(o.room);
  renderPendingAll();
  renderRooms();
  connect();
}

function signout() {
  const ws = S.ws;
  S.ws = null;
  if (ws) { ws.onclose = null; ws.close(1000); }
  for (const k of ['token', 'user', 'outbox', 'current']) store.del(k);
  location.reload();
}

// ---------------------------------------------------------------- connection
function wsURL() {
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws?token=' + encodeURIComponent(S.token);
}

function connect() {
  clearTimeout(S.retryTimer);
  clearInterval(S.countdown);
  if (!S.token || S.ws) return;
  if (navigator.onLine === false) { setStatus('offline', 'offline'); return; } // 'online' reconnects
  setStatus(S.everOpened ? 'reconnecting' : 'connecting', S.everOpened ? 'reconnecting…' : 'connecting…');
  const ws = new WebSocket(wsURL());
  S.ws = ws;
  let opened = false;
  ws.onopen = () => { opened = true; };
  ws.onmessage = (e) => {
    if (S.ws !== ws) return;
    S.lastRx = Date.now();
    S.probeAt = 0;
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    if (m && typeof m === 'object') onFrame(m);
  };
  ws.onclose = (e) => { if (S.ws === ws) onClosed(e.code, opened); };
}

// Leaves the socket for good (no more events from it) and schedules a new one.
function dropConnection(code) {
  const ws = S.ws;
  if (!ws) return;
  ws.onclose = ws.onmessage = null;
  try { ws.close(); } catch { /* already closing */ }
  onClosed(code, true);
}

async function onClosed(code, opened) {
  S.ws = null;
  S.connected = S.flushed = false;
  S.waiting.clear();
  // Replies to what was in flight are lost with the socket: nothing may
  // wait for them (the next hello catches up again).
  for (const r of S.rooms.values()) {
    r.catching = r.loading = r.olderBusy = false;
    r.afterCatch = [];
  }
  for (const o of S.outbox) if (o.state === 'sending') o.state = 'queued';
  renderPendingAll();
  if (!S.token) return;
  // An upgrade that failed may be a token the server no longer takes.
  if (!opened && (tokenExpired(S.token) || !(await tokenAccepted(S.token)))) {
    if (S.demo) {
      try { S.token = await devToken(S.user); store.set('token', S.token); } catch { /* retried below */ }
    } else {
      notice('Your token was rejected or has expired: sign in again.');
      setTimeout(signout, 3000);
      return;
    }
  }
  if (navigator.onLine === false) { setStatus('offline', 'offline'); return; }
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** S.attempt);
  const wait = code === 1012 ? 0 : Math.random() * cap; // 1012: restart, go now
  S.attempt = Math.min(S.attempt + 1, 16);
  S.retryAt = Date.now() + wait;
  const tick = () => setStatus('reconnecting', `reconnecting in ${Math.ceil(Math.max(0, S.retryAt - Date.now()) / 1000)} s`);
  tick();
  S.countdown = setInterval(tick, 1000);
  S.retryTimer = setTimeout(connect, wait);
}

function sendFrame(o) {
  if (!S.ws || !S.connected) return false;
  S.ws.send(JSON.stringify(o));
  return true;
}

// A request whose reply (ok / error / ...) goes to cb; lost with the socket.
function request(o, cb) {
  o.rid = ++S.rid;
  if (!sendFrame(o)) return false;
  if (cb) S.waiting.set(o.rid, cb);
  return true;
}

function onFrame(m) {
  if (m.rid !== undefined && S.waiting.has(m.rid)) {
    const cb = S.waiting.get(m.rid);
    S.waiting.delete(m.rid);
    cb(m);
    return;
  }
  switch (m.op) {
    case 'hello': onHello(m); break;
    case 'msg': onLiveMsg(m); break;
    case 'typing': onTyping(m); break;
    case 'read': onReadEvent(m); break;
    case 'joined': case 'left': onMemberEvent(m); break;
    case 'error': if (m.code !== 'rate_limited') notice(`${m.code}: ${m.message}`); break;
    default: break;
  }
}

function onHello(m) {
  S.connected = true;
  S.everOpened = true;
  S.attempt = 0;
  S.user = m.user;
  if (typeof m.heartbeat === 'number' && m.heartbeat > 0) S.heartbeat = m.heartbeat;
  setStatus('connected', `connected · gateway ${m.gateway}`);
  request({ op: 'rooms' }, (m) => { if (m.op === 'rooms') applyRooms(m.rooms); });
  // Every room with messages on screen catches up from its last seq; the
  // others only need their head, which `rooms` gives. Then the outbox.
  const loaded = [...S.rooms.values()].filter((r) => r.loaded);
  let left = loaded.length;
  const one = () => { if (--left === 0) flushOutbox(); };
  if (left === 0) flushOutbox();
  for (const r of loaded) catchUp(r, one);
  if (S.current) refreshPresence(S.current);
}

// Liveness: the server's pings are invisible to page scripts, so after a
// silent heartbeat the page asks something and gives the socket up if no
// answer comes (a half-open TCP connection never reports a close).
setInterval(() => {
  if (!S.connected) return;
  const now = Date.now();
  if (S.probeAt && now - S.probeAt > PROBE_TIMEOUT_MS) { dropConnection(4000); return; }
  if (!S.probeAt && now - S.lastRx > S.heartbeat * 1000) {
    S.probeAt = now;
    request({ op: 'rooms' }, (m) => { if (m.op === 'rooms') applyRooms(m.rooms); });
  }
}, 2000);

setInterval(() => {
  if (S.connected && S.current && document.visibilityState === 'visible') refreshPresence(S.current);
}, PRESENCE_MS);

// ---------------------------------------------------------------- rooms
function roomOf(name) {
  let r = S.rooms.get(name);
  if (!r) {
    r = {
      name, head: 0, read: 0,
      loaded: false, lo: 0, last: 0,   // window [lo, ...]; last: highest seq with none missing below it
      msgs: new Map(), catching: false, olderBusy: false,
      typing: new Map(), online: [], readServer: 0, // read: shown; readServer: the server's mark
      joinedAt: 0,                     // when our join was answered (see applyRooms)
      list: el('ol', { class: 'messages', 'data-room': name }),
    };
    S.rooms.set(name, r);
  }
  return r;
}

function dmPeer(name) {
  if (!name.startsWith('dm:')) return null;
  const [, a, b] = name.split(':');
  return a === S.user ? b : a;
}

function label(name) {
  const peer = dmPeer(name);
  return peer ? '@' + peer : '#' + name;
}

function unread(r) { return Math.max(0, r.head - r.read); }

function applyRooms(list) {
  if (!Array.isArray(list)) return;
  const seen = new Set();
  for (const x of list) {
    if (!x || typeof x.room !== 'string') continue;
    const r = roomOf(x.room);
    seen.add(x.room);
    r.head = Math.max(r.head, x.seq | 0);
    r.read = Math.max(r.read, x.read | 0);
    r.readServer = Math.max(r.readServer, x.read | 0);
  }
  // Rooms left from another tab disappear, unless a send is waiting for them
  // or we joined them just now (the gateway may read the list before it
  // has stored a join sent earlier).
  for (const name of [...S.rooms.keys()]) {
    const r = S.rooms.get(name);
    if (!seen.has(name) && Date.now() - r.joinedAt > 10000 &&
        !S.outbox.some((o) => o.room === name && o.state !== 'acked')) dropRoom(name);
  }
  if (!S.current && list.length) openRoom(roomOf([...seen].sort()[0]));
  renderRooms();
  if (S.current && !S.current.loaded) loadLatest(S.current);
}

function dropRoom(name) {
  S.rooms.delete(name);
  if (S.current && S.current.name === name) {
    S.current = null;
    store.del('current');
    renderRoom();
  }
}

function renderRooms() {
  const ul = $('rooms');
  ul.replaceChildren();
  const names = [...S.rooms.keys()].sort();
  for (const name of names) {
    const r = S.rooms.get(name);
    const n = S.current === r ? 0 : unread(r);
    const b = el('button', { type: 'button', title: name },
      el('span', { class: 'name' }, label(name)),
      el('span', { class: 'unread', hidden: n === 0, 'aria-label': 'unread' }, String(n)));
    b.addEventListener('click', () => openRoom(r));
    ul.append(el('li', { 'data-room': name, class: S.current === r ? 'active' : null }, b));
  }
  $('no-rooms').hidden = names.length > 0;
  const total = names.reduce((t, n) => t + (S.rooms.get(n) === S.current ? 0 : unread(S.rooms.get(n))), 0);
  document.title = (total ? `(${total}) ` : '') + 'chatd';
}

function openRoom(r) {
  const prev = S.current;
  // Leaving a room the user had on screen: what it showed counts as read.
  if (prev && prev !== r && prev.loaded && document.visibilityState === 'visible') markRead(prev, prev.last);
  S.current = r;
  store.set('current', r.name);
  $('app').classList.add('room-open');
  renderRoom();
  renderRooms();
  if (!r.loaded && S.connected) loadLatest(r);
  if (S.connected) refreshPresence(r);
  scrollToBottom();
  maybeRead();
}

function renderRoom() {
  const r = S.current;
  $('room-title').textContent = r ? label(r.name) : 'No room open';
  $('leave').hidden = !r;
  $('text').disabled = $('send').disabled = !r;
  $('timeline').replaceChildren(...(r ? [r.list] : []));
  renderOnline();
  renderTyping();
  if (!r) $('app').classList.remove('room-open');
}

function joinRoom(name) {
  if (!request({ op: 'join', room: name }, (m) => {
    if (m.op !== 'ok') { notice(`cannot join ${name}: ${m.message || m.code}`); return; }
    const r = roomOf(name);
    r.joinedAt = Date.now();
    r.head = Math.max(r.head, m.seq | 0);
    openRoom(r);
  })) notice('not connected: try again when the status says connected');
}

// ---------------------------------------------------------------- messages
function atBottom() {
  const t = $('timeline');
  return t.scrollHeight - t.scrollTop - t.clientHeight < 40;
}

function scrollToBottom() {
  const t = $('timeline');
  t.scrollTop = t.scrollHeight;
}

function fmtTime(ts) {
  const d = new Date(typeof ts === 'number' ? ts : Date.now());
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function msgNode(m) {
  return el('li', { class: 'msg' + (m.from === S.user ? ' mine' : ''), 'data-seq': m.seq, 'data-from': m.from },
    el('div', { class: 'meta' }, el('span', { class: 'from' }, m.from), el('time', {}, fmtTime(m.ts))),
    el('div', { class: 'text' }, m.text));
}

// Inserts a message of a loaded room in seq order; false if already held
// (the server delivers at least once; (room, seq) identifies a message).
function addMsg(r, m) {
  if (!Number.isInteger(m.seq) || m.seq < r.lo || r.msgs.has(m.seq) || typeof m.text !== 'string') {
    while (r.msgs.has(r.last + 1)) r.last++;
    return false;
  }
  r.msgs.set(m.seq, m);
  r.head = Math.max(r.head, m.seq);
  while (r.msgs.has(r.last + 1)) r.last++;
  const node = msgNode(m);
  let before = null; // first node of a higher seq, or the first pending one
  for (let c = r.list.lastElementChild; c; c = c.previousElementSibling) {
    if (c.classList.contains('pending') || (c.dataset.seq && +c.dataset.seq > m.seq)) before = c;
    else break;
  }
  r.list.insertBefore(node, before);
  if (m.from === S.user && m.cid) settle(m.cid);
  r.typing.delete(m.from);
  return true;
}

function onLiveMsg(m) {
  if (typeof m.room !== 'string') return;
  const r = roomOf(m.room);
  if (!r.loaded) { // not on screen yet: only its count matters
    r.head = Math.max(r.head, m.seq | 0);
    if (m.from === S.user && m.cid) settle(m.cid);
    if (m.from === S.user && r.read === m.seq - 1) markRead(r, m.seq);
    renderRooms();
    return;
  }
  const stick = r === S.current && atBottom();
  addMsg(r, m);
  if (m.from === S.user && r.read === m.seq - 1) markRead(r, m.seq); // own message: nothing new to read
  if (r.last < r.head) catchUp(r);
  if (stick) scrollToBottom();
  if (r === S.current) { renderTyping(); maybeRead(); }
  renderRooms();
}

// sync from the last seq held until `more` is false; done() after the last page.
function catchUp(r, done) {
  if (r.catching) { if (done) r.afterCatch = (r.afterCatch || []).concat(done); return; }
  if (r.head - r.last > GAP_RESET) { resetWindow(r); loadLatest(r, done); return; }
  r.catching = true;
  const finish = () => {
    r.catching = false;
    const cbs = (r.afterCatch || []).concat(done ? [done] : []);
    r.afterCatch = [];
    cbs.forEach((f) => f());
  };
  const page = () => {
    const stick = r === S.current && atBottom();
    const from = r.last;
    const sent = request({ op: 'sync', room: r.name, after: r.last, limit: SYNC_LIMIT }, (h) => {
      if (h.op === 'history') {
        h.messages.forEach((m) => addMsg(r, m));
        if (stick) scrollToBottom();
        if (r === S.current) maybeRead();
        renderRooms();
        // Go on while there is more and each page moves last on (a live
        // message may have moved head meanwhile); never spin in place.
        if ((h.more || r.last < r.head) && r.last > from) page(); else finish();
      } else if (h.code === 'unavailable' || h.code === 'rate_limited') {
        setTimeout(page, 500 + Math.random() * 1500);
      } else {
        if (h.code === 'not_member') dropRoom(r.name);
        finish();
      }
    });
    if (!sent) finish(); // the socket is gone; the next hello catches up
  };
  page();
}

function resetWindow(r) {
  r.msgs.clear();
  r.loaded = false;
  r.lo = r.last = 0;
  r.list.replaceChildren();
  renderPending(r);
}

// The newest page of a room not on screen yet; older pages come on scroll up.
function loadLatest(r, done) {
  if (r.loading) { if (done) done(); return; }
  r.loading = true;
  const after = Math.max(0, r.head - PAGE);
  const sent = request({ op: 'sync', room: r.name, after, limit: PAGE }, (h) => {
    r.loading = false;
    if (h.op !== 'history') {
      if (h.code === 'unavailable' || h.code === 'rate_limited') setTimeout(() => loadLatest(r, done), 1000);
      else if (done) done();
      return;
    }
    r.loaded = true;
    r.lo = after + 1;
    r.last = after;
    r.list.prepend(el('li', { class: 'edge' }, after === 0 ? 'This is the beginning of ' + label(r.name) : 'Scroll up for earlier messages'));
    h.messages.forEach((m) => addMsg(r, m));
    if (r === S.current) { scrollToBottom(); maybeRead(); fillUp(r); }
    renderRooms();
    if (h.more || r.last < r.head) catchUp(r, done); else if (done) done();
  });
  if (!sent) { r.loading = false; if (done) done(); }
}

function loadOlder(r) {
  if (!r.loaded || r.lo <= 1 || r.olderBusy || !S.connected) return;
  r.olderBusy = true;
  const after = Math.max(0, r.lo - 1 - PAGE);
  const limit = r.lo - 1 - after;
  const sent = request({ op: 'sync', room: r.name, after, limit }, (h) => {
    r.olderBusy = false;
    if (h.op !== 'history') return;
    const t = $('timeline');
    const fromBottom = t.scrollHeight - t.scrollTop;
    const top = r.list.firstElementChild; // the edge line
    r.lo = after + 1;
    for (const m of h.messages) {
      if (m.seq > after && m.seq < after + 1 + limit && !r.msgs.has(m.seq)) {
        r.msgs.set(m.seq, m);
        r.list.insertBefore(msgNode(m), nextNodeAfter(r, m.seq));
      }
    }
    if (top && top.classList.contains('edge')) {
      top.textContent = after === 0 ? 'This is the beginning of ' + label(r.name) : 'Scroll up for earlier messages';
      r.list.prepend(top);
    }
    if (r === S.current) {
      t.scrollTop = t.scrollHeight - fromBottom; // keep what the user looked at in place
      fillUp(r);
    }
  });
  if (!sent) r.olderBusy = false;
}

// Scrolling up loads older pages; a timeline too short to scroll loads them now.
function fillUp(r) {
  const t = $('timeline');
  if (t.scrollHeight <= t.clientHeight + 60) loadOlder(r);
}

function nextNodeAfter(r, seq) {
  for (const c of r.list.children) if (c.classList.contains('pending') || (c.dataset.seq && +c.dataset.seq > seq)) return c;
  return null;
}

// ---------------------------------------------------------------- sending
function submitText() {
  const r = S.current;
  const input = $('text');
  const text = input.value;
  if (!r || !text.trim()) return;
  if (new TextEncoder().encode(text).length > 4096) { notice('message too long (4096 bytes at most)'); return; }
  const o = { cid: newCid(), room: r.name, text, state: 'queued' };
  S.outbox.push(o);
  saveOutbox();
  input.value = '';
  lastTyping.delete(r.name); // the message clears the others' indicator: the next keystroke announces again
  renderPending(r);
  scrollToBottom();
  if (S.flushed) transmit(o);
  else refreshStatus();
}

function transmit(o) {
  if (o.state !== 'queued') return;
  const sent = request({ op: 'send', room: o.room, text: o.text, cid: o.cid }, (m) => {
    if (m.op === 'ack') {
      o.state = 'acked';
      o.id = m.id;
    } else if (m.code === 'unavailable' || m.code === 'rate_limited' || m.code === 'internal') {
      o.state = 'queued'; // same cid: stored at most once whatever happened to the first try
      setTimeout(() => { if (S.flushed) transmit(o); }, 500 + Math.random() * 2000);
    } else {
      o.state = 'failed';
      o.why = m.message || m.code;
    }
    saveOutbox();
    renderPending(roomOf(o.room));
  });
  if (sent) o.state = 'sending';
  renderPending(roomOf(o.room));
}

function flushOutbox() {
  if (!S.connected) return;
  S.flushed = true;
  for (const o of S.outbox) transmit(o);
  refreshStatus();
}

// The message came back with its seq: the pending line gives way to it.
function settle(cid) {
  const i = S.outbox.findIndex((o) => o.cid === cid);
  if (i < 0) return;
  const o = S.outbox[i];
  S.outbox.splice(i, 1);
  saveOutbox();
  renderPending(roomOf(o.room));
}

const PENDING_TEXT = { queued: 'queued', sending: 'sending…', acked: 'sent', failed: 'not sent' };

function renderPending(r) {
  for (const n of [...r.list.querySelectorAll('li.pending')]) n.remove();
  for (const o of S.outbox) {
    if (o.room !== r.name) continue;
    r.list.append(el('li', { class: 'msg mine pending' + (o.state === 'failed' ? ' failed' : ''), 'data-cid': o.cid, 'data-state': o.state },
      el('div', { class: 'meta' }, el('span', { class: 'from' }, S.user),
        el('span', { class: 'state' }, PENDING_TEXT[o.state] + (o.why ? ': ' + o.why : ''))),
      el('div', { class: 'text' }, o.text)));
  }
}

function renderPendingAll() { for (const r of S.rooms.values()) renderPending(r); }

// ---------------------------------------------------------------- typing, presence, read marks
const lastTyping = new Map();
function onInput() {
  const r = S.current;
  if (!r || !$('text').value || !S.connected) return;
  const now = Date.now();
  if (now - (lastTyping.get(r.name) || 0) < TYPING_EVERY_MS) return;
  lastTyping.set(r.name, now);
  sendFrame({ op: 'typing', room: r.name }); // no rid: nothing answers a success
}

function onTyping(m) {
  if (m.from === S.user || typeof m.room !== 'string' || !S.rooms.has(m.room)) return;
  const r = S.rooms.get(m.room);
  r.typing.set(m.from, Date.now() + TYPING_SHOW_MS);
  if (r === S.current) renderTyping();
  setTimeout(renderTyping, TYPING_SHOW_MS + 50);
}

function renderTyping() {
  const r = S.current;
  const now = Date.now();
  const who = r ? [...r.typing].filter(([, until]) => until > now).map(([u]) => u).sort() : [];
  $('typing').textContent = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…`
    : who.length <= 3 ? `${who.join(', ')} are typing…` : 'several people are typing…';
}

function refreshPresence(r) {
  request({ op: 'presence', room: r.name }, (m) => {
    if (m.op !== 'presence' || !Array.isArray(m.online)) return;
    r.online = m.online.filter((u) => typeof u === 'string').sort();
    if (r === S.current) renderOnline();
  });
}

function renderOnline() {
  const r = S.current;
  const p = $('online');
  p.replaceChildren();
  if (!r || r.online.length === 0) return;
  p.append('Online: ', ...r.online.map((u) => el('span', { class: 'user', 'data-user': u }, u)));
}

function onMemberEvent(m) {
  if (typeof m.room !== 'string') return;
  if (m.user === S.user) { // another tab of ours joined or left
    if (m.op === 'left') { dropRoom(m.room); renderRooms(); } else request({ op: 'rooms' }, (x) => { if (x.op === 'rooms') applyRooms(x.rooms); });
    return;
  }
  if (S.current && S.current.name === m.room) refreshPresence(S.current);
}

function onReadEvent(m) {
  if (m.from !== S.user || !S.rooms.has(m.room)) return;
  const r = S.rooms.get(m.room);
  r.read = Math.max(r.read, m.seq | 0);
  r.readServer = Math.max(r.readServer, m.seq | 0);
  renderRooms();
}

function markRead(r, seq) {
  r.read = Math.max(r.read, seq);
  if (seq <= r.readServer || !S.connected) return;
  r.readServer = seq;
  request({ op: 'read', room: r.name, seq }, () => {});
  renderRooms();
}

// The open room is read up to what is on screen when the page is visible
// and the user is at the bottom; marks go out at most every READ_DELAY_MS.
let readTimer = 0;
function maybeRead() {
  if (readTimer) return;
  readTimer = setTimeout(() => {
    readTimer = 0;
    const r = S.current;
    if (!r || !r.loaded || !S.connected || document.visibilityState !== 'visible' || !atBottom()) return;
    markRead(r, r.last);
  }, READ_DELAY_MS);
}

// ---------------------------------------------------------------- wiring
function wire() {
  $('signin-demo').addEventListener('submit', async (e) => {
    e.preventDefault();
    const user = $('signin-user').value.trim();
    if (!USER_RE.test(user)) { $('signin-error').textContent = 'letters, digits, _ . - only (1 to 64)'; return; }
    $('signin-btn').disabled = true;
    try { await signinWith(await devToken(user), user); } catch (err) { $('signin-error').textContent = err.message; }
    $('signin-btn').disabled = false;
  });
  $('signin-paste').addEventListener('submit', async (e) => {
    e.preventDefault();
    try { await signinWith($('signin-token').value.trim()); } catch (err) { $('signin-error').textContent = err.message; }
  });
  $('use-token').addEventListener('click', () => showSigninForm('paste'));
  $('use-demo').addEventListener('click', () => showSigninForm('demo'));
  $('signout').addEventListener('click', signout);
  $('retry').addEventListener('click', () => { S.attempt = 0; connect(); });
  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('join-room').value.trim();
    if (!ROOM_RE.test(name) || name.startsWith('dm:')) { notice('room names: A-Z a-z 0-9 _ . : - (for a direct message use the form below)'); return; }
    $('join-room').value = '';
    joinRoom(name);
  });
  $('dm-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const peer = $('dm-user').value.trim();
    if (!USER_RE.test(peer) || peer === S.user) { notice('a user name of someone else: A-Z a-z 0-9 _ . -'); return; }
    $('dm-user').value = '';
    joinRoom('dm:' + [S.user, peer].sort().join(':')); // A < B: ids are ASCII, so code-unit order is byte order
  });
  $('leave').addEventListener('click', () => {
    const r = S.current;
    if (r) request({ op: 'leave', room: r.name }, (m) => { if (m.op === 'ok') { dropRoom(r.name); renderRooms(); } });
  });
  $('back').addEventListener('click', () => $('app').classList.remove('room-open'));
  $('composer').addEventListener('submit', (e) => { e.preventDefault(); submitText(); });
  $('text').addEventListener('input', onInput);
  // A timeline that was at its bottom stays there when the window (or a
  // phone's keyboard) resizes it.
  let stuck = true;
  new ResizeObserver(() => { if (stuck) scrollToBottom(); }).observe($('timeline'));
  $('timeline').addEventListener('scroll', () => {
    stuck = atBottom();
    if (!S.current) return;
    if ($('timeline').scrollTop < 60) loadOlder(S.current);
    maybeRead();
  });
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') { maybeRead(); if (S.current && S.connected) refreshPresence(S.current); } });
  window.addEventListener('online', () => { if (S.token && !S.ws) { S.attempt = 0; connect(); } });
  window.addEventListener('offline', () => { if (!S.connected && S.token) setStatus('offline', 'offline'); });
}

wire();
{
  const token = store.get('token');
  const user = store.get('user');
  S.demo = !!store.get('demo');
  if (typeof token === 'string' && typeof user === 'string' && !tokenExpired(token)) start(token, user);
  else initSignin();
}
