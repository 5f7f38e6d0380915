// Gmail, polled through the REST API with an OAuth refresh token (gmail.modify scope). One chat,
// `gmail:inbox`: every GMAIL_POLL_SECONDS the oldest mail matching GMAIL_QUERY is fetched, stored,
// and only then marked read (UNREAD removed), so a crash in between lists it again and the store,
// deduplicating by Gmail message id, answers it once. Email is untrusted: it wakes the agent only
// when its From is in GMAIL_WAKE_FROM and Gmail vouches for it (the account's own mail is in SENT,
// other mail passed DMARC in Gmail's Authentication-Results), and never when auto-submitted, so a
// reply to yourself cannot loop. A reply goes into its thread (In-Reply-To, References); anything
// else is a new email to the account itself. Every header we write has CR and LF taken out.
import path from 'node:path';
import { auth, gmail } from '@googleapis/gmail';
import { z } from 'zod';
import { ConfigError } from '../config.js';
import { type Channel, type ChannelContext, ChannelError, type ChannelFactory } from './channel.js';

const JID = 'gmail:inbox';
/** Messages fetched per poll (a full batch polls again at once), and ids listed to find the oldest. */
const BATCH = 20;
const MAX_IDS = 2000;
const MAX_TEXT = 8000;
const CREDENTIALS = ['GMAIL_CLIENT_ID', 'GMAIL_CLIENT_SECRET', 'GMAIL_REFRESH_TOKEN'] as const;
const ADDRESS = /^[^\s@<>()[\]\\,;:"]+@[^\s@<>()[\]\\,;:"]+$/;

interface Part {
  mimeType?: string | undefined;
  filename?: string | undefined;
  headers?: { name: string; value: string }[] | undefined;
  body?: { data?: string | undefined } | undefined;
  parts?: Part[] | undefined;
}
const Header = z.object({ name: z.string(), value: z.string() });
const PartSchema: z.ZodType<Part> = z.lazy(() =>
  z.object({
    mimeType: z.string().optional(),
    filename: z.string().optional(),
    headers: z.array(Header).optional(),
    body: z.object({ data: z.string().optional() }).optional(),
    parts: z.array(PartSchema).optional(),
  }),
);
const MessageSchema = z.object({
  id: z.string(),
  threadId: z.string(),
  labelIds: z.array(z.string()).default([]),
  internalDate: z.string().regex(/^\d+$/, 'internalDate is not a number').transform(Number),
  payload: PartSchema,
});
const ListSchema = z.object({
  messages: z.array(z.object({ id: z.string() })).default([]),
  nextPageToken: z.string().optional(),
});
const ThreadSchema = z.object({
  messages: z.array(z.object({ payload: z.object({ headers: z.array(Header).default([]) }) })).default([]),
});
const HttpError = z.object({
  response: z.object({
    status: z.number(),
    // gaxios's fetch Headers, not always the global class: checked by shape
    headers: z.custom<{ get(name: string): string | null }>((h) => typeof (h as Headers)?.get === 'function'),
    data: z.unknown(),
  }),
});

const header = (part: Part, name: string) =>
  part.headers?.find((h) => h.name.toLowerCase() === name.toLowerCase())?.value;
// biome-ignore lint/suspicious/noControlCharactersInRegex: CR and LF in a header value would start a new header
const oneLine = (v: string) => v.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
/** Vacation notices, mailer daemons and our own replies (RFC 3834): never answered. */
const isAuto = (part: Part) =>
  !/^\s*no\b/i.test(header(part, 'Auto-Submitted') ?? 'no') ||
  /^\s*(bulk|junk|list|auto_reply)\b/i.test(header(part, 'Precedence') ?? '');

function decode(bytes: Buffer, charset = 'utf-8'): string {
  try {
    return new TextDecoder(charset.split('*')[0]).decode(bytes);
  } catch {
    return new TextDecoder().decode(bytes); // a charset Node does not know: UTF-8 is the best guess
  }
}

