// `nanoclaw status` (statusCommand): the live figures of a running orchestrator through its
// GET /api/status, and the store's figures when none answers.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig, projectRoot } from '../src/config.js';
import { type Db, openDb } from '../src/db.js';
import { startOfDay, taskStore } from '../src/scheduler.js';
import { statusCommand } from '../src/status.js';
import { removeHome, startApp, type TestApp, tempHome, testEnv } from './support/app.js';
import { type FakeAnthropic, startFakeAnthropic } from './support/fake-anthropic.js';

const HOUR = 3_600_000;
/** 13:00 in Berlin, 12:00 UTC: Berlin's day began at 23:00 UTC the day before. */
const NOW = Date.parse('2024-03-15T12:00:00Z');

/** A store with a Discord group, one task and three runs: two of them today in Berlin. */
function seed(db: Db, nextRun: number): string {
  db.addGroup(
    {
      jid: 'discord:42',
      name: 'Family',
      folder: 'family',
      trigger: '@Krabby',
      requiresTrigger: true,
      isMain: false,
    },
    NOW - 48 * HOUR,
  );
  const task = taskStore(db).create(
    {
      groupFolder: 'family',
      chatJid: 'discord:42',
      prompt: 'remind everyone to water the plants',
      schedule: { type: 'cron', value: '0 9 * * *' },
      timezone: 'Europe/Berlin',
      contextMode: 'group',
      nextRun,
    },
    NOW - 48 * HOUR,
  );
  const runs: [number, number, number, number][] = [
    [Date.parse('2024-03-14T22:30:00Z'), 500, 50, 0.5], // 23:30 in Berlin yesterday
    [Date.parse('2024-03-14T23:30:00Z'), 1200, 34, 0.0125], // 00:30 in Berlin today
    [Date.parse('2024-03-15T11:00:00Z'), 3000, 66, 0.03],
  ];
  for (const [at, input, output, cost] of runs) {
    const id = db.startRun('family', 'discord:42', at);
    db.finishRun(id, {
      now: at + 5000,
      status: 'ok',
      inputTokens: input,
      outputTokens: output,
      costUsd: cost,
    });
  }
  return task.id;
}

function config(home: string, env: Record<string, string>) {
  return loadConfig(testEnv(home, 'http://127.0.0.1:9', { TIMEZONE: 'Europe/Berlin', ...env }), {
    root: projectRoot(),
  });
}

async function status(home: string, env: Record<string, string>, args: string[], f?: typeof fetch) {
  const db = openDb(path.join(home, 'store', 'messages.db'));
  const out: string[] = [];
  const err: string[] = [];
  try {
    const ctx = { config: config(home, env), db, now: () => NOW, ...(f ? { fetch: f } : {}) };
    const code = await statusCommand(
      args,
      ctx,
      (s) => out.push(s),
      (s) => err.push(s),
    );
    return { code, out: out.join('\n'), err: err.join('\n') };
  } finally {
    db.close();
  }
}

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe('with the orchestrator running', () => {
  let fake: FakeAnthropic;
  let app: TestApp;
  let taskId: string;
  const nextRun = Date.now() + 7 * 24 * HOUR; // far enough that the scheduler never fires it here
  before(async () => {
    fake = await startFakeAnthropic();
    const home = tempHome();
    const db = openDb(path.join(home, 'store', 'messages.db'));
    taskId = seed(db, nextRun);
    db.close();
    app = await startApp({ home, baseUrl: fake.baseUrl, env: { WEB_TOKEN: 'let-me-in' } });
  });
  after(async () => {
    await app.stop();
    removeHome(app.home);
    await fake.close();
  });

  test('prints the live figures from the API: groups, agents, queue, next tasks and today runs', async () => {
    const r = await status(app.home, { WEB_PORT: String(app.port), WEB_TOKEN: 'let-me-in' }, []);
    assert.equal(r.code, 0, r.err);
    assert.equal(
      r.out,
      [
        'orchestrator: running',
        'channels: web up, discord off',
        'groups: 2 (web:main main, discord:42)',
        'agents: 0 running (0 working)',
        'queue: 0 waiting, 0 retrying',
        'outbox: 0 pending',
        'next tasks:',
        `  ${taskId}\t${new Date(nextRun).toISOString()}\tfamily\tremind everyone to water the plants`,
        'today: 2 runs, $0.0425, 4200 in / 100 out tokens (since 2024-03-14T23:00:00.000Z)',
      ].join('\n'),
    );
  });

  test('--json prints one object with the live queue', async () => {
    const r = await status(app.home, { WEB_PORT: String(app.port), WEB_TOKEN: 'let-me-in' }, ['--json']);
    assert.equal(r.code, 0, r.err);
    const report = JSON.parse(r.out) as Record<string, unknown>;
    assert.equal(report.orchestrator, 'running');
    assert.deepEqual(report.agents, { live: [], waiting: [], retrying: [] });
    assert.deepEqual(report.channels, { web: 'up', discord: 'off' });
    assert.deepEqual(report.nextTasks, [
      { id: taskId, group: 'family', nextRun, prompt: 'remind everyone to water the plants' },
    ]);
  });

  test('a wrong token falls back to the store and says why', async () => {
    const r = await status(app.home, { WEB_PORT: String(app.port), WEB_TOKEN: 'wrong' }, []);
    assert.equal(r.code, 0, r.err);
    assert.match(
      r.out,
      /^orchestrator: not answering \(figures from the store\): http:\/\/127\.0\.0\.1:\d+\/api\/status: HTTP 401 .*missing or wrong token/,
    );
    assert.match(r.out, /^agents: none running$/m);
    assert.match(r.out, /^today: 2 runs, \$0\.0425/m);
  });
});

