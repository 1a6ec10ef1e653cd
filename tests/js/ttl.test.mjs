// Expired items never leave the server (issue 14 §3): no read path returns
// an item past its TTL, and expiry becomes a removal in the user's sequence
// that live devices receive as `sync:remove`.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Server, Device, uid, waitFor, sleep } from './harness.mjs';

const servers = [];
after(async () => {
  for (const s of servers) await s.stop();
});

async function start(env) {
  const s = await Server.start(env);
  servers.push(s);
  return s;
}

test('a live device receives the expiry of an item as a removal with its own seq', async () => {
  const server = await start({});
  const user = uid('ttl');
  const key = server.createKey(user, ['--scopes', 'read,write']);
  const phone = await new Device(server.url, { userId: user, instanceId: 'phone', apiKey: key }).ready();
  const put = await server.rest('PUT', '/sync-storage/item/x', key, { value: 1, ttl: 1 });
  assert.equal(put.status, 200);
  await waitFor(() => phone.updates.some((u) => u.key === 'x'), { what: 'the update' });
  const removed = await waitFor(() => phone.removes.find((r) => r.key === 'x'), { timeout: 5000, what: 'the expiry as sync:remove' });
  assert.ok(removed.seq > put.body.item.seq, JSON.stringify(removed));
  assert.equal((await server.rest('GET', '/sync-storage/item/x', key)).status, 404);
  phone.close();
});

test('pending-updates never carry an expired value, before or after the sweep', async () => {
  // A sweep an hour away: only the read path can keep the value back.
  const server = await start({ TTL_EXPIRY_INTERVAL_MS: '3600000' });
  const user = uid('ttl');
  const key = server.createKey(user, ['--scopes', 'read,write']);
  // A returning device that acks and knows the state before `x` exists.
  const tablet = await new Device(server.url, { userId: user, instanceId: 'tablet', apiKey: key }).ready();
  await server.rest('PUT', '/sync-storage/item/keep', key, { value: 'k' });
  await waitFor(() => tablet.updates.some((u) => u.key === 'keep'), { what: 'keep' });
  await tablet.call('sync:ack', { seq: tablet.updates.at(-1).seq });
  tablet.close();
  await sleep(200);
  await server.rest('PUT', '/sync-storage/item/x', key, { value: 1, ttl: 1 });
  await sleep(2500);
  // A new device: the current state, without x.
  const fresh = await new Device(server.url, { userId: user, instanceId: uid('new'), apiKey: key }).ready();
  assert.deepEqual(fresh.pending[0].map((e) => e.key), ['keep']);
  // The returning device: x is a removal, never a value.
  const back = await new Device(server.url, { userId: user, instanceId: 'tablet', apiKey: key }).ready();
  const x = back.pending[0].filter((e) => e.key === 'x');
  assert.deepEqual(x.map((e) => [e.type, e.value ?? null]), [['remove', null]], JSON.stringify(back.pending));
  // Nor does any other read.
  const all = await back.call('sync:getAll', {});
  assert.ok(!JSON.stringify(all).includes('"x"'), JSON.stringify(all));
  const items = await server.rest('GET', '/sync-storage/items', key);
  assert.deepEqual(items.body.map((i) => i.key), ['keep']);
  fresh.close();
  back.close();
});
