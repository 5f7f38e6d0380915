// Discord, through discord.js 14. Chats are `discord:<channel id>` (guild text channels and DMs);
// a thread belongs to its parent channel's group and is answered in the thread. Every message in
// a registered chat is stored; bots (and our own posts and webhooks) never wake the agent unless
// DISCORD_WAKE_ON_BOTS; in a main chat only DISCORD_OWNER_ID wakes it. Sends carry a nonce with
// enforce_nonce, so a retried send never posts twice. After every (re-)identify the channel
// fetches what each registered chat received since its last stored message.
import { lstatSync, mkdirSync, realpathSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  ChannelType,
  Client,
  DiscordAPIError,
  Events,
  GatewayIntentBits,
  type Message,
  Partials,
  type SendableChannels,
  Status,
  type Webhook,
} from 'discord.js';
import type { Db } from '../db.js';
import type { Logger } from '../log.js';
import { GUEST } from '../mounts.js';
import { splitMessage } from '../router.js';
import {
  type Channel,
  ChannelError,
  type InboundMessage,
  type IngestResult,
  type OutboundMessage,
} from './channel.js';

export interface DiscordDeps {
  token: string;
  apiUrl: string;
  ownerId: string | undefined;
  wakeOnBots: boolean;
  attachmentMaxBytes: number;
  groupsDir: string;
  db: Db;
  log: Logger;
  ingest: (m: InboundMessage) => IngestResult;
  /** How often the typing indicator is renewed while the agent works (Discord shows it ~10 s). */
  typingIntervalMs?: number;
  readyTimeoutMs?: number;
}

const PREFIX = 'discord:';
const MAX_CATCH_UP = 100;

/** A file name safe on any filesystem: no path, no dots first, no control characters. */
function sanitizeFileName(name: string): string {
  const base = name.split(/[\\/]/).pop() ?? '';
  const clean = base
    .normalize('NFKC')
    .replace(/[^\p{L}\p{N}._ -]+/gu, '_')
    .replace(/^[.\s]+/, '')
    .slice(0, 120)
    .trim();
  return clean === '' ? 'file' : clean;
}

