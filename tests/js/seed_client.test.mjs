// A client written from the seed's README never acknowledges (issue 14 §1):
// it must still learn every removal of a key it may hold, and not be sent
// again what it already received unchanged. A client that acknowledges
// keeps at-least-once delivery from its acknowledged cursor.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Server, Device, uid, waitFor, sleep } from './harness.mjs';

let server;
after(async () => {
  await server?.stop();
});

test('a device that never acks learns removals and is not re-sent what it has', async () => {
  server = await Server.start({});
  const user = uid('seed');
  const key = server.createKey(user, ['--scopes', 'read,write']);
  await server.rest('PUT', '/sync-storage/item/y', key, { value: 'y' });
  const connect = () => new Device(server.url, { userId: user, instanceId: 'seed-client', apiKey: key, ackPending: false }).ready();
  const first = await connect();
  assert.deepEqual(first.pending[0].map((e) => e.key), ['y']);
  await server.rest('PUT', '/sync-storage/item/x', key, { value: 'x' });
  await waitFor(() => first.updates.some((u) => u.key === 'x'), { what: 'x live' });
  first.close();
  await sleep(300);
  await server.rest('DELETE', '/sync-storage/item/x', key);
  const again = await connect();
  assert.deepEqual(again.pending[0].map((e) => [e.type, e.key]), [['remove', 'x']], JSON.stringify(again.pending));
  again.close();
  await sleep(300);
  // Nothing changed since: nothing is sent again.
  const third = await connect();
  assert.deepEqual(third.pending[0], []);
  third.close();
});

test('the README example (acks pending-updates, never sync:ack) learns removals too', async () => {
  const user = uid('readme');
  const key = server.createKey(user, ['--scopes', 'read,write']);
  const connect = () => new Device(server.url, { userId: user, instanceId: 'phone', apiKey: key }).ready();
  const first = await connect();
  assert.deepEqual(first.pending[0], []);
  await server.rest('PUT', '/sync-storage/item/x', key, { value: 'v' });
  await waitFor(() => first.updates.some((u) => u.key === 'x'), { what: 'x live' });
  first.close();
  await sleep(300);
  await server.rest('DELETE', '/sync-storage/item/x', key);
  const again = await connect();
  assert.deepEqual(again.pending[0].map((e) => [e.type, e.key]), [['remove', 'x']], JSON.stringify(again.pending));
  again.close();
});

test('a device that acks resumes from its acknowledged cursor', async () => {
  const user = uid('acker');
  const key = server.createKey(user, ['--scopes', 'read,write']);
  const d = await new Device(server.url, { userId: user, instanceId: 'app', apiKey: key }).ready();
  await server.rest('PUT', '/sync-storage/item/a', key, { value: 1 });
  await waitFor(() => d.updates.some((u) => u.key === 'a'), { what: 'a live' });
  // Received but never acknowledged: sent again on reconnect.
  d.close();
  await sleep(300);
  const back = await new Device(server.url, { userId: user, instanceId: 'app', apiKey: key }).ready();
  assert.deepEqual(back.pending[0].map((e) => e.key), ['a']);
  back.close();
});
