// X (formerly Twitter) through its API v2 with OAuth 1.0a user context (twitter-api-v2). One chat,
// `x:timeline`: the account's mentions are polled every X_POLL_SECONDS (X's read limits are tight
// and it pushes nothing at these tiers) and stored oldest first. Anyone on X can mention the account,
// so only X_WAKE_USERS wake the agent; the rest is context. A reply answers the mention it
// references; a message without one (main's send_message) is a new post; over 280 characters it
// becomes a thread, each part replying to the one before.
// Polling goes on after the newest tweet id stored for the chat, so a restart neither re-reads nor
// loses mentions; before any is stored it starts at the chat's registration (no old backlog).
// X has no idempotency key for posts: the parts of a thread already posted are remembered (in
// memory), so a retried send goes on after them. After a crash mid-thread (or a post whose answer
// was lost) the row is sent again from its first part, which X refuses as duplicate content (403):
// the row fails and is logged, and nothing is posted twice.
import http from 'node:http';
import { ApiResponseError, TwitterApi, TwitterApiv2 } from 'twitter-api-v2';
import { z } from 'zod';
import { ConfigError } from '../config.js';
import { splitMessage } from '../router.js';
import { type Channel, type ChannelContext, ChannelError, type ChannelFactory } from './channel.js';

const CHAT = 'x:timeline';
const CREDENTIALS = ['X_API_KEY', 'X_API_SECRET', 'X_ACCESS_TOKEN', 'X_ACCESS_SECRET'] as const;
const TWEET_ID = /^\d{1,20}$/;
const REQUEST_TIMEOUT_MS = 30_000;
/** X keeps the newest 800 mentions: 8 pages of 100. */
const MAX_PAGES = 8;
/**
 * X weighs CJK, emoji and most symbols 2 (U+1100 on, but some punctuation): such text is split
 * at 140. (X counts every link as 23 characters; only links shorter than that could overflow.)
 */
const HEAVY = /[\u{1100}-\u{1FFF}\u{200E}\u{200F}\u{2020}-\u{2031}\u{2038}-\u{10FFFF}]/u;

export interface XSettings {
  credentials: { appKey: string; appSecret: string; accessToken: string; accessSecret: string };
  apiUrl: string;
  pollMs: number;
  /** Lowercase usernames whose mentions wake the agent; '*' is anyone. */
  wake: ReadonlySet<string>;
}

