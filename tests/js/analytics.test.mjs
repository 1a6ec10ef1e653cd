// Analytics from socket traffic (sessions, engagement, behaviour, device
// health), the realtime view across pods through Redis, and the live
// dashboard page in headless Chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { Server, Device, Redis, PG_URL, uid, waitFor, sleep } from './harness.mjs';

const CHROME_UA = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36';

async function analytics(server, key, path) {
  const r = await server.rest('GET', `/analytics${path}`, key);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

test('socket sessions feed engagement, behaviour and instance health', async () => {
  const server = await Server.start();
  try {
    const admin = server.createKey('ops', ['--scopes', 'read,analytics:read']);
    const user = uid('alice');
    const key = server.createKey(user);
    const phone = uid('phone');
    const d = new Device(server.url, { userId: user, instanceId: phone, apiKey: key, options: { extraHeaders: { 'user-agent': CHROME_UA } } });
    await d.ready();
    for (const k of ['prefs/theme', 'prefs/lang', 'doc/1']) {
      const reply = await d.call('sync:set', { key: k, value: { v: k } });
      assert.equal(reply.status, 'applied', JSON.stringify(reply));
    }
    await d.call('sync:get', { key: 'prefs/theme' });
    const live = await analytics(server, admin, '/realtime');
    assert.equal(live.connectedSockets, 1);
    await sleep(300);
    d.close();

    const e = await waitFor(async () => {
      const body = await analytics(server, admin, `/users/${user}/engagement`);
      return body.completedSessions === 1 && body.operations === 4 ? body : null;
    }, { timeout: 15000, what: 'engagement' });
    assert.equal(e.sessions, 1);
    assert.equal(e.operationsPerSession, 4);
    assert.ok(e.avgSessionSeconds >= 0.3, `session length ${e.avgSessionSeconds}`);
    assert.equal(e.activeDays, 1);

    const b = await analytics(server, admin, `/users/${user}/behavior`);
    assert.deepEqual(b.topPrefixes, [{ prefix: 'prefs', count: 3 }, { prefix: 'doc', count: 1 }]);
    assert.deepEqual(b.topKeys[0], { key: 'prefs/theme', count: 2 });
    assert.deepEqual(b.devices, [{ family: 'Chrome', count: 6 }]);
    assert.equal(b.activeHoursUtc.reduce((a, n) => a + n, 0), 6);

    const h = await analytics(server, admin, `/instances/${phone}/health`);
    assert.equal(h.reconnects, 1);
    assert.equal(h.status, 'healthy');
    assert.equal(h.errors, 0);
    const perf = await analytics(server, admin, `/instances/${phone}/performance`);
    assert.equal(perf.requests, 6);
    assert.ok(perf.latencyMs.p95 > 0);

    // The user may read its own analytics without analytics:read.
    const own = await server.rest('GET', `/analytics/users/${user}/engagement`, key);
    assert.equal(own.status, 200);
    const other = await server.rest('GET', `/analytics/users/someone-else/engagement`, key);
    assert.equal(other.status, 403);
    assert.equal(other.body.code, 'SCOPE_REQUIRED');
  } finally {
    await server.stop();
  }
});

test('realtime figures add up across pods through Redis', async () => {
  const redis = await Redis.start();
  const env = { DATABASE_URL: PG_URL, REDIS_URL: redis.url, SYNCSTORE_STORE: uid('rt') };
  const a = await Server.start(env);
  const b = await Server.start(env);
  const devices = [];
  try {
    const admin = a.createKey(uid('ops'), ['--scopes', 'read,write,analytics:read']);
    const user = uid('u');
    const key = a.createKey(user);
    for (const s of [a, b]) {
      const d = new Device(s.url, { userId: user, instanceId: uid('dev'), apiKey: key });
      devices.push(await d.ready());
    }
    for (let i = 0; i < 10; i++) await devices[i % 2].call('sync:set', { key: `k${i}`, value: i });
    const rt = await waitFor(async () => {
      const body = await analytics(a, admin, '/realtime');
      return body.pods === 2 && body.connectedSockets === 2 && body.opsLastMinute >= 10 ? body : null;
    }, { timeout: 15000, what: 'both pods in the realtime view' });
    assert.equal(rt.opsPerSecondSeries.length, 60);
  } finally {
    devices.forEach((d) => d.close());
    await a.stop();
    await b.stop();
    redis.stop();
  }
});

test('the dashboard page shows live figures in headless Chromium', async () => {
  const server = await Server.start();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const admin = server.createKey('ops', ['--scopes', 'read,write,analytics:read']);
    const page = await browser.newPage();
    const failures = [];
    page.on('pageerror', (e) => failures.push(e.message));
    page.on('requestfailed', (r) => failures.push(`${r.url()} ${r.failure()?.errorText}`));
    const res = await page.goto(`${server.base}/dashboard`);
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-security-policy'], /script-src 'self'/);
    for (let i = 0; i < 5; i++) await server.rest('PUT', `/sync-storage/item/a${i}`, admin, { value: i });
    await page.fill('#key', admin);
    await page.click('button[type=submit]');
    const first = await waitFor(async () => {
      const text = await page.textContent('#kpi-requests');
      return Number(text) > 0 ? Number(text) : null;
    }, { timeout: 15000, what: 'non-zero requests on the page' });
    // Live ops count complete seconds only: the next refresh shows them.
    await waitFor(async () => Number(await page.textContent('#kpi-ops')) > 0, { timeout: 15000, what: 'ops per second on the page' });
    assert.match(await page.textContent('#p95'), /\d/);
    // Marks this document; a reload would lose the mark.
    await page.evaluate(() => { window.__same = true; });
    for (let i = 0; i < 20; i++) await server.rest('PUT', `/sync-storage/item/b${i}`, admin, { value: i });
    // The 20 writes may be aggregated over two refreshes: wait for all.
    const later = await waitFor(async () => {
      const n = Number(await page.textContent('#kpi-requests'));
      return n >= first + 20 ? n : null;
    }, { timeout: 15000, what: 'the figures to update' });
    assert.ok(later >= first + 20, `${first} -> ${later}`);
    assert.equal(await page.evaluate(() => window.__same), true, 'updated without a reload');
    assert.ok(Number(await page.getAttribute('#chart-ops', 'data-points')) === 60);
    assert.deepEqual(failures, []);
  } finally {
    await browser.close();
    await server.stop();
  }
});
