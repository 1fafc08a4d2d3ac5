// chatd client: the careful client of docs/PROTOCOL.md ("How a client
// reconnects") as a library. One ChatClient holds one WebSocket at a time and
// hides its life: it reconnects with full-jitter backoff to the next of its
// gateway URLs, asks the token provider again when a token has expired or an
// upgrade failed, keeps per room the highest seq delivered, turns a gap or a
// reconnect into `sync`, drops duplicates by (room, seq), and delivers each
// room's messages to the application once each, in seq order. Sends go
// through an outbox: every send carries a `cid`, and one not acknowledged is
// sent again with the same `cid` after the next `hello` (after the rooms have
// caught up), so the server stores it at most once.
//
// Frames are parsed by op through EVENTS below; an op it does not know is
// ignored (and handed to 'event' listeners), which is what a version 1 client
// must do with later extensions of the protocol.
//
// No dependencies: browsers and Node 22+ have a global WebSocket; on Node 18
// and 20 pass one (e.g. `import WebSocket from 'ws'`) as options.WebSocket.

/** The error codes of docs/PROTOCOL.md, and the client's own. */
export const ErrorCode = Object.freeze({
  BAD_REQUEST: 'bad_request',
  NOT_MEMBER: 'not_member',
  NOT_FOUND: 'not_found',  // edit, delete: no such message in the room (extension 3)
  TOO_LARGE: 'too_large',
  RATE_LIMITED: 'rate_limited',
  FORBIDDEN: 'forbidden',
  UNAVAILABLE: 'unavailable',
  INTERNAL: 'internal',
  // client side: the connection closed before the reply came; no reply
  // within requestTimeoutMs; the client was closed.
  DISCONNECTED: 'disconnected',
  TIMEOUT: 'timeout',
  CLOSED: 'closed',
});

/** A request the server refused (code from the error reply) or that the client gave up. */
export class ChatError extends Error {
  constructor(code, message, extra) {
    super(message || code);
    this.name = 'ChatError';
    this.code = code;
    if (extra) {
      if (extra.rid !== undefined) this.rid = extra.rid;
      if (extra.stored !== undefined) this.stored = extra.stored; // send: "no" | "maybe"
      if (extra.op !== undefined) this.op = extra.op;
      if (extra.room !== undefined) this.room = extra.room;
    }
  }

  /** Worth retrying as is (with backoff; a send with the same cid). */
  get retryable() {
    return this.code === 'unavailable' || this.code === 'rate_limited' || this.code === 'internal' ||
      this.code === 'disconnected' || this.code === 'timeout';
  }
}

const RETRY_CODES = new Set(['unavailable', 'rate_limited', 'internal']);
const DEFAULTS = {
  backoffBaseMs: 500,      // PROTOCOL: wait random in [0, min(30 s, 0.5 s * 2^attempt)]
  backoffMaxMs: 30000,
  retryMinMs: 500,         // a send/sync answered unavailable or rate_limited
  retryMaxMs: 2500,
  syncLimit: 200,
  requestTimeoutMs: 30000,
  probeTimeoutMs: 10000,   // liveness: no answer this long after a probe drops the socket
  tokenMarginS: 10,        // a token expiring within this is fetched anew before connecting
  keepMessages: 500,       // per room: the latest messages kept for messages() and edits/deletes
};

/** Decodes a JWT's claims (no verification: only to read exp); null if not a JWT. */
export function jwtClaims(token) {
  try {
    const p = String(token).split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(p + '==='.slice((p.length + 3) % 4));
    const json = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
    const c = JSON.parse(json);
    return c && typeof c === 'object' ? c : null;
  } catch { return null; }
}

