// bwrap's cgroups: finding where this process may make them (fake /proc/self/cgroup and cgroup
// trees in a temp dir, v1 and v2), making and removing one per sandbox, and the entry prefix that
// moves the sandbox into it (run for real against ordinary files). As root on a machine with a
// writable cgroup v1 pids hierarchy, one real cgroup is made, entered and removed.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  type Controller,
  enterArgs,
  findControllers,
  makeCgroup,
  reapCgroups,
} from '../src/sandbox/cgroup.js';
import type { SandboxLimits } from '../src/sandbox/index.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-cgroup-'));
  dirs.push(d);
  return d;
}

const limits: SandboxLimits = { memoryBytes: 512 * 1024 ** 2, cpus: 2, pids: 20 };

/** A temp dir with a fake /proc/self/cgroup and a cgroup root next to it. */
function layout(procLines: string[]): { proc: string; root: string } {
  const dir = tempDir();
  const proc = path.join(dir, 'proc-self-cgroup');
  const root = path.join(dir, 'sys-fs-cgroup');
  mkdirSync(root);
  writeFileSync(proc, `${procLines.join('\n')}\n`);
  return { proc, root };
}

const V1 = ['9:name=systemd:/', '8:pids:/a', '7:blkio:/', '4:memory:/b/c', '1:cpu,cpuacct:/', '0::/'];

describe('findControllers: cgroup v1', () => {
  test('a pids and a memory controller under our own cgroups, with their limit files', () => {
    const { proc, root } = layout(V1);
    mkdirSync(path.join(root, 'pids'));
    const asked: string[] = [];
    const found = findControllers(proc, root, (d) => {
      asked.push(d);
      return true;
    });
    assert.deepEqual(
      found.map((c) => c.base),
      [path.join(root, 'pids', 'a'), path.join(root, 'memory', 'b', 'c')],
    );
    assert.deepEqual(asked, [path.join(root, 'pids', 'a'), path.join(root, 'memory', 'b', 'c')]);
    assert.deepEqual(found[0]?.limits(limits), { 'pids.max': '20' });
    // memsw (memory + swap) second: it may not go below the memory limit.
    assert.deepEqual(Object.entries(found[1]?.limits(limits) ?? {}), [
      ['memory.limit_in_bytes', String(512 * 1024 ** 2)],
      ['memory.memsw.limit_in_bytes', String(512 * 1024 ** 2)],
    ]);
  });

  test('nothing unless both are writable', () => {
    const { proc, root } = layout(V1);
    mkdirSync(path.join(root, 'pids'));
    assert.deepEqual(
      findControllers(proc, root, () => false),
      [],
    );
    const pidsOnly = findControllers(proc, root, (d) => d.startsWith(path.join(root, 'pids')));
    assert.deepEqual(pidsOnly, []);
    const memoryOnly = findControllers(proc, root, (d) => d.startsWith(path.join(root, 'memory')));
    assert.deepEqual(memoryOnly, []);
  });

  test('the default writability check: missing cgroup directories are not writable', () => {
    const { proc, root } = layout(V1);
    mkdirSync(path.join(root, 'pids'));
    assert.deepEqual(findControllers(proc, root), [], 'the bases do not exist');
    mkdirSync(path.join(root, 'pids', 'a'));
    mkdirSync(path.join(root, 'memory', 'b', 'c'), { recursive: true });
    const canWrite = (d: string) => {
      try {
        accessSync(d, constants.W_OK);
        return true;
      } catch {
        return false;
      }
    };
    const expected = canWrite(path.join(root, 'pids', 'a')) ? 2 : 0;
    assert.equal(findControllers(proc, root).length, expected);
  });

  test('a comma-separated controller list is matched by name; a line without pids is not', () => {
    const { proc, root } = layout(['5:cpu,pids:/x', '4:memory,hugetlb:/y']);
    mkdirSync(path.join(root, 'pids'));
    assert.deepEqual(
      findControllers(proc, root, () => true).map((c) => c.base),
      [path.join(root, 'pids', 'x'), path.join(root, 'memory', 'y')],
    );
    const noPids = layout(['4:memory:/b/c', '0::/']);
    mkdirSync(path.join(noPids.root, 'pids'));
    assert.deepEqual(
      findControllers(noPids.proc, noPids.root, () => true),
      [],
    );
  });

  test('without a pids hierarchy under the root (and no v2), nothing', () => {
    const { proc, root } = layout(V1);
    assert.deepEqual(
      findControllers(proc, root, () => true),
      [],
    );
  });

  // /proc/self/cgroup is `hierarchy-ID:controller-list:cgroup-path` (cgroups(7)); the path is
  // everything after the second colon, and systemd unit names may contain colons
  // (e.g. `dbus-:1.2-org.freedesktop.portal.Desktop@0.service`).
  test('a cgroup path containing a colon is kept whole', () => {
    const { proc, root } = layout([
      '8:pids:/app.slice/dbus-:1.2-x.service',
      '4:memory:/app.slice/dbus-:1.2-x.service',
    ]);
    mkdirSync(path.join(root, 'pids'));
    assert.deepEqual(
      findControllers(proc, root, () => true).map((c) => c.base),
      [
        path.join(root, 'pids', 'app.slice', 'dbus-:1.2-x.service'),
        path.join(root, 'memory', 'app.slice', 'dbus-:1.2-x.service'),
      ],
    );
  });
});

