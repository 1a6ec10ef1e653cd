// Fan-out behind Redis Sentinel (REDIS_URL=redis+sentinel://…/mymaster), and
// its failovers during traffic: one asked for (SENTINEL FAILOVER, the old
// master demoted with its connections open) and one forced (kill -9 of the
// master), and a requested failover over TLS with passwords on both the
// data nodes and the sentinels. The setups are the ones
// scripts/redis-sentinel-up.sh starts (TEST_REDIS_SENTINEL, and
// TEST_REDIS_SENTINEL_TLS with TEST_REDIS_SENTINEL_TLS_PASSWORD, exported by
// the test command); the tests fail without them rather than skip.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Server, Device, uid, waitFor, PG_URL, redisCli } from './harness.mjs';
import { writeStream } from './write_stream.mjs';

const SENTINEL_UP = fileURLToPath(new URL('../../scripts/redis-sentinel-up.sh', import.meta.url));

/**
 * A Sentinel setup of scripts/redis-sentinel-up.sh: the plain one, or the
 * TLS one whose data nodes and sentinels require distinct passwords.
 */
class Setup {
  constructor(url, { sentinelPassword, certs } = {}) {
    if (!url) throw new Error('TEST_REDIS_SENTINEL(_TLS) is not set: run scripts/redis-sentinel-up.sh (the test command does)');
    Object.assign(this, { url, sentinelPassword, certs });
    // scheme://[:password@]host:port,…/name
    const authority = url.split('://')[1].split('/')[0];
    const at = authority.lastIndexOf('@');
    this.sentinels = authority.slice(at + 1).split(',').map((h) => Number(h.split(':').pop()));
    this.dataPassword = at < 0 ? undefined : decodeURIComponent(authority.slice(0, at).split(':')[1] ?? '');
    this.name = url.split('/').pop();
  }
  /** The pods' environment. */
  env() {
    if (!this.certs) return { REDIS_URL: this.url };
    return { REDIS_URL: this.url, REDIS_SENTINEL_PASSWORD: this.sentinelPassword, REDIS_TLS_CA_FILE: `${this.certs}/ca.pem` };
  }
  /** redis-cli to a node or sentinel of the setup. */
  cli(port, ...args) {
    if (!this.certs) return redisCli(port, ...args);
    const password = this.sentinels.includes(port) ? this.sentinelPassword : this.dataPassword;
    return redisCli(port, '--tls', '--cacert', `${this.certs}/ca.pem`, '--no-auth-warning', '-a', password, ...args);
  }
  /** The master's port, as the first sentinel that answers names it. */
  masterPort() {
    for (const s of this.sentinels) {
      try {
        return Number(this.cli(s, 'sentinel', 'get-master-addr-by-name', this.name).split('\n')[1]);
      } catch {}
    }
    throw new Error('no sentinel answers');
  }
  /** How many connections subscribe `channel` on the server at `port`. */
  subscribers(port, channel) {
    try {
      return Number(this.cli(port, 'pubsub', 'numsub', channel).split('\n')[1]);
    } catch {
      return -1; // the server does not answer
    }
  }
  pidOf(port) {
    return Number(this.cli(port, 'info', 'server').match(/process_id:(\d+)/)[1]);
  }
  heal() {
    execFileSync('bash', [SENTINEL_UP, 'heal'], { stdio: 'ignore', env: { ...process.env, REDIS_SENTINEL_TLS: this.certs ? '1' : '' } });
  }
}

const PLAIN = new Setup(process.env.TEST_REDIS_SENTINEL);

/** Waits until the sentinels name a master other than `old`. */
const newMaster = (setup, old) => waitFor(() => {
  try {
    const m = setup.masterPort();
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
async function failoverDuring(setup, tag, fault, cleanup = () => {}) {
  const store = uid(tag).slice(0, 40);
  const env = { DATABASE_URL: PG_URL, ...setup.env(), SYNCSTORE_STORE: store };
  const p1 = await Server.start({ ...env, POD_NAME: `${tag}-1` });
  const p2 = await Server.start({ ...env, POD_NAME: `${tag}-2` });
  try {
    return await writeStream(p1, p2, async (user) => {
      const channel = `ss:${store}:u:${user}`;
      const master = setup.masterPort();
      await waitFor(() => setup.subscribers(master, channel) === 2, { what: 'both pods subscribed on the master' });
      return () => fault(master, channel, { p1, p2 });
    });
  } finally {
    await p1.stop();
    await p2.stop();
    cleanup();
    setup.heal();
  }
}

/** Waits for both pods on the new master; the figures of one failover. */
async function followed(setup, at, old, channel) {
  const master = await newMaster(setup, old);
  const promoted = Date.now() - at;
  await waitFor(() => setup.subscribers(master, channel) === 2, { what: 'both pods subscribed on the new master', timeout: 20000 });
  return { master, promoted_ms: promoted, resubscribed_ms: Date.now() - at };
}

/** A failover asked of the sentinels; the pods must leave the demoted master. */
const requestedFailover = (setup) => async (old, channel) => {
  const at = Date.now();
  assert.equal(setup.cli(setup.sentinels[0], 'sentinel', 'failover', setup.name), 'OK');
  const f = await followed(setup, at, old, channel);
  // The old master is a replica now, its connections still open: the
  // pods left it for the new master rather than stay subscribed there.
  await waitFor(() => setup.subscribers(old, channel) === 0, { what: 'the pods gone from the demoted master', timeout: 20000 });
  return f;
};

test('sentinel: a failover asked of the sentinels during traffic: the pods follow the new master and lose nothing', async () => {
  const figures = await failoverDuring(PLAIN, 'sf', requestedFailover(PLAIN));
  console.log(`# sentinel failover figures: ${JSON.stringify(figures)}`);
});

test('sentinel over TLS (rediss+sentinel://) with the sentinels\' own password: a requested failover loses nothing', async () => {
  const tls = new Setup(process.env.TEST_REDIS_SENTINEL_TLS, {
    sentinelPassword: process.env.TEST_REDIS_SENTINEL_TLS_PASSWORD,
    certs: process.env.TEST_TLS_CERTS,
  });
  const figures = await failoverDuring(tls, 'st', requestedFailover(tls));
  console.log(`# sentinel over TLS failover figures: ${JSON.stringify(figures)}`);
});

test('sentinel: kill -9 of the master during traffic: a replica is promoted and nothing acknowledged is lost', async () => {
  const figures = await failoverDuring(PLAIN, 'sk', async (old, channel) => {
    const pid = PLAIN.pidOf(old);
    const at = Date.now();
    process.kill(pid, 'SIGKILL');
    return followed(PLAIN, at, old, channel);
  });
  console.log(`# sentinel kill -9 figures: ${JSON.stringify(figures)}`);
});

test('sentinel: a stopped master while devices come and go: the pods follow the promoted replica', async () => {
  let stopped;
  let newcomer;
  const figures = await failoverDuring(PLAIN, 'ss', async (old, channel, { p1, p2 }) => {
    stopped = PLAIN.pidOf(old);
    const at = Date.now();
    process.kill(stopped, 'SIGSTOP');
    // A device of another user on the pod: its SUBSCRIBE goes to the
    // stopped master and never gets an answer.
    const other = uid('u');
    newcomer = await new Device(p2.url, { userId: other, instanceId: 'n1', apiKey: p1.createKey(other) }).ready();
    return followed(PLAIN, at, old, channel);
  }, () => {
    newcomer?.close();
    if (stopped) process.kill(stopped, 'SIGCONT');
  });
  console.log(`# sentinel SIGSTOP figures: ${JSON.stringify(figures)}`);
});
