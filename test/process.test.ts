// The orchestrator as users run it (`nanoclaw start`, its own process): secrets stay out of the
// sandbox, kill -9 at any point loses nothing and sends nothing twice, signals and missing
// prerequisites behave.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { openDb } from '../src/db.js';
import { NO_CREDENTIAL_NOTICE } from '../src/orchestrator.js';
import { CLI, eventually, postJson, REAL_KEY, removeHome, spawnApp, tempHome } from './support/app.js';
import {
  type FakeAnthropic,
  message,
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

/** A home whose .env holds the real key, as a user's would; the process env carries no secret. */
function homeWithKey(key: string): string {
  const home = tempHome();
  writeFileSync(path.join(home, '.env'), `ANTHROPIC_API_KEY=${key}\nSANDBOX=bwrap\nTIMEZONE=UTC\n`);
  return home;
}

function processEnv(script: string): Record<string, string> {
  return { ANTHROPIC_BASE_URL: `${fake.baseUrl}/s/${script}`, WEB_PORT: '0', CLAUDE_CODE_MAX_RETRIES: '0' };
}

function replies(home: string): string[] {
  const db = openDb(path.join(home, 'store', 'messages.db'));
  try {
    return db.outboxAfter('web:main', 0).map((r) => r.text);
  } finally {
    db.close();
  }
}

test('the real key appears nowhere the sandbox can read: env, /proc, every mounted file', async () => {
  const home = homeWithKey(REAL_KEY);
  // The scan's own command line must not contain the key, so it is split in the script.
  const [a, b] = [REAL_KEY.slice(0, 20), REAL_KEY.slice(20)];
  const scan = [
    `K="${a}""${b}"; C="CONTROL-""MARKER-7f3a"`,
    'echo "CONTROL-MARKER-7f3a" > control.txt',
    'scan() { grep -rlsF --devices=skip -e "$1" / --exclude-dir=proc --exclude-dir=sys;',
    '  for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline /proc/[0-9]*/status; do grep -lsaF -e "$1" "$f"; done; }',
    'scan "$K" > key-hits.txt; scan "$C" > control-hits.txt; ls /proc | grep -c "^[0-9]" > pids.txt',
  ].join('\n');
  const script = fake.script('canary', [
    { reply: toolUse('Bash', { command: scan, timeout: 600_000 }) },
    { when: toolResult('Bash'), reply: text('scanned') },
  ]);
  const app = await spawnApp(home, processEnv('canary'));
  try {
    assert.ok(!readFileSync(`/proc/${app.child.pid}/environ`, 'utf8').includes(REAL_KEY), 'not in our env');
    await postJson(app.port, '/api/messages', { text: 'scan yourself' });
    await eventually(() => replies(home).includes('scanned'), 120_000, 'scan');
    const folder = path.join(home, 'groups', 'main');
    const read = (f: string) => readFileSync(path.join(folder, f), 'utf8');
    assert.equal(read('key-hits.txt'), '', 'the key is readable inside the sandbox');
    // The control proves the scan reads files and /proc: it finds the marker in both.
    assert.match(read('control-hits.txt'), /^\/workspace\/group\/control\.txt$/m);
    assert.match(read('control-hits.txt'), /^\/proc\/\d+\/cmdline$/m);
    assert.ok(Number(read('pids.txt')) >= 2);
    for (const r of script.requests) assert.equal(r.apiKey(), REAL_KEY, 'the proxy injected the real key');
    script.assertDone();
  } catch (err) {
    console.error(app.stderr());
    throw err;
  } finally {
    app.child.kill('SIGKILL');
    await app.exited;
    removeHome(home);
  }
});

for (const when of ['before any output', 'between two streamed parts', 'after the last part'] as const) {
  test(`after kill -9 ${when}, a restart leaves the message with exactly one answer`, async () => {
    const key = `crash-${when.replace(/\W+/g, '-')}`;
    const home = homeWithKey(REAL_KEY);
    const script = fake.script(key, [
      when === 'before any output'
        ? { reply: text('never sent', { delayMs: 600_000 }) }
        : {
            reply: message(
              [
                { type: 'text', text: 'part one' },
                { type: 'text', text: 'part two' },
              ],
              {
                betweenBlocksMs: when === 'between two streamed parts' ? 600_000 : 0,
              },
            ),
          },
    ]);
    let app = await spawnApp(home, processEnv(key));
    try {
      await postJson(app.port, '/api/messages', { text: 'the question', id: 'q1' });
      if (when === 'before any output') {
        await eventually(() => script.requests.some((r) => r.kind === 'main'), 30_000, 'model request');
      } else {
        const last = when === 'after the last part' ? 'part two' : 'part one';
        await eventually(() => replies(home).includes(last), 30_000, last);
      }
      app.child.kill('SIGKILL');
      await app.exited;
      const before = replies(home);
      fake.script(key, [
        ...(when === 'before any output' ? [{ reply: text('the answer') }] : []),
        { reply: text('pong') },
      ]);
      app = await spawnApp(home, processEnv(key));
      if (when === 'before any output') await eventually(() => replies(home).includes('the answer'), 30_000);
      // A second question proves recovery is over: the queue serves the group in order.
      await postJson(app.port, '/api/messages', { text: 'ping', id: 'q2' });
      await eventually(() => replies(home).includes('pong'), 30_000, 'pong');
      const expected =
        when === 'before any output'
          ? ['the answer', 'pong']
          : when === 'between two streamed parts'
            ? ['part one', 'pong']
            : ['part one', 'part two', 'pong'];
      assert.deepEqual(replies(home), expected);
      assert.deepEqual(before, expected.slice(0, before.length));
      const main = script.requests.filter((r) => r.kind === 'main');
      const ping = main[main.length - 1];
      assert.match(ping?.lastUserText() ?? '', /ping/);
      assert.doesNotMatch(
        ping?.lastUserText() ?? '',
        /the question/,
        'the answered batch is not asked again',
      );
    } catch (err) {
      console.error(app.stderr(), replies(home));
      throw err;
    } finally {
      app.child.kill('SIGKILL');
      await app.exited;
      removeHome(home);
    }
  });
}

test('SIGTERM stops intake, closes the live agent, flushes and exits 0', async () => {
  const home = homeWithKey(REAL_KEY);
  fake.script('sigterm', [{ reply: text('hello') }]);
  const app = await spawnApp(home, processEnv('sigterm'));
  try {
    await postJson(app.port, '/api/messages', { text: 'hi' });
    await eventually(() => replies(home).includes('hello'), 30_000, 'hello');
    app.child.kill('SIGTERM');
    const { code } = await app.exited;
    assert.equal(code, 0);
    const db = openDb(path.join(home, 'store', 'messages.db'));
    try {
      assert.ok(db.recentRuns(5).every((r) => r.status === 'ok'));
      assert.equal(db.outboxPendingCount(), 0);
    } finally {
      db.close();
    }
  } finally {
    removeHome(home);
  }
});

test('without a sandbox runtime, start prints one line saying what to install and exits non-zero', () => {
  const home = tempHome();
  try {
    const r = spawnSync(process.execPath, [CLI, 'start'], {
      env: { PATH: '/nonexistent', NANOCLAW_HOME: home, WEB_PORT: '0' },
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.notEqual(r.status, 0);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0] ?? '', /^nanoclaw: .*apt-get install -y bubblewrap/);
  } finally {
    removeHome(home);
  }
});

test('without a model credential it starts and answers in the chat how to set one', async () => {
  const home = tempHome();
  const app = await spawnApp(home, { WEB_PORT: '0', SANDBOX: 'bwrap' });
  try {
    const r = await postJson(app.port, '/api/messages', { text: 'hello?' });
    assert.equal(r.status, 202);
    await eventually(() => replies(home).includes(NO_CREDENTIAL_NOTICE), 10_000, 'notice');
    assert.equal(fake.requests.filter((q) => q.url.includes('/s/nokey')).length, 0);
  } finally {
    app.child.kill('SIGKILL');
    await app.exited;
    removeHome(home);
  }
});