/** Decodes RFC 2047 encoded-words (`=?UTF-8?B?…?=`); the blank between two of them goes. */
function decodeWords(value: string): string {
  return value
    .replace(/(\?=)\s+(?==\?)/g, '$1')
    .replace(/=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=/g, (_m, charset: string, kind: string, data: string) => {
      if (kind.toUpperCase() === 'B') return decode(Buffer.from(data, 'base64'), charset);
      const bytes = data
        .replace(/_/g, ' ')
        .replace(/=([0-9A-F]{2})/gi, (_h, x: string) => String.fromCharCode(+`0x${x}`));
      return decode(Buffer.from(bytes, 'latin1'), charset);
    });
}

/** `"Name" <a@b>` or `a@b` → the lowercased address and a display name; undefined if neither. */
function parseAddress(raw: string | undefined): { address: string; name: string } | undefined {
  const m = /^(.*)<([^<>]+)>\s*$/.exec(raw?.trim() ?? '');
  const address = (m?.[2] ?? raw ?? '').trim().toLowerCase();
  if (!ADDRESS.test(address)) return undefined;
  const name = oneLine(decodeWords((m?.[1] ?? '').trim().replace(/^"(.*)"$/, '$1')));
  return { address, name: name || address };
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ' };
function htmlToText(html: string): string {
  return html
    .replace(/<(script|style|head)\b[\s\S]*?<\/\1\s*>/gi, '')
    .replace(/<br\s*\/?>|<\/(p|div|li|tr|h[1-6])\s*>/gi, '\n')
    .replace(/<[^>]*>/g, '')
    .replace(
      /&(?:#x([0-9a-f]{1,6})|#(\d{1,7})|([a-z]+));/gi,
      (m, hex?: string, dec?: string, name?: string) => {
        const code = hex ? Number.parseInt(hex, 16) : Number(dec ?? Number.NaN);
        if (code <= 0x10ffff) return String.fromCodePoint(code);
        return ENTITIES[name?.toLowerCase() ?? ''] ?? m;
      },
    )
    .replace(/[ \t]+/g, ' ')
    .replace(/\s*\n\s*\n\s*/g, '\n\n')
    .trim();
}

/** The first text/plain and text/html bodies that are not attachments, decoded. */
function bodiesOf(part: Part, depth = 0): { plain?: string; html?: string } {
  const type = part.mimeType?.toLowerCase();
  const attached = !!part.filename || /^\s*attachment/i.test(header(part, 'Content-Disposition') ?? '');
  if (!attached && part.body?.data && (type === 'text/plain' || type === 'text/html')) {
    const charset = /charset="?([^";\s]+)/i.exec(header(part, 'Content-Type') ?? '')?.[1];
    const text = decode(Buffer.from(part.body.data, 'base64url'), charset);
    return type === 'text/plain' ? { plain: text } : { html: text };
  }
  const found: { plain?: string; html?: string } = {};
  for (const p of depth < 10 ? (part.parts ?? []) : []) {
    const f = bodiesOf(p, depth + 1);
    found.plain ??= f.plain;
    found.html ??= f.html;
  }
  return found;
}

/** Whether Gmail vouches for the From: the account's own mail is in SENT; other mail passed DMARC. */
function vouched(m: z.infer<typeof MessageSchema>, address: string, me: string): boolean {
  if (address === me) return m.labelIds.includes('SENT');
  // Gmail's verdict is the topmost Authentication-Results; any further down came with the mail.
  const verdict = (header(m.payload, 'Authentication-Results') ?? '').toLowerCase();
  const domain = address.slice(address.lastIndexOf('@') + 1);
  return (
    /^mx\.google\.com;/.test(verdict) &&
    verdict.includes('dmarc=pass') &&
    verdict.includes(`header.from=${domain}`)
  );
}

