// The credential proxy against a real upstream on 127.0.0.1: the run token is swapped for the
// real credential, everything else is refused before it reaches the upstream.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { type ModelCredential, type ModelSocket, openModelSocket } from '../src/credential-proxy.js';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** An upstream that records every request; `/stream` answers in two chunks, the second on demand. */
interface Upstream {
  port: number;
  seen: Seen[];
  /** Sends the second chunk of a pending `/stream` response. */
  releaseStream(): void;
  close(): Promise<void>;
}

async function startUpstream(): Promise<Upstream> {
  const seen: Seen[] = [];
  let release: () => void = () => {};
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      });
      if (req.url?.includes('/stream')) {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'x-upstream': 'yes' });
        res.write('event: message_start\ndata: {"n":1}\n\n');
        release = () => res.end('event: message_stop\ndata: {"n":2}\n\n');
        return;
      }
      res.writeHead(201, { 'content-type': 'application/json', 'request-id': 'req_123' });
      res.end(JSON.stringify({ ok: true, echo: Buffer.concat(chunks).toString() }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    seen,
    releaseStream: () => release(),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function request(
  socketPath: string,
  opts: { method?: string; path?: string; headers?: http.OutgoingHttpHeaders; body?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath,
        method: opts.method ?? 'POST',
        path: opts.path ?? '/v1/messages',
        headers: { host: 'localhost', 'content-type': 'application/json', ...opts.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body ?? '');
  });
}

/** Sends a raw request line (CONNECT, absolute URI) and returns the raw response head. */
function rawRequest(socketPath: string, head: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method: 'CONNECT', path: head, headers: { host: head } });
    req.on('connect', (res, socket) => {
      socket.destroy();
      resolve(`${res.statusCode} ${res.headers['x-proxy-error'] ?? ''}`);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(`${res.statusCode} ${res.headers['x-proxy-error'] ?? ''}`);
    });
    req.on('error', reject);
    req.end();
  });
}

const dirs: string[] = [];
function runDir(): string {
  const root = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-proxy-'));
  dirs.push(root);
  return path.join(root, 'run');
}

let upstream: Upstream;
const sockets: ModelSocket[] = [];
before(async () => {
  upstream = await startUpstream();
});
beforeEach(() => {
  upstream.seen.length = 0;
});
after(async () => {
  for (const s of sockets) await s.close();
  await upstream.close();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

async function open(credential: ModelCredential = { type: 'api_key', value: 'REAL' }): Promise<ModelSocket> {
  const socket = await openModelSocket({
    dir: runDir(),
    upstream: `http://127.0.0.1:${upstream.port}/prefix`,
    credential,
  });
  sockets.push(socket);
  return socket;
}

describe('forwarding', () => {
  test('over TCP (the fallback for runtimes that cannot share a socket) the token gates the same way', async () => {
    const proxy = await openModelSocket({
      dir: runDir(),
      upstream: `http://127.0.0.1:${upstream.port}/prefix`,
      credential: { type: 'api_key', value: 'REAL' },
      tcpHost: '127.0.0.1',
    });
    sockets.push(proxy);
    const url = new URL(proxy.url ?? 'http://no-url');
    assert.equal(url.hostname, '127.0.0.1');
    const post = (key: string) =>
      fetch(new URL('/v1/messages', url), {
        method: 'POST',
        headers: { 'x-api-key': key, 'content-type': 'application/json' },
        body: '{}',
      });
    const refused = await post('nanoclaw-run-0000');
    assert.equal(refused.status, 401);
    assert.equal(upstream.seen.length, 0);
    const ok = await post(proxy.token);
    assert.equal(ok.status, 201);
    assert.equal(upstream.seen[0]?.headers['x-api-key'], 'REAL');
    assert.equal(existsSync(proxy.socketPath), false, 'no Unix socket in TCP mode');
  });

  test('a request with the run token in x-api-key reaches the upstream with the real key instead', async () => {
    const proxy = await open();
    const body = JSON.stringify({ model: 'claude', messages: [{ role: 'user', content: 'hi' }] });
    const reply = await request(proxy.socketPath, {
      path: '/v1/messages?beta=true',
      headers: { 'x-api-key': proxy.token, 'anthropic-version': '2023-06-01', 'proxy-authorization': 'x' },
      body,
    });
    assert.equal(reply.status, 201);
    assert.equal(reply.headers['request-id'], 'req_123');
    assert.deepEqual(JSON.parse(reply.body), { ok: true, echo: body });

    assert.equal(upstream.seen.length, 1);
    const [seen] = upstream.seen;
    assert.equal(seen?.method, 'POST');
    assert.equal(seen?.url, '/prefix/v1/messages?beta=true');
    assert.equal(seen?.headers['x-api-key'], 'REAL');
    assert.equal(seen?.headers.authorization, undefined);
    assert.equal(seen?.headers['proxy-authorization'], undefined);
    assert.equal(seen?.headers['anthropic-version'], '2023-06-01');
    assert.equal(seen?.headers.host, `127.0.0.1:${upstream.port}`);
    assert.equal(seen?.body, body);
    assert.ok(!JSON.stringify(seen?.headers).includes(proxy.token), 'the run token leaked upstream');
  });

  test('the run token as Authorization: Bearer works too', async () => {
    const proxy = await open();
    const reply = await request(proxy.socketPath, { headers: { authorization: `Bearer ${proxy.token}` } });
    assert.equal(reply.status, 201);
    assert.equal(upstream.seen[0]?.headers['x-api-key'], 'REAL');
    assert.equal(upstream.seen[0]?.headers.authorization, undefined);
  });

  test('an OAuth credential travels as Authorization: Bearer and no x-api-key', async () => {
    const proxy = await open({ type: 'oauth', value: 'REAL' });
    const reply = await request(proxy.socketPath, { headers: { 'x-api-key': proxy.token } });
    assert.equal(reply.status, 201);
    assert.equal(upstream.seen[0]?.headers.authorization, 'Bearer REAL');
    assert.equal(upstream.seen[0]?.headers['x-api-key'], undefined);
  });

  test('a streamed response arrives in pieces, before the upstream has finished', async () => {
    const proxy = await open();
    const pieces: string[] = [];
    const done = new Promise<{ status: number; type: string | undefined }>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: proxy.socketPath,
          method: 'POST',
          path: '/v1/messages/stream',
          headers: { 'x-api-key': proxy.token },
        },
        (res) => {
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            pieces.push(chunk);
            // Only now does the upstream send the rest: the first piece got here on its own.
            if (pieces.length === 1) upstream.releaseStream();
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end('{"stream":true}');
    });
    const { status, type } = await done;
    assert.equal(status, 200);
    assert.equal(type, 'text/event-stream');
    assert.equal(pieces[0], 'event: message_start\ndata: {"n":1}\n\n');
    assert.equal(
      pieces.join(''),
      'event: message_start\ndata: {"n":1}\n\nevent: message_stop\ndata: {"n":2}\n\n',
    );
    assert.equal(upstream.seen[0]?.url, '/prefix/v1/messages/stream');
  });
});

