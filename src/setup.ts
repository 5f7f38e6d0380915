// `nanoclaw setup`: from a clone to a configured assistant. Checks Node and the sandbox runtime
// (building the agent image where a container runtime is chosen), takes the model credential and
// the Discord settings from flags or prompts, writes .env (mode 0600, merged with what is there),
// registers the Discord main chat, and offers to install the service. Every answer is checked by
// the same config schema `start` uses, before anything is written.
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, parseDotenv, projectRoot } from './config.js';
import { openDb } from './db.js';
import { registerMainChat } from './orchestrator.js';
import { sandboxFor } from './sandbox/detect.js';

const FLAGS = {
  'non-interactive': { type: 'boolean' },
  'anthropic-api-key': { type: 'string' },
  'oauth-token': { type: 'string' },
  'discord-bot-token': { type: 'string' },
  'discord-main-channel': { type: 'string' },
  'discord-owner': { type: 'string' },
  sandbox: { type: 'string' },
  'assistant-name': { type: 'string' },
  timezone: { type: 'string' },
  'build-image': { type: 'boolean' },
  service: { type: 'boolean' },
} as const;

/** Flag → .env name. */
const SETTINGS: [keyof typeof FLAGS, string][] = [
  ['anthropic-api-key', 'ANTHROPIC_API_KEY'],
  ['oauth-token', 'CLAUDE_CODE_OAUTH_TOKEN'],
  ['discord-bot-token', 'DISCORD_BOT_TOKEN'],
  ['discord-main-channel', 'DISCORD_MAIN_CHANNEL_ID'],
  ['discord-owner', 'DISCORD_OWNER_ID'],
  ['sandbox', 'SANDBOX'],
  ['assistant-name', 'ASSISTANT_NAME'],
  ['timezone', 'TIMEZONE'],
];

/** .env text with `updates` set: changed lines in place, new ones appended, the rest kept. */
export function mergeDotenv(text: string, updates: Readonly<Record<string, string>>): string {
  const left = new Map(Object.entries(updates));
  const lines = text.split('\n').map((line) => {
    const key = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=/.exec(line)?.[1];
    const value = key === undefined ? undefined : left.get(key);
    if (key === undefined || value === undefined) return line;
    left.delete(key);
    return `${key}=${JSON.stringify(value)}`;
  });
  while (lines.length > 0 && lines.at(-1) === '') lines.pop();
  for (const [k, v] of left) lines.push(`${k}=${JSON.stringify(v)}`);
  return `${lines.join('\n')}\n`;
}

export interface SetupContext {
  env: NodeJS.ProcessEnv;
  /** Asks a question (interactive mode); default: the terminal. */
  ask?: (question: string) => Promise<string>;
  /** Runs container/build.sh with its output passed through; default: spawn it. */
  build?: (env: NodeJS.ProcessEnv) => Promise<number>;
  /** Installs the service (`nanoclaw service install`). */
  installService: () => Promise<number>;
}

type Out = (s: string) => void;

export async function setupCommand(args: string[], ctx: SetupContext, out: Out): Promise<number> {
  const { values } = parseArgs({ args, options: FLAGS, strict: true });
  const interactive = !values['non-interactive'];
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 20)
    throw new ConfigError(`Node.js ${process.versions.node} is too old: NanoClaw needs 20 or newer`);
  out(`ok: Node.js ${process.versions.node}`);

  const home = path.resolve(ctx.env.NANOCLAW_HOME ?? projectRoot());
  const envFile = path.join(home, '.env');
  const before = existsSync(envFile) ? readFileSync(envFile, 'utf8') : '';
  const current = { ...parseDotenv(before), ...ctx.env } as Record<string, string | undefined>;
  const updates: Record<string, string> = {};
  for (const [flag, name] of SETTINGS) {
    const v = values[flag];
    if (typeof v === 'string') updates[name] = v.trim();
  }
  const ask = ctx.ask ?? terminalQuestion;
  if (interactive) {
    if (!updates.ANTHROPIC_API_KEY && !updates.CLAUDE_CODE_OAUTH_TOKEN && !current.ANTHROPIC_API_KEY) {
      const key = (await ask('Anthropic API key (sk-ant-…; Enter to skip): ')).trim();
      if (key) updates.ANTHROPIC_API_KEY = key;
    }
    if (!updates.DISCORD_BOT_TOKEN && !current.DISCORD_BOT_TOKEN) {
      const token = (await ask('Discord bot token (Enter to skip Discord): ')).trim();
      if (token) updates.DISCORD_BOT_TOKEN = token;
      const channel =
        token && (await ask('Discord channel id for your private main chat (Enter to skip): ')).trim();
      if (channel) updates.DISCORD_MAIN_CHANNEL_ID = channel;
      const owner = channel && (await ask('Your Discord user id (only you wake the main chat): ')).trim();
      if (owner) updates.DISCORD_OWNER_ID = owner;
    }
  }
  // The whole configuration is validated before anything is written.
  const config = loadConfig({ ...ctx.env, ...updates, NANOCLAW_HOME: home });
  if (Object.keys(updates).length > 0) {
    writeFileSync(envFile, mergeDotenv(before, updates), { mode: 0o600 });
    chmodSync(envFile, 0o600);
    out(`ok: wrote ${Object.keys(updates).join(', ')} to ${envFile} (mode 0600)`);
  }

  let sandbox: string;
  try {
    sandbox = sandboxFor(config, ctx.env).kind;
  } catch (e) {
    const image = /image .* (is not available|has Claude Code)/.test((e as Error).message);
    if (!image || !(values['build-image'] ?? interactive)) throw e;
    out(`building the agent image ${config.containerImage} (this takes a few minutes)…`);
    const code = await (ctx.build ?? buildImage)({ ...ctx.env, CONTAINER_IMAGE: config.containerImage });
    if (code !== 0) throw new ConfigError(`container/build.sh failed (exit ${code}): see its output above`);
    sandbox = sandboxFor(config, ctx.env).kind;
  }
  out(`ok: sandbox ${sandbox}`);

  if (config.discordMainChannelId) {
    const db = openDb(path.join(config.storeDir, 'messages.db'));
    try {
      const jid = `discord:${config.discordMainChannelId}`;
      registerMainChat(db, jid, config.assistantName, Date.now());
      out(`ok: ${jid} is the main chat`);
    } finally {
      db.close();
    }
  }
  const service =
    values.service ??
    (interactive &&
      /^y/i.test(await ask('Install the service (starts at login, restarts on failure)? [y/N] ')));
  if (service && (await ctx.installService()) !== 0) return 1;
  out(
    `done: start it with \`nanoclaw start\`${service ? ' (or let the service run it)' : ''}, then open http://${config.webHost}:${config.webPort}/`,
  );
  return 0;
}

async function terminalQuestion(question: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  try {
    return await rl.question(question);
  } finally {
    rl.close();
  }
}

function buildImage(env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(path.join(projectRoot(), 'container', 'build.sh'), [], { env, stdio: 'inherit' });
    child.on('error', () => resolve(127));
    child.on('exit', (code) => resolve(code ?? 1));
  });
}
