// The end-to-end scenario after `e2e/run.sh` has brought the cluster up and
// the operator has made the store Ready: this plays the kubelet for the
// Deployments the operator created, then drives devices and REST through
// the official socket.io-client with the keys the operator generated.
//
// The kubelet emulation reads each pod's command and environment from the
// Deployment, its ConfigMap and Secrets (envFrom, secretKeyRef, fieldRef),
// exactly as written there. One thing differs: every pod here shares the
// host's loopback instead of having its own IP, so containerPort 3000 is
// mapped to a free host port by overriding PORT.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io } from 'socket.io-client';

const KUBECTL = process.env.KUBECTL ?? 'kubectl';
const NS = process.env.NS ?? 'e2e';
const BIN = process.env.SYNCSTORE_BIN;
const STORE = 'chat';
const PROM = process.env.PROM_URL;
const PROM_TARGETS = process.env.PROM_TARGETS;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const results = [];
let failed = false;
async function step(name, fn) {
  const started = Date.now();
  try {
    const note = await fn();
    results.push({ name, ok: true, ms: Date.now() - started, note: note ?? '' });
    console.log(`PASS ${name}${note ? ` (${note})` : ''}`);
  } catch (e) {
    failed = true;
    results.push({ name, ok: false, ms: Date.now() - started, note: e.message });
    console.log(`FAIL ${name}: ${e.message}`);
    throw e;
  }
}

function kubectl(...args) {
  return execFileSync(KUBECTL, ['-n', NS, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
const getJson = (kind, name) => JSON.parse(kubectl('get', kind, name, '-o', 'json'));
const decode = (b64) => Buffer.from(b64, 'base64').toString('utf8');

async function waitFor(what, check, timeout = 30000, interval = 250) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(interval);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

// --- the kubelet ------------------------------------------------------------

/** The environment of container 0 of `deployment`'s pod `podName`. */
function podSpec(deployment, podName) {
  const c = deployment.spec.template.spec.containers[0];
  const env = {};
  for (const from of c.envFrom ?? []) {
    if (from.configMapRef) Object.assign(env, getJson('configmap', from.configMapRef.name).data ?? {});
    if (from.secretRef) {
      for (const [k, v] of Object.entries(getJson('secret', from.secretRef.name).data ?? {})) env[k] = decode(v);
    }
  }
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.secretKeyRef) env[e.name] = decode(getJson('secret', e.valueFrom.secretKeyRef.name).data[e.valueFrom.secretKeyRef.key]);
    else if (e.valueFrom?.configMapKeyRef) env[e.name] = getJson('configmap', e.valueFrom.configMapKeyRef.name).data[e.valueFrom.configMapKeyRef.key];
    else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = podName;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace') env[e.name] = NS;
    else throw new Error(`the kubelet emulation cannot resolve env ${e.name}`);
  }
  const probe = c.readinessProbe?.httpGet?.path ?? c.startupProbe?.httpGet?.path ?? '/health';
  return { args: c.args ?? [], env, probe };
}

const pods = [];
/** Starts a pod of `deploymentName`; `override` replaces variables of its
 * environment (only the fault-injection step uses it). */
async function startPod(deploymentName, index, override = {}) {
  const deployment = getJson('deployment', deploymentName);
  const name = `${deploymentName}-${deployment.metadata.generation}-${index}`;
  const spec = podSpec(deployment, name);
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), `${name}-`));
  const log = openSync(join(dir, 'pod.log'), 'a');
  const proc = spawn(BIN, spec.args, {
    cwd: dir,
    env: { PATH: process.env.PATH, ...spec.env, ...override, PORT: String(port) },
    stdio: ['ignore', 'ignore', log],
  });
  const component = deployment.spec.template.metadata.labels['app.kubernetes.io/component'];
  const pod = { name, port, proc, dir, component, base: `http://127.0.0.1:${port}`, exited: new Promise((r) => proc.on('exit', r)) };
  pods.push(pod);
  await waitFor(`${name} ready on ${spec.probe}`, async () => {
    if (proc.exitCode !== null) throw new Error(`${name} exited: ${readFileSync(join(dir, 'pod.log'), 'utf8').slice(-800)}`);
    try {
      return (await fetch(`${pod.base}${spec.probe}`)).ok;
    } catch {
      return false;
    }
  }, 60000);
  writeTargets();
  return pod;
}

