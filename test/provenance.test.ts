// Provenance of group folders (src/provenance.ts) with the real git on real temp dirs, and the
// `nanoclaw memory` commands run as users run them: the compiled bin as a child process.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { HostPaths } from '../src/mounts.js';
import { commitFolder, diff, log, ProvenanceError, restore } from '../src/provenance.js';
import { nanoclaw, removeHome, tempHome } from './support/app.js';

const MiB = 1024 * 1024;

/** A fresh home with an empty groups/main; removed after `fn`. */
function withFolder(fn: (f: { home: string; paths: HostPaths; dir: string }) => Promise<void>) {
  return async () => {
    const home = tempHome();
    const paths = { groupsDir: path.join(home, 'groups'), dataDir: path.join(home, 'data') };
    const dir = path.join(paths.groupsDir, 'main');
    mkdirSync(dir, { recursive: true });
    try {
      await fn({ home, paths, dir });
    } finally {
      removeHome(home);
    }
  };
}

/** Asserts `p` rejects with a one-line ProvenanceError matching `why`. */
async function refused(p: Promise<unknown>, why: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof ProvenanceError, `not a ProvenanceError: ${e}`);
    assert.doesNotMatch(e.message, /\n/);
    assert.match(e.message, why);
    return true;
  });
}

describe('provenance of a group folder', () => {
  test(
    'commits the folder only when something changed',
    withFolder(async ({ paths, dir }) => {
      writeFileSync(path.join(dir, 'CLAUDE.md'), 'likes tea\n');
      const first = await commitFolder(paths, 'main', 'run 1');
      assert.match(first ?? '', /^[0-9a-f]{40}$/);
      assert.equal(await commitFolder(paths, 'main', 'run 2'), undefined);
      writeFileSync(path.join(dir, 'CLAUDE.md'), 'likes coffee\n');
      const third = await commitFolder(paths, 'main', 'run 3');
      assert.match(third ?? '', /^[0-9a-f]{40}$/);
      assert.notEqual(third, first);
      assert.deepEqual(
        (await log(paths, 'main')).map((c) => c.message),
        ['run 3', 'run 1'],
      );
    }),
  );

  test(
    'keeps the history in data/provenance and never creates a .git inside the group folder',
    withFolder(async ({ paths, dir }) => {
      writeFileSync(path.join(dir, 'CLAUDE.md'), 'v1\n');
      const v1 = await commitFolder(paths, 'main', 'run 1');
      writeFileSync(path.join(dir, 'CLAUDE.md'), 'v2\n');
      await diff(paths, 'main');
      await commitFolder(paths, 'main', 'run 2');
      await restore(paths, 'main', v1 ?? '');
      assert.ok(!existsSync(path.join(dir, '.git')), 'a .git appeared in the group folder');
      assert.ok(existsSync(path.join(paths.dataDir, 'provenance', 'main.git', 'HEAD')));
      const gitDir = `--git-dir=${path.join(paths.dataDir, 'provenance', 'main.git')}`;
      const bare = execFileSync('git', [gitDir, 'rev-parse', '--is-bare-repository'], { encoding: 'utf8' });
      assert.equal(bare.trim(), 'true');
    }),
  );

  test(
    'log lists the commits newest first, with their time and the files each changed',
    withFolder(async ({ paths, dir }) => {
      assert.deepEqual(await log(paths, 'main'), []);
      writeFileSync(path.join(dir, 'CLAUDE.md'), 'a\n');
      mkdirSync(path.join(dir, 'notes'));
      writeFileSync(path.join(dir, 'notes', 'todo.md'), 'buy milk\n');
      await commitFolder(paths, 'main', 'first run', { now: Date.UTC(2025, 0, 1) });
      writeFileSync(path.join(dir, 'notes', 'todo.md'), 'buy bread\n');
      await commitFolder(paths, 'main', 'second run', { now: Date.UTC(2025, 0, 2) });
      const commits = await log(paths, 'main');
      assert.deepEqual(
        commits.map((c) => [c.message, new Date(c.at).toISOString(), c.files]),
        [
          ['second run', '2025-01-02T00:00:00.000Z', ['notes/todo.md']],
          ['first run', '2025-01-01T00:00:00.000Z', ['CLAUDE.md', 'notes/todo.md']],
        ],
      );
      assert.equal((await log(paths, 'main', 1)).length, 1);
    }),
  );

  test(
    'diff shows what the agent changed since the last commit, and what one commit changed',
    withFolder(async ({ paths, dir }) => {
      writeFileSync(path.join(dir, 'CLAUDE.md'), '# Memory\n- likes tea\n');
      const first = await commitFolder(paths, 'main', 'run 1');
      writeFileSync(path.join(dir, 'CLAUDE.md'), '# Memory\n- likes coffee\n');
      writeFileSync(path.join(dir, 'new.md'), 'hello\n');
      const pending = await diff(paths, 'main');
      assert.match(pending, /^-- likes tea$/m);
      assert.match(pending, /^\+- likes coffee$/m);
      assert.match(pending, /^\+\+\+ b\/new\.md$/m);
      assert.equal(await commitFolder(paths, 'main', 'run 2').then((id) => typeof id), 'string');
      assert.equal(await diff(paths, 'main'), '');
      const root = await diff(paths, 'main', first);
      assert.match(root, /^\+- likes tea$/m);
      assert.match(await diff(paths, 'main', 'HEAD'), /^\+- likes coffee$/m);
    }),
  );

  test(
    'restore brings an old CLAUDE.md back, for the whole folder and for one file, and can be undone',
    withFolder(async ({ paths, dir }) => {
      const claude = path.join(dir, 'CLAUDE.md');
      writeFileSync(claude, 'the good memory\n');
      writeFileSync(path.join(dir, 'other.md'), 'other v1\n');
      const good = (await commitFolder(paths, 'main', 'run 1')) ?? '';
      writeFileSync(claude, 'the agent forgot everything\n');
      writeFileSync(path.join(dir, 'other.md'), 'other v2\n');
      writeFileSync(path.join(dir, 'junk.md'), 'junk\n');
      await commitFolder(paths, 'main', 'run 2');

      const one = await restore(paths, 'main', good.slice(0, 8), 'CLAUDE.md');
      assert.match(one ?? '', /^[0-9a-f]{40}$/);
      assert.equal(readFileSync(claude, 'utf8'), 'the good memory\n');
      assert.equal(readFileSync(path.join(dir, 'other.md'), 'utf8'), 'other v2\n');
      assert.ok(existsSync(path.join(dir, 'junk.md')));

      writeFileSync(claude, 'changed again, not yet committed\n');
      await restore(paths, 'main', good);
      assert.equal(readFileSync(claude, 'utf8'), 'the good memory\n');
      assert.equal(readFileSync(path.join(dir, 'other.md'), 'utf8'), 'other v1\n');
      assert.ok(!existsSync(path.join(dir, 'junk.md')), 'a file added after the commit survived');
      assert.equal(await restore(paths, 'main', good), undefined, 'restored twice');

      // The state before each restore was committed first: nothing the agent wrote is lost.
      const commits = await log(paths, 'main');
      assert.match(commits[0]?.message ?? '', /^restore the folder to [0-9a-f]{12}$/);
      assert.match(commits[1]?.message ?? '', /^before restoring the folder/);
      await restore(paths, 'main', commits[1]?.id ?? '', 'CLAUDE.md');
      assert.equal(readFileSync(claude, 'utf8'), 'changed again, not yet committed\n');
    }),
  );

  test(
    'restore never writes through a symlink planted as the file itself (CLAUDE.md → a file outside)',
    withFolder(async ({ home, paths, dir }) => {
      const claude = path.join(dir, 'CLAUDE.md');
      const bashrc = path.join(home, 'bashrc');
      writeFileSync(bashrc, 'the owner’s shell config\n');
      writeFileSync(claude, 'the good memory\n');
      const good = (await commitFolder(paths, 'main', 'run 1')) ?? '';
      for (const file of ['CLAUDE.md', undefined]) {
        rmSync(claude);
        symlinkSync(bashrc, claude);
        await restore(paths, 'main', good, file);
        assert.equal(
          readFileSync(bashrc, 'utf8'),
          'the owner’s shell config\n',
          `through the link (${file})`,
        );
        assert.ok(lstatSync(claude).isFile(), `CLAUDE.md is not a real file (${file})`);
        assert.equal(readFileSync(claude, 'utf8'), 'the good memory\n');
      }
      // The planted link was recorded as a link (its target path), never followed.
      const before = (await log(paths, 'main')).find((c) => c.message.startsWith('before restoring'));
      assert.match(await diff(paths, 'main', before?.id), new RegExp(`^\\+${bashrc}$`, 'm'));
      assert.doesNotMatch(await diff(paths, 'main', before?.id), /shell config/);
    }),
  );

  test(
    'restore never writes through a symlink planted as a directory (notes/ → a folder outside)',
    withFolder(async ({ home, paths, dir }) => {
      const outside = path.join(home, 'etc');
      mkdirSync(outside);
      writeFileSync(path.join(outside, 'todo.md'), 'not yours\n');
      mkdirSync(path.join(dir, 'notes'));
      writeFileSync(path.join(dir, 'notes', 'todo.md'), 'buy milk\n');
      const good = (await commitFolder(paths, 'main', 'run 1')) ?? '';
      for (const file of ['notes/todo.md', 'notes', undefined]) {
        rmSync(path.join(dir, 'notes'), { recursive: true });
        symlinkSync(outside, path.join(dir, 'notes'));
        await restore(paths, 'main', good, file);
        assert.equal(readFileSync(path.join(outside, 'todo.md'), 'utf8'), 'not yours\n', `through (${file})`);
        assert.ok(
          lstatSync(path.join(dir, 'notes')).isDirectory(),
          `notes is not a real directory (${file})`,
        );
        assert.equal(readFileSync(path.join(dir, 'notes', 'todo.md'), 'utf8'), 'buy milk\n');
      }
      assert.deepEqual(readdirSync(outside), ['todo.md'], 'a file was written into the link target');
    }),
  );

  test(
    'a bad commit id, a file not in the commit or a path outside the folder is refused with one line',
    withFolder(async ({ paths, dir }) => {
      await refused(restore(paths, 'main', 'deadbeef'), /no commit deadbeef/);
      writeFileSync(path.join(dir, 'CLAUDE.md'), 'v1\n');
      const id = (await commitFolder(paths, 'main', 'run 1')) ?? '';
      await refused(restore(paths, 'main', 'deadbeef'), /no commit deadbeef in the history of main/);
      await refused(restore(paths, 'main', '--hard'), /no commit --hard/);
      await refused(diff(paths, 'main', 'nope'), /no commit nope/);
      await refused(restore(paths, 'main', id, 'missing.md'), /missing\.md is not in commit/);
      await refused(restore(paths, 'main', id, '../../etc/passwd'), /not a path inside/);
      await refused(restore(paths, 'main', id, '/etc/passwd'), /not a path inside/);
      await refused(commitFolder(paths, '../etc', 'x'), /folder/);
      await refused(commitFolder(paths, 'absent', 'x'), /does not exist/);
      assert.equal(readFileSync(path.join(dir, 'CLAUDE.md'), 'utf8'), 'v1\n');
    }),
  );

  test(
    'files an agent’s .gitignore hides are recorded; a file over 10 MiB and a nested repository are not, and do not stop the commit',
    withFolder(async ({ paths, dir }) => {
      writeFileSync(path.join(dir, '.gitignore'), 'secret.md\n');
      writeFileSync(path.join(dir, 'secret.md'), 'hidden from git\n');
      writeFileSync(path.join(dir, 'big.bin'), Buffer.alloc(10 * MiB + 1));
      writeFileSync(path.join(dir, 'ok.bin'), Buffer.alloc(MiB));
      mkdirSync(path.join(dir, 'project'));
      execFileSync('git', ['init', '--quiet', path.join(dir, 'project')]);
      writeFileSync(path.join(dir, 'project', 'a.txt'), 'a\n');
      await commitFolder(paths, 'main', 'run 1');
      const [c] = await log(paths, 'main');
      assert.deepEqual(c?.files, ['.gitignore', 'ok.bin', 'secret.md']);
      assert.equal(c?.message, 'run 1; not recorded (too big, or a repository): big.bin, project');
    }),
  );

  test(
    'concurrent commits of one folder do not interleave',
    withFolder(async ({ paths, dir }) => {
      writeFileSync(path.join(dir, 'CLAUDE.md'), 'v1\n');
      const ids = await Promise.all([1, 2, 3, 4, 5].map((n) => commitFolder(paths, 'main', `run ${n}`)));
      assert.equal(ids.filter(Boolean).length, 1, `${ids}`);
      assert.equal((await log(paths, 'main')).length, 1);
    }),
  );

  test(
    'a missing git is reported in one line',
    withFolder(async ({ paths, dir }) => {
      writeFileSync(path.join(dir, 'CLAUDE.md'), 'v1\n');
      const saved = process.env.PATH;
      process.env.PATH = '/nonexistent';
      try {
        await refused(commitFolder(paths, 'main', 'run 1'), /^git is not installed/);
      } finally {
        process.env.PATH = saved;
      }
    }),
  );
});

