// Revocation reaches open sockets (issue 13 §2): a socket whose key is
// deactivated, deleted, expired, rotated past its grace period or newly
// restricted, or whose token expired or lost its issuing key, is told why
// (an `error` event with the code REST would give) and disconnected, on
// every pod, within the key cache's lifetime; it gets no further updates.
// A token socket renews with `sync:auth` without reconnecting.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { Server, Redis, Device, refusal, uid, waitFor, sleep, PG_URL } from './harness.mjs';

const SECRET = 'js-revocation-access-secret-0123456789ab';
let redis;
let a;
let b;
let admin;

before(async () => {
  redis = await Redis.start();
  const env = {
    DATABASE_URL: PG_URL,
    REDIS_URL: redis.url,
    JWT_SECRET: SECRET,
    JWT_REFRESH_SECRET: 'js-revocation-refresh-secret-0123456789',
    JWT_EXPIRES_IN: '3s',
    API_KEY_ROTATION_GRACE_SECONDS: '1',
  };
  a = await Server.start({ ...env, POD_NAME: 'pod-a' });
  b = await Server.start({ ...env, POD_NAME: 'pod-b' });
  admin = a.createKey(uid('admin'), ['--scopes', 'admin']);
});

after(async () => {
  await a?.stop();
  await b?.stop();
  redis?.stop();
});

/** Resolves with the reason once the server disconnects the device. */
function disconnected(d) {
  return new Promise((resolve) => d.socket.once('disconnect', resolve));
}

/** The id of a key, as its user's keys:manage view shows it. */
async function keyId(key) {
  const { body } = await a.rest('GET', '/api-keys', admin);
  return body.find((k) => key.startsWith(k.keyHint.replace('…', ''))).id;
}

const REVOCATIONS = [
  ['deactivated', async (id) => a.rest('PATCH', `/api-keys/${id}`, admin, { isActive: false }), 'KEY_INACTIVE'],
  ['deleted', async (id) => a.rest('DELETE', `/api-keys/${id}`, admin), 'UNAUTHORIZED'],
  ['expired', async (id) => a.rest('PATCH', `/api-keys/${id}`, admin, { expiresAt: Date.now() + 500 }), 'KEY_EXPIRED'],
  ['rotated past its grace period', async (id) => a.rest('POST', `/api-keys/${id}/rotate`, admin), 'KEY_EXPIRED'],
  ['restricted to another network', async (id) => a.rest('PATCH', `/api-keys/${id}`, admin, { ipRestrictions: ['198.51.100.0/24'] }), 'IP_NOT_ALLOWED'],
  ['denied read', async (id) => a.rest('PATCH', `/api-keys/${id}`, admin, { canRead: false }), 'FORBIDDEN'],
];

for (const [what, revoke, code] of REVOCATIONS) {
  test(`a socket whose key is ${what} is told ${code} and disconnected on the other pod`, async () => {
    const user = uid('u');
    const key = a.createKey(user, ['--scopes', 'read,write']);
    const writer = a.createKey(user, ['--scopes', 'read,write']);
    const d = await new Device(b.url, { userId: user, instanceId: 'phone', apiKey: key }).ready();
    // Live before.
    await a.rest('PUT', '/sync-storage/item/before', writer, { value: 1 });
    await waitFor(() => d.updates.some((u) => u.key === 'before'), { what: 'live update' });
    const gone = disconnected(d);
    const started = Date.now();
    const r = await revoke(await keyId(key));
    assert.ok(r.status < 300, JSON.stringify(r));
    // Pod b learns within the key cache's lifetime (5 s) plus its re-check (2 s).
    const reason = await gone;
    const took = Date.now() - started;
    assert.equal(reason, 'io server disconnect');
    assert.ok(took < 9000, `disconnected after ${took} ms`);
    assert.ok(d.errors.some((e) => e.code === code), JSON.stringify(d.errors));
    // Nothing more reaches it.
    await a.rest('PUT', '/sync-storage/item/after', writer, { value: 2 });
    await sleep(300);
    assert.ok(!d.updates.some((u) => u.key === 'after'));
  });
}

test('an event on the pod that revoked the key is refused with the code REST gives', async () => {
  const user = uid('u');
  const key = a.createKey(user, ['--scopes', 'read,write']);
  const d = await new Device(a.url, { userId: user, instanceId: 'phone', apiKey: key }).ready();
  const gone = disconnected(d);
  await a.rest('PATCH', `/api-keys/${await keyId(key)}`, admin, { isActive: false });
  const reply = await d.call('sync:set', { key: 'k', value: 1 });
  assert.equal(reply.error?.code, 'KEY_INACTIVE');
  assert.equal(await gone, 'io server disconnect');
  const rest = await a.rest('GET', '/sync-storage/keys', key);
  assert.deepEqual([rest.status, rest.body.code], [403, 'KEY_INACTIVE']);
});

