// Issue 13 over the official socket.io-client: the handshake resolves the
// client address exactly as REST does (item 5). One embedded (SQLite)
// process: it needs neither PostgreSQL nor Redis.
import { test } from 'node:test';
import assert from 'node:assert/strict';
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
