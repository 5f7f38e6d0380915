// The local web chat, chat `web:main`. HTTP on WEB_HOST:WEB_PORT:
//   GET  /             the page (public/index.html)
//   POST /api/messages {"text","id"?} → 202 {"id"} once stored; the client id makes retries idempotent
//   GET  /api/events   Server-Sent Events: `message` {"id","text","sender"?,"at"} per assistant
//                      message, `status` {"working"}; every event's `id:` is the last message id,
//                      so `Last-Event-ID` (header, or `?lastEventId=`) replays what was missed
//   GET  /api/status   groups, live agents, queue, recent runs
// Requests with a foreign Host or Origin are refused (DNS rebinding, cross-site posts); bodies
// must be application/json; with WEB_TOKEN set every route needs it (Bearer header or ?token=).
import { randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { z } from 'zod';
import type { Db } from '../db.js';
import type { Logger } from '../log.js';
import type { Channel, InboundMessage, IngestResult, OutboundMessage } from './channel.js';

export const WEB_CHAT = 'web:main';
const MAX_BODY = 256 * 1024;
const KEEPALIVE_MS = 25_000;
const REPLAY_BATCH = 1000;

const postSchema = z.object({
  text: z.string().refine((t) => t.trim() !== '', 'text must not be empty'),
  id: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]{1,128}$/, 'id must be 1-128 letters, digits, or _ . : -')
    .optional(),
});

export interface WebDeps {
  host: string;
  port: number;
  token: string | undefined;
  assistantName: string;
  projectRoot: string;
  db: Db;
  log: Logger;
  now: () => number;
  ingest: (m: InboundMessage) => IngestResult;
  status: () => unknown;
}

export interface WebChannel extends Channel {
  /** The bound port (WEB_PORT=0 picks a free one). */
  port(): number;
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]']);

