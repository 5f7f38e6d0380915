/**
 * A fake Telegram Bot API on 127.0.0.1 for tests that run the real grammY client against it with
 * `client: { apiRoot: fake.url }` (TELEGRAM_API_URL). One node:http server serving one bot.
 *
 * The subset grammY speaks, as Telegram answers it:
 * - `POST /bot<token>/<method>` with a JSON body, or `multipart/form-data` as grammY writes it (every
 *   field a text part, objects as JSON text, a file part named by the `attach://<id>` its field holds;
 *   the file name unquoted). The answer is `{ok: true, result}`, or `{ok: false, error_code,
 *   description, parameters?}` with that HTTP status. Another token → 401 "Unauthorized"; an unknown
 *   method → 404 "Not Found", recorded in `unhandled`.
 * - getMe → the bot; deleteWebhook → true.
 * - getUpdates `{offset, limit, timeout}`: updates whose id is below `offset` are confirmed and gone for
 *   good; then the oldest `limit` (default 100) of the rest. With none and `timeout` > 0 the request is
 *   held until an update arrives, the timeout passes or the client goes away.
 * - sendMessage `{chat_id, text, entities?, reply_parameters?, message_thread_id?}`: the chat must exist
 *   (400 "chat not found"), the text 1–4096 UTF-16 units ("message text is empty", "message is too
 *   long"), the replied-to message must exist unless `allow_sending_without_reply`, and in a forum the
 *   topic must exist ("message thread not found"). Returns the Message, kept in the chat's history.
 *   sendDocument likewise with the uploaded file (and an optional caption); sendChatAction → true.
 * - Message ids count per chat and update ids globally, as Telegram's do; chats' ids are negative
 *   for groups (-100… for supergroups) and the user's id for a private chat.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Chat, Message, MessageEntity, Update, User, UserFromGetMe } from 'grammy/types';

export interface RecordedRequest {
  /** Order of arrival, shared with `actions` so tests can tell what came first. */
  seq: number;
  method: string;
  params: Record<string, unknown>;
  /** The uploaded file of a multipart request. */
  file?: { name: string; data: Buffer };
  /** The HTTP status answered (held getUpdates: 200 once answered). */
  status: number;
}

export interface FailRule {
  method: string;
  /** Only calls for this chat. */
  chatId?: number;
  status: number;
  /** Default: Telegram's wording for the status. */
  description?: string;
  /** Seconds, for a 429: `parameters.retry_after`. */
  retryAfter?: number;
  /** Matching calls let through before the failures start; default 0. */
  skip?: number;
  /** How many matching calls fail; default 1 (Infinity: all). */
  times?: number;
}

export interface SayOptions {
  /** The message this one replies to. */
  replyTo?: Message;
  /** A forum topic (from `addTopic`). */
  topic?: number;
  /** Sent as a photo's caption instead of as text. */
  caption?: boolean;
  entities?: MessageEntity[];
}

type Params = Record<string, unknown>;
type Upload = { name: string; data: Buffer };
type ChatState = { chat: Chat; history: Message[]; nextId: number; topics: Set<number>; forum: boolean };
type Poller = { limit: number; res: ServerResponse; timer: NodeJS.Timeout };

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly description: string,
    readonly parameters?: Record<string, unknown>,
  ) {
    super(description);
  }
}

const DESCRIPTIONS: Record<number, string> = {
  400: 'Bad Request: chat not found',
  403: 'Forbidden: bot was blocked by the user',
  429: 'Too Many Requests: retry after 1',
  500: 'Internal Server Error',
};

const now = () => Math.floor(Date.now() / 1000);
const num = (v: unknown): number | undefined => {
  const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
  return typeof n === 'number' && Number.isFinite(n) ? n : undefined;
};
const obj = (v: unknown): Params => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Params) : {});