describe('findControllers: cgroup v2', () => {
  function v2(subtree: string | undefined, controllersFile = true) {
    const l = layout(['0::/user.slice/x']);
    if (controllersFile) writeFileSync(path.join(l.root, 'cgroup.controllers'), 'cpu memory pids\n');
    const base = path.join(l.root, 'user.slice', 'x');
    mkdirSync(base, { recursive: true });
    if (subtree !== undefined) writeFileSync(path.join(base, 'cgroup.subtree_control'), subtree);
    return { ...l, base };
  }

  test('one controller at our own cgroup when pids and memory are enabled for children', () => {
    const { proc, root, base } = v2('cpu memory pids\n');
    const found = findControllers(proc, root, () => true);
    assert.deepEqual(
      found.map((c) => c.base),
      [base],
    );
    const files = found[0]?.limits(limits) ?? {};
    assert.equal(files['pids.max'], '20');
    assert.equal(files['memory.max'], String(512 * 1024 ** 2));
    assert.equal(files['memory.swap.max'], '0');
  });

  test('nothing without pids or memory in subtree_control, without the file, or not writable', () => {
    for (const subtree of ['cpu memory\n', 'cpu pids\n', '', undefined]) {
      const { proc, root } = v2(subtree);
      assert.deepEqual(
        findControllers(proc, root, () => true),
        [],
        JSON.stringify(subtree),
      );
    }
    const ok = v2('memory pids');
    assert.deepEqual(
      findControllers(ok.proc, ok.root, () => false),
      [],
    );
  });

  test('nothing when the root is not a v2 hierarchy (no cgroup.controllers)', () => {
    const { proc, root } = v2('cpu memory pids', false);
    assert.deepEqual(
      findControllers(proc, root, () => true),
      [],
    );
  });
});

describe('findControllers: no cgroups', () => {
  test('a missing /proc/self/cgroup, or an empty one, gives nothing', () => {
    const { root } = layout([]);
    mkdirSync(path.join(root, 'pids'));
    writeFileSync(path.join(root, 'cgroup.controllers'), 'memory pids');
    assert.deepEqual(
      findControllers(path.join(root, 'no-such-file'), root, () => true),
      [],
    );
    const empty = layout([]);
    assert.deepEqual(
      findControllers(empty.proc, empty.root, () => true),
      [],
    );
  });
});

