import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { eventually, removeHome, startApp } from './support/app.js';
import { FakeClock } from './support/clock.js';
import { mcpCall, startFakeAnthropic, text, toolResult } from './support/fake-anthropic.js';

test('explore', async () => {
  const fake = await startFakeAnthropic();
  const clock = new FakeClock(Date.parse('2026-11-27T08:00:00Z'));
  const s = fake.script('default', [
    ...mcpCall('nanoclaw', 'schedule_task', { prompt: 'send an overview of the sales pipeline', cron: '0 9 * * 1-5' }),
    { when: toolResult('mcp__nanoclaw__schedule_task'), reply: text('Scheduled.') },
    { reply: text('Here is the overview.') },
  ]);
  const app = await startApp({ baseUrl: fake.baseUrl, env: { TIMEZONE: 'Europe/Berlin' }, clock });
  try {
    await app.post('@Krabby send an overview of the sales pipeline every weekday morning at 9am');
    await eventually(() => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'Scheduled.'), 30000, 'scheduled');
    clock.advanceTo(Date.parse('2026-11-30T08:00:00Z'));
    await eventually(() => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'Here is the overview.'), 30000, 'fired');
    writeFileSync('/tmp/explore/reqs.json', JSON.stringify(s.requests.map((r) => ({ n: r.n, kind: r.kind, tools: r.toolsOffered(), body: r.body, session: r.sessionId() })), null, 1));
    s.assertDone();
  } finally {
    await app.stop();
    removeHome(app.home);
    await fake.close();
  }
});
