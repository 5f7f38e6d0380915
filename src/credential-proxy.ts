// The credential proxy. Each agent run gets its own Unix socket, bound into its sandbox, and a
// random per-run token that the sandboxed CLI sends as its API key. Origin-form requests
// (`POST /v1/messages`) carrying that token are forwarded upstream with the real credential put
// in its place; anything else is refused. The real key never crosses into the sandbox.
// Everything else (CONNECT tunnels and absolute-URI http requests, from the in-sandbox bridge)
// is egress: the policy decides on the resolved address before any dial, and the proxy dials
// exactly the address it checked. The policy belongs to the socket, never to the request.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import type { EgressDecision } from './egress.js';

export interface ModelCredential {
  type: 'api_key' | 'oauth';
  value: string;
}

export interface Egress {
  decide: (host: string, port: number) => Promise<EgressDecision>;
  /** Opens a TCP connection to an address the policy accepted. */
  dial: (address: string, port: number) => net.Socket;
  /** One line per refusal, for the log (with the group id). */
  onRefuse: (line: string) => void;
}

const DIAL_TIMEOUT_MS = 10_000;

/** `host:port` of a CONNECT request (IPv6 in brackets), or undefined. */
function parseAuthority(authority: string): { host: string; port: number } | undefined {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s/[\]]+):(\d{1,5})$/.exec(authority);
  const port = Number(m?.[2]);
  if (!m?.[1] || !(port > 0 && port < 65536)) return undefined;
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

export interface ModelSocket {
  socketPath: string;
  /** With `tcpHost`: the proxy's URL (the TCP fallback); the socket path is then unused. */
  url?: string;
  token: string;
  close(): Promise<void>;
}

