// Tombstone retention and the slow-path catch-up, on one process (SQLite,
// in-process fan-out: the embedded default).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Server, Device, uid, waitFor, sleep } from './harness.mjs';

let s;

before(async () => {
  // Sweep every ~0.7 s; keep tombstones ~0.9 s.
  s = await Server.start({ TTL_CLEANUP_INTERVAL_HOURS: '0.0002', SYNC_TOMBSTONE_RETENTION_DAYS: '0.00001' });
});

after(async () => {
  await s?.stop();
});

test('a device whose cursor predates purged tombstones is told to resync', async () => {
  const user = uid('u');
  const key = s.createKey(user);
  const writer = await new Device(s.url, { userId: user, instanceId: 'w', apiKey: key }).ready();
  await writer.call('sync:set', { key: 'k0', value: 0 });
  let old = await new Device(s.url, { userId: user, instanceId: 'old', apiKey: key }).ready();
  await sleep(100);
  old.close();
  await writer.call('sync:set', { key: 'k1', value: 1 });
  await writer.call('sync:remove', { key: 'k1' });
  await sleep(2500); // the tombstone ages past retention and is swept
  old = new Device(s.url, { userId: user, instanceId: 'old', apiKey: key });
  await waitFor(() => old.resyncs.length === 1, { what: 'sync:resync' });
  assert.equal(old.resyncs[0].reason, 'cursor_before_retention');
  assert.equal(old.pending.length, 0);
  const all = await old.call('sync:getAll', {});
  assert.deepEqual(all.map((i) => i.key), ['k0']);
  // Live updates flow after a resync.
  await writer.call('sync:set', { key: 'k2', value: 2 });
  await waitFor(() => old.updates.length === 1, { what: 'live update after resync' });
  writer.close();
  old.close();
});

test('a burst larger than the socket buffer is conflated from the database, and converges', async () => {
  const user = uid('u');
  const key = s.createKey(user);
  const d = await new Device(s.url, { userId: user, instanceId: 'd', apiKey: key }).ready();
  for (let i = 0; i < 300; i++) {
    const r = await s.rest('PUT', `/sync-storage/item/k${i}`, key, { value: i });
    assert.equal(r.status, 200);
  }
  await waitFor(() => d.updates.length === 300, { what: '300 updates' });
  const cleared = await s.rest('DELETE', '/sync-storage/clear', key);
  assert.equal(cleared.body.cleared, 300);
  await waitFor(() => d.removes.length === 300, { what: '300 removes', timeout: 15000 });
  const seqs = d.liveSeqs();
  assert.equal(new Set(seqs).size, seqs.length, 'no duplicates');
  assert.equal(Math.max(...seqs), 600);
  const metrics = await (await fetch(`${s.base}/metrics`)).text();
  assert.match(metrics, /syncstore_catchups_total\{reason="overflow"\} [1-9]/);
  assert.match(metrics, /syncstore_socket_events_total\{direction="out",event="sync:remove"\} 300/);
  assert.match(metrics, /syncstore_sockets_connected 1/);
  assert.match(metrics, /syncstore_delivery_latency_seconds_count [1-9]/);
  d.close();
});
