// Scheduled tasks end to end: the model (scripted) calls the `nanoclaw` tools from a real sandboxed
// Claude Code CLI, the task lands in the store with its schedule, and the fake clock decides when
// it fires: a group-context task wakes its chat's agent with a "Scheduled task <id>" message, an
// isolated one runs in a fresh one-shot session. Plus who may do what, and a restart mid-run.
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import type { NewGroup } from '../src/db.js';
import { type Task, type TaskStore, taskStore } from '../src/scheduler.js';
import { eventually, removeHome, startApp, type TestApp } from './support/app.js';
import { FakeClock } from './support/clock.js';
import {
  type FakeAnthropic,
  hang,
  mcpCall,
  type RecordedRequest,
  type Script,
  type Step,
  startFakeAnthropic,
  type ToolResult,
  text,
  toolResult,
  toolUse,
  toolUses,
  userText,
} from './support/fake-anthropic.js';

const TZ = 'Europe/Berlin';
const MAIN = 'web:main';
const SALES: NewGroup = {
  jid: 'discord:111',
  name: 'Sales',
  folder: 'sales',
  trigger: '@Krabby',
  requiresTrigger: true,
  isMain: false,
};
const SUPPORT: NewGroup = { ...SALES, jid: 'discord:222', name: 'Support', folder: 'support' };
const MAIN_ONLY = ['list_groups', 'register_group', 'unregister_group'];
const EVERY_GROUP = [
  'send_message',
  'schedule_task',
  'list_tasks',
  'update_task',
  'pause_task',
  'resume_task',
  'cancel_task',
];

const at = (iso: string): number => Date.parse(iso);
/** The full name Claude Code gives a `nanoclaw` tool. */
const nc = (tool: string): string => `mcp__nanoclaw__${tool}`;

let fake: FakeAnthropic;
before(async () => {
  fake = await startFakeAnthropic();
});
after(async () => {
  await fake.close();
});

interface World {
  app: TestApp;
  clock: FakeClock;
  tasks: TaskStore;
  model: Script;
}

const running = new Set<TestApp>();
const homes = new Set<string>();
let worlds = 0;

/**
 * An app on a fake clock starting at `startIso`, with its own script of the fake model. With
 * `restartOf`, a new app on the same home and script (a restart).
 */
async function world(startIso: string, steps: Step[], restartOf?: World): Promise<World> {
  const clock = new FakeClock(at(startIso));
  const model = fake.script(restartOf?.model.key ?? `tasks-${++worlds}`, steps);
  const app = await startApp({
    baseUrl: model.baseUrl,
    env: { TIMEZONE: TZ },
    clock,
    ...(restartOf ? { home: restartOf.app.home } : {}),
  });
  running.add(app);
  homes.add(app.home);
  return { app, clock, tasks: taskStore(app.orch.db), model };
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
/** A chat message from the owner: posted to the web chat, or ingested as a Discord message. */
async function say(w: World, chat: string, words: string): Promise<void> {
  if (chat === MAIN) {
    assert.equal((await w.app.post(words)).status, 202);
    return;
  }
  const r = w.app.orch.ingest({
    chatJid: chat,
    chatName: w.app.orch.db.group(chat)?.name ?? chat,
    platformId: `msg-${++platformIds}`,
    sender: 'u-ana',
    senderName: 'Ana',
    text: words,
    at: w.clock.now(),
  });
  assert.equal(r.stored, true);
}

function replies(w: World, chat = MAIN): string[] {
  return w.app.orch.db.outboxAfter(chat, 0).map((r) => r.text);
}

async function replied(w: World, words: string, chat = MAIN): Promise<void> {
  await eventually(() => replies(w, chat).includes(words), 30_000, `"${words}" in ${chat}`);
}

/** Messages the scheduler stored in a chat (the prompts of group-context runs). */
function schedulerMessages(w: World, chat = MAIN) {
  return w.app.orch.db.messagesAfter(chat, 0).filter((m) => m.sender === 'scheduler');
}

/** The results of `tool` in one request (the new turn's tool_result blocks). */
function resultsIn(req: RecordedRequest, tool: string): ToolResult[] {
  return req.toolResults().filter((r) => r.toolName === nc(tool));
}

/** The one result the model received for `tool` in this script. */
function resultOf(model: Script, tool: string): ToolResult {
  const all = model.requests.flatMap((r) => resultsIn(r, tool));
  assert.equal(all.length, 1, `one result of ${tool}, got ${JSON.stringify(all)}`);
  return all[0] as ToolResult;
}

/** The request that carried a scheduled prompt to the model. */
function firedRequest(model: Script, taskId: string): RecordedRequest {
  const fired = model.requests.filter((r) => r.kind === 'main' && r.lastUserText().includes(taskId));
  assert.equal(fired.length, 1, `one request carrying ${taskId}`);
  return fired[0] as RecordedRequest;
}

/** The text blocks of a message's content. */
function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content.map((b: { text?: unknown }) => (typeof b?.text === 'string' ? b.text : '')).join('\n');
}

