// The `nanoclaw` CLI contract (DESIGN "Contracts", CLI), run as users run it: the compiled bin
// under `node`, as a child process, on a fresh NANOCLAW_HOME and with no credentials.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { Group } from '../src/db.js';
import { CLI, type CliRun, eventually, nanoclaw, removeHome, startApp, tempHome } from './support/app.js';
import { startFakeAnthropic, text } from './support/fake-anthropic.js';

async function groups(home: string): Promise<Group[]> {
  const run = await nanoclaw(home, 'groups', 'list', '--json');
  assert.equal(run.code, 0, run.stderr);
  return JSON.parse(run.stdout) as Group[];
}

async function group(home: string, jid: string): Promise<Group> {
  const g = (await groups(home)).find((x) => x.jid === jid);
  assert.ok(g, `${jid} is not registered`);
  return g;
}

async function add(home: string, ...args: string[]): Promise<CliRun> {
  const run = await nanoclaw(home, 'groups', 'add', ...args);
  assert.equal(run.code, 0, `groups add ${args.join(' ')}: ${run.stderr}`);
  assert.equal(run.stderr, '');
  return run;
}

/** A fresh home per test, removed after it. */
function withHome(fn: (home: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const home = tempHome();
    try {
      await fn(home);
    } finally {
      removeHome(home);
    }
  };
}

describe('the nanoclaw CLI', () => {
  test(
    '--help exits 0 and prints the usage',
    withHome(async (home) => {
      const run = await nanoclaw(home, '--help');
      assert.equal(run.code, 0);
      assert.match(run.stdout, /Usage:/);
      assert.match(run.stdout, /groups add <chat> --name <name>/);
      assert.match(run.stdout, /groups remove/);
      assert.equal(run.stderr, '');
    }),
  );

  test(
    'with no arguments it prints the usage and exits non-zero',
    withHome(async (home) => {
      const run = await nanoclaw(home);
      assert.notEqual(run.code, 0);
      assert.match(run.stdout + run.stderr, /Usage:/);
    }),
  );

  test(
    'groups list on a fresh home creates and migrates the store and lists web:main',
    withHome(async (home) => {
      const file = path.join(home, 'store', 'messages.db');
      assert.ok(!existsSync(file));
      const run = await nanoclaw(home, 'groups', 'list');
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stderr, '');
      assert.ok(existsSync(file), 'store/messages.db was not created');
      const lines = run.stdout.trimEnd().split('\n');
      assert.equal(lines.length, 1);
      assert.match(lines[0] ?? '', /^web:main\tmain\t.*main, every message/);
      const db = new Database(file, { readonly: true });
      try {
        assert.ok(Number(db.pragma('user_version', { simple: true })) >= 1, 'the store is not migrated');
        const row = db.prepare('SELECT folder, is_main FROM groups WHERE jid = ?').get('web:main');
        assert.deepEqual({ ...(row as object) }, { folder: 'main', is_main: 1 });
      } finally {
        db.close();
      }
    }),
  );

  test(
    'groups add registers a chat with a folder from its name and the default trigger',
    withHome(async (home) => {
      const run = await add(home, 'discord:123456789', '--name', 'Family Chat');
      assert.equal(run.stdout, 'registered discord:123456789 as "Family Chat" in groups/family-chat\n');
      const g = await group(home, 'discord:123456789');
      assert.equal(g.name, 'Family Chat');
      assert.equal(g.folder, 'family-chat');
      assert.equal(g.trigger, '@Krabby');
      assert.equal(g.requiresTrigger, true);
      assert.equal(g.isMain, false);
      const list = await nanoclaw(home, 'groups', 'list');
      assert.match(list.stdout, /^discord:123456789\tfamily-chat\tFamily Chat\t\(trigger @Krabby\)$/m);
    }),
  );

  test(
    'groups add --no-trigger registers a chat that wakes on every message',
    withHome(async (home) => {
      await add(home, 'discord:123456789', '--name', 'Quiet', '--no-trigger');
      const g = await group(home, 'discord:123456789');
      assert.equal(g.requiresTrigger, false);
      assert.equal(g.isMain, false);
    }),
  );

  test(
    'groups add --main registers a main chat that needs no trigger',
    withHome(async (home) => {
      await add(home, 'discord:123456789', '--name', 'Admin', '--main');
      const g = await group(home, 'discord:123456789');
      assert.equal(g.isMain, true);
      assert.equal(g.requiresTrigger, false);
      assert.equal(g.folder, 'admin');
    }),
  );

  test(
    'groups add --folder chooses the folder',
    withHome(async (home) => {
      await add(home, 'discord:123456789', '--name', 'Family Chat', '--folder', 'kids-2');
      assert.equal((await group(home, 'discord:123456789')).folder, 'kids-2');
    }),
  );

  test(
    'groups add --trigger sets the trigger, with or without the @',
    withHome(async (home) => {
      await add(home, 'discord:111111', '--name', 'One', '--trigger', '@Bob');
      await add(home, 'discord:222222', '--name', 'Two', '--trigger', 'Bob');
      for (const jid of ['discord:111111', 'discord:222222']) {
        const g = await group(home, jid);
        assert.equal(g.trigger, '@Bob');
        assert.equal(g.requiresTrigger, true);
      }
    }),
  );

  test(
    'groups list --json prints parseable JSON of every group',
    withHome(async (home) => {
      await add(home, 'discord:123456789', '--name', 'Family Chat');
      const run = await nanoclaw(home, 'groups', 'list', '--json');
      assert.equal(run.code, 0, run.stderr);
      const list = JSON.parse(run.stdout) as Group[];
      assert.deepEqual(
        list.map((g) => [g.jid, g.folder, g.isMain]),
        [
          ['web:main', 'main', true],
          ['discord:123456789', 'family-chat', false],
        ],
      );
    }),
  );

  test(
    'groups remove takes a chat id or a folder',
    withHome(async (home) => {
      await add(home, 'discord:111111', '--name', 'One');
      await add(home, 'discord:222222', '--name', 'Two');
      const byId = await nanoclaw(home, 'groups', 'remove', 'discord:111111');
      assert.equal(byId.code, 0, byId.stderr);
      assert.match(byId.stdout, /^removed discord:111111/);
      const byFolder = await nanoclaw(home, 'groups', 'remove', 'two');
      assert.equal(byFolder.code, 0, byFolder.stderr);
      assert.match(byFolder.stdout, /^removed discord:222222/);
      assert.deepEqual(
        (await groups(home)).map((g) => g.jid),
        ['web:main'],
      );
    }),
  );

  test(
    'a removed chat can be registered again',
    withHome(async (home) => {
      await add(home, 'discord:111111', '--name', 'One');
      assert.equal((await nanoclaw(home, 'groups', 'remove', 'one')).code, 0);
      await add(home, 'discord:111111', '--name', 'One', '--no-trigger');
      assert.equal((await group(home, 'discord:111111')).requiresTrigger, false);
    }),
  );
});

