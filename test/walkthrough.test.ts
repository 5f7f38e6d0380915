// The README's walk-through, followed as a newcomer would: the quick start is two command lines
// (one installs and starts, one tests), and Discord is `npx nanoclaw setup` with the line the
// README gives, after which the assistant answers in the web chat and in the Discord main channel.
// Only what lives on the internet is swapped: the model and Discord are the local fakes.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { projectRoot } from '../src/config.js';
import { openDb } from '../src/db.js';
import { eventually, postJson, REAL_KEY, removeHome, spawnApp, tempHome } from './support/app.js';
import { type FakeAnthropic, startFakeAnthropic, text } from './support/fake-anthropic.js';
import { FakeDiscord } from './support/fake-discord.js';

const ROOT = projectRoot();
const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');

/** The fenced sh blocks of a README section (up to the next `## `). */
function shBlocks(heading: string): string[] {
  const start = README.indexOf(`\n## ${heading}\n`);
  assert.ok(start >= 0, `the README has a "${heading}" section`);
  const end = README.indexOf('\n## ', start + 1);
  const section = README.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => (m[1] ?? '').trim());
}

let model: FakeAnthropic;
before(async () => {
  model = await startFakeAnthropic();
});
after(async () => {
  await model.close();
});

test('the quick start is two command lines: one installs and starts the assistant, one runs the tests', () => {
  const blocks = shBlocks('Quick start');
  assert.equal(blocks.length, 2);
  const [install, tests] = blocks as [string, string];
  assert.equal(install.split('\n').length, 1, 'one line');
  const steps = install.split('&&').map((s) => s.trim());
  assert.ok(
    steps.some((s) => /apt-get install -y .*\bbubblewrap\b/.test(s)),
    'installs bubblewrap',
  );
  assert.equal(steps.at(-2), 'npm ci');
  assert.equal(steps.at(-1), 'npm start');
  assert.equal(tests, 'npm test');
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  assert.equal(pkg.scripts.start, 'npm run build && node dist/src/cli.js start');
  assert.equal(pkg.bin.nanoclaw, 'dist/src/cli.js');
  assert.match(README, /open\s+<http:\/\/127\.0\.0\.1:3000\/>/);
});

test('following the README, setup connects Discord and the assistant answers in the web chat and the Discord main channel', async () => {
  const line = /`(npx nanoclaw setup --non-interactive [^`]+)`/.exec(README)?.[1];
  assert.ok(line, 'the README gives the non-interactive setup line');
  const discord = await FakeDiscord.start();
  const token = 'walkthrough-bot-token';
  const bot = discord.addBot(token, 'Krabby');
  const owner = discord.addUser('owner');
  const guild = discord.addGuild('Home');
  const mainId = discord.addTextChannel(guild.id, 'admin').id;
  const home = tempHome();
  let app: Awaited<ReturnType<typeof spawnApp>> | undefined;
  try {
    // The README's placeholders, in order: the key, the bot token, the channel, the owner.
    const answers = [REAL_KEY, token, mainId, owner.id];
    const args = line
      .split(/\s+/)
      .slice(2)
      .map((a) => (a === '…' ? (answers.shift() ?? assert.fail('more placeholders than answers')) : a));
    assert.deepEqual(answers, [], 'every answer has its placeholder');
    const setup = await promisify(execFile)('npx', ['--no-install', 'nanoclaw', ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, NANOCLAW_HOME: home, SANDBOX: 'bwrap' },
      timeout: 120_000,
    });
    assert.match(setup.stdout, /discord:\d+/, setup.stdout);
    assert.equal(statSync(path.join(home, '.env')).mode & 0o777, 0o600);

    // Only the endpoints on the internet are ours; everything else is what setup wrote.
    model.script('walkthrough', [{ reply: text('hello from the web') }, { reply: text('hello on Discord') }]);
    app = await spawnApp(home, {
      ANTHROPIC_BASE_URL: `${model.baseUrl}/s/walkthrough`,
      DISCORD_API_URL: discord.api,
      WEB_PORT: '0',
      SANDBOX: 'bwrap',
      CLAUDE_CODE_MAX_RETRIES: '0',
    });
    const running = app;
    await postJson(running.port, '/api/messages', { text: 'hi', id: 'w1' });
    await eventually(
      () => outbox(home, 'web:main').includes('hello from the web'),
      60_000,
      'the web reply',
    ).catch((err) => assert.fail(`${(err as Error).message}\n${running.stderr()}`));

    discord.injectMessage({ channelId: mainId, author: owner, content: 'hello, are you there?' });
    const reply = await discord.nextMessage((m) => m.author.id === bot.id);
    assert.equal(reply.content, 'hello on Discord');
    assert.deepEqual(outbox(home, `discord:${mainId}`), ['hello on Discord']);
  } finally {
    app?.child.kill('SIGKILL');
    await app?.exited;
    await discord.stop();
    removeHome(home);
  }
});

function outbox(home: string, chat: string): string[] {
  const db = openDb(path.join(home, 'store', 'messages.db'));
  try {
    return db.outboxAfter(chat, 0).map((r) => r.text);
  } finally {
    db.close();
  }
}
