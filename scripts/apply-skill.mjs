#!/usr/bin/env node
// Applies add-* skills (.claude/skills/<name>/) to a checkout: the files under the skill's `add/`
// are copied to the same paths, each edit in its `skill.json` inserts a line after an anchor line,
// and the packages it names move from devDependencies to dependencies. Everything is checked
// before anything is written, so a skill that no longer fits the code fails with one line and
// changes nothing; applying a skill twice changes nothing the second time.
//
//   node scripts/apply-skill.mjs add-telegram [add-gmail …] [--project DIR] [--copy-to DIR]
//
// --copy-to makes DIR a copy of the project first (live state and build output left out,
// node_modules linked), so a skill can be tried, built and tested without touching the checkout.
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Left out of a copy: live state, build output, secrets, dependencies (linked instead). */
const NOT_COPIED = new Set(['.git', 'node_modules', 'dist', 'store', 'data', 'groups', 'logs', '.env']);

export class SkillError extends Error {
  name = 'SkillError';
}

/** Copies the project at `from` to `to` for trying skills; `to` must not exist or be empty. */
export function copyProject(from, to) {
  if (existsSync(to) && readdirSync(to).length > 0) throw new SkillError(`${to} is not empty`);
  mkdirSync(to, { recursive: true });
  for (const entry of readdirSync(from)) {
    if (NOT_COPIED.has(entry)) continue;
    cpSync(path.join(from, entry), path.join(to, entry), { recursive: true, verbatimSymlinks: true });
  }
  if (existsSync(path.join(from, 'node_modules'))) {
    symlinkSync(path.join(from, 'node_modules'), path.join(to, 'node_modules'), 'dir');
  }
}

function readManifest(skillDir) {
  const file = path.join(skillDir, 'skill.json');
  let m;
  try {
    m = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new SkillError(`${file}: ${err.message}`);
  }
  const strings = (v) => Array.isArray(v) && v.every((s) => typeof s === 'string' && s !== '');
  if (!strings(m.tests) || m.tests.length === 0)
    throw new SkillError(`${file}: "tests" must list its test files`);
  if (m.dependencies !== undefined && !strings(m.dependencies)) {
    throw new SkillError(`${file}: "dependencies" must be a list of package names`);
  }
  const edits = m.edits ?? [];
  if (
    !Array.isArray(edits) ||
    !edits.every((e) => ['file', 'after', 'insert'].every((k) => typeof e?.[k] === 'string'))
  ) {
    throw new SkillError(`${file}: each of "edits" needs "file", "after" and "insert"`);
  }
  return { tests: m.tests, dependencies: m.dependencies ?? [], edits };
}

function filesUnder(dir, rel = '') {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(path.join(dir, e.name), path.join(rel, e.name)) : [path.join(rel, e.name)],
  );
}

/** Plans one skill against `project`: what to write. Throws SkillError if it does not fit. */
function plan(skillDir, project, pending) {
  const name = path.basename(skillDir);
  const manifest = readManifest(skillDir);
  const writes = new Map(); // project-relative path → new content
  const current = (rel) => writes.get(rel) ?? pending.get(rel) ?? readText(path.join(project, rel));
  for (const rel of filesUnder(path.join(skillDir, 'add'))) {
    const content = readFileSync(path.join(skillDir, 'add', rel), 'utf8');
    const existing = current(rel);
    if (existing !== undefined && existing !== content) {
      throw new SkillError(`${name}: ${rel} exists and differs from the skill's: move it aside first`);
    }
    writes.set(rel, content);
  }
  for (const rel of manifest.tests) {
    if (!writes.has(rel)) throw new SkillError(`${name}: test ${rel} is not among the files it adds`);
  }
  for (const e of manifest.edits) {
    const text = current(e.file);
    if (text === undefined) throw new SkillError(`${name}: ${e.file} is missing`);
    const lines = text.split('\n');
    const at = lines.flatMap((l, i) => (l.trim() === e.after.trim() ? [i] : []));
    if (at.length !== 1) {
      throw new SkillError(
        `${name}: ${e.file} has ${at.length === 0 ? 'no' : 'more than one'} line "${e.after}"`,
      );
    }
    if (lines.some((l) => l.trim() === e.insert.trim())) continue; // applied before
    // Into the block under the anchor (same indent, up to a blank or closing line), in sorted
    // place, so the result does not depend on the order skills were applied in.
    const indent = /^\s*/.exec(lines[at[0]])[0];
    const line = indent + e.insert.trim();
    let i = at[0] + 1;
    const inBlock = (l) =>
      typeof l === 'string' && l.startsWith(indent) && /^[^\s)\]}]/.test(l.slice(indent.length));
    while (inBlock(lines[i]) && lines[i] < line) i++;
    lines.splice(i, 0, line);
    writes.set(e.file, lines.join('\n'));
  }
  if (manifest.dependencies.length > 0) {
    const pkg = JSON.parse(current('package.json'));
    for (const dep of manifest.dependencies) {
      if (pkg.dependencies?.[dep]) continue;
      const version = pkg.devDependencies?.[dep];
      if (!version) throw new SkillError(`${name}: ${dep} is not in package.json's devDependencies`);
      pkg.dependencies = Object.fromEntries(Object.entries({ ...pkg.dependencies, [dep]: version }).sort());
      delete pkg.devDependencies[dep];
    }
    writes.set('package.json', `${JSON.stringify(pkg, null, 2)}\n`);
  }
  return { manifest, writes };
}

function readText(file) {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Resolves a skill name (add-telegram) or folder to its folder. */
export function skillDir(nameOrDir, root = ROOT) {
  const dir = nameOrDir.includes('/')
    ? path.resolve(nameOrDir)
    : path.join(root, '.claude', 'skills', nameOrDir);
  if (!existsSync(path.join(dir, 'skill.json')))
    throw new SkillError(`${nameOrDir}: no skill.json in ${dir}`);
  return dir;
}

/** Applies the skills (folders) to `project`, all or none; returns the test files they carry. */
export function applySkills(dirs, project) {
  const pending = new Map();
  const tests = [];
  for (const dir of dirs) {
    const { manifest, writes } = plan(dir, project, pending);
    for (const [rel, content] of writes) pending.set(rel, content);
    tests.push(...manifest.tests);
  }
  for (const [rel, content] of pending) {
    const file = path.join(project, rel);
    if (readText(file) === content) continue;
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, content);
  }
  return tests;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const { values, positionals } = parseArgs({
      allowPositionals: true,
      options: { project: { type: 'string' }, 'copy-to': { type: 'string' } },
    });
    if (positionals.length === 0)
      throw new SkillError('usage: apply-skill.mjs <skill>… [--project DIR] [--copy-to DIR]');
    const dirs = positionals.map((p) => skillDir(p));
    let project = path.resolve(values.project ?? ROOT);
    if (values['copy-to']) {
      copyProject(project, path.resolve(values['copy-to']));
      project = path.resolve(values['copy-to']);
    }
    const tests = applySkills(dirs, project);
    console.log(`applied ${positionals.join(', ')} to ${project}; their tests: ${tests.join(' ')}`);
    if (!values['copy-to']) console.log('next: npm install, then npm test');
  } catch (err) {
    console.error(`apply-skill: ${err.message}`);
    process.exit(1);
  }
}
