// Jepsen-style chaos test: 3 `syncstore serve` processes on PostgreSQL and
// Redis, 30 devices of 5 users (the official socket.io-client) plus REST
// writers making random sets, removes and conflicting writes under several
// strategies, while faults are injected at random: kill -9 and restart of a
// server, Redis restart, PostgreSQL restart, SIGSTOP/SIGCONT, forced client
// disconnects. Then a checker verifies, against the database:
//   - every device of a user converges to the database's state, each live
//     key at the database's seq (so no device is left with a gap it did not
//     repair);
//   - every acknowledged write is in the final state or superseded by a
//     later one (its key's final seq is at least the write's), and every
//     acknowledged conflict loser is recorded as a conflict: none is lost;
//   - no device applied a delivery twice (duplicates are counted, and
//     applied only by seq);
//   - every socket write carries an `opId` and is sent again while its ack
//     is lost, as the README's client does (a device is not sent its own
//     writes: their ack is its only news of them);
//   - writes whose ack was lost and that the client sent again (the device
//     drops its connection right after sending, then retries with the same
//     `opId` until acknowledged) were applied once: no two versions of an
//     `r*` key carry the same operation, no conflict sets an operation
//     against itself, and every retry's `applied` reply is its own write.
//
//
// With CHAOS_REDIS=cluster the servers fan out through the Redis Cluster of
// scripts/redis-cluster-up.sh (TEST_REDIS_CLUSTER, sharded pub/sub), and
// the Redis fault is a kill -9 of a random master: its replica is promoted,
// then the killed node returns as a replica (the script's `heal`).
//
//   node e2e/chaos/chaos.mjs                    # 30 s, seed 42
//   CHAOS_SECONDS=300 CHAOS_SEED=7 node e2e/chaos/chaos.mjs
//   CHAOS_REDIS=cluster node e2e/chaos/chaos.mjs
import { execFileSync } from 'node:child_process';
import { io } from 'socket.io-client';
import { Server, Redis, RedisCluster, PG_URL, uid, sleep, waitFor } from '../../tests/js/harness.mjs';

const SECONDS = Number(process.env.CHAOS_SECONDS ?? 30);
const SEED = Number(process.env.CHAOS_SEED ?? 42);
const USERS = 5;
const DEVICES_PER_USER = 6;
const KEYS = 8;
const STRATEGIES = ['LAST_WRITE_WINS', 'FIRST_WRITE_WINS', 'MERGE'];
const REDIS_MODE = process.env.CHAOS_REDIS ?? 'single';
// How long a device's connection may take to become ready (pending-updates).
const STALL_MS = 15000;

