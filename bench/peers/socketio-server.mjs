// The seed's stack as a peer for bench/peers.sh: Node socket.io 4.8 serving
// the `/sync` namespace of the seed's README (SYNC_STORE_API.md), with the
// items in memory. It stands in for the original NestJS service, which kept
// them in PostgreSQL through Prisma; here nothing is durable, so it is the
// floor of what that stack costs per connection and per message.
//
//   PORT=3501 API_KEY=... node bench/peers/socketio-server.mjs
//
// What it does, per the seed: a device connects to `/sync` with `userId` and
// `instanceId` in the query and `apiKey` in the handshake auth; it joins its
// user's room and is sent `pending-updates` (always `[]`: no offline queue);
// `sync:set {key, value, metadata?}` bumps the item's version and the user's
// sequence, answers the ack with the item, and emits `sync:update` to the
// user's other devices.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.env.PORT ?? 3501);
const apiKey = process.env.API_KEY ?? "";
const users = new Map(); // userId -> { seq, items: Map<key, {value, metadata, version}> }

const http = createServer((req, res) => {
  res.writeHead(req.url === "/health" ? 200 : 404).end();
});
const io = new Server(http, { serveClient: false, transports: ["websocket"] });
const sync = io.of("/sync");

sync.use((socket, next) => {
  const { userId, instanceId } = socket.handshake.query;
  if (socket.handshake.auth?.apiKey !== apiKey) return next(new Error("INVALID_API_KEY"));
  if (!userId || !instanceId) return next(new Error("INVALID_HANDSHAKE"));
  next();
});

sync.on("connection", (socket) => {
  const { userId, instanceId } = socket.handshake.query;
  const room = `user:${userId}`;
  socket.join(room);
  socket.emit("pending-updates", [], () => {});
  socket.on("sync:set", (payload, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    if (typeof payload?.key !== "string" || payload.value === undefined) {
      return reply({ error: { message: "key and value are required", code: "INVALID_BODY", details: {} } });
    }
    let user = users.get(userId);
    if (!user) users.set(userId, (user = { seq: 0, items: new Map() }));
    const version = (user.items.get(payload.key)?.version ?? 0) + 1;
    user.seq += 1;
    const item = { key: payload.key, value: payload.value, metadata: payload.metadata ?? {}, version, seq: user.seq, instanceId, timestamp: Date.now() };
    user.items.set(payload.key, item);
    socket.to(room).emit("sync:update", item);
    reply(item);
  });
});

http.listen(port, "127.0.0.1");
