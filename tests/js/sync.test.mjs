// The /sync namespace against two and three real `syncstore serve`
// processes sharing PostgreSQL and Redis, driven by socket.io-client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Server, Redis, Device, refusal, uid, waitFor, sleep, PG_URL } from './harness.mjs';

let redis;
let a;
let b;

before(async () => {
  redis = await Redis.start();
  const env = {
    DATABASE_URL: PG_URL,
    REDIS_URL: redis.url,
    JWT_SECRET: 'js-test-access-secret-0123456789abcdef',
    JWT_REFRESH_SECRET: 'js-test-refresh-secret-0123456789abcdef',
    TRUSTED_PROXIES: '127.0.0.1/32',
    GEOIP_COUNTRY_HEADER: 'X-Country',
  };
  a = await Server.start({ ...env, POD_NAME: 'pod-a' });
  b = await Server.start({ ...env, POD_NAME: 'pod-b' });
});

after(async () => {
  await a?.stop();
  await b?.stop();
  redis?.stop();
});

async function device(server, userId, key, instanceId = uid('dev'), opts = {}) {
  return new Device(server.url, { userId, instanceId, apiKey: key, ...opts }).ready();
}

test('devices on different processes see each other\'s sets and removes with their seq', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const phone = await device(a, user, key, 'phone');
  const laptop = await device(b, user, key, 'laptop');

  const reply = await phone.call('sync:set', { key: 'theme', value: { mode: 'dark' } });
  assert.equal(reply.status, 'applied');
  assert.equal(reply.item.seq, 1);
  await waitFor(() => laptop.updates.length === 1, { what: 'update on laptop' });
  assert.deepEqual(laptop.updates[0], { key: 'theme', value: { mode: 'dark' }, metadata: null, version: 1, timestamp: reply.item.timestamp, seq: 1 });

  const set2 = await laptop.call('sync:set', { key: 'lang', value: 'fr', metadata: { by: 'laptop' } });
  assert.equal(set2.item.seq, 2);
  await waitFor(() => phone.updates.length === 1, { what: 'update on phone' });
  assert.equal(phone.updates[0].seq, 2);
  assert.deepEqual(phone.updates[0].metadata, { by: 'laptop' });

  const removed = await phone.call('sync:remove', { key: 'theme' });
  assert.deepEqual([removed.status, removed.seq], ['removed', 3]);
  await waitFor(() => laptop.removes.length === 1, { what: 'remove on laptop' });
  assert.equal(laptop.removes[0].key, 'theme');
  assert.equal(laptop.removes[0].seq, 3);

  await sleep(200);
  // Never echoed to the writer.
  assert.deepEqual(phone.liveSeqs(), [2]);
  assert.deepEqual(laptop.liveSeqs(), [1, 3]);
  phone.close();
  laptop.close();
});

test('REST writes reach every instance, and get/getAll answer through acks', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const d1 = await device(a, user, key);
  const d2 = await device(b, user, key);
  const put = await b.rest('PUT', '/sync-storage/item/profile', key, { value: { name: 'Ada' } });
  assert.equal(put.status, 200);
  await waitFor(() => d1.updates.length === 1 && d2.updates.length === 1, { what: 'REST write on both' });
  assert.equal(d1.updates[0].seq, put.body.item.seq);
  const got = await d1.call('sync:get', { key: 'profile' });
  assert.deepEqual(got.value, { name: 'Ada' });
  assert.equal(await d1.call('sync:get', { key: 'missing' }), null);
  await d1.call('sync:set', { key: 'prefs/a', value: 1 });
  await d1.call('sync:set', { key: 'prefs/b', value: 2 });
  const all = await d2.call('sync:getAll', { prefix: 'prefs/' });
  assert.deepEqual(all.map((i) => i.key), ['prefs/a', 'prefs/b']);
  assert.equal((await d2.call('sync:getAll', {})).length, 3);
  d1.close();
  d2.close();
});

