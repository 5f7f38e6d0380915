// Configuration: .env parsing, the process environment on top, validation with one-line errors,
// and the promise that .env secrets never reach process.env. Every test runs on a fresh temp home.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { type Config, ConfigError, loadConfig, parseDotenv } from '../src/config.js';

const homes: string[] = [];
after(() => {
  for (const home of homes) rmSync(home, { recursive: true, force: true });
});

/** A fresh temp home, with a `.env` holding `dotenv` when given. */
function home(dotenv?: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-config-'));
  homes.push(dir);
  if (dotenv !== undefined) writeFileSync(path.join(dir, '.env'), dotenv);
  return dir;
}

/** Loads the config of a home whose .env is `dotenv`, with `env` as the process environment. */
function load(dotenv: string | undefined, env: Record<string, string> = {}): Config {
  return loadConfig(env, { root: home(dotenv) });
}

/** The ConfigError that `fn` throws (fails the test if it throws anything else or nothing). */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a ConfigError, but nothing was thrown');
}

describe('parseDotenv', () => {
  test('reads KEY=VALUE lines and skips blank lines and comments', () => {
    const vars = parseDotenv('# a comment\n\nA=1\n   # indented comment\nB = two\r\nC=\n');
    assert.deepEqual(vars, { A: '1', B: 'two', C: '' });
  });

  test('accepts an `export ` prefix', () => {
    assert.deepEqual(parseDotenv('export A=1\nexport   B=2'), { A: '1', B: '2' });
  });

  test('strips matching single or double quotes and keeps a # inside them', () => {
    const vars = parseDotenv(`A="x # y"\nB='z # w'\nC=plain # trailing comment\nD=a#b`);
    assert.deepEqual(vars, { A: 'x # y', B: 'z # w', C: 'plain', D: 'a#b' });
  });

  test('turns \\n into a newline inside double quotes only', () => {
    const vars = parseDotenv(`A="line1\\nline2"\nB='line1\\nline2'\nC="say \\"hi\\""`);
    assert.equal(vars.A, 'line1\nline2');
    assert.equal(vars.B, 'line1\\nline2');
    assert.equal(vars.C, 'say "hi"');
  });

  // Regression: the quote check looks at the whole rest of the line, so a trailing comment after a
  // quoted value sends it down the unquoted path, which strips the comment but keeps the quotes.
  test('regression: KEY="value" # comment in .env no longer keeps the quotes in the value', () => {
    const vars = parseDotenv(`ANTHROPIC_API_KEY="sk-ant-xyz" # personal key\nB='two' # note`);
    assert.deepEqual(vars, { ANTHROPIC_API_KEY: 'sk-ant-xyz', B: 'two' });
  });

  test('a malformed line is a ConfigError naming its line number', () => {
    const err = configError(() => parseDotenv('A=1\n# fine\nthis is not an assignment\n'));
    assert.match(err.message, /\.env line 3 is not KEY=VALUE: this is not an assignment/);
    assert.doesNotMatch(err.message, /\n/);
  });
});

