// Issue 14 §11: fault classes reported against comparable systems, each
// proved absent here (or fixed) with a test that asserts the exact outcome.
//
// A device's view is built the way a client that applies by `seq` builds
// it: every event of every connection of the device (pending-updates and
// live), the highest `seq` per key wins, a removal deletes the key.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Server, Redis, Device, uid, waitFor, sleep, PG_URL } from './harness.mjs';

const MYSQL_URL = process.env.TEST_MYSQL_URL ?? 'mysql://syncstore:syncstore@127.0.0.1:3306/syncstore';

/** The user's live items as the server has them: `{key: value}`. */
async function serverState(server, key) {
  const { status, body } = await server.rest('GET', '/sync-storage/items', key);
  assert.equal(status, 200);
  return Object.fromEntries(body.map((i) => [i.key, i.value]));
}

/** What a device holds after applying every event of its connections by seq. */
function heldBy(connections) {
  const latest = new Map();
  const see = (e, remove) => {
    const was = latest.get(e.key);
    if (!was || e.seq > was.seq) latest.set(e.key, { seq: e.seq, remove, value: e.value });
  };
  for (const d of connections) {
    for (const e of d.pending.flat()) see(e, e.type === 'remove');
    for (const e of d.updates) see(e, false);
    for (const e of d.removes) see(e, true);
  }
  const state = {};
  for (const [k, e] of [...latest].sort(([a], [b]) => (a < b ? -1 : 1))) if (!e.remove) state[k] = e.value;
  return state;
}

const sorted = (o) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)));

/**
 * §11.1: `writes` writes from one device race `devices` devices connecting
 * to `readers` (half of which drop and reconnect mid-race). Every device
 * must end up holding exactly the server's state: a write committed while
 * a device was still subscribing reached it live or in pending-updates.
 */
async function raceWritesAgainstConnects({ writerServer, readerServers, writes = 240, devices = 40 }) {
  const user = uid('race');
  const key = writerServer.createKey(user);
  const writer = await new Device(writerServer.url, { userId: user, instanceId: 'writer', apiKey: key }).ready();
  // The writes: new keys, removals and overwrites of older keys, four in
  // flight at a time, never two on one key at once.
  const expected = {};
  const ops = [];
  const live = []; // keys set and not removed, oldest first
  const batchOf = new Map(); // key -> the batch that last touched it
  const free = (k, i) => batchOf.get(k) !== Math.floor(i / 4);
  for (let i = 0; i < writes; i++) {
    let op;
    if (i % 5 === 4) {
      const at = live.findIndex((k) => free(k, i));
      if (at >= 0) op = { remove: live.splice(at, 1)[0] };
    } else if (i % 7 === 6) {
      const k = live.findLast((x) => free(x, i));
      if (k) op = { key: k, value: { i, again: true } };
    }
    op ??= { key: `k${i}`, value: { i } };
    if (!op.remove && !live.includes(op.key)) live.push(op.key);
    batchOf.set(op.remove ?? op.key, Math.floor(i / 4));
    ops.push(op);
  }
  const writing = (async () => {
    for (let i = 0; i < ops.length; i += 4) {
      const batch = ops.slice(i, i + 4);
      const replies = await Promise.all(batch.map((op) => (op.remove
        ? writer.call('sync:remove', { key: op.remove })
        : writer.call('sync:set', { key: op.key, value: op.value }))));
      for (const [j, op] of batch.entries()) {
        if (op.remove) {
          assert.equal(replies[j].status, 'removed', JSON.stringify(replies[j]));
          delete expected[op.remove];
        } else {
          assert.equal(replies[j].status, 'applied', JSON.stringify(replies[j]));
          expected[op.key] = op.value;
        }
      }
    }
  })();
  const connections = Array.from({ length: devices }, () => []);
  const joining = [];
  for (let j = 0; j < devices; j++) {
    const server = readerServers[j % readerServers.length];
    const opts = { userId: user, instanceId: `d${j}`, apiKey: key };
    joining.push((async () => {
      let d = new Device(server.url, opts);
      connections[j].push(d);
      await d.ready();
      if (j % 2 === 1) {
        // Drop and come back (on the other pod, when there are two) while
        // writes keep coming: it resumes from its acknowledged cursor.
        await sleep(5 + (j * 7) % 40);
        d.close();
        d = new Device(readerServers[(j + 1) % readerServers.length].url, opts);
        connections[j].push(d);
        await d.ready();
      }
    })());
    await sleep(3 + (j * 13) % 20);
  }
  await Promise.all([writing, ...joining]);
  const state = await serverState(writerServer, key);
  assert.deepEqual(sorted(state), sorted(expected), 'the server applied every write');
  const keys = Object.keys(expected).length;
  // Every device converges on exactly that state.
  const behind = () => connections.map((c, j) => [j, heldBy(c)]).filter(([, held]) => JSON.stringify(sorted(held)) !== JSON.stringify(sorted(expected)));
  try {
    await waitFor(() => behind().length === 0, { what: 'every device to converge', timeout: 15000 });
  } catch {
    const [j, held] = behind()[0];
    assert.deepEqual(sorted(held), sorted(expected), `device d${j} of ${behind().length} behind`);
  }
  for (const c of connections) assert.equal(Object.keys(heldBy(c)).length, keys);
  writer.close();
  for (const c of connections) for (const d of c) d.close();
  return { keys, devices };
}

