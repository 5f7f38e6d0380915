// `nanoclaw setup`: non-interactive through the real bin on a temp NANOCLAW_HOME, and the
// interactive path with answers and an image build injected.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { parseDotenv } from '../src/config.js';
import { openDb } from '../src/db.js';
import { mergeDotenv, setupCommand } from '../src/setup.js';
import { nanoclaw, removeHome, tempHome } from './support/app.js';

test('mergeDotenv changes lines in place, keeps comments and other settings, appends new ones', () => {
  const text = '# my settings\nASSISTANT_NAME=Andy\nexport TIMEZONE=UTC\n\n';
  const merged = mergeDotenv(text, { TIMEZONE: 'Europe/Berlin', ANTHROPIC_API_KEY: 'sk-ant-x "q"' });
  assert.equal(
    merged,
    '# my settings\nASSISTANT_NAME=Andy\nTIMEZONE="Europe/Berlin"\nANTHROPIC_API_KEY="sk-ant-x \\"q\\""\n',
  );
  assert.deepEqual(parseDotenv(merged), {
    ASSISTANT_NAME: 'Andy',
    TIMEZONE: 'Europe/Berlin',
    ANTHROPIC_API_KEY: 'sk-ant-x "q"',
  });
});

test('setup --non-interactive writes .env with mode 0600, registers the Discord main chat, and doctor agrees', async () => {
  const home = tempHome();
  try {
    writeFileSync(path.join(home, '.env'), '# kept\nTIMEZONE=UTC\n');
    const run = await nanoclaw(
      home,
      'setup',
      '--non-interactive',
      '--anthropic-api-key',
      'sk-ant-test-key',
      '--discord-bot-token',
      'bot-token',
      '--discord-main-channel',
      '123456789',
      '--discord-owner',
      '987654321',
      '--sandbox',
      'bwrap',
    );
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^ok: Node\.js /m);
    assert.match(run.stdout, /^ok: sandbox bwrap$/m);
    assert.match(run.stdout, /^ok: discord:123456789 is the main chat$/m);
    const env = path.join(home, '.env');
    assert.equal(statSync(env).mode & 0o777, 0o600);
    const text = readFileSync(env, 'utf8');
    assert.match(text, /^# kept$/m);
    assert.deepEqual(parseDotenv(text), {
      TIMEZONE: 'UTC',
      ANTHROPIC_API_KEY: 'sk-ant-test-key',
      DISCORD_BOT_TOKEN: 'bot-token',
      DISCORD_MAIN_CHANNEL_ID: '123456789',
      DISCORD_OWNER_ID: '987654321',
      SANDBOX: 'bwrap',
    });
    const db = openDb(path.join(home, 'store', 'messages.db'));
    assert.equal(db.group('discord:123456789')?.isMain, true);
    db.close();
    const doctor = await nanoclaw(home, 'doctor');
    assert.equal(doctor.code, 0, doctor.stderr);
    assert.match(doctor.stdout, /^✓ model credential ANTHROPIC_API_KEY$/m);
  } finally {
    removeHome(home);
  }
});

test('a bad answer is refused with one line and nothing is written', async () => {
  const home = tempHome();
  try {
    writeFileSync(path.join(home, '.env'), 'TIMEZONE=UTC\n');
    const run = await nanoclaw(home, 'setup', '--non-interactive', '--discord-main-channel', '123456789');
    assert.equal(run.code, 1);
    assert.equal(run.stderr.trim().split('\n').length, 1);
    assert.match(run.stderr, /DISCORD_OWNER_ID/);
    assert.equal(readFileSync(path.join(home, '.env'), 'utf8'), 'TIMEZONE=UTC\n');
    assert.equal(existsSync(path.join(home, 'store')), false);
  } finally {
    removeHome(home);
  }
});

test('regression: setup repairs a bad value in .env instead of failing on it', async () => {
  const home = tempHome();
  try {
    writeFileSync(path.join(home, '.env'), 'SANDBOX=bogus\nTIMEZONE=UTC\n');
    assert.equal((await nanoclaw(home, 'status')).code, 1, 'the bad value stops other commands');
    const run = await nanoclaw(home, 'setup', '--non-interactive', '--sandbox', 'bwrap');
    assert.equal(run.code, 0, run.stderr);
    assert.match(readFileSync(path.join(home, '.env'), 'utf8'), /^SANDBOX="bwrap"$/m);
    assert.equal((await nanoclaw(home, 'status')).code, 0);
  } finally {
    removeHome(home);
  }
});

test('interactive setup asks for what is missing, builds a missing image, and installs the service when asked', async () => {
  const home = tempHome();
  const bin = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-bin-'));
  const built = path.join(bin, 'built');
  try {
    // A podman whose image appears once the build ran.
    writeFileSync(
      path.join(bin, 'podman'),
      `#!/bin/sh\nif [ -f ${built} ]; then echo 2.1.332; else echo "Error: image not known" >&2; exit 125; fi\n`,
      { mode: 0o755 },
    );
    const questions: string[] = [];
    const answers = ['sk-ant-typed', '', 'y'];
    const lines: string[] = [];
    let installed = 0;
    const code = await setupCommand(
      [],
      {
        env: { NANOCLAW_HOME: home, PATH: `${bin}:/usr/bin:/bin`, SANDBOX: 'podman' },
        ask: async (q) => {
          questions.push(q);
          return answers.shift() ?? '';
        },
        build: async (env) => {
          assert.equal(env.CONTAINER_IMAGE, 'nanoclaw-agent:latest');
          writeFileSync(built, '');
          return 0;
        },
        installService: async () => {
          installed++;
          return 0;
        },
      },
      (s) => lines.push(s),
    );
    assert.equal(code, 0, lines.join('\n'));
    assert.equal(questions.length, 3, questions.join(' | '));
    assert.match(questions[0] ?? '', /Anthropic API key/);
    assert.match(questions[1] ?? '', /Discord bot token/);
    assert.match(questions[2] ?? '', /Install the service/);
    assert.ok(lines.some((l) => l.startsWith('building the agent image nanoclaw-agent:latest')));
    assert.ok(lines.includes('ok: sandbox podman'));
    assert.equal(installed, 1);
    assert.equal(
      parseDotenv(readFileSync(path.join(home, '.env'), 'utf8')).ANTHROPIC_API_KEY,
      'sk-ant-typed',
    );
  } finally {
    removeHome(home);
    rmSync(bin, { recursive: true, force: true });
  }
});