export class FakeTelegram {
  readonly url: string;
  readonly bot: UserFromGetMe;
  readonly requests: RecordedRequest[] = [];
  /** `<method>` of every request for a method this fake does not know. */
  readonly unhandled: string[] = [];
  /** Chat actions the bot sent, in order. */
  readonly actions: Array<{ seq: number; chatId: number; action: string; topic?: number }> = [];

  private seq = 0;
  private nextUserId = 5000;
  private nextChatId = 1;
  private nextUpdateId = 700_000;
  private readonly chats = new Map<number, ChatState>();
  private readonly pending: Update[] = [];
  /** Every update ever queued, by id (for `redeliver`). */
  private readonly updates = new Map<number, Update>();
  private readonly pollers = new Set<Poller>();
  private readonly rules: Array<FailRule & { skipped: number; left: number }> = [];
  private readonly waiters = new Set<{ pred: (m: Message) => boolean; done: (m?: Message) => void }>();
  private stopped = false;

  private constructor(
    private readonly server: Server,
    port: number,
    readonly token: string,
    username: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
    this.bot = {
      id: Number(token.split(':')[0]),
      is_bot: true,
      first_name: username.replace(/_bot$/i, ''),
      username,
      can_join_groups: true,
      can_read_all_group_messages: false,
      supports_inline_queries: false,
      can_connect_to_business: false,
      has_main_web_app: false,
      has_topics_enabled: false,
      allows_users_to_create_topics: false,
      can_manage_bots: false,
      supports_join_request_queries: false,
    };
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) this.answer(res, 500, { ok: false, error_code: 500, description: String(err) });
      });
    });
  }

  /** Starts the fake for the bot with `token` (`<bot id>:<secret>`) and `username`. */
  static async start(opts: { token?: string; username?: string } = {}): Promise<FakeTelegram> {
    const token = opts.token ?? '4242424242:fake-secret';
    if (!/^\d+:[\w-]+$/.test(token))
      throw new TypeError(`FakeTelegram.start: token must be <digits>:<secret>, got ${token}`);
    const server = createServer();
    await new Promise<void>((resolve, fail) => {
      server.once('error', fail);
      server.listen(0, '127.0.0.1', resolve);
    });
    return new FakeTelegram(
      server,
      (server.address() as AddressInfo).port,
      token,
      opts.username ?? 'krabby_bot',
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const p of this.pollers) this.answerPoll(p);
    for (const w of this.waiters) w.done();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  // ---- the world ----

  addUser(firstName: string, opts: { lastName?: string; isBot?: boolean } = {}): User {
    return {
      id: this.nextUserId++,
      is_bot: opts.isBot ?? false,
      first_name: firstName,
      ...(opts.lastName ? { last_name: opts.lastName } : {}),
      username: firstName.toLowerCase(),
    };
  }

  /** A group (a supergroup with `supergroup` or `forum`) the bot is a member of. */
  addGroup(title: string, opts: { supergroup?: boolean; forum?: boolean } = {}): Chat {
    const n = this.nextChatId++;
    const chat: Chat =
      opts.supergroup || opts.forum
        ? {
            id: -(1_000_000_000_000 + n),
            type: 'supergroup',
            title,
            ...(opts.forum ? { is_forum: true } : {}),
          }
        : { id: -(4_000_000 + n), type: 'group', title };
    this.chats.set(chat.id, { chat, history: [], nextId: 1, topics: new Set(), forum: !!opts.forum });
    return chat;
  }

  /** The private chat between `user` and the bot. */
  addPrivate(user: User): Chat {
    const chat: Chat = { id: user.id, type: 'private', first_name: user.first_name };
    this.chats.set(chat.id, { chat, history: [], nextId: 1, topics: new Set(), forum: false });
    return chat;
  }

  /** A forum topic created by `by`; returns its thread id (the id of the creation message). */
  addTopic(chat: Chat, name: string, by: User): number {
    const state = this.state(chat.id);
    const m = {
      message_id: state.nextId++,
      date: now(),
      chat: state.chat,
      from: by,
      forum_topic_created: { name, icon_color: 0x6fb9f0 },
    } as Message;
    state.history.push(m);
    state.topics.add(m.message_id);
    return m.message_id;
  }

  /** `from` writes `text` in `chat`: the message is stored and an update waits for the bot. */
  say(chat: Chat, from: User, text: string, opts: SayOptions = {}): Message {
    const state = this.state(chat.id);
    const topic = opts.topic;
    if (topic !== undefined && !state.topics.has(topic)) throw new Error(`no topic ${topic} in ${chat.id}`);
    const topicStart = topic === undefined ? undefined : state.history.find((m) => m.message_id === topic);
    const replyTo = opts.replyTo ?? topicStart;
    const m = {
      message_id: state.nextId++,
      date: now(),
      chat: state.chat,
      from,
      ...(opts.caption
        ? { photo: [{ file_id: 'photo-1', file_unique_id: 'p1', width: 90, height: 90 }], caption: text }
        : { text }),
      ...(opts.entities ? { [opts.caption ? 'caption_entities' : 'entities']: opts.entities } : {}),
      ...(topic !== undefined ? { message_thread_id: topic, is_topic_message: true } : {}),
      ...(replyTo ? { reply_to_message: replyTo } : {}),
    } as Message;
    state.history.push(m);
    this.enqueue({ update_id: this.nextUpdateId++, message: m } as Update);
    return m;
  }

  /** Serves an update the bot already confirmed again, as after a crash before the confirmation. */
  redeliver(message: Message): void {
    const update = [...this.updates.values()].find(
      (u) => u.message?.chat.id === message.chat.id && u.message.message_id === message.message_id,
    );
    if (!update) throw new Error(`message ${message.message_id} was never delivered`);
    if (this.pending.includes(update)) return;
    this.pending.push(update);
    this.pending.sort((a, b) => a.update_id - b.update_id);
    this.wake();
  }

  /** Whether the bot confirmed (polled past) the update that carried `message`. */
  confirmed(message: Message): boolean {
    const u = [...this.updates.values()].find(
      (x) => x.message?.chat.id === message.chat.id && x.message.message_id === message.message_id,
    );
    return u !== undefined && !this.pending.includes(u);
  }

  /** What the bot posted in `chatId` (messages and documents), oldest first. */
  sent(chatId: number): Message[] {
    return (this.chats.get(chatId)?.history ?? []).filter((m) => m.from?.id === this.bot.id);
  }

  /** The first message the bot posted (already, or within `ms`) that matches `pred`. */
  waitSent(pred: (m: Message) => boolean, ms = 30_000): Promise<Message> {
    const hit = [...this.chats.values()]
      .flatMap((c) => c.history)
      .find((m) => m.from?.id === this.bot.id && pred(m));
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve, fail) => {
      const waiter = {
        pred,
        done: (m?: Message) => {
          clearTimeout(timer);
          this.waiters.delete(waiter);
          if (m) resolve(m);
          else fail(new Error(`waitSent: nothing matching within ${ms} ms`));
        },
      };
      const timer = setTimeout(() => waiter.done(), ms).unref();
      this.waiters.add(waiter);
    });
  }

  /** Makes the next matching calls fail with `status` (see FailRule). */
  fail(rule: FailRule): void {
    this.rules.push({ ...rule, skipped: 0, left: rule.times ?? 1 });
  }

  // ---- the protocol ----

  private state(chatId: number): ChatState {
    const s = this.chats.get(chatId);
    if (!s) throw new Error(`fake telegram: no chat ${chatId}`);
    return s;
  }

  private enqueue(update: Update): void {
    this.updates.set(update.update_id, update);
    this.pending.push(update);
    this.wake();
  }

  private wake(): void {
    if (this.pending.length === 0) return;
    for (const p of this.pollers) this.answerPoll(p);
  }

  private answerPoll(p: Poller): void {
    clearTimeout(p.timer);
    this.pollers.delete(p);
    this.answer(p.res, 200, { ok: true, result: this.pending.slice(0, p.limit) });
  }

  private answer(res: ServerResponse, status: number, body: unknown): void {
    if (res.writableEnded || res.destroyed) return;
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const match = /^\/bot([^/]+)\/([A-Za-z]+)$/.exec(new URL(req.url ?? '/', this.url).pathname);
    const record: RecordedRequest = { seq: ++this.seq, method: match?.[2] ?? '', params: {}, status: 200 };
    this.requests.push(record);
    const fail = (status: number, description: string, parameters?: Record<string, unknown>) => {
      record.status = status;
      this.answer(res, status, {
        ok: false,
        error_code: status,
        description,
        ...(parameters ? { parameters } : {}),
      });
    };
    if (!match) return fail(404, 'Not Found');
    if (match[1] !== this.token) return fail(401, 'Unauthorized');
    const { params, file } = parseBody(req.headers['content-type'] ?? '', Buffer.concat(chunks));
    record.params = params;
    if (file) record.file = file;
    const rule = this.rules.find(
      (r) =>
        r.method === record.method &&
        (r.chatId === undefined || r.chatId === num(params.chat_id)) &&
        r.left > 0,
    );
    if (rule && rule.skipped++ >= (rule.skip ?? 0)) {
      rule.left--;
      const parameters = rule.retryAfter !== undefined ? { retry_after: rule.retryAfter } : undefined;
      const description =
        rule.description ??
        (rule.status === 429
          ? `Too Many Requests: retry after ${rule.retryAfter ?? 1}`
          : DESCRIPTIONS[rule.status]);
      return fail(rule.status, description ?? 'Error', parameters);
    }
    try {
      if (record.method === 'getUpdates') return this.getUpdates(params, res);
      const result = this.call(record, file);
      if (result === undefined) {
        this.unhandled.push(record.method);
        return fail(404, 'Not Found');
      }
      this.answer(res, 200, { ok: true, result });
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      fail(err.status, err.description, err.parameters);
    }
  }

  private getUpdates(p: Params, res: ServerResponse): void {
    const offset = num(p.offset) ?? 0;
    // Telegram forgets an update once a later getUpdates asks for an offset past it.
    if (offset > 0) {
      const keep = this.pending.filter((u) => u.update_id >= offset);
      this.pending.splice(0, this.pending.length, ...keep);
    }
    const poller: Poller = {
      limit: Math.min(100, Math.max(1, num(p.limit) ?? 100)),
      res,
      timer: setTimeout(() => this.answerPoll(poller), Math.max(0, num(p.timeout) ?? 0) * 1000),
    };
    if (this.pending.length > 0 || !(num(p.timeout) ?? 0) || this.stopped) {
      this.answerPoll(poller);
      return;
    }
    this.pollers.add(poller);
    res.on('close', () => {
      clearTimeout(poller.timer);
      this.pollers.delete(poller);
    });
  }

  /** One method; undefined when this fake does not know it. */
  private call(record: RecordedRequest, file: Upload | undefined): unknown {
    const p = record.params;
    switch (record.method) {
      case 'getMe':
        return this.bot;
      case 'deleteWebhook':
        return true;
      case 'sendChatAction': {
        const state = this.chatOf(p);
        this.actions.push({
          seq: record.seq,
          chatId: state.chat.id,
          action: String(p.action),
          ...(num(p.message_thread_id) !== undefined ? { topic: num(p.message_thread_id) } : {}),
        });
        return true;
      }
      case 'sendMessage': {
        const text = typeof p.text === 'string' ? p.text : '';
        if (text.trim() === '') throw new ApiError(400, 'Bad Request: message text is empty');
        if (text.length > 4096) throw new ApiError(400, 'Bad Request: message is too long');
        return this.post(this.chatOf(p), p, {
          text,
          ...(Array.isArray(p.entities) ? { entities: p.entities } : {}),
        });
      }
      case 'sendDocument': {
        if (!file) throw new ApiError(400, 'Bad Request: there is no document in the request');
        const caption = typeof p.caption === 'string' ? p.caption : undefined;
        if (caption && caption.length > 1024)
          throw new ApiError(400, 'Bad Request: message caption is too long');
        return this.post(this.chatOf(p), p, {
          document: {
            file_id: `doc-${record.seq}`,
            file_unique_id: `d${record.seq}`,
            file_name: file.name,
            file_size: file.data.length,
          },
          ...(caption ? { caption } : {}),
        });
      }
      default:
        return undefined;
    }
  }

  private chatOf(p: Params): ChatState {
    const id = num(p.chat_id);
    const state = id === undefined ? undefined : this.chats.get(id);
    if (!state) throw new ApiError(400, 'Bad Request: chat not found');
    return state;
  }

  /** Stores a message from the bot (reply and topic checked as Telegram does) and returns it. */
  private post(state: ChatState, p: Params, content: Record<string, unknown>): Message {
    const reply = obj(p.reply_parameters);
    const replyId = num(reply.message_id);
    const replied = replyId === undefined ? undefined : state.history.find((m) => m.message_id === replyId);
    if (replyId !== undefined && !replied && reply.allow_sending_without_reply !== true) {
      throw new ApiError(400, 'Bad Request: message to be replied not found');
    }
    const topic = num(p.message_thread_id);
    if (topic !== undefined && state.forum && !state.topics.has(topic)) {
      throw new ApiError(400, 'Bad Request: message thread not found');
    }
    const m = {
      message_id: state.nextId++,
      date: now(),
      chat: state.chat,
      from: this.bot,
      ...content,
      ...(topic !== undefined && state.forum ? { message_thread_id: topic, is_topic_message: true } : {}),
      ...(replied ? { reply_to_message: replied } : {}),
    } as Message;
    state.history.push(m);
    for (const w of this.waiters) if (w.pred(m)) w.done(m);
    return m;
  }
}