describe('a failing CLI command exits non-zero with one line on stderr and changes nothing', () => {
  let home: string;
  let registered: Group[];
  before(async () => {
    home = tempHome();
    await add(home, 'discord:111111', '--name', 'Family Chat');
    registered = await groups(home);
  });
  after(() => removeHome(home));

  const cases: Array<[string, string[], RegExp?]> = [
    ['an unknown command', ['frobnicate'], /unknown command/],
    ['an unknown groups subcommand', ['groups', 'frobnicate'], /unknown command/],
    ['groups without a subcommand', ['groups']],
    ['a chat id that is not one (foo)', ['groups', 'add', 'foo', '--name', 'Foo'], /chat id/],
    ['a chat id with a path in it', ['groups', 'add', 'discord:../1', '--name', 'Foo'], /chat id/],
    ['groups add without a chat', ['groups', 'add', '--name', 'Foo']],
    ['groups add with two chats', ['groups', 'add', 'discord:222222', 'discord:333333', '--name', 'Foo']],
    [
      'a folder with a path trick (../etc)',
      ['groups', 'add', 'discord:222222', '--name', 'X', '--folder', '../etc'],
    ],
    ['a folder in upper case', ['groups', 'add', 'discord:222222', '--name', 'X', '--folder', 'Upper']],
    [
      'the reserved folder global',
      ['groups', 'add', 'discord:222222', '--name', 'X', '--folder', 'global'],
      /reserved/,
    ],
    ['an already registered chat', ['groups', 'add', 'discord:111111', '--name', 'Other'], /already/],
    ['web:main, which is always registered', ['groups', 'add', 'web:main', '--name', 'Web'], /already/],
    [
      'a folder that belongs to another chat',
      ['groups', 'add', 'discord:222222', '--name', 'Family Chat'],
      /folder/,
    ],
    [
      'the folder of web:main',
      ['groups', 'add', 'discord:222222', '--name', 'X', '--folder', 'main'],
      /folder/,
    ],
    [
      '--trigger together with --no-trigger',
      ['groups', 'add', 'discord:222222', '--name', 'X', '--trigger', '@Bob', '--no-trigger'],
      /--no-trigger/,
    ],
    [
      'a trigger that is not one word',
      ['groups', 'add', 'discord:222222', '--name', 'X', '--trigger', '@two words'],
    ],
    ['a missing --name', ['groups', 'add', 'discord:222222'], /--name/],
    ['a blank --name', ['groups', 'add', 'discord:222222', '--name', '   '], /--name/],
    ['removing web:main', ['groups', 'remove', 'web:main'], /web:main/],
    ['removing web:main by its folder', ['groups', 'remove', 'main'], /web:main/],
    ['removing an unknown group', ['groups', 'remove', 'discord:999999'], /discord:999999/],
    ['groups remove without a group', ['groups', 'remove']],
    [
      'an unknown flag on groups add',
      ['groups', 'add', 'discord:222222', '--name', 'X', '--bogus'],
      /--bogus/,
    ],
    ['an unknown flag on groups list', ['groups', 'list', '--bogus'], /--bogus/],
    ['--name without its value', ['groups', 'add', 'discord:222222', '--name']],
  ];
  for (const [what, args, why] of cases) {
    test(`${what} is refused`, async () => {
      const run = await nanoclaw(home, ...args);
      assert.notEqual(run.code, 0, `exited 0: ${run.stdout}`);
      assert.equal(run.stdout, '');
      assert.match(run.stderr, /^nanoclaw: \S.*\n$/, `not one line starting "nanoclaw:": ${run.stderr}`);
      if (why) assert.match(run.stderr, why);
      assert.deepEqual(await groups(home), registered);
    });
  }

  test('a broken .env is refused with one line naming the setting', async () => {
    const broken = tempHome();
    try {
      writeFileSync(path.join(broken, '.env'), 'WEB_PORT=abc\n');
      const run = await nanoclaw(broken, 'groups', 'list');
      assert.notEqual(run.code, 0);
      assert.match(run.stderr, /^nanoclaw: .*WEB_PORT.*\n$/);
      assert.equal(run.stderr.split('\n').length, 2);
    } finally {
      removeHome(broken);
    }
  });
});

