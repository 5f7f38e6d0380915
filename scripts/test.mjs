// `npm test`: build, typecheck and lint, then every test file under node's test runner.
// Hermetic: real credentials and endpoints are removed from the environment first, so no test
// can reach a real service with them; the fakes listen on 127.0.0.1 only.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';

const SECRETS = [
  'ANTHROPIC_API_KEY',
  'ANTHROPIC_AUTH_TOKEN',
  'CLAUDE_CODE_OAUTH_TOKEN',
  'ANTHROPIC_BASE_URL',
  'DISCORD_BOT_TOKEN',
  'DISCORD_API_URL',
  'WEB_TOKEN',
  'NANOCLAW_HOME',
];
const env = { ...process.env };
for (const k of SECRETS) delete env[k];
// The add-* skills' channels (Telegram, Gmail, X) read their own variables: none from outside.
for (const k of Object.keys(env)) if (/^(TELEGRAM|GMAIL|X)_/.test(k)) delete env[k];

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', env });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

run('npx', ['tsc', '-p', '.']);
run('npx', ['biome', 'check', 'src', 'test', 'bench', 'scripts']);
const only = process.argv.slice(2);
const files = only.length
  ? only
  : readdirSync('dist/test', { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.test.js'))
      .map((f) => `dist/test/${f}`);
run(process.execPath, ['--test', '--test-timeout=300000', ...files]);