/**
 * The tools a request offers the model: those in its `tools`, and the deferred ones (the MCP tools
 * among them) that Claude Code lists by name, schemas not loaded, in a system entry of its messages.
 */
function offered(req: RecordedRequest): Set<string> {
  const texts = [req.systemText(), ...req.messages().map((m) => textOf(m.content))];
  const list = texts
    .map((t) => /deferred tools are now available via ToolSearch[^\n]*\n([\s\S]*?)(?:\n\n|$)/.exec(t)?.[1])
    .find((l) => l !== undefined);
  assert.ok(list, 'the request lists the deferred tools');
  return new Set([...req.toolsOffered(), ...list.split('\n').map((l) => l.trim())]);
}

/** The model loads several deferred tools in one ToolSearch. */
const loadTools = (...tools: string[]): Step => ({
  reply: toolUse('ToolSearch', { query: `select:${tools.map(nc).join(',')}`, max_results: tools.length }),
});

const scheduledBy = (tool = 'schedule_task') => toolResult(nc(tool));
/** The new turn carries a scheduler's message (a group-context run). */
const fired = userText(/<message sender="Scheduled task t-[0-9a-f]{8}"/);

function onlyTask(w: World): Task {
  const all = w.tasks.list();
  assert.equal(all.length, 1, JSON.stringify(all));
  return all[0] as Task;
}

