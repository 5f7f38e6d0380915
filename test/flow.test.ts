import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { eventually, openEvents, REAL_KEY, removeHome, startApp, type TestApp } from './support/app.js';
import {
  type FakeAnthropic,
  httpError,
  startFakeAnthropic,
  text,
  toolResult,
  toolUse,
} from './support/fake-anthropic.js';
import { runtimesUnderTest } from './support/runtimes.js';

let fake: FakeAnthropic;

for (const sandbox of runtimesUnderTest({ docker: true })) {
  describe(`on ${sandbox}`, () => {
    // A fake per runtime: scripts and their request logs start empty for each.
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
      const app: TestApp = await startApp({ sandbox, baseUrl: fake.baseUrl });
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
      } finally {
        await app.stop();
        removeHome(app.home);
      }
    });

    test('a follow-up joins the live agent, and after the idle close a new sandbox resumes the session', async () => {
      const script = fake.script('followup', []);
      const app = await startApp({
        sandbox,
        baseUrl: `${fake.baseUrl}/s/followup`,
        env: { IDLE_TIMEOUT_MS: '1500' },
      });
      try {
        const sse = await openEvents(app.port);
        const answer = async (prompt: string, reply: string) => {
          fake.script('followup', [{ reply: text(reply) }]);
          await app.post(prompt);
          await sse.waitFor((e) => e.event === 'message' && (e.data as { text: string }).text === reply);
        };
        await answer('first question', 'first answer');
        await eventually(() => app.orch.queue.snapshot().live[0]?.idle, 10_000, 'idle agent');
        await answer('second question', 'second answer');
        const starts = () => app.logs.filter((l) => l.includes('agent starting')).length;
        assert.equal(starts(), 1, 'the follow-up went to the live agent');
        await eventually(() => app.orch.queue.snapshot().live.length === 0, 20_000, 'idle close');
        await answer('third question', 'third answer');
        assert.equal(starts(), 2);
        assert.match(app.logs.join(''), /resuming [0-9a-f-]{36}/);
        const main = script.requests.filter((r) => r.kind === 'main');
        assert.equal(main.length, 3);
        const ids = new Set(main.map((r) => r.sessionId()));
        assert.equal(ids.size, 1, 'one session across the three turns');
        const history = JSON.stringify(main[2]?.messages());
        assert.match(history, /first question/);
        assert.match(history, /second answer/);
        assert.equal(sse.messages().length, 3);
        const runs = await eventually(() => {
          const r = app.orch.db.recentRuns(10);
          return r.every((x) => x.status === 'ok') && r;
        });
        assert.equal(runs.length, 3);
        // Each turn is charged its own cost, also the first turn of a resumed session.
        for (const r of runs) assert.equal(r.costUsd, runs[2]?.costUsd);
        sse.close();
        script.assertDone();
      } finally {
        await app.stop();
        removeHome(app.home);
      }
    });

    test('after the last failed try the chat is told, and the next message gets both answered', async () => {
      const script = fake.script('failing', [
        ...Array.from({ length: 5 }, () => ({ reply: httpError(500, 'api_error', 'upstream exploded') })),
        { reply: text('answered both') },
      ]);
      const app = await startApp({ sandbox, baseUrl: script.baseUrl, retryBaseMs: 20 });
      try {
        const sse = await openEvents(app.port);
        await app.post('first question');
        const notice = await sse
          .waitFor((e) => e.event === 'message')
          .catch((err) => {
            console.error(app.logs.join(''), script.requests.length);
            throw err;
          });
        assert.match(
          (notice.data as { text: string }).text,
          /^Sorry, I could not answer \(.*\)\. I will try again/,
        );
        assert.equal(script.requests.filter((r) => r.kind === 'main').length, 5, 'five tries');
        await app.post('second question');
        await sse.waitFor(
          (e) => e.event === 'message' && (e.data as { text: string }).text === 'answered both',
        );
        const last = script.requests.filter((r) => r.kind === 'main').at(-1);
        assert.match(last?.lastUserText() ?? '', /first question[\s\S]*second question/);
        sse.close();
        script.assertDone();
      } finally {
        await app.stop();
        removeHome(app.home);
      }
    });

    test('a run silent for AGENT_TIMEOUT_MS is killed and retried', async () => {
      const script = fake.script('silent', [
        { reply: text('too late', { delayMs: 120_000 }) },
        { reply: text('on time') },
      ]);
      const app = await startApp({
        sandbox,
        baseUrl: script.baseUrl,
        retryBaseMs: 20,
        env: { AGENT_TIMEOUT_MS: '1500' },
      });
      try {
        const sse = await openEvents(app.port);
        await app.post('are you there?');
        const ev = await sse.waitFor((e) => e.event === 'message');
        assert.equal((ev.data as { text: string }).text, 'on time');
        assert.match(app.logs.join(''), /no output for 1500 ms, killing the agent/);
        const runs = app.orch.db.recentRuns(5);
        assert.equal(runs.at(-1)?.status, 'error');
        sse.close();
        script.assertDone();
      } finally {
        await app.stop();
        removeHome(app.home);
      }
    });

    test('an OAuth token works the same way: the sandbox gets a stand-in, the model gets the real token', async () => {
      const script = fake.script('oauth', [
        // The CLI keeps its OAuth token from its tools' env, so read every process's environ.
        {
          reply: toolUse('Bash', {
            command: "cat /proc/[0-9]*/environ | tr '\\0' '\\n' | sort -u > seen-env.txt",
          }),
        },
        { when: toolResult('Bash'), reply: text('signed in') },
      ]);
      const app = await startApp({ sandbox, baseUrl: script.baseUrl, credential: 'oauth' });
      try {
        const sse = await openEvents(app.port);
        await app.post('who am I?');
        await sse.waitFor((e) => e.event === 'message' && (e.data as { text: string }).text === 'signed in');
        for (const r of script.requests) {
          assert.equal(r.headers.authorization, `Bearer ${REAL_KEY}`);
          assert.equal(r.headers['x-api-key'], undefined);
          assert.match(r.headers['anthropic-beta'] ?? '', /oauth/);
        }
        const env = readFileSync(path.join(app.home, 'groups', 'main', 'seen-env.txt'), 'utf8');
        assert.ok(!env.includes(REAL_KEY));
        assert.match(env, /^CLAUDE_CODE_OAUTH_TOKEN=nanoclaw-run-[0-9a-f]{48}$/m);
        assert.doesNotMatch(env, /^ANTHROPIC_API_KEY=/m);
        sse.close();
        script.assertDone();
      } finally {
        await app.stop();
        removeHome(app.home);
      }
    });
  });
}