for (const [name, url] of [['SQLite', null], ['PostgreSQL', PG_URL], ['MariaDB', MYSQL_URL]]) {
  test(`a write committed while a device subscribes reaches it, never neither (${name})`, async () => {
    const s = await Server.start(url ? { DATABASE_URL: url } : {});
    try {
      const { keys } = await raceWritesAgainstConnects({ writerServer: s, readerServers: [s] });
      assert.ok(keys > 100);
    } finally {
      await s.stop();
    }
  });
}

test('a write committed while a device subscribes reaches it, never neither (two pods through Redis)', async () => {
  const redis = await Redis.start();
  const env = { DATABASE_URL: PG_URL, REDIS_URL: redis.url };
  const a = await Server.start({ ...env, POD_NAME: 'race-a' });
  const b = await Server.start({ ...env, POD_NAME: 'race-b' });
  try {
    // Writes on one pod, devices joining the other: only Redis (and the
    // repair from the database) can bring them the writes.
    await raceWritesAgainstConnects({ writerServer: a, readerServers: [b] });
    // And devices joining both pods while they drop and rejoin across them.
    await raceWritesAgainstConnects({ writerServer: a, readerServers: [a, b] });
  } finally {
    await a.stop();
    await b.stop();
    redis.stop();
  }
});

test('a device that received no events before it dropped recovers everything on reconnect', async () => {
  const s = await Server.start({});
  try {
    for (const ackPending of [false, true]) {
      const user = uid('quiet');
      const key = s.createKey(user);
      const opts = { userId: user, instanceId: 'quiet', apiKey: key, ackPending };
      // First session: an empty user, so pending-updates is [] and nothing
      // arrives live; the device writes `mine` itself (never echoed to it).
      const first = await new Device(s.url, opts).ready();
      assert.deepEqual(first.pending, [[]]);
      assert.equal((await first.call('sync:set', { key: 'mine', value: 1 })).status, 'applied');
      assert.equal(first.updates.length + first.removes.length, 0);
      // It drops without a clean disconnect: the process dies with it, so
      // nothing about what it was sent is recorded.
      await s.kill9();
      await s.launch();
      // Meanwhile another device removes its key and writes others.
      const other = await new Device(s.url, { userId: user, instanceId: 'other', apiKey: key }).ready();
      assert.equal((await other.call('sync:remove', { key: 'mine' })).status, 'removed');
      await other.call('sync:set', { key: 'a', value: 'A' });
      await other.call('sync:set', { key: 'b', value: 'B' });
      await other.call('sync:remove', { key: 'b' });
      other.close();
      const again = await new Device(s.url, opts).ready();
      // Every change since it was last here, removals included, in seq order.
      assert.deepEqual(
        again.pending[0].map((e) => [e.type, e.key, e.seq]),
        [['remove', 'mine', 2], ['update', 'a', 3], ['remove', 'b', 5]],
        `ackPending=${ackPending}`,
      );
      assert.deepEqual(heldBy([{ pending: [[{ type: 'update', key: 'mine', value: 1, seq: 1 }]], updates: [], removes: [] }, first, again]), { a: 'A' });
      assert.deepEqual(await serverState(s, key), { a: 'A' });
      again.close();
      // A clean drop after receiving nothing: offline writes all arrive.
      const quiet = await new Device(s.url, { ...opts, instanceId: 'clean' }).ready();
      assert.deepEqual(quiet.pending[0].map((e) => e.key), ['a']);
      quiet.close();
      await sleep(200);
      await s.rest('PUT', '/sync-storage/item/c', key, { value: 'C' });
      await s.rest('DELETE', '/sync-storage/item/a', key);
      const back = await new Device(s.url, { ...opts, instanceId: 'clean' }).ready();
      assert.deepEqual(back.pending[0].map((e) => [e.type, e.key]), [['update', 'c'], ['remove', 'a']]);
      assert.deepEqual(heldBy([quiet, back]), { c: 'C' });
      back.close();
    }
  } finally {
    await s.stop();
  }
});