test('an offline device gets exactly the latest value of each key it missed', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const writer = await device(a, user, key, 'writer');
  await writer.call('sync:set', { key: 'k0', value: 'before' });
  let tablet = await device(b, user, key, 'tablet');
  assert.deepEqual(tablet.pending[0].map((e) => [e.key, e.value, e.seq]), [['k0', 'before', 1]]);
  await sleep(100); // the pending-updates ack stores the cursor
  tablet.close();

  for (let i = 0; i < 100; i++) {
    await writer.call('sync:set', { key: `k${i % 10}`, value: { i } });
  }
  await writer.call('sync:remove', { key: 'k3' });

  tablet = await device(a, user, key, 'tablet');
  const pending = tablet.pending[0];
  assert.equal(pending.length, 10);
  const seqs = pending.map((e) => e.seq);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'in seq order');
  for (const e of pending) {
    const n = Number(e.key.slice(1));
    if (n === 3) {
      assert.deepEqual([e.type, e.value, e.seq], ['remove', null, 102]);
    } else {
      assert.deepEqual([e.type, e.value], ['update', { i: 90 + n }]);
    }
  }
  // Acknowledged: a reconnect now brings nothing new.
  await sleep(100);
  tablet.close();
  tablet = await device(b, user, key, 'tablet');
  assert.deepEqual(tablet.pending[0], []);
  // A brand-new device gets the current state, without tombstones.
  const fresh = await device(b, user, key, 'fresh');
  assert.equal(fresh.pending[0].length, 9);
  assert.ok(fresh.pending[0].every((e) => e.type === 'update'));
  for (const d of [writer, tablet, fresh]) d.close();
});

test('sync:ack moves the cursor, but never past what the device was sent', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const writer = await device(a, user, key, 'w');
  let reader = await device(b, user, key, 'r', { ackPending: false });
  await writer.call('sync:set', { key: 'x', value: 1 });
  await writer.call('sync:set', { key: 'y', value: 2 });
  await waitFor(() => reader.updates.length === 2, { what: 'two updates' });
  assert.deepEqual(await reader.call('sync:ack', { seq: 1 }), { cursor: 1 });
  assert.deepEqual(await reader.call('sync:ack', { seq: 999 }), { cursor: 2 });
  reader.close();
  await writer.call('sync:set', { key: 'z', value: 3 });
  reader = await device(a, user, key, 'r');
  assert.deepEqual(reader.pending[0].map((e) => e.key), ['z']);
  writer.close();
  reader.close();
});

test('subscriptions filter what a device receives', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const writer = await device(a, user, key);
  const reader = await device(b, user, key);
  assert.deepEqual(await reader.call('sync:subscribe', { keys: ['profile', 'settings/*'] }), ['profile', 'settings/*']);
  for (const k of ['profile', 'settings/theme', 'other', 'settingsX']) {
    await writer.call('sync:set', { key: k, value: k });
  }
  await waitFor(() => reader.updates.length === 2, { what: 'subscribed updates' });
  await sleep(150);
  assert.deepEqual(reader.updates.map((u) => u.key), ['profile', 'settings/theme']);
  assert.deepEqual(await reader.call('sync:unsubscribe', { keys: ['profile', 'settings/*'] }), []);
  await writer.call('sync:set', { key: 'other', value: 'again' });
  await waitFor(() => reader.updates.length === 3, { what: 'everything again' });
  writer.close();
  reader.close();
});

test('failures reply {error} through the ack, or as an error event without one', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const reader = a.createKey(user, ['--read-only']);
  const d = await device(a, user, key);
  const bad = await d.call('sync:set', { value: 1 });
  assert.equal(bad.error.code, 'INVALID_BODY');
  assert.ok(bad.error.message && 'details' in bad.error);
  const badKey = await d.call('sync:set', { key: 'a\nb', value: 1 });
  assert.equal(badKey.error.code, 'INVALID_KEY');
  const notJson = await d.call('sync:subscribe', { keys: 'nope' });
  assert.equal(notJson.error.code, 'INVALID_BODY');
  // A Buffer travels beside the JSON as an attachment; stored, only its
  // `{_placeholder}` stand-in would be kept, so it is refused, not lost.
  for (const value of [Buffer.from('hello'), { nested: Buffer.from([1, 2]) }]) {
    const binary = await d.call('sync:set', { key: 'bin', value });
    assert.equal(binary.error?.code, 'INVALID_BODY', JSON.stringify(binary));
  }
  assert.equal((await a.rest('GET', '/sync-storage/item/bin', key)).status, 404);
  await d.call('sync:set', { key: 'doc', value: 1 });
  await d.call('sync:set', { key: 'doc', value: 2 });
  const conflict = await d.call('sync:set', { key: 'doc', value: 3, version: 1, metadata: { conflictStrategy: 'NOPE' } });
  assert.equal(conflict.error.code, 'INVALID_BODY');
  d.socket.emit('sync:remove', { key: 'never-existed' });
  await waitFor(() => d.errors.length === 1, { what: 'error event' });
  assert.equal(d.errors[0].code, 'NOT_FOUND');
  assert.deepEqual(Object.keys(d.errors[0]).sort(), ['code', 'details', 'message']);
  const ro = await device(b, user, reader);
  const denied = await ro.call('sync:set', { key: 'x', value: 1 });
  assert.equal(denied.error.code, 'FORBIDDEN');
  d.close();
  ro.close();
});