export function createDiscordChannel(deps: DiscordDeps): Channel {
  const { log, db } = deps;
  const client = new Client({
    intents: [
      GatewayIntentBits.Guilds,
      GatewayIntentBits.GuildMessages,
      GatewayIntentBits.MessageContent,
      GatewayIntentBits.DirectMessages,
    ],
    partials: [Partials.Channel],
    rest: { api: deps.apiUrl },
  });
  const webhooks = new Map<string, Webhook | null>(); // channel id → our webhook (null: unavailable)
  const ownWebhookIds = new Set<string>();
  const otherWebhookIds = new Set<string>();
  const typing = new Map<string, NodeJS.Timeout>();
  const typingIn = new Map<string, string>(); // chat → channel (thread) the agent was woken in
  const typingIntervalMs = deps.typingIntervalMs ?? 8_000;
  let accepting = true;

  function chatOf(message: Message): { chatJid: string; threadId?: string } {
    const ch = message.channel;
    if (ch.isThread() && ch.parentId) return { chatJid: PREFIX + ch.parentId, threadId: ch.id };
    return { chatJid: PREFIX + message.channelId };
  }

  /** Downloads attachments into the group folder; returns their guest paths. */
  async function download(message: Message, folder: string): Promise<string[]> {
    if (message.attachments.size === 0) return [];
    const dir = path.join(deps.groupsDir, folder, 'attachments');
    mkdirSync(dir, { recursive: true });
    // Never write through a symlink an agent planted: the directory itself must be a real one
    // inside the group folder, and files are created exclusively ('wx': O_EXCL fails on any existing path).
    const real = realpathSync(dir);
    if (
      lstatSync(dir).isSymbolicLink() ||
      real !== path.join(realpathSync(path.join(deps.groupsDir, folder)), 'attachments')
    ) {
      throw new ChannelError(`${dir} is not a plain directory: refusing to write attachments`);
    }
    const out: string[] = [];
    for (const a of message.attachments.values()) {
      if (a.size > deps.attachmentMaxBytes) {
        log.warn(`discord: attachment ${a.name} (${a.size} bytes) over ATTACHMENT_MAX_BYTES, not stored`);
        continue;
      }
      const name = `${message.id}-${sanitizeFileName(a.name)}`;
      const res = await fetch(a.url, { signal: AbortSignal.timeout(60_000) });
      if (!res.ok || !res.body) throw new ChannelError(`attachment ${a.name}: HTTP ${res.status}`);
      const bytes = Buffer.from(await res.arrayBuffer());
      if (bytes.length > deps.attachmentMaxBytes) continue;
      writeFileSync(path.join(real, name), bytes, { flag: 'wx' });
      out.push(`${GUEST.group}/attachments/${name}`);
    }
    return out;
  }

  async function receive(message: Message): Promise<void> {
    if (!accepting) return;
    const { chatJid, threadId } = chatOf(message);
    const chatName =
      message.channel.type === ChannelType.DM
        ? `DM ${message.author.username}`
        : `#${'name' in message.channel ? message.channel.name : message.channelId}`;
    const group = db.group(chatJid);
    const me = client.user?.id;
    // Only registered chats are worth a webhook lookup.
    const fromMe = message.author.id === me || (!!group && (await isOwnWebhook(message.webhookId)));
    const base = {
      chatJid,
      chatName,
      platformId: message.id,
      sender: PREFIX + message.author.id,
      senderName: message.member?.displayName ?? message.author.globalName ?? message.author.username,
      text: message.cleanContent,
      at: message.createdTimestamp,
      isBot: message.author.bot,
      fromMe,
    };
    if (!group) {
      deps.ingest(base); // remembers the chat for listing; not stored
      return;
    }
    const mentionsMe = me !== undefined && message.mentions.users.has(me);
    const ownerOrNotMain = !group.isMain || message.author.id === deps.ownerId;
    const mayWake = !fromMe && (!message.author.bot || deps.wakeOnBots) && ownerOrNotMain;
    const attachments = await download(message, group.folder).catch((err: unknown) => {
      log.warn(`discord ${chatJid}: attachments of ${message.id} not stored: ${(err as Error).message}`);
      return [];
    });
    if (mayWake) typingIn.set(chatJid, threadId ?? chatJid.slice(PREFIX.length));
    deps.ingest({
      ...base,
      ...(mayWake ? {} : { mayWake: false }),
      ...(mentionsMe ? { mentionsMe } : {}),
      ...(threadId ? { threadId } : {}),
      ...(attachments.length ? { attachments } : {}),
    });
  }

  /** Our webhooks' posts are our own, also those made before a restart (looked up once, cached). */
  async function isOwnWebhook(id: string | null): Promise<boolean> {
    if (id === null || otherWebhookIds.has(id)) return false;
    if (ownWebhookIds.has(id)) return true;
    const hook = await client.fetchWebhook(id).catch(() => undefined);
    const own = hook?.owner?.id !== undefined && hook.owner.id === client.user?.id;
    (own ? ownWebhookIds : otherWebhookIds).add(id);
    return own;
  }

  /** Fetches what each registered chat received since its newest stored message. */
  async function catchUp(): Promise<void> {
    for (const g of db.groups()) {
      if (!g.jid.startsWith(PREFIX)) continue;
      const after = db.lastPlatformId(g.jid);
      if (!after) continue;
      try {
        const channel = await client.channels.fetch(g.jid.slice(PREFIX.length));
        if (!channel?.isTextBased()) continue;
        const missed = await channel.messages.fetch({ after, limit: MAX_CATCH_UP });
        const ordered = [...missed.values()].sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
        for (const m of ordered) await receive(m);
        if (ordered.length > 0) log.info(`discord ${g.jid}: fetched ${ordered.length} missed messages`);
      } catch (err) {
        log.warn(`discord ${g.jid}: could not fetch missed messages: ${(err as Error).message}`);
      }
    }
  }

  async function sendable(id: string): Promise<SendableChannels> {
    const channel = await client.channels.fetch(id).catch((err: unknown) => {
      throw classify(err, `channel ${id}`);
    });
    if (!channel?.isSendable()) throw new ChannelError(`cannot post in channel ${id}`, undefined, true);
    return channel;
  }

  /** Our webhook in a guild channel (created once, reused), or null where none can be had. */
  async function webhookFor(channel: SendableChannels): Promise<Webhook | null> {
    const parent = channel.isThread() ? channel.parent : channel;
    if (!parent || !('fetchWebhooks' in parent)) return null;
    const cached = webhooks.get(parent.id);
    if (cached !== undefined) return cached;
    try {
      const existing = (await parent.fetchWebhooks()).find((w) => w.owner?.id === client.user?.id && w.token);
      const hook = existing ?? (await parent.createWebhook({ name: 'NanoClaw' }));
      ownWebhookIds.add(hook.id);
      webhooks.set(parent.id, hook);
      return hook;
    } catch (err) {
      log.warn(`discord: no webhook in ${parent.id} (${(err as Error).message}); posting with a name prefix`);
      webhooks.set(parent.id, null);
      return null;
    }
  }

  /** A file to post: a real file inside its group folder, never through a symlink. */
  function checkedFile(file: string): { attachment: string; name: string } {
    const root = realpathSync(deps.groupsDir);
    let real: string;
    try {
      real = realpathSync(file);
    } catch {
      throw new ChannelError(`file ${file} does not exist`, undefined, true);
    }
    if (real !== path.resolve(file) || !real.startsWith(root + path.sep) || !lstatSync(real).isFile()) {
      throw new ChannelError(`file ${file} is not a plain file in a group folder`, undefined, true);
    }
    return { attachment: real, name: sanitizeFileName(path.basename(real)) };
  }

  async function send(msg: OutboundMessage): Promise<{ platformId?: string }> {
    const channel = await sendable(msg.threadId ?? msg.chatJid.slice(PREFIX.length));
    const files = msg.file ? [checkedFile(msg.file)] : [];
    const hook = msg.sender ? await webhookFor(channel) : null;
    const text = msg.sender && !hook ? `**${msg.sender}:** ${msg.text}` : msg.text;
    const chunks = splitMessage(text, 2000);
    if (chunks.length === 0 && files.length === 0) return {};
    let first: string | undefined;
    const parts = chunks.length > 0 ? chunks : [''];
    for (const [i, content] of parts.entries()) {
      const common = {
        ...(content ? { content } : {}),
        ...(i === parts.length - 1 && files.length ? { files } : {}),
        // Agent text never pings @everyone, roles or users.
        allowedMentions: { parse: [], repliedUser: false },
      };
      try {
        const sent = hook
          ? await hook.send({
              ...common,
              username: msg.sender,
              ...(channel.isThread() ? { threadId: channel.id } : {}),
            })
          : await channel.send({
              ...common,
              // Same outbox row and chunk → same nonce: Discord returns the first post instead of a second.
              nonce: `${msg.outboxId}.${i}`,
              enforceNonce: true,
              ...(i === 0 && msg.replyTo
                ? { reply: { messageReference: msg.replyTo, failIfNotExists: false } }
                : {}),
            });
        first ??= sent.id;
      } catch (err) {
        throw classify(err, `send to ${msg.chatJid}`);
      }
    }
    return first ? { platformId: first } : {};
  }

  function setWorking(chatJid: string, working: boolean): void {
    clearInterval(typing.get(chatJid));
    typing.delete(chatJid);
    if (!working) return;
    const id = typingIn.get(chatJid) ?? chatJid.slice(PREFIX.length);
    const tick = () => {
      sendable(id)
        .then((c) => c.sendTyping())
        .catch((err: unknown) => log.debug(`discord ${chatJid}: typing: ${(err as Error).message}`));
    };
    tick();
    const timer = setInterval(tick, typingIntervalMs);
    timer.unref();
    typing.set(chatJid, timer);
  }

  client.on(Events.MessageCreate, (message) => {
    receive(message).catch((err: unknown) => {
      log.error(`discord ${message.channelId}: message ${message.id} not taken: ${(err as Error).message}`);
    });
  });
  // Fires at the first identify and after every re-identify (a resume replays what was missed
  // itself): fetch what arrived while we were not connected.
  client.on(Events.ShardReady, () => {
    catchUp().catch((err: unknown) => log.warn(`discord: catch-up failed: ${(err as Error).message}`));
  });
  client.on(Events.Error, (err) => log.error(`discord: ${err.message}`));
  client.on(Events.ShardDisconnect, (ev) => log.warn(`discord: disconnected (${ev.code})`));

  return {
    name: 'discord',
    // The manager stays Ready through a reconnect; its shard says whether the gateway is there.
    connected: () => client.isReady() && client.ws.shards.every((s) => s.status === Status.Ready),
    owns: (chatJid) => chatJid.startsWith(PREFIX),
    async start() {
      let timer: NodeJS.Timeout | undefined;
      // Settles to the timeout's error (or nothing), so it is never a rejection nobody awaits.
      const ready = new Promise<ChannelError | undefined>((resolve) => {
        timer = setTimeout(
          () => resolve(new ChannelError('Discord did not become ready in time')),
          deps.readyTimeoutMs ?? 30_000,
        );
        client.once(Events.ClientReady, () => resolve(undefined));
      }).finally(() => clearTimeout(timer));
      try {
        await client.login(deps.token);
      } catch (err) {
        clearTimeout(timer);
        await client.destroy();
        throw new ChannelError(
          `Discord rejected DISCORD_BOT_TOKEN (${(err as Error).message}): copy the bot token from the Developer Portal into .env`,
          undefined,
          true,
          { cause: err },
        );
      }
      const late = await ready;
      if (late) {
        await client.destroy();
        throw late;
      }
      log.info(`discord: connected as ${client.user?.tag}`);
    },
    async stop() {
      accepting = false;
    },
    send,
    setWorking,
    async close() {
      for (const t of typing.values()) clearInterval(t);
      typing.clear();
      await client.destroy();
    },
  };
}

/** Discord's 4xx (but 429, which discord.js retries itself) will fail again: no retry. */
function classify(err: unknown, what: string): ChannelError {
  if (err instanceof ChannelError) return err;
  const permanent =
    err instanceof DiscordAPIError && err.status >= 400 && err.status < 500 && err.status !== 429;
  return new ChannelError(`${what}: ${(err as Error).message}`, undefined, permanent, { cause: err });
}
