// Fan-out behind Redis Sentinel (REDIS_URL=redis+sentinel://…/mymaster), and
// its failovers during traffic: one asked for (SENTINEL FAILOVER, the old
// master demoted with its connections open) and one forced (kill -9 of the
// master). The setup is the one scripts/redis-sentinel-up.sh starts
// (TEST_REDIS_SENTINEL, exported by the test command); the tests fail
// without it rather than skip.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Server, Device, uid, waitFor, PG_URL, redisCli } from './harness.mjs';
import { writeStream } from './write_stream.mjs';

const REDIS_URL = process.env.TEST_REDIS_SENTINEL;
if (!REDIS_URL) throw new Error('TEST_REDIS_SENTINEL is not set: run scripts/redis-sentinel-up.sh (the test command does)');
const SENTINELS = REDIS_URL.split('://')[1].split('/')[0].split(',').map((s) => Number(s.split(':').pop()));
const NAME = REDIS_URL.split('/').pop();
const SENTINEL_UP = fileURLToPath(new URL('../../scripts/redis-sentinel-up.sh', import.meta.url));


/** The master's port, as the first sentinel that answers names it. */
function masterPort() {
  for (const s of SENTINELS) {
    try {
      return Number(redisCli(s, 'sentinel', 'get-master-addr-by-name', NAME).split('\n')[1]);
    } catch {}
  }
  throw new Error('no sentinel answers');
}

/** How many connections subscribe `channel` on the server at `port`. */
function subscribers(port, channel) {
  try {
    return Number(redisCli(port, 'pubsub', 'numsub', channel).split('\n')[1]);
  } catch {
    return -1; // the server does not answer
  }
}

/** Waits until the sentinels name a master other than `old`. */
const newMaster = (old) => waitFor(() => {
  try {
    const m = masterPort();
    return m !== old ? m : null;
  } catch {
    return null;
  }
}, { what: 'the sentinels to name a new master', timeout: 20000 });

/**
 * Two pods behind Sentinel, a write stream, and `fault(master, channel)`
 * (and the pods) once both pods subscribe the user's channel on the master;
 * `cleanup`, then a heal of the setup, afterwards.
 */
async function failoverDuring(tag, fault, cleanup = () => {}) {
  const store = uid(tag).slice(0, 40);
  const env = { DATABASE_URL: PG_URL, REDIS_URL, SYNCSTORE_STORE: store };
  const p1 = await Server.start({ ...env, POD_NAME: `${tag}-1` });
  const p2 = await Server.start({ ...env, POD_NAME: `${tag}-2` });
  try {
    return await writeStream(p1, p2, async (user) => {
      const channel = `ss:${store}:u:${user}`;
      const master = masterPort();
      await waitFor(() => subscribers(master, channel) === 2, { what: 'both pods subscribed on the master' });
      return () => fault(master, channel, { p1, p2 });
    });
  } finally {
    await p1.stop();
    await p2.stop();
    cleanup();
    execFileSync('bash', [SENTINEL_UP, 'heal'], { stdio: 'ignore' });
  }
}

/** Waits for both pods on the new master; the figures of one failover. */
async function followed(at, old, channel) {
  const master = await newMaster(old);
  const promoted = Date.now() - at;
  await waitFor(() => subscribers(master, channel) === 2, { what: 'both pods subscribed on the new master', timeout: 20000 });
  return { master, promoted_ms: promoted, resubscribed_ms: Date.now() - at };
}

test('sentinel: a failover asked of the sentinels during traffic: the pods follow the new master and lose nothing', async () => {
  const figures = await failoverDuring('sf', async (old, channel) => {
    const at = Date.now();
    assert.equal(redisCli(SENTINELS[0], 'sentinel', 'failover', NAME), 'OK');
    const f = await followed(at, old, channel);
    // The old master is a replica now, its connections still open: the
    // pods left it for the new master rather than stay subscribed there.
    await waitFor(() => subscribers(old, channel) === 0, { what: 'the pods gone from the demoted master', timeout: 20000 });
    return f;
  });
  console.log(`# sentinel failover figures: ${JSON.stringify(figures)}`);
});

test('sentinel: kill -9 of the master during traffic: a replica is promoted and nothing acknowledged is lost', async () => {
  const figures = await failoverDuring('sk', async (old, channel) => {
    const pid = Number(redisCli(old, 'info', 'server').match(/process_id:(\d+)/)[1]);
    const at = Date.now();
    process.kill(pid, 'SIGKILL');
    return followed(at, old, channel);
  });
  console.log(`# sentinel kill -9 figures: ${JSON.stringify(figures)}`);
});

test('sentinel: a stopped master while devices come and go: the pods follow the promoted replica', async () => {
  let stopped;
  let newcomer;
  const figures = await failoverDuring('ss', async (old, channel, { p1, p2 }) => {
    stopped = Number(redisCli(old, 'info', 'server').match(/process_id:(\d+)/)[1]);
    const at = Date.now();
    process.kill(stopped, 'SIGSTOP');
    // A device of another user on the pod: its SUBSCRIBE goes to the
    // stopped master and never gets an answer.
    const other = uid('u');
    newcomer = await new Device(p2.url, { userId: other, instanceId: 'n1', apiKey: p1.createKey(other) }).ready();
    return followed(at, old, channel);
  }, () => {
    newcomer?.close();
    if (stopped) process.kill(stopped, 'SIGCONT');
  });
  console.log(`# sentinel SIGSTOP figures: ${JSON.stringify(figures)}`);
});
