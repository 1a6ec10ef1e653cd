// Fan-out on a Redis Cluster (sharded pub/sub), and its faults: kill -9 of
// the master that owns a busy user's channel, and that channel's slot moved
// to another master during traffic. The cluster is the one
// scripts/redis-cluster-up.sh starts (TEST_REDIS_CLUSTER, exported by the
// test command); the tests fail without it rather than skip.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Server, Device, uid, waitFor, sleep, PG_URL } from './harness.mjs';

const SEEDS = process.env.TEST_REDIS_CLUSTER;
if (!SEEDS) throw new Error('TEST_REDIS_CLUSTER is not set: run scripts/redis-cluster-up.sh (the test command does)');
const PORTS = SEEDS.split(',').map((s) => Number(s.split(':').pop()));
const CLUSTER_UP = fileURLToPath(new URL('../../scripts/redis-cluster-up.sh', import.meta.url));

function cli(port, ...args) {
  return execFileSync('redis-cli', ['-p', String(port), ...args.map(String)], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
}

/** The first node that answers. */
function livePort() {
  for (const p of PORTS) {
    try {
      if (cli(p, 'ping') === 'PONG') return p;
    } catch {}
  }
  throw new Error('no cluster node answers');
}

/** The cluster's nodes as a live node sees them. */
function nodes() {
  return cli(livePort(), 'cluster', 'nodes').split('\n').map((line) => {
    const [id, addr, flags, master, , , , , ...slots] = line.trim().split(' ');
    return {
      id,
      port: Number(addr.split('@')[0].split(':').pop()),
      master: flags.includes('master'),
      failed: flags.includes('fail'),
      masterId: master,
      ranges: slots.filter((s) => !s.startsWith('[')).map((s) => s.split('-').map(Number)).map(([a, b]) => [a, b ?? a]),
    };
  });
}

const slotOf = (channel) => Number(cli(livePort(), 'cluster', 'keyslot', channel));

/** The live master serving `slot`. */
function ownerOf(slot) {
  return nodes().find((n) => n.master && !n.failed && n.ranges.some(([a, b]) => slot >= a && slot <= b));
}

/** How many connections subscribe `channel` on the node at `port` (sharded). */
const shardSubscribers = (port, channel) => Number(cli(port, 'pubsub', 'shardnumsub', channel).split('\n')[1]);

/** A node's count of pub/sub messages received over the cluster bus (classic and sharded). */
function busReceived(port) {
  const info = cli(port, 'cluster', 'info');
  const field = (name) => Number(info.match(new RegExp(`^${name}:(\\d+)`, 'm'))?.[1] ?? 0);
  return field('cluster_stats_messages_publish_received') + field('cluster_stats_messages_publishshard_received');
}

function deviceState(d) {
  const state = {};
  for (const e of d.pending.flat()) {
    if (e.type === 'remove') delete state[e.key];
    else state[e.key] = e.value;
  }
  const live = [...d.updates.map((e) => ({ ...e, remove: false })), ...d.removes.map((e) => ({ ...e, remove: true }))]
    .sort((x, y) => x.seq - y.seq);
  for (const e of live) {
    if (e.remove) delete state[e.key];
    else state[e.key] = e.value;
  }
  return state;
}

const sorted = (o) => JSON.stringify(Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]])));

async function twoPods(tag) {
  const store = uid(tag).slice(0, 40);
  const env = { DATABASE_URL: PG_URL, REDIS_URL: `redis+cluster://${SEEDS}`, SYNCSTORE_STORE: store };
  const p1 = await Server.start({ ...env, POD_NAME: `${tag}-1` });
  const p2 = await Server.start({ ...env, POD_NAME: `${tag}-2` });
  return { store, p1, p2 };
}