describe('makeCgroup', () => {
  test('makes one same-named child per controller; procs point into them; remove deletes them', () => {
    const bases = [tempDir(), tempDir()];
    const seen: SandboxLimits[] = [];
    const controllers: Controller[] = bases.map((base) => ({
      base,
      limits: (l) => {
        seen.push(l);
        return { 'pids.max': String(l.pids) };
      },
    }));
    const cg = makeCgroup(controllers, limits);
    const children = bases.map((b) => readdirSync(b));
    assert.equal(children[0]?.length, 1);
    const name = children[0]?.[0] ?? '';
    assert.match(name, new RegExp(`^nanoclaw-${process.pid}-[0-9a-f]{8}$`));
    assert.deepEqual(children[1], [name], 'the same name under each controller');
    assert.deepEqual(
      cg.procs,
      bases.map((b) => path.join(b, name, 'cgroup.procs')),
    );
    assert.deepEqual(seen, [limits, limits]);
    for (const b of bases) {
      assert.ok(
        !existsSync(path.join(b, name, 'pids.max')),
        'a limit file the kernel did not make is not created',
      );
    }
    cg.remove();
    for (const b of bases) assert.deepEqual(readdirSync(b), [], 'removed');
    assert.doesNotThrow(() => cg.remove(), 'a second remove is harmless');
  });

  test('writes each limit into the file the kernel made, and only those', () => {
    const base = tempDir();
    const controller: Controller = {
      base,
      // Called once the child exists: stand in for the kernel and make its pids.max.
      limits: (l) => {
        const [child] = readdirSync(base);
        writeFileSync(path.join(base, child ?? '', 'pids.max'), 'max\n');
        return { 'pids.max': String(l.pids), 'memory.max': String(l.memoryBytes) };
      },
    };
    const cg = makeCgroup([controller], limits);
    const dir = path.dirname(cg.procs[0] ?? '');
    assert.equal(readFileSync(path.join(dir, 'pids.max'), 'utf8'), '20');
    assert.ok(!existsSync(path.join(dir, 'memory.max')));
    assert.doesNotThrow(() => cg.remove(), 'a busy (non-empty) cgroup is left behind quietly');
    assert.ok(existsSync(dir));
  });

  test('two cgroups made in a row have different names', () => {
    const base = tempDir();
    const controller: Controller = { base, limits: () => ({}) };
    const a = makeCgroup([controller], limits);
    const b = makeCgroup([controller], limits);
    assert.notEqual(a.procs[0], b.procs[0]);
    assert.equal(readdirSync(base).length, 2);
    a.remove();
    b.remove();
    assert.deepEqual(readdirSync(base), []);
  });
});

describe('reapCgroups', () => {
  test("removes what dead orchestrators left, keeps a live one's (a sandbox may be about to enter)", () => {
    const base = tempDir();
    const dead = spawnSync('/bin/true').pid;
    for (const n of [`nanoclaw-${dead}-aaaaaaaa`, `nanoclaw-${process.pid}-bbbbbbbb`, 'other-cgroup']) {
      mkdirSync(path.join(base, n));
    }
    reapCgroups([{ base, limits: () => ({}) }]);
    assert.deepEqual(readdirSync(base).sort(), [`nanoclaw-${process.pid}-bbbbbbbb`, 'other-cgroup']);
  });
});

describe('enterArgs', () => {
  function run(procs: string[], command: string[]) {
    const argv = [...enterArgs(procs), ...command];
    return spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8' });
  }

  test('writes 0 into every procs file, then runs the command with its arguments intact', () => {
    const dir = tempDir();
    const procs = [path.join(dir, 'pids.procs'), path.join(dir, 'memory.procs')];
    for (const p of procs) writeFileSync(p, 'before\n');
    const r = run(procs, ['/bin/sh', '-c', 'echo ran; printf "[%s]" "$@"', 'sh', 'a b', '--', '', '$HOME']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'ran\n[a b][--][][$HOME]');
    for (const p of procs) assert.equal(readFileSync(p, 'utf8'), '0\n');
  });

  test('the command keeps the entering process (exec): the pid written for is the one that runs', () => {
    const dir = tempDir();
    const procs = path.join(dir, 'cgroup.procs');
    const argv = [...enterArgs([procs]), '/bin/sh', '-c', 'echo $$'];
    const r = spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), String(r.pid), 'the command runs as the spawned process itself');
  });

  test('no procs files: just runs the command', () => {
    const r = run([], ['/bin/sh', '-c', 'echo ran']);
    assert.deepEqual([r.status, r.stdout], [0, 'ran\n']);
  });

  test('a procs file that cannot be written: exit 125, the command does not run', () => {
    const dir = tempDir();
    const ok = path.join(dir, 'ok.procs');
    const marker = path.join(dir, 'ran');
    const r = run(
      [ok, path.join(dir, 'missing', 'cgroup.procs')],
      ['/bin/sh', '-c', `echo ran; touch ${JSON.stringify(marker)}`],
    );
    assert.equal(r.status, 125);
    assert.equal(r.stdout, '');
    assert.ok(!existsSync(marker), 'the command did not run');
  });
});