export function createWebChannel(deps: WebDeps): WebChannel {
  const clients = new Set<http.ServerResponse>();
  let working = false;
  let accepting = true;
  let page: string | undefined;
  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      deps.log.error(`web: ${req.method} ${req.url}: ${(err as Error).message}`);
      if (!res.headersSent) fail(res, 500, 'internal error');
      else res.end();
    });
  });

  function fail(res: http.ServerResponse, status: number, error: string): void {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error }));
  }

  /** One line saying why the request is refused, or undefined. */
  function refusal(req: http.IncomingMessage, url: URL): [number, string] | undefined {
    const host = req.headers.host ?? '';
    const loopbackBind = LOOPBACK_NAMES.has(deps.host) || deps.host === '::1';
    const hostName = host.replace(/:\d+$/, '');
    if (loopbackBind && (!LOOPBACK_NAMES.has(hostName) || host !== `${hostName}:${port()}`)) {
      return [403, `foreign Host header: ${host.slice(0, 100)}`];
    }
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${host}`) {
      return [403, `foreign Origin: ${origin.slice(0, 100)}`];
    }
    if (deps.token) {
      const auth = req.headers.authorization ?? '';
      const given = auth.startsWith('Bearer ') ? auth.slice(7) : (url.searchParams.get('token') ?? '');
      const a = Buffer.from(given);
      const b = Buffer.from(deps.token);
      if (a.length !== b.length || !timingSafeEqual(a, b)) return [401, 'missing or wrong token'];
    }
    return undefined;
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://web.invalid');
    // Browsers ask for it on their own, without the token: nothing to serve, nothing to refuse.
    if (req.method === 'GET' && url.pathname === '/favicon.ico') return void res.writeHead(204).end();
    const refused = refusal(req, url);
    if (refused) return fail(res, ...refused);
    const route = `${req.method} ${url.pathname}`;
    if (route === 'GET /' || route === 'GET /index.html') return servePage(res);
    if (route === 'POST /api/messages') return postMessage(req, res);
    if (route === 'GET /api/events') return events(req, res, url);
    if (route === 'GET /api/status') {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      return void res.end(JSON.stringify(deps.status()));
    }
    fail(res, 404, `no route ${req.method} ${url.pathname}`);
  }

  function servePage(res: http.ServerResponse): void {
    page ??= readFileSync(path.join(deps.projectRoot, 'public', 'index.html'), 'utf8');
    res.writeHead(200, {
      'content-type': 'text/html; charset=utf-8',
      'content-security-policy': "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
      'x-frame-options': 'DENY',
    });
    res.end(page);
  }

  async function postMessage(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!accepting) return fail(res, 503, 'shutting down');
    const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
    if (type !== 'application/json') return fail(res, 415, 'Content-Type must be application/json');
    const body = await readBody(req);
    if (body === undefined) return fail(res, 413, `body larger than ${MAX_BODY} bytes`);
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      return fail(res, 400, 'body is not valid JSON');
    }
    const parsed = postSchema.safeParse(json);
    if (!parsed.success) return fail(res, 400, parsed.error.issues[0]?.message ?? 'invalid message');
    const id = parsed.data.id ?? randomUUID();
    const result = deps.ingest({
      chatJid: WEB_CHAT,
      chatName: 'Web chat',
      platformId: id,
      sender: 'web:owner',
      senderName: 'You',
      text: parsed.data.text,
      at: deps.now(),
    });
    if (!result.stored) return fail(res, 503, result.reason);
    res.writeHead(202, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id }));
  }

  /** The body as text, or undefined when it is over MAX_BODY (read to the end all the same). */
  async function readBody(req: http.IncomingMessage): Promise<string | undefined> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req as AsyncIterable<Buffer>) {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    }
    return size > MAX_BODY ? undefined : Buffer.concat(chunks).toString('utf8');
  }

  function write(res: http.ServerResponse, event: string, id: number, data: unknown): void {
    res.write(`event: ${event}\nid: ${id}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  function events(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
    });
    res.write(': connected\n\n');
    const last = req.headers['last-event-id'] ?? url.searchParams.get('lastEventId');
    clients.add(res);
    // Synchronous from here to the end: no broadcast can slip between the replay and the subscription.
    let from = typeof last === 'string' && /^\d+$/.test(last) ? Number(last) : Number.NaN;
    while (Number.isFinite(from)) {
      const rows = deps.db.outboxAfter(WEB_CHAT, from, REPLAY_BATCH);
      for (const row of rows) {
        if (row.status === 'sent')
          write(res, 'message', row.id, messageData(row.id, row.text, row.sender, row.createdAt));
      }
      from = rows.length === REPLAY_BATCH ? (rows.at(-1)?.id ?? Number.NaN) : Number.NaN;
    }
    write(res, 'status', deps.db.latestOutboxId(WEB_CHAT), { working });
    const ping = setInterval(() => res.write(': ping\n\n'), KEEPALIVE_MS);
    ping.unref();
    req.on('close', () => {
      clearInterval(ping);
      clients.delete(res);
    });
  }

  function messageData(id: number, text: string, sender: string | null | undefined, at: number) {
    return { id: String(id), text, sender: sender || deps.assistantName, at };
  }

  function port(): number {
    return (server.address() as AddressInfo | null)?.port ?? deps.port;
  }

  return {
    name: 'web',
    port,
    owns: (chatJid) => chatJid === WEB_CHAT,
    async start() {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(deps.port, deps.host, () => resolve());
      });
    },
    async stop() {
      accepting = false;
    },
    async send(msg: OutboundMessage) {
      const row = deps.db.outboxRow(msg.outboxId);
      const data = messageData(msg.outboxId, msg.text, msg.sender, row?.createdAt ?? deps.now());
      for (const res of clients) write(res, 'message', msg.outboxId, data);
      return { platformId: String(msg.outboxId) };
    },
    setWorking(_chatJid, w) {
      working = w;
      const id = deps.db.latestOutboxId(WEB_CHAT);
      for (const res of clients) write(res, 'status', id, { working });
    },
    async close() {
      for (const res of clients) res.end();
      clients.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