/** An RFC 822 message for messages.send (base64url): text/plain UTF-8, each header on one line. */
function compose(headers: Record<string, string>, body: string): string {
  const mime = {
    'MIME-Version': '1.0',
    'Content-Type': 'text/plain; charset=UTF-8',
    'Content-Transfer-Encoding': 'base64',
  };
  const lines = Object.entries({ ...headers, ...mime }).map(([k, v]) => {
    const value = oneLine(v).slice(0, 900);
    if (k !== 'Subject' || /^[\x20-\x7e]*$/.test(value)) return `${k}: ${value}`;
    // RFC 2047: encoded-words of at most 75 characters, on folded lines, never splitting a character.
    const words = [''];
    for (const ch of value.slice(0, 200)) {
      if (Buffer.byteLength(words[words.length - 1] + ch) > 45) words.push('');
      words[words.length - 1] += ch;
    }
    return `${k}: ${words.map((w) => `=?UTF-8?B?${Buffer.from(w).toString('base64')}?=`).join('\r\n ')}`;
  });
  const text = Buffer.from(body, 'utf8').toString('base64').replace(/.{76}/g, '$&\r\n');
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n${text}`).toString('base64url');
}

/** 429 and 5xx (and no answer at all) are worth another try; other statuses will fail again. */
function classify(err: unknown, what: string, now: number): ChannelError {
  if (err instanceof ChannelError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const http = HttpError.safeParse(err);
  if (!http.success) return new ChannelError(`${what}: ${message}`, undefined, false, { cause: err });
  const { status, headers, data } = http.data.response;
  const oauth = z.object({ error: z.string() }).safeParse(data).data?.error;
  const fix =
    oauth === 'invalid_grant'
      ? 'GMAIL_REFRESH_TOKEN was revoked or has expired: make a new one (the add-gmail skill says how) and restart'
      : oauth === 'invalid_client'
        ? 'GMAIL_CLIENT_ID or GMAIL_CLIENT_SECRET is wrong: copy both from the OAuth client in Google Cloud'
        : status === 403
          ? `HTTP 403 ${message}: enable the Gmail API and use a token with the gmail.modify scope`
          : `HTTP ${status} ${message}`;
  const retry = status === 429 || status >= 500;
  const after = retry ? (headers.get('retry-after') ?? '').trim() : '';
  const ms = /^\d+$/.test(after) ? Number(after) * 1000 : Date.parse(after) - now; // seconds or a date
  return new ChannelError(`${what}: ${fix}`, ms > 0 ? Math.min(ms, 3_600_000) : undefined, !retry, {
    cause: err,
  });
}

/** The channel when GMAIL_CLIENT_ID, GMAIL_CLIENT_SECRET and GMAIL_REFRESH_TOKEN are set. */
export const gmailChannel: ChannelFactory = (ctx) => {
  const vars = ctx.config.vars;
  if (CREDENTIALS.every((k) => vars[k] === undefined)) return undefined;
  const bad = (name: string, expected: string): never => {
    throw new ConfigError(`${name} must be ${expected} (got ${name}=${JSON.stringify(vars[name])})`);
  };
  const [clientId, clientSecret, refreshToken] = CREDENTIALS.map((k) => {
    const v = vars[k]?.trim();
    if (v) return v;
    throw new ConfigError(
      `${k} is ${vars[k] === undefined ? 'not set' : 'empty'}: put the OAuth client's id and secret and a refresh token in .env (the add-gmail skill says how), or remove the GMAIL_ lines`,
    );
  });
  const seconds = vars.GMAIL_POLL_SECONDS ?? '60';
  if (!/^\d+$/.test(seconds) || +seconds < 5 || +seconds > 3600) {
    bad('GMAIL_POLL_SECONDS', 'a whole number of seconds from 5 to 3600');
  }
  const wakeFrom = (vars.GMAIL_WAKE_FROM ?? '').split(',').flatMap((a) => a.trim().toLowerCase() || []);
  if (!wakeFrom.every((a) => ADDRESS.test(a)))
    bad('GMAIL_WAKE_FROM', 'a comma-separated list of email addresses');
  const url = (name: string, fallback: string) => {
    const v = vars[name] ?? fallback;
    return URL.canParse(v) && /^https?:$/.test(new URL(v).protocol) ? v : bad(name, 'an http(s) URL');
  };
  const client = new auth.OAuth2({
    clientId,
    clientSecret,
    // A 401 refreshes the token at once, so a revoked grant is told as such, not an hour later.
    forceRefreshOnFailure: true,
    endpoints: { oauth2TokenUrl: url('GMAIL_TOKEN_URL', 'https://oauth2.googleapis.com/token') },
  });
  client.setCredentials({ refresh_token: refreshToken });
  // No retries inside the client: the outbox retries a send, and the next tick a poll.
  const api = gmail({
    version: 'v1',
    auth: client,
    rootUrl: url('GMAIL_API_URL', 'https://gmail.googleapis.com/'),
    retry: false,
    timeout: 30_000,
  });
  const query = vars.GMAIL_QUERY?.trim() || 'is:unread in:inbox';
  return createGmailChannel(ctx, { api, pollMs: +seconds * 1000, query, wakeFrom });
};

