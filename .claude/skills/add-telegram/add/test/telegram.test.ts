// Telegram end to end: the real grammY client long-polling the fake Telegram, the real
// orchestrator, real bwrap sandboxes and the real Agent SDK against the fake model.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import type { Chat, Message, User } from 'grammy/types';
import { type ChannelContext, ChannelError } from '../src/channels/channel.js';
import { telegramChannel } from '../src/channels/telegram.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { openDb } from '../src/db.js';
import { createLogger } from '../src/log.js';
import { eventually, nanoclaw, removeHome, startApp, type TestApp, tempHome } from './support/app.js';
import { type FakeAnthropic, startFakeAnthropic, text } from './support/fake-anthropic.js';
import { FakeTelegram } from './support/fake-telegram.js';

const TOKEN = '4242424242:fake-secret';
const BOT = 'krabby_home_bot';

let model: FakeAnthropic;
before(async () => {
  model = await startFakeAnthropic();
});
after(async () => {
  await model.close();
});

interface World {
  tg: FakeTelegram;
  owner: User;
  stranger: User;
  family: Chat;
  admin: Chat;
  key: string;
  env: Record<string, string>;
  app: TestApp;
}

let n = 0;
let current: World | undefined;

/** A fake Telegram with a Family group (registered, trigger @Krabby) and an Admin group, and the app. */
async function world(opts: { main?: boolean } = {}): Promise<World> {
  const tg = await FakeTelegram.start({ token: TOKEN, username: BOT });
  const owner = tg.addUser('Olivia', { lastName: 'Owner' });
  const stranger = tg.addUser('Sam');
  const family = tg.addGroup('Family');
  const admin = tg.addGroup('Admin');
  const key = `telegram-${++n}`;
  const env = {
    TELEGRAM_BOT_TOKEN: TOKEN,
    TELEGRAM_API_URL: tg.url,
    ...(opts.main ? { TELEGRAM_MAIN_CHAT_ID: String(admin.id), TELEGRAM_OWNER_ID: String(owner.id) } : {}),
  };
  const app = await startApp({ baseUrl: `${model.baseUrl}/s/${key}`, env });
  current = { tg, owner, stranger, family, admin, key, env, app };
  register(current, family, 'family');
  return current;
}

function register(w: World, chat: Chat, folder: string): void {
  w.app.orch.db.addGroup(
    {
      jid: jid(chat),
      name: folder,
      folder,
      trigger: '@Krabby',
      requiresTrigger: true,
      isMain: false,
    },
    Date.now(),
  );
}

const jid = (chat: Chat) => `telegram:${chat.id}`;
const script = (w: World, steps: Parameters<FakeAnthropic['script']>[1]) => model.script(w.key, steps);
const mainRequests = (s: ReturnType<typeof script>) => s.requests.filter((r) => r.kind === 'main').length;
const inChat = (chat: Chat) => (m: Message) => m.chat.id === chat.id;

afterEach(async () => {
  if (!current) return;
  const w = current;
  current = undefined;
  await w.app.stop();
  await w.tg.stop();
  removeHome(w.app.home);
  assert.deepEqual(w.tg.unhandled, [], 'only Bot API methods the fake knows were called');
});

