// Extra mounts: only from the allowlist outside the project, only as a group's setting in the
// store, judged on resolved paths.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkExtraMount, type MountAllowlist, parseAllowlist, parseMountSpec } from '../src/mounts.js';
import { CLI, eventually, removeHome, startApp } from './support/app.js';
import { startFakeAnthropic, text, toolResult, toolUse } from './support/fake-anthropic.js';

let base: string;
let list: MountAllowlist;
before(() => {
  base = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-mounts-')));
  for (const d of ['projects/app', 'projects/.ssh', 'shared/docs', 'elsewhere', 'nanoclaw-home/store']) {
    mkdirSync(path.join(base, d), { recursive: true });
  }
  symlinkSync(path.join(base, 'projects/.ssh'), path.join(base, 'projects/keys'));
  symlinkSync(path.join(base, 'elsewhere'), path.join(base, 'projects/out'));
  list = parseAllowlist(
    {
      allowedRoots: [
        { path: path.join(base, 'projects'), readWrite: true },
        { path: path.join(base, 'shared') },
        { path: path.join(base, 'nanoclaw-home') },
      ],
      blockedPatterns: ['Private'],
    },
    base,
  );
});
after(() => rmSync(base, { recursive: true, force: true }));

describe('the mount allowlist', () => {
  const check = (spec: string) => {
    const m = parseMountSpec(spec, base);
    assert.equal(typeof m, 'object', String(m));
    return checkExtraMount(m as Exclude<typeof m, string>, list, realpathSync, [
      path.join(base, 'nanoclaw-home'),
    ]);
  };

  test('a folder under an allowed root mounts read-only unless asked and allowed', () => {
    assert.deepEqual(check(`${base}/projects/app:app`), {
      ok: true,
      mount: { host: path.join(base, 'projects/app'), guest: '/workspace/extra/app', readonly: true },
    });
    assert.deepEqual(check(`~/projects/app:app:rw`), {
      ok: true,
      mount: { host: path.join(base, 'projects/app'), guest: '/workspace/extra/app', readonly: false },
    });
  });

  const refusals: [string, RegExp][] = [
    ['shared/docs:docs:rw', /allows read-only mounts only/],
    ['projects/.ssh:keys', /component "\.ssh" matches blocked pattern "\.ssh"/],
    ['projects/keys:keys', /component "\.ssh" matches blocked pattern/], // a symlink into .ssh
    ['projects/out:out', /is not under an allowed root/], // a symlink out of the root
    ['elsewhere:x', /is not under an allowed root/],
    ['nanoclaw-home/store:store', /overlaps NanoClaw's own directory/],
    ['projects/missing:m', /does not exist/],
  ];
  for (const [spec, reason] of refusals) {
    test(`refuses ${spec} and says why in one line`, () => {
      const r = check(`${base}/${spec}`);
      assert.equal(r.ok, false);
      assert.match((r as { reason: string }).reason, reason);
      assert.doesNotMatch((r as { reason: string }).reason, /\n/);
    });
  }

  test('a blocked pattern from the file applies case-insensitively; without an allowlist nothing mounts', () => {
    mkdirSync(path.join(base, 'projects/MyPrivateStuff'), { recursive: true });
    assert.match(
      (check(`${base}/projects/MyPrivateStuff:p`) as { reason: string }).reason,
      /blocked pattern "private"/,
    );
    const m = parseMountSpec(`${base}/projects/app:app`, base);
    const r = checkExtraMount(m as Exclude<typeof m, string>, undefined, realpathSync, []);
    assert.match((r as { reason: string }).reason, /no mount allowlist/);
  });

  test('bad mount specs and allowlists are refused with one line', () => {
    assert.match(String(parseMountSpec('relative/path:x', base)), /must be absolute/);
    assert.match(String(parseMountSpec('/abs:Bad Name', base)), /mount name/);
    assert.match(String(parseMountSpec('/abs', base)), /must be <host path>:<name>/);
    assert.throws(() => parseAllowlist({ roots: [] }, base), /allowedRoots/);
    assert.throws(() => parseAllowlist({ allowedRoots: [{ path: 'rel' }] }, base), /must be absolute/);
  });
});

test('groups set --mount checks the allowlist in ~/.config and a group agent sees the mount read-only', async () => {
  const userHome = path.join(base, 'user');
  mkdirSync(path.join(userHome, '.config', 'nanoclaw'), { recursive: true });
  const allowlist = path.join(userHome, '.config', 'nanoclaw', 'mount-allowlist.json');
  writeFileSync(allowlist, JSON.stringify({ allowedRoots: [{ path: path.join(base, 'shared') }] }));
  writeFileSync(path.join(base, 'shared/docs/note.txt'), 'shared note');
  const model = await startFakeAnthropic();
  const s = model.script('mounts', [
    {
      reply: toolUse('Bash', {
        command:
          'cat /workspace/extra/docs/note.txt > seen.txt; touch /workspace/extra/docs/x 2>/dev/null && echo rw >> seen.txt || echo ro >> seen.txt',
      }),
    },
    { when: toolResult('Bash'), reply: text('looked') },
  ]);
  const app = await startApp({ baseUrl: s.baseUrl, mountAllowlistPath: allowlist });
  try {
    const db = app.orch.db;
    db.addGroup(
      {
        jid: 'discord:777',
        name: 'Docs',
        folder: 'docs',
        trigger: '@Krabby',
        requiresTrigger: false,
        isMain: false,
      },
      Date.now(),
    );
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [CLI, 'groups', 'set', 'docs', ...args], {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NANOCLAW_HOME: app.home, HOME: userHome },
        encoding: 'utf8',
      });
    const refused = cli('--mount', `${base}/shared/docs:docs:rw`);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr.trim(), /^nanoclaw: mount .* refused: .*allows read-only mounts only$/);
    const ok = cli('--mount', `${base}/shared/docs:docs`);
    assert.equal(ok.status, 0, ok.stderr);
    app.orch.ingest({
      chatJid: 'discord:777',
      chatName: 'Docs',
      platformId: 'm1',
      sender: 'u',
      senderName: 'Ann',
      text: 'look at the docs',
      at: Date.now(),
    });
    await eventually(() => db.outboxAfter('discord:777', 0).some((r) => r.text === 'looked'), 30_000);
    assert.equal(
      readFileSync(path.join(app.home, 'groups', 'docs', 'seen.txt'), 'utf8'),
      'shared notero\n', // the note has no newline of its own
    );
    assert.equal(cli('--clear-mounts').status, 0);
    assert.deepEqual(db.group('discord:777')?.mounts, []);
    s.assertDone();
  } finally {
    await app.stop();
    removeHome(app.home);
    await model.close();
  }
});
