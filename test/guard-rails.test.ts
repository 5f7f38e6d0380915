// Guard rails and chat commands, end to end with the fake model: the per-run budget stops a run
// before another model request, the daily budget answers with one line, the per-sender rate limit
// stores but does not answer, `/stop` ends a running agent at once and `/new` starts afresh.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { eventually, removeHome, startApp, type TestApp } from './support/app.js';
import {
  type FakeAnthropic,
  startFakeAnthropic,
  text,
  toolResult,
  toolUse,
} from './support/fake-anthropic.js';

let fake: FakeAnthropic;
before(async () => {
  fake = await startFakeAnthropic();
});
after(async () => {
  await fake.close();
});

const outbox = (app: TestApp, chat = 'web:main') => app.orch.db.outboxAfter(chat, 0).map((r) => r.text);
const mainRequests = (s: { requests: { kind: string }[] }) =>
  s.requests.filter((r) => r.kind === 'main').length;

test('a run over MAX_RUN_COST_USD is stopped, the chat is told, and no model request follows', async () => {
  const s = fake.script('budget', [
    // One expensive answer that asks for a tool: the CLI must stop instead of asking again.
    {
      reply: toolUse(
        'Bash',
        { command: 'echo more > more.txt' },
        { usage: { input_tokens: 2_000_000, output_tokens: 10 } },
      ),
    },
    { when: toolResult('Bash'), reply: text('this must never be asked for') },
  ]);
  const app = await startApp({ baseUrl: s.baseUrl, env: { MAX_RUN_COST_USD: '0.01' } });
  try {
    await app.post('do something expensive');
    await eventually(() => outbox(app).some((t) => t.startsWith('I stopped:')), 60_000, 'the notice');
    assert.deepEqual(outbox(app), ['I stopped: this run reached its budget of $0.01 (MAX_RUN_COST_USD).']);
    await eventually(() => app.orch.queue.snapshot().live.length === 0, 10_000, 'the agent to end');
    await sleep(500);
    assert.equal(mainRequests(s), 1, 'no model request after the stop');
    assert.deepEqual(app.orch.queue.snapshot().retrying, [], 'not retried');
    const run = app.orch.db.recentRuns(1)[0];
    assert.equal(run?.status, 'error');
    assert.equal(run?.error, 'run budget reached');
  } finally {
    await app.stop();
    removeHome(app.home);
  }
});

test('a group over DAILY_COST_USD answers with one line and asks the model nothing', async () => {
  const s = fake.script('daily', [
    { reply: text('first answer', { usage: { input_tokens: 50_000, output_tokens: 10 } }) },
  ]);
  const app = await startApp({ baseUrl: s.baseUrl, env: { DAILY_COST_USD: '0.01' } });
  try {
    await app.post('first');
    await eventually(() => outbox(app).includes('first answer'), 30_000, 'the first answer');
    await eventually(() => app.orch.db.recentRuns(1)[0]?.status === 'ok', 10_000, 'the run');
    assert.ok((app.orch.db.recentRuns(1)[0]?.costUsd ?? 0) >= 0.01, 'the first run used the budget');
    await app.post('second');
    await app.post('third');
    const line = "Today's budget of $0.01 (DAILY_COST_USD) is used up: I will answer again tomorrow.";
    await eventually(
      () => outbox(app).filter((t) => t === line).length === 2,
      10_000,
      'two one-line answers',
    );
    assert.equal(mainRequests(s), 1);
    s.assertDone();
  } finally {
    await app.stop();
    removeHome(app.home);
  }
});