test('a cursor older than the tombstone retention gives exactly one sync:resync, never a loop', async () => {
  // Sweep every ~0.7 s; keep tombstones ~0.9 s (as retention.test.mjs).
  const s = await Server.start({ TTL_CLEANUP_INTERVAL_HOURS: '0.0002', SYNC_TOMBSTONE_RETENTION_DAYS: '0.00001' });
  try {
    // The README's client (acks pending-updates) and the seed's (never acks).
    for (const ackPending of [true, false]) {
      const user = uid('old');
      const key = s.createKey(user);
      const writer = await new Device(s.url, { userId: user, instanceId: 'w', apiKey: key }).ready();
      await writer.call('sync:set', { key: 'k0', value: 0 });
      await writer.call('sync:set', { key: 'gone', value: 'g' });
      const opts = { userId: user, instanceId: 'old', apiKey: key, ackPending };
      let held = {};
      /** Connects as the README says: apply pending, re-fetch on resync. */
      const connect = async () => {
        const d = new Device(s.url, opts);
        d.socket.on('sync:resync', async () => {
          const all = await d.socket.emitWithAck('sync:getAll', {});
          held = Object.fromEntries(all.map((i) => [i.key, i.value]));
          d.refetched = true;
        });
        await waitFor(() => d.pending.length + d.resyncs.length > 0, { what: 'pending-updates or sync:resync' });
        if (d.resyncs.length) await waitFor(() => d.refetched, { what: 'the re-fetch' });
        for (const e of d.pending.flat()) {
          if (e.type === 'remove') delete held[e.key];
          else held[e.key] = e.value;
        }
        await sleep(150);
        return d;
      };
      const first = await connect();
      assert.deepEqual(held, { k0: 0, gone: 'g' });
      first.close();
      await writer.call('sync:remove', { key: 'gone' });
      await writer.call('sync:set', { key: 'k1', value: 1 });
      await sleep(2500); // the tombstone of `gone` ages past retention and is swept
      const resyncs = [];
      const pendings = [];
      for (let round = 0; round < 4; round++) {
        const d = await connect();
        resyncs.push(d.resyncs.length);
        pendings.push(d.pending.flat().map((e) => e.key));
        assert.deepEqual(held, { k0: 0, k1: 1 }, `round ${round}, ackPending=${ackPending}`);
        d.close();
        await sleep(200);
      }
      // Exactly one resync, then nothing: the re-fetch moved its cursor.
      assert.deepEqual(resyncs, [1, 0, 0, 0], `ackPending=${ackPending}`);
      assert.deepEqual(pendings, [[], [], [], []]);
      // Later changes come as pending-updates again, not as another resync.
      await writer.call('sync:set', { key: 'k2', value: 2 });
      const after = await connect();
      assert.equal(after.resyncs.length, 0);
      assert.deepEqual(after.pending.flat().map((e) => [e.type, e.key]), [['update', 'k2']]);
      assert.deepEqual(held, { k0: 0, k1: 1, k2: 2 });
      after.close();
      writer.close();
    }
  } finally {
    await s.stop();
  }
});