const PIDS = '/sys/fs/cgroup/pids';
function writableDir(d: string): boolean {
  try {
    accessSync(d, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
const realV1 = process.getuid?.() === 0 && existsSync(PIDS) && writableDir(PIDS);

describe('a real cgroup', () => {
  test(
    realV1
      ? 'as root on cgroup v1: made with its limits, entered by the command, enforced, removed'
      : 'not root or no writable v1 pids hierarchy: an unwritable layout gives no controllers',
    () => {
      if (!realV1) {
        assert.deepEqual(
          findControllers('/proc/self/cgroup', '/sys/fs/cgroup', () => false),
          [],
        );
        return;
      }
      const controllers = findControllers();
      assert.ok(controllers.length >= 1, 'root with a writable pids hierarchy finds controllers');
      const cg = makeCgroup(controllers, limits);
      const cgDirs = cg.procs.map((p) => path.dirname(p));
      const name = path.basename(cgDirs[0] ?? '');
      try {
        const pidsDir = cgDirs.find((d) => d.startsWith(`${PIDS}/`)) ?? '';
        assert.ok(pidsDir, 'one of them is in the pids hierarchy');
        assert.equal(readFileSync(path.join(pidsDir, 'pids.max'), 'utf8').trim(), '20');
        const memDir = cgDirs.find((d) => d.startsWith('/sys/fs/cgroup/memory/'));
        if (memDir) {
          assert.equal(
            readFileSync(path.join(memDir, 'memory.limit_in_bytes'), 'utf8').trim(),
            String(limits.memoryBytes),
          );
        }

        const argv = [...enterArgs(cg.procs), '/bin/sh', '-c', 'cat /proc/self/cgroup'];
        const r = spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        const line = (ctrl: string) =>
          r.stdout.split('\n').find((l) => (l.split(':')[1] ?? '').split(',').includes(ctrl)) ?? '';
        assert.ok(line('pids').endsWith(`/${name}`), `pids line names the new cgroup: ${line('pids')}`);
        if (memDir) assert.ok(line('memory').endsWith(`/${name}`), line('memory'));

        // The cap holds: 40 background processes cannot all start under pids.max 20.
        const fork = [
          ...enterArgs(cg.procs),
          '/bin/sh',
          '-c',
          'n=0; while [ $n -lt 40 ]; do sleep 1 & n=$((n+1)); done; echo started $n',
        ];
        const f = spawnSync(fork[0] ?? '', fork.slice(1), { encoding: 'utf8', timeout: 20_000 });
        assert.ok(!f.stdout.includes('started 40'), `all 40 started: ${f.stdout} ${f.stderr}`);
        assert.match(f.stderr, /fork/i, 'a fork was refused');
        const drained = Date.now() + 5000;
        while (readFileSync(path.join(pidsDir, 'cgroup.procs'), 'utf8').trim() && Date.now() < drained) {
          spawnSync('sleep', ['0.1']);
        }
      } finally {
        cg.remove();
      }
      for (const d of cgDirs) assert.ok(!existsSync(d), `${d} removed`);
    },
  );
});