// mulberry32: a small seeded PRNG. Each actor draws from a stream of its
// own (the faults one, every device one), so a seed replays the same fault
// schedule and the same operations per device whatever the timing.
function mulberry32(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const faultRand = mulberry32(SEED);
const reconnectRand = mulberry32(SEED ^ 0x5bd1e995);
const pickWith = (rand) => (xs) => xs[Math.floor(rand() * xs.length)];

const stats = { ops: 0, acked: 0, unacked: 0, conflicts: 0, faults: {}, duplicates: 0, replays: 0, resyncs: 0, retried: 0, retries: 0, resent: 0, unackedBy: {}, stalledSessions: 0, stalledConnects: 0 };
const retried = []; // { user, key, opId, reply }: writes whose first ack was lost
const acked = []; // { user, key, seq, kind, status, conflictId }
const log = (...a) => console.log(`[chaos ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const t0 = Date.now();

function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

function psql(sql) {
  return execFileSync('psql', [PG_URL, '-AtX', '-c', sql], { encoding: 'utf8' }).trim();
}

class ChaosDevice {
  constructor(user, key, instanceId, servers) {
    Object.assign(this, { user, key, instanceId, servers });
    this.items = new Map(); // key -> { seq, value, deleted }
    this.seen = new Set(); // `${key}@${seq}` deliveries received
    this.maxSeq = 0;
    this.connect();
  }
  live() {
    return this.servers.filter((s) => s.up);
  }
  connect() {
    const server = pickWith(reconnectRand)(this.live().length ? this.live() : this.servers);
    this.socket?.removeAllListeners();
    this.socket?.disconnect();
    this.ready = false;
    this.attemptAt = Date.now();
    const s = io(server.url, {
      transports: ['websocket'], reconnection: false, forceNew: true, timeout: 3000,
      query: { userId: this.user, instanceId: this.instanceId }, auth: { apiKey: this.key },
    });
    this.socket = s;
    s.on('sync:update', (e) => this.apply(e.key, e.seq, e.value, false, true));
    s.on('sync:remove', (e) => this.apply(e.key, e.seq, null, true, true));
    s.on('pending-updates', (events, ack) => {
      for (const e of events) {
        stats.replays += 1;
        this.apply(e.key, e.seq, e.value, e.type === 'remove', true);
      }
      if (typeof ack === 'function') ack();
      this.ready = true;
    });
    s.on('sync:resync', async () => {
      stats.resyncs += 1;
      try {
        const items = await s.timeout(5000).emitWithAck('sync:getAll', {});
        for (const it of items.items ?? items) this.apply(it.key, it.seq, it.value, false, false);
      } catch { /* the reconnect repairs it */ }
    });
    const retry = () => {
      if (this.stopped) return;
      this.ready = false;
      setTimeout(() => this.connect(), 100 + reconnectRand() * 400);
    };
    s.on('disconnect', retry);
    s.on('connect_error', retry);
    // A connection that neither becomes ready nor fails is counted and made
    // again: accepted without `pending-updates` (the server's fault, which
    // fails the run), or never answered (the client's stall).
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => {
      if (this.ready || this.stopped || Date.now() - this.attemptAt < STALL_MS) return;
      const accepted = this.socket.connected;
      stats[accepted ? 'stalledSessions' : 'stalledConnects'] += 1;
      log(`${this.instanceId}: ${accepted ? 'connected, but no pending-updates' : 'no connection'} after ${STALL_MS / 1000} s; connecting again`);
      this.connect();
    }, 1000);
  }
  apply(key, seq, value, deleted, delivered) {
    if (delivered) {
      const id = `${key}@${seq}`;
      if (this.seen.has(id)) stats.duplicates += 1;
      this.seen.add(id);
    }
    this.maxSeq = Math.max(this.maxSeq, seq);
    const cur = this.items.get(key);
    if (!cur || seq > cur.seq) this.items.set(key, { seq, value, deleted });
  }
  async call(event, payload) {
    if (!this.ready) return null;
    try {
      return await this.socket.timeout(4000).emitWithAck(event, payload);
    } catch {
      return null; // not acknowledged: no claim is made about it
    }
  }
  /**
   * A write as the README's client makes it: with an `opId`, sent again
   * while its ack is lost (socket.io-client's `retries`), so that the device
   * learns what became of it: the server sends a device the changes of its
   * user's other instances, not its own write, whose ack is its only news
   * of it. A server-side failure is sent again too: a commit whose
   * answer the database lost (a restart) may have happened, and the retry
   * gets its reply. Gives up 20 s after `until`; other errors are final.
   */
  async write(event, payload, until) {
    const write = { ...payload, opId: `${this.instanceId}-w${(this.writes = (this.writes ?? 0) + 1)}` };
    const lost = (r) => !r || ['INTERNAL', 'SERVICE_UNAVAILABLE', 'REQUEST_TIMEOUT'].includes(r.error?.code);
    let reply = await this.call(event, write);
    while (lost(reply) && Date.now() < until + 20000) {
      await waitFor(() => this.ready || this.stopped, { timeout: 10000, what: 'reconnect' }).catch(() => {});
      stats.resent += 1;
      reply = await this.call(event, write);
      if (lost(reply)) await sleep(100);
    }
    return reply;
  }
  /** Live keys with the seq and value this device holds: equal to the
   * database's only if it has no gap left unrepaired. */
  state() {
    const out = {};
    for (const [k, v] of this.items) if (!v.deleted) out[k] = `${v.seq}:${canonical(v.value)}`;
    return out;
  }
  stop() {
    this.stopped = true;
    clearInterval(this.watchdog);
    this.socket?.removeAllListeners();
    this.socket?.disconnect();
  }
}

function record(user, key, kind, reply) {
  stats.ops += 1;
  if (!reply || reply.error) {
    stats.unacked += 1;
    const why = `${kind}: ${reply?.error?.code ?? 'no reply'}`;
    stats.unackedBy[why] = (stats.unackedBy[why] ?? 0) + 1;
    return;
  }
  stats.acked += 1;
  const seq = reply.item?.seq ?? reply.seq;
  acked.push({ user, key, kind, status: reply.status, seq, conflictId: reply.conflictId });
  if (reply.conflictId) stats.conflicts += 1;
}

async function operate(devices, users, servers, until) {
  const workers = devices.map(async (d, i) => {
    const rand = mulberry32(SEED * 7919 + i + 1);
    const pick = pickWith(rand);
    let n = 0;
    while (Date.now() < until) {
      await sleep(20 + rand() * 80);
      const key = `k${Math.floor(rand() * KEYS)}`;
      const r = rand();
      const strategy = pick(STRATEGIES);
      const value = { [`d${i}`]: ++n, at: Date.now() };
      if (r < 0.1) {
        // A write whose ack is lost: sent, then the connection dropped at
        // once (the server still commits it), then sent again, with the
        // same opId, until acknowledged.
        if (!d.ready) continue;
        const rkey = `r${Math.floor(rand() * 4)}`;
        const opId = `${d.instanceId}-op${++n}`;
        const write = { key: rkey, value: { op: opId }, opId, timestamp: Date.now(), metadata: { conflictStrategy: 'LAST_WRITE_WINS' } };
        d.socket.emit('sync:set', write);
        d.socket.disconnect();
        let reply = null;
        for (let attempt = 0; attempt < 20 && !reply && Date.now() < until + 20000; attempt++) {
          await waitFor(() => d.ready, { timeout: 10000, what: 'reconnect' }).catch(() => {});
          stats.retries += 1;
          reply = await d.call('sync:set', write);
          if (reply?.error) reply = null;
        }
        stats.retried += 1;
        retried.push({ user: d.user, key: rkey, opId, reply });
        if (reply?.item) d.apply(rkey, reply.item.seq, reply.item.value, reply.item.isDeleted === true, false);
        continue;
      }
      if (r < 0.55) {
        // A stale version now and then: a conflicting write.
        const known = d.items.get(key);
        const version = rand() < 0.3 ? 1 : undefined;
        const reply = await d.write('sync:set', { key, value, metadata: { conflictStrategy: strategy }, ...(version && known ? { version } : {}) }, until);
        // A write that lost to a removal replies with the removal.
        if (reply && !reply.error && reply.item) d.apply(key, reply.item.seq, reply.item.value, reply.item.isDeleted === true, false);
        record(d.user, key, 'set', reply);
      } else if (r < 0.7) {
        const reply = await d.write('sync:remove', { key }, until);
        if (reply && !reply.error && reply.seq) d.apply(key, reply.seq, null, true, false);
        record(d.user, key, 'remove', reply);
      } else if (r < 0.85) {
        const server = pick(servers.filter((s) => s.up).length ? servers.filter((s) => s.up) : servers);
        try {
          const res = await fetch(`${server.base}/api/v1/sync-storage/item/${key}`, {
            method: 'PUT',
            headers: { 'X-API-Key': users[d.user], 'Content-Type': 'application/json', 'X-Instance-Id': `rest-${i}` },
            body: JSON.stringify({ value, metadata: { conflictStrategy: strategy } }),
            signal: AbortSignal.timeout(4000),
          });
          const body = await res.json();
          record(d.user, key, 'rest-set', res.status === 200 || res.status === 409 ? body : null);
        } catch {
          record(d.user, key, 'rest-set', null);
        }
      } else {
        const reply = await d.call('sync:ack', { seq: d.maxSeq });
        if (reply === null) await sleep(50);
      }
    }
  });
  await Promise.all(workers);
}

async function faults(servers, redis, devices, until) {
  const rand = faultRand;
  const pick = pickWith(rand);
  const fault = (name) => { stats.faults[name] = (stats.faults[name] ?? 0) + 1; log('fault:', name); };
  let last = Date.now();
  while (Date.now() < until - 3000) {
    await sleep(1500 + rand() * 2500);
    // On the cluster, the first fault is always the cluster's own.
    const kind = REDIS_MODE === 'cluster' && !stats.faults[redis.fault]
      ? 'redis'
      : pick(['kill9', 'kill9', 'redis', 'postgres', 'pause', 'disconnect']);
    if (kind === 'kill9') {
      const s = pick(servers.filter((x) => x.up));
      if (!s) continue;
      fault(`kill -9 ${s.name}`);
      s.up = false;
      await s.kill9();
      await sleep(500 + rand() * 1500);
      await s.launch();
      s.up = true;
    } else if (kind === 'redis') {
      fault(redis.fault);
      await redis.restart(rand);
    } else if (kind === 'postgres') {
      fault('restart PostgreSQL');
      const version = execFileSync('bash', ['-c', 'ls /usr/lib/postgresql | sort -V | tail -1'], { encoding: 'utf8' }).trim();
      execFileSync('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', 'restart'], { stdio: 'ignore' });
      await waitFor(() => { try { return psql('select 1') === '1'; } catch { return false; } }, { timeout: 30000, what: 'postgres' });
    } else if (kind === 'pause') {
      const s = pick(servers.filter((x) => x.up));
      if (!s) continue;
      fault(`SIGSTOP ${s.name}`);
      s.proc.kill('SIGSTOP');
      await sleep(1000 + rand() * 2000);
      s.proc.kill('SIGCONT');
    } else {
      fault('disconnect 5 devices');
      for (let i = 0; i < 5; i++) pick(devices).socket.disconnect();
    }
    last = Date.now();
  }
  return last;
}

/**
 * The Redis fault on the cluster: kill -9 of a random master; waits for a
 * replica to take its slots, then for the killed node to return as a
 * replica. The shared cluster is left as it was found: whole.
 */
class ClusterFaults {
  fault = 'kill -9 a Redis Cluster master';
  constructor(cluster) {
    this.cluster = cluster;
  }
  get url() {
    return this.cluster.url;
  }
  async restart(rand) {
    const masters = this.cluster.nodes().filter((n) => n.master && !n.failed && n.ranges.length);
    const victim = pickWith(rand)(masters);
    const [slot] = victim.ranges[0];
    process.kill(this.cluster.pidOf(victim.port), 'SIGKILL');
    log(`killed the master on :${victim.port}`);
    await waitFor(() => {
      try {
        const owner = this.cluster.ownerOf(slot);
        return owner && owner.id !== victim.id;
      } catch {
        return false;
      }
    }, { timeout: 30000, interval: 250, what: 'a replica promoted' });
    await this.cluster.heal();
  }
  stop() {}
}

function truth(user) {
  const rows = psql(`SELECT item_key, value, seq, is_deleted FROM sync_items WHERE user_id = '${user}'`);
  const items = {};
  const seqs = {};
  for (const line of rows ? rows.split('\n') : []) {
    const [key, value, seq, deleted] = line.split('|');
    seqs[key] = Number(seq);
    if (deleted === 'f') items[key] = `${seq}:${canonical(JSON.parse(value))}`;
  }
  return { items, seqs };
}

async function main() {
  if (!['single', 'cluster'].includes(REDIS_MODE)) throw new Error(`CHAOS_REDIS=${REDIS_MODE}: single or cluster`);
  const redis = REDIS_MODE === 'cluster'
    ? new ClusterFaults(RedisCluster.fromEnv())
    : Object.assign(await Redis.start(), { fault: 'restart Redis' });
  // Versions kept long enough to count every write of the `r*` keys.
  const env = { DATABASE_URL: PG_URL, REDIS_URL: redis.url, SYNCSTORE_STORE: uid('chaos'), DB_CONNECTION_LIMIT: '8', CONFLICT_HISTORY_VERSIONS: '1000' };
  const servers = [];
  for (let i = 0; i < 3; i++) {
    const s = await Server.start(env);
    s.name = `serve-${i}`;
    s.up = true;
    servers.push(s);
  }
  const users = {};
  const devices = [];
  for (let u = 0; u < USERS; u++) {
    const user = uid(`chaos-u${u}`);
    users[user] = servers[0].createKey(user);
    for (let d = 0; d < DEVICES_PER_USER; d++) devices.push(new ChaosDevice(user, users[user], `dev-${u}-${d}`, servers));
  }
  await waitFor(() => devices.every((d) => d.ready), { timeout: 30000, what: 'devices' });
  log(`${servers.length} servers, ${devices.length} devices of ${USERS} users; seed ${SEED}, ${SECONDS} s`);

  const until = Date.now() + SECONDS * 1000;
  const [, lastFault] = await Promise.all([operate(devices, users, servers, until), faults(servers, redis, devices, until)]);
  log('faults stop; waiting for convergence');
  for (const s of servers) if (!s.up) { await s.launch(); s.up = true; }

  // Convergence: every device's state equals the database's, for its user.
  let unconverged = [];
  const converged = await waitFor(() => {
    unconverged = [];
    const truths = Object.fromEntries(Object.keys(users).map((u) => [u, truth(u).items]));
    for (const d of devices) {
      if (canonical(d.state()) !== canonical(truths[d.user])) unconverged.push(d.instanceId);
    }
    return unconverged.length === 0 ? Date.now() : null;
  }, { timeout: 60000, interval: 500, what: 'convergence' }).catch(() => null);

  // No acknowledged write lost.
  const finalSeqs = Object.fromEntries(Object.keys(users).map((u) => [u, truth(u).seqs]));
  const lost = acked.filter((w) => w.status !== 'rejected' && w.status !== 'pending_review' && !((finalSeqs[w.user][w.key] ?? 0) >= w.seq));
  const losers = new Set(acked.filter((w) => w.conflictId).map((w) => w.conflictId));
  const userList = Object.keys(users).map((u) => `'${u}'`).join(',');
  const recorded = new Set(psql(`SELECT id FROM conflicts WHERE user_id IN (${userList})`).split('\n'));
  const missingConflicts = [...losers].filter((id) => !recorded.has(id)).length;

  // Writes sent again after a lost ack: applied once, never in conflict
  // with themselves, and each `applied` reply is the retried write's own.
  const versionsByOp = {};
  for (const line of psql(`SELECT value FROM item_versions WHERE user_id IN (${userList}) AND item_key LIKE 'r%'`).split('\n')) {
    const op = line ? JSON.parse(line).op : undefined;
    if (op) versionsByOp[op] = (versionsByOp[op] ?? 0) + 1;
  }
  const appliedTwice = Object.entries(versionsByOp).filter(([, n]) => n > 1);
  const selfConflicts = Number(psql(`SELECT count(*) FROM conflicts WHERE user_id IN (${userList}) AND item_key LIKE 'r%' AND incoming_value = current_value`));
  const unacknowledgedRetries = retried.filter((w) => !w.reply).length;
  const foreignReplies = retried.filter((w) => w.reply?.status === 'applied' && w.reply.item?.value?.op !== w.opId).length;

  devices.forEach((d) => d.stop());
  for (const s of servers) await s.stop();
  redis.stop();

  const faultCount = Object.values(stats.faults).reduce((a, b) => a + b, 0);
  console.log('\n== chaos summary');
  console.log(`seed ${SEED}, ${SECONDS} s, ${servers.length} servers, ${devices.length} devices, ${USERS} users, Redis: ${REDIS_MODE}`);
  console.log(`operations: ${stats.ops} (acknowledged ${stats.acked}, not acknowledged ${stats.unacked} ${JSON.stringify(stats.unackedBy)}; socket writes sent again after a lost ack: ${stats.resent}), conflicts recorded: ${stats.conflicts}`);
  console.log(`faults injected: ${faultCount} ${JSON.stringify(stats.faults)}`);
  console.log(`deliveries replayed on reconnect: ${stats.replays}, duplicate deliveries (applied once by seq): ${stats.duplicates}, resyncs: ${stats.resyncs}`);
  console.log(`acknowledged writes lost: ${lost.length}`);
  console.log(`conflict losers without a conflict record: ${missingConflicts}`);
  console.log(`writes retried after a lost ack: ${stats.retried} (${stats.retries} sends after the first; never acknowledged: ${unacknowledgedRetries}); applied twice: ${appliedTwice.length}, in conflict with themselves: ${selfConflicts}, applied replies not their own: ${foreignReplies}`);
  for (const [op, n] of appliedTwice.slice(0, 5)) console.log(`  applied ${n} times: ${op}`);
  console.log(`connections stalled ${STALL_MS / 1000} s: accepted without pending-updates ${stats.stalledSessions}, never answered ${stats.stalledConnects}`);
  console.log(`devices not converged: ${unconverged.length}${unconverged.length ? ` (${unconverged.slice(0, 5).join(', ')})` : ''}`);
  // What an unconverged device holds against the database, key by key, and
  // who wrote the database's row: enough to tell a lost delivery from a
  // write of the device's own whose ack it never got.
  for (const id of unconverged.slice(0, 3)) {
    const d = devices.find((x) => x.instanceId === id);
    const mine = d.state();
    const rows = psql(`SELECT item_key, seq, instance_id, is_deleted FROM sync_items WHERE user_id = '${d.user}'`);
    const writers = Object.fromEntries((rows ? rows.split('\n') : []).map((l) => l.split('|')).map(([k, seq, inst, del]) => [k, `seq ${seq} by ${inst}${del === 't' ? ' (removed)' : ''}`]));
    const truthNow = truth(d.user).items;
    for (const k of new Set([...Object.keys(mine), ...Object.keys(truthNow)])) {
      if (mine[k] !== truthNow[k]) console.log(`  ${id} ${k}: device ${mine[k] ?? '-'}, database ${truthNow[k] ?? '-'} (${writers[k]}); device ready ${d.ready}, max seq ${d.maxSeq}`);
    }
  }
  console.log(`convergence time after the last fault: ${converged ? ((converged - lastFault) / 1000).toFixed(1) + ' s' : 'never (60 s)'}`);
  for (const w of lost.slice(0, 10)) console.log('  lost:', JSON.stringify(w), 'final seq', finalSeqs[w.user][w.key]);
  const ok = lost.length === 0 && missingConflicts === 0 && unconverged.length === 0 && faultCount > 0
    && stats.retried > 0 && appliedTwice.length === 0 && selfConflicts === 0 && foreignReplies === 0 && unacknowledgedRetries === 0
    && (REDIS_MODE !== 'cluster' || stats.faults[redis.fault] > 0) && stats.stalledSessions === 0;
  console.log(`chaos: ${ok ? 'PASS' : 'FAIL'}`);
  process.exit(ok ? 0 : 1);
}

await main();