describe('with the orchestrator down', () => {
  let home: string;
  let taskId: string;
  const nextRun = NOW + 20 * HOUR;
  before(() => {
    home = tempHome();
    const db = openDb(path.join(home, 'store', 'messages.db'));
    taskId = seed(db, nextRun);
    db.close();
  });
  after(() => removeHome(home));

  test('prints the store figures and says the orchestrator is not running', async () => {
    const r = await status(home, { WEB_PORT: String(await closedPort()), DISCORD_BOT_TOKEN: 'x.y.z' }, []);
    assert.equal(r.code, 0, r.err);
    assert.equal(
      r.out,
      [
        'orchestrator: not running (figures from the store)',
        'channels: web down, discord configured',
        'groups: 2 (web:main main, discord:42)',
        'agents: none running',
        'outbox: 0 pending',
        'next tasks:',
        `  ${taskId}\t2024-03-16T08:00:00.000Z\tfamily\tremind everyone to water the plants`,
        'today: 2 runs, $0.0425, 4200 in / 100 out tokens (since 2024-03-14T23:00:00.000Z)',
      ].join('\n'),
    );
  });

  test('--json prints one object with the figures from the store', async () => {
    const port = await closedPort();
    const r = await status(home, { WEB_PORT: String(port) }, ['--json']);
    assert.equal(r.code, 0, r.err);
    const report = JSON.parse(r.out) as { today: { costUsd: number } };
    assert.ok(Math.abs(report.today.costUsd - 0.0425) < 1e-9, `cost ${report.today.costUsd}`);
    assert.deepEqual(report, {
      orchestrator: 'not running',
      why: `nothing listens on http://127.0.0.1:${port}/api/status`,
      channels: { web: 'down', discord: 'off' },
      groups: [
        { chat: 'web:main', name: 'Web chat', folder: 'main', main: true },
        { chat: 'discord:42', name: 'Family', folder: 'family', main: false },
      ],
      agents: null,
      outboxPending: 0,
      nextTasks: [{ id: taskId, group: 'family', nextRun, prompt: 'remind everyone to water the plants' }],
      today: {
        since: Date.parse('2024-03-14T23:00:00Z'),
        runs: 2,
        costUsd: report.today.costUsd, // a float sum: compared above
        inputTokens: 4200,
        outputTokens: 100,
      },
    });
  });

  test('an orchestrator that does not answer in time is named as such, with the store figures', async () => {
    const timeout: typeof fetch = async () => {
      throw new DOMException('The operation was aborted due to timeout', 'TimeoutError');
    };
    const r = await status(home, {}, [], timeout);
    assert.match(r.out, /^orchestrator: not answering \(figures from the store\): .*: no answer in 2 s$/m);
    assert.match(r.out, /^groups: 2 /m);
  });

  test('refuses arguments other than --json', async () => {
    const r = await status(home, {}, ['--yaml']);
    assert.equal(r.code, 1);
    assert.equal(r.err, 'nanoclaw status: unknown argument --yaml: status takes only --json');
    assert.equal(r.out, '');
  });
});

test('finds local midnight on ordinary days and on the days the clock changes', () => {
  const at = (iso: string, tz: string) => new Date(startOfDay(Date.parse(iso), tz)).toISOString();
  assert.equal(at('2024-03-15T12:00:00Z', 'UTC'), '2024-03-15T00:00:00.000Z');
  assert.equal(at('2024-03-15T12:00:00Z', 'Europe/Berlin'), '2024-03-14T23:00:00.000Z');
  assert.equal(at('2024-03-15T23:30:00Z', 'Europe/Berlin'), '2024-03-15T23:00:00.000Z');
  assert.equal(at('2024-03-31T08:00:00Z', 'Europe/Berlin'), '2024-03-30T23:00:00.000Z'); // 02:00 → 03:00
  assert.equal(at('2024-10-27T09:00:00Z', 'Europe/Berlin'), '2024-10-26T22:00:00.000Z'); // 03:00 → 02:00
  assert.equal(at('2024-03-15T03:00:00Z', 'America/New_York'), '2024-03-14T04:00:00.000Z');
});