/** What the kubelet would report: the Deployment's pods are all up. */
function reportReady(deploymentName) {
  const d = getJson('deployment', deploymentName);
  const n = d.spec.replicas;
  const status = { observedGeneration: d.metadata.generation, replicas: n, updatedReplicas: n, readyReplicas: n, availableReplicas: n };
  kubectl('patch', 'deployment', deploymentName, '--subresource=status', '--type=merge', '-p', JSON.stringify({ status }));
}

// --- Prometheus ---------------------------------------------------------------

/** The scrape targets of the running pods, with the labels a PodMonitor
 * gives them, written whole (Prometheus' file_sd reads it on change). */
function writeTargets() {
  if (!PROM_TARGETS) return;
  const groups = pods.filter((p) => p.proc.exitCode === null && p.proc.signalCode === null).map((p) => ({
    targets: [`127.0.0.1:${p.port}`],
    labels: { namespace: NS, pod: p.name, job: `${NS}/${STORE}`, app_kubernetes_io_component: p.component },
  }));
  writeFileSync(`${PROM_TARGETS}.tmp`, JSON.stringify(groups));
  renameSync(`${PROM_TARGETS}.tmp`, PROM_TARGETS);
}

async function prom(path, params = {}) {
  const url = new URL(path, PROM);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const body = await (await fetch(url)).json();
  if (body.status !== 'success') throw new Error(`${path} ${JSON.stringify(params)}: ${body.error}`);
  return body.data;
}

/** The value of a PromQL query that yields one number (null if empty). */
async function scalar(q) {
  const r = (await prom('/api/v1/query', { query: q })).result;
  return r.length ? Number(r[0].value[1]) : null;
}

async function firing(alertname, labels) {
  const { alerts } = await prom('/api/v1/alerts');
  return alerts.filter((a) => a.labels.alertname === alertname && a.state === 'firing'
    && Object.entries(labels).every(([k, v]) => a.labels[k] === v));
}

/** The metric names a PromQL expression reads, from Prometheus' own parser. */
function selectorNames(node, out = new Set()) {
  if (Array.isArray(node)) node.forEach((n) => selectorNames(n, out));
  else if (node && typeof node === 'object') {
    if (node.type === 'vectorSelector' || node.type === 'matrixSelector') {
      const m = (node.matchers ?? []).find((x) => x.name === '__name__' && x.type === '=');
      out.add(node.name || m?.value || '(no name)');
    }
    Object.values(node).forEach((n) => selectorNames(n, out));
  }
  return out;
}

function listening(port) {
  return new Promise((resolve) => {
    const c = createConnection({ host: '127.0.0.1', port }, () => { c.destroy(); resolve(true); });
    c.on('error', () => resolve(false));
  });
}

function startRedis(port) {
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  return { proc, exited: new Promise((r) => proc.on('exit', r)) };
}

// --- clients ------------------------------------------------------------------

function device(pod, { apiKey, userId, instanceId }) {
  const d = { updates: [], pending: [] };
  d.socket = io(`ws://127.0.0.1:${pod.port}/sync`, {
    transports: ['websocket'], reconnection: false, forceNew: true,
    query: { userId, instanceId }, auth: { apiKey },
  });
  d.socket.on('sync:update', (e) => d.updates.push(e));
  d.socket.on('pending-updates', (events, ack) => {
    d.pending.push(...events);
    d.gotPending = true;
    if (typeof ack === 'function') ack();
  });
  d.ready = () => new Promise((resolve, reject) => {
    d.socket.once('connect_error', reject);
    waitFor('pending-updates', () => d.gotPending, 15000).then(() => resolve(d), reject);
  });
  d.call = (event, payload) => d.socket.timeout(10000).emitWithAck(event, payload);
  return d;
}