/** Parses the X_* variables: undefined when none of the credentials is set. Throws ConfigError. */
export function xSettings(vars: Readonly<Record<string, string>>): XSettings | undefined {
  if (CREDENTIALS.every((k) => vars[k] === undefined)) return undefined;
  const missing = CREDENTIALS.find((k) => !vars[k]?.trim());
  if (missing) {
    throw new ConfigError(
      `${missing} is ${vars[missing] === undefined ? 'not set' : 'set but empty'}: X needs all of ${CREDENTIALS.join(', ')} (the app's Keys and tokens page in the X developer portal)`,
    );
  }
  const value = (k: (typeof CREDENTIALS)[number]) => vars[k]?.trim() ?? '';
  const poll = vars.X_POLL_SECONDS ?? '300';
  if (!/^\d+$/.test(poll) || Number(poll) < 5 || Number(poll) > 86_400) {
    throw new ConfigError(
      `X_POLL_SECONDS must be a whole number between 5 and 86400 (got X_POLL_SECONDS=${JSON.stringify(poll)})`,
    );
  }
  const apiUrl = vars.X_API_URL ?? 'https://api.x.com';
  // twitter-api-v2 sends JSON only to paths that start with /2/, so the base must be a bare origin.
  if (!URL.canParse(apiUrl) || !/^https?:\/\/[^/?#]+\/?$/.test(apiUrl)) {
    throw new ConfigError(
      `X_API_URL must be an http(s) origin like https://api.x.com, without a path (got X_API_URL=${JSON.stringify(apiUrl)})`,
    );
  }
  const wake = (vars.X_WAKE_USERS ?? '')
    .split(',')
    .map((u) => u.trim().replace(/^@/, '').toLowerCase())
    .filter(Boolean);
  const bad = wake.find((u) => u !== '*' && !/^[a-z0-9_]{1,15}$/.test(u));
  if (bad !== undefined) {
    throw new ConfigError(`X_WAKE_USERS must be X usernames separated by commas, or * (got "${bad}")`);
  }
  return {
    credentials: {
      appKey: value('X_API_KEY'),
      appSecret: value('X_API_SECRET'),
      accessToken: value('X_ACCESS_TOKEN'),
      accessSecret: value('X_ACCESS_SECRET'),
    },
    apiUrl: apiUrl.replace(/\/$/, ''),
    pollMs: Number(poll) * 1000,
    wake: new Set(wake),
  };
}

export const xChannel: ChannelFactory = (ctx) => {
  const settings = xSettings(ctx.config.vars);
  return settings && createXChannel(settings, ctx);
};

/** The v2 client against X_API_URL: the library's prefix is protected (and cloneWithPrefix throws). */
class XApi extends TwitterApiv2 {
  constructor(client: TwitterApi, apiUrl: string) {
    super(client);
    this.setPrefix(`${apiUrl}/2/`);
  }
}

// What X sends is untrusted: every field the channel uses is checked here.
const User = z.object({ id: z.string().regex(TWEET_ID), username: z.string().regex(/^\w{1,50}$/) });
const Tweet = z.object({
  id: z.string().regex(TWEET_ID),
  text: z.string().max(100_000),
  author_id: z.string().regex(TWEET_ID),
  created_at: z.string().max(40).optional(),
});
const Page = z.object({
  data: z.array(z.unknown()).optional(),
  includes: z.object({ users: z.array(z.unknown()).optional() }).optional(),
});
const Posted = z.object({ data: z.object({ id: z.string().regex(TWEET_ID) }) });
const Problem = z.object({
  detail: z.string().optional(),
  title: z.string().optional(),
  errors: z.array(z.object({ message: z.string().optional() })).optional(),
});

export function createXChannel(settings: XSettings, ctx: ChannelContext): Channel {
  const { db, log } = ctx;
  const client = new TwitterApi(settings.credentials, {
    // The library always calls https.request, which takes http: only with an http agent (tests' fake X).
    ...(settings.apiUrl.startsWith('http:') ? { httpAgent: new http.Agent() } : {}),
    // twitter-api-v2 sets no timeout of its own: a hung request would stall polling for good.
    plugins: [
      {
        onBeforeRequestConfig: ({ params }) => {
          params.timeout ??= REQUEST_TIMEOUT_MS;
        },
      },
    ],
  });
  const v2 = new XApi(client, settings.apiUrl);
  /** Thread parts already posted, per outbox row, so a retry goes on after them. */
  const posted = new Map<number, string[]>();
  let me: z.infer<typeof User> | undefined;
  let since: string | undefined;
  let timer: NodeJS.Timeout | undefined;
  let polling = false;

  async function whoAmI(): Promise<z.infer<typeof User>> {
    const user = User.safeParse((await v2.me()).data);
    if (!user.success) throw new ChannelError('X answered users/me without a valid user');
    return user.data;
  }

  async function poll(): Promise<void> {
    const group = db.group(CHAT);
    if (!group) return; // not registered: reads are scarce, and nothing would be stored
    me ??= await whoAmI();
    since ??= db.lastPlatformId(CHAT); // the newest mention stored (a task's prompt is skipped)
    const page = await v2.userMentionTimeline(me.id, {
      ...(since
        ? { since_id: since }
        : { start_time: `${new Date(group.createdAt).toISOString().slice(0, 19)}Z` }),
      max_results: 100,
      expansions: ['author_id'],
      'tweet.fields': ['author_id', 'created_at'],
      'user.fields': ['username', 'name'],
    });
    for (let n = 1; n < MAX_PAGES && !page.done; n++) await page.fetchNext(100);
    const body = Page.parse(page.data);
    const users = new Map(
      (body.includes?.users ?? []).flatMap((u) => {
        const r = User.safeParse(u);
        return r.success ? [[r.data.id, r.data.username] as const] : [];
      }),
    );
    const tweets = (body.data ?? []).flatMap((t) => {
      const r = Tweet.safeParse(t);
      if (!r.success) log.warn(`x: a mention X sent is malformed, skipped: ${r.error.issues[0]?.message}`);
      return r.success ? [r.data] : [];
    });
    tweets.sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1)); // X sends newest first
    for (const t of tweets) {
      const username = users.get(t.author_id);
      const fromMe = t.author_id === me.id;
      const wakes =
        settings.wake.has('*') || (username !== undefined && settings.wake.has(username.toLowerCase()));
      const at = Date.parse(t.created_at ?? '');
      const r = ctx.ingest({
        chatJid: CHAT,
        chatName: 'X',
        platformId: t.id,
        sender: `x:${t.author_id}`,
        senderName: username ? `@${username}` : t.author_id,
        text: fromHtml(t.text),
        at: Number.isFinite(at) ? at : ctx.now(),
        fromMe,
        mayWake: wakes && !fromMe,
        mentionsMe: true,
      });
      if (!r.stored) return; // shutting down, or unregistered meanwhile: read again next time
      since = t.id;
    }
  }

  async function tick(): Promise<void> {
    let waitMs = settings.pollMs;
    try {
      await poll();
    } catch (err) {
      waitMs = Math.max(waitMs, resetInMs(err, ctx.now()) ?? 0);
      log.warn(`x: reading mentions failed: ${detail(err)}; next try in ${Math.ceil(waitMs / 1000)} s`);
    }
    if (!polling) return;
    timer = setTimeout(() => void tick(), waitMs);
    timer.unref();
  }

  function stop(): Promise<void> {
    polling = false;
    clearTimeout(timer);
    return Promise.resolve();
  }

  return {
    name: 'x',
    owns: (chatJid) => chatJid === CHAT,
    async start() {
      try {
        me = await whoAmI();
        log.info(`x: signed in as @${me.username}`);
      } catch (err) {
        if (err instanceof ApiResponseError && (err.code === 401 || err.code === 403)) {
          throw new ChannelError(
            `X rejected the credentials (${detail(err)}): check X_API_KEY, X_API_SECRET, X_ACCESS_TOKEN and X_ACCESS_SECRET in .env`,
            undefined,
            true,
            { cause: err },
          );
        }
        // X unreachable is no reason to stop the other channels: polling asks again.
        log.warn(`x: cannot reach X (${detail(err)}); trying again every ${settings.pollMs / 1000} s`);
      }
      polling = true;
      void tick();
    },
    stop,
    close: stop,
    setWorking() {}, // X has no typing indicator
    async send(msg) {
      if (msg.file) log.warn(`x: outbox ${msg.outboxId}: files are not posted to X, only the text`);
      const text = msg.sender ? `${msg.sender}: ${msg.text}` : msg.text;
      const parts = splitMessage(text, HEAVY.test(text) ? 140 : 280);
      const done = posted.get(msg.outboxId) ?? [];
      let previous = done.at(-1) ?? msg.replyTo;
      for (const part of parts.slice(done.length)) {
        let res: unknown;
        try {
          res = await v2.tweet({
            text: part,
            ...(previous ? { reply: { in_reply_to_tweet_id: previous } } : {}),
          });
        } catch (err) {
          const e = classify(err, `post to X (part ${done.length + 1} of ${parts.length})`, ctx.now());
          if (e.permanent) posted.delete(msg.outboxId);
          throw e;
        }
        const sent = Posted.safeParse(res);
        // Without an id the post may well be up: not tried again, so never posted twice.
        if (!sent.success) throw new ChannelError("post to X: X's answer has no post id", undefined, true);
        done.push(sent.data.data.id);
        posted.set(msg.outboxId, done);
        previous = sent.data.data.id;
      }
      posted.delete(msg.outboxId);
      return done.length > 0 ? { platformId: done.at(-1) } : {};
    },
  };
}