test('a running orchestrator picks up a registration without a restart', async () => {
  const fake = await startFakeAnthropic();
  const script = fake.script('default', [{ reply: text('hello from agent') }]);
  const app = await startApp({ baseUrl: fake.baseUrl });
  const chat = 'discord:555000111';
  const inbound = (platformId: string) => ({
    chatJid: chat,
    chatName: 'x',
    platformId,
    sender: 'u1',
    senderName: 'Ann',
    text: '@Krabby hi',
    at: Date.now(),
  });
  try {
    const refused = app.orch.ingest(inbound('m1'));
    assert.equal(refused.stored, false);

    const added = await nanoclaw(app.home, 'groups', 'add', chat, '--name', 'Test', '--no-trigger');
    assert.equal(added.code, 0, added.stderr);

    const stored = app.orch.ingest(inbound('m2'));
    assert.equal(stored.stored, true);
    const reply = await eventually(
      () => app.orch.db.outboxAfter(chat, 0).find((r) => r.text === 'hello from agent'),
      30_000,
      'the agent reply in the outbox',
    );
    assert.equal(reply.chatJid, chat);
    script.assertDone();

    const removed = await nanoclaw(app.home, 'groups', 'remove', chat);
    assert.equal(removed.code, 0, removed.stderr);
    const again = app.orch.ingest(inbound('m3'));
    assert.equal(again.stored, false);
    assert.deepEqual(
      app.orch.db.messagesAfter(chat, 0).map((m) => m.platformId),
      ['m2'],
    );
  } finally {
    await app.stop();
    await fake.close();
    removeHome(app.home);
  }
});

