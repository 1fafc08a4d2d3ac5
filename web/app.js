// chatd browser client: the UI. Everything that speaks the protocol is the
// client library (clients/js/chatd-client.js, served as /chatd-client.js):
// reconnecting with jittered backoff, catching up by sync after a gap or a
// reconnect, dedup by (room, seq), the outbox resent with its cid. This file
// turns the library's events into the page and the user's actions into its
// calls.
//
// Untrusted text (messages, user and room names) only ever reaches the page
// through textContent; the page's CSP forbids inline script besides.
import { ChatClient, jwtClaims, dmRoom } from '/chatd-client.js';

const PAGE = 50;               // messages per history page
const TYPING_EVERY_MS = 3000;  // send `typing` at most this often while typing
const TYPING_SHOW_MS = 5000;   // show someone's typing this long after their last event
const PRESENCE_MS = 10000;     // presence has no event: poll the open room
const READ_DELAY_MS = 500;
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
  client: null, connected: false,
  rooms: new Map(),                    // name -> Room
  current: null,
};

// ---------------------------------------------------------------- storage
// sessionStorage: per tab, so two windows of one browser can be two users.
const store = {
  get(k) { try { return JSON.parse(sessionStorage.getItem('chatd.' + k)); } catch { return null; } },
  set(k, v) { try { sessionStorage.setItem('chatd.' + k, JSON.stringify(v)); } catch { /* private mode */ } },
  del(k) { try { sessionStorage.removeItem('chatd.' + k); } catch { /* private mode */ } },
};

// Unacknowledged sends survive a reload; the library resends them with their cid.
function saveOutbox() {
  if (!S.client) return;
  store.set('outbox', S.client.pending().filter((o) => o.state === 'queued' || o.state === 'sending')
    .map(({ cid, room, text }) => ({ cid, room, text })));
}

