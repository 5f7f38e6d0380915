/**
 * A fake Discord (REST + gateway) on 127.0.0.1 for tests that run the real discord.js Client against it
 * with `rest: { api: fake.api }`: one node:http server, the gateway a `ws` server on the same port.
 * Facts and pitfalls: shared/research/discord-fake.md.
 *
 * REST under `/api/v10`: JSON with `Content-Type: application/json`, errors `{code, message}`.
 * - `Authorization: Bot <token>` everywhere but `/webhooks/:id/:token`; else 401 (on `GET /gateway/bot`
 *   that makes `login()` reject with TokenInvalid).
 * - `GET /channels/:id/messages` is newest first like Discord; with `after` it holds the `limit` messages
 *   right after that id (the oldest of them), still newest first; with `before` or nothing, the newest.
 * - `POST /channels/:id/messages`, JSON or multipart (`payload_json` + `files[n]`): content over 2000
 *   UTF-16 units → 400/50035, nothing to post → 400/50006. With `enforce_nonce: true`, a nonce the same
 *   author already used in the channel answers the existing message (200) and creates nothing.
 * - Webhooks need MANAGE_WEBHOOKS (403/50013); in a DM 403/50003 "Cannot execute action on a DM
 *   channel" (discord.js's DMChannel has no webhook methods, so only raw REST gets there); on a thread
 *   400/50024. Webhook posts carry `webhook_id`, `author.bot: true` and the requested username.
 * - Every created message is echoed as MESSAGE_CREATE, as Discord does. Unknown routes: 404 + `unhandled`.
 * - Attachment bytes (injected or uploaded) are served by this server at each attachment's `url`.
 * - The @everyone role has no permissions and one "bots" role holds the guild's `botPermissions`, so
 *   discord.js's `permissionsFor(me)` is exactly what the test configured. Every bot is in every guild.
 *
 * Gateway, text JSON frames `{op, d, s, t}` (no zlib): HELLO on connect; IDENTIFY → READY (guilds listed
 * unavailable) + one GUILD_CREATE per guild; op 1 → op 11. Each session numbers its dispatches and keeps
 * them, so RESUME replays everything after the client's seq (events dispatched while it was away
 * included), then RESUMED; an unknown session gets op 9 `d:false`. A client close with 1000/1001
 * (`client.destroy()`) ends the session. MESSAGE_CREATE follows the IDENTIFY intents (GUILD_MESSAGES,
 * DIRECT_MESSAGES); without MESSAGE_CONTENT, content/attachments/embeds are blanked except in DMs,
 * mentions of the bot and its own messages.
 */
import { randomBytes } from 'node:crypto';
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  type APIAttachment,
  type APIMessage,
  type APIUser,
  ChannelType,
  GatewayDispatchEvents as Event,
  GatewayIntentBits as Intent,
  MessageReferenceType,
  MessageType,
  GatewayOpcodes as Op,
  PermissionFlagsBits as Perm,
} from 'discord.js';
import { type WebSocket, WebSocketServer } from 'ws';

export interface UploadedFile {
  name: string;
  data: Buffer;
  /** The multipart field, e.g. `files[0]`. */
  field: string;
  contentType?: string;
}

export interface RecordedRequest {
  method: string;
  /** The URL path without the `/api/v10` prefix, e.g. `/channels/1/messages`. */
  path: string;
  query: URLSearchParams;
  headers: Record<string, string>;
  /** Parsed JSON or multipart `payload_json`; raw text for other bodies; undefined when empty. */
  body: unknown;
  files: UploadedFile[];
}

export interface FailRule {
  method: string;
  /** Tested against `RecordedRequest.path` (no `/api/v10` prefix). */
  path: RegExp;
  status: number;
  /** Default: a Discord-shaped body (429: `retry_after: 0.05`; 403: code 50013). */
  body?: unknown;
  /** Default for 429: `Retry-After` from the body's `retry_after`. */
  headers?: Record<string, string>;
  /** How many matching requests fail; default 1. */
  times?: number;
  /** Perform the request (store + echo) first, then answer with the failure. */
  afterStore?: boolean;
}

export interface InjectedMessage {
  channelId: string;
  author: APIUser;
  content: string;
  /** Default: the users whose `<@id>` appears in `content`. */
  mentions?: APIUser[];
  attachments?: { filename: string; data: Buffer; contentType?: string }[];
  webhookId?: string;
  /** Id of the message (in this channel) this one replies to. */
  replyTo?: string;
}

export const DEFAULT_BOT_PERMISSIONS =
  Perm.ViewChannel |
  Perm.SendMessages |
  Perm.SendMessagesInThreads |
  Perm.ReadMessageHistory |
  Perm.EmbedLinks |
  Perm.AttachFiles |
  Perm.AddReactions |
  Perm.ManageWebhooks;