describe('groups set --egress', () => {
  test('sets, shows and clears a group egress allowlist, and refuses bad globs with one line', () => {
    const home = tempHome();
    try {
      const run = (...args: string[]) =>
        spawnSync(process.execPath, [CLI, ...args], {
          env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NANOCLAW_HOME: home },
          encoding: 'utf8',
        });
      assert.equal(run('groups', 'add', 'discord:123456789', '--name', 'Family').status, 0);
      const set = run('groups', 'set', 'family', '--egress', '*.example.org, site.test');
      assert.equal(set.status, 0, set.stderr);
      const listed = JSON.parse(run('groups', 'list', '--json').stdout) as {
        jid: string;
        egressAllow: string[] | null;
      }[];
      assert.deepEqual(listed.find((g) => g.jid === 'discord:123456789')?.egressAllow, [
        '*.example.org',
        'site.test',
      ]);
      assert.equal(run('groups', 'set', 'discord:123456789', '--egress', 'default').status, 0);
      const cleared = JSON.parse(run('groups', 'list', '--json').stdout) as {
        jid: string;
        egressAllow: string[] | null;
      }[];
      assert.equal(cleared.find((g) => g.jid === 'discord:123456789')?.egressAllow, null);
      for (const args of [
        ['groups', 'set', 'family', '--egress', 'a*.com'],
        ['groups', 'set', 'family', '--egress', '10.0.0.1'],
        ['groups', 'set', 'family', '--egress', ','],
        ['groups', 'set', 'family'],
        ['groups', 'set', 'nobody', '--egress', 'x.com'],
      ]) {
        const r = run(...args);
        assert.equal(r.status, 1, args.join(' '));
        const lines = r.stderr.trim().split('\n');
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0] ?? '', /^nanoclaw: /);
      }
    } finally {
      removeHome(home);
    }
  });
});

describe('doctor', () => {
  test('marks every check ✓ or ✗; exits 0 when everything passes', () => {
    const home = tempHome();
    try {
      const r = spawnSync(process.execPath, [CLI, 'doctor'], {
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          NANOCLAW_HOME: home,
          ANTHROPIC_API_KEY: 'sk-ant-x',
        },
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stdout + r.stderr);
      for (const line of r.stdout.trim().split('\n')) assert.match(line, /^✓ /);
      assert.match(r.stdout, /^✓ sandbox bwrap \(SANDBOX=auto: .*creates namespaces/m);
      assert.match(r.stdout, /^✓ store .*messages\.db \(schema \d+, 1 groups\)$/m);
      assert.match(r.stdout, /^✓ model credential ANTHROPIC_API_KEY$/m);
    } finally {
      removeHome(home);
    }
  });

  test('a missing credential is a ✗ with its fix in one line, and doctor exits 1', () => {
    const home = tempHome();
    try {
      const r = spawnSync(process.execPath, [CLI, 'doctor'], {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NANOCLAW_HOME: home },
        encoding: 'utf8',
      });
      assert.equal(r.status, 1);
      const bad = r.stdout.split('\n').filter((l) => l.startsWith('✗'));
      assert.deepEqual(bad, [
        '✗ model credential: none, so agents only answer with a notice: put ANTHROPIC_API_KEY=… in .env (or run nanoclaw setup)',
      ]);
    } finally {
      removeHome(home);
    }
  });

  test('exits 1 with one line saying what to install when no sandbox runtime works', () => {
    const home = tempHome();
    try {
      const r = spawnSync(process.execPath, [CLI, 'doctor'], {
        env: { PATH: '/nonexistent', NANOCLAW_HOME: home },
        encoding: 'utf8',
      });
      assert.equal(r.status, 1);
      const bad = r.stdout.split('\n').filter((l) => l.startsWith('✗'));
      assert.ok(bad.length >= 1, r.stdout);
      assert.match(bad[0] ?? '', /^✗ sandbox: .*apt-get install -y bubblewrap/);
    } finally {
      removeHome(home);
    }
  });
});