describe('loadConfig', () => {
  test('defaults match the table in the README', () => {
    const root = home();
    const config = loadConfig({}, { root });
    assert.equal(config.home, root);
    assert.equal(config.projectRoot, root);
    assert.equal(config.anthropicApiKey, undefined);
    assert.equal(config.claudeOauthToken, undefined);
    assert.equal(config.anthropicBaseUrl, 'https://api.anthropic.com');
    assert.equal(config.model, undefined);
    assert.equal(config.assistantName, 'Krabby');
    assert.equal(config.sandbox, 'auto');
    assert.equal(config.maxConcurrentAgents, 5);
    assert.equal(config.idleTimeoutMs, 1_800_000);
    assert.equal(config.agentTimeoutMs, 1_800_000);
    assert.equal(config.webHost, '127.0.0.1');
    assert.equal(config.webPort, 3000);
    assert.equal(config.webToken, undefined);
    assert.equal(config.timezone, Intl.DateTimeFormat().resolvedOptions().timeZone);
    assert.equal(config.egressAllow, undefined);
  });

  test('reads settings from the .env under the home', () => {
    const config = load(
      [
        '# my settings',
        'export ANTHROPIC_API_KEY="sk-from-dotenv"',
        "ASSISTANT_NAME='Andy'",
        'MAX_CONCURRENT_AGENTS=3 # fewer',
        'TIMEZONE=Europe/Berlin',
        'ANTHROPIC_BASE_URL=http://127.0.0.1:9999/proxy/',
        'EGRESS_ALLOW= github.com, ,pypi.org ',
      ].join('\n'),
    );
    assert.equal(config.anthropicApiKey, 'sk-from-dotenv');
    assert.equal(config.assistantName, 'Andy');
    assert.equal(config.maxConcurrentAgents, 3);
    assert.equal(config.timezone, 'Europe/Berlin');
    assert.equal(config.anthropicBaseUrl, 'http://127.0.0.1:9999/proxy');
    assert.deepEqual(config.egressAllow, ['github.com', 'pypi.org']);
  });

  test('the process environment wins over .env', () => {
    const config = load('ASSISTANT_NAME=FromFile\nWEB_PORT=4000\nANTHROPIC_API_KEY=file-key\n', {
      ASSISTANT_NAME: 'FromEnv',
      ANTHROPIC_API_KEY: 'env-key',
    });
    assert.equal(config.assistantName, 'FromEnv');
    assert.equal(config.anthropicApiKey, 'env-key');
    assert.equal(config.webPort, 4000);
  });

  test('secrets from .env are not copied into process.env', () => {
    const before = JSON.stringify(process.env);
    const secret = 'sk-ant-dotenv-only-7f3a9c';
    const config = load(
      `ANTHROPIC_API_KEY=${secret}\nCLAUDE_CODE_OAUTH_TOKEN=oauth-${secret}\nDISCORD_BOT_TOKEN=bot-${secret}\nWEB_TOKEN=web-${secret}\n`,
    );
    assert.equal(config.anthropicApiKey, secret);
    assert.equal(config.claudeOauthToken, `oauth-${secret}`);
    assert.equal(JSON.stringify(process.env), before);
    assert.ok(!Object.values(process.env).some((v) => v?.includes(secret)));
  });

  test('a malformed .env line stops loading with a ConfigError naming the line', () => {
    const err = configError(() => load('ASSISTANT_NAME=Andy\nnot-an-assignment\n'));
    assert.match(err.message, /\.env line 2/);
  });

  test('a missing .env is fine and an unreadable one is a ConfigError', () => {
    assert.equal(load(undefined).assistantName, 'Krabby');
    const root = home();
    mkdirSync(path.join(root, '.env'));
    const err = configError(() => loadConfig({}, { root }));
    assert.match(err.message, /^cannot read .*\.env: /);
  });

  test('an empty secret is a one-line ConfigError with a hint', () => {
    const err = configError(() => load('ANTHROPIC_API_KEY=\n'));
    assert.equal(
      err.message,
      'ANTHROPIC_API_KEY is set but empty: put your key from console.anthropic.com in .env, or remove the line',
    );
    const blank = configError(() => load('DISCORD_BOT_TOKEN="   "\n'));
    assert.match(
      blank.message,
      /^DISCORD_BOT_TOKEN is set but empty: put the bot token from the Developer Portal/,
    );
  });

  const badValues: [string, string, RegExp][] = [
    ['MAX_CONCURRENT_AGENTS', '0', /between 1 and 100/],
    ['MAX_CONCURRENT_AGENTS', '101', /between 1 and 100/],
    ['WEB_PORT', '70000', /between 0 and 65535/],
    ['WEB_PORT', '-1', /whole number/],
    ['IDLE_TIMEOUT_MS', 'abc', /whole number/],
    ['AGENT_TIMEOUT_MS', '1.5', /whole number/],
    ['TIMEZONE', 'Mars/Olympus_Mons', /IANA time zone/],
    ['SANDBOX', 'chroot', /one of auto, bwrap, docker, podman, apple/],
    ['ASSISTANT_NAME', '@Krabby', /1-32 letters/],
    ['ASSISTANT_NAME', 'two words', /1-32 letters/],
    ['ANTHROPIC_BASE_URL', 'ftp://example.com', /http\(s\) URL/],
    ['ANTHROPIC_BASE_URL', 'api.anthropic.com', /http\(s\) URL/],
    ['DISCORD_API_URL', 'not a url', /http\(s\) URL/],
    ['DISCORD_MAIN_CHANNEL_ID', '#general', /channel id/],
    ['MAX_RUN_COST_USD', '$2', /US dollars/],
    ['DISCORD_WAKE_ON_BOTS', 'yes', /true or false/],
    ['SANDBOX_MEMORY', 'lots', /512m or 2g/],
  ];
  for (const [name, value, why] of badValues) {
    test(`${name}=${value} is a one-line ConfigError naming the setting and the value`, () => {
      for (const err of [
        configError(() => load(`${name}=${value}\n`)),
        configError(() => load(undefined, { [name]: value })),
      ]) {
        assert.match(err.message, why);
        assert.ok(err.message.includes(name), err.message);
        assert.ok(err.message.includes(`${name}=${JSON.stringify(value)}`), err.message);
        assert.doesNotMatch(err.message, /\n/);
      }
    });
  }

  // Regression: the URL check is a regex (`^https?://[^\s]+$`), so values that `new URL()` rejects
  // load fine and only fail when the credential proxy parses ANTHROPIC_BASE_URL at the first run.
  test('regression: an ANTHROPIC_BASE_URL that new URL() rejects fails validation at start, not at the first run', () => {
    for (const value of ['http://127.0.0.1:99999', 'http://[::1', 'http://%zz']) {
      assert.throws(() => new URL(value), TypeError);
      const err = configError(() => load(undefined, { ANTHROPIC_BASE_URL: value }));
      assert.ok(err.message.includes(`ANTHROPIC_BASE_URL=${JSON.stringify(value)}`), err.message);
    }
  });

  test('a value with a newline is still reported on one line', () => {
    const err = configError(() => load('TIMEZONE="Europe/\\nBerlin"\n'));
    assert.equal(err.message.split('\n').length, 1);
    assert.match(err.message, /TIMEZONE="Europe\/\\nBerlin"/);
  });

  test('a non-loopback WEB_HOST without WEB_TOKEN is refused', () => {
    const err = configError(() => load('WEB_HOST=0.0.0.0\n'));
    assert.match(err.message, /WEB_HOST=0\.0\.0\.0 is not loopback: set WEB_TOKEN/);
    assert.equal(load('WEB_HOST=0.0.0.0\nWEB_TOKEN=long-random-string\n').webHost, '0.0.0.0');
    assert.equal(load('WEB_HOST=localhost\n').webHost, 'localhost');
  });

  test('the config object is frozen', () => {
    const config = load('EGRESS_ALLOW=github.com\n');
    assert.ok(Object.isFrozen(config));
    assert.ok(Object.isFrozen(config.egressAllow));
    assert.throws(() => {
      (config as { assistantName: string }).assistantName = 'Mallory';
    }, TypeError);
    assert.equal(config.assistantName, 'Krabby');
  });

  test('NANOCLAW_HOME sets where .env, store, data, groups and logs live', () => {
    const root = home('ASSISTANT_NAME=FromRoot\n');
    const nanoHome = home('ASSISTANT_NAME=FromHome\n');
    const config = loadConfig({ NANOCLAW_HOME: nanoHome }, { root });
    assert.equal(config.home, nanoHome);
    assert.equal(config.projectRoot, root);
    assert.equal(config.storeDir, path.join(nanoHome, 'store'));
    assert.equal(config.dataDir, path.join(nanoHome, 'data'));
    assert.equal(config.groupsDir, path.join(nanoHome, 'groups'));
    assert.equal(config.logsDir, path.join(nanoHome, 'logs'));
    assert.equal(config.assistantName, 'FromHome');
  });

  test('without NANOCLAW_HOME the project root is the home', () => {
    const root = home();
    const config = loadConfig({}, { root });
    assert.equal(config.storeDir, path.join(root, 'store'));
    assert.equal(config.groupsDir, path.join(root, 'groups'));
  });
});

test('an invalid EGRESS_ALLOW glob is a one-line ConfigError naming it', () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-config-'));
  try {
    assert.throws(
      () => loadConfig({ NANOCLAW_HOME: root, EGRESS_ALLOW: 'ok.example.org, a*.com' }, { root }),
      (err: unknown) =>
        err instanceof ConfigError &&
        /^EGRESS_ALLOW: glob "a\*\.com"/.test(err.message) &&
        !err.message.includes('\n'),
    );
    assert.deepEqual(
      loadConfig({ NANOCLAW_HOME: root, EGRESS_ALLOW: '*.example.org,site.test' }, { root }).egressAllow,
      ['*.example.org', 'site.test'],
    );
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