test('every handshake refusal is a connect_error with message and code', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const other = a.createKey(uid('other'));
  const q = { userId: user, instanceId: 'i' };
  assert.equal((await refusal(a.url, { query: q })).code, 'UNAUTHORIZED');
  assert.equal((await refusal(a.url, { query: q, auth: { apiKey: 'sk_live_wrong' } })).code, 'UNAUTHORIZED');
  assert.equal((await refusal(a.url, { query: { instanceId: 'i' }, auth: { apiKey: key } })).code, 'INVALID_HANDSHAKE');
  assert.equal((await refusal(a.url, { query: { userId: user }, auth: { apiKey: key } })).code, 'INVALID_HANDSHAKE');
  assert.equal((await refusal(a.url, { query: { userId: user, instanceId: 'x'.repeat(300) }, auth: { apiKey: key } })).code, 'INVALID_HANDSHAKE');
  // The TTL expiry's instance id is the server's own.
  assert.equal((await refusal(a.url, { query: { userId: user, instanceId: 'ttl-cleanup' }, auth: { apiKey: key } })).code, 'INVALID_HANDSHAKE');
  const forbidden = await refusal(a.url, { query: q, auth: { apiKey: other } });
  assert.equal(forbidden.code, 'FORBIDDEN');
  assert.ok(forbidden.message.length > 0);
  // The key may also come as a query parameter.
  const viaQuery = await new Device(a.url, { userId: user, instanceId: 'q', query: { apiKey: key } }).ready();
  viaQuery.close();
});

test('users are isolated: B never receives A\'s events and cannot join as A', async () => {
  const alice = uid('alice');
  const bob = uid('bob');
  const aliceKey = a.createKey(alice);
  const bobKey = a.createKey(bob);
  const aliceDev = await device(a, alice, aliceKey);
  const bobDev = await device(b, bob, bobKey);
  await aliceDev.call('sync:set', { key: 'secret', value: 'alice only' });
  await a.rest('PUT', '/sync-storage/item/secret2', aliceKey, { value: 1 });
  assert.equal((await refusal(b.url, { query: { userId: alice, instanceId: 'spy' }, auth: { apiKey: bobKey } })).code, 'FORBIDDEN');
  assert.equal(await bobDev.call('sync:get', { key: 'secret' }), null);
  await bobDev.call('sync:set', { key: 'secret', value: 'bob' });
  await sleep(200);
  assert.deepEqual(bobDev.updates, []);
  assert.deepEqual(aliceDev.updates.map((u) => u.key), ['secret2']);
  aliceDev.close();
  bobDev.close();
});

test('GET /sessions lists the caller\'s devices and whether each is online', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const d1 = await device(a, user, key, 'phone', { options: { extraHeaders: { 'User-Agent': 'phone-app/1.0' } } });
  const d2 = await device(b, user, key, 'laptop');
  d2.close();
  await sleep(150);
  const { status, body } = await a.rest('GET', '/sync-storage/sessions', key);
  assert.equal(status, 200);
  const byId = Object.fromEntries(body.map((s) => [s.instanceId, s]));
  assert.equal(byId.phone.online, true);
  assert.equal(byId.phone.pod, 'pod-a');
  assert.equal(byId.phone.userAgent, 'phone-app/1.0');
  assert.equal(byId.laptop.online, false);
  assert.equal(byId.laptop.pod, 'pod-b');
  d1.close();
});