test('cluster: a write reaches the other pod through the channel\'s shard only, never a broadcast', async () => {
  const { store, p1, p2 } = await twoPods('cs');
  try {
    const user = uid('u');
    const key = p1.createKey(user);
    const writer = await new Device(p1.url, { userId: user, instanceId: 'writer', apiKey: key }).ready();
    const reader = await new Device(p2.url, { userId: user, instanceId: 'reader', apiKey: key }).ready();
    const channel = `ss:${store}:u:${user}`;
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
 * Watchers on both pods, a REST write stream alternating over the pods, and
 * `fault(slot, owner)` 300 ms into it. Checks that no acknowledged write is
 * lost (the database and every device hold the last acked value of every
 * key), that no device applies a seq twice, and that every device reaches
 * the last seq; returns the figures.
 */
async function writeStreamThrough(tag, fault) {
  const { store, p1, p2 } = await twoPods(tag);
  try {
    const user = uid('u');
    const key = p1.createKey(user);
    const watchers = [
      await new Device(p2.url, { userId: user, instanceId: 'w1', apiKey: key }).ready(),
      await new Device(p2.url, { userId: user, instanceId: 'w2', apiKey: key }).ready(),
      await new Device(p1.url, { userId: user, instanceId: 'w3', apiKey: key }).ready(),
    ];
    const channel = `ss:${store}:u:${user}`;
    const slot = slotOf(channel);
    const owner = ownerOf(slot);
    await waitFor(() => shardSubscribers(owner.port, channel) === 2, { what: 'both pods subscribed' });
    const acked = {};
    let lastSeq = 0;
    const ackTimes = [];
    const writes = (async () => {
      for (let i = 0; i < 200; i++) {
        const r = await [p1, p2][i % 2].rest('PUT', `/sync-storage/item/k${i % 13}`, key, { value: i });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        acked[`k${i % 13}`] = i;
        lastSeq = Math.max(lastSeq, r.body.item.seq);
        ackTimes.push(Date.now());
        await sleep(10);
      }
    })();
    await sleep(300);
    const faultAt = Date.now();
    const figures = await fault(slot, owner, channel);
    await writes;
    const stored = Object.fromEntries((await p1.rest('GET', '/sync-storage/items', key)).body.map((i) => [i.key, i.value]));
    assert.equal(sorted(stored), sorted(acked), 'the database holds every acknowledged write');
    assert.equal(lastSeq, 200, 'one seq per write, none applied twice');
    for (const w of watchers) {
      await waitFor(() => sorted(deviceState(w)) === sorted(acked), { what: `${w.socket.io.opts.query.instanceId} to converge`, timeout: 20000 });
      const seqs = w.liveSeqs();
      assert.equal(new Set(seqs).size, seqs.length, 'no seq delivered twice');
      assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'seqs arrive in order');
      assert.equal(Math.max(...seqs), lastSeq, 'the last write arrived');
    }
    const convergedAt = Date.now();
    for (const w of watchers) w.close();
    const repairedAt = faultAt + figures.resubscribed_ms;
    return {
      ...figures,
      // Acked while the channel had no live subscription: delivered by the catch-up.
      writes_during_fault: ackTimes.filter((t) => t >= faultAt && t <= repairedAt).length,
      writes_after_fault: ackTimes.filter((t) => t >= faultAt).length,
      converged_after_last_ack_ms: convergedAt - ackTimes[ackTimes.length - 1],
      lost: 0,
    };
  } finally {
    await p1.stop();
    await p2.stop();
  }
}

test('cluster: kill -9 of the master owning a busy user\'s channel loses no acknowledged write', async () => {
  try {
    const figures = await writeStreamThrough('ck', async (slot, owner, channel) => {
      const killedAt = Date.now();
      process.kill(Number(cli(owner.port, 'info', 'server').match(/process_id:(\d+)/)[1]), 'SIGKILL');
      const promoted = await waitFor(() => {
        try {
          const o = ownerOf(slot);
          return o && o.id !== owner.id ? o : null;
        } catch {
          return null;
        }
      }, { what: 'a replica promoted', timeout: 20000 });
      const promotedAfter = Date.now() - killedAt;
      // The pods' subscriptions moved to the new master.
      await waitFor(() => shardSubscribers(promoted.port, channel) === 2, { what: 'both pods resubscribed on the new master', timeout: 20000 });
      return { promoted_ms: promotedAfter, resubscribed_ms: Date.now() - killedAt };
    });
    console.log(`# cluster kill -9 figures: ${JSON.stringify(figures)}`);
  } finally {
    execFileSync('bash', [CLUSTER_UP, 'heal'], { stdio: 'ignore' });
  }
});

/** What `redis-cli --cluster reshard` does for one slot: mark, move its keys, hand it over. */
function moveSlot(slot, from, to) {
  cli(to.port, 'cluster', 'setslot', slot, 'importing', from.id);
  cli(from.port, 'cluster', 'setslot', slot, 'migrating', to.id);
  for (;;) {
    const keys = cli(from.port, 'cluster', 'getkeysinslot', slot, 100).split('\n').filter(Boolean);
    if (keys.length === 0) break;
    cli(from.port, 'migrate', '127.0.0.1', to.port, '', 0, 5000, 'KEYS', ...keys);
  }
  for (const n of nodes().filter((n) => n.master && !n.failed)) cli(n.port, 'cluster', 'setslot', slot, 'node', to.id);
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
