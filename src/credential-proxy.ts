// The credential proxy. Each agent run gets its own Unix socket, bound into its sandbox, and a
// random per-run token that the sandboxed CLI sends as its API key. Origin-form requests
// (`POST /v1/messages`) carrying that token are forwarded upstream with the real credential put
// in its place; anything else is refused. The real key never crosses into the sandbox.
// Egress (CONNECT and absolute-URI requests) is refused here until the egress policy exists.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';

export interface ModelCredential {
  type: 'api_key' | 'oauth';
  value: string;
}

export interface ModelSocket {
  socketPath: string;
  token: string;
  close(): Promise<void>;
}

// Hop-by-hop headers and the sandbox's own credential never travel upstream.
const DROP = new Set([
  'host',
  'connection',
  'keep-alive',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'x-api-key',
  'authorization',
]);

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

/**
 * Listens on `<dir>/api.sock` for one run. `dir` is created 0700: only our uid (which the
 * sandbox's uid maps to) can enter it, and the token is the real gate.
 */
export async function openModelSocket(opts: {
  dir: string;
  upstream: string;
  credential: ModelCredential;
  onError?: (message: string) => void;
}): Promise<ModelSocket> {
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  chmodSync(opts.dir, 0o700);
  const socketPath = path.join(opts.dir, 'api.sock');
  rmSync(socketPath, { force: true });
  const token = `nanoclaw-run-${randomBytes(24).toString('hex')}`;
  const upstream = new URL(opts.upstream);
  const basePath = upstream.pathname.replace(/\/+$/, '');
  const client = upstream.protocol === 'https:' ? https : http;

  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (!url.startsWith('/'))
      return refuse(res, 403, 'permission_error', 'egress is not allowed from this sandbox');
    if (!sameSecret(presentedToken(req), token)) {
      return refuse(res, 401, 'authentication_error', 'invalid run token');
    }
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) if (!DROP.has(k) && v !== undefined) headers[k] = v;
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
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on('error', (err) => {
      opts.onError?.(`model upstream: ${err.message}`);
      if (!res.headersSent) refuse(res, 502, 'api_error', `upstream unreachable: ${err.message}`);
      else res.destroy();
    });
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  server.on('connect', (_req, socket) => {
    socket.end('HTTP/1.1 403 Forbidden\r\nX-Proxy-Error: blocked-by-allowlist\r\nContent-Length: 0\r\n\r\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  return {
    socketPath,
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
