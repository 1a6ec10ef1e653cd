// Test harness: real `syncstore serve` processes on PostgreSQL and a
// private Redis, and devices made of the official socket.io-client.
import { spawn, execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import { mkdtempSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { io } from 'socket.io-client';

export const BIN = process.env.SYNCSTORE_BIN ?? '/var/cache/syncstore/target/debug/syncstore';
export const PG_URL = process.env.TEST_POSTGRES_URL ?? 'postgres://syncstore:syncstore@127.0.0.1:5432/syncstore';

/**
 * `redis-cli -p <port> <args…>`'s output. A stopped server accepts the
 * connection and never answers: this gives up (throws) after 2 s.
 */
export function redisCli(port, ...args) {
  return execFileSync('redis-cli', ['-p', String(port), ...args.map(String)], { stdio: ['ignore', 'pipe', 'ignore'], timeout: 2000 }).toString().trim();
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export async function waitFor(check, { timeout = 10000, interval = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(interval);
  }
}

/** A private redis-server, so a test may restart it without disturbing others. */
export class Redis {
  static async start() {
    const r = new Redis();
    r.port = await freePort();
    r.launch();
    await waitFor(() => r.ping(), { what: 'redis' });
    return r;
  }
  launch() {
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  }
  ping() {
    try {
      return redisCli(this.port, 'ping') === 'PONG';
    } catch {
      return false;
    }
  }
  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }
  async restart() {
    this.proc.kill('SIGKILL');
    await waitFor(() => !this.ping(), { what: 'redis down' });
    await sleep(300);
    this.launch();
    await waitFor(() => this.ping(), { what: 'redis up' });
  }
  stop() {
    this.proc?.kill('SIGKILL');
  }
}

const CLUSTER_UP = fileURLToPath(new URL('../../scripts/redis-cluster-up.sh', import.meta.url));

/**
 * The shared Redis Cluster of scripts/redis-cluster-up.sh, by its seed
 * list (TEST_REDIS_CLUSTER, which the test command exports): its nodes as a
 * live node sees them, slot owners, and faults healed by the script.
 */
export class RedisCluster {
  static fromEnv() {
    const seeds = process.env.TEST_REDIS_CLUSTER;
    if (!seeds) throw new Error('TEST_REDIS_CLUSTER is not set: run scripts/redis-cluster-up.sh (the test command does)');
    return new RedisCluster(seeds);
  }
  constructor(seeds) {
    this.seeds = seeds;
    this.ports = seeds.split(',').map((s) => Number(s.split(':').pop()));
  }
  get url() {
    return `redis+cluster://${this.seeds}`;
  }
  /** The first node that answers. */
  livePort() {
    for (const p of this.ports) {
      try {
        if (redisCli(p, 'ping') === 'PONG') return p;
      } catch {}
    }
    throw new Error('no cluster node answers');
  }
  /** `CLUSTER NODES` as a live node sees it. */
  nodes() {
    return redisCli(this.livePort(), 'cluster', 'nodes').split('\n').map((line) => {
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
  slotOf(key) {
    return Number(redisCli(this.livePort(), 'cluster', 'keyslot', key));
  }
  /** The live master serving `slot`. */
  ownerOf(slot) {
    return this.nodes().find((n) => n.master && !n.failed && n.ranges.some(([a, b]) => slot >= a && slot <= b));
  }
  /** The pid of the node at `port`. */
  pidOf(port) {
    return Number(redisCli(port, 'info', 'server').match(/process_id:(\d+)/)[1]);
  }
  /** Restarts killed nodes and waits for the cluster and its replicas (without blocking the event loop). */
  async heal() {
    await promisify(execFile)('bash', [CLUSTER_UP, 'heal']);
  }
}

/** One `syncstore serve` process. */
export class Server {
  static async start(env = {}) {
    const s = new Server();
    s.env = env;
    s.port = await freePort();
    s.dir = mkdtempSync(join(tmpdir(), 'syncstore-js-'));
    await s.launch();
    return s;
  }
  async launch() {
    const log = openSync(join(this.dir, 'server.log'), 'a');
    this.proc = spawn(BIN, ['serve'], {
      env: {
        PATH: process.env.PATH,
        PORT: String(this.port),
        SYNCSTORE_DATA_DIR: this.dir,
        LOG_LEVEL: 'warn',
        RATE_LIMIT_MAX_REQUESTS: '1000000',
        ...this.env,
      },
      // stdout and stderr both: tests read the log for what must not be there.
      stdio: ['ignore', log, log],
    });
    this.exited = new Promise((r) => this.proc.on('exit', r));
    await waitFor(async () => {
      try {
        return (await fetch(`${this.base}/health`)).ok;
      } catch {
        return false;
      }
    }, { what: `server on ${this.port}` });
  }
  get base() {
    return `http://127.0.0.1:${this.port}`;
  }
  get url() {
    return `ws://127.0.0.1:${this.port}/sync`;
  }
  async kill9() {
    this.proc.kill('SIGKILL');
    await this.exited;
  }
  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      await this.exited;
    }
  }
  /** `syncstore keys create` against this server's database; returns the key. */
  createKey(user, extra = []) {
    return execFileSync(BIN, ['keys', 'create', '--name', 'js', '--user', user, ...extra], {
      env: { PATH: process.env.PATH, SYNCSTORE_DATA_DIR: this.dir, LOG_LEVEL: 'error', ...this.env },
    }).toString().trim();
  }
  async rest(method, path, key, body) {
    const res = await fetch(`${this.base}/api/v1${path}`, {
      method,
      headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }
}

export const uid = (tag) => `${tag}-${randomUUID()}`;

/** A device: a socket.io-client socket plus everything it received. */
export class Device {
  constructor(url, { userId, instanceId, apiKey, auth, query = {}, ackPending = true, options = {} }) {
    this.updates = [];
    this.removes = [];
    this.errors = [];
    this.pending = [];
    this.resyncs = [];
    this.userId = userId;
    this.socket = io(url, {
      transports: ['websocket'],
      reconnection: false,
      forceNew: true,
      query: { userId, instanceId, ...query },
      auth: auth ?? (apiKey ? { apiKey } : {}),
      ...options,
    });
    this.socket.on('sync:update', (e) => this.updates.push(e));
    this.socket.on('sync:remove', (e) => this.removes.push(e));
    this.socket.on('error', (e) => this.errors.push(e));
    this.socket.on('sync:resync', (e) => this.resyncs.push(e));
    this.socket.on('pending-updates', (events, ack) => {
      this.pending.push(events);
      if (ackPending && typeof ack === 'function') ack();
    });
  }
  /** Resolves once connected and `pending-updates` arrived; rejects on connect_error. */
  ready(timeout = 10000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('device not ready')), timeout);
      this.socket.once('connect_error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      waitFor(() => this.pending.length > 0, { timeout }).then(() => {
        clearTimeout(timer);
        resolve(this);
      }, reject);
    });
  }
  /** Emits with an ack callback and resolves with the reply. */
  call(event, payload, timeout = 10000) {
    return this.socket.timeout(timeout).emitWithAck(event, payload);
  }
  /** Every seq this device saw live, in arrival order. */
  liveSeqs() {
    return [...this.updates, ...this.removes].map((e) => e.seq);
  }
  close() {
    this.socket.disconnect();
  }
}

/** Connects and waits for the connect_error; returns `{message, code}`. */
export async function refusal(url, opts) {
  const socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true, ...opts });
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no connect_error')), 10000);
      socket.once('connect', () => {
        clearTimeout(timer);
        reject(new Error('connected, but a refusal was expected'));
      });
      socket.once('connect_error', (err) => {
        clearTimeout(timer);
        resolve(JSON.parse(err.message));
      });
    });
  } finally {
    socket.disconnect();
  }
}
