// Discord end to end: the real discord.js client against the fake Discord server, the real
// orchestrator, real bwrap sandboxes and the real Agent SDK against the fake model.
import assert from 'node:assert/strict';
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import type { APIMessage, APIUser } from 'discord.js';
import {
  eventually,
  nanoclaw,
  removeHome,
  request,
  startApp,
  type TestApp,
  tempHome,
} from './support/app.js';
import { type FakeAnthropic, startFakeAnthropic, text } from './support/fake-anthropic.js';
import { FakeDiscord } from './support/fake-discord.js';

const TOKEN = 'fake-bot-token';
let model: FakeAnthropic;
before(async () => {
  model = await startFakeAnthropic();
});
after(async () => {
  await model.close();
});

interface World {
  discord: FakeDiscord;
  bot: APIUser;
  owner: APIUser;
  stranger: APIUser;
  guildId: string;
  channelId: string;
  mainId: string;
  app: TestApp;
}

let n = 0;
let current: World | undefined;
async function world(opts: { env?: Record<string, string>; botPermissions?: bigint } = {}): Promise<World> {
  const discord = await FakeDiscord.start();
  const bot = discord.addBot(TOKEN, 'Krabby');
  const owner = discord.addUser('owner');
  const stranger = discord.addUser('stranger');
  const guild = discord.addGuild(
    'Home',
    opts.botPermissions === undefined ? {} : { botPermissions: opts.botPermissions },
  );
  const channelId = discord.addTextChannel(guild.id, 'family').id;
  const mainId = discord.addTextChannel(guild.id, 'admin').id;
  const key = `discord-${++n}`;
  const app = await startApp({
    baseUrl: `${model.baseUrl}/s/${key}`,
    env: {
      DISCORD_BOT_TOKEN: TOKEN,
      DISCORD_API_URL: discord.api,
      DISCORD_MAIN_CHANNEL_ID: mainId,
      DISCORD_OWNER_ID: owner.id,
      ...opts.env,
    },
    discord: { typingIntervalMs: 150 },
  });
  app.orch.db.addGroup(
    {
      jid: `discord:${channelId}`,
      name: 'Family',
      folder: 'family',
      trigger: '@Krabby',
      requiresTrigger: true,
      isMain: false,
    },
    Date.now(),
  );
  current = { discord, bot, owner, stranger, guildId: guild.id, channelId, mainId, app };
  return current;
}

/** The fake model's script for the current world's app. */
function script(_w: World, steps: Parameters<FakeAnthropic['script']>[1]) {
  return model.script(`discord-${n}`, steps);
}

const fromBot = (w: World) => (m: APIMessage) => m.author.id === w.bot.id && !m.webhook_id;

afterEach(async () => {
  if (!current) return;
  await current.app.stop();
  await current.discord.stop();
  removeHome(current.app.home);
  current = undefined;
});