describe('scheduled tasks', () => {
  test('a weekday-morning task fires on Monday at 9:00 in Berlin, not over the weekend, and its answer reaches the chat', async () => {
    const overview = 'Pipeline: 3 deals in negotiation, 2 closed this week.';
    const w = await world('2026-11-27T09:30:00Z' /* Friday 10:30 in Berlin */, [
      ...mcpCall('nanoclaw', 'schedule_task', {
        prompt: 'send an overview of the sales pipeline',
        cron: '0 9 * * 1-5',
      }),
      { when: scheduledBy(), reply: text('Scheduled for every weekday at 9.') },
      { when: fired, reply: text(overview) },
    ]);
    await say(w, MAIN, '@Krabby send an overview of the sales pipeline every weekday morning at 9am');
    await replied(w, 'Scheduled for every weekday at 9.');

    const task = onlyTask(w);
    assert.equal(
      resultOf(w.model, 'schedule_task').content,
      `scheduled ${task.id}: cron "0 9 * * 1-5" (Europe/Berlin), first run 2026-11-30 09:00 Europe/Berlin`,
    );
    assert.deepEqual(
      {
        group: task.groupFolder,
        chat: task.chatJid,
        prompt: task.prompt,
        schedule: task.schedule,
        tz: task.timezone,
        mode: task.contextMode,
        status: task.status,
        next: task.nextRun,
      },
      {
        group: 'main',
        chat: MAIN,
        prompt: 'send an overview of the sales pipeline',
        schedule: { type: 'cron', value: '0 9 * * 1-5' },
        tz: TZ,
        mode: 'group',
        status: 'active',
        next: at('2026-11-30T08:00:00Z'),
      },
    );

    // Saturday and Sunday at 9:00, and Monday a second before: nothing is claimed.
    for (const moment of ['2026-11-28T08:00:00Z', '2026-11-29T08:00:00Z', '2026-11-30T07:59:59Z']) {
      w.clock.advanceTo(at(moment));
      assert.deepEqual(w.tasks.runs(task.id), [], `no run by ${moment}`);
    }
    assert.deepEqual(schedulerMessages(w), []);
    assert.equal(w.clock.nextTimerAt(), at('2026-11-30T08:00:00Z'));

    w.clock.advanceTo(at('2026-11-30T08:00:00Z')); // Monday 9:00 in Berlin
    await replied(w, overview);
    const prompt = firedRequest(w.model, task.id).lastUserText();
    assert.ok(
      prompt.includes(
        `<message sender="Scheduled task ${task.id}" time="2026-11-30 09:00 (+01:00)">send an overview of the sales pipeline</message>`,
      ),
      prompt,
    );
    const runs = await eventually(() => {
      const r = w.tasks.runs(task.id);
      return r[0]?.status !== 'running' && r;
    });
    assert.deepEqual(
      runs.map((r) => ({ due: r.dueAt, status: r.status, result: r.result, error: r.error })),
      [{ due: at('2026-11-30T08:00:00Z'), status: 'ok', result: overview, error: null }],
    );
    assert.equal(w.tasks.get(task.id)?.nextRun, at('2026-12-01T08:00:00Z'), 'next: Tuesday 9:00');
    assert.deepEqual(replies(w), ['Scheduled for every weekday at 9.', overview]);
    w.model.assertDone();
  });

  test('a Friday task scheduled in a non-main group fires on Friday in that group, and answers in its chat', async () => {
    const w = await world('2026-11-30T09:00:00Z' /* Monday */, [
      ...mcpCall('nanoclaw', 'schedule_task', {
        prompt: "review the git history for the past week and update the README if there's drift",
        cron: '0 17 * * 5',
      }),
      { when: scheduledBy(), reply: text('Every Friday at 17:00.') },
      {
        when: fired,
        reply: toolUse('Write', { file_path: '/workspace/group/README.md', content: '# Sales tools\n' }),
      },
      { when: toolResult('Write'), reply: text('README updated: it missed two commits.') },
    ]);
    w.app.orch.db.addGroup(SALES, w.clock.now());
    await say(
      w,
      SALES.jid,
      "@Krabby review the git history for the past week each Friday and update the README if there's drift",
    );
    await replied(w, 'Every Friday at 17:00.', SALES.jid);

    const task = onlyTask(w);
    assert.equal(task.groupFolder, 'sales');
    assert.equal(task.chatJid, SALES.jid);
    assert.deepEqual(task.schedule, { type: 'cron', value: '0 17 * * 5' });
    assert.equal(task.nextRun, at('2026-12-04T16:00:00Z'));

    w.clock.advanceTo(at('2026-12-04T15:59:59Z'));
    assert.deepEqual(w.tasks.runs(task.id), []);
    w.clock.advanceTo(at('2026-12-04T16:00:00Z')); // Friday 17:00 in Berlin
    await replied(w, 'README updated: it missed two commits.', SALES.jid);

    assert.match(firedRequest(w.model, task.id).lastUserText(), /time="2026-12-04 17:00 \(\+01:00\)"/);
    assert.deepEqual(replies(w, SALES.jid), [
      'Every Friday at 17:00.',
      'README updated: it missed two commits.',
    ]);
    assert.deepEqual(replies(w, MAIN), [], 'nothing in the main chat');
    assert.equal(schedulerMessages(w, SALES.jid).length, 1);
    assert.equal(
      readFileSync(path.join(w.app.home, 'groups', 'sales', 'README.md'), 'utf8'),
      '# Sales tools\n',
      "the run worked in the Sales group's folder",
    );
    await eventually(() => w.tasks.runs(task.id)[0]?.status === 'ok', 30_000, 'the run ends ok');
    w.model.assertDone();
  });

  test('an isolated Monday briefing runs in a fresh session and its <internal> notes are not delivered', async () => {
    const prompt = 'compile AI news from Hacker News and message me a briefing';
    const briefing = 'AI briefing: two new open models, one chip deal.';
    const w = await world('2026-12-02T11:00:00Z' /* Wednesday */, [
      ...mcpCall('nanoclaw', 'schedule_task', { prompt, cron: '0 8 * * 1', context_mode: 'isolated' }),
      { when: scheduledBy(), reply: text('You will get a briefing every Monday at 8.') },
      {
        when: (req) => req.lastUserText().includes(prompt),
        reply: text(`<internal>Read 30 front-page stories; 4 are about AI.</internal>${briefing}`),
      },
    ]);
    await say(
      w,
      MAIN,
      '@Krabby every Monday at 8am, compile AI news from Hacker News and message me a briefing',
    );
    await replied(w, 'You will get a briefing every Monday at 8.');

    const task = onlyTask(w);
    assert.equal(task.contextMode, 'isolated');
    assert.equal(task.nextRun, at('2026-12-07T07:00:00Z'));
    const conversation = w.model.requests.find((r) => r.kind === 'main')?.sessionId();
    assert.ok(conversation);

    w.clock.advanceTo(at('2026-12-07T06:59:59Z'));
    assert.deepEqual(w.tasks.runs(task.id), []);
    w.clock.advanceTo(at('2026-12-07T07:00:00Z')); // Monday 8:00 in Berlin
    await replied(w, briefing);

    const shots = w.model.requests.filter((r) => r.kind === 'main' && r.sessionId() !== conversation);
    assert.equal(shots.length, 1, 'one request in another session');
    const shot = shots[0] as RecordedRequest;
    assert.ok(shot.lastUserText().includes(prompt), shot.lastUserText());
    const history = JSON.stringify(shot.messages());
    assert.deepEqual(
      shot.messages().filter((m) => m.role === 'assistant'),
      [],
      'no earlier turns in the isolated run',
    );
    assert.ok(!history.includes('every Monday at 8am'), 'the scheduling conversation is not in it');
    assert.ok(!history.includes('<messages>'), 'the prompt is the task itself, not chat messages');
    assert.notEqual(shot.sessionId(), conversation, 'a fresh session');
    assert.equal(w.app.orch.db.session('main')?.id, conversation, "the chat's session is kept");
    assert.deepEqual(schedulerMessages(w), [], 'an isolated prompt is not a chat message');

    assert.deepEqual(replies(w), ['You will get a briefing every Monday at 8.', briefing]);
    const runs = await eventually(() => {
      const r = w.tasks.runs(task.id);
      return r[0]?.status !== 'running' && r;
    });
    assert.deepEqual(
      runs.map((r) => [r.status, r.result]),
      [['ok', briefing]],
    );
    w.model.assertDone();
  });
});

