/**
 * A fake Gmail (REST API v1 and Google's OAuth token endpoint) on 127.0.0.1, for tests that run the
 * real @googleapis/gmail client against it: `rootUrl` = `fake.api`, `oauth2TokenUrl` = `fake.tokenUrl`.
 * One account; plain node:http, JSON bodies.
 *
 * - `POST /token`, a form body with `grant_type=refresh_token`: an unknown client id or secret → 401
 *   `{error:'invalid_client'}`; an unknown or revoked refresh token → 400 `{error:'invalid_grant'}`;
 *   else `{access_token, expires_in: 3600, token_type: 'Bearer', scope}`. Revoking the refresh token
 *   also ends every access token issued with it, as Google does.
 * - Under `/gmail/v1/users/me/`, every call needs `Authorization: Bearer <an issued access token>`,
 *   else 401 (the client then refreshes once and retries). Errors are Gmail-shaped:
 *   `{error: {code, message, status}}`.
 *   - `GET profile` → `{emailAddress, messagesTotal, threadsTotal, historyId}`.
 *   - `GET messages?q=&maxResults=&pageToken=` → `{messages: [{id, threadId}], nextPageToken?,
 *     resultSizeEstimate}`, newest first like Gmail (no `messages` key when none match). `q` is terms
 *     joined by blanks, all of which must hold: `is:unread`, `is:read`, `in:inbox`, `in:sent`,
 *     `from:<text>`, `to:<text>`; any other term → 400, so a test notices a query it does not model.
 *   - `GET messages/{id}?format=full` → `{id, threadId, labelIds, snippet, internalDate (ms, a string),
 *     sizeEstimate, payload}`; the payload is Gmail's MIME tree `{partId, mimeType, filename, headers:
 *     [{name, value}], body: {size, data?}, parts?}`, `data` the part's decoded bytes in base64url
 *     (Gmail undoes the Content-Transfer-Encoding; header values keep their RFC 2047 encoded-words).
 *   - `GET threads/{id}?format=metadata&metadataHeaders=…` → `{id, messages}`, oldest first, each
 *     message's payload holding only the headers asked for.
 *   - `POST messages/{id}/modify` `{addLabelIds?, removeLabelIds?}` → `{id, threadId, labelIds}`.
 *   - `POST messages/send` `{raw, threadId?}`: `raw` is a base64url RFC 822 message; it is parsed
 *     (headers unfolded, a base64 or 7bit body decoded) and recorded in `sent`, and stored with the
 *     label SENT, plus INBOX and UNREAD when the account is among its recipients (mail to yourself
 *     lands in your inbox). An unknown `threadId` → 404; without one, a new thread. Gmail sets From
 *     and Message-ID. → `{id, threadId, labelIds}`.
 * - Mail the account sent itself carries SENT and no Authentication-Results; other mail gets Gmail's
 *   `Authentication-Results: mx.google.com; … dmarc=pass|fail … header.from=<domain>` on top.
 * - Unknown routes → 404, recorded in `unhandled`. `fail()` makes the next matching call(s) answer
 *   429 (with Retry-After) or 5xx, before the call takes effect or, with `afterEffect`, after it.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface GmailHeader {
  name: string;
  value: string;
}

export interface GmailPart {
  partId: string;
  mimeType: string;
  filename: string;
  headers: GmailHeader[];
  body: { size: number; data?: string };
  parts?: GmailPart[];
}

interface Stored {
  id: string;
  threadId: string;
  labelIds: Set<string>;
  internalDate: number;
  payload: GmailPart;
  /** What `messages.get` answers instead of the real shape (a malformed message). */
  broken?: unknown;
}

export interface Delivery {
  /** The raw From header value, e.g. `"Ann" <ann@example.org>` or `=?UTF-8?B?…?= <a@b>`. */
  from: string;
  /** Default: the account. */
  to?: string;
  /** The raw Subject header value (encoded-words are kept as given). */
  subject: string;
  text?: string;
  /** With `text` too: multipart/alternative. */
  html?: string;
  /** Charset of the text parts (default utf-8; `iso-8859-1` encodes them as Latin-1). */
  charset?: string;
  threadId?: string;
  /** More headers: Reply-To, Auto-Submitted, References… */
  headers?: Record<string, string>;
  /** Mail from elsewhere claiming this From: never SENT, DMARC fails. */
  spoofed?: boolean;
  at?: number;
}