test('past SENDER_RATE_PER_MIN a member is told once, and the rest is stored but not answered', async () => {
  const s = fake.script('rate', [{ reply: text('answered') }, { reply: text('answered') }]);
  const app = await startApp({ baseUrl: s.baseUrl, env: { SENDER_RATE_PER_MIN: '2' } });
  const chat = 'discord:4242';
  try {
    app.orch.db.addGroup(
      { jid: chat, name: 'Busy', folder: 'busy', trigger: '@Krabby', requiresTrigger: false, isMain: false },
      Date.now(),
    );
    const say = (i: number, sender = 'discord:9') =>
      app.orch.ingest({
        chatJid: chat,
        chatName: 'Busy',
        platformId: `m${i}`,
        sender,
        senderName: sender === 'discord:9' ? 'Flo' : 'Ann',
        text: `message ${i}`,
        at: Date.now(),
      });
    say(1);
    say(2);
    await eventually(() => outbox(app, chat).includes('answered'), 30_000, 'the answer');
    await eventually(() => app.orch.queue.snapshot().live.every((l) => l.idle), 10_000, 'the agent idle');
    const before = mainRequests(s);
    for (let i = 3; i <= 5; i++) say(i);
    const told = 'Flo, that is more than 2 messages a minute: I will not answer the rest of them.';
    await eventually(() => outbox(app, chat).includes(told), 10_000, 'the notice');
    await sleep(1_000);
    assert.deepEqual(
      outbox(app, chat).filter((t) => t === told),
      [told],
      'told once',
    );
    const stored = app.orch.db.messagesAfter(chat, 0);
    assert.deepEqual(
      stored.map((m) => m.mayWake),
      [true, true, false, false, false],
      'every message is stored; the last three never wake the agent',
    );
    assert.equal(mainRequests(s), before, 'no model request for them');
    // Another member is not limited by Flo's flood.
    fake.script('rate', [{ reply: text('answered Ann') }, { reply: text('answered Ann') }]);
    say(6, 'discord:7');
    await eventually(() => mainRequests(s) > before, 30_000, "Ann's message reaching the model");
  } finally {
    await app.stop();
    removeHome(app.home);
  }
});

test('/stop ends a running agent at once, says so in one line, and no model request follows', async () => {
  const s = fake.script('stop', [
    {
      reply: toolUse('Bash', {
        command: "python3 -c 'import time; time.sleep(30)'; echo late > late.txt",
        timeout: 60_000,
      }),
    },
    { when: toolResult('Bash'), reply: text('this must never be asked for') },
  ]);
  const app = await startApp({ baseUrl: s.baseUrl });
  try {
    await app.post('take your time');
    await eventually(
      () => mainRequests(s) === 1 && app.orch.queue.snapshot().live.length === 1,
      30_000,
      'the run',
    );
    await sleep(300);
    await app.post('/stop');
    await eventually(() => outbox(app).includes('Stopped.'), 10_000, 'the answer to /stop');
    await eventually(() => app.orch.queue.snapshot().live.length === 0, 10_000, 'the agent to end');
    await sleep(1_000);
    assert.equal(mainRequests(s), 1, 'no model request after /stop');
    assert.deepEqual(app.orch.queue.snapshot().retrying, [], 'not retried');
    assert.deepEqual(outbox(app), ['Stopped.']);
    await app.post('/stop');
    await eventually(() => outbox(app).includes('Nothing was running.'), 10_000, 'the second /stop');
  } finally {
    await app.stop();
    removeHome(app.home);
  }
});

test('/new starts a fresh session: the next message carries none of the earlier conversation', async () => {
  const s = fake.script('new', [{ reply: text('remembered: blue') }, { reply: text('a fresh start') }]);
  const app = await startApp({ baseUrl: s.baseUrl });
  try {
    await app.post('my favourite colour is blue');
    await eventually(() => outbox(app).includes('remembered: blue'), 30_000, 'the first answer');
    assert.ok(app.orch.db.session('main'), 'a session is stored');
    await app.post('/new');
    await eventually(() => outbox(app).some((t) => t.startsWith('Started a new session')), 10_000, '/new');
    assert.equal(app.orch.db.session('main'), undefined);
    await eventually(() => app.orch.queue.snapshot().live.length === 0, 10_000, 'the old agent to close');
    await app.post('what is my favourite colour?');
    await eventually(() => outbox(app).includes('a fresh start'), 30_000, 'the second answer');
    const last = s.requests.filter((r) => r.kind === 'main').at(-1);
    const history = JSON.stringify(last?.body);
    assert.ok(!history.includes('favourite colour is blue'), 'the earlier conversation is gone');
    s.assertDone();
  } finally {
    await app.stop();
    removeHome(app.home);
  }
});

test('MODEL chooses the model every request of the agent asks for', async () => {
  const s = fake.script('model', [{ reply: text('from the chosen model') }]);
  const app = await startApp({ baseUrl: s.baseUrl, env: { MODEL: 'claude-sonnet-4-5' } });
  try {
    await app.post('hello');
    await eventually(() => outbox(app).includes('from the chosen model'), 30_000, 'the answer');
    const main = s.requests.filter((r) => r.kind === 'main');
    assert.ok(main.length > 0);
    for (const r of main) assert.equal(r.model(), 'claude-sonnet-4-5');
  } finally {
    await app.stop();
    removeHome(app.home);
  }
});