type Json = Record<string, unknown>;
type ParsedBody = Pick<RecordedRequest, 'body' | 'files'> & { invalid?: true };
type Frame = { op: number; d: unknown; s: number | null; t: string | null };
type Reply = { status: number; body?: unknown; headers?: Record<string, string>; raw?: Buffer };
type Bot = { user: APIUser; token: string; valid: boolean };
type Guild = { id: string; name: string; botPermissions: bigint; botRoleId: string; ownerId: string };
type Webhook = { id: string; token: string; channelId: string; name: string; creator: APIUser };
type Session = { id: string; bot: Bot; intents: number; seq: number; sent: Frame[]; ws?: WebSocket };
type Ctx = { id: string; sub: string; query: URLSearchParams; body: Json; files: UploadedFile[] };
type Route =
  | { method: string; re: RegExp; open: true; handle: (c: Ctx) => Reply }
  | { method: string; re: RegExp; open?: false; handle: (c: Ctx, bot: Bot) => Reply };

type Channel = {
  id: string;
  type: ChannelType.GuildText | ChannelType.PublicThread | ChannelType.DM;
  name: string;
  guildId?: string;
  parentId?: string;
  /** DMs: the bot and the user at either end. */
  bot?: Bot;
  recipient?: APIUser;
};
type NewMessage = {
  author: APIUser;
  content: string;
  mentions?: APIUser[] | undefined;
  attachments?: APIAttachment[];
  embeds?: unknown[];
  webhookId?: string | undefined;
  nonce?: string | number | undefined;
  reference?: APIMessage | undefined;
};

const API_PREFIX = '/api/v10';
const DISCORD_EPOCH = 1420070400000n;
const REPLAY_CAP = 5000;
/** After these server close codes discord.js re-identifies or gives up, so the session is useless. */
const NO_RESUME = new Set([1000, 4003, 4004, 4005, 4007, 4008, 4010, 4011, 4012, 4013, 4014]);

class ApiFailure extends Error {
  constructor(readonly reply: Reply) {
    super(`fake discord: ${reply.status}`);
  }
}

function reject(status: number, code: number, message: string, errors?: Json): never {
  throw new ApiFailure({ status, body: { code, message, ...(errors && { errors }) } });
}

/** 400/50035 with Discord's nested `errors` shape for one field. */
function invalidForm(field: string, code: string, message: string): never {
  reject(400, 50035, 'Invalid Form Body', { [field]: { _errors: [{ code, message }] } });
}

/** `GET /channels/:id` → method + regex; `:name` matches one path segment. */
function pattern(spec: string): { method: string; re: RegExp } {
  const [method = '', path = ''] = spec.split(' ');
  return { method, re: new RegExp(`^${path.replace(/:\w+/g, '([\\w-]+)')}$`) };
}

/** A route that needs `Authorization: Bot <token>`. */
const route = (spec: string, handle: (c: Ctx, bot: Bot) => Reply): Route => ({ ...pattern(spec), handle });
const ok = (body: unknown): Reply => ({ status: 200, body });
const frame = (op: number, d: unknown, t: string | null = null, s: number | null = null) => ({ op, d, s, t });
const asJson = (v: unknown): Json => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : {});
const nonEmpty = (v: unknown): boolean => Array.isArray(v) && v.length > 0;
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const timestampOf = (id: string): string =>
  new Date(Number((BigInt(id) >> 22n) + DISCORD_EPOCH)).toISOString();

export class FakeDiscord {
  readonly api: string;
  readonly gatewayUrl: string;
  readonly origin: string;
  readonly requests: RecordedRequest[] = [];
  readonly unhandled: string[] = [];
  /** Frames received from clients, in order (IDENTIFY and RESUME carry the token). */
  readonly gatewayReceived: Array<{ op: number; d: unknown }> = [];