export interface SentEmail {
  id: string;
  threadId: string;
  /** The decoded RFC 822 text as the client wrote it. */
  raw: string;
  /** Unfolded headers by lowercased name, in order. */
  headers: Record<string, string[]>;
  /** Subject with encoded-words decoded. */
  subject: string;
  /** Addresses in To, Cc and Bcc. */
  recipients: string[];
  body: string;
}

export interface FailRule {
  method: string;
  /** Tested against the path after `/gmail/v1/users/me/` (or `/token`), e.g. `messages/send`. */
  path: RegExp;
  status: number;
  /** Default 1. */
  times?: number;
  /** Seconds, sent as Retry-After (default 1 for a 429). */
  retryAfter?: number;
  /** Fail after the call took effect (a send that went out but whose answer was lost). */
  afterEffect?: boolean;
}

export interface RecordedRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  body: unknown;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');
const addressIn = (v: string) => (/<([^<>]+)>/.exec(v)?.[1] ?? v).trim().toLowerCase();

/** Decodes RFC 2047 encoded-words (B and Q, UTF-8 and Latin-1), for the test's record only. */
export function decodeWords(v: string): string {
  return v
    .replace(/(\?=)\s+(?==\?)/g, '$1')
    .replace(/=\?([^?]+)\?([BbQq])\?([^?]*)\?=/g, (_m, cs: string, kind: string, data: string) => {
      const bytes =
        kind.toUpperCase() === 'B'
          ? Buffer.from(data, 'base64')
          : Buffer.from(
              data
                .replace(/_/g, ' ')
                .replace(/=([0-9A-F]{2})/gi, (_h, x: string) => String.fromCharCode(parseInt(x, 16))),
              'latin1',
            );
      return new TextDecoder(cs).decode(bytes);
    });
}

export class FakeGmail {
  readonly requests: RecordedRequest[] = [];
  readonly unhandled: string[] = [];
  readonly sent: SentEmail[] = [];
  tokenRequests = 0;
  private readonly store = new Map<string, Stored>();
  private readonly accessTokens = new Set<string>();
  private refreshValid = true;
  private rules: FailRule[] = [];
  private n = 0;

  private constructor(
    private readonly server: Server,
    readonly account: string,
    readonly credentials: { clientId: string; clientSecret: string; refreshToken: string },
  ) {}

