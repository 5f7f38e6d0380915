// Configuration: `$NANOCLAW_HOME/.env` merged under the process environment (the process wins),
// parsed once, validated, frozen. Secrets are read from .env into this object only: they are never
// copied into process.env, so no child process can inherit them.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { globProblem } from './egress.js';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const SANDBOXES = ['auto', 'bwrap', 'docker', 'podman', 'apple'] as const;
export type SandboxKind = (typeof SANDBOXES)[number];

/** The parsed configuration: what loadConfig returns (its fields are listed there). */
export type Config = ReturnType<typeof loadConfig>;

/** The checkout this file belongs to (dist/src/config.js or src/config.ts → two or three levels up). */
export function projectRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.basename(path.dirname(here)) === 'dist'
    ? path.resolve(here, '../..')
    : path.resolve(here, '..');
}

/** Parses .env text: KEY=VALUE lines, `#` comments, optional `export `, single or double quotes. */
export function parseDotenv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) throw new ConfigError(`.env line ${i + 1} is not KEY=VALUE: ${line.slice(0, 40)}`);
    const [, key, rest = ''] = m as unknown as [string, string, string];
    // A quoted value ends at its closing quote; only a comment may follow it.
    const quoted = /^(["'])((?:\\.|(?!\1).)*)\1\s*(?:#.*)?$/.exec(rest);
    if (quoted) {
      const [, quote, body = ''] = quoted;
      out[key] = quote === '"' ? body.replace(/\\n/g, '\n').replace(/\\(["\\])/g, '$1') : body;
    } else if (/^["']/.test(rest)) {
      throw new ConfigError(`.env line ${i + 1}: the quote in ${key}=… is never closed`);
    } else {
      out[key] = rest.replace(/\s+#.*$/, '');
    }
  }
  return out;
}

const int = (name: string, min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, `${name} must be a whole number`)
    .transform(Number)
    .refine((n) => n >= min && n <= max, `${name} must be between ${min} and ${max}`);
const money = (name: string) =>
  z
    .string()
    .regex(/^\d+(\.\d+)?$/, `${name} must be an amount in US dollars like 2.50`)
    .transform(Number);
const bool = (name: string) =>
  z
    .enum(['true', 'false', '1', '0'], { error: `${name} must be true or false` })
    .transform((v) => v === 'true' || v === '1');
const url = (name: string) =>
  z
    .string()
    .refine(
      (v) => URL.canParse(v) && ['http:', 'https:'].includes(new URL(v).protocol),
      `${name} must be an http(s) URL`,
    )
    .transform((v) => v.replace(/\/+$/, ''));
const timezone = z.string().refine((tz) => {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}, 'TIMEZONE must be an IANA time zone like Europe/Berlin');

const schema = z.object({
  ANTHROPIC_API_KEY: z.string().optional(),
  CLAUDE_CODE_OAUTH_TOKEN: z.string().optional(),
  ANTHROPIC_BASE_URL: url('ANTHROPIC_BASE_URL').default('https://api.anthropic.com'),
  MODEL: z.string().optional(),
  ASSISTANT_NAME: z
    .string()
    .regex(/^[\p{L}\p{N}_-]{1,32}$/u, 'ASSISTANT_NAME must be 1-32 letters, digits, _ or -')
    .default('Krabby'),
  SANDBOX: z.enum(SANDBOXES, { error: `SANDBOX must be one of ${SANDBOXES.join(', ')}` }).default('auto'),
  MAX_CONCURRENT_AGENTS: int('MAX_CONCURRENT_AGENTS', 1, 100).default(5),
  IDLE_TIMEOUT_MS: int('IDLE_TIMEOUT_MS', 10, 2 ** 31 - 1).default(1_800_000),
  AGENT_TIMEOUT_MS: int('AGENT_TIMEOUT_MS', 10, 2 ** 31 - 1).default(1_800_000),
  WEB_HOST: z.string().min(1, 'WEB_HOST must not be empty').default('127.0.0.1'),
  WEB_PORT: int('WEB_PORT', 0, 65535).default(3000),
  WEB_TOKEN: z.string().optional(),
  TIMEZONE: timezone.optional(),
  DISCORD_BOT_TOKEN: z.string().optional(),
  DISCORD_MAIN_CHANNEL_ID: z
    .string()
    .regex(/^\d{5,25}$/, 'DISCORD_MAIN_CHANNEL_ID must be a channel id (digits)')
    .optional(),
  DISCORD_OWNER_ID: z
    .string()
    .regex(/^\d{5,25}$/, 'DISCORD_OWNER_ID must be a user id (digits)')
    .optional(),
  DISCORD_API_URL: url('DISCORD_API_URL').default('https://discord.com/api'),
  EGRESS_ALLOW: z.string().optional(),
  MAX_RUN_COST_USD: money('MAX_RUN_COST_USD').optional(),
  DAILY_COST_USD: money('DAILY_COST_USD').optional(),
  SENDER_RATE_PER_MIN: int('SENDER_RATE_PER_MIN', 1, 10_000).default(10),
  DISCORD_WAKE_ON_BOTS: bool('DISCORD_WAKE_ON_BOTS').default(false),
  ATTACHMENT_MAX_BYTES: int('ATTACHMENT_MAX_BYTES', 0, 2 ** 40).default(26_214_400),
  SANDBOX_MEMORY: z
    .string()
    .regex(/^\d+[kmg]?$/i, 'SANDBOX_MEMORY must look like 512m or 2g')
    .default('2g'),
  SANDBOX_CPUS: z
    .string()
    .regex(/^\d+(\.\d+)?$/, 'SANDBOX_CPUS must be a number like 1 or 1.5')
    .transform(Number)
    .default(1),
  SANDBOX_PIDS: int('SANDBOX_PIDS', 8, 1_000_000).default(256),
  CONTAINER_IMAGE: z
    .string()
    .regex(
      /^[a-z0-9][a-z0-9._/:@-]{0,254}$/,
      'CONTAINER_IMAGE must be an image name like nanoclaw-agent:latest',
    )
    .default('nanoclaw-agent:latest'),
  LOG_LEVEL: z
    .enum(['debug', 'info', 'warn', 'error'], { error: 'LOG_LEVEL must be debug, info, warn or error' })
    .default('info'),
  CLAUDE_CODE_MAX_RETRIES: int('CLAUDE_CODE_MAX_RETRIES', 0, 100).optional(),
  API_TIMEOUT_MS: int('API_TIMEOUT_MS', 1000, 2 ** 31 - 1).optional(),
  CLAUDE_CODE_AUTO_COMPACT_WINDOW: int('CLAUDE_CODE_AUTO_COMPACT_WINDOW', 1000, 10_000_000).optional(),
  SANDBOX_CA_CERTS: z
    .string()
    .regex(/^\/[^\0\n]*$/, 'SANDBOX_CA_CERTS must be an absolute path inside the sandbox')
    .optional(),
});

/** Secrets that may be absent but never empty, with what to do about an empty one. */
const SECRET_HINTS = {
  ANTHROPIC_API_KEY: 'put your key from console.anthropic.com in .env, or remove the line',
  CLAUDE_CODE_OAUTH_TOKEN: 'put the token from `claude setup-token` in .env, or remove the line',
  DISCORD_BOT_TOKEN: 'put the bot token from the Developer Portal in .env, or remove the line',
  WEB_TOKEN: 'choose a long random string, or remove the line',
};

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

/** Reads the .env file under `home` (if any) and validates it with `env` on top. Throws ConfigError. */
export function loadConfig(env: NodeJS.ProcessEnv, opts: { root?: string } = {}) {
  const root = opts.root ?? projectRoot();
  const home = path.resolve(env.NANOCLAW_HOME || root);
  let fileVars: Record<string, string> = {};
  try {
    fileVars = parseDotenv(readFileSync(path.join(home, '.env'), 'utf8'));
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new ConfigError(`cannot read ${path.join(home, '.env')}: ${(err as Error).message}`);
    }
  }
  const merged: Record<string, string> = { ...fileVars };
  for (const key of Object.keys(schema.shape)) {
    const v = env[key];
    if (v !== undefined) merged[key] = v;
  }
  for (const [key, hint] of Object.entries(SECRET_HINTS)) {
    if (merged[key]?.trim() === '') throw new ConfigError(`${key} is set but empty: ${hint}`);
  }
  const parsed = schema.safeParse(merged);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const key = String(issue?.path[0] ?? '');
    throw new ConfigError(
      `${issue?.message ?? 'invalid configuration'} (got ${key}=${JSON.stringify(merged[key])})`,
    );
  }
  const v = parsed.data;
  if (!LOOPBACK.has(v.WEB_HOST) && !v.WEB_TOKEN) {
    throw new ConfigError(
      `WEB_HOST=${v.WEB_HOST} is not loopback: set WEB_TOKEN so strangers cannot use the web chat`,
    );
  }
  if (v.DISCORD_MAIN_CHANNEL_ID && !v.DISCORD_OWNER_ID) {
    throw new ConfigError(
      'DISCORD_MAIN_CHANNEL_ID is set but DISCORD_OWNER_ID is not: put your Discord user id in .env so only you wake the main chat',
    );
  }
  const egress = v.EGRESS_ALLOW?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const badGlob = egress?.map(globProblem).find(Boolean);
  if (badGlob) throw new ConfigError(`EGRESS_ALLOW: ${badGlob}`);
  const cliEnv = Object.entries({
    CLAUDE_CODE_MAX_RETRIES: v.CLAUDE_CODE_MAX_RETRIES,
    API_TIMEOUT_MS: v.API_TIMEOUT_MS,
    CLAUDE_CODE_AUTO_COMPACT_WINDOW: v.CLAUDE_CODE_AUTO_COMPACT_WINDOW,
    NODE_EXTRA_CA_CERTS: v.SANDBOX_CA_CERTS,
  }).flatMap(([k, x]) => (x === undefined ? [] : [[k, String(x)] as const]));
  return Object.freeze({
    home,
    storeDir: path.join(home, 'store'),
    dataDir: path.join(home, 'data'),
    groupsDir: path.join(home, 'groups'),
    logsDir: path.join(home, 'logs'),
    projectRoot: root,
    anthropicApiKey: v.ANTHROPIC_API_KEY,
    claudeOauthToken: v.CLAUDE_CODE_OAUTH_TOKEN,
    anthropicBaseUrl: v.ANTHROPIC_BASE_URL,
    model: v.MODEL,
    assistantName: v.ASSISTANT_NAME,
    sandbox: v.SANDBOX,
    maxConcurrentAgents: v.MAX_CONCURRENT_AGENTS,
    idleTimeoutMs: v.IDLE_TIMEOUT_MS,
    agentTimeoutMs: v.AGENT_TIMEOUT_MS,
    webHost: v.WEB_HOST,
    webPort: v.WEB_PORT,
    webToken: v.WEB_TOKEN,
    timezone: v.TIMEZONE ?? Intl.DateTimeFormat().resolvedOptions().timeZone,
    discordBotToken: v.DISCORD_BOT_TOKEN,
    discordMainChannelId: v.DISCORD_MAIN_CHANNEL_ID,
    discordOwnerId: v.DISCORD_OWNER_ID,
    discordApiUrl: v.DISCORD_API_URL,
    egressAllow: egress && egress.length > 0 ? Object.freeze(egress) : undefined,
    maxRunCostUsd: v.MAX_RUN_COST_USD,
    dailyCostUsd: v.DAILY_COST_USD,
    senderRatePerMin: v.SENDER_RATE_PER_MIN,
    discordWakeOnBots: v.DISCORD_WAKE_ON_BOTS,
    attachmentMaxBytes: v.ATTACHMENT_MAX_BYTES,
    sandboxMemory: v.SANDBOX_MEMORY,
    sandboxCpus: v.SANDBOX_CPUS,
    sandboxPids: v.SANDBOX_PIDS,
    /** The agent image for docker, podman and apple (container/build.sh builds it). */
    containerImage: v.CONTAINER_IMAGE,
    logLevel: v.LOG_LEVEL,
    /** Claude Code tuning variables passed through to the sandboxed CLI. */
    cliEnv: Object.freeze(Object.fromEntries(cliEnv)),
    /** Every variable (.env under the environment): channels added by skills parse their own. */
    vars: Object.freeze({
      ...fileVars,
      ...Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined)),
    }),
  });
}