describe('Telegram', () => {
  test('a trigger in a registered group gets the agent’s reply in that chat, replying to the message', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('hello family') }]);
    const asked = w.tg.say(w.family, w.owner, '@Krabby hi there');
    const reply = await w.tg.waitSent(inChat(w.family));
    assert.equal(reply.text, 'hello family');
    assert.equal(reply.reply_to_message?.message_id, asked.message_id);
    const stored = w.app.orch.db.messagesAfter(jid(w.family), 0);
    assert.deepEqual(
      stored.map((m) => [m.platformId, m.sender, m.senderName, m.text]),
      [[String(asked.message_id), String(w.owner.id), 'Olivia Owner', '@Krabby hi there']],
    );
    assert.match(s.requests[0]?.lastUserText() ?? '', /sender="Olivia Owner"[^>]*>@Krabby hi there</);
    s.assertDone();
  });

  test('a message without the trigger (a photo caption here) is stored, not answered, and is in the next prompt', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('noted both') }]);
    w.tg.say(w.family, w.stranger, 'the meeting moved to 5pm', { caption: true });
    await eventually(() => w.app.orch.db.messagesAfter(jid(w.family), 0).length === 1, 10_000, 'stored');
    assert.equal(mainRequests(s), 0);
    w.tg.say(w.family, w.owner, '@Krabby when is the meeting?');
    await w.tg.waitSent(inChat(w.family));
    assert.equal(mainRequests(s), 1);
    assert.match(s.requests[0]?.lastUserText() ?? '', /meeting moved to 5pm[\s\S]*when is the meeting/);
    assert.deepEqual(
      w.tg.sent(w.family.id).map((m) => m.text),
      ['noted both'],
    );
    s.assertDone();
  });

  test('an @mention of the bot, or a reply to one of its messages, counts as the trigger', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('you called') }, { reply: text('again') }]);
    w.tg.say(w.family, w.owner, `@${BOT} ping`);
    const first = await w.tg.waitSent((m) => m.text === 'you called');
    w.tg.say(w.family, w.stranger, 'and what about me?', { replyTo: first });
    await w.tg.waitSent((m) => m.text === 'again');
    const stored = w.app.orch.db.messagesAfter(jid(w.family), 0);
    assert.deepEqual(
      stored.map((m) => m.mentionsMe),
      [true, true],
    );
    s.assertDone();
  });

  test('a message in an unregistered chat is not stored, only the chat is remembered', async () => {
    const w = await world();
    w.tg.say(w.admin, w.owner, '@Krabby anyone?');
    const raw = w.app.orch.db.raw;
    await eventually(
      () => raw.prepare('SELECT 1 FROM chats WHERE jid = ?').get(jid(w.admin)) !== undefined,
      10_000,
    );
    assert.deepEqual(raw.prepare('SELECT name, channel FROM chats WHERE jid = ?').get(jid(w.admin)), {
      name: 'Admin',
      channel: 'telegram',
    });
    assert.equal(w.app.orch.db.messagesAfter(jid(w.admin), 0).length, 0);
  });

  test('the main chat from .env is registered as main, and only its owner wakes it', async () => {
    const w = await world({ main: true });
    const group = w.app.orch.db.group(jid(w.admin));
    assert.equal(group?.isMain, true);
    assert.equal(group?.folder, 'telegram-main');
    const s = script(w, [{ reply: text('only for the owner') }]);
    const helper = w.tg.addUser('Helper', { isBot: true });
    w.tg.say(w.admin, w.stranger, '@Krabby I am not the owner');
    w.tg.say(w.admin, helper, '@Krabby I am a bot');
    await eventually(() => w.app.orch.db.messagesAfter(jid(w.admin), 0).length === 2, 10_000, 'two stored');
    w.tg.say(w.admin, w.owner, 'hello');
    const reply = await w.tg.waitSent(inChat(w.admin));
    assert.equal(reply.text, 'only for the owner');
    assert.equal(mainRequests(s), 1, 'only the owner woke it');
    const stored = w.app.orch.db.messagesAfter(jid(w.admin), 0);
    assert.deepEqual(
      stored.map((m) => [m.text, m.isBot, m.mayWake]),
      [
        ['@Krabby I am not the owner', false, false],
        ['@Krabby I am a bot', true, false],
        ['hello', false, true],
      ],
    );
    s.assertDone();
  });

  test('a message in a forum topic is answered in that topic, with the typing action there too', async () => {
    const w = await world();
    const forum = w.tg.addGroup('Projects', { forum: true });
    register(w, forum, 'projects');
    const topic = w.tg.addTopic(forum, 'Garden', w.owner);
    const s = script(w, [{ reply: text('in the topic') }]);
    w.tg.say(forum, w.owner, '@Krabby plan the garden', { topic });
    const reply = await w.tg.waitSent(inChat(forum));
    assert.equal(reply.text, 'in the topic');
    assert.equal(reply.message_thread_id, topic);
    assert.equal(w.app.orch.db.messagesAfter(jid(forum), 0)[0]?.threadId, String(topic));
    assert.ok(w.tg.actions.some((a) => a.chatId === forum.id && a.topic === topic));
    s.assertDone();
  });

  test('an update delivered again after a restart (no confirmation before the crash) is answered once', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('first') }, { reply: text('second') }]);
    const asked = w.tg.say(w.family, w.owner, '@Krabby one');
    await w.tg.waitSent((m) => m.text === 'first');
    await w.app.stop();
    // As if the process died after storing and answering but before its next getUpdates.
    w.tg.redeliver(asked);
    assert.equal(w.tg.confirmed(asked), false);
    w.app = await startApp({ baseUrl: `${model.baseUrl}/s/${w.key}`, env: w.env, home: w.app.home });
    await eventually(() => w.tg.confirmed(asked), 20_000, 'the redelivered update taken');
    w.tg.say(w.family, w.owner, '@Krabby two');
    await w.tg.waitSent((m) => m.text === 'second');
    assert.deepEqual(
      w.tg.sent(w.family.id).map((m) => m.text),
      ['first', 'second'],
    );
    assert.equal(w.app.orch.db.messagesAfter(jid(w.family), 0).length, 2);
    s.assertDone();
  });

  test('a 9,000-character reply arrives as three messages of at most 4096, each once though one hit a 429', async () => {
    const w = await world();
    const paragraphs = Array.from({ length: 9 }, (_, i) => `Paragraph ${i}. ${'word '.repeat(190).trim()}.`);
    const long = paragraphs.join('\n\n');
    assert.ok(long.length > 8600 && long.length < 9000, String(long.length));
    const s = script(w, [{ reply: text(long) }]);
    w.tg.fail({ method: 'sendMessage', status: 429, retryAfter: 1, skip: 1 });
    const asked = w.tg.say(w.family, w.owner, '@Krabby write a lot');
    await eventually(
      () => w.app.orch.db.outboxAfter(jid(w.family), 0)[0]?.status === 'sent',
      30_000,
      'the reply delivered',
    );
    const posts = w.tg.sent(w.family.id);
    assert.equal(posts.length, 3);
    for (const p of posts) assert.ok((p.text ?? '').length <= 4096, String(p.text?.length));
    const all = posts.map((p) => p.text).join('\n');
    for (const [i, para] of paragraphs.entries())
      assert.equal(all.split(para).length, 2, `paragraph ${i} once`);
    assert.equal(posts[0]?.reply_to_message?.message_id, asked.message_id);
    assert.equal(posts[1]?.reply_to_message, undefined);
    assert.deepEqual(
      w.tg.requests.filter((r) => r.method === 'sendMessage').map((r) => r.status),
      [200, 429, 200, 200],
    );
    s.assertDone();
  });

  test('a 429 on sendMessage is retried after its retry_after and the reply arrives once', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('patiently') }]);
    w.tg.fail({ method: 'sendMessage', status: 429, retryAfter: 3 });
    w.tg.say(w.family, w.owner, '@Krabby hello');
    await w.tg.waitSent((m) => m.text === 'patiently');
    assert.match(w.app.logs.join(''), /Too Many Requests: retry after 3; retry 2 in 3000 ms/);
    await eventually(() => w.app.orch.db.outboxAfter(jid(w.family), 0)[0]?.status === 'sent', 10_000, 'sent');
    assert.equal(w.tg.sent(w.family.id).length, 1);
    s.assertDone();
  });

  test('a chat that removed the bot (403) fails its reply at once, and other chats are still answered', async () => {
    const w = await world();
    const work = w.tg.addGroup('Work');
    register(w, work, 'work');
    const s = script(w, [{ reply: text('to family') }, { reply: text('to work') }]);
    w.tg.fail({
      method: 'sendMessage',
      chatId: w.family.id,
      status: 403,
      description: 'Forbidden: bot was kicked from the group chat',
      times: Number.POSITIVE_INFINITY,
    });
    w.tg.say(w.family, w.owner, '@Krabby hi');
    const row = await eventually(() => {
      const r = w.app.orch.db.outboxAfter(jid(w.family), 0)[0];
      return r?.status === 'failed' && r;
    }, 30_000);
    assert.equal(row.attempts, 1, 'a permanent error is not retried');
    assert.match(w.app.logs.join(''), /bot was kicked from the group chat; giving up after 1 tries/);
    w.tg.say(work, w.owner, '@Krabby hi');
    const reply = await w.tg.waitSent(inChat(work));
    assert.equal(reply.text, 'to work');
    assert.equal(w.tg.sent(w.family.id).length, 0);
    s.assertDone();
  });

  test('the typing action is sent while the agent works', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('done thinking', { delayMs: 900 }) }]);
    w.tg.say(w.family, w.owner, '@Krabby think');
    await w.tg.waitSent(inChat(w.family));
    const replied = w.tg.requests.find((r) => r.method === 'sendMessage' && r.status === 200);
    const typing = w.tg.actions.filter((a) => a.chatId === w.family.id && a.action === 'typing');
    assert.ok(typing.length >= 1, 'typing sent');
    assert.ok((typing[0]?.seq ?? Infinity) < (replied?.seq ?? 0), 'typing came before the reply');
    s.assertDone();
  });

  test('a teammate’s message has its name as a bold first line, and a file goes as a document', async () => {
    const w = await world();
    const db = w.app.orch.db;
    const file = path.join(w.app.home, 'groups', 'family', 'report.txt');
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, 'the report');
    db.enqueueReply({
      chatJid: jid(w.family),
      text: 'findings <ready> *now*',
      sender: 'Researcher',
      now: Date.now(),
    });
    db.enqueueReply({ chatJid: jid(w.family), text: 'here it is', file, now: Date.now() });
    db.enqueueReply({ chatJid: jid(w.family), text: 'not this', file: '/etc/hostname', now: Date.now() });
    w.app.orch.deliver();
    const named = await w.tg.waitSent((m) => m.text?.startsWith('Researcher') === true);
    assert.equal(named.text, 'Researcher\nfindings <ready> *now*');
    assert.deepEqual(named.entities, [{ type: 'bold', offset: 0, length: 'Researcher'.length }]);
    const doc = await w.tg.waitSent((m) => m.document !== undefined);
    assert.equal(doc.document?.file_name, 'report.txt');
    const upload = w.tg.requests.find((r) => r.method === 'sendDocument');
    assert.equal(upload?.file?.data.toString(), 'the report');
    await eventually(() => db.outboxAfter(jid(w.family), 0)[2]?.status === 'failed', 10_000, 'refused');
    assert.equal(w.tg.requests.filter((r) => r.method === 'sendDocument').length, 1);
    assert.match(w.app.logs.join(''), /file \/etc\/hostname is not a plain file in a group folder/);
  });

  test('/stop@bot from Telegram’s command menu is the /stop command', async () => {
    const w = await world();
    w.tg.say(w.family, w.owner, `/stop@${BOT}`);
    const reply = await w.tg.waitSent(inChat(w.family));
    assert.equal(reply.text, 'Nothing was running.');
  });
});