describe('the main chat manages tasks and groups', () => {
  const briefingPrompt = 'compile AI news from Hacker News and message me a briefing';
  const reviewPrompt = 'review the git history for the past week';

  /** Main schedules its own isolated Monday briefing and a Friday review for the Sales chat. */
  async function twoGroupsWithTasks(later: Step[]): Promise<World> {
    const w = await world('2026-12-05T09:00:00Z' /* Saturday */, [
      loadTools('schedule_task'),
      {
        when: toolResult('ToolSearch'),
        reply: toolUses([
          {
            name: nc('schedule_task'),
            input: { prompt: briefingPrompt, cron: '0 8 * * 1', context_mode: 'isolated' },
          },
          { name: nc('schedule_task'), input: { prompt: reviewPrompt, cron: '0 17 * * 5', chat: SALES.jid } },
        ]),
      },
      { when: scheduledBy(), reply: text('Both scheduled.') },
      ...later,
    ]);
    w.app.orch.db.addGroup(SALES, w.clock.now());
    await say(
      w,
      MAIN,
      'every Monday at 8am brief me on AI news, and have the Sales chat review the git history each Friday at 5pm',
    );
    await replied(w, 'Both scheduled.');
    assert.equal(w.tasks.list().length, 2);
    return w;
  }

  function taskOf(w: World, prompt: string): Task {
    const t = w.tasks.list().find((x) => x.prompt === prompt);
    assert.ok(t, `a task "${prompt}"`);
    return t;
  }

  test('list_tasks in the main chat shows the tasks of every group', async () => {
    const w = await twoGroupsWithTasks([
      ...mcpCall('nanoclaw', 'list_tasks', {}),
      { when: toolResult(nc('list_tasks')), reply: text('You have two tasks.') },
    ]);
    const briefing = taskOf(w, briefingPrompt);
    const review = taskOf(w, reviewPrompt);
    assert.equal(review.groupFolder, 'sales', 'main scheduled it for the Sales group');
    assert.equal(review.chatJid, SALES.jid);

    await say(w, MAIN, 'list all scheduled tasks across groups');
    await replied(w, 'You have two tasks.');
    const listed = resultOf(w.model, 'list_tasks');
    assert.equal(listed.is_error, undefined);
    assert.deepEqual(
      listed.content.split('\n').sort(),
      [
        `${briefing.id} [active] cron "0 8 * * 1" (Europe/Berlin), next 2026-12-07 08:00 Europe/Berlin, group main, chat web:main, isolated context: ${briefingPrompt}`,
        `${review.id} [active] cron "0 17 * * 5" (Europe/Berlin), next 2026-12-11 17:00 Europe/Berlin, group sales, chat discord:111, group context: ${reviewPrompt}`,
      ].sort(),
    );
    w.model.assertDone();
  });

  test('"pause the Monday briefing task": the model finds it with list_tasks, pauses it, and it does not fire', async () => {
    const w = await twoGroupsWithTasks([
      loadTools('list_tasks', 'pause_task'),
      { when: toolResult('ToolSearch'), reply: toolUse(nc('list_tasks'), {}) },
      {
        when: toolResult(nc('list_tasks')),
        // The id the model pauses is the one it read in the list.
        reply: (req) => {
          const list = resultsIn(req, 'list_tasks')[0]?.content ?? '';
          const id = /^(t-[0-9a-f]{8}) .*compile AI news/m.exec(list)?.[1];
          if (!id) throw new Error(`no briefing in the list: ${list}`);
          return toolUse(nc('pause_task'), { task_id: id });
        },
      },
      { when: toolResult(nc('pause_task')), reply: text('Paused the Monday briefing.') },
    ]);
    const briefing = taskOf(w, briefingPrompt);
    const review = taskOf(w, reviewPrompt);
    assert.equal(w.clock.nextTimerAt(), at('2026-12-07T07:00:00Z'), 'armed for the briefing');

    await say(w, MAIN, 'pause the Monday briefing task');
    await replied(w, 'Paused the Monday briefing.');
    assert.equal(resultOf(w.model, 'pause_task').content, `${briefing.id} paused`);
    const paused = w.tasks.get(briefing.id);
    assert.equal(paused?.status, 'paused');
    assert.equal(paused?.nextRun, briefing.nextRun, 'it keeps its slot');
    assert.equal(w.tasks.get(review.id)?.status, 'active', 'the other task is untouched');
    assert.equal(w.clock.nextTimerAt(), at('2026-12-11T16:00:00Z'), 're-armed for the Friday review');

    w.clock.advanceTo(at('2026-12-07T12:00:00Z')); // past Monday 8:00
    assert.deepEqual(w.tasks.runs(briefing.id), [], 'the paused briefing did not fire');
    assert.deepEqual(replies(w), ['Both scheduled.', 'Paused the Monday briefing.']);
    w.model.assertDone();
  });

  test('"join the Family Chat group": the model finds the chat with list_groups and registers it', async () => {
    const w = await world('2026-12-05T09:00:00Z', [
      loadTools('list_groups', 'register_group'),
      { when: toolResult('ToolSearch'), reply: toolUse(nc('list_groups'), {}) },
      {
        when: toolResult(nc('list_groups')),
        reply: toolUse(nc('register_group'), { chat: 'discord:777', name: 'Family Chat' }),
      },
      { when: toolResult(nc('register_group')), reply: text('I joined Family Chat.') },
      { when: userText(/hello family/), reply: text('Hello, family!') },
    ]);
    w.app.orch.db.upsertChat('discord:777', 'Family Chat', 'discord', w.clock.now());
    await say(w, MAIN, 'join the Family Chat group');
    await replied(w, 'I joined Family Chat.');

    const listed = resultOf(w.model, 'list_groups');
    assert.equal(listed.is_error, undefined);
    assert.ok(
      listed.content.split('\n').includes('discord:777 "Family Chat" (discord), not registered'),
      listed.content,
    );
    assert.equal(
      resultOf(w.model, 'register_group').content,
      'registered discord:777 as "Family Chat" in folder family-chat',
    );
    const g = w.app.orch.db.group('discord:777');
    assert.deepEqual(
      g && {
        name: g.name,
        folder: g.folder,
        trigger: g.trigger,
        requiresTrigger: g.requiresTrigger,
        isMain: g.isMain,
      },
      {
        name: 'Family Chat',
        folder: 'family-chat',
        trigger: '@Krabby',
        requiresTrigger: true,
        isMain: false,
      },
    );
    const folder = path.join(w.app.home, 'groups', 'family-chat');
    assert.ok(statSync(folder).isDirectory(), 'its folder was created');

    // The new group is served: its trigger wakes an agent that answers in the Family Chat.
    await say(w, 'discord:777', '@Krabby hello family');
    await replied(w, 'Hello, family!', 'discord:777');
    assert.deepEqual(replies(w), ['I joined Family Chat.']);
    w.model.assertDone();
  });
});

