import assert from 'node:assert/strict';

import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { GUEST, groupMounts, within } from '../src/mounts.js';
import { createBwrapSandbox } from '../src/sandbox/bwrap.js';
import { which } from '../src/sandbox/detect.js';

const paths = (root: string) => ({
  projectRoot: root,
  home: root,
  storeDir: path.join(root, 'store'),
  dataDir: path.join(root, 'data'),
  groupsDir: path.join(root, 'groups'),
});

test('regression: a child named `..foo` is inside its parent, `..` and `../x` are not', () => {
  assert.equal(within('/p', '/p/..foo'), true);
  assert.equal(within('/p', '/p/a/b'), true);
  assert.equal(within('/p', '/p'), true);
  assert.equal(within('/p', '/'), false);
  assert.equal(within('/p', '/p/../x'), false);
  assert.equal(within('/p', '/pq'), false);
});

test('a non-main group sees its folder, the global memory read-only, its home and its socket, nothing else', () => {
  const m = groupMounts(
    paths('/srv/nc'),
    { folder: 'family', isMain: false },
    '/srv/nc/data/run/r1',
    () => true,
  );
  assert.deepEqual(m, [
    { host: '/srv/nc/groups/family', guest: GUEST.group, readonly: false },
    { host: '/srv/nc/groups/global', guest: GUEST.global, readonly: true },
    { host: '/srv/nc/data/sessions/family/home', guest: GUEST.home, readonly: false },
    { host: '/srv/nc/data/run/r1', guest: GUEST.run, readonly: false },
  ]);
});

test('main sees the project read-only with .env, store and data shadowed, and the global memory read-write', () => {
  const m = groupMounts(
    paths('/srv/nc'),
    { folder: 'main', isMain: true },
    '/srv/nc/data/run/r1',
    () => true,
  );
  assert.deepEqual(m.slice(0, 4), [
    { host: '/srv/nc', guest: GUEST.project, readonly: true },
    { type: 'hide', guest: '/workspace/project/.env' },
    { type: 'tmpfs', guest: '/workspace/project/store' },
    { type: 'tmpfs', guest: '/workspace/project/data' },
  ]);
  assert.deepEqual(m[5], { host: '/srv/nc/groups/global', guest: GUEST.global, readonly: false });
});

test('state outside the project needs no shadow, and a missing .env is not shadowed', () => {
  const p = { ...paths('/srv/nc'), home: '/var/nc', storeDir: '/var/nc/store', dataDir: '/var/nc/data' };
  const m = groupMounts(
    p,
    { folder: 'main', isMain: true },
    '/var/nc/data/run/r1',
    (f) => !f.endsWith('.env'),
  );
  assert.equal(m.filter((x) => x.type === 'hide' || x.type === 'tmpfs').length, 0);
});

test('inside a real sandbox, main reads the project but not its .env, store or data, and cannot write it', async () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-project-'));
  try {
    writeFileSync(path.join(root, '.env'), 'ANTHROPIC_API_KEY=sk-ant-SHADOWED\n');
    writeFileSync(path.join(root, 'README.md'), 'the project\n');
    for (const d of ['store', 'data/run/r1', 'data/sessions/main/home', 'groups/main', 'groups/global']) {
      mkdirSync(path.join(root, d), { recursive: true });
    }
    writeFileSync(path.join(root, 'store', 'messages.db'), 'secret rows');
    const bwrap = which('bwrap', process.env.PATH);
    assert.ok(bwrap);
    const mounts = groupMounts(
      paths(root),
      { folder: 'main', isMain: true },
      path.join(root, 'data/run/r1'),
      existsSync,
    );
    const script = [
      'cat /workspace/project/README.md',
      'echo "env:[$(cat /workspace/project/.env)]"',
      'echo "store:[$(ls -A /workspace/project/store)]"',
      'echo "data:[$(ls -A /workspace/project/data)]"',
      'touch /workspace/project/new 2>/dev/null && echo wrote || echo read-only',
    ].join('; ');
    const child = createBwrapSandbox(bwrap, process.execPath).spawn({
      command: '/usr/bin/bash',
      args: ['-c', `{ ${script}; } > /workspace/group/report.txt 2>&1`],
      env: { PATH: '/usr/bin:/bin' },
      mounts,
      cwd: GUEST.group,
    });
    const [code] = (await once(child, 'exit')) as [number];
    assert.equal(code, 0);
    const report = readFileSync(path.join(root, 'groups', 'main', 'report.txt'), 'utf8');
    // The shadowed .env is /dev/null (unreadable in the sandbox); either way nothing of it shows.
    assert.doesNotMatch(report, /SHADOWED|secret rows/);
    assert.match(report, /^the project\n/);
    assert.match(report, /\nenv:\[\]\nstore:\[\]\ndata:\[\]\nread-only\n$/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
