#!/usr/bin/env node
// The `nanoclaw` command. Every command but `start` works on the store directly (creating and
// migrating it), so it needs no running orchestrator; a running one reads groups from the store
// on every message, so changes take effect without a restart.
import { mkdirSync, realpathSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { addedChannels } from './channels/added.js';
import { type Config, loadConfig, projectRoot } from './config.js';
import { type Db, type Group, openDb, planGroup, SCHEMA_VERSION } from './db.js';
import { globProblem } from './egress.js';
import { createLogger } from './log.js';
import {
  checkExtraMount,
  defaultAllowlistPath,
  type MountAllowlist,
  parseMountSpec,
  readAllowlist,
} from './mounts.js';
import { diff, log, restore } from './provenance.js';
import { sandboxFor } from './sandbox/detect.js';
import { describeSchedule, TASKS_CHANGED, type Task, taskStore } from './scheduler.js';
import { logsCommand, serviceCommand } from './service.js';
import { setupCommand } from './setup.js';
import { statusCommand } from './status.js';

type Out = (s: string) => void;

export class UsageError extends Error {
  override name = 'UsageError';
}

const HELP = `nanoclaw — a personal Claude assistant in your chat apps

Usage:
  nanoclaw setup [--non-interactive] [--anthropic-api-key K | --oauth-token T] [--discord-bot-token T
        --discord-main-channel ID --discord-owner ID] [--sandbox S] [--build-image] [--service]
                                      check Node and the sandbox, write .env (0600), register main
  nanoclaw start                      run the assistant (web chat on WEB_HOST:WEB_PORT)
  nanoclaw groups list [--json]       registered chats
  nanoclaw groups add <chat> --name <name> [--folder <folder>] [--trigger <@word>] [--no-trigger] [--main]
                                      register a chat (chat ids: web:main, discord:<channel id>)
  nanoclaw groups remove <chat|folder>
  nanoclaw groups set <chat|folder> [--egress <host globs|default>] [--mount <host>:<name>[:rw]]… [--clear-mounts]
                                      --egress limits the group's web access to these hosts
                                      (comma-separated, '*' = one label); 'default' returns it to
                                      EGRESS_ALLOW. --mount adds a host folder at
                                      /workspace/extra/<name>, only under a root listed in
                                      ~/.config/nanoclaw/mount-allowlist.json
  nanoclaw tasks list [--json]        scheduled tasks of every group
  nanoclaw tasks show|runs <task_id>  one task; its run log (start, duration, status, result)
  nanoclaw tasks pause|resume|cancel <task_id>
  nanoclaw memory log <chat|folder>   what the agent changed in its folder, newest first
  nanoclaw memory diff <chat|folder> [<commit>]
                                      changes since the last commit, or what one commit changed
  nanoclaw memory restore <chat|folder> <commit> [<file>]
                                      bring back the folder (or one file) as it was; undoable
  nanoclaw service install|uninstall|restart|status
                                      a systemd user unit (Linux) or launchd agent (macOS) that
                                      restarts on failure and logs to logs/nanoclaw{,.error}.log
  nanoclaw logs [<chat|folder>] [-f]  the service's log, of one group, or followed
  nanoclaw status [--json]            channels, agents, queue, next tasks, today's runs and cost
  nanoclaw doctor                     check the configuration, the sandbox runtime and the store
  nanoclaw --help

Configuration comes from $NANOCLAW_HOME/.env and the environment (see README).`;

function findGroup(db: Db, ref: string): Group | undefined {
  return db.group(ref) ?? db.groupByFolder(ref);
}

function groupsCommand(db: Db, args: string[], config: Config, out: Out): void {
  const [sub, ...rest] = args;
  if (sub === 'list') {
    const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' } }, strict: true });
    const groups = db.groups();
    if (values.json) {
      out(JSON.stringify(groups, null, 2));
      return;
    }
    for (const g of groups) {
      const wake = g.isMain
        ? 'main, every message'
        : g.requiresTrigger
          ? `trigger ${g.trigger}`
          : 'every message';
      out(`${g.jid}\t${g.folder}\t${g.name}\t(${wake})`);
    }
    return;
  }
  if (sub === 'add') {
    const { values, positionals } = parseArgs({
      args: rest,
      allowPositionals: true,
      strict: true,
      options: {
        name: { type: 'string' },
        folder: { type: 'string' },
        trigger: { type: 'string' },
        'no-trigger': { type: 'boolean' },
        main: { type: 'boolean' },
      },
    });
    const chat = positionals[0];
    if (!chat || positionals.length > 1) throw new UsageError('groups add takes exactly one chat id');
    if (!values.name?.trim()) throw new UsageError('groups add needs --name <name>');
    if (values.trigger !== undefined && values['no-trigger'])
      throw new UsageError('--trigger and --no-trigger exclude each other');
    const { name, folder, trigger, main = false } = values;
    const requiresTrigger = !values['no-trigger'];
    const plan = planGroup(db, { chat, name, folder, trigger, requiresTrigger, main }, config.assistantName);
    if (typeof plan === 'string') throw new UsageError(plan);
    const g = db.addGroup(plan, Date.now());
    out(`registered ${g.jid} as "${g.name}" in groups/${g.folder}`);
    return;
  }
  if (sub === 'remove') {
    const ref = rest[0];
    if (!ref || rest.length > 1) throw new UsageError('groups remove takes exactly one chat id or folder');
    const g = findGroup(db, ref);
    if (!g) throw new UsageError(`no registered group ${ref}`);
    if (g.jid === 'web:main') throw new UsageError('web:main is always served: it cannot be removed');
    db.removeGroup(g.jid);
    out(`removed ${g.jid} (its folder groups/${g.folder} is kept)`);
    return;
  }
  if (sub === 'set') {
    const { values, positionals } = parseArgs({
      args: rest,
      allowPositionals: true,
      strict: true,
      options: {
        egress: { type: 'string' },
        mount: { type: 'string', multiple: true },
        'clear-mounts': { type: 'boolean' },
      },
    });
    const ref = positionals[0];
    if (!ref || positionals.length > 1)
      throw new UsageError('groups set takes exactly one chat id or folder');
    const g = findGroup(db, ref);
    if (!g) throw new UsageError(`no registered group ${ref}`);
    if (values.egress === undefined && !values.mount && !values['clear-mounts'])
      throw new UsageError('groups set needs --egress, --mount or --clear-mounts');
    if (values.mount || values['clear-mounts'])
      setMounts(db, g, values.mount ?? [], !!values['clear-mounts'], config, out);
    if (values.egress === undefined) return;
    if (values.egress.trim() === 'default') {
      db.setGroupEgress(g.jid, null);
      out(`${g.jid}: egress follows EGRESS_ALLOW`);
      return;
    }
    const globs = values.egress
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    if (globs.length === 0)
      throw new UsageError("--egress needs host globs like '*.example.org', or 'default'");
    const problem = globs.map(globProblem).find(Boolean);
    if (problem) throw new UsageError(problem);
    db.setGroupEgress(g.jid, globs);
    out(`${g.jid}: egress limited to ${globs.join(', ')}`);
    return;
  }
  throw new UsageError(`unknown command "groups ${sub ?? ''}": try nanoclaw --help`);
}

/** Adds mounts (each judged against the allowlist now) or clears them; one refusal changes nothing. */
function setMounts(db: Db, g: Group, specs: string[], clear: boolean, config: Config, out: Out): void {
  const home = os.homedir();
  const allowlistPath = defaultAllowlistPath();
  let list: MountAllowlist | undefined;
  if (specs.length > 0) {
    try {
      list = readAllowlist(allowlistPath);
    } catch (err) {
      throw new UsageError(`mount allowlist ${allowlistPath}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  const mounts = clear ? [] : [...g.mounts];
  for (const spec of specs) {
    const m = parseMountSpec(spec, home);
    if (typeof m === 'string') throw new UsageError(m);
    const r = checkExtraMount(m, list, realpathSync, [config.projectRoot, config.home]);
    if (!r.ok) throw new UsageError(`mount ${spec} refused: ${r.reason}`);
    if (mounts.some((x) => x.name === m.name))
      throw new UsageError(`${g.jid} already has a mount named ${m.name}`);
    mounts.push(m);
  }
  db.setGroupMounts(g.jid, mounts);
  out(
    mounts.length
      ? `${g.jid}: mounts ${mounts.map((m) => `${m.host} → /workspace/extra/${m.name}${m.rw ? ' (rw)' : ''}`).join(', ')}`
      : `${g.jid}: no extra mounts`,
  );
}

function tasksCommand(db: Db, args: string[], config: Config, out: Out): void {
  const tasks = taskStore(db);
  const [sub, ...rest] = args;
  const line = (t: Task) =>
    `${t.id}\t${t.status}\t${describeSchedule(t)}\tnext ${t.nextRun === null ? '-' : new Date(t.nextRun).toISOString()}\t${t.groupFolder}\t${t.prompt.slice(0, 60)}`;
  if (sub === 'list') {
    const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' } }, strict: true });
    const list = tasks.list();
    if (values.json) out(JSON.stringify(list, null, 2));
    else if (list.length === 0) out('no scheduled tasks');
    else for (const t of list) out(line(t));
    return;
  }
  const id = rest[0];
  if (!sub || !['show', 'runs', 'pause', 'resume', 'cancel'].includes(sub))
    throw new UsageError('tasks takes list, show, runs, pause, resume or cancel');
  if (!id || rest.length > 1) throw new UsageError(`tasks ${sub} takes exactly one task id`);
  const t = tasks.get(id);
  if (!t) throw new UsageError(`no task ${id}`);
  if (sub === 'show') {
    out(line(t));
    out(`chat ${t.chatJid}, ${t.contextMode} context, ${t.failures} failures in a row\n${t.prompt}`);
    return;
  }
  if (sub === 'runs') {
    const runs = tasks.runs(t.id);
    if (runs.length === 0) out(`${t.id} has not run yet`);
    for (const r of runs) {
      const took = r.endedAt === null ? 'running' : `${r.endedAt - r.startedAt} ms`;
      out(
        `${new Date(r.startedAt).toISOString()}\t${took}\t${r.status}\t${(r.error ?? r.result ?? '').replace(/\s+/g, ' ').slice(0, 100)}`,
      );
    }
    return;
  }
  if (t.status === 'cancelled' || t.status === 'done') throw new UsageError(`${t.id} is ${t.status}`);
  const done = tasks.change(t, sub as 'pause' | 'resume' | 'cancel', Date.now());
  if (!done.ok) throw new UsageError(done.line);
  // A running orchestrator watches for this file and re-arms its timer.
  mkdirSync(config.dataDir, { recursive: true });
  writeFileSync(path.join(config.dataDir, TASKS_CHANGED), String(Date.now()));
  out(done.line);
}

/** `memory log|diff|restore`: the history of a group folder, kept by src/provenance.ts. */
async function memoryCommand(db: Db, args: string[], config: Config, out: Out) {
  const [sub, ref, ...rest] = args;
  const usage = {
    log: '<chat|folder>',
    diff: '<chat|folder> [<commit>]',
    restore: '<chat|folder> <commit> [<file>]',
  };
  if (sub !== 'log' && sub !== 'diff' && sub !== 'restore')
    throw new UsageError('memory takes log, diff or restore');
  const max = { log: 0, diff: 1, restore: 2 }[sub];
  if (!ref || rest.length > max || (sub === 'restore' && !rest[0]))
    throw new UsageError(`usage: nanoclaw memory ${sub} ${usage[sub]}`);
  const g = findGroup(db, ref);
  if (!g) throw new UsageError(`no registered group ${ref}`);
  if (sub === 'log') {
    const commits = await log(config, g.folder);
    if (commits.length === 0) out(`no history of groups/${g.folder} yet`);
    for (const c of commits)
      out(`${c.id.slice(0, 12)}\t${new Date(c.at).toISOString()}\t${c.message}\t${c.files.join(', ')}`);
  } else if (sub === 'diff') {
    const text = (await diff(config, g.folder, rest[0])).trimEnd();
    out(text || `groups/${g.folder} has not changed since its last commit`);
  } else {
    const [rev = '', file] = rest;
    const id = await restore(config, g.folder, rev, file);
    const what = `groups/${g.folder}${file ? `/${file}` : ''}`;
    out(id ? `restored ${what} as at ${rev} (commit ${id.slice(0, 12)})` : `${what} already is as at ${rev}`);
  }
}

/** Checks what `start` needs: one line per check, ✓ or ✗ with the fix; exits 1 on any ✗. */
async function doctor(env: NodeJS.ProcessEnv, out: Out): Promise<number> {
  let failed = false;
  const check = (ok: boolean, line: string) => {
    out(`${ok ? '✓' : '✗'} ${line}`);
    if (!ok) failed = true;
  };
  const major = Number(process.versions.node.split('.')[0]);
  check(major >= 20, `Node.js ${process.versions.node}${major >= 20 ? '' : ': install Node.js 20 or newer'}`);
  let config: Config;
  try {
    config = loadConfig(env);
  } catch (e) {
    check(false, `configuration: ${(e as Error).message}`);
    return 1;
  }
  check(true, `configuration (home ${config.home}, assistant ${config.assistantName})`);
  try {
    const sandbox = sandboxFor(config, env);
    check(true, `sandbox ${sandbox.kind}${sandbox.reason ? ` (${sandbox.reason})` : ''}`);
  } catch (e) {
    check(false, `sandbox: ${(e as Error).message}`);
  }
  const store = path.join(config.storeDir, 'messages.db');
  const db = openDb(store);
  try {
    check(true, `store ${store} (schema ${SCHEMA_VERSION}, ${db.groups().length} groups)`);
    // Channels added by skills check their variables when made; nothing starts and nothing is written.
    for (const add of addedChannels) {
      try {
        const channel = await add({
          config,
          db,
          log: createLogger('error', () => {}),
          now: Date.now,
          ingest: () => ({ stored: false, reason: 'doctor' }),
          registerMain: () => {},
        });
        if (channel) check(true, `${channel.name} configured`);
      } catch (e) {
        check(false, (e as Error).message);
      }
    }
  } finally {
    db.close();
  }
  if (config.anthropicApiKey) check(true, 'model credential ANTHROPIC_API_KEY');
  else if (config.claudeOauthToken) check(true, 'model credential CLAUDE_CODE_OAUTH_TOKEN');
  else
    check(
      false,
      'model credential: none, so agents only answer with a notice: put ANTHROPIC_API_KEY=… in .env (or run nanoclaw setup)',
    );
  check(
    true,
    config.discordBotToken
      ? `Discord configured (${config.discordApiUrl})`
      : 'Discord off (no DISCORD_BOT_TOKEN)',
  );
  check(
    true,
    `web chat on http://${config.webHost}:${config.webPort}/${config.webToken ? ' (token required)' : ''}`,
  );
  return failed ? 1 : 0;
}

/** Runs one command; returns the exit code. Output goes through `out`/`err`. */
export async function runCli(argv: string[], env: NodeJS.ProcessEnv, out: Out, err: Out): Promise<number> {
  const [cmd, ...args] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help' || args.includes('--help')) {
    out(HELP);
    return cmd === undefined ? 1 : 0;
  }
  try {
    if (cmd === 'start') {
      const { main } = await import('./index.js');
      await main();
      return 0;
    }
    if (cmd === 'doctor') return await doctor(env, out);
    if (!['setup', 'service', 'logs', 'groups', 'tasks', 'memory', 'status'].includes(cmd))
      throw new UsageError(`unknown command "${cmd}": try nanoclaw --help`);
    if (cmd === 'setup') {
      // Not from loadConfig: setup is how a bad .env is repaired, so it cannot need a good one.
      const home = path.resolve(env.NANOCLAW_HOME || projectRoot());
      const service = { env, platform: process.platform, home, projectRoot: projectRoot() };
      const installService = () => serviceCommand(['install'], service, out, err);
      return await setupCommand(args, { env, installService }, out);
    }
    const config = loadConfig(env);
    const service = { env, platform: process.platform, home: config.home, projectRoot: config.projectRoot };
    if (cmd === 'service') return await serviceCommand(args, service, out, err);
    const db = openDb(path.join(config.storeDir, 'messages.db'));
    try {
      if (cmd === 'logs')
        return await logsCommand(args, { home: config.home, group: (r) => findGroup(db, r) }, out, err);
      if (cmd === 'status') return await statusCommand(args, { config, db }, out, err);
      if (cmd === 'groups') groupsCommand(db, args, config, out);
      else if (cmd === 'memory') await memoryCommand(db, args, config, out);
      else tasksCommand(db, args, config, out);
    } finally {
      db.close();
    }
    return 0;
  } catch (e) {
    err(`nanoclaw: ${(e as Error).message}`);
    return 1;
  }
}

function invokedDirectly(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false; // argv[1] is not a file (e.g. node -e): imported, not run
  }
}

if (invokedDirectly()) {
  runCli(
    process.argv.slice(2),
    process.env,
    (s) => process.stdout.write(`${s}\n`),
    (s) => process.stderr.write(`${s}\n`),
  ).then((code) => {
    if (code !== 0) process.exitCode = code;
  });
}