describe('refusals', () => {
  test('a wrong or missing token gets 401 JSON and the upstream sees nothing', async () => {
    const proxy = await open();
    const wrong = `${proxy.token.slice(0, -1)}${proxy.token.endsWith('0') ? '1' : '0'}`;
    for (const headers of [
      { 'x-api-key': wrong },
      { authorization: `Bearer ${wrong}` },
      { authorization: proxy.token },
      {},
      { 'x-api-key': 'REAL' },
    ]) {
      const reply = await request(proxy.socketPath, { headers });
      assert.equal(reply.status, 401, JSON.stringify(headers));
      assert.equal(reply.headers['content-type'], 'application/json');
      const body = JSON.parse(reply.body) as { type: string; error: { type: string } };
      assert.equal(body.type, 'error');
      assert.equal(body.error.type, 'authentication_error');
    }
    assert.deepEqual(upstream.seen, []);
  });

  test('a token of a different length gets 401', async () => {
    const proxy = await open();
    for (const token of [`${proxy.token}x`, proxy.token.slice(0, -1), 'short']) {
      const reply = await request(proxy.socketPath, { headers: { 'x-api-key': token } });
      assert.equal(reply.status, 401);
    }
    assert.deepEqual(upstream.seen, []);
  });

  test('a token from another run gets 401', async () => {
    const mine = await open();
    const theirs = await open();
    const reply = await request(mine.socketPath, { headers: { 'x-api-key': theirs.token } });
    assert.equal(reply.status, 401);
    assert.deepEqual(upstream.seen, []);
  });

  test('CONNECT is refused with 403 blocked-by-allowlist and nothing goes upstream', async () => {
    const proxy = await open();
    assert.equal(await rawRequest(proxy.socketPath, 'example.com:443'), '403 blocked-by-allowlist');
    assert.deepEqual(upstream.seen, []);
  });

  test('an absolute-URI request is refused with 403 even with the right token', async () => {
    const proxy = await open();
    const reply = await request(proxy.socketPath, {
      method: 'GET',
      path: 'http://example.com/',
      headers: { host: 'example.com', 'x-api-key': proxy.token },
    });
    assert.equal(reply.status, 403);
    assert.equal(reply.headers['x-proxy-error'], 'blocked-by-allowlist');
    assert.equal((JSON.parse(reply.body) as { error: { type: string } }).error.type, 'permission_error');
    assert.deepEqual(upstream.seen, []);
  });
});

describe('the socket and its directory', () => {
  test('the socket directory is mode 0700 and close() removes it', async () => {
    const dir = runDir();
    const proxy = await openModelSocket({
      dir,
      upstream: `http://127.0.0.1:${upstream.port}`,
      credential: { type: 'api_key', value: 'REAL' },
    });
    assert.equal(proxy.socketPath, path.join(dir, 'api.sock'));
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    assert.ok(statSync(proxy.socketPath).isSocket());
    assert.match(proxy.token, /^nanoclaw-run-[0-9a-f]{48}$/);
    await proxy.close();
    assert.equal(existsSync(dir), false);
  });

  test('each run gets its own token', async () => {
    const a = await open();
    const b = await open();
    assert.notEqual(a.token, b.token);
  });

  test('an unreachable upstream gets 502 JSON', async () => {
    const gone = http.createServer();
    await new Promise<void>((resolve) => gone.listen(0, '127.0.0.1', resolve));
    const port = (gone.address() as AddressInfo).port;
    await new Promise<void>((resolve) => gone.close(() => resolve()));

    const errors: string[] = [];
    const proxy = await openModelSocket({
      dir: runDir(),
      upstream: `http://127.0.0.1:${port}`,
      credential: { type: 'api_key', value: 'REAL' },
      onError: (m) => errors.push(m),
    });
    sockets.push(proxy);
    const reply = await request(proxy.socketPath, { headers: { 'x-api-key': proxy.token } });
    assert.equal(reply.status, 502);
    assert.equal(reply.headers['content-type'], 'application/json');
    const body = JSON.parse(reply.body) as { type: string; error: { type: string; message: string } };
    assert.equal(body.type, 'error');
    assert.equal(body.error.type, 'api_error');
    assert.match(body.error.message, /upstream unreachable: .*ECONNREFUSED/);
    assert.equal(errors.length, 1);
    assert.match(errors[0] ?? '', /^model upstream: /);
  });
});