test('a device that drops before it re-fetches is told to resync again, until it does', async () => {
  const s = await Server.start({ TTL_CLEANUP_INTERVAL_HOURS: '0.0002', SYNC_TOMBSTONE_RETENTION_DAYS: '0.00001' });
  try {
    for (const ackPending of [true, false]) {
      const user = uid('drop');
      const key = s.createKey(user);
      const writer = await new Device(s.url, { userId: user, instanceId: 'w', apiKey: key }).ready();
      await writer.call('sync:set', { key: 'gone', value: 'g' });
      const opts = { userId: user, instanceId: 'late', apiKey: key, ackPending };
      (await new Device(s.url, opts).ready()).close();
      await sleep(200);
      await writer.call('sync:remove', { key: 'gone' });
      await writer.call('sync:set', { key: 'kept', value: 1 });
      await sleep(2500); // the tombstone ages past retention and is swept
      const resyncsPerConnection = [];
      for (let round = 0; round < 3; round++) {
        const d = new Device(s.url, opts);
        await waitFor(() => d.resyncs.length + d.pending.length > 0, { what: 'resync or pending' });
        await sleep(150);
        resyncsPerConnection.push(d.resyncs.length);
        if (round === 2) {
          const all = await d.call('sync:getAll', {});
          assert.deepEqual(all.map((i) => [i.key, i.value]), [['kept', 1]]);
        }
        d.close(); // rounds 0 and 1 drop without re-fetching
        await sleep(200);
      }
      assert.deepEqual(resyncsPerConnection, [1, 1, 1], `ackPending=${ackPending}`);
      const after = await new Device(s.url, opts).ready();
      await sleep(150);
      assert.deepEqual([after.resyncs, after.pending], [[], [[]]], `ackPending=${ackPending}`);
      after.close();
      writer.close();
    }
  } finally {
    await s.stop();
  }
});