describe('a non-main group stays in its own lane', () => {
  test('every cross-group tool call fails with a one-line error and changes nothing, and main-only tools are not offered', async () => {
    const w = await world('2026-12-05T09:00:00Z', []);
    const db = w.app.orch.db;
    db.addGroup(SALES, w.clock.now());
    db.addGroup(SUPPORT, w.clock.now());
    const theirs = w.tasks.create(
      {
        groupFolder: SUPPORT.folder,
        chatJid: SUPPORT.jid,
        prompt: 'summarise the open tickets',
        schedule: { type: 'cron', value: '0 9 * * 1' },
        timezone: TZ,
        contextMode: 'group',
        nextRun: at('2026-12-07T08:00:00Z'),
      },
      w.clock.now(),
    );
    const attempts: Array<{ tool: string; input: Record<string, unknown>; error: RegExp }> = [
      {
        tool: 'send_message',
        input: { text: 'hello from sales', chat: MAIN },
        error: /^only the main chat may send to another chat$/,
      },
      {
        tool: 'schedule_task',
        input: { prompt: 'post the ticket count', cron: '0 9 * * *', chat: SUPPORT.jid },
        error: /^only the main chat may schedule for another chat$/,
      },
      { tool: 'pause_task', input: { task_id: theirs.id }, error: /^that task belongs to another group$/ },
      { tool: 'cancel_task', input: { task_id: theirs.id }, error: /^that task belongs to another group$/ },
      {
        tool: 'update_task',
        input: { task_id: theirs.id, cron: '* * * * *' },
        error: /^that task belongs to another group$/,
      },
      // Not offered to this group, called by name anyway: Claude Code has no such tool.
      { tool: 'list_groups', input: {}, error: /No such tool available: mcp__nanoclaw__list_groups/ },
    ];
    fake.script(w.model.key, [
      loadTools(...attempts.map((a) => a.tool)),
      {
        when: toolResult('ToolSearch'),
        reply: toolUses(attempts.map((a) => ({ name: nc(a.tool), input: a.input }))),
      },
      { when: toolResult(nc('send_message')), reply: text('I may only act in this chat.') },
      { when: userText(/hello there/), reply: text('hi') },
    ]);
    await say(w, SALES.jid, '@Krabby tell main hello, take over the Support tasks, and list the groups');
    await replied(w, 'I may only act in this chat.', SALES.jid);

    const [first, , answered] = w.model.requests.filter((r) => r.kind === 'main');
    assert.ok(first && answered);
    const tools = offered(first);
    for (const t of EVERY_GROUP) assert.ok(tools.has(nc(t)), `${t} is offered to a non-main group`);
    for (const t of MAIN_ONLY) assert.ok(!tools.has(nc(t)), `${t} is not offered to a non-main group`);
    const search = w.model.requests.flatMap((r) => r.toolResults()).find((r) => r.toolName === 'ToolSearch');
    const loaded = search?.content ?? '';
    assert.ok(loaded.includes(nc('send_message')), `ToolSearch loads send_message: ${loaded}`);
    assert.ok(!loaded.includes(nc('list_groups')), 'ToolSearch does not find list_groups');

    for (const a of attempts) {
      const [r, ...more] = resultsIn(answered, a.tool);
      assert.ok(r && more.length === 0, `one result for ${a.tool}`);
      assert.equal(r.is_error, true, `${a.tool} fails: ${r.content}`);
      assert.match(r.content, a.error, a.tool);
      assert.ok(!r.content.includes('\n'), `${a.tool}: one line`);
    }

    assert.deepEqual(replies(w, MAIN), [], 'nothing was sent to main');
    assert.deepEqual(replies(w, SUPPORT.jid), []);
    assert.deepEqual(replies(w, SALES.jid), ['I may only act in this chat.']);
    assert.deepEqual(w.tasks.list(), [theirs], "no new task, and Support's task is as it was");
    assert.match(w.app.logs.join(''), /group sales: tool refused: that task belongs to another group/);

    // The main chat is offered every tool.
    await say(w, MAIN, 'hello there');
    await replied(w, 'hi');
    const mainTools = offered(w.model.requests.filter((r) => r.kind === 'main').at(-1) as RecordedRequest);
    for (const t of [...EVERY_GROUP, ...MAIN_ONLY])
      assert.ok(mainTools.has(nc(t)), `${t} is offered to main`);
    // Claude Code's own schedulers live only as long as its session: tasks go through ours.
    for (const t of ['CronCreate', 'CronList', 'CronDelete', 'ScheduleWakeup']) {
      assert.ok(!mainTools.has(t) && !tools.has(t), `${t} is not offered`);
    }
    w.model.assertDone();
  });
});