describe('Discord', () => {
  test('a trigger in a guild channel gets a reply that references it, with a nonce', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('hello family') }]);
    const asked = w.discord.injectMessage({
      channelId: w.channelId,
      author: w.owner,
      content: '@Krabby hi there',
    });
    const reply = await w.discord.nextMessage(fromBot(w));
    assert.equal(reply.content, 'hello family');
    assert.equal(reply.message_reference?.message_id, asked.id);
    const post = w.discord.requests.find(
      (r) => r.method === 'POST' && r.path.endsWith(`/channels/${w.channelId}/messages`),
    );
    const body = post?.body as {
      nonce?: string;
      enforce_nonce?: boolean;
      allowed_mentions?: { parse: string[] };
    };
    assert.ok(body.nonce, 'a nonce');
    assert.equal(body.enforce_nonce, true);
    assert.deepEqual(body.allowed_mentions?.parse, []);
    assert.match(s.requests[0]?.lastUserText() ?? '', /sender="owner"[^>]*>@Krabby hi there</);
    s.assertDone();
  });

  test('a DM registered without a trigger is answered in the DM', async () => {
    const w = await world();
    const dm = w.discord.addDM(w.owner, TOKEN).id;
    w.app.orch.db.addGroup(
      {
        jid: `discord:${dm}`,
        name: 'DM',
        folder: 'dm',
        trigger: '@Krabby',
        requiresTrigger: false,
        isMain: false,
      },
      Date.now(),
    );
    const s = script(w, [{ reply: text('hi in private') }]);
    w.discord.injectMessage({ channelId: dm, author: w.owner, content: 'just talking' });
    const reply = await w.discord.nextMessage((m) => fromBot(w)(m) && m.channel_id === dm);
    assert.equal(reply.content, 'hi in private');
    s.assertDone();
  });

  test('an @mention of the bot counts as the trigger', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('you called') }]);
    w.discord.injectMessage({
      channelId: w.channelId,
      author: w.owner,
      content: `<@${w.bot.id}> ping`,
      mentions: [w.bot],
    });
    const reply = await w.discord.nextMessage(fromBot(w));
    assert.equal(reply.content, 'you called');
    s.assertDone();
  });

  test('a message in a thread under a registered channel is answered in the thread', async () => {
    const w = await world();
    const thread = w.discord.addThread(w.channelId, 'planning').id;
    const s = script(w, [{ reply: text('in the thread') }]);
    w.discord.injectMessage({ channelId: thread, author: w.owner, content: '@Krabby plan it' });
    const reply = await w.discord.nextMessage(fromBot(w));
    assert.equal(reply.channel_id, thread);
    assert.equal(reply.content, 'in the thread');
    s.assertDone();
  });

  test('a message in an unregistered channel is not stored, only the channel is remembered', async () => {
    const w = await world();
    const unregistered = w.discord.addTextChannel(w.guildId, 'random').id;
    w.discord.injectMessage({ channelId: unregistered, author: w.owner, content: '@Krabby anyone?' });
    const jid = `discord:${unregistered}`;
    const raw = w.app.orch.db.raw;
    await eventually(() => raw.prepare('SELECT 1 FROM chats WHERE jid = ?').get(jid) !== undefined, 10_000);
    assert.deepEqual(raw.prepare('SELECT name, channel FROM chats WHERE jid = ?').get(jid), {
      name: '#random',
      channel: 'discord',
    });
    assert.equal(w.app.orch.db.messagesAfter(jid, 0).length, 0);
  });

  test('an untriggered message is stored, not answered, and is in the next triggered prompt', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('noted both') }]);
    w.discord.injectMessage({
      channelId: w.channelId,
      author: w.stranger,
      content: 'the meeting moved to 5pm',
    });
    await eventually(
      () => w.app.orch.db.messagesAfter(`discord:${w.channelId}`, 0).length === 1,
      10_000,
      'stored',
    );
    w.discord.injectMessage({
      channelId: w.channelId,
      author: w.owner,
      content: '@Krabby when is the meeting?',
    });
    await w.discord.nextMessage(fromBot(w));
    assert.equal(s.requests.filter((r) => r.kind === 'main').length, 1);
    assert.match(s.requests[0]?.lastUserText() ?? '', /meeting moved to 5pm[\s\S]*when is the meeting/);
    s.assertDone();
  });

  test('an attachment is downloaded into the group folder under a safe name and named in the prompt', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('got the file') }]);
    w.discord.injectMessage({
      channelId: w.channelId,
      author: w.owner,
      content: '@Krabby read this',
      attachments: [{ filename: '../../etc/evil name?.txt', data: Buffer.from('attached bytes') }],
    });
    await w.discord.nextMessage(fromBot(w));
    const dir = path.join(w.app.home, 'groups', 'family', 'attachments');
    const files = readdirSync(dir);
    assert.equal(files.length, 1);
    assert.match(files[0] ?? '', /^\d+-evil name_\.txt$/);
    assert.equal(readFileSync(path.join(dir, files[0] ?? ''), 'utf8'), 'attached bytes');
    assert.match(
      s.requests[0]?.lastUserText() ?? '',
      new RegExp(`<attachment path="/workspace/group/attachments/${files[0]}"/>`),
    );
    s.assertDone();
  });

  test('an attachments folder that is a symlink is never written through', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('answered anyway') }]);
    const elsewhere = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-elsewhere-'));
    mkdirSync(path.join(w.app.home, 'groups', 'family'), { recursive: true });
    symlinkSync(elsewhere, path.join(w.app.home, 'groups', 'family', 'attachments'));
    w.discord.injectMessage({
      channelId: w.channelId,
      author: w.owner,
      content: '@Krabby here',
      attachments: [{ filename: 'x.txt', data: Buffer.from('planted') }],
    });
    await w.discord.nextMessage(fromBot(w));
    assert.deepEqual(readdirSync(elsewhere), []);
    assert.match(w.app.logs.join(''), /attachments of \d+ not stored/);
    rmSync(elsewhere, { recursive: true, force: true });
    s.assertDone();
  });

  test('a 4,500-character reply arrives as three posts of at most 2000 characters, fences intact', async () => {
    const w = await world();
    const code = Array.from({ length: 60 }, (_, i) => `const line${i} = ${i};`).join('\n');
    const prose = Array.from({ length: 3 }, (_, i) => `Paragraph ${i}. ${'word '.repeat(108).trim()}.`).join(
      '\n\n',
    );
    const long = `${prose}\n\n\`\`\`ts\n${code}\n\`\`\`\n\n${prose}`;
    assert.ok(long.length > 4400 && long.length < 4700, String(long.length));
    const s = script(w, [{ reply: text(long) }]);
    w.discord.injectMessage({ channelId: w.channelId, author: w.owner, content: '@Krabby write a lot' });
    await eventually(
      () => w.discord.messages(w.channelId).filter(fromBot(w)).length >= 3,
      20_000,
      'three posts',
    );
    const posts = w.discord.messages(w.channelId).filter(fromBot(w));
    assert.equal(posts.length, 3);
    for (const p of posts) {
      assert.ok(p.content.length <= 2000);
      assert.equal((p.content.match(/^```/gm) ?? []).length % 2, 0, 'balanced fences');
    }
    s.assertDone();
  });

  test('the typing indicator is sent repeatedly while the agent works', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('done thinking', { delayMs: 900 }) }]);
    w.discord.injectMessage({ channelId: w.channelId, author: w.owner, content: '@Krabby think' });
    await w.discord.nextMessage(fromBot(w));
    assert.ok(w.discord.typing(w.channelId) >= 2, `typing sent ${w.discord.typing(w.channelId)} times`);
    s.assertDone();
  });

  test('a message sent while the connection is down is answered once after the resume', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('still here') }]);
    w.discord.dropConnections();
    w.discord.injectMessage({ channelId: w.channelId, author: w.owner, content: '@Krabby are you there?' });
    await w.discord.nextMessage(fromBot(w), 20_000);
    await eventually(() => w.app.orch.queue.snapshot().live.every((l) => l.idle), 10_000);
    assert.equal(w.discord.messages(w.channelId).filter(fromBot(w)).length, 1);
    s.assertDone();
  });

  test('the status API says whether Discord is connected', async () => {
    const w = await world();
    const channels = async () =>
      (
        JSON.parse((await request(w.app.port, 'GET', '/api/status', undefined)).text) as {
          channels: Record<string, string>;
        }
      ).channels;
    /** The channels once Discord is `state` (the client reconnects on its own time). */
    const when = async (state: string) => {
      for (let i = 0; i < 500; i++) {
        const c = await channels();
        if (c.discord === state) return c;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.fail(`discord never ${state}: ${JSON.stringify(await channels())}`);
    };
    assert.deepEqual(await when('up'), { web: 'up', discord: 'up' });
    w.discord.refuseGateway = true;
    w.discord.dropConnections();
    await when('down');
    w.discord.refuseGateway = false;
    await when('up');
  });

  test('after an invalidated session the missed message is fetched and answered once', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('first') }, { reply: text('caught up') }]);
    w.discord.injectMessage({ channelId: w.channelId, author: w.owner, content: '@Krabby one' });
    await w.discord.nextMessage(fromBot(w));
    w.discord.invalidateSessions();
    w.discord.dropConnections();
    w.discord.injectMessage({ channelId: w.channelId, author: w.owner, content: '@Krabby two' });
    const reply = await w.discord.nextMessage((m) => fromBot(w)(m) && m.content === 'caught up', 30_000);
    assert.ok(reply);
    assert.equal(w.discord.messages(w.channelId).filter(fromBot(w)).length, 2);
    assert.match(w.app.logs.join(''), /fetched 1 missed messages/);
    s.assertDone();
  });

  test("regression: a scheduled task's prompt stored last in the chat does not stop the catch-up", async () => {
    const w = await world();
    const s = script(w, [{ reply: text('first') }, { reply: text('caught up') }]);
    w.discord.injectMessage({ channelId: w.channelId, author: w.owner, content: '@Krabby one' });
    const first = await w.discord.nextMessage(fromBot(w));
    // Our own post comes back through the gateway and is stored; then the task's row is the newest.
    await eventually(
      () => w.app.orch.db.lastPlatformId(`discord:${w.channelId}`) === first.id,
      10_000,
      'our post stored',
    );
    // What the scheduler stores for a group-context run: the newest row, with no Discord id.
    const { id } = w.app.orch.db.insertMessage({
      chatJid: `discord:${w.channelId}`,
      platformId: 'task-run-1',
      sender: 'scheduler',
      senderName: 'Scheduled task t-1',
      text: 'a task prompt',
      at: Date.now(),
      isBot: false,
      fromMe: false,
      mayWake: false,
    });
    w.app.orch.db.advanceCursor(`discord:${w.channelId}`, id);
    w.discord.invalidateSessions();
    w.discord.dropConnections();
    w.discord.injectMessage({ channelId: w.channelId, author: w.owner, content: '@Krabby two' });
    const reply = await w.discord.nextMessage((m) => fromBot(w)(m) && m.content === 'caught up', 30_000);
    assert.ok(reply);
    assert.match(w.app.logs.join(''), /fetched 1 missed messages/);
    s.assertDone();
  });

  test('a post stored by Discord but answered with 500 exists exactly once after the retry', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('only once') }]);
    w.discord.fail({
      method: 'POST',
      path: /\/channels\/\d+\/messages$/,
      status: 500,
      times: 4,
      afterStore: true,
    });
    w.discord.injectMessage({ channelId: w.channelId, author: w.owner, content: '@Krabby say it once' });
    await eventually(
      () => w.app.orch.db.outboxAfter(`discord:${w.channelId}`, 0)[0]?.status === 'sent',
      30_000,
      'sent',
    );
    assert.equal(w.discord.messages(w.channelId).filter(fromBot(w)).length, 1);
    s.assertDone();
  });

  test('a message can be posted under a sender name through a webhook, with a prefix in a DM, and a file', async () => {
    const w = await world();
    const db = w.app.orch.db;
    const jid = `discord:${w.channelId}`;
    db.enqueueReply({ chatJid: jid, text: 'findings ready', sender: 'Researcher', now: Date.now() });
    const dm = w.discord.addDM(w.owner, TOKEN).id;
    db.addGroup(
      {
        jid: `discord:${dm}`,
        name: 'DM',
        folder: 'dm',
        trigger: '@Krabby',
        requiresTrigger: false,
        isMain: false,
      },
      Date.now(),
    );
    db.enqueueReply({
      chatJid: `discord:${dm}`,
      text: 'from the team',
      sender: 'Researcher',
      now: Date.now(),
    });
    const file = path.join(w.app.home, 'groups', 'family', 'report.txt');
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, 'the report');
    db.enqueueReply({ chatJid: jid, text: 'here it is', file, now: Date.now() });
    w.app.orch.deliver();
    const hooked = await w.discord.nextMessage(
      (m) => m.webhook_id !== undefined && m.content === 'findings ready',
    );
    assert.equal(hooked.author.username, 'Researcher');
    const prefixed = await w.discord.nextMessage((m) => m.channel_id === dm && m.author.id === w.bot.id);
    assert.equal(prefixed.content, '**Researcher:** from the team');
    const withFile = await w.discord.nextMessage((m) => m.content === 'here it is');
    assert.equal(withFile.attachments.length, 1);
    const upload = w.discord.requests.find((r) => r.files.length > 0);
    assert.equal(upload?.files[0]?.data.toString(), 'the report');
  });

  test('bots, its own webhook posts and a non-owner in the main chat never wake the agent', async () => {
    const w = await world();
    const s = script(w, [{ reply: text('only the owner') }]);
    const otherBot = w.discord.addBot('other-bot-token', 'Helper');
    const main = `discord:${w.mainId}`;
    w.discord.injectMessage({ channelId: w.mainId, author: otherBot, content: '@Krabby I am a bot' });
    w.discord.injectMessage({
      channelId: w.mainId,
      author: w.stranger,
      content: '@Krabby I am not the owner',
    });
    w.app.orch.db.enqueueReply({ chatJid: main, text: 'team post', sender: 'Researcher', now: Date.now() });
    w.app.orch.deliver();
    await eventually(() => w.app.orch.db.messagesAfter(main, 0).length === 3, 10_000, 'three stored');
    const stored = w.app.orch.db.messagesAfter(main, 0);
    assert.ok(stored.find((m) => m.text.includes('team post'))?.fromMe, 'own webhook post recognised');
    w.discord.injectMessage({ channelId: w.mainId, author: w.owner, content: 'hello' });
    await w.discord.nextMessage((m) => fromBot(w)(m) && m.channel_id === w.mainId);
    assert.equal(s.requests.filter((r) => r.kind === 'main').length, 1, 'only the owner woke it');
    s.assertDone();
  });
});

test('an invalid bot token stops the start with one line and a non-zero exit', async () => {
  const discord = await FakeDiscord.start();
  discord.addBot(TOKEN, 'Krabby');
  discord.setTokenValid(TOKEN, false);
  const home = tempHome();
  try {
    writeFileSync(
      path.join(home, '.env'),
      `WEB_PORT=0\nSANDBOX=bwrap\nDISCORD_BOT_TOKEN=${TOKEN}\nDISCORD_API_URL=${discord.api}\n`,
    );
    const { code, stderr } = await nanoclaw(home, 'start');
    assert.equal(code, 1);
    const errors = stderr.split('\n').filter((l) => l.startsWith('nanoclaw:'));
    assert.equal(errors.length, 1, stderr);
    assert.match(errors[0] ?? '', /Discord rejected DISCORD_BOT_TOKEN/);
  } finally {
    await discord.stop();
    removeHome(home);
  }
});
