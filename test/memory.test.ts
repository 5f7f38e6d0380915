// Memory end to end: each group's CLAUDE.md (its folder, mounted at /workspace/group) is what the
// real Claude Code CLI loads as project memory, so what an agent writes there reaches the model in
// later sessions, also after its sandbox closed and the orchestrator restarted. Every folder starts
// from templates/groups/; the global notes are writable only by the main chat; and a conversation
// resumes across a restart.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { projectRoot } from '../src/config.js';
import type { NewGroup } from '../src/db.js';
import { eventually, removeHome, startApp, type TestApp } from './support/app.js';
import {
  type FakeAnthropic,
  mcpCall,
  type RecordedRequest,
  type Script,
  startFakeAnthropic,
  text,
  toolResult,
  toolUse,
  userText,
} from './support/fake-anthropic.js';

const MAIN = 'web:main';
const SALES: NewGroup = {
  jid: 'discord:111',
  name: 'Sales',
  folder: 'sales',
  trigger: '@Krabby',
  requiresTrigger: false,
  isMain: false,
};
const TEMPLATES = path.join(projectRoot(), 'templates', 'groups');
const template = (name: 'main' | 'group' | 'global') =>
  readFileSync(path.join(TEMPLATES, name, 'CLAUDE.md'), 'utf8');

let fake: FakeAnthropic;
before(async () => {
  fake = await startFakeAnthropic();
});
after(async () => {
  await fake.close();
});

const running = new Set<TestApp>();
const homes = new Set<string>();

async function start(script: Script, opts: { home?: string; env?: Record<string, string> } = {}) {
  const app = await startApp({ baseUrl: script.baseUrl, ...opts });
  running.add(app);
  homes.add(app.home);
  return app;
}

async function stop(app: TestApp): Promise<void> {
  if (running.delete(app)) await app.stop();
}

afterEach(async () => {
  for (const app of [...running]) await stop(app);
  for (const home of homes) removeHome(home);
  homes.clear();
});

let platformIds = 0;
/** A message in `chat`: posted to the web chat, or ingested as a Discord message. */
async function say(app: TestApp, chat: string, words: string): Promise<void> {
  if (chat === MAIN) {
    assert.equal((await app.post(words)).status, 202);
    return;
  }
  const r = app.orch.ingest({
    chatJid: chat,
    chatName: app.orch.db.group(chat)?.name ?? chat,
    platformId: `msg-${++platformIds}`,
    sender: 'u-ana',
    senderName: 'Ana',
    text: words,
    at: Date.now(),
  });
  assert.equal(r.stored, true);
}

async function replied(app: TestApp, words: string, chat = MAIN): Promise<void> {
  await eventually(
    () => app.orch.db.outboxAfter(chat, 0).some((r) => r.text === words),
    60_000,
    `"${words}" in ${chat}`,
  );
}

const file = (app: TestApp, ...parts: string[]) => path.join(app.home, 'groups', ...parts);

/** The main requests of `script` whose new turn carries `words`. */
function asked(script: Script, words: string): RecordedRequest {
  const hits = script.requests.filter((r) => r.kind === 'main' && r.lastUserText().includes(words));
  assert.equal(hits.length, 1, `one request asking "${words}"`);
  return hits[0] as RecordedRequest;
}

/** The text blocks of a message's content. */
function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content.map((b: { text?: unknown }) => (typeof b?.text === 'string' ? b.text : '')).join('\n');
}

/** Everything a request shows the model: its system blocks and every message, tool calls included. */
function requestText(r: RecordedRequest): string {
  return `${r.systemText()}\n${JSON.stringify(r.messages())}`;
}

/**
 * What the CLI gives the model as the project memory from /workspace/group/CLAUDE.md: the newest
 * copy of that file quoted in a user message's system reminder. A new session quotes it in its
 * first message; a resumed one keeps that copy and, when the file changed since, quotes the file
 * again in the new turn ("Instruction files were re-read…"), replacing the earlier copy.
 */
