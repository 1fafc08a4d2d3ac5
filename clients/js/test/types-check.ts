// Compiled by `tsc --noEmit` only (tests/browser/test_js_client.py): the
// declarations describe the API the docs show; a wrong type fails the build.
import { ChatClient, ChatError, ErrorCode, type ChangeEvent, type Message, type OutboxEntry } from '../chatd-client.js';

const c = new ChatClient({ url: ['ws://a/ws', 'ws://b/ws'], token: async () => 'jwt', rooms: { lobby: 3 } });
const off = c.on('message', (m: Message) => { const n: number = m.seq; void n; });
off();
c.on('state', (s) => { if (s.state === 'reconnecting') void s.retryIn; });
c.on('outbox', (o: OutboxEntry) => { if (o.error) void o.error.code; });
c.on('error', (e) => { if (e.code === ErrorCode.NOT_MEMBER) void e.room; });
async function bot(): Promise<void> {
  c.connect();
  const { seq } = await c.join('lobby', { history: 50 });
  try {
    const ack = await c.send('lobby', 'hello', { cid: 'x1' });
    const id: string = ack.id;
    void id;
  } catch (e) {
    if (e instanceof ChatError && e.retryable) void e.stored;
  }
  c.on('edit', (e: ChangeEvent) => { if (e.message && e.message.edited) void e.message.text; });
  c.on('delete', (e) => { const t: string = e.target; void t; });
  const ed = await c.editMessage('lobby', 'f'.repeat(32), 'better', { cid: 'e1' });
  const target: string = ed.target;
  void target;
  await c.deleteMessage('lobby', ed.target);
  for (const m of c.messages('lobby')) if (m.deleted) void m.seq;
  const h = await c.history('lobby', { after: seq - 10 });
  for (const m of h.messages) void m.text;
  c.close();
}
void bot;
