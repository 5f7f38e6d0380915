// What an agent changed, kept outside its reach: after each run the host commits the group folder
// into data/provenance/<folder>.git, and `restore` brings an old file back; before Claude Code
// compacts a session, the transcript is archived into the group folder.
import assert from 'node:assert/strict';
import { appendFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { log, restore } from '../src/provenance.js';
import { eventually, removeHome, startApp } from './support/app.js';
import { startFakeAnthropic, text, toolResult, toolUse } from './support/fake-anthropic.js';

/** Waits until the folder's history has `n` commits (they are made just after each run). */
async function commits(paths: { groupsDir: string; dataDir: string }, n: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if ((await log(paths, 'main').catch(() => [])).length >= n) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`expected ${n} commits`);
}

test("provenance records each run's change to the group folder, and restore brings the old memory back", async () => {
  const fake = await startFakeAnthropic();
  const s = fake.script('default', [
    { reply: toolUse('Bash', { command: 'echo "favourite colour: blue" >> CLAUDE.md' }) },
    { when: toolResult('Bash'), reply: text('noted blue') },
    { reply: toolUse('Bash', { command: 'echo "everything forgotten" > CLAUDE.md' }) },
    { when: toolResult('Bash'), reply: text('noted') },
  ]);
  const app = await startApp({ baseUrl: fake.baseUrl });
  const paths = { groupsDir: path.join(app.home, 'groups'), dataDir: path.join(app.home, 'data') };
  const memory = path.join(paths.groupsDir, 'main', 'CLAUDE.md');
  try {
    await app.post('remember that my favourite colour is blue');
    await eventually(
      () => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'noted blue'),
      30_000,
      '1',
    );
    await commits(paths, 1);
    await app.post('forget everything');
    await eventually(
      () => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'noted'),
      30_000,
      '2',
    );
    await commits(paths, 2);
    s.assertDone();
    assert.equal(readFileSync(memory, 'utf8'), 'everything forgotten\n');
    assert.ok(!existsSync(path.join(paths.groupsDir, 'main', '.git')), 'no repository inside the folder');
    const [latest, first] = await log(paths, 'main');
    assert.deepEqual(latest?.files, ['CLAUDE.md']);
    assert.match(first?.message ?? '', /^run in web:main/);
    await restore(paths, 'main', first?.id ?? '', 'CLAUDE.md');
    assert.match(readFileSync(memory, 'utf8'), /favourite colour: blue\n$/);
  } finally {
    await app.stop();
    removeHome(app.home);
    await fake.close();
  }
});

test('before a session compacts, its transcript is archived as Markdown in the group folder', async () => {
  const fake = await startFakeAnthropic();
  // A reply that reports a nearly full context: with a 20,000-token window Claude Code compacts
  // before the next turn.
  fake.script('default', [
    { reply: text('the roses need water', { usage: { input_tokens: 199_000, output_tokens: 10 } }) },
    { reply: text('second answer') },
  ]);
  const app = await startApp({ baseUrl: fake.baseUrl, env: { CLAUDE_CODE_AUTO_COMPACT_WINDOW: '20000' } });
  const dir = path.join(app.home, 'groups', 'main', 'conversations');
  try {
    await app.post('what does the garden need?');
    await eventually(
      () => app.orch.db.outboxAfter('web:main', 0).some((r) => r.text === 'the roses need water'),
      30_000,
      'the first answer',
    );
    await app.post('and now?');
    await eventually(() => existsSync(dir) && readdirSync(dir).length === 1, 30_000, 'the archive');
    const [file] = readdirSync(dir);
    assert.match(file ?? '', /^\d{4}-\d{2}-\d{2}-[0-9a-f]{8}-\d+\.md$/);
    const archived = readFileSync(path.join(dir, file ?? ''), 'utf8');
    assert.match(archived, /\*\*Chat:\*\* <messages>[\s\S]*what does the garden need\?/);
    assert.match(archived, /\*\*Assistant:\*\* the roses need water/);
  } finally {
    await app.stop();
    removeHome(app.home);
    await fake.close();
  }
});

test("every chat's agent is given the shared notes at the start of its session, and auto-memory is on", async () => {
  const fake = await startFakeAnthropic();
  const s = fake.script('default', [{ reply: text('ok') }, { reply: text('ok too') }]);
  const app = await startApp({ baseUrl: fake.baseUrl });
  try {
    appendFileSync(
      path.join(app.home, 'groups', 'global', 'CLAUDE.md'),
      '\nThe owner is called Sam & likes <short> answers.\n',
    );
    app.orch.db.addGroup(
      {
        jid: 'discord:31',
        name: 'Book club',
        folder: 'book-club',
        trigger: '@Krabby',
        requiresTrigger: false,
        isMain: false,
      },
      Date.now(),
    );
    await app.post('hello');
    app.orch.ingest({
      chatJid: 'discord:31',
      chatName: 'Book club',
      platformId: 'b1',
      sender: 'discord:5',
      senderName: 'Ann',
      text: 'hello',
      at: Date.now(),
    });
    await eventually(() => s.requests.filter((r) => r.kind === 'main').length === 2, 30_000, 'both agents');
    for (const r of s.requests.filter((x) => x.kind === 'main')) {
      // Claude Code's auto-memory is on, kept in the group's own Claude home (data/sessions/…).
      assert.match(
        r.systemText(),
        /persistent file-based memory at `\/home\/agent\/\.claude\/projects\/-workspace-group\/memory\/`/,
      );
      assert.match(
        r.systemText(),
        /<shared-notes>[\s\S]*The owner is called Sam &amp; likes &lt;short&gt; answers\.[\s\S]*<\/shared-notes>/,
      );
    }
  } finally {
    await app.stop();
    removeHome(app.home);
    await fake.close();
  }
});
