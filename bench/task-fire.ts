// How late a scheduled task fires (DESIGN budget: within 1 s of its due time), on the real clock:
// one-off tasks due a second apart are claimed by the orchestrator's timer; the lateness is the
// claim time (task_runs.started_at) minus the due time, and the answer's arrival is measured too.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { TASKS_CHANGED, taskStore } from '../src/scheduler.js';
import { eventually, removeHome, startApp } from '../test/support/app.js';
import { startFakeAnthropic, text } from '../test/support/fake-anthropic.js';

const N = 10;

const fake = await startFakeAnthropic({ maxRequestsPerScript: 1000 });
fake.script(
  'default',
  Array.from({ length: N }, (_, i) => ({ reply: text(`done ${i}`) })),
);
const app = await startApp({ baseUrl: fake.baseUrl });
try {
  const tasks = taskStore(app.orch.db);
  const start = Date.now() + 2_000;
  const ids = Array.from({ length: N }, (_, i) => {
    const at = start + i * 1_000;
    return tasks.create(
      {
        groupFolder: 'main',
        chatJid: 'web:main',
        prompt: `task ${i}`,
        schedule: { type: 'once', value: at },
        timezone: 'UTC',
        contextMode: 'group',
        nextRun: at,
      },
      Date.now(),
    ).id;
  });
  writeFileSync(path.join(app.home, 'data', TASKS_CHANGED), '1');
  await eventually(() => app.orch.db.outboxAfter('web:main', 0).length >= N, 60_000, 'every answer');
  const late = ids.map((id) => tasks.runs(id)[0]).map((r) => (r ? r.startedAt - r.dueAt : Number.NaN));
  const answered = app.orch.db.outboxAfter('web:main', 0).map((o, i) => o.createdAt - (start + i * 1_000));
  const sorted = [...late].sort((a, b) => a - b);
  console.log(`claim lateness (ms): p50 ${sorted[Math.floor(N / 2)]}, max ${sorted[N - 1]}; budget 1000`);
  console.log(`due → answer committed (ms): ${answered.join(', ')}`);
  console.log(JSON.stringify({ n: N, lateMs: late, answerMs: answered }));
} finally {
  await app.stop();
  removeHome(app.home);
  await fake.close();
}
