/**
 * A fake X API v2 on 127.0.0.1 for tests that run twitter-api-v2 against it (X_API_URL = `fake.api`):
 * one node:http server, one account (the one the credentials belong to) and the users a test adds.
 * JSON in and out; errors are X's problem documents `{title, detail, type, status}`.
 *
 * - Every route checks OAuth 1.0a (RFC 5849) as X does: an `Authorization: OAuth …` header with the
 *   account's consumer key and access token, `HMAC-SHA1` over the method, the base URL (this server's
 *   origin and the path) and the query, form-body and `oauth_*` parameters (a JSON body is not
 *   signed), keyed with the consumer secret and the token secret; a fresh nonce, a timestamp within
 *   5 minutes. Anything else → 401, so a passing request proves the client signed for this base URL.
 * - `GET /2/users/me` → `{data: {id, name, username}}`.
 * - `GET /2/users/:id/mentions` (the account's id only, else 403): posts whose text @mentions the
 *   account, newest first like X. `since_id` (exclusive), `start_time` (inclusive, `YYYY-MM-DDTHH:mm:ssZ`),
 *   `max_results` 5..100 (default 10), `pagination_token` (the `meta.next_token` of the page before).
 *   A post has `id`, `text` (with &, < and > as HTML entities, like X) and `edit_history_tweet_ids`; `tweet.fields` may add `author_id` and
 *   `created_at`; `expansions=author_id` adds `includes.users` `{id, name, username}`.
 *   `meta: {result_count, newest_id?, oldest_id?, next_token?}`.
 * - `POST /2/tweets` `{text, reply?: {in_reply_to_tweet_id}}` → 201 `{data: {id, text, edit_history_tweet_ids}}`;
 *   text over 280 characters → 400; the text of an earlier post of the account → 403 (duplicate
 *   content, as X says it); a reply to a post that does not exist → 400.
 * - Every answer carries `x-rate-limit-limit`, `-remaining` and `-reset` (epoch seconds).
 *   `fail()` makes matching requests fail (after `skip` of them passed), once the signature is
 *   checked: 429 with remaining 0 and a reset `resetInSeconds` ahead, or any other status.
 * - Unknown routes: 404, recorded in `unhandled`. Every request is recorded in `requests`.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface XUser {
  id: string;
  username: string;
  name: string;
}

export interface XPost {
  id: string;
  text: string;
  authorId: string;
  createdAt: string;
  inReplyTo?: string;
}

export interface XCredentials {
  apiKey: string;
  apiSecret: string;
  accessToken: string;
  accessSecret: string;
}

export interface XRecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  body: unknown;
  status: number;
}

export interface XFailRule {
  method: string;
  path: RegExp;
  status: number;
  /** For 429: when the limit resets (default 1 s ahead). */
  resetInSeconds?: number;
  /** How many matching requests fail; default 1. */
  times?: number;
  /** How many matching requests pass before the failures; default 0. */
  skip?: number;
}

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

const TITLES: Record<number, string> = {
  400: 'Invalid Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  429: 'Too Many Requests',
  503: 'Service Unavailable',
};

const problem = (status: number, detail: string): Reply => ({
  status,
  body: { title: TITLES[status] ?? 'Error', detail, type: 'about:blank', status },
});

/** RFC 3986 percent-encoding, as OAuth 1.0a requires (encodeURIComponent leaves !'()* alone). */
const encode = (s: string) =>
  encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** `a=1&b=x%2Cy` → pairs, decoded by RFC 3986 rules (no `+` for space). */
function pairs(raw: string): [string, string][] {
  if (raw === '') return [];
  return raw.split('&').map((kv) => {
    const i = kv.indexOf('=');
    const [k, v] = i < 0 ? [kv, ''] : [kv.slice(0, i), kv.slice(i + 1)];
    return [decodeURIComponent(k), decodeURIComponent(v)];
  });
}

export class FakeX {
  readonly api: string;
  readonly account: XUser;
  readonly credentials: XCredentials;
  readonly requests: XRecordedRequest[] = [];
  readonly unhandled: string[] = [];
  private readonly users = new Map<string, XUser>();
  private readonly tweets: XPost[] = [];
  private readonly nonces = new Set<string>();
  private readonly rules: Array<XFailRule & { left: number; skip: number }> = [];
  private lastId = 1_790_000_000_000_000_000n;

  private constructor(
    private readonly server: Server,
    port: number,
    username: string,
  ) {
    this.api = `http://127.0.0.1:${port}`;
    const secret = () => randomBytes(18).toString('base64url');
    this.credentials = {
      apiKey: secret(),
      apiSecret: secret(),
      accessToken: `1-${secret()}`,
      accessSecret: secret(),
    };
    this.account = this.addUser(username);
    server.on('request', (req, res) => void this.onRequest(req, res));
  }

