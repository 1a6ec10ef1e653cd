// Fan-out on a Redis Cluster (sharded pub/sub), and its faults: kill -9 of
// the master that owns a busy user's channel, the same master stopped
// (SIGSTOP: it answers nothing but closes no connection), and that channel's
// slot moved to another master during traffic. The cluster is the one
// scripts/redis-cluster-up.sh starts (TEST_REDIS_CLUSTER, exported by the
// test command); the tests fail without it rather than skip.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Server, Device, RedisCluster, uid, waitFor, PG_URL, redisCli } from './harness.mjs';
import { writeStream } from './write_stream.mjs';

const cluster = RedisCluster.fromEnv();
const { seeds: SEEDS, ports: PORTS } = cluster;
const nodes = () => cluster.nodes();
const slotOf = (channel) => cluster.slotOf(channel);
const ownerOf = (slot) => cluster.ownerOf(slot);

/** How many connections subscribe `channel` on the node at `port` (sharded). */
const shardSubscribers = (port, channel) => Number(redisCli(port, 'pubsub', 'shardnumsub', channel).split('\n')[1]);

/** A node's count of pub/sub messages received over the cluster bus (classic and sharded). */
function busReceived(port) {
  const info = redisCli(port, 'cluster', 'info');
  const field = (name) => Number(info.match(new RegExp(`^${name}:(\\d+)`, 'm'))?.[1] ?? 0);
  return field('cluster_stats_messages_publish_received') + field('cluster_stats_messages_publishshard_received');
}

async function twoPods(tag, redis = { REDIS_URL: `redis+cluster://${SEEDS}` }) {
  const store = uid(tag).slice(0, 40);
  const env = { DATABASE_URL: PG_URL, ...redis, SYNCSTORE_STORE: store };
  const p1 = await Server.start({ ...env, POD_NAME: `${tag}-1` });
  const p2 = await Server.start({ ...env, POD_NAME: `${tag}-2` });
  return { store, p1, p2 };
}

/** A user's writer device on `p1`, its reader on `p2`, and its channel. */
async function writerAndReader(p1, p2, store) {
  const user = uid('u');
  const key = p1.createKey(user);
  const writer = await new Device(p1.url, { userId: user, instanceId: 'writer', apiKey: key }).ready();
  const reader = await new Device(p2.url, { userId: user, instanceId: 'reader', apiKey: key }).ready();
  return { writer, reader, channel: `ss:${store}:u:${user}` };
}

test('cluster: a write reaches the other pod through the channel\'s shard only, never a broadcast', async () => {
  const { store, p1, p2 } = await twoPods('cs');
  try {
    const { writer, reader, channel } = await writerAndReader(p1, p2, store);
    const owner = ownerOf(slotOf(channel));
    const replica = nodes().find((n) => n.masterId === owner.id && !n.failed);
    // Both pods subscribe on the owner, and on no other node.
    await waitFor(() => shardSubscribers(owner.port, channel) === 2, { what: 'both pods subscribed on the owner' });
    for (const n of nodes().filter((n) => n.master && n.id !== owner.id)) {
      assert.equal(shardSubscribers(n.port, channel), 0, `node ${n.port} hosts none of the user's channels`);
    }
    const before = Object.fromEntries(PORTS.map((p) => [p, busReceived(p)]));
    const seqs = [];
    for (let i = 0; i < 20; i++) seqs.push((await writer.call('sync:set', { key: `k${i}`, value: i })).item.seq);
    await waitFor(() => reader.updates.length === 20, { what: 'the reader on the other pod to get 20 updates' });
    assert.deepEqual(reader.updates.map((u) => u.seq), seqs);
    assert.equal(writer.updates.length, 0, 'the writer gets acks, not its own writes');
    // Only the owner's replica heard of the 20 messages over the cluster
    // bus; the other four nodes heard nothing of them.
    for (const p of PORTS) {
      const heard = busReceived(p) - before[p];
      assert.equal(heard, p === replica.port ? 20 : 0, `pub/sub messages received by node ${p}`);
    }
    writer.close();
    reader.close();
    await waitFor(() => PORTS.every((p) => shardSubscribers(p, channel) === 0), { what: 'the channel unsubscribed everywhere once its devices left' });
  } finally {
    await p1.stop();
    await p2.stop();
  }
});