function groupMemory(r: RecordedRequest): string {
  const quoted = /Contents of \/workspace\/group\/CLAUDE\.md \([^)]*\):\n\n([\s\S]*?)\n*<\/system-reminder>/g;
  const copies = r
    .messages()
    .filter((m) => m.role === 'user')
    .flatMap((m) => [...textOf(m.content).matchAll(quoted)].map((x) => x[1] ?? ''));
  assert.ok(copies.length > 0, `request #${r.n} carries /workspace/group/CLAUDE.md as memory`);
  return copies.at(-1) as string;
}

/** The one result `tool` gave in this script. */
function resultOf(script: Script, tool: string) {
  const all = script.requests.flatMap((r) => r.toolResults().filter((t) => t.toolName === tool));
  assert.equal(all.length, 1, `one result of ${tool}: ${JSON.stringify(all)}`);
  return all[0] as NonNullable<(typeof all)[number]>;
}

test('a line the agent adds to its CLAUDE.md reaches the model in a later session, after the sandbox closed and the orchestrator restarted', async () => {
  const script = fake.script('remember', [
    // printf builds the line, so the words never appear in the transcript, only in the file.
    {
      when: userText(/remember that my favourite colour is blue/),
      reply: toolUse('Bash', {
        command:
          "printf '\\n## Preferences\\n\\nfavourite %s: %s\\n' colour blue >> /workspace/group/CLAUDE.md",
      }),
    },
    { when: toolResult('Bash'), reply: text('Noted in my memory.') },
    { when: userText(/which colour do I like/), reply: text('Blue.') },
  ]);
  const env = { IDLE_TIMEOUT_MS: '300' };
  const first = await start(script, { env });
  await say(first, MAIN, 'remember that my favourite colour is blue');
  await replied(first, 'Noted in my memory.');
  assert.match(readFileSync(file(first, 'main', 'CLAUDE.md'), 'utf8'), /\nfavourite colour: blue\n$/);
  await eventually(() => first.orch.queue.snapshot().live.length === 0, 20_000, 'the idle close');
  assert.match(first.logs.join(''), /group main: idle for 300 ms, closing the agent/);
  for (const r of script.requests) {
    assert.doesNotMatch(requestText(r), /favourite colour: blue/, `request #${r.n} of the first session`);
  }
  await stop(first);

  const second = await start(script, { home: first.home, env });
  await say(second, MAIN, 'which colour do I like?');
  await replied(second, 'Blue.');
  assert.equal(
    groupMemory(asked(script, 'which colour do I like')),
    `${template('main')}\n## Preferences\n\nfavourite colour: blue`,
  );
  script.assertDone();
});