  static async start(opts: { username?: string } = {}): Promise<FakeX> {
    const server = createServer();
    await new Promise<void>((resolve, fail) => {
      server.once('error', fail);
      server.listen(0, '127.0.0.1', resolve);
    });
    return new FakeX(server, (server.address() as AddressInfo).port, opts.username ?? 'krabbybot');
  }

  async stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  /** The variables that point the channel at this fake as its account. */
  env(): Record<string, string> {
    return {
      X_API_URL: this.api,
      X_API_KEY: this.credentials.apiKey,
      X_API_SECRET: this.credentials.apiSecret,
      X_ACCESS_TOKEN: this.credentials.accessToken,
      X_ACCESS_SECRET: this.credentials.accessSecret,
    };
  }

  addUser(username: string, name = username): XUser {
    const user = { id: this.nextId(), username, name };
    this.users.set(user.id, user);
    return user;
  }

  /** A post by `from` that mentions the account: `@<account> <text>`, made now or `at` (ms). */
  mention(from: XUser, text: string, at = Date.now()): XPost {
    return this.post(from, `@${this.account.username} ${text}`, undefined, at);
  }

  /** What the account posted, oldest first. */
  posts(): XPost[] {
    return this.tweets.filter((t) => t.authorId === this.account.id);
  }

  fail(rule: XFailRule): void {
    this.rules.push({ ...rule, left: rule.times ?? 1, skip: rule.skip ?? 0 });
  }

  private nextId(): string {
    this.lastId += BigInt(1000 + Math.floor(Math.random() * 1000));
    return String(this.lastId);
  }