test("a device's subscriptions are restored after a reconnect to another pod, and reported", async () => {
  const redis = await Redis.start();
  const env = { DATABASE_URL: PG_URL, REDIS_URL: redis.url };
  const a = await Server.start({ ...env, POD_NAME: 'subs-a' });
  const b = await Server.start({ ...env, POD_NAME: 'subs-b' });
  try {
    const user = uid('subs');
    const key = a.createKey(user);
    const writer = await new Device(a.url, { userId: user, instanceId: 'writer', apiKey: key }).ready();
    const opts = { userId: user, instanceId: 'phone', apiKey: key };
    const connect = (server) => {
      const d = new Device(server.url, opts);
      d.reported = [];
      d.order = [];
      d.socket.on('sync:subscriptions', (e) => {
        d.reported.push(e);
        d.order.push('sync:subscriptions');
      });
      d.socket.on('pending-updates', () => d.order.push('pending-updates'));
      return d.ready();
    };
    const first = await connect(a);
    assert.deepEqual(first.reported, [], 'a device never subscribed is told nothing');
    assert.deepEqual(await first.call('sync:subscribe', { keys: ['profile', 'settings/*'] }), ['profile', 'settings/*']);
    first.close();
    await sleep(200);
    // Offline changes: only the subscribed keys are pending for it.
    for (const k of ['other', 'profile', 'settings/theme']) await writer.call('sync:set', { key: k, value: `${k}-1` });
    const second = await connect(b);
    assert.deepEqual(second.reported, [{ keys: ['profile', 'settings/*'] }]);
    assert.deepEqual(second.order, ['sync:subscriptions', 'pending-updates']);
    assert.deepEqual(second.pending[0].map((e) => e.key), ['profile', 'settings/theme']);
    // And live: the restored filter holds on the new pod.
    for (const k of ['other', 'profile', 'settingsX', 'settings/font']) await writer.call('sync:set', { key: k, value: `${k}-2` });
    await waitFor(() => second.updates.length === 2, { what: 'subscribed live updates' });
    await sleep(200);
    assert.deepEqual(second.updates.map((u) => [u.key, u.value]), [['profile', 'profile-2'], ['settings/font', 'settings/font-2']]);
    // Unsubscribing everything is stored too: back to every key. The
    // changes to keys it did not cover were skipped, so it is told to
    // re-fetch (`other` was written while it was filtered out).
    assert.deepEqual(await second.call('sync:unsubscribe', { keys: ['profile', 'settings/*'] }), []);
    await waitFor(() => second.resyncs.length === 1, { what: 'sync:resync on widening' });
    assert.equal(second.resyncs[0].reason, 'subscriptions_widened');
    second.close();
    await sleep(200);
    await writer.call('sync:set', { key: 'other', value: 'other-3' });
    // It dropped before re-fetching: told again, on the other pod.
    const third = await new Device(a.url, opts);
    await waitFor(() => third.resyncs.length === 1, { what: 'sync:resync again' });
    assert.equal(third.resyncs[0].reason, 'resync_due');
    assert.deepEqual(third.pending, []);
    const all = await third.call('sync:getAll', {});
    assert.deepEqual(all.map((i) => [i.key, i.value]).sort(), [
      ['other', 'other-3'], ['profile', 'profile-2'], ['settings/font', 'settings/font-2'], ['settings/theme', 'settings/theme-1'], ['settingsX', 'settingsX-2'],
    ]);
    third.close();
    await sleep(200);
    // Re-fetched: the next connection resumes normally, unfiltered.
    await writer.call('sync:set', { key: 'other', value: 'other-4' });
    const fourth = await connect(b);
    assert.deepEqual([fourth.reported, fourth.resyncs], [[], []]);
    assert.deepEqual(fourth.pending[0].map((e) => [e.key, e.value]), [['other', 'other-4']]);
    fourth.close();
    writer.close();
  } finally {
    await a.stop();
    await b.stop();
    redis.stop();
  }
});

test('two connections of one device: when one widens the subscriptions, what the other skipped is re-fetched', async () => {
  const redis = await Redis.start();
  const env = { DATABASE_URL: PG_URL, REDIS_URL: redis.url };
  const a = await Server.start({ ...env, POD_NAME: 'twin-a' });
  const b = await Server.start({ ...env, POD_NAME: 'twin-b' });
  try {
    const user = uid('twin');
    const key = a.createKey(user);
    const opts = { userId: user, instanceId: 'tablet', apiKey: key };
    await a.rest('PUT', '/sync-storage/item/x0', key, { value: 0 });
    const first = await new Device(a.url, opts).ready();
    const second = await new Device(b.url, opts).ready();
    assert.deepEqual(await first.call('sync:subscribe', { keys: ['x*'] }), ['x*']);
    assert.deepEqual(await second.call('sync:subscribe', { keys: ['x*'] }), ['x*']);
    // The first connection widens (and re-fetches); the second still
    // filters by `x*`, so it skips `y1`.
    assert.deepEqual(await first.call('sync:unsubscribe', { keys: ['x*'] }), []);
    await waitFor(() => first.resyncs.length === 1, { what: 'the widening resync' });
    await first.call('sync:getAll', {});
    first.close();
    await sleep(200);
    await a.rest('PUT', '/sync-storage/item/y1', key, { value: 1 });
    await sleep(300);
    assert.deepEqual(second.updates.map((u) => u.key), [], 'filtered out on the second connection');
    second.close();
    await sleep(300);
    // The device comes back: it is told to re-fetch, and `y1` is there.
    const back = new Device(a.url, opts);
    await waitFor(() => back.resyncs.length + back.pending.length > 0, { what: 'resync or pending' });
    assert.deepEqual(back.resyncs.map((r) => r.reason), ['resync_due']);
    const all = await back.call('sync:getAll', {});
    assert.deepEqual(all.map((i) => [i.key, i.value]), [['x0', 0], ['y1', 1]]);
    back.close();
  } finally {
    await a.stop();
    await b.stop();
    redis.stop();
  }
});
