// Type declarations of chatd-client.js (hand-written; checked by `tsc --noEmit`
// against test/types-check.ts). Protocol: docs/PROTOCOL.md.

/** Error codes of docs/PROTOCOL.md, and the client's own (disconnected, timeout, closed). */
export type ErrorCodeValue =
  | 'bad_request' | 'not_member' | 'not_found' | 'too_large' | 'rate_limited' | 'forbidden'
  | 'unavailable' | 'internal' | 'disconnected' | 'timeout' | 'closed';

export declare const ErrorCode: Readonly<{
  BAD_REQUEST: 'bad_request';
  NOT_MEMBER: 'not_member';
  NOT_FOUND: 'not_found';
  TOO_LARGE: 'too_large';
  RATE_LIMITED: 'rate_limited';
  FORBIDDEN: 'forbidden';
  UNAVAILABLE: 'unavailable';
  INTERNAL: 'internal';
  DISCONNECTED: 'disconnected';
  TIMEOUT: 'timeout';
  CLOSED: 'closed';
}>;

export declare class ChatError extends Error {
  constructor(code: ErrorCodeValue | string, message?: string, extra?: { rid?: number | string; stored?: 'no' | 'maybe'; op?: string; room?: string });
  readonly name: 'ChatError';
  /** A PROTOCOL code, or a client one; a later server may send codes not listed. */
  readonly code: ErrorCodeValue | string;
  readonly rid?: number | string;
  /** Only on a `send` answered `unavailable`: whether Kafka may have it. */
  readonly stored?: 'no' | 'maybe';
  /** The request's op and room, when the error answers a request. */
  readonly op?: string;
  readonly room?: string;
  /** unavailable, rate_limited, internal, disconnected, timeout. */
  readonly retryable: boolean;
}

/** A message of a room (`msg` frame or `sync` page entry). */
export interface Message {
  op: 'msg';
  room: string;
  seq: number;
  id: string;
  from: string;
  /** Present only when the sender gave one (this client always does). */
  cid?: string;
  /** "" once deleted. */
  text: string;
  ts: number;
  /** Extension 3: the text was edited (history, and the client's store). */
  edited?: boolean;
  /** Extension 3: the message was deleted; its text is gone. */
  deleted?: boolean;
}

/** An edit or delete of a message (extension 3): an event of the room's seq stream. */
export interface ChangeEvent {
  op: 'edit' | 'delete';
  room: string;
  seq: number;
  /** The change's own id. */
  id: string;
  /** Who changed it: the message's sender, or "system" (the server API). */
  from: string;
  cid?: string;
  /** The id of the message changed. */
  target: string;
  /** edit: the new text ("" in history once the message is deleted). */
  text?: string;
  ts: number;
  /** The target as it is now in the client's store, or null if the client does not hold it. */
  message: Message | null;
}

export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface StateEvent {
  state: ConnectionState;
  gateway: number | string | null;
  attempt: number;
  /** reconnecting: ms until the next attempt. */
  retryIn?: number;
  /** reconnecting: the close code that caused it. */
  code?: number;
  user?: string;
}

export type OutboxState = 'queued' | 'sending' | 'acked' | 'delivered' | 'done' | 'failed' | 'discarded';

export interface OutboxEntry {
  cid: string;
  room: string;
  text: string;
  /** queued (waiting for a connection or a retry), sending (waiting for ack), acked (durable,
   *  its message not back yet), delivered (back with its seq), done (acked; its message was
   *  not seen), failed (refused for good: see error), discarded. The last four leave the outbox. */
  state: OutboxState;
  id: string | null;
  seq?: number;
  error: ChatError | null;
}

export interface HelloEvent { op: 'hello'; user: string; gateway: number | string; heartbeat: number }
export interface TypingEvent { op: 'typing'; room: string; from: string }
export interface ReadEvent { op: 'read'; room: string; from: string; seq: number }
export interface MemberEvent { op: 'joined' | 'left'; room: string; user: string }
export interface RoomInfo { room: string; seq: number; read: number }
export interface DisconnectEvent { code: number; reason: string; gateway: number | string | null }