  static async start(account = 'me@example.com'): Promise<FakeGmail> {
    const server = createServer();
    const fake = new FakeGmail(server, account, {
      clientId: 'fake-client-id.apps.googleusercontent.com',
      clientSecret: 'fake-client-secret',
      refreshToken: `1//fake-refresh-${randomBytes(8).toString('hex')}`,
    });
    server.on('request', (req, res) => {
      // A bug in the fake answers 500 with its message instead of crashing the test process.
      fake.handle(req, res).catch((err: unknown) => res.writeHead(500).end(String(err)));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return fake;
  }

  private get port(): number {
    return (this.server.address() as AddressInfo).port;
  }
  /** The Gmail API's root URL (`rootUrl`). */
  get api(): string {
    return `http://127.0.0.1:${this.port}/`;
  }
  get tokenUrl(): string {
    return `http://127.0.0.1:${this.port}/token`;
  }

  /** The GMAIL_ variables that point the channel here with valid credentials. */
  env(): Record<string, string> {
    return {
      GMAIL_CLIENT_ID: this.credentials.clientId,
      GMAIL_CLIENT_SECRET: this.credentials.clientSecret,
      GMAIL_REFRESH_TOKEN: this.credentials.refreshToken,
      GMAIL_API_URL: this.api,
      GMAIL_TOKEN_URL: this.tokenUrl,
    };
  }

  /** An email arrives; returns its ids and Message-ID. */
  deliver(d: Delivery): { id: string; threadId: string; messageId: string } {
    const id = this.nextId();
    const threadId = d.threadId ?? id;
    const messageId = `<${id}.fake@mail.example.org>`;
    const fromAddress = addressIn(d.from);
    const own = fromAddress === this.account && !d.spoofed;
    const domain = fromAddress.slice(fromAddress.lastIndexOf('@') + 1);
    const verdict = d.spoofed ? 'fail' : 'pass';
    const headers: GmailHeader[] = [
      ...(own
        ? []
        : [
            {
              name: 'Authentication-Results',
              value: `mx.google.com; spf=${verdict} smtp.mailfrom=${domain}; dmarc=${verdict} (p=NONE sp=NONE dis=NONE) header.from=${domain}`,
            },
          ]),
      { name: 'From', value: d.from },
      { name: 'To', value: d.to ?? this.account },
      { name: 'Subject', value: d.subject },
      { name: 'Date', value: new Date(d.at ?? Date.now()).toUTCString() },
      { name: 'Message-ID', value: messageId },
      { name: 'MIME-Version', value: '1.0' },
      ...Object.entries(d.headers ?? {}).map(([name, value]) => ({ name, value })),
    ];
    const charset = d.charset ?? 'utf-8';
    const leaf = (mimeType: string, text: string, partId: string): GmailPart => {
      const bytes = Buffer.from(text, /^(iso-8859-1|latin1)$/i.test(charset) ? 'latin1' : 'utf8');
      return {
        partId,
        mimeType,
        filename: '',
        headers: [{ name: 'Content-Type', value: `${mimeType}; charset="${charset}"` }],
        body: { size: bytes.length, data: b64url(bytes) },
      };
    };
    let payload: GmailPart;
    if (d.text !== undefined && d.html !== undefined) {
      payload = {
        partId: '',
        mimeType: 'multipart/alternative',
        filename: '',
        headers: [...headers, { name: 'Content-Type', value: 'multipart/alternative; boundary="b1"' }],
        body: { size: 0 },
        parts: [leaf('text/plain', d.text, '0'), leaf('text/html', d.html, '1')],
      };
    } else {
      const part = leaf(d.html !== undefined ? 'text/html' : 'text/plain', d.html ?? d.text ?? '', '');
      payload = { ...part, headers: [...headers, ...part.headers] };
    }
    this.store.set(id, {
      id,
      threadId,
      labelIds: new Set(['INBOX', 'UNREAD', ...(own ? ['SENT'] : [])]),
      internalDate: d.at ?? Date.now(),
      payload,
    });
    return { id, threadId, messageId };
  }

  /** An unread inbox message whose `messages.get` answer is not Gmail-shaped. */
  deliverBroken(): string {
    const id = this.nextId();
    const stored: Stored = {
      id,
      threadId: id,
      labelIds: new Set(['INBOX', 'UNREAD']),
      internalDate: Date.now(),
      payload: { partId: '', mimeType: 'text/plain', filename: '', headers: [], body: { size: 0 } },
      broken: { id, threadId: id, labelIds: ['INBOX', 'UNREAD'], payload: 'not a MIME tree' },
    };
    this.store.set(id, stored);
    return id;
  }

  labels(id: string): string[] {
    return [...(this.store.get(id)?.labelIds ?? [])];
  }

  isUnread(id: string): boolean {
    return this.store.get(id)?.labelIds.has('UNREAD') ?? false;
  }

  fail(rule: FailRule): void {
    this.rules.push({ times: 1, ...rule });
  }

  clearFailures(): void {
    this.rules = [];
  }

  /** The user revokes the app's access: the refresh token and its access tokens stop working. */
  revoke(): void {
    this.refreshValid = false;
    this.accessTokens.clear();
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private nextId(): string {
    this.n += 1;
    return (0x18c0000000 + this.n).toString(16);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const prefix = '/gmail/v1/users/me/';
    const path = url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : url.pathname;
    let body: unknown = text || undefined;
    try {
      body = text && (req.headers['content-type'] ?? '').includes('json') ? JSON.parse(text) : body;
    } catch {
      // not JSON after all: recorded as text
    }
    const method = req.method ?? 'GET';
    this.requests.push({ method, path, query: url.searchParams, body });
    const rule = this.rules.find((r) => r.method === method && r.path.test(path) && (r.times ?? 1) > 0);
    if (rule) rule.times = (rule.times ?? 1) - 1;
    const failure = () => {
      const retryAfter = rule?.retryAfter ?? (rule?.status === 429 ? 1 : undefined);
      const headers: Record<string, string> =
        retryAfter !== undefined ? { 'retry-after': String(retryAfter) } : {};
      this.json(res, rule?.status ?? 500, gmailError(rule?.status ?? 500, 'injected failure'), headers);
    };
    if (rule && !rule.afterEffect) return failure();
    const [status, out] = this.route(method, path, url.searchParams, body, req.headers.authorization);
    if (rule && status < 300) return failure();
    this.json(res, status, out);
  }

  private route(
    method: string,
    path: string,
    query: URLSearchParams,
    body: unknown,
    authorization: string | undefined,
  ): [number, unknown] {
    if (method === 'POST' && path === '/token') return this.token(typeof body === 'string' ? body : '');
    const bearer = /^Bearer (.+)$/.exec(authorization ?? '')?.[1];
    if (!bearer || !this.accessTokens.has(bearer)) return [401, gmailError(401, 'Invalid Credentials')];
    const notFound: [number, unknown] = [404, gmailError(404, 'Requested entity was not found.')];
    const [kind, id, action, ...more] = path.split('/');
    const key = `${method} ${kind}${id === undefined ? '' : id === 'send' ? '/send' : '/:id'}${action ? `/${action}` : ''}`;
    const s = id === undefined ? undefined : this.store.get(id);
    if (more.length === 0 && key === 'GET profile') {
      return [
        200,
        {
          emailAddress: this.account,
          messagesTotal: this.store.size,
          threadsTotal: this.store.size,
          historyId: '1',
        },
      ];
    }
    if (more.length === 0 && key === 'GET messages') return this.list(query);
    if (more.length === 0 && key === 'POST messages/send') return this.send(body);
    if (more.length === 0 && key === 'GET messages/:id') {
      return s ? [200, s.broken ?? this.resource(s, s.payload)] : notFound;
    }
    if (more.length === 0 && key === 'POST messages/:id/modify') {
      if (!s) return notFound;
      const change = (body ?? {}) as { addLabelIds?: string[]; removeLabelIds?: string[] };
      for (const l of change.addLabelIds ?? []) s.labelIds.add(l);
      for (const l of change.removeLabelIds ?? []) s.labelIds.delete(l);
      return [200, { id: s.id, threadId: s.threadId, labelIds: [...s.labelIds] }];
    }
    if (more.length === 0 && key === 'GET threads/:id') {
      const want = new Set(query.getAll('metadataHeaders').map((h) => h.toLowerCase()));
      const messages = [...this.store.values()]
        .filter((m) => m.threadId === id && !m.broken)
        .sort((a, b) => a.internalDate - b.internalDate)
        .map((m) =>
          this.resource(m, {
            ...m.payload,
            headers: m.payload.headers.filter((h) => want.size === 0 || want.has(h.name.toLowerCase())),
            parts: undefined,
          }),
        );
      return messages.length ? [200, { id, historyId: '1', messages }] : notFound;
    }
    this.unhandled.push(`${method} ${path}`);
    return [404, gmailError(404, `no route ${method} ${path}`)];
  }

  private token(form: string): [number, unknown] {
    this.tokenRequests += 1;
    const p = new URLSearchParams(form);
    const c = this.credentials;
    if (p.get('client_id') !== c.clientId || p.get('client_secret') !== c.clientSecret) {
      return [401, { error: 'invalid_client', error_description: 'The OAuth client was not found.' }];
    }
    if (
      p.get('grant_type') !== 'refresh_token' ||
      p.get('refresh_token') !== c.refreshToken ||
      !this.refreshValid
    ) {
      return [400, { error: 'invalid_grant', error_description: 'Token has been expired or revoked.' }];
    }
    const token = `ya29.fake-${randomBytes(12).toString('hex')}`;
    this.accessTokens.add(token);
    return [
      200,
      {
        access_token: token,
        expires_in: 3600,
        token_type: 'Bearer',
        scope: 'https://www.googleapis.com/auth/gmail.modify',
      },
    ];
  }

  private list(query: URLSearchParams): [number, unknown] {
    const terms = (query.get('q') ?? '').split(/\s+/).filter(Boolean);
    const tests: ((s: Stored) => boolean)[] = [];
    for (const t of terms) {
      const [key, value = ''] = t.split(/:(.*)/s) as [string, string | undefined];
      const header = (s: Stored, name: string) =>
        s.payload.headers.find((h) => h.name.toLowerCase() === name)?.value.toLowerCase() ?? '';
      if (t === 'is:unread') tests.push((s) => s.labelIds.has('UNREAD'));
      else if (t === 'is:read') tests.push((s) => !s.labelIds.has('UNREAD'));
      else if (t === 'in:inbox') tests.push((s) => s.labelIds.has('INBOX'));
      else if (t === 'in:sent') tests.push((s) => s.labelIds.has('SENT'));
      else if (key === 'from' || key === 'to')
        tests.push((s) => header(s, key).includes(value.toLowerCase()));
      else return [400, gmailError(400, `the fake does not model the query term ${t}`)];
    }
    const matching = [...this.store.values()]
      .filter((s) => tests.every((f) => f(s)))
      .sort(
        (a, b) => b.internalDate - a.internalDate || Number.parseInt(b.id, 16) - Number.parseInt(a.id, 16),
      );
    const max = Math.min(Number(query.get('maxResults') ?? 100) || 100, 500);
    const start = Number(query.get('pageToken') ?? 0);
    const page = matching.slice(start, start + max).map((s) => ({ id: s.id, threadId: s.threadId }));
    return [
      200,
      {
        ...(page.length ? { messages: page } : {}),
        ...(start + max < matching.length ? { nextPageToken: String(start + max) } : {}),
        resultSizeEstimate: matching.length,
      },
    ];
  }

  private send(body: unknown): [number, unknown] {
    const { raw, threadId } = (body ?? {}) as { raw?: string; threadId?: string };
    if (typeof raw !== 'string' || raw === '')
      return [
        400,
        gmailError(
          400,
          "'raw' RFC822 payload message string or uploading message via /upload/* URL required",
        ),
      ];
    if (threadId !== undefined && ![...this.store.values()].some((s) => s.threadId === threadId)) {
      return [404, gmailError(404, 'Requested entity was not found.')];
    }
    const text = Buffer.from(raw, 'base64url').toString('utf8');
    const split = text.search(/\r?\n\r?\n/);
    const head = split < 0 ? text : text.slice(0, split);
    const rest = split < 0 ? '' : text.slice(split).replace(/^\r?\n\r?\n/, '');
    const headers: Record<string, string[]> = {};
    const list: GmailHeader[] = [];
    // A bare CR or LF ends a header line too, as lenient mail parsers have it.
    for (const line of head.replace(/(\r\n|\r|\n)[ \t]+/g, ' ').split(/\r\n|\r|\n/)) {
      const i = line.indexOf(':');
      if (i <= 0) continue;
      const name = line.slice(0, i).trim();
      const value = line.slice(i + 1).trim();
      headers[name.toLowerCase()] = [...(headers[name.toLowerCase()] ?? []), value];
      list.push({ name, value });
    }
    const one = (n: string) => headers[n]?.[0] ?? '';
    const decoded = /base64/i.test(one('content-transfer-encoding'))
      ? Buffer.from(rest.replace(/\s+/g, ''), 'base64')
      : Buffer.from(rest, 'utf8');
    const recipients = ['to', 'cc', 'bcc'].flatMap((n) =>
      (headers[n] ?? []).flatMap((v) => v.split(',').map(addressIn).filter(Boolean)),
    );
    const id = this.nextId();
    const thread = threadId ?? id;
    const toSelf = recipients.includes(this.account);
    this.store.set(id, {
      id,
      threadId: thread,
      labelIds: new Set(['SENT', ...(toSelf ? ['INBOX', 'UNREAD'] : [])]),
      internalDate: Date.now(),
      payload: {
        partId: '',
        mimeType: 'text/plain',
        filename: '',
        headers: [
          { name: 'From', value: this.account },
          ...list.filter((h) => !/^(from|message-id)$/i.test(h.name)),
          { name: 'Message-ID', value: `<${id}.sent@mail.gmail.com>` },
        ],
        body: { size: decoded.length, data: b64url(decoded) },
      },
    });
    this.sent.push({
      id,
      threadId: thread,
      raw: text,
      headers,
      subject: decodeWords(one('subject')),
      recipients,
      body: decoded.toString('utf8'),
    });
    return [200, { id, threadId: thread, labelIds: ['SENT'] }];
  }

  private resource(s: Stored, payload: GmailPart) {
    return {
      id: s.id,
      threadId: s.threadId,
      labelIds: [...s.labelIds],
      snippet: '',
      historyId: '1',
      internalDate: String(s.internalDate),
      sizeEstimate: 1000,
      payload,
    };
  }

  private json(
    res: ServerResponse,
    status: number,
    body: unknown,
    headers: Record<string, string> = {},
  ): void {
    res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8', ...headers });
    res.end(JSON.stringify(body));
  }
}

function gmailError(code: number, message: string) {
  const status: Record<number, string> = {
    400: 'INVALID_ARGUMENT',
    401: 'UNAUTHENTICATED',
    403: 'PERMISSION_DENIED',
    404: 'NOT_FOUND',
    429: 'RESOURCE_EXHAUSTED',
  };
  return { error: { code, message, status: status[code] ?? 'INTERNAL' } };
}