test('cluster over TLS (rediss+cluster://, verified against REDIS_TLS_CA_FILE): a write reaches the other pod', async () => {
  const certs = process.env.TEST_TLS_CERTS;
  if (!certs) throw new Error('TEST_TLS_CERTS is not set: run scripts/test-certs.sh (the test command does)');
  // Each node serves TLS on its port + 1000 and gives TLS clients those ports.
  const tlsSeeds = SEEDS.split(',').map((s) => s.replace(/:(\d+)$/, (_, p) => `:${Number(p) + 1000}`)).join(',');
  const { store, p1, p2 } = await twoPods('ct', { REDIS_URL: `rediss+cluster://${tlsSeeds}`, REDIS_TLS_CA_FILE: `${certs}/ca.pem` });
  try {
    const { writer, reader, channel } = await writerAndReader(p1, p2, store);
    await waitFor(() => shardSubscribers(ownerOf(slotOf(channel)).port, channel) === 2, { what: 'both pods subscribed over TLS' });
    const seqs = [];
    for (let i = 0; i < 5; i++) seqs.push((await writer.call('sync:set', { key: `k${i}`, value: i })).item.seq);
    await waitFor(() => reader.updates.length === 5, { what: 'the reader on the other pod to get 5 updates' });
    assert.deepEqual(reader.updates.map((u) => u.seq), seqs);
    const ready = await (await fetch(`${p2.base}/ready`)).json();
    assert.equal(ready.redis, 'connected');
    writer.close();
    reader.close();
  } finally {
    await p1.stop();
    await p2.stop();
  }
});

test('cluster: realtime figures add up across both pods', async () => {
  const { p1, p2 } = await twoPods('cr');
  const devices = [];
  try {
    const admin = p1.createKey(uid('ops'), ['--scopes', 'read,write,analytics:read']);
    const user = uid('u');
    const key = p1.createKey(user);
    for (const s of [p1, p2, p2]) devices.push(await new Device(s.url, { userId: user, instanceId: uid('dev'), apiKey: key }).ready());
    for (let i = 0; i < 10; i++) await devices[i % 3].call('sync:set', { key: `k${i}`, value: i });
    const rt = await waitFor(async () => {
      const { status, body } = await p2.rest('GET', '/analytics/realtime', admin);
      assert.equal(status, 200, JSON.stringify(body));
      return body.pods === 2 && body.connectedSockets === 3 && body.opsLastMinute >= 10 ? body : null;
    }, { timeout: 15000, what: 'both pods in the realtime view' });
    assert.equal(rt.opsPerSecondSeries.length, 60);
  } finally {
    devices.forEach((d) => d.close());
    await p1.stop();
    await p2.stop();
  }
});

/**
 * The write stream of ./write_stream.mjs over two pods on the cluster, with
 * `fault(slot, owner, channel)` once both pods subscribe the user's channel
 * on the master that owns its slot.
 */
async function writeStreamThrough(tag, fault) {
  const { store, p1, p2 } = await twoPods(tag);
  try {
    return await writeStream(p1, p2, async (user) => {
      const channel = `ss:${store}:u:${user}`;
      const slot = slotOf(channel);
      const owner = ownerOf(slot);
      await waitFor(() => shardSubscribers(owner.port, channel) === 2, { what: 'both pods subscribed' });
      return () => fault(slot, owner, channel);
    });
  } finally {
    await p1.stop();
    await p2.stop();
  }
}

/**
 * The fault of the tests below: `signal` sent to the master owning the
 * channel's slot; waits for a replica to be promoted and both pods to be
 * subscribed there, and returns the figures. The cluster is healed after
 * (the stopped master woken first).
 */
async function masterFault(tag, signal) {
  let pid;
  try {
    return await writeStreamThrough(tag, async (slot, owner, channel) => {
      pid = cluster.pidOf(owner.port);
      const at = Date.now();
      process.kill(pid, signal);
      const promoted = await waitFor(() => {
        try {
          const o = ownerOf(slot);
          return o && o.id !== owner.id ? o : null;
        } catch {
          return null;
        }
      }, { what: 'a replica promoted', timeout: 20000 });
      const promotedAfter = Date.now() - at;
      await waitFor(() => shardSubscribers(promoted.port, channel) === 2, { what: 'both pods subscribed on the promoted replica', timeout: 20000 });
      return { promoted_ms: promotedAfter, resubscribed_ms: Date.now() - at };
    });
  } finally {
    if (pid && signal === 'SIGSTOP') process.kill(pid, 'SIGCONT');
    await cluster.heal();
  }
}