/** Until X's limit resets, after a 429: the used-up limit's reset (posting has 24-hour ones too). */
function resetInMs(err: unknown, now: number): number | undefined {
  if (!(err instanceof ApiResponseError) || err.code !== 429 || !err.rateLimit) return undefined;
  const limits = [err.rateLimit, err.rateLimit.day, err.rateLimit.userDay].filter((l) => l !== undefined);
  const spent = limits.filter((l) => l.remaining === 0);
  const reset = Math.max(...(spent.length > 0 ? spent : limits).map((l) => l.reset));
  return Number.isFinite(reset) ? Math.max(1000, reset * 1000 - now) : undefined;
}

/** 429 waits for the reset; other 4xx (401/403: duplicate, suspended, no write access) fail for good. */
function classify(err: unknown, what: string, now: number): ChannelError {
  if (err instanceof ApiResponseError) {
    const permanent = err.code >= 400 && err.code < 500 && err.code !== 429;
    const line = `${what}: X answered ${err.code}: ${detail(err)}`;
    return new ChannelError(line, resetInMs(err, now), permanent, { cause: err });
  }
  return new ChannelError(`${what}: ${detail(err)}`, undefined, false, { cause: err }); // network: retry
}

/** X sends text with &, < and > escaped as HTML entities. */
function fromHtml(text: string): string {
  return text.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

/** X's own one-line reason (`detail` of its problem JSON), else the error's message. */
function detail(err: unknown): string {
  const problem = err instanceof ApiResponseError ? Problem.safeParse(err.data) : undefined;
  const p = problem?.success ? problem.data : undefined;
  const text =
    p?.detail ?? p?.errors?.[0]?.message ?? p?.title ?? (err instanceof Error ? err.message : String(err));
  return text.replace(/\s+/g, ' ').trim().slice(0, 300);
}