  private readonly wss = new WebSocketServer({ noServer: true });
  private readonly bots = new Map<string, Bot>();
  private readonly users = new Map<string, APIUser>();
  private readonly guilds = new Map<string, Guild>();
  private readonly channels = new Map<string, Channel>();
  private readonly store = new Map<string, APIMessage[]>();
  private readonly webhooks = new Map<string, Webhook>();
  private readonly files = new Map<string, { data: Buffer; type: string }>();
  private readonly typingCounts = new Map<string, number>();
  private readonly sessions = new Map<string, Session>();
  private readonly socketSession = new Map<WebSocket, Session>();
  private readonly rules: Array<FailRule & { left: number }> = [];
  private readonly waiters = new Set<{ pred: (m: APIMessage) => boolean; done: (m?: APIMessage) => void }>();
  private lastId = 0n;

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly heartbeatIntervalMs: number,
  ) {
    this.origin = `http://127.0.0.1:${port}`;
    this.api = `${this.origin}/api`;
    this.gatewayUrl = `ws://127.0.0.1:${port}/gateway`;
    server.on('request', (req, res) => void this.onRequest(req, res));
    server.on('upgrade', (req, socket, head) => {
      const path = new URL(req.url ?? '/', this.origin).pathname;
      if (path !== '/gateway' || this.refuseGateway) socket.destroy();
      else this.wss.handleUpgrade(req, socket, head, (ws) => this.onSocket(ws));
    });
  }

  static async start(opts: { heartbeatIntervalMs?: number } = {}): Promise<FakeDiscord> {
    const heartbeat = opts.heartbeatIntervalMs ?? 41_250;
    if (!Number.isInteger(heartbeat) || heartbeat < 1) {
      throw new TypeError(`FakeDiscord.start: heartbeatIntervalMs must be an integer ≥ 1, got ${heartbeat}`);
    }
    const server = createServer();
    await new Promise<void>((resolve, fail) => {
      server.once('error', fail);
      server.listen(0, '127.0.0.1', resolve);
    });
    return new FakeDiscord(server, (server.address() as AddressInfo).port, heartbeat);
  }

  async stop(): Promise<void> {
    for (const w of this.waiters) w.done();
    for (const ws of this.wss.clients) ws.terminate();
    this.wss.close();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  // ---- world model ----

  addBot(token: string, username = 'nanoclaw'): APIUser {
    const user = this.newUser(username, true);
    this.bots.set(token, { user, token, valid: true });
    return user;
  }

  addUser(username: string): APIUser {
    return this.newUser(username, false);
  }

  addGuild(name: string, opts: { botPermissions?: bigint } = {}): { id: string } {
    const [id, botRoleId, ownerId] = [this.snowflake(), this.snowflake(), this.snowflake()];
    const guild = {
      id,
      name,
      botPermissions: opts.botPermissions ?? DEFAULT_BOT_PERMISSIONS,
      botRoleId,
      ownerId,
    };
    this.guilds.set(id, guild);
    this.broadcast(Event.GuildCreate, this.guildPayload(guild));
    return { id };
  }

  addTextChannel(guildId: string, name: string): { id: string } {
    if (!this.guilds.has(guildId)) throw new Error(`addTextChannel: unknown guild ${guildId}`);
    const ch = this.addChannel({ id: this.snowflake(), type: ChannelType.GuildText, name, guildId });
    this.broadcast(Event.ChannelCreate, this.channelPayload(ch));
    return { id: ch.id };
  }

  addThread(parentChannelId: string, name: string): { id: string } {
    const parent = this.channels.get(parentChannelId);
    if (parent?.type !== ChannelType.GuildText) throw new Error(`addThread: no channel ${parentChannelId}`);
    const { guildId, id: parentId } = parent;
    const ch = this.addChannel({
      id: this.snowflake(),
      type: ChannelType.PublicThread,
      name,
      guildId,
      parentId,
    });
    this.broadcast(Event.ThreadCreate, { ...this.channelPayload(ch), newly_created: true });
    return { id: ch.id };
  }

  /** The DM between `user` and a bot (default: the first bot added); the existing one if any. */
  addDM(user: APIUser, botToken?: string): { id: string } {
    const bot = botToken === undefined ? this.bots.values().next().value : this.bots.get(botToken);
    if (!bot) throw new Error('addDM: add the bot first (addBot)');
    const old = [...this.channels.values()].find((c) => c.bot === bot && c.recipient?.id === user.id);
    return (
      old ?? this.addChannel({ id: this.snowflake(), type: ChannelType.DM, name: '', bot, recipient: user })
    );
  }

  setTokenValid(token: string, valid: boolean): void {
    const bot = this.bots.get(token);
    if (!bot) throw new Error('setTokenValid: unknown token');
    bot.valid = valid;
  }

  // ---- injection and observation ----

  injectMessage(o: InjectedMessage): APIMessage {
    const ch = this.channels.get(o.channelId);
    if (!ch) throw new Error(`injectMessage: unknown channel ${o.channelId}`);
    const reference = o.replyTo === undefined ? undefined : this.find(ch.id, o.replyTo);
    if (o.replyTo !== undefined && !reference) throw new Error(`injectMessage: no message ${o.replyTo}`);
    const files = (o.attachments ?? []).map((a) => ({ ...a, name: a.filename }));
    const { author, content, mentions, webhookId } = o;
    const attachments = this.storeFiles(ch.id, files);
    return this.createMessage(ch, { author, content, mentions, attachments, webhookId, reference });
  }

  /** Sends any other dispatch (MESSAGE_UPDATE, …) to every session. */
  injectDispatch(t: string, d: unknown): void {
    this.broadcast(t, d);
  }

  messages(channelId: string): APIMessage[] {
    return [...(this.store.get(channelId) ?? [])];
  }

  typing(channelId: string): number {
    return this.typingCounts.get(channelId) ?? 0;
  }

  nextMessage(pred: (m: APIMessage) => boolean, ms = 5_000): Promise<APIMessage> {
    return new Promise((resolve, fail) => {
      const waiter = {
        pred,
        done: (m?: APIMessage) => {
          clearTimeout(timer);
          this.waiters.delete(waiter);
          if (m) resolve(m);
          else fail(new Error(`nextMessage: no matching message within ${ms} ms`));
        },
      };
      const timer = setTimeout(() => waiter.done(), ms).unref();
      this.waiters.add(waiter);
    });
  }

  // ---- fault injection ----

  fail(o: FailRule): void {
    this.rules.push({ ...o, left: o.times ?? 1 });
  }

  /** While true, gateway connections are refused (Discord unreachable). */
  refuseGateway = false;

  /** Closes every gateway socket. With a resumable code (default 4000) sessions stay and buffer. */
  dropConnections(code = 4000): void {
    for (const ws of this.wss.clients) {
      const session = this.socketSession.get(ws);
      if (session?.ws === ws) session.ws = undefined;
      if (session && NO_RESUME.has(code)) this.sessions.delete(session.id);
      ws.close(code, 'fake discord: dropped');
    }
  }

  /** Forgets every session: a connected client hears nothing more, a RESUME gets op 9 `d:false`. */
  invalidateSessions(): void {
    for (const s of this.sessions.values()) s.ws = undefined;
    this.sessions.clear();
  }

  // ---- gateway ----

  private onSocket(ws: WebSocket): void {
    this.send(ws, frame(Op.Hello, { heartbeat_interval: this.heartbeatIntervalMs }));
    ws.on('message', (data, isBinary) => {
      let payload: Json;
      try {
        payload = asJson(JSON.parse(isBinary ? '' : data.toString()));
      } catch {
        ws.close(4002, 'Error while decoding payload.');
        return;
      }
      this.onFrame(ws, typeof payload.op === 'number' ? payload.op : -1, payload.d);
    });
    ws.on('close', (code) => {
      const session = this.socketSession.get(ws);
      this.socketSession.delete(ws);
      if (session?.ws !== ws) return;
      session.ws = undefined;
      // Discord ends a session its client closes with 1000/1001; discord.js resumes with 4200.
      if (code === 1000 || code === 1001) this.sessions.delete(session.id);
    });
  }

  private onFrame(ws: WebSocket, op: number, d: unknown): void {
    this.gatewayReceived.push({ op, d });
    if (op === Op.Heartbeat) this.send(ws, frame(Op.HeartbeatAck, null));
    else if (op === Op.Identify) this.identify(ws, asJson(d));
    else if (op === Op.Resume) this.resume(ws, asJson(d));
    else if (op !== Op.PresenceUpdate && op !== Op.VoiceStateUpdate && op !== Op.RequestGuildMembers) {
      ws.close(4001, 'Unknown opcode.');
    }
  }

  private identify(ws: WebSocket, d: Json): void {
    const bot = this.botByToken(d.token);
    if (!bot || this.socketSession.has(ws)) {
      ws.close(bot ? 4005 : 4004, bot ? 'Already authenticated.' : 'Authentication failed.');
      return;
    }
    const intents = typeof d.intents === 'number' ? d.intents : 0;
    const session: Session = { id: randomBytes(16).toString('hex'), bot, intents, seq: 0, sent: [], ws };
    this.sessions.set(session.id, session);
    this.socketSession.set(ws, session);
    this.dispatch(session, Event.Ready, {
      v: 10,
      user: { ...bot.user, verified: true, mfa_enabled: false },
      guilds: [...this.guilds.keys()].map((id) => ({ id, unavailable: true })),
      session_id: session.id,
      resume_gateway_url: this.gatewayUrl,
      shard: Array.isArray(d.shard) ? d.shard : [0, 1],
      application: { id: bot.user.id, flags: 0 },
      private_channels: [],
    });
    for (const g of this.guilds.values()) this.dispatch(session, Event.GuildCreate, this.guildPayload(g));
  }

  private resume(ws: WebSocket, d: Json): void {
    const session = this.sessions.get(str(d.session_id) ?? '');
    if (!session || this.botByToken(d.token) !== session.bot) {
      this.send(ws, frame(Op.InvalidSession, false));
      return;
    }
    const seq = typeof d.seq === 'number' ? d.seq : 0;
    session.ws = ws;
    this.socketSession.set(ws, session);
    for (const f of session.sent) if ((f.s ?? 0) > seq) this.send(ws, f);
    this.dispatch(session, Event.Resumed, {});
  }

  private dispatch(session: Session, t: string, d: unknown): void {
    const f = frame(Op.Dispatch, d, t, ++session.seq);
    if (t !== Event.Ready && t !== Event.Resumed) {
      session.sent.push(f);
      if (session.sent.length > REPLAY_CAP) session.sent.shift();
    }
    if (session.ws) this.send(session.ws, f);
  }

  private broadcast(t: string, d: unknown): void {
    for (const s of this.sessions.values()) this.dispatch(s, t, d);
  }

  private send(ws: WebSocket, f: Frame): void {
    if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(f));
  }

  private botByToken(token: unknown): Bot | undefined {
    const bot = this.bots.get(str(token)?.replace(/^Bot /, '') ?? '');
    return bot?.valid ? bot : undefined;
  }

  // ---- messages ----

  private createMessage(ch: Channel, o: NewMessage): APIMessage {
    const id = this.snowflake();
    const ref = o.reference;
    const msg: APIMessage = {
      id,
      channel_id: ch.id,
      author: o.author,
      content: o.content,
      timestamp: timestampOf(id),
      edited_timestamp: null,
      tts: false,
      mention_everyone: false,
      mentions: o.mentions ?? this.parseMentions(o.content),
      mention_roles: [],
      attachments: o.attachments ?? [],
      embeds: (o.embeds ?? []) as APIMessage['embeds'],
      components: [],
      pinned: false,
      type: ref ? MessageType.Reply : MessageType.Default,
      ...(o.nonce !== undefined && { nonce: o.nonce }),
      ...(o.webhookId !== undefined && { webhook_id: o.webhookId }),
      ...(ref && {
        message_reference: {
          type: MessageReferenceType.Default,
          message_id: ref.id,
          channel_id: ref.channel_id,
        },
        referenced_message: ref,
      }),
    };
    this.store.set(ch.id, [...(this.store.get(ch.id) ?? []), msg]);
    for (const w of this.waiters) if (w.pred(msg)) w.done(msg);
    const intent = ch.type === ChannelType.DM ? Intent.DirectMessages : Intent.GuildMessages;
    for (const s of this.sessions.values()) {
      if ((s.intents & intent) === 0 || (ch.bot && ch.bot !== s.bot)) continue;
      this.dispatch(s, Event.MessageCreate, this.gatewayMessage(msg, ch, s));
    }
    return msg;
  }

  /** MESSAGE_CREATE = the REST message + channel_type, and guild_id + member in guilds. */
  private gatewayMessage(msg: APIMessage, ch: Channel, s: Session): Json {
    const me = s.bot.user.id;
    const readable =
      (s.intents & Intent.MessageContent) !== 0 ||
      ch.type === ChannelType.DM ||
      msg.author.id === me ||
      msg.mentions.some((u) => u.id === me);
    const base = readable ? msg : { ...msg, content: '', embeds: [], attachments: [], components: [] };
    const guild = this.guilds.get(ch.guildId ?? '');
    if (!guild) return { ...base, channel_type: ch.type };
    const member = msg.webhook_id === undefined && this.member(guild, msg.author.bot === true);
    return { ...base, channel_type: ch.type, guild_id: guild.id, ...(member && { member }) };
  }

  private parseMentions(content: string): APIUser[] {
    const ids = new Set([...content.matchAll(/<@!?(\d+)>/g)].map((m) => m[1] ?? ''));
    return [...ids].flatMap((id) => this.users.get(id) ?? []);
  }

  /** Keeps the bytes to serve at the attachment's own URL on this server. */
  private storeFiles(channelId: string, files: Array<Omit<UploadedFile, 'field'>>): APIAttachment[] {
    return files.map(({ name: filename, data, contentType }) => {
      const id = this.snowflake();
      const path = `/attachments/${channelId}/${id}/${encodeURIComponent(filename)}`;
      this.files.set(path, { data, type: contentType ?? 'application/octet-stream' });
      const url = `${this.origin}${path}`;
      const type = contentType && { content_type: contentType };
      return { id, filename, size: data.length, url, proxy_url: url, ...type };
    });
  }

  private find(channelId: string, messageId: string): APIMessage | undefined {
    return this.store.get(channelId)?.find((m) => m.id === messageId);
  }

  // ---- REST ----

  /** `:id` and `:sub` become `Ctx.id` and `Ctx.sub`. */
  private readonly routes: Route[] = [
    route('GET /gateway/bot', () => ok(this.gatewayBot())),
    route('GET /users/@me', (_c, bot) => ok(bot.user)),
    route('GET /users/:id', (c) => ok(this.users.get(c.id) ?? reject(404, 10013, 'Unknown User'))),
    route('POST /users/@me/channels', (c, bot) => this.createDM(c, bot)),
    route('GET /channels/:id', (c, bot) => ok(this.channelPayload(this.channelFor(c.id, bot)))),
    route('GET /channels/:id/messages', (c, bot) => this.listMessages(c, bot)),
    route('GET /channels/:id/messages/:sub', (c, bot) => this.getMessage(c, bot)),
    route('POST /channels/:id/messages', (c, bot) => this.postMessage(c, bot)),
    route('POST /channels/:id/typing', (c, bot) => this.postTyping(c, bot)),
    route('GET /channels/:id/webhooks', (c, bot) => this.listWebhooks(c, bot)),
    route('POST /channels/:id/webhooks', (c, bot) => this.createWebhook(c, bot)),
    { ...pattern('POST /webhooks/:id/:sub'), open: true, handle: (c) => this.executeWebhook(c) },
  ];

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let reply: Reply;
    try {
      const url = new URL(req.url ?? '/', this.origin);
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      const type = req.headers['content-type'] ?? '';
      const { invalid, ...parsed } = await parseBody(type, Buffer.concat(chunks));
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = String(v);
      const p = url.pathname;
      const path = p.startsWith(`${API_PREFIX}/`) ? p.slice(API_PREFIX.length) : p;
      const recorded = { method: req.method ?? 'GET', path, query: url.searchParams, headers, ...parsed };
      this.requests.push(recorded);
      reply = invalid ? reject(400, 50109, 'The request body contains invalid JSON.') : this.handle(recorded);
    } catch (err) {
      reply = err instanceof ApiFailure ? err.reply : { status: 500, body: { code: 0, message: `${err}` } };
    }
    const body = reply.raw ?? (reply.body === undefined ? undefined : JSON.stringify(reply.body));
    const type = reply.raw ? 'application/octet-stream' : 'application/json';
    res.writeHead(reply.status, { ...(body !== undefined && { 'content-type': type }), ...reply.headers });
    res.end(body);
  }

  private handle(r: RecordedRequest): Reply {
    const rule = this.rules.find((x) => x.left > 0 && x.method === r.method && x.path.test(r.path));
    if (!rule) return this.route(r);
    rule.left--;
    if (rule.afterStore) {
      try {
        this.route(r);
      } catch (err) {
        if (!(err instanceof ApiFailure)) throw err;
      }
    }
    return failure(rule);
  }

  private route(r: RecordedRequest): Reply {
    const file = r.method === 'GET' ? this.files.get(r.path) : undefined;
    if (file) return { status: 200, raw: file.data, headers: { 'content-type': file.type } };
    for (const route of this.routes) {
      const m = route.method === r.method ? route.re.exec(r.path) : null;
      if (!m) continue;
      const c = { id: m[1] ?? '', sub: m[2] ?? '', query: r.query, body: asJson(r.body), files: r.files };
      if (route.open) return route.handle(c);
      const auth = r.headers.authorization ?? '';
      const bot = auth.startsWith('Bot ') ? this.botByToken(auth.slice(4)) : undefined;
      if (!bot) return { status: 401, body: { code: 0, message: '401: Unauthorized' } };
      return route.handle(c, bot);
    }
    this.unhandled.push(`${r.method} ${r.path}`);
    return { status: 404, body: { code: 0, message: '404: Not Found' } };
  }

  private gatewayBot(): Json {
    const limit = { total: 1000, remaining: 1000, reset_after: 0, max_concurrency: 1 };
    return { url: this.gatewayUrl, shards: 1, session_start_limit: limit };
  }

  private channelFor(id: string, bot: Bot): Channel {
    const ch = this.channels.get(id) ?? reject(404, 10003, 'Unknown Channel');
    if (ch.bot && ch.bot !== bot) reject(403, 50001, 'Missing Access');
    return ch;
  }

  private requirePermission(ch: Channel, needed: bigint): void {
    const perms = this.guilds.get(ch.guildId ?? '')?.botPermissions;
    const all = needed | Perm.ViewChannel;
    if (perms === undefined || (perms & Perm.Administrator) !== 0n || (perms & all) === all) return;
    reject(403, 50013, 'Missing Permissions');
  }

  private listMessages(c: Ctx, bot: Bot): Reply {
    const ch = this.channelFor(c.id, bot);
    this.requirePermission(ch, Perm.ReadMessageHistory);
    const limit = Number(c.query.get('limit') ?? 50);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
      invalidForm('limit', 'NUMBER_TYPE_MAX', 'int value should be less than or equal to 100.');
    }
    const [after, before, around] = ['after', 'before', 'around'].map((k) => {
      const v = c.query.get(k);
      if (v !== null && !/^\d+$/.test(v))
        invalidForm(k, 'NUMBER_TYPE_COERCE', `Value "${v}" is not snowflake.`);
      return v === null ? undefined : BigInt(v);
    });
    const all = this.store.get(ch.id) ?? [];
    let page: APIMessage[];
    if (after !== undefined) {
      page = all.filter((m) => BigInt(m.id) > after).slice(0, limit);
    } else if (around !== undefined) {
      const at = all.findIndex((m) => BigInt(m.id) >= around);
      const start = Math.max(0, (at < 0 ? all.length : at) - Math.floor(limit / 2));
      page = all.slice(start, start + limit);
    } else {
      page = (before === undefined ? all : all.filter((m) => BigInt(m.id) < before)).slice(-limit);
    }
    return ok(page.reverse());
  }

  private getMessage(c: Ctx, bot: Bot): Reply {
    const ch = this.channelFor(c.id, bot);
    this.requirePermission(ch, Perm.ReadMessageHistory);
    return ok(this.find(ch.id, c.sub) ?? reject(404, 10008, 'Unknown Message'));
  }

  private postMessage(c: Ctx, bot: Bot): Reply {
    const ch = this.channelFor(c.id, bot);
    const thread = ch.type === ChannelType.PublicThread;
    this.requirePermission(ch, thread ? Perm.SendMessagesInThreads : Perm.SendMessages);
    const b = c.body;
    const nonce = typeof b.nonce === 'string' || typeof b.nonce === 'number' ? b.nonce : undefined;
    if (nonce !== undefined && b.enforce_nonce === true) {
      const same = (m: APIMessage) =>
        m.author.id === bot.user.id && m.nonce !== undefined && `${m.nonce}` === `${nonce}`;
      const existing = this.store.get(ch.id)?.find(same);
      if (existing) return ok(existing);
    }
    const content = validContent(b, c.files.length);
    const ref = asJson(b.message_reference);
    const refId = str(ref.message_id);
    const reference = refId === undefined ? undefined : this.find(str(ref.channel_id) ?? ch.id, refId);
    if (refId !== undefined && !reference && ref.fail_if_not_exists !== false) {
      invalidForm('message_reference', 'MESSAGE_REFERENCE_UNKNOWN_MESSAGE', 'Unknown message');
    }
    const attachments = this.storeFiles(ch.id, c.files);
    const embeds = Array.isArray(b.embeds) ? b.embeds : [];
    return ok(this.createMessage(ch, { author: bot.user, content, attachments, embeds, nonce, reference }));
  }

  private postTyping(c: Ctx, bot: Bot): Reply {
    const ch = this.channelFor(c.id, bot);
    this.typingCounts.set(ch.id, this.typing(ch.id) + 1);
    return { status: 204 };
  }

  private createDM(c: Ctx, bot: Bot): Reply {
    const user = this.users.get(str(c.body.recipient_id) ?? '') ?? reject(400, 50033, 'Invalid Recipient(s)');
    return ok(this.channelPayload(this.channelFor(this.addDM(user, bot.token).id, bot)));
  }

  private webhookChannel(id: string, bot: Bot): Channel {
    const ch = this.channelFor(id, bot);
    if (ch.type === ChannelType.DM) reject(403, 50003, 'Cannot execute action on a DM channel');
    if (ch.type !== ChannelType.GuildText) reject(400, 50024, 'Cannot execute action on this channel type');
    this.requirePermission(ch, Perm.ManageWebhooks);
    return ch;
  }

  private listWebhooks(c: Ctx, bot: Bot): Reply {
    const ch = this.webhookChannel(c.id, bot);
    const hooks = [...this.webhooks.values()].filter((w) => w.channelId === ch.id);
    return ok(hooks.map((w) => this.webhookPayload(w)));
  }

  private createWebhook(c: Ctx, bot: Bot): Reply {
    const ch = this.webhookChannel(c.id, bot);
    const name = str(c.body.name) ?? '';
    if (name.length < 1 || name.length > 80 || /discord|clyde/i.test(name)) {
      invalidForm('name', 'BASE_TYPE_BAD_LENGTH', 'Must be between 1 and 80 in length.');
    }
    // 51 random bytes are 68 base64url characters, the token shape WebhookClient's URL parser accepts.
    const token = randomBytes(51).toString('base64url');
    const hook = { id: this.snowflake(), token, channelId: ch.id, name, creator: bot.user };
    this.webhooks.set(hook.id, hook);
    return ok(this.webhookPayload(hook));
  }

  private executeWebhook(c: Ctx): Reply {
    const hook = this.webhooks.get(c.id) ?? reject(404, 10015, 'Unknown Webhook');
    if (hook.token !== c.sub) reject(401, 50027, 'Invalid Webhook Token');
    const threadId = c.query.get('thread_id');
    const ch = this.channels.get(threadId ?? hook.channelId);
    if (!ch || (threadId && ch.parentId !== hook.channelId)) reject(400, 10003, 'Unknown Channel');
    const content = validContent(c.body, c.files.length);
    const named = { username: str(c.body.username) || hook.name, discriminator: '0000', global_name: null };
    const author = { id: hook.id, ...named, avatar: null, bot: true };
    const attachments = this.storeFiles(ch.id, c.files);
    const embeds = Array.isArray(c.body.embeds) ? c.body.embeds : [];
    const msg = this.createMessage(ch, { author, content, attachments, embeds, webhookId: hook.id });
    return c.query.get('wait') === 'true' ? ok(msg) : { status: 204 };
  }

  // ---- payloads ----

  private newUser(username: string, bot: boolean): APIUser {
    const [id, global_name] = [this.snowflake(), bot ? null : username];
    const user = { id, username, discriminator: '0', global_name, avatar: null, ...(bot && { bot }) };
    this.users.set(user.id, user);
    return user;
  }

  private addChannel(ch: Channel): Channel {
    this.channels.set(ch.id, ch);
    return ch;
  }

  private member(guild: Guild, isBot: boolean): Json {
    const roles = isBot ? [guild.botRoleId] : [];
    return { roles, joined_at: timestampOf(guild.id), deaf: false, mute: false, flags: 0, nick: null };
  }

  private guildPayload(g: Guild): Json {
    const channels = [...this.channels.values()].filter((c) => c.guildId === g.id);
    const bots = [...this.bots.values()];
    const role = (id: string, name: string, permissions: bigint, position: number) => {
      const flags = { color: 0, hoist: false, managed: false, mentionable: false, flags: 0 };
      return { id, name, position, permissions: permissions.toString(), ...flags };
    };
    return {
      id: g.id,
      name: g.name,
      icon: null,
      owner_id: g.ownerId,
      features: [],
      emojis: [],
      stickers: [],
      roles: [role(g.id, '@everyone', 0n, 0), role(g.botRoleId, 'bots', g.botPermissions, 1)],
      members: bots.map((b) => ({ ...this.member(g, true), user: b.user })),
      member_count: bots.length,
      channels: channels.filter((c) => c.type === ChannelType.GuildText).map((c) => this.channelPayload(c)),
      threads: channels.filter((c) => c.type === ChannelType.PublicThread).map((c) => this.channelPayload(c)),
      joined_at: timestampOf(g.id),
      large: false,
      unavailable: false,
    };
  }

  private channelPayload(ch: Channel): Json {
    const messages = this.store.get(ch.id) ?? [];
    const base = { id: ch.id, type: ch.type, last_message_id: messages.at(-1)?.id ?? null, flags: 0 };
    if (ch.type === ChannelType.DM) return { ...base, recipients: [ch.recipient] };
    const inGuild = { ...base, guild_id: ch.guildId, name: ch.name, rate_limit_per_user: 0 };
    const text = { position: 0, permission_overwrites: [], parent_id: null, topic: null, nsfw: false };
    if (ch.type === ChannelType.GuildText) return { ...inGuild, ...text };
    const created = timestampOf(ch.id);
    const meta = { archived: false, locked: false, auto_archive_duration: 1440, archive_timestamp: created };
    const owner_id = this.guilds.get(ch.guildId ?? '')?.ownerId;
    const counts = { message_count: messages.length, member_count: 0 };
    return { ...inGuild, parent_id: ch.parentId, owner_id, ...counts, thread_metadata: meta };
  }

  private webhookPayload(w: Webhook): Json {
    const { id, token, name, channelId: channel_id, creator: user } = w;
    const guild_id = this.channels.get(channel_id)?.guildId;
    return { id, type: 1, guild_id, channel_id, name, avatar: null, token, application_id: user.id, user };
  }

  /** Numeric and strictly increasing, with the creation time in the top bits like real snowflakes. */
  private snowflake(): string {
    const now = (BigInt(Date.now()) - DISCORD_EPOCH) << 22n;
    this.lastId = now > this.lastId ? now : this.lastId + 1n;
    return this.lastId.toString();
  }
}

