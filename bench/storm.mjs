// Reconnect storm (issue 14 §11): DEVICES devices of USERS users, all
// known to the server, go away; each user gets CHANGES changes; then every
// device reconnects at once. Prints one JSON line: the time from `io()` to
// `pending-updates` per device (p50, p99, max), the storm's wall time, and
// how many events the devices got (it must be DEVICES × CHANGES).
//
//   node bench/storm.mjs <url> <admin key> <user prefix>
//
// Uses the official socket.io-client pinned in tests/js.
import { createRequire } from 'node:module';

const require = createRequire(new URL('../tests/js/package.json', import.meta.url));
const { io } = require('socket.io-client');

const [url, key, prefix] = process.argv.slice(2);
const USERS = Number(process.env.USERS ?? 100);
const PER_USER = Number(process.env.DEVICES_PER_USER ?? 10);
const CHANGES = Number(process.env.CHANGES ?? 5);

function connect(userId, instanceId) {
  const started = performance.now();
  const socket = io(`${url}/sync`, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    query: { userId, instanceId },
    auth: { apiKey: key },
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${userId}/${instanceId}: no pending-updates`)), 120000);
    socket.once('connect_error', (e) => reject(e));
    socket.once('pending-updates', (events, ack) => {
      clearTimeout(timer);
      const ms = performance.now() - started;
      if (typeof ack === 'function') ack();
      resolve({ socket, ms, events: events.length });
    });
  });
}

const devices = [];
for (let u = 0; u < USERS; u++) for (let d = 0; d < PER_USER; d++) devices.push([`${prefix}-${u}`, `dev-${d}`]);

// 1. Every device is known: connected once, acked its pending-updates.
for (let i = 0; i < devices.length; i += 100) {
  const batch = await Promise.all(devices.slice(i, i + 100).map(([u, d]) => connect(u, d)));
  await new Promise((r) => setTimeout(r, 100)); // let the acks land
  for (const { socket } of batch) socket.disconnect();
}
await new Promise((r) => setTimeout(r, 1000)); // disconnects recorded

// 2. Each user changes CHANGES keys, from a writer device.
await Promise.all(Array.from({ length: USERS }, async (_, u) => {
  const { socket } = await connect(`${prefix}-${u}`, 'writer');
  for (let c = 0; c < CHANGES; c++) {
    const reply = await socket.timeout(30000).emitWithAck('sync:set', { key: `changed-${c}`, value: { c, at: Date.now() } });
    if (reply.status !== 'applied') throw new Error(JSON.stringify(reply));
  }
  socket.disconnect();
}));
await new Promise((r) => setTimeout(r, 1000));
process.stdout.write('READY\n');
// The caller snapshots the database's counters now, and says go.
await new Promise((r) => process.stdin.once('data', r));

// 3. The storm: every device at once.
const t0 = performance.now();
const results = await Promise.all(devices.map(([u, d]) => connect(u, d)));
const wall = performance.now() - t0;
const ms = results.map((r) => r.ms).sort((a, b) => a - b);
const q = (p) => ms[Math.min(ms.length - 1, Math.floor(p * ms.length))];
const events = results.reduce((n, r) => n + r.events, 0);
await new Promise((r) => setTimeout(r, 500));
for (const { socket } of results) socket.disconnect();
console.log(JSON.stringify({
  devices: devices.length,
  users: USERS,
  events,
  expectedEvents: devices.length * CHANGES,
  p50Ms: Math.round(q(0.5)),
  p99Ms: Math.round(q(0.99)),
  maxMs: Math.round(ms[ms.length - 1]),
  wallMs: Math.round(wall),
}));
process.exit(0);