// Hop-by-hop and proxy headers never travel on; to the model, neither does the run token.
const HOP_BY_HOP = new Set([
  'host',
  'connection',
  'keep-alive',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);
const DROP = new Set([...HOP_BY_HOP, 'x-api-key', 'authorization']);

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function presentedToken(req: http.IncomingMessage): string {
  const key = req.headers['x-api-key'];
  if (typeof key === 'string') return key;
  const auth = req.headers.authorization ?? '';
  return auth.startsWith('Bearer ') ? auth.slice(7) : '';
}

function refuse(res: http.ServerResponse, status: number, type: string, message: string): void {
  // The CLI reads this header on a 403 as "egress blocked"; other refusals must not carry it.
  const blocked = status === 403 ? { 'x-proxy-error': 'blocked-by-allowlist' } : {};
  res.writeHead(status, { 'content-type': 'application/json', ...blocked });
  res.end(JSON.stringify({ type: 'error', error: { type, message } }));
}

/** A 502 while nothing has been sent yet; after that, only a cut connection can tell the client. */
function fail(res: http.ServerResponse, message: string): void {
  if (!res.headersSent) refuse(res, 502, 'api_error', message);
  else res.destroy();
}

/** Passes the upstream's response through as it is. */
const relay = (res: http.ServerResponse) => (upRes: http.IncomingMessage) => {
  res.writeHead(upRes.statusCode ?? 502, upRes.headers);
  upRes.pipe(res);
};

function copyHeaders(req: http.IncomingMessage, drop: ReadonlySet<string>): http.OutgoingHttpHeaders {
  return Object.fromEntries(Object.entries(req.headers).filter(([k, v]) => !drop.has(k) && v !== undefined));
}

/**
 * Listens on `<dir>/api.sock` for one run. `dir` is created 0700: only our uid (which the
 * sandbox's uid maps to) can enter it, and the token is the real gate.
 */
export async function openModelSocket(opts: {
  dir: string;
  upstream: string;
  credential: ModelCredential;
  onError?: (message: string) => void;
  /** Without it, all egress is refused. */
  egress?: Egress;
  /** For runtimes that cannot share a Unix socket (Apple's VMs): listen on this host address
   * instead, on a port of its own; the token stays the gate. */
  tcpHost?: string;
}): Promise<ModelSocket> {
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  chmodSync(opts.dir, 0o700);
  const socketPath = path.join(opts.dir, 'api.sock');
  rmSync(socketPath, { force: true });
  const token = `nanoclaw-run-${randomBytes(24).toString('hex')}`;
  const upstream = new URL(opts.upstream);
  const basePath = upstream.pathname.replace(/\/+$/, '');
  const client = upstream.protocol === 'https:' ? https : http;

  const egress = opts.egress;

  /** An absolute-URI request (`GET http://host/path`): egress over plain HTTP. */
  function forward(req: http.IncomingMessage, res: http.ServerResponse, url: string) {
    if (!URL.canParse(url)) return refuse(res, 400, 'invalid_request_error', 'malformed request target');
    const target = new URL(url);
    if (!egress || target.protocol !== 'http:') {
      return refuse(res, 403, 'permission_error', 'egress refused: only http:// through this proxy');
    }
    const port = Number(target.port || 80);
    egress.decide(target.hostname, port).then(
      (d) => {
        if (!d.ok) {
          egress.onRefuse(`${target.hostname}:${port}: ${d.reason}`);
          return refuse(res, 403, 'permission_error', `egress refused: ${d.reason}`);
        }
        // The agent's own headers (an API token for a site it calls) pass; only hop-by-hop go.
        const headers = { ...copyHeaders(req, HOP_BY_HOP), host: target.host };
        const up = http.request(
          {
            host: d.address,
            port: d.port,
            method: req.method,
            path: target.pathname + target.search,
            headers,
            // The request's only way to a socket is the checked address through `dial`.
            createConnection: () => egress.dial(d.address, d.port),
          },
          relay(res),
        );
        up.setTimeout(DIAL_TIMEOUT_MS, () => up.destroy(new Error('timed out')));
        up.on('error', (err) => fail(res, `egress to ${target.host} failed: ${err.message}`));
        req.pipe(up);
      },
      (err: unknown) => refuse(res, 502, 'api_error', `egress check failed: ${(err as Error).message}`),
    );
  }

  /** A CONNECT tunnel (HTTPS): TLS is tunnelled, never intercepted. */
  function tunnel(req: http.IncomingMessage, socket: Duplex, head: Buffer) {
    const deny = (status: string, reason: string) => {
      const body = `egress refused: ${reason}\n`;
      socket.end(
        `HTTP/1.1 ${status}\r\nX-Proxy-Error: blocked-by-allowlist\r\nContent-Type: text/plain\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    };
    const target = parseAuthority(req.url ?? '');
    if (!egress || !target) {
      return deny('403 Forbidden', egress ? 'malformed CONNECT target' : 'no egress from this sandbox');
    }
    socket.on('error', () => socket.destroy());
    egress.decide(target.host, target.port).then(
      (d) => {
        if (!d.ok) {
          egress.onRefuse(`${target.host}:${target.port}: ${d.reason}`);
          return deny('403 Forbidden', d.reason);
        }
        const up = egress.dial(d.address, d.port);
        let open = false;
        up.setTimeout(DIAL_TIMEOUT_MS, () => up.destroy(new Error('timed out')));
        up.once('connect', () => {
          open = true;
          up.setTimeout(0);
          socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
          if (head.length > 0) up.write(head);
          up.pipe(socket);
          socket.pipe(up);
        });
        up.on('error', (err) => {
          if (!open) deny('502 Bad Gateway', `dial failed: ${err.message}`);
          else socket.destroy();
        });
        socket.on('close', () => up.destroy());
      },
      (err: unknown) => deny('502 Bad Gateway', `egress check failed: ${(err as Error).message}`),
    );
  }

  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (!url.startsWith('/')) return forward(req, res, url);
    if (!sameSecret(presentedToken(req), token)) {
      return refuse(res, 401, 'authentication_error', 'invalid run token');
    }
    const headers = copyHeaders(req, DROP);
    if (opts.credential.type === 'api_key') headers['x-api-key'] = opts.credential.value;
    else headers.authorization = `Bearer ${opts.credential.value}`;
    const up = client.request(
      {
        protocol: upstream.protocol,
        hostname: upstream.hostname,
        port: upstream.port || undefined,
        method: req.method,
        path: basePath + url,
        headers,
      },
      relay(res),
    );
    up.on('error', (err) => {
      opts.onError?.(`model upstream: ${err.message}`);
      fail(res, `upstream unreachable: ${err.message}`);
    });
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  server.on('connect', tunnel);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (opts.tcpHost) server.listen(0, opts.tcpHost, () => resolve());
    else server.listen(socketPath, () => resolve());
  });
  const address = server.address();
  return {
    socketPath,
    ...(opts.tcpHost && typeof address === 'object' && address
      ? {
          url: `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`,
        }
      : {}),
    token,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          rmSync(opts.dir, { recursive: true, force: true });
          resolve();
        });
      }),
  };
}