async function tokenPair(issuer, user) {
  const res = await fetch(`${a.base}/api/v1/auth/token`, {
    method: 'POST',
    headers: { 'X-API-Key': issuer, 'Content-Type': 'application/json' },
    body: JSON.stringify({ userId: user }),
  });
  assert.equal(res.status, 200);
  return res.json();
}

test('a token socket is disconnected once its token expires, with token_expired', async () => {
  const user = uid('u');
  const issuer = a.createKey(uid('backend'), ['--scopes', 'read,write,tokens:issue']);
  const { accessToken } = await tokenPair(issuer, user);
  const d = await new Device(b.url, { userId: user, instanceId: 'tok', auth: { token: accessToken } }).ready();
  const reason = await disconnected(d);
  assert.equal(reason, 'io server disconnect');
  const told = d.errors.find((e) => e.code === 'UNAUTHORIZED');
  assert.equal(told?.details?.reason, 'token_expired', JSON.stringify(d.errors));
});

test('a token socket renews with sync:auth and outlives its first token', async () => {
  const user = uid('u');
  const issuer = a.createKey(uid('backend'), ['--scopes', 'read,write,tokens:issue']);
  const first = await tokenPair(issuer, user);
  const d = await new Device(b.url, { userId: user, instanceId: 'tok', auth: { token: first.accessToken } }).ready();
  let token = first;
  // Renew every 2 s (the tokens live 3 s) for 12 s: past the first token's
  // exp plus the 5 s leeway plus a re-check.
  for (let i = 0; i < 6; i++) {
    const res = await fetch(`${a.base}/api/v1/auth/refresh`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ refreshToken: token.refreshToken }),
    });
    token = await res.json();
    const reply = await d.call('sync:auth', { token: token.accessToken });
    assert.ok(reply.expiresAt > Date.now(), JSON.stringify(reply));
    await sleep(2000);
  }
  assert.ok(d.socket.connected, JSON.stringify(d.errors));
  const set = await d.call('sync:set', { key: 'k', value: 1 });
  assert.equal(set.item?.userId, user, JSON.stringify(set));
  // Another user's token is not a renewal.
  const other = await tokenPair(issuer, uid('other'));
  const refused = await d.call('sync:auth', { token: other.accessToken });
  assert.equal(refused.error?.code, 'FORBIDDEN');
  d.close();
});

test('a token socket ends when its issuing key is deactivated, with issuer_revoked', async () => {
  const user = uid('u');
  const issuer = a.createKey(uid('backend'), ['--scopes', 'read,write,tokens:issue']);
  const { accessToken } = await tokenPair(issuer, user);
  const d = await new Device(a.url, { userId: user, instanceId: 'tok', auth: { token: accessToken } }).ready();
  const gone = disconnected(d);
  await a.rest('PATCH', `/api-keys/${await keyId(issuer)}`, admin, { isActive: false });
  const reply = await d.call('sync:get', { key: 'k' });
  assert.equal(reply.error?.details?.reason, 'issuer_revoked', JSON.stringify(reply));
  assert.equal(await gone, 'io server disconnect');
});

/** An HS256 token signed with the server's secret. */
function hs256(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

test('a token whose nbf is ahead is refused at the handshake with token_not_yet_valid', async () => {
  const user = uid('u');
  const issuer = a.createKey(uid('backend'), ['--scopes', 'read,write,tokens:issue']);
  const kid = await keyId(issuer);
  const now = Math.floor(Date.now() / 1000);
  const claims = (nbf) => ({ sub: user, iat: now, nbf, exp: now + 3600, jti: uid('j'), typ: 'access', scope: ['read', 'write'], kid });
  const refused = await refusal(b.url, { query: { userId: user, instanceId: 'nbf' }, auth: { token: hs256(claims(now + 3600)) } });
  assert.deepEqual([refused.code, refused.details?.reason], ['UNAUTHORIZED', 'token_not_yet_valid']);
  const ok = await new Device(b.url, { userId: user, instanceId: 'nbf', auth: { token: hs256(claims(now - 60)) } }).ready();
  ok.close();
});

test('a transport that never joins /sync is closed after the connect timeout', async () => {
  const { default: WebSocket } = await import('ws');
  const ws = new WebSocket(`ws://127.0.0.1:${a.port}/socket.io/?EIO=4&transport=websocket`);
  // Answer engine.io pings, but never send the namespace CONNECT.
  ws.on('message', (m) => { if (m.toString() === '2') ws.send('3'); });
  const opened = Date.now();
  const closed = await new Promise((resolve) => ws.on('close', () => resolve(Date.now())));
  const held = closed - opened;
  assert.ok(held >= 4000 && held < 9000, `held ${held} ms`);
});
