// Faults: a process killed with -9, and Redis restarted mid-stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Server, Redis, Device, uid, waitFor, sleep, PG_URL } from './harness.mjs';
import { deviceState } from './write_stream.mjs';

/** The user's state as the database has it, via REST. */
async function serverState(server, key) {
  const { body } = await server.rest('GET', '/sync-storage/items', key);
  return Object.fromEntries(body.map((i) => [i.key, i.value]));
}

test('a process killed with -9: its clients reconnect elsewhere and miss nothing', async () => {
  const redis = await Redis.start();
  const env = { DATABASE_URL: PG_URL, REDIS_URL: redis.url };
  const servers = [];
  try {
    for (const pod of ['p1', 'p2', 'p3']) servers.push(await Server.start({ ...env, POD_NAME: pod }));
    const [p1, p2, p3] = servers;
    const user = uid('u');
    const key = p1.createKey(user);
    let victim = await new Device(p1.url, { userId: user, instanceId: 'victim', apiKey: key }).ready();
    const writer = await new Device(p2.url, { userId: user, instanceId: 'writer', apiKey: key }).ready();
    const firstHalf = [];
    for (let i = 0; i < 30; i++) firstHalf.push(writer.call('sync:set', { key: `k${i % 7}`, value: i }));
    await Promise.all(firstHalf);
    await p1.kill9();
    // Writes keep coming while the device is away.
    for (let i = 30; i < 60; i++) await writer.call('sync:set', { key: `k${i % 7}`, value: i });
    await writer.call('sync:remove', { key: 'k2' });
    // The device comes back on another process with the same instance id.
    const before = victim;
    victim = await new Device(p3.url, { userId: user, instanceId: 'victim', apiKey: key }).ready();
    for (let i = 60; i < 70; i++) await writer.call('sync:set', { key: `k${i % 7}`, value: i });
    const expected = await serverState(p2, key);
    await waitFor(() => {
      const merged = { ...deviceState(before) };
      const after = deviceState(victim);
      // What the new connection delivered supersedes the old one's view.
      const keys = new Set([...Object.keys(merged), ...Object.keys(after), ...Object.keys(expected)]);
      for (const k of keys) {
        const fromAfter = victim.pending.flat().some((e) => e.key === k) || victim.updates.some((e) => e.key === k) || victim.removes.some((e) => e.key === k);
        const v = fromAfter ? after[k] : merged[k];
        if (JSON.stringify(v) !== JSON.stringify(expected[k])) return false;
      }
      return true;
    }, { what: 'the reconnected device to converge', timeout: 10000 });
    writer.close();
    victim.close();
  } finally {
    for (const s of servers) await s.stop().catch(() => {});
    redis.stop();
  }
});

test('Redis restarted mid-stream: every device converges and sees no seq go missing', async () => {
  const redis = await Redis.start();
  const env = { DATABASE_URL: PG_URL, REDIS_URL: redis.url };
  const p1 = await Server.start({ ...env, POD_NAME: 'r1' });
  const p2 = await Server.start({ ...env, POD_NAME: 'r2' });
  try {
    const user = uid('u');
    const key = p1.createKey(user);
    const watchers = [
      await new Device(p2.url, { userId: user, instanceId: 'w1', apiKey: key }).ready(),
      await new Device(p2.url, { userId: user, instanceId: 'w2', apiKey: key }).ready(),
      await new Device(p1.url, { userId: user, instanceId: 'w3', apiKey: key }).ready(),
    ];
    let lastSeq = 0;
    const writes = (async () => {
      for (let i = 0; i < 150; i++) {
        const r = await p1.rest('PUT', `/sync-storage/item/k${i % 12}`, key, { value: i });
        assert.equal(r.status, 200);
        lastSeq = r.body.item.seq;
        await sleep(4);
      }
    })();
    await sleep(150);
    await redis.restart();
    await writes;
    const expected = await serverState(p1, key);
    for (const w of watchers) {
      await waitFor(() => JSON.stringify(deviceState(w)) === JSON.stringify(Object.fromEntries(Object.keys(expected).sort().map((k) => [k, expected[k]]))) ||
        JSON.stringify(sortKeys(deviceState(w))) === JSON.stringify(sortKeys(expected)), { what: `${w.socket.io.opts.query.instanceId} to converge`, timeout: 15000 });
      const seqs = w.liveSeqs();
      assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'seqs arrive in order');
      assert.equal(new Set(seqs).size, seqs.length, 'no duplicates');
      assert.equal(Math.max(...seqs), lastSeq, 'the last write arrived');
    }
    for (const w of watchers) w.close();
  } finally {
    await p1.stop();
    await p2.stop();
    redis.stop();
  }
});

function sortKeys(o) {
  return Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]]));
}
