// The prose skills in .claude/skills (Claude Code's format) are checked where they can be: a
// frontmatter with a name matching the folder and a description, and every `nanoclaw <command>`
// and repository path they name exists, so they do not rot as the CLI changes.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { projectRoot } from '../src/config.js';
import { nanoclaw, removeHome, tempHome } from './support/app.js';

const SKILLS = path.join(projectRoot(), '.claude', 'skills');
const names = readdirSync(SKILLS).filter((n) => existsSync(path.join(SKILLS, n, 'SKILL.md')));

test('the prose skills are there', () => {
  for (const n of ['setup', 'customize', 'debug', 'update']) assert.ok(names.includes(n), n);
});

for (const name of names) {
  test(`skill ${name}: its frontmatter names it and says when to use it, and every command and path it names exists`, async () => {
    const text = readFileSync(path.join(SKILLS, name, 'SKILL.md'), 'utf8');
    const front = /^---\n([\s\S]*?)\n---\n/.exec(text)?.[1];
    assert.ok(front, 'a frontmatter block');
    const field = (k: string) => new RegExp(`^${k}: (.+)$`, 'm').exec(front)?.[1]?.trim();
    assert.equal(field('name'), name);
    assert.ok((field('description') ?? '').length >= 40, 'a description that says when to use it');
    const home = tempHome();
    try {
      const help = (await nanoclaw(home, '--help')).stdout;
      const commands = [...text.matchAll(/`nanoclaw ([a-z]+)(?: ([a-z]+))?/g)];
      assert.ok(commands.length > 0, 'it names nanoclaw commands');
      for (const [, cmd, sub] of commands) {
        const lines = help.split('\n').filter((l) => l.trim().startsWith(`nanoclaw ${cmd}`));
        assert.ok(lines.length > 0, `nanoclaw ${cmd} exists`);
        if (sub)
          assert.ok(
            lines.some((l) => new RegExp(`\\b${sub}\\b`).test(l)),
            `nanoclaw ${cmd} ${sub} exists`,
          );
      }
    } finally {
      removeHome(home);
    }
    for (const [, p] of text.matchAll(/`((?:container|groups|docs|templates)\/[\w./-]+)`/g)) {
      if (p?.includes('<') || p?.startsWith('groups/')) continue; // a placeholder or a live folder
      assert.ok(existsSync(path.join(projectRoot(), p ?? '')), `${p} exists`);
    }
  });
}
