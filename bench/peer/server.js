// The peer chatd is measured against in `make bench`: what a team would
// otherwise pick, Socket.IO 4 with @socket.io/redis-adapter, doing
// chatbench's job. Run two of these behind one Redis; a message sent to one
// reaches room members on the other through Redis pub/sub.
//
// The job, kept equal to chatd's where Socket.IO can do it:
//   - auth: an HS256 JWT in the `token` query parameter (chatbench signs it
//     with the same secret it gives chatd), checked on every connection;
//   - "join" {room}            -> socket joins the room, ack {seq: 0}
//   - "send" {room, cid, text} -> "msg" {room, from, cid, text, ts} to every
//                                 member of the room (sender included), ack {id}
// What it does NOT do (chatd does): persist, sequence, dedup by cid, sync
// after a reconnect, rate-limit. The comparison is therefore generous to
// the peer.
//
// Usage: node server.js --port P --redis redis://127.0.0.1:6379 (secret from
// CHATD_JWT_SECRET). Prints "ready" on stdout once listening.
"use strict";

const crypto = require("crypto");
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function arg(name, def) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

const port = Number(arg("--port", "3000"));
const redisUrl = arg("--redis", "redis://127.0.0.1:6379");
const secret = process.env.CHATD_JWT_SECRET || "";
if (!secret) {
  console.error("peer: CHATD_JWT_SECRET is not set");
  process.exit(2);
}

function b64urlDecode(s) {
  return Buffer.from(s.replace(/-/g, "+").replace(/_/g, "/"), "base64");
}

// The user id, or null for a bad token. HS256 only, exp required.
function verifyToken(tok) {
  if (typeof tok !== "string") return null;
  const parts = tok.split(".");
  if (parts.length !== 3) return null;
  const mac = crypto.createHmac("sha256", secret).update(parts[0] + "." + parts[1]).digest();
  const sig = b64urlDecode(parts[2]);
  if (sig.length !== mac.length || !crypto.timingSafeEqual(sig, mac)) return null;
  let hdr, claims;
  try {
    hdr = JSON.parse(b64urlDecode(parts[0]).toString());
    claims = JSON.parse(b64urlDecode(parts[1]).toString());
  } catch (e) {
    return null;
  }
  if (hdr.alg !== "HS256" || typeof claims.sub !== "string" || !claims.sub) return null;
  if (typeof claims.exp !== "number" || claims.exp * 1000 < Date.now()) return null;
  return claims.sub;
}

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("peer: redis pub:", e.message));
  sub.on("error", (e) => console.error("peer: redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer((req, res) => {
    res.writeHead(req.url === "/healthz" ? 200 : 404);
    res.end();
  });
  // WebSocket only, like chatd: no long-polling fallback, no compression.
  const io = new Server(server, {
    transports: ["websocket"],
    perMessageDeflate: false,
    serveClient: false,
    adapter: createAdapter(pub, sub),
  });

  io.use((socket, next) => {
    const user = verifyToken(socket.handshake.query.token);
    if (!user) return next(new Error("unauthorized"));
    socket.data.user = user;
    next();
  });

  let nextId = 0;
  io.on("connection", (socket) => {
    socket.on("join", (req, ack) => {
      if (!req || typeof req.room !== "string" || typeof ack !== "function") return;
      socket.join(req.room);
      ack({ room: req.room, seq: 0 });
    });
    socket.on("send", (req, ack) => {
      if (typeof ack !== "function") return;
      if (!req || typeof req.room !== "string" || typeof req.text !== "string") {
        return ack({ code: "bad_request" });
      }
      if (!socket.rooms.has(req.room)) return ack({ code: "not_member" });
      const id = `${process.pid}-${++nextId}`;
      io.to(req.room).emit("msg", {
        room: req.room, id, from: socket.data.user, cid: req.cid, text: req.text, ts: Date.now(),
      });
      ack({ room: req.room, id, cid: req.cid });
    });
  });

  server.listen(port, "127.0.0.1", () => console.log("ready"));
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 3000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error("peer:", e);
  process.exit(1);
});