test('an invalid cron expression is a tool error and no task is stored', async () => {
  const w = await world('2026-12-05T09:00:00Z', [
    ...mcpCall('nanoclaw', 'schedule_task', { prompt: 'remind me to stretch', cron: '0 25 * * *' }),
    { when: scheduledBy(), reply: text('That hour does not exist.') },
  ]);
  await say(w, MAIN, '@Krabby remind me to stretch every day at 25 o’clock');
  await replied(w, 'That hour does not exist.');
  const r = resultOf(w.model, 'schedule_task');
  assert.equal(r.is_error, true);
  assert.equal(r.content, 'invalid cron "0 25 * * *": Invalid value for hour: 25');
  assert.equal((w.app.orch.db.raw.prepare('SELECT count(*) AS n FROM tasks').get() as { n: number }).n, 0);
  assert.equal(w.clock.nextTimerAt(), undefined);
  w.model.assertDone();
});

test('a restart between the claim and the answer answers the scheduled prompt once, and does not fire that slot again', async () => {
  const w = await world('2026-12-03T11:00:00Z' /* Thursday noon in Berlin */, [
    ...mcpCall('nanoclaw', 'schedule_task', { prompt: 'remind me to water the plants', cron: '0 18 * * *' }),
    { when: scheduledBy(), reply: text('Every day at 18:00.') },
    { when: fired, reply: hang() }, // the agent is still thinking when NanoClaw stops
  ]);
  await say(w, MAIN, '@Krabby every day at 6pm remind me to water the plants');
  await replied(w, 'Every day at 18:00.');
  const task = onlyTask(w);

  w.clock.advanceTo(at('2026-12-03T17:00:00Z')); // 18:00 in Berlin: claimed
  assert.equal(w.tasks.runs(task.id).length, 1);
  await eventually(() => w.model.pending() === 0, 30_000, 'the fired prompt reached the model');
  await stop(w.app);

  const again = await world(
    '2026-12-03T17:00:00Z',
    [{ when: fired, reply: text('Time to water the plants!') }],
    w,
  );
  await replied(again, 'Time to water the plants!');
  again.clock.advanceTo(at('2026-12-03T17:05:00Z')); // the scheduler gets its chance to refire
  const runs = await eventually(() => {
    const r = again.tasks.runs(task.id);
    return r[0]?.status !== 'running' && r;
  });
  assert.deepEqual(
    runs.map((r) => ({ due: r.dueAt, status: r.status, result: r.result })),
    [{ due: at('2026-12-03T17:00:00Z'), status: 'ok', result: 'Time to water the plants!' }],
  );
  assert.equal(schedulerMessages(again).length, 1, 'the prompt was stored once');
  assert.deepEqual(replies(again), ['Every day at 18:00.', 'Time to water the plants!']);
  assert.equal(again.tasks.get(task.id)?.nextRun, at('2026-12-04T17:00:00Z'), 'next: tomorrow 18:00');
  const retold = again.model.requests.filter((r) => r.kind === 'main').at(-1);
  assert.match(retold?.lastUserText() ?? '', new RegExp(`sender="Scheduled task ${task.id}"`));
  again.model.assertDone();
});