export interface ChatEvents {
  /** Each room's messages once each, in seq order (also those a sync brought). */
  message: Message;
  /** An edit of a message, in seq order with the messages (the store is updated first). */
  edit: ChangeEvent;
  /** A delete of a message, likewise. */
  delete: ChangeEvent;
  /** Seqs from..to of a room the server no longer holds (retention deleted them before this
   *  client caught up): skipped, the room's messages go on after them. */
  gone: { room: string; from: number; to: number };
  state: StateEvent;
  hello: HelloEvent;
  disconnect: DisconnectEvent;
  /** After a hello: every tracked room caught up, the outbox is flowing. */
  synced: { rooms: string[] };
  typing: TypingEvent;
  read: ReadEvent;
  joined: MemberEvent;
  left: MemberEvent;
  /** The answer of a liveness probe (`rooms`). */
  rooms: RoomInfo[];
  outbox: OutboxEntry;
  /** Unsolicited error frames, rooms dropped from tracking (not_member, with room), and a
   *  token provider that threw (code unavailable, op 'token'; the client retries with backoff). */
  error: ChatError;
  /** Every server frame without a pending reply, known op or not (for extensions). */
  event: { op?: string; [field: string]: unknown };
}

export type TokenProvider = () => string | Promise<string>;

export interface ChatClientOptions {
  /** Gateway WebSocket URL(s), e.g. `ws://host:8080/ws`; reconnects go to the next one. */
  url: string | string[];
  /** A JWT, or a function giving one: called at the first connect, when the token held
   *  expires, and after a failed upgrade or a 1008 close. */
  token: string | TokenProvider;
  /** A WebSocket constructor (browsers and Node 22+ have a global one; Node 18/20: the `ws` package). */
  WebSocket?: unknown;
  /** Room positions to resume from: {room: last seq held}. */
  rooms?: Record<string, number>;
  /** Unsent messages to resend (e.g. saved from pending()), with their cid. */
  outbox?: Array<{ room: string; text: string; cid: string }>;
  /** Track rooms from their first live message or join (default true). */
  autoTrack?: boolean;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  retryMinMs?: number;
  retryMaxMs?: number;
  syncLimit?: number;
  requestTimeoutMs?: number;
  probeTimeoutMs?: number;
  tokenMarginS?: number;
  /** Messages kept per room for messages() and for applying edits and deletes (default 500). */
  keepMessages?: number;
  /** Random source in [0, 1) for backoff (tests). */
  random?: () => number;
}

export declare class ChatClient {
  constructor(options: ChatClientOptions);
  readonly state: ConnectionState;
  /** From the last hello. */
  readonly user: string | null;
  readonly gateway: number | string | null;

  on<K extends keyof ChatEvents>(name: K, fn: (arg: ChatEvents[K]) => void): () => void;
  off<K extends keyof ChatEvents>(name: K, fn: (arg: ChatEvents[K]) => void): void;

  connect(): this;
  reconnectNow(): void;
  close(): void;

  /** history: also deliver (as 'message' events, first) that many messages before the head. */
  join(room: string, options?: { history?: number }): Promise<{ room: string; seq: number }>;
  leave(room: string): Promise<void>;
  roomList(): Promise<RoomInfo[]>;
  history(room: string, page?: { after?: number; limit?: number }): Promise<{ room: string; messages: Message[]; more: boolean }>;
  presence(room: string): Promise<{ room: string; online: string[]; truncated: boolean }>;
  read(room: string, seq: number): Promise<void>;
  typing(room: string): boolean;

  send(room: string, text: string, options?: { cid?: string }): Promise<{ id: string; cid: string; room: string }>;
  pending(): OutboxEntry[];
  discard(cid: string): void;
  /** Edits one of the user's messages (forbidden: another's; not_found: none, or deleted). */
  editMessage(room: string, id: string, text: string, options?: { cid?: string }): Promise<{ id: string; target: string; room: string; cid: string }>;
  /** Deletes one of the user's messages. */
  deleteMessage(room: string, id: string, options?: { cid?: string }): Promise<{ id: string; target: string; room: string; cid: string }>;
  /** The room's latest messages as they are now (edits and deletes applied), in seq order. */
  messages(room: string): Message[];

  track(room: string, after?: number): void;
  untrack(room: string): void;
  lastSeq(room: string): number | null;
  positions(): Record<string, number>;
}

export declare function jwtClaims(token: string): Record<string, unknown> | null;
export declare function newCid(): string;
export declare function dmRoom(a: string, b: string): string;
