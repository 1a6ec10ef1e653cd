// Browsers on another origin (issue 14 §6): the Socket.IO endpoint follows
// the same CORS policy as REST, so the official client with its default
// transports (polling, then the upgrade to WebSocket) connects from a page
// on an allowed origin, and a page on another origin is refused by the
// browser itself.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { Server, freePort, uid } from './harness.mjs';

// The browser bundle the package ships (not in its `exports`, so by path).
const CLIENT = readFileSync(fileURLToPath(new URL('./node_modules/socket.io-client/dist/socket.io.min.js', import.meta.url)));

let server;
let allowedPage;
let otherPage;
let browser;

/** A static page server on its own port: its own origin. */
async function pageServer() {
  const port = await freePort();
  const srv = createServer((req, res) => {
    if (req.url === '/socket.io.min.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' });
      res.end(CLIENT);
    } else {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end('<!doctype html><title>app</title><script src="/socket.io.min.js"></script>');
    }
  });
  await new Promise((r) => srv.listen(port, '127.0.0.1', r));
  return { srv, origin: `http://127.0.0.1:${port}` };
}

before(async () => {
  allowedPage = await pageServer();
  otherPage = await pageServer();
  server = await Server.start({ CORS_ORIGIN: allowedPage.origin });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
  allowedPage?.srv.close();
  otherPage?.srv.close();
});

/** Opens `origin`'s page and connects with default transports; resolves with what happened. */
async function connectFrom(origin, key, user, transports) {
  const page = await browser.newPage();
  try {
    await page.goto(`${origin}/`);
    return await page.evaluate(({ base, key, user, transports }) => new Promise((resolve) => {
      const socket = io(`${base}/sync`, { query: { userId: user, instanceId: 'browser' }, auth: { apiKey: key }, reconnection: false, ...(transports ? { transports } : {}) });
      const first = [];
      socket.io.engine.on('open', () => first.push(socket.io.engine.transport.name));
      socket.on('connect_error', (e) => resolve({ error: e.message }));
      socket.on('connect', async () => {
        const reply = await socket.timeout(5000).emitWithAck('sync:set', { key: 'from-browser', value: 1 });
        const upgraded = await new Promise((r) => {
          if (socket.io.engine.transport.name === 'websocket') r('websocket');
          socket.io.engine.on('upgrade', (t) => r(t.name));
          setTimeout(() => r(socket.io.engine.transport.name), 5000);
        });
        socket.disconnect();
        resolve({ first: first[0], upgraded, status: reply.status });
      });
    }), { base: server.base, key, user, transports });
  } finally {
    await page.close();
  }
}

test('a page on an allowed origin connects with polling, upgrades, and syncs', async () => {
  const user = uid('web');
  const key = server.createKey(user, ['--scopes', 'read,write']);
  const got = await connectFrom(allowedPage.origin, key, user);
  assert.deepEqual(got, { first: 'polling', upgraded: 'websocket', status: 'applied' });
  const item = await server.rest('GET', '/sync-storage/item/from-browser', key);
  assert.equal(item.body.value, 1);
});

test('a page on another origin is refused by the browser', async () => {
  const user = uid('web');
  const key = server.createKey(user, ['--scopes', 'read,write']);
  const got = await connectFrom(otherPage.origin, key, user);
  assert.match(got.error ?? '', /xhr poll error/, JSON.stringify(got));
});

test('a WebSocket from another origin is refused at the handshake', async () => {
  // Browsers apply no CORS to WebSockets: the server checks the Origin.
  const user = uid('web');
  const key = server.createKey(user, ['--scopes', 'read,write']);
  const got = await connectFrom(otherPage.origin, key, user, ['websocket']);
  assert.equal(JSON.parse(got.error ?? '{}').code, 'FORBIDDEN', JSON.stringify(got));
  const ok = await connectFrom(allowedPage.origin, key, user, ['websocket']);
  assert.equal(ok.status, 'applied', JSON.stringify(ok));
});

test('the engine.io endpoint answers preflights and requests with the CORS headers', async () => {
  const url = `${server.base}/socket.io/?EIO=4&transport=polling`;
  const pre = await fetch(url, {
    method: 'OPTIONS',
    headers: { Origin: allowedPage.origin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
  });
  assert.equal(pre.status, 200);
  assert.equal(pre.headers.get('access-control-allow-origin'), allowedPage.origin);
  const get = await fetch(url, { headers: { Origin: allowedPage.origin } });
  assert.equal(get.status, 200);
  assert.equal(get.headers.get('access-control-allow-origin'), allowedPage.origin);
  const other = await fetch(url, { headers: { Origin: otherPage.origin } });
  assert.equal(other.headers.get('access-control-allow-origin'), null);
});