describe('Telegram, the channel on its own (configuration, start, errors)', () => {
  /** What the orchestrator gives a skill's channel, with real SQLite; `done` cleans up. */
  function context(
    vars: Record<string, string>,
    over: Partial<ChannelContext> = {},
  ): { ctx: ChannelContext; mains: string[]; done: () => void } {
    const home = tempHome();
    const db = openDb(':memory:');
    const mains: string[] = [];
    const ctx: ChannelContext = {
      config: loadConfig({ NANOCLAW_HOME: home, ...vars }),
      db,
      log: createLogger('error', () => {}),
      now: Date.now,
      ingest: () => ({ stored: false, reason: 'test' }),
      registerMain: (j) => mains.push(j),
      ...over,
    };
    return {
      ctx,
      mains,
      done: () => {
        db.close();
        removeHome(home);
      },
    };
  }

  /** The factory's verdict on these variables, with what it registered as main. */
  function factory(vars: Record<string, string>): { result: unknown; mains: string[] } {
    const { ctx, mains, done } = context(vars);
    try {
      return { result: telegramChannel(ctx), mains };
    } finally {
      done();
    }
  }

  function configError(vars: Record<string, string>): string {
    let message = '';
    assert.throws(
      () => factory(vars),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError, String(err));
        message = err.message;
        return true;
      },
    );
    assert.doesNotMatch(message, /\n/, 'one line');
    return message;
  }

  test('without TELEGRAM_BOT_TOKEN the channel is off', () => {
    assert.equal(factory({}).result, undefined);
  });

  test('a blank token, a main chat without its owner and a malformed id are one-line errors naming the variable', () => {
    assert.match(
      configError({ TELEGRAM_BOT_TOKEN: '  ' }),
      /^TELEGRAM_BOT_TOKEN is set but empty: .*@BotFather/,
    );
    assert.match(
      configError({ TELEGRAM_BOT_TOKEN: 'not a token' }),
      /^TELEGRAM_BOT_TOKEN does not look like/,
    );
    assert.match(
      configError({ TELEGRAM_BOT_TOKEN: TOKEN, TELEGRAM_MAIN_CHAT_ID: '-100123' }),
      /^TELEGRAM_MAIN_CHAT_ID is set but TELEGRAM_OWNER_ID is not/,
    );
    assert.match(
      configError({ TELEGRAM_BOT_TOKEN: TOKEN, TELEGRAM_MAIN_CHAT_ID: '@family', TELEGRAM_OWNER_ID: '42' }),
      /^TELEGRAM_MAIN_CHAT_ID must be a chat id .*\(got "@family"\)$/,
    );
    assert.match(
      configError({ TELEGRAM_BOT_TOKEN: TOKEN, TELEGRAM_OWNER_ID: '-42' }),
      /^TELEGRAM_OWNER_ID must be your numeric user id/,
    );
    assert.match(
      configError({ TELEGRAM_BOT_TOKEN: TOKEN, TELEGRAM_API_URL: 'ftp://example.org' }),
      /^TELEGRAM_API_URL must be an http\(s\) URL/,
    );
  });

  test('a main chat id with its owner registers telegram:<id> as main', () => {
    const { result, mains } = factory({
      TELEGRAM_BOT_TOKEN: TOKEN,
      TELEGRAM_MAIN_CHAT_ID: '-1001234567890',
      TELEGRAM_OWNER_ID: '42',
    });
    assert.equal((result as { name?: string } | undefined)?.name, 'telegram');
    assert.deepEqual(mains, ['telegram:-1001234567890']);
  });

  test('a rejected bot token stops the start with one line and a non-zero exit', async () => {
    const tg = await FakeTelegram.start({ token: TOKEN, username: BOT });
    const home = tempHome();
    const wrong = '4242424242:revoked-secret';
    try {
      writeFileSync(
        path.join(home, '.env'),
        `WEB_PORT=0\nSANDBOX=bwrap\nTELEGRAM_BOT_TOKEN=${wrong}\nTELEGRAM_API_URL=${tg.url}\n`,
      );
      const { code, stderr } = await nanoclaw(home, 'start');
      assert.equal(code, 1);
      const errors = stderr.split('\n').filter((l) => l.startsWith('nanoclaw:'));
      assert.equal(errors.length, 1, stderr);
      assert.match(
        errors[0] ?? '',
        /Telegram rejected TELEGRAM_BOT_TOKEN \(401 Unauthorized\): .*@BotFather/,
      );
      assert.ok(!stderr.includes('revoked-secret'), 'the token is never printed');
      assert.equal(tg.requests.at(-1)?.method, 'getMe');
    } finally {
      await tg.stop();
      removeHome(home);
    }
  });

  test('an unreachable Telegram fails the start as a ChannelError naming TELEGRAM_API_URL', async () => {
    const tg = await FakeTelegram.start({ token: TOKEN, username: BOT });
    const url = tg.url;
    await tg.stop(); // nothing listens there any more
    const { ctx, done } = context({ TELEGRAM_BOT_TOKEN: TOKEN, TELEGRAM_API_URL: url });
    try {
      const channel = await telegramChannel(ctx);
      assert.ok(channel);
      await assert.rejects(channel.start(), (err: unknown) => {
        assert.ok(err instanceof ChannelError);
        assert.match(
          err.message,
          /^Telegram is not reachable at http:\/\/127\.0\.0\.1:\d+ \(.*ECONNREFUSED\)/,
        );
        assert.ok(!err.message.includes('fake-secret'), 'the token is never printed');
        return true;
      });
      await channel.close();
    } finally {
      done();
    }
  });

  test('an update whose handling throws is logged with its chat id, and the next one is still taken', async () => {
    const tg = await FakeTelegram.start({ token: TOKEN, username: BOT });
    const logs: string[] = [];
    const taken: string[] = [];
    const { ctx, done } = context(
      { TELEGRAM_BOT_TOKEN: TOKEN, TELEGRAM_API_URL: tg.url },
      {
        log: createLogger('debug', (l) => logs.push(l)),
        ingest: (m) => {
          if (m.text === 'first') throw new Error('disk I/O error');
          taken.push(m.text);
          return { stored: false, reason: 'test' };
        },
      },
    );
    const channel = await telegramChannel(ctx);
    assert.ok(channel);
    try {
      await channel.start();
      const ann = tg.addUser('Ann');
      const chat = tg.addGroup('Garden');
      tg.say(chat, ann, 'first');
      tg.say(chat, ann, 'second');
      await eventually(() => taken.length > 0, 10_000, 'the second message');
      assert.deepEqual(taken, ['second']);
      assert.match(
        logs.join(''),
        new RegExp(`error telegram ${chat.id}: update \\d+ not taken: disk I/O error`),
      );
    } finally {
      await channel.stop();
      await channel.close();
      await tg.stop();
      done();
    }
  });
});