  private post(from: XUser, text: string, inReplyTo?: string, at = Date.now()): XPost {
    const t: XPost = {
      id: this.nextId(),
      text,
      authorId: from.id,
      createdAt: new Date(at).toISOString(),
      ...(inReplyTo ? { inReplyTo } : {}),
    };
    this.tweets.push(t);
    return t;
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url ?? '/', this.api);
    const method = req.method ?? 'GET';
    const query = Object.fromEntries(pairs(url.search.slice(1)));
    const type = req.headers['content-type'] ?? '';
    let body: unknown;
    let reply: Reply;
    try {
      body = raw === '' ? undefined : type.startsWith('application/json') ? JSON.parse(raw) : raw;
      reply = this.handle(
        req,
        method,
        url,
        body,
        type.startsWith('application/x-www-form-urlencoded') ? raw : '',
      );
    } catch (err) {
      reply = problem(400, `body: ${(err as Error).message}`);
    }
    this.requests.push({ method, path: url.pathname, query, body, status: reply.status });
    res.writeHead(reply.status, {
      'content-type': 'application/json; charset=utf-8',
      'x-rate-limit-limit': '100',
      'x-rate-limit-remaining': '99',
      'x-rate-limit-reset': String(Math.ceil(Date.now() / 1000) + 900),
      ...reply.headers,
    });
    res.end(JSON.stringify(reply.body));
  }

  private handle(req: IncomingMessage, method: string, url: URL, body: unknown, form: string): Reply {
    const unauthorized = this.checkOAuth(req.headers.authorization ?? '', method, url, form);
    if (unauthorized) return problem(401, 'Unauthorized');
    const rule = this.rules.find((r) => r.left > 0 && r.method === method && r.path.test(url.pathname));
    if (rule && rule.skip > 0) rule.skip--;
    else if (rule) {
      rule.left--;
      if (rule.status !== 429) return problem(rule.status, TITLES[rule.status] ?? `status ${rule.status}`);
      const reset = Math.ceil(Date.now() / 1000) + (rule.resetInSeconds ?? 1);
      return {
        ...problem(429, 'Too Many Requests'),
        headers: { 'x-rate-limit-remaining': '0', 'x-rate-limit-reset': String(reset) },
      };
    }
    const route = `${method} ${url.pathname}`;
    if (route === 'GET /2/users/me') return { status: 200, body: { data: this.account } };
    const mentions = /^GET \/2\/users\/(\d+)\/mentions$/.exec(route);
    if (mentions) return this.mentions(mentions[1] ?? '', url.searchParams);
    if (route === 'POST /2/tweets') return this.createTweet(body);
    this.unhandled.push(route);
    return problem(404, `no route ${route}`);
  }

  /** Undefined when the request is signed right; else why not (the answer is a bare 401 like X's). */
  private checkOAuth(header: string, method: string, url: URL, form: string): string | undefined {
    if (!header.startsWith('OAuth ')) return 'no OAuth header';
    const oauth = new Map<string, string>();
    for (const part of header.slice(6).split(',')) {
      const m = /^\s*([\w%]+)="([^"]*)"\s*$/.exec(part);
      if (!m) return `malformed: ${part}`;
      oauth.set(decodeURIComponent(m[1] ?? ''), decodeURIComponent(m[2] ?? ''));
    }
    const c = this.credentials;
    if (oauth.get('oauth_consumer_key') !== c.apiKey || oauth.get('oauth_token') !== c.accessToken)
      return 'unknown key or token';
    if (oauth.get('oauth_signature_method') !== 'HMAC-SHA1') return 'not HMAC-SHA1';
    if (Math.abs(Number(oauth.get('oauth_timestamp')) - Date.now() / 1000) > 300) return 'stale timestamp';
    const nonce = oauth.get('oauth_nonce') ?? '';
    if (nonce === '' || this.nonces.has(nonce)) return 'reused nonce';
    const params = [
      ...pairs(url.search.slice(1)),
      ...pairs(form),
      ...[...oauth].filter(([k]) => k !== 'oauth_signature'),
    ]
      .map(([k, v]) => [encode(k), encode(v)] as const)
      .sort(([ak, av], [bk, bv]) => (ak < bk ? -1 : ak > bk ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
      .map(([k, v]) => `${k}=${v}`)
      .join('&');
    const base = [method.toUpperCase(), encode(`${this.api}${url.pathname}`), encode(params)].join('&');
    const key = `${encode(c.apiSecret)}&${encode(c.accessSecret)}`;
    const expected = createHmac('sha1', key).update(base).digest('base64');
    if (oauth.get('oauth_signature') !== expected) return 'bad signature';
    this.nonces.add(nonce);
    return undefined;
  }

  private mentions(userId: string, q: URLSearchParams): Reply {
    if (userId !== this.account.id) return problem(403, 'You can only read the mentions of your own account');
    const max = Number(q.get('max_results') ?? '10');
    if (!Number.isInteger(max) || max < 5 || max > 100)
      return problem(400, 'The `max_results` query parameter value is not between 5 and 100');
    const startTime = q.get('start_time');
    if (startTime !== null && !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/.test(startTime))
      return problem(
        400,
        'The `start_time` query parameter value is not a valid time (YYYY-MM-DDTHH:mm:ssZ)',
      );
    const since = q.get('since_id');
    const until = q.get('pagination_token');
    const fields = new Set((q.get('tweet.fields') ?? '').split(','));
    const mention = new RegExp(`(^|[^\\w])@${this.account.username}\\b`, 'i');
    const all = this.tweets
      .filter((t) => mention.test(t.text))
      .filter((t) => since === null || BigInt(t.id) > BigInt(since))
      .filter((t) => startTime === null || Date.parse(t.createdAt) >= Date.parse(startTime))
      .filter((t) => until === null || BigInt(t.id) <= BigInt(until.replace(/^next-/, '')))
      .sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? 1 : -1));
    const page = all.slice(0, max);
    const data = page.map((t) => ({
      id: t.id,
      text: t.text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'), // as X sends it
      edit_history_tweet_ids: [t.id],
      ...(fields.has('author_id') ? { author_id: t.authorId } : {}),
      ...(fields.has('created_at') ? { created_at: t.createdAt } : {}),
    }));
    const authors = [...new Set(page.map((t) => t.authorId))].flatMap((id) => {
      const u = this.users.get(id);
      return u ? [u] : [];
    });
    const next = all[max];
    return {
      status: 200,
      body: {
        ...(data.length ? { data } : {}),
        ...(data.length && q.get('expansions')?.split(',').includes('author_id')
          ? { includes: { users: authors } }
          : {}),
        meta: {
          result_count: data.length,
          ...(data.length ? { newest_id: data[0]?.id, oldest_id: data.at(-1)?.id } : {}),
          ...(next ? { next_token: `next-${next.id}` } : {}),
        },
      },
    };
  }

  private createTweet(body: unknown): Reply {
    const b = (typeof body === 'object' && body !== null ? body : {}) as {
      text?: unknown;
      reply?: { in_reply_to_tweet_id?: unknown };
    };
    if (typeof b.text !== 'string' || b.text === '') return problem(400, 'text: a post needs text');
    if ([...b.text].length > 280) return problem(400, 'Your Tweet text is too long.');
    const replyTo = b.reply?.in_reply_to_tweet_id;
    if (replyTo !== undefined && !this.tweets.some((t) => t.id === replyTo))
      return problem(400, 'The post you are replying to does not exist.');
    if (this.posts().some((t) => t.text === b.text))
      return problem(403, 'You are not allowed to create a Tweet with duplicate content.');
    const t = this.post(this.account, b.text, typeof replyTo === 'string' ? replyTo : undefined);
    return { status: 201, body: { data: { id: t.id, text: t.text, edit_history_tweet_ids: [t.id] } } };
  }
}