test('cluster: kill -9 of the master owning a busy user\'s channel loses no acknowledged write', async () => {
  // The pods' connections to it drop: they subscribe on the new master.
  const figures = await masterFault('ck', 'SIGKILL');
  console.log(`# cluster kill -9 figures: ${JSON.stringify(figures)}`);
});

test('cluster: a stopped master owning a busy user\'s channel loses nothing once its replica takes over', async () => {
  // No connection drops: the pods notice the new master in the slot map
  // and subscribe there, while the old one still sleeps.
  const figures = await masterFault('cp', 'SIGSTOP');
  console.log(`# cluster SIGSTOP figures: ${JSON.stringify(figures)}`);
});

/** What `redis-cli --cluster reshard` does for one slot: mark, move its keys, hand it over. */
function moveSlot(slot, from, to) {
  redisCli(to.port, 'cluster', 'setslot', slot, 'importing', from.id);
  redisCli(from.port, 'cluster', 'setslot', slot, 'migrating', to.id);
  for (;;) {
    const keys = redisCli(from.port, 'cluster', 'getkeysinslot', slot, 100).split('\n').filter(Boolean);
    if (keys.length === 0) break;
    // The nodes talk TLS among themselves (tls-cluster yes): MIGRATE too.
    redisCli(from.port, 'migrate', '127.0.0.1', to.port + 1000, '', 0, 5000, 'KEYS', ...keys);
  }
  for (const n of nodes().filter((n) => n.master && !n.failed)) redisCli(n.port, 'cluster', 'setslot', slot, 'node', to.id);
}

test('cluster: the busy channel\'s slot moved to another master during traffic loses nothing', async () => {
  const figures = await writeStreamThrough('cm', async (slot, owner, channel) => {
    const target = nodes().find((n) => n.master && !n.failed && n.id !== owner.id);
    const movedAt = Date.now();
    moveSlot(slot, owner, target);
    // The old owner told the pods SUNSUBSCRIBE; they followed the slot.
    await waitFor(() => shardSubscribers(target.port, channel) === 2, { what: 'both pods resubscribed on the slot\'s new owner', timeout: 20000 });
    assert.equal(shardSubscribers(owner.port, channel), 0);
    return { moved_to: target.port, resubscribed_ms: Date.now() - movedAt };
  });
  console.log(`# cluster reshard figures: ${JSON.stringify(figures)}`);
});

test('cluster: a key quota holds exactly across two pods while its counter\'s slot moves', async () => {
  const { store, p1, p2 } = await twoPods('cq');
  try {
    const key = p1.createKey(uid('u'), ['--quota-per-hour', '60']);
    const count = { 200: 0, 429: 0 };
    const hit = async (i) => {
      const { status } = await [p1, p2][i % 2].rest('GET', '/sync-storage/keys', key);
      count[status] = (count[status] ?? 0) + 1;
    };
    for (let i = 0; i < 20; i++) await hit(i);
    // The key's counter, wherever it lives, and its slot moved mid-stream.
    const counter = PORTS.flatMap((p) => redisCli(p, '--scan', '--pattern', `ss:${store}:rl:{k:*`).split('\n').filter(Boolean))[0];
    const slot = slotOf(counter);
    const from = ownerOf(slot);
    const to = nodes().find((n) => n.master && !n.failed && n.id !== from.id);
    const during = (async () => {
      for (let i = 20; i < 50; i++) await hit(i);
    })();
    moveSlot(slot, from, to);
    await during;
    for (let i = 50; i < 80; i++) await hit(i);
    assert.equal(ownerOf(slot).id, to.id);
    assert.deepEqual(count, { 200: 60, 429: 20 }, 'exactly the quota admitted, through MOVED and ASK');
    const metrics = await (await fetch(`${p1.base}/metrics`)).text();
    assert.match(metrics, /^syncstore_rate_limit_errors_total\{reason="unreachable"\} 0$/m, 'no check failed open');
  } finally {
    await p1.stop();
    await p2.stop();
  }
});
