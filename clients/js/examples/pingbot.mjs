import WebSocket from 'ws'; // Node 18/20 only: browsers and Node 22+ have a WebSocket
import { ChatClient } from 'chatd-client';

const http = process.env.CHATD ?? 'http://127.0.0.1:8080'; // `make run`, which issues demo tokens
const token = async () => (await (await fetch(`${http}/api/dev/token`, { method: 'POST', body: '{"user":"pingbot"}' })).json()).token;
const bot = new ChatClient({ url: http.replace(/^http/, 'ws') + '/ws', token, WebSocket }).connect();
await bot.join('lobby');
bot.on('message', (m) => {
  if (m.from !== bot.user && m.text === '!ping') bot.send(m.room, `pong, ${m.from}`);
});
