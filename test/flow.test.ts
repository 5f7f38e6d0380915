import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { eventually, openEvents, REAL_KEY, removeHome, startApp, type TestApp } from './support/app.js';
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

test('a web message reaches a sandboxed agent that runs Bash, and its answer arrives exactly once', async () => {
  const script = fake.script('default', [
    {
      reply: toolUse('Bash', {
        command: 'echo from-the-sandbox > note.txt; env > seen-env.txt; id -u > uid.txt',
      }),
    },
    {
      when: toolResult('Bash'),
      reply: text('Wrote note.txt.', { usage: { input_tokens: 1234, output_tokens: 56 } }),
    },
  ]);
  const app: TestApp = await startApp({ baseUrl: fake.baseUrl });
  try {
    const sse = await openEvents(app.port);
    const posted = await app.post('please write a note', 'client-1');
    assert.equal(posted.status, 202);
    const ev = await sse.waitFor((e) => e.event === 'message');
    assert.equal((ev.data as { text: string }).text, 'Wrote note.txt.');
    const run = await eventually(
      () => app.orch.db.recentRuns(1).find((r) => r.status !== 'running'),
      30_000,
      'run',
    );
    await sse.waitFor(
      (e) =>
        e.event === 'status' &&
        (e.data as { working: boolean }).working === false &&
        Number(e.id) >= Number(ev.id),
    );
    assert.equal(sse.messages().length, 1);
    sse.close();
    const folder = path.join(app.home, 'groups', 'main');
    assert.equal(readFileSync(path.join(folder, 'note.txt'), 'utf8'), 'from-the-sandbox\n');
    assert.equal(readFileSync(path.join(folder, 'uid.txt'), 'utf8'), '1000\n');
    const env = readFileSync(path.join(folder, 'seen-env.txt'), 'utf8');
    assert.ok(!env.includes(REAL_KEY), 'the sandbox env must not hold the real key');
    assert.match(env, /^ANTHROPIC_API_KEY=nanoclaw-run-[0-9a-f]{48}$/m);
    const main = script.requests.filter((r) => r.kind === 'main');
    assert.equal(main.length, 2);
    for (const r of fake.requests) assert.equal(r.apiKey(), REAL_KEY);
    assert.equal(run.status, 'ok');
    assert.equal(run.inputTokens, 100 + 1234);
    assert.equal(run.outputTokens, 20 + 56);
    assert.ok(run.costUsd > 0);
    script.assertDone();
    console.log(app.logs.join(''));
  } finally {
    await app.stop();
    removeHome(app.home);
  }
});
