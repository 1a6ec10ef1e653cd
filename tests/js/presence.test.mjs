// Presence survives races (issue 14 §5). Sockets that drop their transport
// right after the engine opens raced the server: a disconnect handled
// before the connect handler finished was undone by it, so about half of
// 100 such devices stayed online with `connections: 1` (and the heartbeat
// kept refreshing them), and the sockets gauge once read -1. Each group of
// sockets here drops at one moment: when the engine opened (the namespace
// connect is on its way, the server may still be checking the handshake)
// and when the client saw the connect (the server's connect handler is at
// work). Afterwards no device may be online, every count must be 0, and the
// gauge must never have gone below 0.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { Server, Device, uid, sleep, PG_URL } from './harness.mjs';

const SOCKETS = 100;
const HEARTBEAT_MS = 200;

const servers = [];
after(async () => {
  for (const s of servers) await s.stop();
});

async function gauge(server) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const m = /^syncstore_sockets_connected (-?\d+)$/m.exec(text);
  assert.ok(m, 'the sockets gauge is exported');
  return Number(m[1]);
}

async function sessions(server, key) {
  const res = await server.rest('GET', '/sync-storage/sessions', key);
  assert.equal(res.status, 200);
  return res.body;
}

async function connectedSockets(server, key) {
  const res = await fetch(`${server.base}/api/v1/analytics/realtime`, { headers: { 'X-API-Key': key } });
  assert.equal(res.status, 200);
  return (await res.json()).connectedSockets;
}

/** A socket whose transport is dropped `when` the engine opened ('open')
 * or the namespace connect was answered ('connect'). Resolves once the
 * client saw its transport close, with whether it had seen the connect. */
function dropped(server, { userId, instanceId, apiKey, when }) {
  return new Promise((resolve, reject) => {
    const socket = io(server.url, {
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      query: { userId, instanceId },
      auth: { apiKey },
    });
    let connected = false;
    const timer = setTimeout(() => reject(new Error(`${instanceId}: transport never closed`)), 15000);
    const done = () => {
      clearTimeout(timer);
      resolve(connected);
    };
    const cut = () => socket.io.engine.close();
    if (when === 'open') socket.io.once('open', cut);
    socket.once('connect', () => {
      connected = true;
      if (when === 'connect') cut();
    });
    socket.io.once('close', done);
    socket.io.once('error', done);
    socket.once('connect_error', done);
  });
}

for (const [backend, env] of [['sqlite', {}], ['postgres', { DATABASE_URL: PG_URL }]]) {
  test(`${backend}: sockets dropped right after the engine opens leave no device online and the gauge at exactly 0`, async () => {
    const server = await Server.start({ PRESENCE_HEARTBEAT_MS: String(HEARTBEAT_MS), ...env });
    servers.push(server);
    const user = uid('instant');
    const key = server.createKey(user, ['--scopes', 'read,write,analytics:read']);

    // The gauge, sampled all along: it must never read below 0.
    let lowest = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        lowest = Math.min(lowest, await gauge(server));
        await sleep(5);
      }
    })();

    const storm = (when, tag) =>
      Promise.all(Array.from({ length: SOCKETS }, (_, i) =>
        dropped(server, { userId: user, instanceId: `${tag}${i}`, apiKey: key, when })));
    const atOpen = await storm('open', 'o');
    const atConnect = await storm('connect', 'c');
    assert.equal(atConnect.filter(Boolean).length, SOCKETS, 'every socket of the second group saw its connect');

    // Disconnects are handled asynchronously: wait until they all were.
    const deadline = Date.now() + 15000;
    let online = [];
    for (;;) {
      online = (await sessions(server, key)).filter((s) => s.online || s.connections !== 0);
      if ((await gauge(server)) === 0 && online.length === 0) break;
      if (Date.now() > deadline) break;
      await sleep(50);
    }
    // Three heartbeats later nothing came back: a session left in the hub
    // was refreshed by every one of them.
    await sleep(3 * HEARTBEAT_MS + 200);
    sampling = false;
    await sampler;

    const listed = await sessions(server, key);
    assert.deepEqual(
      listed.filter((s) => s.online || s.connections !== 0).map((s) => [s.instanceId, s.online, s.connections]),
      [],
      'no dropped device is online',
    );
    assert.equal(await gauge(server), 0, 'the sockets gauge is back at 0');
    assert.equal(lowest, 0, 'the sockets gauge never read below 0');
    assert.equal(await connectedSockets(server, key), 0, 'the realtime figure is back at 0');
    console.log(`# ${backend}: ${atOpen.filter(Boolean).length}/${SOCKETS} saw their connect before the drop at open; ${listed.length} devices recorded`);

    // A device that stays is still counted, exactly once.
    const stay = new Device(server.url, { userId: user, instanceId: 'stays', apiKey: key });
    await stay.ready();
    const shown = async () => (await sessions(server, key)).find((s) => s.instanceId === 'stays');
    const until = async (want) => {
      const end = Date.now() + 10000;
      let got;
      do {
        got = await shown();
        if (got && got.online === want.online && got.connections === want.connections) return got;
        await sleep(50);
      } while (Date.now() < end);
      return got;
    };
    const gaugeAt = async (want) => {
      const end = Date.now() + 10000;
      let n;
      do {
        n = await gauge(server);
        if (n === want) return n;
        await sleep(20);
      } while (Date.now() < end);
      return n;
    };
    let got = await until({ online: true, connections: 1 });
    assert.deepEqual([got?.online, got?.connections], [true, 1]);
    assert.equal(await gaugeAt(1), 1);
    stay.close();
    got = await until({ online: false, connections: 0 });
    assert.deepEqual([got?.online, got?.connections], [false, 0]);
    assert.equal(await gaugeAt(0), 0);
  });
}
