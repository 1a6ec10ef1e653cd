// Retried writes are the same write (issue 14 §2), with the official
// socket.io-client's own retries (`retries` + `ackTimeout`): the server
// commits a write, its ack never reaches the client (a proxy in front drops
// it), the server is killed with -9 and restarted on the same data, the
// client reconnects and its retry queue sends the write again. The retry
// gets `applied` with the version the first attempt made, the version is
// bumped once, and no conflict is recorded against the device itself: with
// an `opId`, and without one (the same device, base version, timestamp and
// value are recognised as the same write).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import { rmSync } from 'node:fs';
import { io } from 'socket.io-client';
import { Server, freePort, uid, waitFor } from './harness.mjs';

let server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server?.stop();
  rmSync(server.dir, { recursive: true, force: true });
});

/** A TCP proxy to `port` that can drop everything the server sends. */
async function proxy(port) {
  const p = { mute: false, sockets: new Set(), port: await freePort() };
  p.srv = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    p.sockets.add(client).add(upstream);
    client.on('data', (b) => upstream.write(b));
    upstream.on('data', (b) => { if (!p.mute) client.write(b); });
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('close', close).on('error', close);
    upstream.on('close', close).on('error', close);
  });
  await new Promise((r) => p.srv.listen(p.port, '127.0.0.1', r));
  p.close = () => { for (const s of p.sockets) s.destroy(); p.srv.close(); };
  return p;
}

async function item(key, apiKey) {
  return server.rest('GET', `/sync-storage/item/${key}`, apiKey);
}

async function conflicts(key, apiKey) {
  return (await server.rest('GET', `/sync-storage/conflicts/history/${key}`, apiKey)).body;
}

for (const withOpId of [true, false]) {
  test(`a write committed before a kill -9 is not applied again by the client's retry (${withOpId ? 'opId' : 'no opId'})`, async () => {
    const user = uid('retry');
    const apiKey = server.createKey(user);
    const first = await fetch(`${server.base}/api/v1/sync-storage/item/x`, {
      method: 'PUT',
      headers: { 'X-API-Key': apiKey, 'X-Instance-Id': 'phone', 'Content-Type': 'application/json' },
      body: JSON.stringify({ value: 1 }),
    });
    assert.equal(first.status, 200);

    const front = await proxy(server.port);
    const socket = io(`ws://127.0.0.1:${front.port}/sync`, {
      transports: ['websocket'],
      forceNew: true,
      retries: 5,
      ackTimeout: 1500,
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
      query: { userId: user, instanceId: 'phone' },
      auth: { apiKey },
    });
    let pending = 0;
    socket.on('pending-updates', (_events, ack) => { pending += 1; if (typeof ack === 'function') ack(); });
    await waitFor(() => pending === 1, { what: 'first pending-updates' });

    // The ack of this write is lost: the proxy drops what the server sends.
    front.mute = true;
    const write = { key: 'x', value: 2, version: 1, timestamp: Date.now(), ...(withOpId ? { opId: uid('op') } : {}) };
    const reply = socket.emitWithAck('sync:set', write);
    await waitFor(async () => (await item('x', apiKey)).body.version === 2, { what: 'the commit' });
    await server.kill9();
    front.mute = false;
    for (const s of front.sockets) s.destroy(); // the old connection is gone with the process
    await server.launch();

    const answer = await reply; // sent again by the client after it reconnects
    assert.equal(answer.status, 'applied', JSON.stringify(answer));
    assert.equal(answer.item.version, 2);
    await waitFor(() => pending >= 2, { what: 'pending-updates after the reconnect' });
    const now = await item('x', apiKey);
    assert.deepEqual([now.status, now.body.version, now.body.value], [200, 2, 2]);
    assert.deepEqual(await conflicts('x', apiKey), []);
    socket.disconnect();
    front.close();
  });
}

test('an opId reused for another write is refused with IDEMPOTENCY_KEY_REUSED', async () => {
  const user = uid('reuse');
  const apiKey = server.createKey(user);
  const socket = io(server.url, {
    transports: ['websocket'], forceNew: true, reconnection: false,
    query: { userId: user, instanceId: 'phone' }, auth: { apiKey },
  });
  await new Promise((r) => socket.once('pending-updates', (_e, ack) => { ack?.(); r(); }));
  const opId = uid('op');
  const a = await socket.timeout(5000).emitWithAck('sync:set', { key: 'k', value: 1, opId });
  assert.equal(a.status, 'applied');
  const again = await socket.timeout(5000).emitWithAck('sync:set', { key: 'k', value: 1, opId });
  assert.deepEqual(again, a, 'the same write: the first reply');
  // The same write retried over REST (its body written differently) is
  // the same operation: the key in the path, the id in the header.
  const rest = await fetch(`${server.base}/api/v1/sync-storage/item/k`, {
    method: 'PUT',
    headers: { 'X-API-Key': apiKey, 'X-Instance-Id': 'phone', 'Idempotency-Key': opId, 'Content-Type': 'application/json' },
    body: '{ "value" : 1.0 }',
  });
  assert.equal(rest.status, 200);
  assert.deepEqual(await rest.json(), a);
  const other = await socket.timeout(5000).emitWithAck('sync:set', { key: 'k', value: 2, opId });
  assert.equal(other.error?.code ?? other.code, 'IDEMPOTENCY_KEY_REUSED', JSON.stringify(other));
  const removed = await socket.timeout(5000).emitWithAck('sync:remove', { key: 'k', opId: `${opId}-rm` });
  const removedAgain = await socket.timeout(5000).emitWithAck('sync:remove', { key: 'k', opId: `${opId}-rm` });
  assert.deepEqual(removedAgain, removed, 'not NOT_FOUND on the retry');
  assert.equal(removed.status, 'removed');
  socket.disconnect();
});