test(
  'nanoclaw memory log, diff and restore show and undo what the agent changed',
  withFolder(async ({ home, paths, dir }) => {
    assert.equal((await nanoclaw(home, 'groups', 'list')).code, 0);
    const claude = path.join(dir, 'CLAUDE.md');
    assert.match((await nanoclaw(home, 'memory', 'log', 'main')).stdout, /^no history of groups\/main yet$/m);
    writeFileSync(claude, '- likes tea\n');
    const good = (await commitFolder(paths, 'main', 'run 1', { now: Date.UTC(2025, 0, 1) })) ?? '';
    writeFileSync(claude, '- likes nothing\n');

    const pending = await nanoclaw(home, 'memory', 'diff', 'web:main');
    assert.equal(pending.code, 0, pending.stderr);
    assert.match(pending.stdout, /^\+- likes nothing$/m);
    await commitFolder(paths, 'main', 'run 2', { now: Date.UTC(2025, 0, 2) });

    const logged = await nanoclaw(home, 'memory', 'log', 'main');
    assert.equal(logged.code, 0, logged.stderr);
    assert.deepEqual(logged.stdout.trimEnd().split('\n'), [
      `${(await log(paths, 'main'))[0]?.id.slice(0, 12)}\t2025-01-02T00:00:00.000Z\trun 2\tCLAUDE.md`,
      `${good.slice(0, 12)}\t2025-01-01T00:00:00.000Z\trun 1\tCLAUDE.md`,
    ]);
    assert.match((await nanoclaw(home, 'memory', 'diff', 'main', good)).stdout, /^\+- likes tea$/m);

    const restored = await nanoclaw(home, 'memory', 'restore', 'main', good.slice(0, 12), 'CLAUDE.md');
    assert.equal(restored.code, 0, restored.stderr);
    assert.match(
      restored.stdout,
      /^restored groups\/main\/CLAUDE.md as at [0-9a-f]{12} \(commit [0-9a-f]{12}\)\n$/,
    );
    assert.equal(readFileSync(claude, 'utf8'), '- likes tea\n');

    for (const [args, why] of [
      [['memory', 'restore', 'main', 'deadbeef'], /no commit deadbeef/],
      [['memory', 'restore', 'main', good, 'nope.md'], /nope\.md is not in commit/],
      [['memory', 'log', 'discord:999'], /no registered group/],
      [['memory', 'restore', 'main'], /usage: nanoclaw memory restore/],
      [['memory', 'frob', 'main'], /memory takes log, diff or restore/],
    ] as const) {
      const r = await nanoclaw(home, ...args);
      assert.equal(r.code, 1, args.join(' '));
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /^nanoclaw: \S.*\n$/, r.stderr);
      assert.match(r.stderr, why);
    }
    assert.match(
      (await nanoclaw(home, '--help')).stdout,
      /memory restore <chat\|folder> <commit> \[<file>\]/,
    );
  }),
);
