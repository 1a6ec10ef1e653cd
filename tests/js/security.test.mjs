// Issue 13 over the official socket.io-client: the handshake resolves the
// client address exactly as REST does (item 5), and nothing secret reaches
// the logs even at LOG_LEVEL=trace (item 11). One embedded (SQLite)
// process each: neither needs PostgreSQL or Redis.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Server, Device, refusal, uid } from './harness.mjs';

test('the handshake resolves forwarded clients as REST does, and sessions record them', async () => {
  const server = await Server.start({ TRUSTED_PROXIES: '127.0.0.1/32' });
  try {
    const user = uid('u');
    const key = server.createKey(user, ['--ip', '198.51.100.0/24']);
    const query = { userId: user, instanceId: 'r' };
    const denied = [
      { 'X-Forwarded-For': '198.51.100.7, 203.0.113.9:4711' },
      { 'X-Forwarded-For': '198.51.100.7, [2001:db8::9]:4711' },
      { 'X-Forwarded-For': '198.51.100.7, unknown' },
      { 'X-Forwarded-For': '198.51.100.7, not-an-ip' },
      { 'X-Forwarded-For': ['198.51.100.7', '203.0.113.9'] },
      { Forwarded: 'for=198.51.100.7, for="203.0.113.9:4711"' },
      { Forwarded: 'for=198.51.100.7, for=_hidden' },
      { 'X-Forwarded-For': '203.0.113.9', Forwarded: 'for=198.51.100.7' },
    ];
    for (const extraHeaders of denied) {
      const refused = await refusal(server.url, { query, auth: { apiKey: key }, extraHeaders });
      assert.equal(refused.code, 'IP_NOT_ALLOWED', JSON.stringify(extraHeaders));
    }
    const allowed = [
      { 'X-Forwarded-For': '::ffff:198.51.100.5' },
      { 'X-Forwarded-For': ['203.0.113.9', '198.51.100.7:4711'] },
      { Forwarded: 'for=203.0.113.1, for="198.51.100.7:4711"' },
      { 'X-Forwarded-For': '198.51.100.8', Forwarded: 'for=198.51.100.8' },
    ];
    for (const [i, extraHeaders] of allowed.entries()) {
      const d = await new Device(server.url, { userId: user, instanceId: `ok-${i}`, apiKey: key, options: { extraHeaders } }).ready();
      d.close();
    }
    // The device record carries the resolved client, not the proxy.
    const { status, body } = await server.rest('GET', '/sync-storage/sessions', key, undefined);
    assert.equal(status, 403, 'REST from the bare proxy address is refused too');
    assert.equal(body.code, 'IP_NOT_ALLOWED');
    const res = await fetch(`${server.base}/api/v1/sync-storage/sessions`, {
      headers: { 'X-API-Key': key, 'X-Forwarded-For': '198.51.100.9' },
    });
    assert.equal(res.status, 200);
    const byId = Object.fromEntries((await res.json()).map((s) => [s.instanceId, s.ip]));
    assert.deepEqual(byId, { 'ok-0': '198.51.100.5', 'ok-1': '198.51.100.7', 'ok-2': '198.51.100.7', 'ok-3': '198.51.100.8' });
  } finally {
    await server.stop();
  }
});

test('at LOG_LEVEL=trace no API key, token or refresh token reaches the log', async () => {
  const jwt = {
    JWT_SECRET: 'security-test-access-secret-0123456789abcdef',
    JWT_REFRESH_SECRET: 'security-test-refresh-secret-0123456789abcdef',
  };
  const server = await Server.start({ LOG_LEVEL: 'trace', ...jwt });
  try {
    const user = uid('u');
    const key = server.createKey(user);
    const issuer = server.createKey(uid('backend'), ['--scopes', 'read,write,tokens:issue']);
    const post = (path, headers, body) => fetch(`${server.base}/api/v1${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });

    // REST with X-API-Key, a token minted, used as Bearer, and refreshed.
    assert.equal((await server.rest('PUT', '/sync-storage/item/k', key, { value: 1 })).status, 200);
    const minted = await post('/auth/token', { 'X-API-Key': issuer }, { userId: user });
    assert.equal(minted.status, 200);
    const pair = await minted.json();
    const bearer = await fetch(`${server.base}/api/v1/sync-storage/item/k`, {
      headers: { Authorization: `Bearer ${pair.accessToken}` },
    });
    assert.equal(bearer.status, 200);
    const refreshed = await post('/auth/refresh', {}, { refreshToken: pair.refreshToken });
    assert.equal(refreshed.status, 200);
    const pair2 = await refreshed.json();

    // Sockets: auth.apiKey, auth.token, and the key as a query parameter.
    const byKey = await new Device(server.url, { userId: user, instanceId: 'a', apiKey: key }).ready();
    assert.equal((await byKey.call('sync:set', { key: 'k2', value: 'v' })).status, 'applied');
    byKey.close();
    const byToken = await new Device(server.url, { userId: user, instanceId: 'b', auth: { token: pair2.accessToken } }).ready();
    byToken.close();
    const byQuery = await new Device(server.url, { userId: user, instanceId: 'c', query: { apiKey: key } }).ready();
    byQuery.close();
    // A refused credential is not logged either.
    const wrong = 'sk_live_refusedrefusedrefusedrefused0123';
    assert.equal((await refusal(server.url, { query: { userId: user, instanceId: 'x' }, auth: { apiKey: wrong } })).code, 'UNAUTHORIZED');
    await new Promise((r) => setTimeout(r, 300));

    const log = readFileSync(join(server.dir, 'server.log'), 'utf8');
    assert.ok(log.includes('DEBUG') && log.includes('TRACE'), 'the log is at trace');
    const secrets = {
      key,
      issuer,
      wrong,
      accessToken: pair.accessToken,
      refreshToken: pair.refreshToken,
      accessToken2: pair2.accessToken,
      refreshToken2: pair2.refreshToken,
      ...jwt,
    };
    for (const [name, secret] of Object.entries(secrets)) {
      // The whole value, and its random tail (key body, JWT signature).
      const tail = secret.startsWith('sk_live_') ? secret.slice('sk_live_'.length) : secret.split('.').pop();
      assert.ok(!log.includes(secret), `${name} is in the log`);
      assert.ok(!log.includes(tail), `${name}'s tail is in the log`);
    }
  } finally {
    await server.stop();
  }
});