test("every group's CLAUDE.md starts from templates/groups: main's with its admin powers, a registered group's, and the global notes", async () => {
  const script = fake.script('templates', [
    ...mcpCall('nanoclaw', 'register_group', {
      chat: SALES.jid,
      name: SALES.name,
      folder: SALES.folder,
      requires_trigger: false,
    }),
    { when: toolResult('mcp__nanoclaw__register_group'), reply: text('Sales is registered.') },
    { when: userText(/how are the deals/), reply: text('Two deals are open.') },
  ]);
  const app = await start(script);
  // At start: main's folder and the global notes.
  const main = readFileSync(file(app, 'main', 'CLAUDE.md'), 'utf8');
  assert.equal(main, template('main'));
  assert.match(main, /## Admin powers[\s\S]*`register_group`[\s\S]*`send_message` with `chat`/);
  assert.equal(readFileSync(file(app, 'global', 'CLAUDE.md'), 'utf8'), template('global'));
  assert.equal(existsSync(file(app, 'sales')), false);

  await say(app, MAIN, 'please register the Sales chat');
  await replied(app, 'Sales is registered.');
  assert.match(resultOf(script, 'mcp__nanoclaw__register_group').content, /registered discord:111/);
  // Registered, before any message of its own: the group template, not main's.
  assert.equal(readFileSync(file(app, 'sales', 'CLAUDE.md'), 'utf8'), template('group'));
  assert.notEqual(template('group'), template('main'));

  await say(app, SALES.jid, 'how are the deals?');
  await replied(app, 'Two deals are open.', SALES.jid);
  // What each agent was given as its memory is its own folder's template.
  assert.equal(groupMemory(asked(script, 'please register the Sales chat')), template('main').trimEnd());
  assert.equal(groupMemory(asked(script, 'how are the deals')), template('group').trimEnd());
  script.assertDone();
});

test('a non-main group cannot change the global memory: appending and creating a file there fail as read-only', async () => {
  const script = fake.script('global-ro', [
    {
      when: userText(/note this for everyone/),
      reply: toolUse('Bash', { command: 'echo x >> /workspace/global/CLAUDE.md' }),
    },
    {
      when: toolResult('Bash'),
      reply: toolUse('Write', { file_path: '/workspace/global/planted.md', content: 'from sales\n' }),
    },
    { when: toolResult('Write'), reply: text('I cannot write the shared notes.') },
  ]);
  const app = await start(script);
  app.orch.db.addGroup(SALES, Date.now());
  const globalMemory = file(app, 'global', 'CLAUDE.md');
  const before = readFileSync(globalMemory, 'utf8');

  await say(app, SALES.jid, 'note this for everyone');
  await replied(app, 'I cannot write the shared notes.', SALES.jid);
  const bash = resultOf(script, 'Bash');
  assert.match(bash.content, /Read-only file system/, JSON.stringify(bash));
  assert.equal(bash.is_error, true);
  const write = resultOf(script, 'Write');
  assert.match(write.content, /EROFS|read-only file system/i, JSON.stringify(write));
  assert.equal(write.is_error, true);
  assert.equal(readFileSync(globalMemory, 'utf8'), before);
  assert.deepEqual(readdirSync(file(app, 'global')), ['CLAUDE.md'], 'no new file, not even a temporary one');
  script.assertDone();
});

test('the main chat can write the global memory, and the change appears on the host', async () => {
  const script = fake.script('global-rw', [
    {
      when: userText(/share this with every chat/),
      reply: toolUse('Bash', {
        command: "echo 'Office closed on Fridays.' >> /workspace/global/CLAUDE.md && echo done",
      }),
    },
    { when: toolResult('Bash'), reply: text('Shared.') },
  ]);
  const app = await start(script);
  const globalMemory = file(app, 'global', 'CLAUDE.md');
  assert.equal(readFileSync(globalMemory, 'utf8'), template('global'));

  await say(app, MAIN, 'share this with every chat: the office is closed on Fridays');
  await replied(app, 'Shared.');
  const bash = resultOf(script, 'Bash');
  assert.equal(bash.is_error, undefined, JSON.stringify(bash));
  assert.equal(readFileSync(globalMemory, 'utf8'), `${template('global')}Office closed on Fridays.\n`);
  script.assertDone();
});

test('after an orchestrator restart the next message resumes the same Claude session, with the earlier turn', async () => {
  const script = fake.script('resume', [
    { when: userText(/the code word is pelican/), reply: text('Got it, pelican.') },
    { when: userText(/what was the code word/), reply: text('It was pelican.') },
  ]);
  const first = await start(script);
  await say(first, MAIN, 'the code word is pelican');
  await replied(first, 'Got it, pelican.');
  const session = first.orch.db.session('main')?.id;
  assert.match(session ?? '', /^[0-9a-f-]{36}$/);
  await stop(first);

  const second = await start(script, { home: first.home });
  await say(second, MAIN, 'what was the code word?');
  await replied(second, 'It was pelican.');
  assert.match(second.logs.join(''), new RegExp(`group main: agent starting in bwrap, resuming ${session}`));
  const earlier = asked(script, 'the code word is pelican');
  const later = asked(script, 'what was the code word');
  assert.equal(earlier.sessionId(), session);
  assert.equal(later.sessionId(), session);
  const history = later.messages().filter((m) => m.role === 'user' || m.role === 'assistant');
  const said = history.map((m) => `${m.role}: ${JSON.stringify(m.content)}`).join('\n');
  assert.match(
    said,
    /user: .*the code word is pelican[\s\S]*assistant: .*Got it, pelican\.[\s\S]*user: .*what was the code word\?/,
  );
  script.assertDone();
});