/** A JSON body, or grammY's multipart/form-data: text fields (objects as JSON) and one file. */
function parseBody(contentType: string, raw: Buffer): { params: Params; file?: Upload } {
  if (raw.length === 0) return { params: {} };
  if (contentType.startsWith('application/json')) return { params: obj(JSON.parse(raw.toString('utf8'))) };
  const boundary = /boundary=([^;]+)/.exec(contentType)?.[1];
  if (!contentType.startsWith('multipart/form-data') || !boundary) return { params: {} };
  const params: Params = {};
  const files = new Map<string, Upload>();
  // latin1 keeps every byte as one character, so file bytes survive the split.
  for (let part of raw.toString('latin1').split(`--${boundary}`)) {
    part = part.replace(/^\r\n/, '').replace(/\r\n$/, '');
    if (part === '' || part === '--' || part === '--\r\n') continue;
    const end = part.indexOf('\r\n\r\n');
    if (end < 0) continue;
    const head = part.slice(0, end);
    const body = Buffer.from(part.slice(end + 4), 'latin1');
    const name = /name="([^"]*)"/i.exec(head)?.[1] ?? '';
    const filename = /filename="?([^";\r\n]*)"?/i.exec(head)?.[1];
    if (filename !== undefined) {
      files.set(name, { name: filename, data: body });
      continue;
    }
    const text = body.toString('utf8');
    params[name] = /^[[{]/.test(text) ? JSON.parse(text) : text;
  }
  // A field holding `attach://<id>` names the part that carries its file.
  const ref = Object.values(params).find(
    (v): v is string => typeof v === 'string' && v.startsWith('attach://'),
  );
  const file = ref ? files.get(ref.slice('attach://'.length)) : undefined;
  return file ? { params, file } : { params };
}