function createGmailChannel(
  ctx: ChannelContext,
  o: { api: ReturnType<typeof gmail>; pollMs: number; query: string; wakeFrom: string[] },
): Channel {
  const { log, db } = ctx;
  const { api } = o;
  let me = '';
  let wake = new Set(o.wakeFrom);
  let accepting = false;
  let timer: NodeJS.Timeout | undefined;
  let problem: string | undefined;
  let toldUnregistered = false;
  /** Malformed messages: warned about once, and left unread for a person to look at. */
  const skipped = new Set<string>();

  async function oldestIds(): Promise<string[]> {
    const ids: string[] = [];
    let pageToken: string | undefined;
    do {
      const req = { userId: 'me', q: o.query, maxResults: 500, ...(pageToken ? { pageToken } : {}) };
      const page = ListSchema.parse((await api.users.messages.list(req)).data);
      ids.push(...page.messages.map((m) => m.id));
      pageToken = page.nextPageToken;
    } while (pageToken && ids.length < MAX_IDS);
    return ids.reverse().filter((id) => !skipped.has(id)); // Gmail lists newest first
  }

  async function fetchMessage(id: string) {
    const res = await api.users.messages.get({ userId: 'me', id, format: 'full' });
    const parsed = MessageSchema.safeParse(res.data);
    const from = parsed.success ? parseAddress(header(parsed.data.payload, 'From')) : undefined;
    if (!parsed.success || !from) {
      skipped.add(id);
      const why = parsed.success ? 'no usable From address' : parsed.error.issues[0]?.message;
      log.warn(`gmail: message ${id} skipped: ${why}`);
      return [];
    }
    const m = parsed.data;
    const auto = isAuto(m.payload);
    const subject = oneLine(decodeWords(header(m.payload, 'Subject') ?? '')) || '(no subject)';
    const { plain, html } = bodiesOf(m.payload);
    let body = (plain ?? (html === undefined ? '(no text)' : htmlToText(html))).trim();
    if (body.length > MAX_TEXT) {
      body = `${body.slice(0, MAX_TEXT)}\n[… ${body.length - MAX_TEXT} more characters not shown]`;
    }
    const who = from.name === from.address ? from.address : `${from.name} <${from.address}>`;
    return [
      {
        chatJid: JID,
        chatName: 'Gmail',
        platformId: m.id,
        sender: from.address,
        senderName: from.name,
        text: `From: ${who}\nSubject: ${subject}\n\n${body}`,
        at: m.internalDate,
        threadId: m.threadId,
        // Our own replies come back when we write to ourselves: stored as ours, never waking.
        fromMe: from.address === me && auto && m.labelIds.includes('SENT'),
        mayWake: wake.has(from.address) && !auto && vouched(m, from.address, me),
        mentionsMe: true,
      },
    ];
  }

  /** One poll; true when more mail waits than one batch took. */
  async function poll(): Promise<boolean> {
    if (!db.group(JID)) {
      if (!toldUnregistered)
        log.info(
          `gmail: ${JID} is not registered, so no mail is read: nanoclaw groups add ${JID} --name Email --no-trigger`,
        );
      toldUnregistered = true;
      return false;
    }
    const ids = await oldestIds();
    const batch = (await Promise.all(ids.slice(0, BATCH).map(fetchMessage))).flat();
    for (const m of batch.sort((a, b) => a.at - b.at)) {
      if (!accepting || !ctx.ingest(m).stored) return false; // not stored: leave it unread
      const change = { removeLabelIds: ['UNREAD'] };
      await api.users.messages.modify({ userId: 'me', id: m.platformId, requestBody: change });
    }
    return ids.length > BATCH;
  }

  async function tick(): Promise<void> {
    let more = false;
    try {
      more = await poll();
      if (problem) log.info('gmail: polling works again');
      problem = undefined;
    } catch (err) {
      const line = classify(err, 'polling', ctx.now()).message;
      if (line !== problem) log.error(`gmail: ${line}`); // once, not every tick
      problem = line;
    }
    if (!accepting) return;
    timer = setTimeout(() => void tick(), more ? 0 : o.pollMs);
    timer.unref();
  }

  /** To, Subject, In-Reply-To and References answering the newest message a person wrote in the thread. */
  async function replyHeaders(threadId: string): Promise<Record<string, string>> {
    const metadataHeaders = [
      'From',
      'Reply-To',
      'Subject',
      'Message-ID',
      'References',
      'Auto-Submitted',
      'Precedence',
    ];
    const res = await api.users.threads.get({
      userId: 'me',
      id: threadId,
      format: 'metadata',
      metadataHeaders,
    });
    const last = ThreadSchema.parse(res.data)
      .messages.filter((m) => !isAuto(m.payload))
      .at(-1)?.payload;
    const to = last && (parseAddress(header(last, 'Reply-To')) ?? parseAddress(header(last, 'From')));
    if (!last || !to) throw new ChannelError(`thread ${threadId} has no sender to answer`, undefined, true);
    const subject = oneLine(decodeWords(header(last, 'Subject') ?? ''));
    const id = /^<[^<>\s]+>$/.exec(header(last, 'Message-ID')?.trim() ?? '')?.[0];
    const refs = (header(last, 'References')?.match(/<[^<>\s]+>/g) ?? []).slice(-20);
    return {
      To: to.address,
      Subject: /^re:/i.test(subject) ? subject : `Re: ${subject}`,
      ...(id ? { 'In-Reply-To': id, References: [...refs, id].join(' ') } : {}),
      'Auto-Submitted': 'auto-replied',
    };
  }

  return {
    name: 'gmail',
    owns: (chatJid) => chatJid === JID,
    async start() {
      try {
        const profile = await api.users.getProfile({ userId: 'me' });
        me = z.object({ emailAddress: z.string() }).parse(profile.data).emailAddress.toLowerCase();
      } catch (err) {
        throw classify(err, 'could not check the Gmail credentials', ctx.now());
      }
      if (wake.size === 0) wake = new Set([me]);
      const who = [...wake].join(', ');
      log.info(
        `gmail: reading ${me} (${o.query}) every ${o.pollMs / 1000} s; mail from ${who} wakes the agent`,
      );
      accepting = true;
      void tick();
    },
    async stop() {
      accepting = false;
      clearTimeout(timer);
    },
    async close() {
      clearTimeout(timer);
    },
    async send(msg) {
      const file = msg.file
        ? `\n\n[${path.basename(msg.file)} is not attached: Gmail here sends text only]`
        : '';
      const body = `${msg.sender ? `${msg.sender}:\n` : ''}${msg.text}${file}`;
      try {
        const headers = msg.threadId
          ? await replyHeaders(msg.threadId)
          : {
              To: me,
              Subject: msg.text.trim().split('\n')[0]?.slice(0, 60) || 'NanoClaw',
              'Auto-Submitted': 'auto-generated',
            };
        const requestBody = {
          raw: compose(headers, body),
          ...(msg.threadId ? { threadId: msg.threadId } : {}),
        };
        const res = await api.users.messages.send({ userId: 'me', requestBody });
        return { platformId: z.object({ id: z.string() }).parse(res.data).id };
      } catch (err) {
        throw classify(err, 'send', ctx.now());
      }
    },
    setWorking() {}, // email has no typing indicator
  };
}
