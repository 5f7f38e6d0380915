// Telegram, through grammY with long polling. Chats are `telegram:<chat id>` (private chats,
// groups, supergroups; a forum topic belongs to its chat's group and is answered in the topic).
// Every text message or caption in a registered chat is stored; bots never wake the agent; in a
// main chat only TELEGRAM_OWNER_ID does. grammY handles updates one at a time and asks for the
// next batch (which confirms this one to Telegram) only after the handler returned, and ingest is
// a synchronous SQLite write: an update is confirmed only once it is stored, and one Telegram
// delivers again after a crash is a duplicate (same chat, same message id) that is not answered.
import { lstatSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { Bot, GrammyError, HttpError, InputFile } from 'grammy';
import type { Message, UserFromGetMe } from 'grammy/types';
import { ConfigError } from '../config.js';
import { splitMessage } from '../router.js';
import {
  type Channel,
  type ChannelContext,
  ChannelError,
  type ChannelFactory,
  type OutboundMessage,
} from './channel.js';

const PREFIX = 'telegram:';
/** Telegram's limit for one message's text. */
const MAX_TEXT = 4096;
/** A chat action shows for up to 5 s, so it is renewed a little sooner. */
const TYPING_EVERY_MS = 4_000;

/** The channel from TELEGRAM_* in .env: undefined without a token, ConfigError when one is wrong. */
export const telegramChannel: ChannelFactory = (ctx) => {
  const vars = ctx.config.vars;
  const token = vars.TELEGRAM_BOT_TOKEN?.trim();
  if (token === undefined) return undefined;
  if (token === '') {
    throw new ConfigError('TELEGRAM_BOT_TOKEN is set but empty: put the token @BotFather gave you in .env');
  }
  // Checked here because Telegram answers a malformed token with a puzzling 404.
  if (!/^\d+:[\w-]+$/.test(token)) {
    throw new ConfigError(
      'TELEGRAM_BOT_TOKEN does not look like a bot token (digits, a colon, then letters): copy it again from @BotFather',
    );
  }
  const apiUrl = (vars.TELEGRAM_API_URL?.trim() || 'https://api.telegram.org').replace(/\/+$/, '');
  if (!URL.canParse(apiUrl) || !/^https?:$/.test(new URL(apiUrl).protocol)) {
    throw new ConfigError(
      `TELEGRAM_API_URL must be an http(s) URL like https://api.telegram.org (got ${JSON.stringify(apiUrl)})`,
    );
  }
  const mainId = idVar(ctx, 'TELEGRAM_MAIN_CHAT_ID', 'a chat id (negative for groups)', /^-?\d{1,20}$/);
  const ownerId = idVar(ctx, 'TELEGRAM_OWNER_ID', 'your numeric user id', /^\d{1,20}$/);
  if (mainId && !ownerId) {
    throw new ConfigError(
      'TELEGRAM_MAIN_CHAT_ID is set but TELEGRAM_OWNER_ID is not: put your Telegram user id in .env so only you wake the main chat',
    );
  }
  if (mainId) ctx.registerMain(PREFIX + mainId);
  return createTelegramChannel(ctx, token, apiUrl, ownerId);
};

function idVar(ctx: ChannelContext, name: string, what: string, re: RegExp): string | undefined {
  const v = ctx.config.vars[name]?.trim();
  if (!v) return undefined;
  if (!re.test(v)) throw new ConfigError(`${name} must be ${what}, an integer (got ${JSON.stringify(v)})`);
  return v;
}

function createTelegramChannel(
  ctx: ChannelContext,
  token: string,
  apiUrl: string,
  ownerId: string | undefined,
): Channel {
  const { db, log } = ctx;
  const bot = new Bot(token, { client: { apiRoot: apiUrl } });
  const typing = new Map<string, NodeJS.Timeout>();
  const topicOf = new Map<string, number | undefined>(); // chat → forum topic the agent was woken in
  // Telegram has no idempotency key: a retried send resumes after the chunks that went out.
  const progress = new Map<number, { next: number; last?: number }>();
  let me: UserFromGetMe | undefined;
  let mention = /$^/;
  let command = /$^/;
  let polling: Promise<void> | undefined;
  let stopping = false;

  function receive(m: Message): void {
    const text = m.text ?? m.caption;
    if (text === undefined || !m.from || !me) return; // stickers, service messages: nothing to read
    const chatJid = PREFIX + m.chat.id;
    // In a plain group message_thread_id also marks reply chains; only forum topics are threads.
    const topic = m.is_topic_message ? m.message_thread_id : undefined;
    const replied = m.reply_to_message;
    const mentionsMe =
      mention.test(text) || (replied?.from?.id === me.id && replied.forum_topic_created === undefined);
    const group = db.group(chatJid);
    const mayWake = !m.from.is_bot && (!group?.isMain || String(m.from.id) === ownerId);
    if (group && mayWake) topicOf.set(chatJid, topic);
    const senderName = [m.from.first_name, m.from.last_name].filter(Boolean).join(' ');
    ctx.ingest({
      chatJid,
      chatName: m.chat.type === 'private' ? `DM ${senderName}` : m.chat.title,
      platformId: String(m.message_id),
      sender: String(m.from.id),
      senderName,
      // In groups Telegram's command menu sends `/stop@bot`; the orchestrator knows `/stop`.
      text: text.replace(command, '$1'),
      at: m.date * 1000,
      isBot: m.from.is_bot,
      ...(mayWake ? {} : { mayWake: false }),
      ...(mentionsMe ? { mentionsMe } : {}),
      ...(topic !== undefined ? { threadId: String(topic) } : {}),
    });
  }

  bot.on('message', (c) => receive(c.message));
  // Without this grammY logs to the console and stops polling on the first handler error.
  bot.catch((err) => {
    log.error(
      `telegram ${err.ctx.chat?.id ?? '?'}: update ${err.ctx.update.update_id} not taken: ${describe(err.error, token)}`,
    );
  });

  /** A file to post: a real file inside its group folder, never through a symlink. */
  function checkedFile(file: string): InputFile {
    let real: string;
    let root: string;
    try {
      real = realpathSync(file);
      root = realpathSync(ctx.config.groupsDir);
    } catch {
      throw new ChannelError(`file ${file} does not exist`, undefined, true);
    }
    if (real !== path.resolve(file) || !real.startsWith(root + path.sep) || !lstatSync(real).isFile()) {
      throw new ChannelError(`file ${file} is not a plain file in a group folder`, undefined, true);
    }
    // grammY writes the name unquoted into the multipart header.
    return new InputFile(real, path.basename(real).replace(/[^\p{L}\p{N}._-]/gu, '_'));
  }

  async function send(msg: OutboundMessage): Promise<{ platformId?: string }> {
    const chatId = msg.chatJid.slice(PREFIX.length);
    // A teammate's name is a bold first line (an entity, so the agent's text needs no escaping).
    const head = msg.sender ? `${msg.sender}\n` : '';
    const chunks = splitMessage(head + msg.text, MAX_TEXT);
    const topic = msg.threadId ? { message_thread_id: Number(msg.threadId) } : {};
    const reply = msg.replyTo
      ? { reply_parameters: { message_id: Number(msg.replyTo), allow_sending_without_reply: true } }
      : {};
    const state = progress.get(msg.outboxId) ?? { next: 0 };
    progress.set(msg.outboxId, state);
    try {
      for (; state.next < chunks.length; state.next++) {
        const first = state.next === 0;
        const sent = await bot.api.sendMessage(chatId, chunks[state.next] ?? '', {
          ...topic,
          ...(first ? reply : {}),
          ...(first && msg.sender
            ? { entities: [{ type: 'bold', offset: 0, length: msg.sender.length }] }
            : {}),
        });
        state.last = sent.message_id;
      }
      if (msg.file) {
        const sent = await bot.api.sendDocument(chatId, checkedFile(msg.file), {
          ...topic,
          ...(chunks.length === 0 ? reply : {}),
        });
        state.last = sent.message_id;
      }
    } catch (err) {
      const e = classify(err, `send to ${msg.chatJid}`, token);
      if (e.permanent) progress.delete(msg.outboxId);
      throw e;
    }
    progress.delete(msg.outboxId);
    return state.last === undefined ? {} : { platformId: String(state.last) };
  }

  function setWorking(chatJid: string, working: boolean): void {
    clearInterval(typing.get(chatJid));
    typing.delete(chatJid);
    if (!working) return;
    const topic = topicOf.get(chatJid);
    const tick = () => {
      bot.api
        .sendChatAction(chatJid.slice(PREFIX.length), 'typing', topic ? { message_thread_id: topic } : {})
        .catch((err: unknown) => log.debug(`telegram ${chatJid}: typing: ${describe(err, token)}`));
    };
    tick();
    const timer = setInterval(tick, TYPING_EVERY_MS);
    timer.unref();
    typing.set(chatJid, timer);
  }

  /** Cancels the long poll and confirms what was handled, so a restart does not see it again. */
  async function halt(): Promise<void> {
    stopping = true;
    if (!bot.isRunning()) return;
    await bot.stop().catch((err: unknown) => log.warn(`telegram: stop: ${describe(err, token)}`));
  }

  return {
    name: 'telegram',
    owns: (chatJid) => chatJid.startsWith(PREFIX),
    async start() {
      // Not bot.init(): it retries network errors for as long as it takes, and start must fail.
      // (grammY types the signal as its polyfill's; Node's AbortSignal is what it uses at run time.)
      const signal = AbortSignal.timeout(30_000) as unknown as Parameters<typeof bot.api.getMe>[0];
      try {
        me = await bot.api.getMe(signal);
      } catch (err) {
        const why = describe(err, token);
        throw new ChannelError(
          err instanceof GrammyError
            ? `Telegram rejected TELEGRAM_BOT_TOKEN (${why}): copy the token from @BotFather into .env`
            : `Telegram is not reachable at ${apiUrl} (${why}): check the network or TELEGRAM_API_URL`,
          undefined,
          true,
          { cause: err },
        );
      }
      bot.botInfo = me;
      mention = new RegExp(`@${me.username}(?![A-Za-z0-9_])`, 'i');
      command = new RegExp(`^(/[A-Za-z]+)@${me.username}$`, 'i');
      // Resolves only when stopped; it rejects on 401 or 409 (another process polls this bot).
      polling = bot.start({ allowed_updates: ['message'] }).catch((err: unknown) => {
        if (!stopping) log.error(`telegram: polling stopped: ${describe(err, token)}`);
      });
      log.info(`telegram: connected as @${me.username}`);
    },
    stop: halt,
    send,
    setWorking,
    async close() {
      for (const t of typing.values()) clearInterval(t);
      typing.clear();
      await halt();
      await polling;
    },
  };
}

/** 429 → retry after Telegram's wait; 400 and 403 (chat gone, bot blocked or kicked) will fail again. */
function classify(err: unknown, what: string, token: string): ChannelError {
  if (err instanceof ChannelError) return err;
  if (err instanceof GrammyError) {
    if (err.error_code === 429) {
      const waitMs = (err.parameters.retry_after ?? 1) * 1000;
      return new ChannelError(`${what}: ${err.description}`, waitMs, false, { cause: err });
    }
    const to = err.parameters.migrate_to_chat_id;
    const hint = to ? `: the group is now telegram:${to}, register that` : '';
    return new ChannelError(
      `${what}: ${describe(err, token)}${hint}`,
      undefined,
      err.error_code === 400 || err.error_code === 403,
      { cause: err },
    );
  }
  return new ChannelError(`${what}: ${describe(err, token)}`, undefined, false, { cause: err });
}

/** One line for a log; the token is in every request URL, so it never is in the line. */
function describe(err: unknown, token: string): string {
  let text: string;
  if (err instanceof GrammyError) text = `${err.error_code} ${err.description}`;
  else if (err instanceof HttpError) {
    const code = (err.error as { code?: unknown } | undefined)?.code;
    text = `${err.message}${typeof code === 'string' ? ` ${code}` : ''}`;
  } else text = err instanceof Error ? err.message : String(err);
  return text.replaceAll(token, '<token>');
}