/** A random cid: 'c' + 24 hex digits (crypto.getRandomValues also works on plain http://). */
export function newCid() {
  const b = new Uint8Array(12);
  // A runtime without a global crypto (this module imports nothing): 96
  // bits of Math.random are unique enough for a cid, which only has to
  // differ from the user's other cids in the room.
  if (globalThis.crypto && globalThis.crypto.getRandomValues) globalThis.crypto.getRandomValues(b);
  else for (let i = 0; i < b.length; i++) b[i] = Math.floor(Math.random() * 256);
  return 'c' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** dm:A:B of two users (byte order: ids are ASCII). */
export function dmRoom(a, b) {
  return 'dm:' + [a, b].sort().join(':');
}

export class ChatClient {
  /**
   * @param {object} o
   * @param {string|string[]} o.url  gateway WebSocket URL(s), e.g. ws://host:8080/ws
   * @param {string|(() => string|Promise<string>)} o.token  a JWT, or a provider called for a fresh one
   */
  constructor(o) {
    if (!o || !o.url || (Array.isArray(o.url) && o.url.length === 0)) throw new TypeError('ChatClient: url is required');
    if (!o.token) throw new TypeError('ChatClient: token is required');
    this.urls = Array.isArray(o.url) ? o.url.slice() : [o.url];
    this.tokenProvider = typeof o.token === 'function' ? o.token : () => o.token;
    this.WebSocket = o.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') throw new TypeError('ChatClient: no WebSocket: pass options.WebSocket (e.g. the ws package) on Node < 22');
    this.opt = { ...DEFAULTS, ...o };
    this.random = o.random || Math.random;
    this.autoTrack = o.autoTrack !== false;
    this.state = 'idle';          // idle | connecting | connected | reconnecting | closed
    this.user = null;
    this.gateway = null;
    this.heartbeat = 25;
    this.ws = null;
    this.ready = false;           // hello seen on the current socket
    this.flushed = false;         // post-hello catch-up done, outbox flowing
    this.attempt = 0;
    this.urlIndex = -1;
    this.retryAt = 0;
    this.timers = new Set();
    this.token = null;
    this.tokenSuspect = false;    // the last upgrade failed: ask the provider again
    this.rid = 0;
    this.waiting = new Map();     // rid -> {resolve, reject, timer}
    this.deferred = [];           // requests waiting for a connection
    this.rooms = new Map();       // room -> {last, buffer: Map(seq, msg), syncing, waiters}
    this.store = new Map();       // room -> Map(id, message): the latest keepMessages, as they are now
    this.outbox = [];             // {cid, room, text, state, id, error, resolve, reject, promise}
    this.listeners = new Map();
    this.lastRx = 0;
    this.probeAt = 0;
    for (const [room, last] of Object.entries(o.rooms || {})) this.track(room, last);
    for (const x of o.outbox || []) this.enqueue(x.room, x.text, x.cid);
  }

  // ---------------------------------------------------------------- events

  /** Subscribes; returns a function that unsubscribes. */
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    const s = this.listeners.get(name);
    if (s) s.delete(fn);
  }

  emit(name, arg) {
    const s = this.listeners.get(name);
    if (!s) return;
    for (const fn of [...s]) {
      try { fn(arg); } catch (e) { this.listenerError(e); }
    }
  }

  // A listener's exception must not break the client's own bookkeeping.
  listenerError(e) {
    setTimeout(() => { throw e; }, 0);
  }

  setState(state, extra) {
    this.state = state;
    this.emit('state', { state, gateway: this.gateway, attempt: this.attempt, ...extra });
  }

  // ---------------------------------------------------------------- timers

  later(fn, ms) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  cancel(t) {
    if (t) { clearTimeout(t); this.timers.delete(t); }
  }

  // The pause before retrying a sync or send refused for now (unavailable,
  // rate_limited): at least retryMinMs, plus a random part whose bound
  // doubles with each refusal in a row (up to backoffMaxMs).
  jitter(tries = 0) {
    const span = Math.min(this.opt.backoffMaxMs, (this.opt.retryMaxMs - this.opt.retryMinMs) * 2 ** Math.min(tries, 16));
    return this.opt.retryMinMs + this.random() * span;
  }

  // ---------------------------------------------------------------- connection

  /** Starts connecting (and keeps reconnecting until close()). */
  connect() {
    if (this.state === 'closed') throw new ChatError('closed', 'client closed');
    if (this.ws || this.connectTimer || this.opening) return this;
    if (!this.livenessTimer) this.livenessTimer = setInterval(() => this.checkLiveness(), 2000);
    this.open();
    return this;
  }

  /** Reconnects at once (e.g. a "retry now" button), skipping the current wait. */
  reconnectNow() {
    if (this.state === 'closed' || this.ws || this.opening) return;
    this.cancel(this.connectTimer);
    this.connectTimer = null;
    this.attempt = 0;
    this.open();
  }

  /** Closes for good: no reconnect; pending requests and sends are rejected. */
  close() {
    if (this.state === 'closed') return;
    const ws = this.ws;
    this.ws = null;
    if (ws) { detach(ws); try { ws.close(1000); } catch { /* closing */ } }
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    clearInterval(this.livenessTimer);
    this.connectTimer = null;
    this.failRequests('closed');
    for (const d of this.deferred) d.reject(new ChatError('closed', 'client closed'));
    this.deferred = [];
    for (const o of this.outbox) if (o.state !== 'acked') o.reject(new ChatError('closed', 'client closed'));
    this.ready = this.flushed = false;
    this.setState('closed');
  }

  async open() {
    this.connectTimer = null;
    this.opening = true;
    try { await this.openSocket(); } finally { this.opening = false; }
  }

  async openSocket() {
    const reconnecting = this.attempt > 0 || this.everOpened;
    this.setState(reconnecting ? 'reconnecting' : 'connecting', { retryIn: 0 });
    let token;
    try {
      token = await this.freshToken();
    } catch (e) {
      if (this.state === 'closed') return;
      this.emit('error', new ChatError('unavailable', 'token provider failed: ' + (e && e.message), { op: 'token' }));
      this.scheduleReconnect(0);
      return;
    }
    if (this.state === 'closed' || this.ws) return;
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    const base = this.urls[this.urlIndex];
    const url = base + (base.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (e) {
      this.emit('error', new ChatError('bad_request', 'cannot open ' + base + ': ' + (e && e.message)));
      this.scheduleReconnect(0);
      return;
    }
    this.ws = ws;
    ws.__opened = false;
    ws.onopen = () => { ws.__opened = true; };
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      this.lastRx = Date.now();
      this.probeAt = 0;
      let m;
      try { m = JSON.parse(typeof e.data === 'string' ? e.data : String(e.data)); } catch { return; }
      if (m && typeof m === 'object' && !Array.isArray(m)) this.onFrame(m);
    };
    ws.onerror = () => {};      // the close event follows and carries what there is to know
    ws.onclose = (e) => { if (this.ws === ws) this.onClosed(e.code, e.reason, ws.__opened); };
  }

  // The provider is asked at the first connect, when the token held has
  // expired (or will within tokenMarginS), and after a failed upgrade or a
  // close for an expired token (1008): a browser cannot see the upgrade's
  // 401, so any failed upgrade makes the token suspect.
  async freshToken() {
    const c = this.token ? jwtClaims(this.token) : null;
    const expired = c && typeof c.exp === 'number' && c.exp - this.opt.tokenMarginS <= Date.now() / 1000;
    if (!this.token || expired || this.tokenSuspect) {
      const t = await this.tokenProvider();
      if (typeof t !== 'string' || !t) throw new Error('token provider gave no token');
      this.token = t;
      this.tokenSuspect = false;
    }
    return this.token;
  }

  onClosed(code, reason, opened) {
    this.ws = null;
    const wasReady = this.ready;
    this.ready = this.flushed = false;
    this.failRequests('disconnected');
    for (const r of this.rooms.values()) {
      r.syncing = false;
      r.retry = this.cancel(r.retry);
      this.finishCatchUp(r);
    }
    for (const o of this.outbox) if (o.state === 'sending') this.setOutbox(o, 'queued');
    if (this.state === 'closed') return;
    if (!opened || !wasReady || code === 1008) this.tokenSuspect = true;
    this.emit('disconnect', { code, reason, gateway: this.gateway });
    this.scheduleReconnect(code);
  }

  scheduleReconnect(code) {
    const cap = Math.min(this.opt.backoffMaxMs, this.opt.backoffBaseMs * 2 ** this.attempt);
    const wait = code === 1012 && this.attempt === 0 ? 0 : this.random() * cap; // 1012: restart, go now
    this.attempt = Math.min(this.attempt + 1, 30);
    this.retryAt = Date.now() + wait;
    this.setState('reconnecting', { code, retryIn: wait });
    this.connectTimer = this.later(() => this.open(), wait);
  }

  // Page scripts cannot see WebSocket pings: after a silent heartbeat the
  // client asks something, and drops a socket that does not answer (a
  // half-open TCP connection never reports a close).
  checkLiveness() {
    if (!this.ready || !this.ws) return;
    const now = Date.now();
    if (this.probeAt && now - this.probeAt > this.opt.probeTimeoutMs) {
      this.dropSocket('no answer to a probe');
      return;
    }
    if (!this.probeAt && now - this.lastRx > this.heartbeat * 1000) {
      this.probeAt = now;
      this.request({ op: 'rooms' }).then((m) => this.emit('rooms', m.rooms), () => {});
    }
  }

  // Gives the current socket up (no more events from it) and reconnects.
  dropSocket(reason) {
    const ws = this.ws;
    if (!ws) return;
    detach(ws);
    try { ws.close(); } catch { /* closing */ }
    this.onClosed(4000, reason, true);
  }

  // ---------------------------------------------------------------- requests

  sendFrame(o) {
    if (!this.ws || !this.ready) return false;
    this.ws.send(JSON.stringify(o));
    return true;
  }

  // One request on the current socket; its reply (or error reply) settles it.
  request(o) {
    return new Promise((resolve, reject) => {
      const rid = ++this.rid;
      if (!this.sendFrame({ ...o, rid })) { reject(new ChatError('disconnected', 'not connected')); return; }
      // Every request is answered (typing has no rid): a connection that
      // leaves one unanswered this long is dead or stuck; a new one is
      // better, and the outbox resends there.
      const timer = this.later(() => {
        this.waiting.delete(rid);
        reject(new ChatError('timeout', `no reply to ${o.op} within ${this.opt.requestTimeoutMs} ms`, { op: o.op, room: o.room }));
        this.dropSocket(`no reply to ${o.op}`);
      }, this.opt.requestTimeoutMs);
      this.waiting.set(rid, { resolve, reject, timer, op: o.op, room: o.room });
    });
  }

  // A request of the application: waits for a connection if there is none.
  call(o) {
    if (this.state === 'closed') return Promise.reject(new ChatError('closed', 'client closed'));
    if (this.ready) return this.request(o);
    return new Promise((resolve, reject) => this.deferred.push({ o, resolve, reject }));
  }

  failRequests(code) {
    const w = [...this.waiting.values()];
    this.waiting.clear();
    for (const x of w) {
      this.cancel(x.timer);
      x.reject(new ChatError(code, code === 'closed' ? 'client closed' : 'connection lost before the reply', { op: x.op, room: x.room }));
    }
  }

  /**
   * Joins a room; resolves {room, seq: head}. A room not tracked yet is
   * tracked from its head, or from `history` messages before it (those are
   * delivered as 'message' events first, in order).
   */
  async join(room, { history = 0 } = {}) {
    const m = await this.call({ op: 'join', room });
    if (this.autoTrack && !this.rooms.has(room)) this.track(room, Math.max(0, (m.seq | 0) - Math.max(0, history | 0)));
    return { room: m.room, seq: m.seq };
  }

  async leave(room) {
    await this.call({ op: 'leave', room });
    this.untrack(room);
  }

  /** The user's rooms: [{room, seq: head, read}]. Tracked rooms behind their head catch up. */
  async roomList() {
    const m = await this.call({ op: 'rooms' });
    const list = Array.isArray(m.rooms) ? m.rooms : [];
    for (const x of list) {
      const r = x && this.rooms.get(x.room);
      if (r && Number.isInteger(x.seq) && x.seq > r.last && this.flushed) this.catchUp(x.room);
    }
    return list;
  }

  /** A page of history as the server has it: {messages, more} (not delivered as 'message'). */
  async history(room, { after = 0, limit = 100 } = {}) {
    const m = await this.call({ op: 'sync', room, after, limit });
    return { room: m.room, messages: Array.isArray(m.messages) ? m.messages : [], more: !!m.more };
  }

  /** Who is online in a room: {online: [user], truncated}. */
  async presence(room) {
    const m = await this.call({ op: 'presence', room });
    return { room: m.room, online: Array.isArray(m.online) ? m.online : [], truncated: !!m.truncated };
  }

  /** Marks a room read up to seq. */
  async read(room, seq) {
    await this.call({ op: 'read', room, seq });
  }

  /**
   * Edits one of the user's messages (extension 3 of docs/PROTOCOL.md);
   * resolves {id, target, room, cid} once the edit is durable. The edit
   * reaches every member (this client too) as an 'edit' event at its seq. A
   * retry with the same cid is applied once; refusals: forbidden (not the
   * user's), not_found (no such message, or deleted).
   */
  async editMessage(room, id, text, { cid } = {}) {
    const m = await this.call({ op: 'edit', room, id, text, cid: cid || newCid() });
    return { id: m.id, target: m.target, room: m.room, cid: m.cid };
  }

  /** Deletes one of the user's messages; like editMessage, then a 'delete' event. */
  async deleteMessage(room, id, { cid } = {}) {
    const m = await this.call({ op: 'delete', room, id, cid: cid || newCid() });
    return { id: m.id, target: m.target, room: m.room, cid: m.cid };
  }

  /**
   * The room's latest messages as they are now (edits and deletes applied),
   * in seq order: up to keepMessages of those delivered. Copies.
   */
  messages(room) {
    const st = this.store.get(room);
    return st ? [...st.values()].sort((a, b) => a.seq - b.seq).map((m) => ({ ...m })) : [];
  }

  /** Tells the room's members online that the user is typing (no reply; false if not connected). */
  typing(room) {
    return this.sendFrame({ op: 'typing', room });
  }

  // ---------------------------------------------------------------- rooms and seqs

  /**
   * Delivers the room's messages with seq > after from now on, in order,
   * each once (catching up by sync when connected). A room already tracked
   * keeps its position.
   */
  track(room, after = 0) {
    if (this.rooms.has(room)) return;
    this.rooms.set(room, { last: Math.max(0, after | 0), buffer: new Map(), syncing: false, retry: null, tries: 0 });
    if (this.ready) this.catchUp(room);
  }

  untrack(room) {
    const r = this.rooms.get(room);
    if (r) this.cancel(r.retry);
    this.rooms.delete(room);
    this.store.delete(room);
  }

  /** The highest seq delivered for a room with nothing missing below it (null if not tracked). */
  lastSeq(room) {
    const r = this.rooms.get(room);
    return r ? r.last : null;
  }

  /** {room: lastSeq} of every tracked room, e.g. to save and pass back as options.rooms. */
  positions() {
    return Object.fromEntries([...this.rooms].map(([k, r]) => [k, r.last]));
  }

  // Every message, live or from a sync, passes here: (room, seq) already
  // delivered is dropped, the next one is delivered, a later one waits in the
  // buffer while a sync fetches what is missing.
  accept(m, live) {
    if (typeof m.room !== 'string' || !Number.isInteger(m.seq) || m.seq < 1) return;
    let r = this.rooms.get(m.room);
    if (!r) {
      if (!this.autoTrack) { this.publish(m); return; } // the application orders it
      this.track(m.room, m.seq - 1);
      r = this.rooms.get(m.room);
    }
    if (m.seq <= r.last || r.buffer.has(m.seq)) return; // at-least-once: seen already
    if (m.seq > r.last + 1) {
      r.buffer.set(m.seq, m);
      if (live) this.catchUp(m.room);
      return;
    }
    this.deliver(r, m);
    this.drain(r);
  }

  // The buffered messages that follow the last one delivered.
  drain(r) {
    while (r.buffer.has(r.last + 1)) {
      const n = r.buffer.get(r.last + 1);
      r.buffer.delete(n.seq);
      this.deliver(r, n);
    }
  }

  // A history page's `first`: the server no longer holds seqs (r.last,
  // to] (retention deleted them), so no sync can bring them. What the
  // buffer holds of them is delivered, the rest is skipped (a `gone`
  // event says which), and the messages after them flow again.
  skipGone(r, room, to) {
    const from = r.last + 1;
    for (const s of [...r.buffer.keys()].sort((a, b) => a - b)) {
      if (s > to) break;
      const m = r.buffer.get(s);
      r.buffer.delete(s);
      this.deliver(r, m);
    }
    if (to > r.last) r.last = to;
    this.emit('gone', { room, from, to });
    this.drain(r);
  }

  deliver(r, m) {
    r.last = m.seq;
    // An own message back with its seq settles the outbox entry of its cid
    // (also when it comes through a sync after a lost ack).
    if (m.op !== 'edit' && m.op !== 'delete' && m.cid && m.from === this.user) {
      const o = this.outbox.find((x) => x.cid === m.cid && x.room === m.room);
      if (o) this.settle(o, m);
    }
    this.publish(m);
  }

  // To the application: a message (kept in the store), or an edit or
  // delete (applied to the store) as its own event.
  publish(m) {
    if (m.op === 'edit' || m.op === 'delete') m = this.applyChange(m);
    else this.keep(m);
    this.emit(EVENT_NAMES[m.op] || 'message', m);
  }

  // The message store: a room's latest keepMessages messages by id.
  keep(m) {
    if (typeof m.id !== 'string') return;
    let st = this.store.get(m.room);
    if (!st) this.store.set(m.room, st = new Map());
    st.set(m.id, { ...m });
    if (st.size > this.opt.keepMessages) st.delete(st.keys().next().value); // the oldest delivered
  }

  // An edit or delete (in seq order, like messages) applied to the stored
  // target; the event is handed on with `message`: the target as it is now,
  // or null when the client does not hold it (it started later). An edit of
  // a deleted message changes nothing (its text is gone; in history such an
  // edit has text "").
  applyChange(m) {
    const st = this.store.get(m.room);
    const t = st && st.get(m.target);
    if (t && !t.deleted) {
      if (m.op === 'edit' && typeof m.text === 'string' && m.text !== '') { t.text = m.text; t.edited = true; }
      if (m.op === 'delete') { t.text = ''; t.deleted = true; delete t.edited; }
    }
    return { ...m, message: t ? { ...t } : null };
  }

  // sync from the last seq delivered until `more` is false and nothing is
  // missing below the buffer; done() after the last page, whatever happened.
  catchUp(room, done) {
    const r = this.rooms.get(room);
    if (!r) { if (done) done(); return; }
    if (done) (r.waiters ||= []).push(done);
    if (r.syncing || r.retry) return;
    if (!this.ready) { this.finishCatchUp(r); return; } // the next hello catches up
    r.syncing = true;
    const from = r.last;
    this.request({ op: 'sync', room, after: r.last, limit: this.opt.syncLimit }).then((h) => {
      if (this.rooms.get(room) !== r) return;
      r.syncing = false;
      if (Number.isInteger(h.first) && h.first - 1 > r.last) this.skipGone(r, room, h.first - 1);
      for (const m of Array.isArray(h.messages) ? h.messages : []) this.accept({ ...m, room }, false);
      if (r.last > from) r.tries = 0;
      const behind = r.buffer.size > 0;
      if ((h.more || behind) && r.last > from) this.catchUp(room);
      else if (h.more || behind) r.retry = this.later(() => { r.retry = null; this.catchUp(room); }, this.jitter(r.tries++));
      else this.finishCatchUp(r);
    }, (e) => {
      if (this.rooms.get(room) !== r) return;
      r.syncing = false;
      if (RETRY_CODES.has(e.code)) {
        r.retry = this.later(() => { r.retry = null; this.catchUp(room); }, this.jitter(r.tries++));
      } else if (e.code === 'not_member' || e.code === 'forbidden' || e.code === 'bad_request') {
        this.untrack(room);
        this.emit('error', e);
        this.finishCatchUp(r);
      } else {
        this.finishCatchUp(r); // disconnected: the next hello catches up
      }
    });
  }

  finishCatchUp(r) {
    const w = r.waiters || [];
    r.waiters = [];
    for (const f of w) f();
  }

  // ---------------------------------------------------------------- sending

  /**
   * Sends a message; resolves {id, cid, room} once it is durable (ack).
   * While disconnected it waits in the outbox; it is resent with the same
   * cid after a reconnect or an `unavailable`/`rate_limited` reply, and
   * rejected (ChatError) only for a refusal for good (too_large, not_member...)
   * or close().
   */
  send(room, text, { cid } = {}) {
    return this.enqueue(room, text, cid).promise;
  }

  enqueue(room, text, cid) {
    const o = { cid: cid || newCid(), room, text, state: 'queued', id: null, error: null, tries: 0 };
    o.promise = new Promise((resolve, reject) => { o.resolve = resolve; o.reject = reject; });
    o.promise.catch(() => {}); // a rejection the caller did not await is reported through 'outbox'
    this.outbox.push(o);
    this.emit('outbox', snapshot(o));
    if (this.flushed) this.transmit(o);
    return o;
  }

  /** The sends not settled yet: [{cid, room, text, state, id, error}] (state queued|sending|acked|failed). */
  pending() {
    return this.outbox.map(snapshot);
  }

  /** Drops a failed (or any) outbox entry. */
  discard(cid) {
    const i = this.outbox.findIndex((o) => o.cid === cid);
    if (i < 0) return;
    const [o] = this.outbox.splice(i, 1);
    if (o.state !== 'acked') o.reject(new ChatError('closed', 'discarded'));
    o.state = 'discarded';
    this.emit('outbox', snapshot(o));
  }

  setOutbox(o, state, error) {
    o.state = state;
    o.error = error || null;
    this.emit('outbox', snapshot(o));
  }

  transmit(o) {
    if (o.state !== 'queued' || !this.flushed) return;
    this.setOutbox(o, 'sending');
    const attempt = o.attempt = {}; // only the latest try's answer counts
    this.request({ op: 'send', room: o.room, text: o.text, cid: o.cid }).then((m) => {
      if (o.state !== 'sending' || o.attempt !== attempt) return;
      o.id = m.id;
      this.setOutbox(o, 'acked');
      o.resolve({ id: m.id, cid: o.cid, room: o.room });
    }, (e) => {
      if (o.state !== 'sending' || o.attempt !== attempt) return;
      if (e.code === 'disconnected' || e.code === 'timeout') {
        this.setOutbox(o, 'queued'); // resent after the next hello, same cid
      } else if (RETRY_CODES.has(e.code)) {
        this.setOutbox(o, 'queued', e); // same cid: stored at most once whatever the first try did
        this.later(() => this.transmit(o), this.jitter(o.tries++));
      } else {
        this.setOutbox(o, 'failed', e);
        o.reject(e);
      }
    });
  }

  // The message came back with its seq: its send is over.
  settle(o, m) {
    const i = this.outbox.indexOf(o);
    if (i >= 0) this.outbox.splice(i, 1);
    const was = o.state;
    o.state = 'delivered';
    o.id = m.id;
    o.seq = m.seq;
    if (was !== 'acked') o.resolve({ id: m.id, cid: o.cid, room: o.room });
    this.emit('outbox', snapshot(o));
  }

  // ---------------------------------------------------------------- frames

  onFrame(m) {
    if (m.rid !== undefined && this.waiting.has(m.rid)) {
      const w = this.waiting.get(m.rid);
      this.waiting.delete(m.rid);
      this.cancel(w.timer);
      if (m.op === 'error') {
        w.reject(new ChatError(typeof m.code === 'string' ? m.code : 'internal', m.message,
          { rid: m.rid, stored: m.stored, op: w.op, room: w.room }));
      } else {
        w.resolve(m);
      }
      return;
    }
    this.emit('event', m);
    const h = typeof m.op === 'string' && Object.hasOwn(EVENTS, m.op) ? EVENTS[m.op] : null;
    if (h) h(this, m); // anything else: a later extension of the protocol, ignored
  }

  onHello(m) {
    this.ready = true;
    this.everOpened = true;
    this.attempt = 0;
    this.tokenSuspect = false;
    this.user = typeof m.user === 'string' ? m.user : this.user;
    this.gateway = m.gateway;
    this.lastRx = Date.now();
    this.probeAt = 0;
    if (typeof m.heartbeat === 'number' && m.heartbeat > 0) this.heartbeat = m.heartbeat;
    this.setState('connected', { user: this.user });
    this.emit('hello', m);
    const deferred = this.deferred;
    this.deferred = [];
    for (const d of deferred) this.request(d.o).then(d.resolve, d.reject);
    // Every tracked room catches up from its last seq, then the outbox goes
    // out in order: a send the server had stored comes back through the sync
    // first and is not sent again.
    const rooms = [...this.rooms.keys()];
    let left = rooms.length;
    const ws = this.ws;
    const flush = () => {
      if (this.ws !== ws || !this.ready) return;
      this.flushed = true;
      // Acked sends whose message the catch-up did not bring (a room not
      // tracked) are over: nothing to resend.
      for (const o of this.outbox.filter((x) => x.state === 'acked')) {
        this.outbox.splice(this.outbox.indexOf(o), 1);
        o.state = 'done';
        this.emit('outbox', snapshot(o));
      }
      for (const o of this.outbox) this.transmit(o);
      this.emit('synced', { rooms });
    };
    if (left === 0) flush();
    for (const room of rooms) this.catchUp(room, () => { if (--left === 0) flush(); });
  }
}

// Server events by op. A frame with an op not listed here is ignored (after
// the 'event' listeners saw it): a version 1 client must survive additions.
// Events of a room's seq stream go through accept() (dedup, order, gaps);
// edits and deletes (extension 3) take seqs too, so they are ordered with the
// messages and a sync after a gap brings them.
const EVENTS = {
  hello: (c, m) => c.onHello(m),
  msg: (c, m) => c.accept(m, true),
  edit: (c, m) => c.accept(m, true),
  delete: (c, m) => c.accept(m, true),
  typing: (c, m) => c.emit('typing', m),
  read: (c, m) => c.emit('read', m),
  joined: (c, m) => c.emit('joined', m),
  left: (c, m) => {
    if (m.user === c.user) c.untrack(m.room); // left from another connection of ours
    c.emit('left', m);
  },
  error: (c, m) => c.emit('error', new ChatError(typeof m.code === 'string' ? m.code : 'internal', m.message, { rid: m.rid })),
};
const EVENT_NAMES = { msg: 'message', edit: 'edit', delete: 'delete' };

function snapshot(o) {
  return { cid: o.cid, room: o.room, text: o.text, state: o.state, id: o.id, seq: o.seq, error: o.error };
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {};
}