test('concurrent writes are settled by strategy and the writer is told how', async () => {
  const user = uid('u');
  const key = a.createKey(user);
  const phone = await device(a, user, key, 'phone');
  const laptop = await device(b, user, key, 'laptop');
  const v1 = await phone.call('sync:set', { key: 'doc', value: { title: 'A', body: 'x' } });
  await phone.call('sync:set', { key: 'doc', value: { title: 'B', body: 'x' }, version: 1 });
  // The laptop still thinks version 1 is current.
  const stale = (value, strategy) => laptop.call('sync:set', { key: 'doc', value, version: 1, metadata: { conflictStrategy: strategy } });
  const fww = await stale({ title: 'A', body: 'y' }, 'FIRST_WRITE_WINS');
  assert.equal(fww.status, 'rejected');
  assert.deepEqual(fww.item.value, { title: 'B', body: 'x' });
  assert.ok(fww.conflictId);
  const manual = await stale({ title: 'A', body: 'z' }, 'MANUAL');
  assert.equal(manual.status, 'pending_review');
  const merged = await stale({ title: 'A', body: 'merged' }, 'MERGE');
  assert.equal(merged.status, 'merged');
  assert.deepEqual(merged.item.value, { title: 'B', body: 'merged' });
  await waitFor(() => phone.updates.some((u) => u.seq === merged.item.seq), { what: 'merge reaches the phone' });
  const lww = await stale({ title: 'C', body: 'lww' }, 'LAST_WRITE_WINS');
  assert.equal(lww.status, 'applied');
  assert.deepEqual(lww.item.value, { title: 'C', body: 'lww' });
  assert.equal(v1.item.version, 1);
  phone.close();
  laptop.close();
});

test('a user token (auth.token) connects as its user and nobody else', async () => {
  const user = uid('u');
  const issuer = a.createKey(uid('backend'), ['--scopes', 'read,write,tokens:issue']);
  const res = await fetch(`${a.base}/api/v1/auth/token`, {
    method: 'POST',
    headers: { 'X-API-Key': issuer, 'Content-Type': 'application/json' },
    body: JSON.stringify({ userId: user }),
  });
  const { accessToken } = await res.json();
  const d = await new Device(b.url, { userId: user, instanceId: 'tok', auth: { token: accessToken } }).ready();
  const reply = await d.call('sync:set', { key: 'k', value: 1 });
  assert.equal(reply.item.userId, user);
  d.close();
  assert.equal((await refusal(a.url, { query: { userId: uid('other'), instanceId: 'x' }, auth: { token: accessToken } })).code, 'FORBIDDEN');
  assert.equal((await refusal(a.url, { query: { userId: user, instanceId: 'x' }, auth: { token: 'not.a.token' } })).code, 'UNAUTHORIZED');
});

test('API key restrictions apply to the Socket.IO handshake too', async () => {
  const user = uid('u');
  const cases = [
    [['--ip', '203.0.113.0/24'], { 'X-Forwarded-For': '203.0.113.9' }, { 'X-Forwarded-For': '198.51.100.1' }, 'IP_NOT_ALLOWED'],
    [['--country', 'SE'], { 'X-Country': 'SE' }, { 'X-Country': 'GB' }, 'COUNTRY_NOT_ALLOWED'],
    [['--domain', '*.example.com'], { Origin: 'https://app.example.com' }, { Origin: 'https://evil.test' }, 'DOMAIN_NOT_ALLOWED'],
    [['--user-agent', '^MyApp/'], { 'User-Agent': 'MyApp/1' }, { 'User-Agent': 'curl/8' }, 'USER_AGENT_NOT_ALLOWED'],
  ];
  for (const [flags, allowed, denied, code] of cases) {
    const key = a.createKey(user, flags);
    const ok = await new Device(b.url, { userId: user, instanceId: 'r', apiKey: key, options: { extraHeaders: allowed } }).ready();
    ok.close();
    const refused = await refusal(b.url, { query: { userId: user, instanceId: 'r' }, auth: { apiKey: key }, extraHeaders: denied });
    assert.equal(refused.code, code, JSON.stringify(flags));
  }
});