// ---------------------------------------------------------------- status
function setStatus(state, text) {
  S.statusState = state;
  S.statusText = text;
  const s = $('status');
  s.dataset.state = state;
  const queued = S.client ? S.client.pending().filter((o) => o.state === 'queued' || o.state === 'sending').length : 0;
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
function claimsOf(token) {
  const c = jwtClaims(token);
  return c && typeof c.sub === 'string' ? c : null;
}

function tokenExpired(token) {
  const c = claimsOf(token);
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

// The library's token provider: asked at the first connect, when the token
// expires and after a failed upgrade (which may be a token the server no
// longer takes). Demo mode fetches a new one; a pasted one cannot be renewed.
async function provideToken() {
  if (!tokenExpired(S.token) && await tokenAccepted(S.token)) return S.token;
  if (S.demo) {
    S.token = await devToken(S.user);
    store.set('token', S.token);
    return S.token;
  }
  notice('Your token was rejected or has expired: sign in again.');
  setTimeout(signout, 3000);
  throw new Error('token rejected');
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
  const c = claimsOf(token);
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
  const saved = (store.get('outbox') || []).filter((o) => o && ROOM_RE.test(o.room) && typeof o.text === 'string' && typeof o.cid === 'string');
  $('signin').hidden = true;
  $('app').hidden = false;
  $('me').textContent = user;
  $('me').hidden = $('signout').hidden = false;
  const c = new ChatClient({
    url: (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws',
    token: provideToken,
    outbox: saved,
  });
  S.client = c;
  window.chatd = { client: c }; // for the browser console and the browser test
  c.on('state', onState);
  c.on('hello', onHello);
  c.on('message', onMessage);
  c.on('edit', onChange);
  c.on('delete', onChange);
  c.on('outbox', (o) => { saveOutbox(); renderPending(roomOf(o.room)); refreshStatus(); });
  c.on('typing', onTyping);
  c.on('read', onReadEvent);
  c.on('joined', onMemberEvent);
  c.on('left', onMemberEvent);
  c.on('rooms', applyRooms);
  c.on('error', (e) => {
    if (e.code === 'not_member' && e.room) dropRoom(e.room); // a room left elsewhere
    else if (e.op === 'token') return; // provideToken said what there is to say; the status shows the retry
    else if (e.code !== 'rate_limited') notice(`${e.code}: ${e.message}`);
  });
  const want = store.get('current');
  if (typeof want === 'string' && ROOM_RE.test(want)) openRoom(roomOf(want));
  for (const o of saved) roomOf(o.room);
  renderPendingAll();
  renderRooms();
  if (navigator.onLine === false) setStatus('offline', 'offline'); // 'online' connects
  else c.connect();
}

function signout() {
  if (S.client) S.client.close();
  S.client = null;
  for (const k of ['token', 'user', 'outbox', 'current']) store.del(k);
  location.reload();
}

// ---------------------------------------------------------------- connection
let countdown = 0;
function onState(e) {
  clearInterval(countdown);
  S.connected = e.state === 'connected';
  if (e.state === 'connected') {
    setStatus('connected', `connected · gateway ${e.gateway}`);
  } else if (e.state === 'reconnecting' && navigator.onLine === false) {
    setStatus('offline', 'offline');
  } else if (e.state === 'reconnecting' && e.retryIn > 0) {
    const at = Date.now() + e.retryIn;
    const tick = () => setStatus('reconnecting', `reconnecting in ${Math.ceil(Math.max(0, at - Date.now()) / 1000)} s`);
    tick();
    countdown = setInterval(tick, 1000);
  } else if (e.state === 'reconnecting') {
    setStatus('reconnecting', 'reconnecting…');
  } else if (e.state === 'connecting') {
    setStatus('connecting', 'connecting…');
  }
  renderPendingAll();
}

function onHello(m) {
  S.user = m.user;
  refreshRooms();
  if (S.current) refreshPresence(S.current);
}

function refreshRooms() {
  S.client.roomList().then(applyRooms, () => {});
}

setInterval(() => {
  if (S.connected && S.current && document.visibilityState === 'visible') refreshPresence(S.current);
}, PRESENCE_MS);

// ---------------------------------------------------------------- rooms
// A room's timeline holds every message from `lo` on (the library delivers
// each room's messages once, in order, from where it tracks it); older pages
// come from history() on scroll up.
function roomOf(name) {
  let r = S.rooms.get(name);
  if (!r) {
    r = {
      name, head: 0, read: 0,
      lo: 0,                           // 0: nothing held yet; else every seq >= lo is held
      msgs: new Map(), olderBusy: false,
      typing: new Map(), online: [], readServer: 0, // read: shown; readServer: the server's mark
      joinedAt: 0,                     // when our join was answered (see applyRooms)
      list: el('ol', { class: 'messages', 'data-room': name }),
    };
    S.rooms.set(name, r);
  }
  return r;
}

function last(r) {
  return (S.client && S.client.lastSeq(r.name)) || 0;
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
  S.roomsKnown = true;
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
  const waiting = new Set(S.client.pending().map((o) => o.room));
  for (const name of [...S.rooms.keys()]) {
    const r = S.rooms.get(name);
    if (!seen.has(name) && Date.now() - r.joinedAt > 10000 && !waiting.has(name)) dropRoom(name);
  }
  if (!S.current && list.length) openRoom(roomOf([...seen].sort()[0]));
  renderRooms();
  if (S.current) ensureLoaded(S.current);
}

function dropRoom(name) {
  S.rooms.delete(name);
  if (S.client) S.client.untrack(name);
  if (S.current && S.current.name === name) {
    S.current = null;
    store.del('current');
    renderRoom();
  }
  renderRooms();
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
  if (prev && prev !== r && prev.lo && document.visibilityState === 'visible') markRead(prev, last(prev));
  S.current = r;
  store.set('current', r.name);
  $('app').classList.add('room-open');
  renderRoom();
  renderRooms();
  ensureLoaded(r);
  if (S.connected) refreshPresence(r);
  scrollToBottom();
  maybeRead();
}

// A room on screen shows its newest PAGE messages: the library is told to
// deliver from there (it catches up by sync); a room it already tracks has
// its messages here already, and older ones come on scroll.
function ensureLoaded(r) {
  if (!S.client) return;
  if (!r.lo && S.client.lastSeq(r.name) === null && !S.roomsKnown) return; // its head is not known yet
  if (!r.lo) {
    const from = S.client.lastSeq(r.name) ?? Math.max(0, r.head - PAGE);
    r.lo = from + 1;
    r.list.prepend(edgeLine(r));
    S.client.track(r.name, from);
  }
  if (r === S.current) fillUp(r);
}

function edgeLine(r) {
  return el('li', { class: 'edge' }, r.lo <= 1 ? 'This is the beginning of ' + label(r.name) : 'Scroll up for earlier messages');
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
  if (!S.connected) { notice('not connected: try again when the status says connected'); return; }
  S.client.join(name).then((m) => {
    const r = roomOf(name);
    r.joinedAt = Date.now();
    r.head = Math.max(r.head, m.seq | 0);
    openRoom(r);
  }, (e) => notice(`cannot join ${name}: ${e.message || e.code}`));
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

// A deleted message keeps its place, without its text; an edited one says so.
function msgNode(m) {
  return el('li', { class: 'msg' + (m.from === S.user ? ' mine' : '') + (m.deleted ? ' deleted' : ''),
    'data-seq': m.seq, 'data-from': m.from },
  el('div', { class: 'meta' }, el('span', { class: 'from' }, m.from), el('time', {}, fmtTime(m.ts)),
    ...(m.edited ? [el('span', { class: 'edited' }, ' (edited)')] : [])),
  el('div', { class: 'text' }, m.deleted ? 'message deleted' : m.text));
}

// Inserts a message in seq order; false if already held. History pages also
// hold edit and delete events: their messages already show the result.
function addMsg(r, m) {
  if ((m.op && m.op !== 'msg') || !Number.isInteger(m.seq) || r.msgs.has(m.seq) || typeof m.text !== 'string') return false;
  r.msgs.set(m.seq, m);
  r.list.insertBefore(msgNode(m), nextNodeAfter(r, m.seq));
  return true;
}

// The library's delivery: each room's messages once each, in order.
function onMessage(m) {
  const r = roomOf(m.room);
  if (!r.lo) { r.lo = m.seq; r.list.prepend(edgeLine(r)); }
  const stick = r === S.current && atBottom();
  r.head = Math.max(r.head, m.seq);
  addMsg(r, m);
  r.typing.delete(m.from);
  if (m.from === S.user && r.read === m.seq - 1) markRead(r, m.seq); // own message: nothing new to read
  if (stick) scrollToBottom();
  if (r === S.current) { renderTyping(); maybeRead(); }
  renderRooms();
}

// An edit or delete (the library applied it to its store: e.message is the
// message as it is now): the line of the message, if shown, is redrawn.
function onChange(e) {
  const r = roomOf(e.room);
  r.head = Math.max(r.head, e.seq);
  const old = [...r.msgs.values()].find((m) => m.id === e.target);
  if (old) {
    // Not in the library's store (a page loaded by history()): applied here.
    const now = e.message ? { ...old, ...e.message }
      : e.op === 'delete' ? { ...old, text: '', deleted: true, edited: false }
        : old.deleted || !e.text ? old : { ...old, text: e.text, edited: true };
    r.msgs.set(old.seq, now);
    const node = r.list.querySelector(`li[data-seq="${old.seq}"]`);
    if (node) node.replaceWith(msgNode(now));
  }
  if (r === S.current) maybeRead();
  renderRooms();
}

function loadOlder(r) {
  if (!r.lo || r.lo <= 1 || r.olderBusy || !S.connected) return;
  r.olderBusy = true;
  const after = Math.max(0, r.lo - 1 - PAGE);
  const limit = r.lo - 1 - after;
  S.client.history(r.name, { after, limit }).then((h) => {
    r.olderBusy = false;
    const t = $('timeline');
    const fromBottom = t.scrollHeight - t.scrollTop;
    for (const m of h.messages) if (m.seq > after && m.seq < after + 1 + limit) addMsg(r, m);
    r.lo = after + 1;
    const top = r.list.querySelector('li.edge');
    if (top) {
      top.textContent = edgeLine(r).textContent;
      r.list.prepend(top);
    }
    if (r === S.current) {
      t.scrollTop = t.scrollHeight - fromBottom; // keep what the user looked at in place
      fillUp(r);
    }
  }, () => { r.olderBusy = false; });
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
  input.value = '';
  lastTyping.delete(r.name); // the message clears the others' indicator: the next keystroke announces again
  S.client.send(r.name, text).catch(() => {}); // a refusal shows on its pending line
  scrollToBottom();
}

// A pending line per send not back yet: queued (not connected), sending…
// (waiting for ack), sent (acked, not yet back with its seq), not sent: reason.
const PENDING_TEXT = { queued: 'queued', sending: 'sending…', acked: 'sent', failed: 'not sent' };

function renderPending(r) {
  for (const n of [...r.list.querySelectorAll('li.pending')]) n.remove();
  if (!S.client) return;
  for (const o of S.client.pending()) {
    if (o.room !== r.name) continue;
    const state = o.state === 'sending' && !S.connected ? 'queued' : o.state;
    const why = o.state === 'failed' && o.error ? ': ' + (o.error.message || o.error.code) : '';
    r.list.append(el('li', { class: 'msg mine pending' + (o.state === 'failed' ? ' failed' : ''), 'data-cid': o.cid, 'data-state': state },
      el('div', { class: 'meta' }, el('span', { class: 'from' }, S.user),
        el('span', { class: 'state' }, PENDING_TEXT[state] + why)),
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
  S.client.typing(r.name);
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
  S.client.presence(r.name).then((p) => {
    r.online = p.online.filter((u) => typeof u === 'string').sort();
    if (r === S.current) renderOnline();
  }, () => {});
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
  if (m.user === S.user) { // another tab of ours joined or left (or a DM peer added us)
    if (m.op === 'left') dropRoom(m.room); else refreshRooms();
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
  S.client.read(r.name, seq).catch(() => {});
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
    if (!r || !r.lo || !S.connected || document.visibilityState !== 'visible' || !atBottom()) return;
    markRead(r, last(r));
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
  $('retry').addEventListener('click', () => { if (S.client) S.client.reconnectNow(); });
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
    joinRoom(dmRoom(S.user, peer));
  });
  $('leave').addEventListener('click', () => {
    const r = S.current;
    if (r) S.client.leave(r.name).then(() => dropRoom(r.name), (e) => notice(`cannot leave: ${e.message || e.code}`));
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
  window.addEventListener('online', () => {
    if (!S.client) return;
    if (S.client.state === 'idle') S.client.connect(); else S.client.reconnectNow();
  });
  window.addEventListener('offline', () => { if (!S.connected && S.client) setStatus('offline', 'offline'); });
}

wire();
{
  const token = store.get('token');
  const user = store.get('user');
  S.demo = !!store.get('demo');
  if (typeof token === 'string' && typeof user === 'string' && !tokenExpired(token)) start(token, user);
  else initSignin();
}
