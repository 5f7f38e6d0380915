// The add-* skills carry code, so they are kept from rotting the hard way: every one is applied
// to a temporary copy of this project (scripts/apply-skill.mjs), the copy is built and linted,
// and each skill's own tests run there against its local fake of the service.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import {
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
import { test } from 'node:test';
import { promisify } from 'node:util';
import { projectRoot } from '../src/config.js';

const run = promisify(execFile);
const ROOT = projectRoot();
const SKILLS = path.join(ROOT, '.claude', 'skills');
const APPLY = path.join(ROOT, 'scripts', 'apply-skill.mjs');
const addSkills = readdirSync(SKILLS).filter((n) => n.startsWith('add-'));

async function apply(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [APPLY, ...args]);
    return { code: 0, ...r };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

function tempDir(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-skill-'));
}

test('the add-skills are there, each with instructions, a manifest and tests', () => {
  for (const n of ['add-telegram', 'add-gmail', 'add-x']) assert.ok(addSkills.includes(n), n);
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
  for (const n of addSkills) {
    const dir = path.join(SKILLS, n);
    assert.ok(existsSync(path.join(dir, 'SKILL.md')), `${n}/SKILL.md`);
    const m = JSON.parse(readFileSync(path.join(dir, 'skill.json'), 'utf8'));
    assert.ok(m.tests.length > 0, `${n} has tests`);
    for (const t of m.tests) assert.ok(existsSync(path.join(dir, 'add', t)), `${n}: ${t}`);
    for (const d of m.dependencies ?? []) assert.ok(pkg.devDependencies[d], `${n}: ${d} is a devDependency`);
  }
});

/** A project of two files and a skill that edits one of them, for the apply script's rules. */
function fixture(): { project: string; skill: string } {
  const base = tempDir();
  const project = path.join(base, 'project');
  const skill = path.join(base, 'add-thing');
  mkdirSync(path.join(project, 'src'), { recursive: true });
  writeFileSync(path.join(project, 'src', 'list.ts'), 'const list = [\n  // entries\n];\n');
  writeFileSync(
    path.join(project, 'package.json'),
    `${JSON.stringify({ name: 'p', dependencies: { a: '1' }, devDependencies: { thing: '^2.0.0' } }, null, 2)}\n`,
  );
  mkdirSync(path.join(skill, 'add', 'test'), { recursive: true });
  writeFileSync(path.join(skill, 'add', 'test', 'thing.test.ts'), 'test\n');
  writeFileSync(
    path.join(skill, 'skill.json'),
    JSON.stringify({
      tests: ['test/thing.test.ts'],
      dependencies: ['thing'],
      edits: [{ file: 'src/list.ts', after: '// entries', insert: 'thing,' }],
    }),
  );
  return { project, skill };
}

test('applying a skill adds its files, inserts its lines, moves its packages to dependencies, and a second time changes nothing', async () => {
  const { project, skill } = fixture();
  try {
    const first = await apply(skill, '--project', project);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(
      readFileSync(path.join(project, 'src', 'list.ts'), 'utf8'),
      'const list = [\n  // entries\n  thing,\n];\n',
    );
    assert.equal(readFileSync(path.join(project, 'test', 'thing.test.ts'), 'utf8'), 'test\n');
    const pkg = JSON.parse(readFileSync(path.join(project, 'package.json'), 'utf8'));
    assert.deepEqual(pkg.dependencies, { a: '1', thing: '^2.0.0' });
    assert.deepEqual(pkg.devDependencies, {});
    const again = await apply(skill, '--project', project);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(
      readFileSync(path.join(project, 'src', 'list.ts'), 'utf8'),
      'const list = [\n  // entries\n  thing,\n];\n',
    );
  } finally {
    rmSync(path.dirname(project), { recursive: true, force: true });
  }
});

test('regression: skills applied together each keep both their edits to one file, in sorted places', async () => {
  const base = tempDir();
  try {
    const project = path.join(base, 'project');
    mkdirSync(project);
    writeFileSync(path.join(project, 'list.ts'), '// imports\n\nconst list = [\n  // entries\n];\n');
    const skills = ['add-b', 'add-a'].map((name) => {
      const dir = path.join(base, name);
      const id = name.slice(4);
      mkdirSync(path.join(dir, 'add', 'test'), { recursive: true });
      writeFileSync(path.join(dir, 'add', 'test', `${id}.test.ts`), `${id}\n`);
      writeFileSync(
        path.join(dir, 'skill.json'),
        JSON.stringify({
          tests: [`test/${id}.test.ts`],
          edits: [
            { file: 'list.ts', after: '// imports', insert: `import { ${id} } from './${id}.js';` },
            { file: 'list.ts', after: '// entries', insert: `${id},` },
          ],
        }),
      );
      return dir;
    });
    const r = await apply(...skills, '--project', project);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      readFileSync(path.join(project, 'list.ts'), 'utf8'),
      "// imports\nimport { a } from './a.js';\nimport { b } from './b.js';\n\nconst list = [\n  // entries\n  a,\n  b,\n];\n",
    );
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});

