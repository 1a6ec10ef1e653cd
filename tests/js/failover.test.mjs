// Faults: a process killed with -9, and Redis restarted mid-stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Server, Redis, Device, uid, waitFor, PG_URL } from './harness.mjs';
import { deviceState, writeStream } from './write_stream.mjs';

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
    await writeStream(p1, p2, async () => async () => {
      const at = Date.now();
      await redis.restart();
      return { resubscribed_ms: Date.now() - at };
    });
  } finally {
    await p1.stop();
    await p2.stop();
    redis.stop();
  }
});
