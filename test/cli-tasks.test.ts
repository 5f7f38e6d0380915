// `nanoclaw tasks …` run as users run it (the compiled bin under node, as a child process), on
// the store of a fresh NANOCLAW_HOME; and a running orchestrator re-arming when the CLI changes one.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { openDb } from '../src/db.js';
import { taskStore } from '../src/scheduler.js';
import { eventually, nanoclaw, removeHome, startApp, tempHome } from './support/app.js';
import { startFakeAnthropic, text } from './support/fake-anthropic.js';

/** A store with one daily task in the main chat and one finished run of it. */
function seed(home: string, now: number) {
  const db = openDb(path.join(home, 'store', 'messages.db'));
  const tasks = taskStore(db);
  const t = tasks.create(
    {
      groupFolder: 'main',
      chatJid: 'web:main',
      prompt: 'send an overview of the sales pipeline',
      schedule: { type: 'cron', value: '0 9 * * 1-5' },
      timezone: 'Europe/Berlin',
      contextMode: 'group',
      nextRun: now + 3_600_000,
    },
    now,
  );
  db.raw
    .prepare(
      "INSERT INTO task_runs (task_id, due_at, started_at, ended_at, status, result) VALUES (?, ?, ?, ?, 'ok', ?)",
    )
    .run(t.id, now - 86_400_000, now - 86_400_000, now - 86_400_000 + 1234, 'Pipeline: 3 deals open');
  db.close();
  return t;
}

test('tasks list, show and runs print what the store holds; pause, resume and cancel change it', async () => {
  const home = tempHome();
  try {
    const t = seed(home, Date.now());
    const list = await nanoclaw(home, 'tasks', 'list');
    assert.equal(list.code, 0, list.stderr);
    assert.match(
      list.stdout,
      new RegExp(
        `^${t.id}\\tactive\\tcron "0 9 \\* \\* 1-5" \\(Europe/Berlin\\)\\tnext \\S+\\tmain\\tsend an overview`,
      ),
    );
    const json = JSON.parse((await nanoclaw(home, 'tasks', 'list', '--json')).stdout) as { id: string }[];
    assert.deepEqual(
      json.map((x) => x.id),
      [t.id],
    );
    assert.match(
      (await nanoclaw(home, 'tasks', 'show', t.id)).stdout,
      /chat web:main, group context, 0 failures/,
    );
    assert.match(
      (await nanoclaw(home, 'tasks', 'runs', t.id)).stdout,
      /\t1234 ms\tok\tPipeline: 3 deals open/,
    );

    assert.equal((await nanoclaw(home, 'tasks', 'pause', t.id)).stdout.trim(), `${t.id} paused`);
    assert.match((await nanoclaw(home, 'tasks', 'list')).stdout, /\tpaused\t/);
    assert.equal((await nanoclaw(home, 'tasks', 'resume', t.id)).stdout.trim(), `${t.id} resumed`);
    assert.match((await nanoclaw(home, 'tasks', 'list')).stdout, /\tactive\t/);
    assert.equal((await nanoclaw(home, 'tasks', 'cancel', t.id)).stdout.trim(), `${t.id} cancelled`);
    assert.equal((await nanoclaw(home, 'tasks', 'list')).stdout.trim(), 'no scheduled tasks');

    const again = await nanoclaw(home, 'tasks', 'resume', t.id);
    assert.equal(again.code, 1);
    assert.equal(again.stderr.trim(), `nanoclaw: ${t.id} is cancelled`);
    const missing = await nanoclaw(home, 'tasks', 'pause', 't-00000000');
    assert.deepEqual([missing.code, missing.stderr.trim()], [1, 'nanoclaw: no task t-00000000']);
    const bad = await nanoclaw(home, 'tasks', 'frobnicate');
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr.trim().split('\n').length, 1);
  } finally {
    removeHome(home);
  }
});

test('a running orchestrator re-arms when the CLI resumes a task, and runs it at its time', async () => {
  const fake = await startFakeAnthropic();
  fake.script('default', [{ reply: text('the overview') }]);
  const app = await startApp({ baseUrl: fake.baseUrl });
  try {
    // Created behind the running orchestrator's back and paused: no timer is armed for it, so
    // only the CLI's signal can make the orchestrator run it.
    const tasks = taskStore(app.orch.db);
    const at = Date.now() + 5_000;
    const t = tasks.create(
      {
        groupFolder: 'main',
        chatJid: 'web:main',
        prompt: 'send the overview',
        schedule: { type: 'once', value: at },
        timezone: 'UTC',
        contextMode: 'group',
        nextRun: at,
      },
      Date.now(),
    );
    tasks.setStatus(t.id, 'paused', at);
    const resumed = await nanoclaw(app.home, 'tasks', 'resume', t.id);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.equal(tasks.get(t.id)?.nextRun, at);
    await eventually(
      () => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'the overview'),
      30_000,
      'the resumed task to run',
    );
    assert.equal(tasks.runs(t.id).length, 1);
  } finally {
    await app.stop();
    removeHome(app.home);
    await fake.close();
  }
});
