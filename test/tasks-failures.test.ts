// A scheduled task that keeps failing: each failed run (after the queue's retries) is told in its
// chat in one line, and the third failure in a row pauses the task, with a notice; a paused task
// does not fire again.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { TASKS_CHANGED, taskStore } from '../src/scheduler.js';
import { eventually, removeHome, startApp } from './support/app.js';
import { FakeClock } from './support/clock.js';
import { httpError, startFakeAnthropic } from './support/fake-anthropic.js';

test('an isolated task failing three times in a row is told each time, then paused with a notice', async () => {
  const fake = await startFakeAnthropic({ maxRequestsPerScript: 100 });
  // Every try of every run fails: the model API answers 500.
  const script = fake.script(
    'broken',
    Array.from({ length: 15 }, () => ({ reply: httpError(500, 'api_error', 'upstream exploded') })),
  );
  const clock = new FakeClock(Date.parse('2026-11-27T08:00:00Z'));
  const app = await startApp({ baseUrl: script.baseUrl, retryBaseMs: 20, clock });
  try {
    const tasks = taskStore(app.orch.db);
    const t = tasks.create(
      {
        groupFolder: 'main',
        chatJid: 'web:main',
        prompt: 'compile the news',
        schedule: { type: 'interval', value: 3_600_000 },
        timezone: 'UTC',
        contextMode: 'isolated',
        nextRun: clock.now() + 3_600_000,
      },
      clock.now(),
    );
    // Made behind the orchestrator's back: tell it as the CLI does, and wait for its timer.
    writeFileSync(path.join(app.home, 'data', TASKS_CHANGED), '1');
    await eventually(() => clock.nextTimerAt() !== undefined, 10_000, 'the scheduler to re-arm');
    const notices = () => app.orch.db.outboxAfter('web:main', 0).map((r) => r.text);
    for (let run = 1; run <= 3; run++) {
      clock.advance(3_600_000);
      await eventually(
        () => tasks.runs(t.id).filter((r) => r.status === 'error').length === run,
        60_000,
        `run ${run}`,
      );
    }
    const told = notices();
    assert.equal(told.filter((n) => n.startsWith(`Scheduled task ${t.id} failed: `)).length, 3);
    for (const n of told) assert.ok(!n.includes('\n'), `one line: ${n}`);
    assert.ok(told.includes(`Scheduled task ${t.id} failed 3 times in a row and is paused.`));
    assert.equal(tasks.get(t.id)?.status, 'paused');
    assert.equal(tasks.get(t.id)?.failures, 3);
    const requests = script.requests.length;
    clock.advance(3 * 3_600_000);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(tasks.runs(t.id).length, 3, 'a paused task does not fire');
    assert.equal(script.requests.length, requests);
  } finally {
    await app.stop();
    removeHome(app.home);
    await fake.close();
  }
});