function failure(rule: FailRule): Reply {
  const { status } = rule;
  const fallback =
    status === 429
      ? { message: 'You are being rate limited.', retry_after: 0.05, global: false, code: 0 }
      : status === 403
        ? { code: 50013, message: 'Missing Permissions' }
        : { code: 0, message: `${status}: ${STATUS_CODES[status] ?? 'Error'}` };
  const body = rule.body ?? fallback;
  const retryAfter = asJson(body).retry_after;
  const headers =
    rule.headers ?? (status === 429 ? { 'Retry-After': String(retryAfter ?? 0.05) } : undefined);
  return { status, body, ...(headers && { headers }) };
}

function validContent(b: Json, fileCount: number): string {
  const content = str(b.content) ?? '';
  // UTF-16 units: never laxer than Discord's own count.
  if (content.length > 2000) {
    invalidForm('content', 'BASE_TYPE_MAX_LENGTH', 'Must be 2000 or fewer in length.');
  }
  const other =
    fileCount > 0 || nonEmpty(b.embeds) || nonEmpty(b.sticker_ids) || nonEmpty(b.components) || !!b.poll;
  if (content.trim() === '' && !other) reject(400, 50006, 'Cannot send an empty message');
  return content;
}

/** JSON, or multipart with `payload_json` + files; `invalid` when a JSON body does not parse. */
async function parseBody(type: string, raw: Buffer): Promise<ParsedBody> {
  if (raw.length === 0) return { body: undefined, files: [] };
  if (type.startsWith('multipart/form-data')) {
    const form = await new Response(new Uint8Array(raw), { headers: { 'content-type': type } }).formData();
    let body: unknown;
    const files: UploadedFile[] = [];
    for (const [field, value] of form.entries()) {
      if (typeof value === 'string') {
        if (field === 'payload_json') body = JSON.parse(value);
        continue;
      }
      const data = Buffer.from(await value.arrayBuffer());
      files.push({ name: value.name, data, field, ...(value.type && { contentType: value.type }) });
    }
    return { body, files };
  }
  const text = raw.toString('utf8');
  if (!type.includes('application/json')) return { body: text, files: [] };
  try {
    return { body: JSON.parse(text), files: [] };
  } catch {
    return { body: text, files: [], invalid: true };
  }
}