async function rest(pod, method, path, key, body) {
  const res = await fetch(`${pod.base}/api/v1${path}`, {
    method,
    headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json().catch(() => null) };
}

// --- the scenario ---------------------------------------------------------------

async function main() {
  let servers;
  let mobileKey;
  let dashKey;
  const alice = getJson('apikey', 'mobile-alice').spec.userId;

  await step('pods start from the operator\'s Deployments (3 × serve, 1 × analytics)', async () => {
    const replicas = getJson('deployment', STORE).spec.replicas;
    if (replicas !== 3) throw new Error(`the Deployment asks for ${replicas} replicas, expected 3`);
    servers = [];
    for (let i = 0; i < replicas; i++) servers.push(await startPod(STORE, i));
    await startPod(`${STORE}-analytics`, 0);
    reportReady(STORE);
    reportReady(`${STORE}-analytics`);
    return servers.map((p) => p.name).join(', ');
  });

  await step('API keys are read from the Secrets the operator wrote', async () => {
    mobileKey = decode(getJson('secret', getJson('apikey', 'mobile-alice').status.secretName).data.apiKey);
    dashKey = decode(getJson('secret', getJson('apikey', 'dashboard').status.secretName).data.apiKey);
    if (!mobileKey.startsWith('sk_live_') || !dashKey.startsWith('sk_live_')) throw new Error('unexpected key format');
  });

  await step('devices on different pods sync live (Redis fan-out)', async () => {
    const a = await device(servers[0], { apiKey: mobileKey, userId: alice, instanceId: 'phone' }).ready();
    const b = await device(servers[1], { apiKey: mobileKey, userId: alice, instanceId: 'laptop' }).ready();
    const reply = await a.call('sync:set', { key: 'note/1', value: { text: 'hello from the phone' } });
    if (reply.status !== 'applied') throw new Error(JSON.stringify(reply));
    await waitFor('the laptop to see note/1', () => b.updates.find((u) => u.key === 'note/1'), 10000, 20);
    a.socket.disconnect();
    b.socket.disconnect();
  });

  await step('an offline device catches up on reconnect, on another pod', async () => {
    const tablet = await device(servers[2], { apiKey: mobileKey, userId: alice, instanceId: 'tablet' }).ready();
    tablet.socket.disconnect();
    const writer = await device(servers[0], { apiKey: mobileKey, userId: alice, instanceId: 'phone' }).ready();
    for (let i = 0; i < 5; i++) await writer.call('sync:set', { key: `offline/${i}`, value: i });
    writer.socket.disconnect();
    const back = await device(servers[1], { apiKey: mobileKey, userId: alice, instanceId: 'tablet' }).ready();
    const keys = new Set(back.pending.map((e) => e.key));
    for (let i = 0; i < 5; i++) if (!keys.has(`offline/${i}`)) throw new Error(`missed offline/${i}: got ${[...keys]}`);
    back.socket.disconnect();
    return `${back.pending.length} missed changes replayed`;
  });

  await step('REST reads what sockets wrote, on a third pod', async () => {
    const r = await rest(servers[2], 'GET', '/sync-storage/item/note%2F1', mobileKey);
    if (r.status !== 200 || r.body?.value?.text !== 'hello from the phone') throw new Error(JSON.stringify(r));
  });

  await step('analytics aggregates appear in the endpoints (through Kafka)', async () => {
    const u = await waitFor('alice\'s analytics', async () => {
      const r = await rest(servers[1], 'GET', `/analytics/users/${alice}`, dashKey);
      return r.status === 200 && r.body.totals.requests >= 10 ? r.body : null;
    }, 90000, 500);
    const d = await rest(servers[0], 'GET', '/analytics/dashboard', dashKey);
    if (d.status !== 200 || d.body.totals.requests < u.totals.requests) throw new Error(JSON.stringify(d.body));
    const rt = await rest(servers[2], 'GET', '/analytics/realtime', dashKey);
    if (rt.body.pods < 3) throw new Error(`realtime sees ${rt.body.pods} pods`);
    return `${u.totals.requests} events for alice, ${rt.body.pods} pods live`;
  });

  await step('kubectl get apikeys shows usage', async () => {
    const usage = await waitFor('usage in status', () => {
      const n = Number(kubectl('get', 'apikey', 'mobile-alice', '-o', 'jsonpath={.status.usageToday}') || 0);
      return n > 0 ? n : null;
    }, 60000, 1000);
    const table = kubectl('get', 'apikeys');
    if (!table.includes('mobile-alice')) throw new Error(table);
    console.log(table.trimEnd().split('\n').map((l) => `     ${l}`).join('\n'));
    return `usageToday=${usage}`;
  });

  await step('a deleted ApiKey is rejected within seconds on every pod', async () => {
    kubectl('delete', 'apikey', 'mobile-alice', '--timeout=30s');
    const started = Date.now();
    let last;
    await waitFor('the key refused everywhere', async () => {
      for (const p of servers) {
        last = await rest(p, 'GET', '/sync-storage/keys', mobileKey);
        if (last.body?.code !== 'KEY_INACTIVE' && last.status !== 401) return false;
      }
      return true;
    }, 20000, 100).catch((e) => { throw new Error(`${e.message}; last answer ${last?.status} ${JSON.stringify(last?.body)}`); });
    const s = (Date.now() - started) / 1000;
    return `refused (${last.status} ${last.body.code}) after ${s.toFixed(1)} s`;
  });

  await step('scaling the SyncStore scales the Deployment, and the new pod serves', async () => {
    kubectl('patch', 'syncstore', STORE, '--type=merge', '-p', '{"spec":{"replicas":4}}');
    await waitFor('Deployment replicas 4', () => getJson('deployment', STORE).spec.replicas === 4, 30000);
    const pod = await startPod(STORE, 3);
    reportReady(STORE);
    const r = await rest(pod, 'GET', '/sync-storage/item/note%2F1', dashKey);
    if (r.status !== 404 && r.status !== 200) throw new Error(JSON.stringify(r));
    return pod.name;
  });

  if (!PROM) return;
  const sel = `namespace="${NS}"`;

  await step('Prometheus scrapes every pod and the operator', async () => {
    const live = pods.filter((p) => p.proc.exitCode === null).length;
    const up = await waitFor(`${live} pods and the operator up`, async () => {
      const { activeTargets } = await prom('/api/v1/targets');
      const ok = activeTargets.filter((t) => t.health === 'up');
      return ok.length === live + 1 ? ok : null;
    }, 30000, 500);
    return `${up.length} targets up`;
  });

  await step('the scraped metrics see the scenario\'s traffic', async () => {
    // A write on a stale version: a conflict, for the conflict series (with
    // a new key: the writer's was deleted above, the dashboard's only reads).
    const file = join(mkdtempSync(join(tmpdir(), 'writer-')), 'writer.yaml');
    writeFileSync(file, 'apiVersion: syncstore.dev/v1alpha1\nkind: ApiKey\nmetadata: {name: prom-writer}\nspec: {storeRef: chat, userId: bob}\n');
    kubectl('apply', '-f', file);
    kubectl('wait', '--for=condition=Ready', '--timeout=60s', 'apikey/prom-writer');
    const key = decode(getJson('secret', getJson('apikey', 'prom-writer').status.secretName).data.apiKey);
    const first = await rest(servers[0], 'PUT', '/sync-storage/item/prom%2Fc', key, { value: 1 });
    if (first.status !== 200) throw new Error(JSON.stringify(first));
    await rest(servers[0], 'PUT', '/sync-storage/item/prom%2Fc', key, { value: 2, version: first.body.item.version });
    await rest(servers[1], 'PUT', '/sync-storage/item/prom%2Fc', key, { value: 3, version: first.body.item.version });
    const wanted = {
      [`sum(syncstore_items_written_total{${sel}})`]: 9,
      [`sum(syncstore_deliveries_total{${sel}, path="live"})`]: 1,
      [`sum(syncstore_deliveries_total{${sel}, path="pending"})`]: 5,
      [`sum(syncstore_http_requests_total{${sel}, status="200"})`]: 10,
      [`sum(syncstore_analytics_events_total{${sel}, outcome="aggregated"})`]: 10,
      [`sum(syncstore_conflicts_total{${sel}})`]: 1,
      [`syncstore_store_ready{${sel}, name="${STORE}"}`]: 1,
    };
    const seen = {};
    await waitFor('every figure in Prometheus', async () => {
      for (const [q, min] of Object.entries(wanted)) {
        seen[q] = await scalar(q);
        if (seen[q] === null || seen[q] < min) return false;
      }
      return true;
    }, 30000, 1000).catch((e) => { throw new Error(`${e.message}: ${JSON.stringify(seen)}`); });
    return `written ${seen[`sum(syncstore_items_written_total{${sel}})`]}, pending deliveries ${seen[`sum(syncstore_deliveries_total{${sel}, path="pending"})`]}, aggregated ${seen[`sum(syncstore_analytics_events_total{${sel}, outcome="aggregated"})`]}`;
  });

  await step('a pod that loses its Redis fires SyncstoreRedisUnreachable (the chart\'s rule)', async () => {
    // The shared Redis stays up: this pod gets a private one, then loses it.
    const port = await freePort();
    const redis = startRedis(port);
    try {
      await waitFor('the private Redis', () => listening(port), 10000, 100);
      const pod = await startPod(STORE, 'redis-fault', { REDIS_URL: `redis://127.0.0.1:${port}` });
      await waitFor('the pod\'s Redis connection in Prometheus', async () => (await scalar(`syncstore_redis_connected{pod="${pod.name}"}`)) === 1, 30000, 500);
      redis.proc.kill('SIGKILL');
      const started = Date.now();
      const [alert] = await waitFor('SyncstoreRedisUnreachable firing', async () => {
        const a = await firing('SyncstoreRedisUnreachable', { namespace: NS, pod: pod.name });
        return a.length ? a : null;
      }, 60000, 500);
      const others = (await firing('SyncstoreRedisUnreachable', {})).filter((a) => a.labels.pod !== pod.name);
      if (others.length) throw new Error(`also firing for ${others.map((a) => a.labels.pod)}`);
      return `firing ${((Date.now() - started) / 1000).toFixed(1)} s after Redis died: ${alert.annotations.summary}`;
    } finally {
      redis.proc.kill('SIGKILL');
      await redis.exited;
    }
  });

  await step('a store without its admin Secret fires SyncstoreStoreNotReady (the operator\'s metrics)', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'broken-')), 'broken.yaml');
    writeFileSync(file, `apiVersion: syncstore.dev/v1alpha1
kind: SyncStore
metadata: {name: broken}
spec:
  replicas: 1
  database: {engine: postgres, adminSecretRef: {name: no-such-secret, key: url}}
`);
    kubectl('apply', '-f', file);
    const [alert] = await waitFor('SyncstoreStoreNotReady firing for broken', async () => {
      const a = await firing('SyncstoreStoreNotReady', { namespace: NS, name: 'broken' });
      return a.length ? a : null;
    }, 60000, 500);
    const chat = await firing('SyncstoreStoreNotReady', { namespace: NS, name: STORE });
    if (chat.length) throw new Error(`also firing for ${STORE}, which serves`);
    kubectl('delete', 'syncstore', 'broken', '--wait=false');
    return alert.annotations.summary;
  });

  await step('every PromQL expression of the chart\'s rules and dashboards parses and reads only metrics syncstore exports', async () => {
    const exported = new Set(await prom('/api/v1/label/__name__/values'));
    const exprs = [];
    const { groups } = await prom('/api/v1/rules');
    for (const g of groups) for (const r of g.rules) exprs.push({ where: `rule ${r.name}`, q: r.query });
    const chartRules = readFileSync('charts/syncstore-operator/files/alerts.yaml', 'utf8').match(/^\s*- alert: /gm).length;
    if (exprs.length !== chartRules) throw new Error(`Prometheus loaded ${exprs.length} rules, the chart has ${chartRules}`);
    const dir = 'charts/syncstore-operator/files/dashboards';
    for (const f of readdirSync(dir).filter((f) => f.endsWith('.json'))) {
      for (const p of JSON.parse(readFileSync(join(dir, f), 'utf8')).panels) {
        for (const t of p.targets ?? []) {
          exprs.push({ where: `${f} "${p.title}"`, q: t.expr.replaceAll('$__rate_interval', '1m').replace(/\$\{?\w+\}?/g, 'x') });
        }
      }
    }
    const used = new Set();
    const problems = [];
    for (const { where, q } of exprs) {
      let ast;
      try {
        ast = await prom('/api/v1/parse_query', { query: q });
      } catch (e) {
        problems.push(`${where}: ${e.message}`);
        continue;
      }
      for (const name of selectorNames(ast)) {
        used.add(name);
        if (!name.startsWith('syncstore_') || !exported.has(name)) problems.push(`${where}: ${name} is not scraped from syncstore`);
      }
    }
    if (problems.length) throw new Error(problems.join('; '));
    const ours = [...exported].filter((n) => n.startsWith('syncstore_')).length;
    return `${exprs.length} expressions read ${used.size} metrics, all among the ${ours} syncstore series names scraped`;
  });
}

try {
  await main();
} catch {
  // Reported by step().
} finally {
  for (const p of pods) p.proc.kill('SIGTERM');
  await Promise.race([Promise.all(pods.map((p) => p.exited)), sleep(10000)]);
  console.log('\n== e2e summary');
  for (const r of results) console.log(`${r.ok ? 'PASS' : 'FAIL'}  ${r.name}  [${(r.ms / 1000).toFixed(1)} s] ${r.note}`);
  console.log(`e2e: ${results.filter((r) => r.ok).length} passed, ${results.filter((r) => !r.ok).length} failed`);
  process.exit(failed ? 1 : 0);
}