test('a skill whose anchor line is gone fails with one line and writes nothing', async () => {
  const { project, skill } = fixture();
  try {
    writeFileSync(path.join(project, 'src', 'list.ts'), 'const list = [];\n');
    const r = await apply(skill, '--project', project);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'apply-skill: add-thing: src/list.ts has no line "// entries"\n');
    assert.ok(!existsSync(path.join(project, 'test', 'thing.test.ts')), 'no file added');
    assert.equal(
      JSON.parse(readFileSync(path.join(project, 'package.json'), 'utf8')).dependencies.thing,
      undefined,
    );
  } finally {
    rmSync(path.dirname(project), { recursive: true, force: true });
  }
});

test('a skill never overwrites a different file of the same name', async () => {
  const { project, skill } = fixture();
  try {
    mkdirSync(path.join(project, 'test'));
    writeFileSync(path.join(project, 'test', 'thing.test.ts'), 'mine\n');
    const r = await apply(skill, '--project', project);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /test\/thing\.test\.ts exists and differs/);
    assert.equal(readFileSync(path.join(project, 'test', 'thing.test.ts'), 'utf8'), 'mine\n');
    assert.equal(
      readFileSync(path.join(project, 'src', 'list.ts'), 'utf8'),
      'const list = [\n  // entries\n];\n',
    );
  } finally {
    rmSync(path.dirname(project), { recursive: true, force: true });
  }
});

test('every add-skill applies to a copy of the project, which builds, lints and passes the skills’ own tests', async () => {
  const copy = path.join(tempDir(), 'project');
  try {
    const r = await apply(...addSkills, '--copy-to', copy);
    assert.equal(r.code, 0, r.stderr);
    const tests = addSkills.flatMap(
      (n) => JSON.parse(readFileSync(path.join(SKILLS, n, 'skill.json'), 'utf8')).tests as string[],
    );
    const opts = { cwd: copy, maxBuffer: 64 * 1024 * 1024 };
    await run('npx', ['tsc', '-p', '.'], opts);
    await run('npx', ['biome', 'check', '--vcs-enabled=false', 'src', 'test'], opts);
    // doctor makes every added channel from .env without starting it: one line each, ✓ or ✗.
    const home = path.join(path.dirname(copy), 'home');
    mkdirSync(home);
    const doctor = await run(process.execPath, ['dist/src/cli.js', 'doctor'], {
      ...opts,
      env: {
        PATH: process.env.PATH,
        NANOCLAW_HOME: home,
        SANDBOX: 'bwrap',
        ANTHROPIC_API_KEY: 'sk-ant-x',
        TELEGRAM_BOT_TOKEN: '123:abc',
        X_API_KEY: 'key',
      },
    }).then(
      () => assert.fail('doctor passed with half the X credentials'),
      (e: { code: number; stdout: string }) => e,
    );
    assert.equal(doctor.code, 1);
    assert.match(doctor.stdout, /^✓ telegram configured$/m);
    assert.match(doctor.stdout, /^✗ X_API_SECRET is not set: .+$/m);
    assert.doesNotMatch(doctor.stdout, /gmail/i, 'no GMAIL_ variables: Gmail is off and says nothing');
    const compiled = tests.map((t) => path.join('dist', t.replace(/\.ts$/, '.js')));
    // A test runner's child inherits NODE_TEST_CONTEXT and would report to us instead of running
    // the files as a runner of its own: without it, the copy's runner is a plain `node --test`.
    const { NODE_TEST_CONTEXT: _, ...env } = process.env;
    let stdout: string;
    try {
      ({ stdout } = await run(
        process.execPath,
        ['--test', '--test-reporter=tap', '--test-timeout=300000', ...compiled],
        {
          ...opts,
          env,
          timeout: 20 * 60_000,
        },
      ));
    } catch (err) {
      const e = err as { stdout?: string; stderr?: string };
      assert.fail(`the skills' tests failed:\n${e.stdout?.slice(-20_000)}\n${e.stderr?.slice(-5000)}`);
    }
    const count = (k: string) => Number(new RegExp(`^# ${k} (\\d+)$`, 'm').exec(stdout)?.[1]);
    assert.equal(count('fail'), 0);
    assert.ok(count('pass') >= addSkills.length * 5, `each skill's tests ran: ${count('pass')} passed`);
  } finally {
    rmSync(path.dirname(copy), { recursive: true, force: true });
  }
});
