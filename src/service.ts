// `nanoclaw service install|uninstall|status` and `nanoclaw logs`: NanoClaw as a user service
// (a systemd user unit on Linux, a launchd agent on macOS) that restarts on failure and appends
// its output to <home>/logs/. The renderers are pure; the commands are the thin shell around them.
import { execFile } from 'node:child_process';
import { createReadStream, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';

export type ServiceSpec = { node: string; cli: string; home: string; projectRoot: string; path: string };
export type Run = (cmd: string, args: string[]) => Promise<{ code: number; stdout: string; stderr: string }>;
type Out = (s: string) => void;
const fail = (err: Out, s: string) => {
  err(`nanoclaw: ${s}`);
  return 1;
};

const LABEL = 'com.nanoclaw.agent';
const UNIT = 'nanoclaw.service';
const BY = 'Written by `nanoclaw service install`; `nanoclaw service uninstall` removes it.';
const logFiles = (home: string) =>
  [path.join(home, 'logs', 'nanoclaw.log'), path.join(home, 'logs', 'nanoclaw.error.log')] as const;
const oneLine = (o: ServiceSpec) => {
  const bad = Object.entries(o).find(([, v]) => /[\0\r\n]/.test(v));
  if (bad) throw new TypeError(`service: ${bad[0]} must be one line (got ${JSON.stringify(bad[1])})`);
  return { ...o, logs: logFiles(o.home) };
};

// Unit-file syntax: `%` starts a specifier in every value; ExecStart= and Environment= split on
// whitespace outside double quotes (C escapes inside them), and ExecStart= also expands `$VAR`.
const pct = (s: string) => s.replace(/%/g, '%%');
const quote = (s: string) => `"${pct(s).replace(/[\\"]/g, '\\$&')}"`;
const arg = (s: string) => (s === '' || /[\s"'\\;]/.test(s) ? quote(s) : pct(s)).replace(/\$/g, '$$$$');

export function renderSystemdUnit(spec: ServiceSpec): string {
  const o = oneLine(spec);
  return `# ${BY}
# It is rewritten on every install: change settings in ${o.home}/.env, not here.
[Unit]
Description=NanoClaw, a personal Claude assistant

[Service]
ExecStart=${[o.node, o.cli, 'start'].map(arg).join(' ')}
WorkingDirectory=${pct(o.projectRoot)}
Environment=${quote(`NANOCLAW_HOME=${o.home}`)}
# The sandbox runtimes (bwrap, docker, podman) are found on this PATH.
Environment=${quote(`PATH=${o.path}`)}
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=20
StandardOutput=append:${pct(o.logs[0])}
StandardError=append:${pct(o.logs[1])}

[Install]
WantedBy=default.target
`;
}

const str = (s: string) =>
  `<string>${s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')}</string>`;

/** KeepAlive/SuccessfulExit=false: launchd restarts it after a crash, not after a clean stop. */
export function renderLaunchdPlist(spec: ServiceSpec): string {
  const o = oneLine(spec);
  return `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- ${BY} -->
<plist version="1.0">
<dict>
  <key>Label</key>${str(LABEL)}
  <key>ProgramArguments</key><array>${str(o.node)}${str(o.cli)}${str('start')}</array>
  <key>WorkingDirectory</key>${str(o.projectRoot)}
  <key>EnvironmentVariables</key>
  <dict><key>NANOCLAW_HOME</key>${str(o.home)}<key>PATH</key>${str(o.path)}</dict>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>StandardOutPath</key>${str(o.logs[0])}
  <key>StandardErrorPath</key>${str(o.logs[1])}
</dict>
</plist>
`;
}

/** execFile with a timeout and an output cap; a command that cannot start is a failed result. */
const execRun =
  (env: NodeJS.ProcessEnv): Run =>
  (cmd, args) =>
    new Promise((resolve) => {
      const opts = { env, timeout: 30_000, killSignal: 'SIGKILL' as const, maxBuffer: 1 << 20 };
      execFile(cmd, args, opts, (e, stdout, stderr) => {
        const why = e?.killed ? 'timed out after 30 s' : (e?.message ?? '');
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stdout, stderr: stderr || why });
      });
    });

export type ServiceContext = {
  env: NodeJS.ProcessEnv;
  platform: NodeJS.Platform;
  home: string;
  projectRoot: string;
  run?: Run;
  uid?: number;
};

/** Where the service file goes and the commands that load, unload and inspect it. */
function plan(ctx: ServiceContext, userHome: string) {
  const ctl = (...a: string[]) => ['systemctl', '--user', ...a];
  const gui = `gui/${ctx.uid ?? process.getuid?.() ?? 0}`;
  const plist = path.join(userHome, 'Library', 'LaunchAgents', `${LABEL}.plist`);
  if (ctx.platform === 'linux') {
    const dir = path.join(ctx.env.XDG_CONFIG_HOME || path.join(userHome, '.config'), 'systemd', 'user');
    return {
      file: path.join(dir, UNIT),
      render: renderSystemdUnit,
      install: [ctl('daemon-reload'), ctl('enable', '--now', UNIT)],
      uninstall: [ctl('disable', '--now', UNIT)],
      restart: [ctl('restart', UNIT)],
      status: ctl('status', UNIT, '--no-pager'),
      fix: 'no user systemd in this session: run `loginctl enable-linger $USER` and retry from a login session (ssh in as yourself, not su or sudo)',
    };
  }
  if (ctx.platform !== 'darwin') return undefined;
  return {
    file: plist,
    render: renderLaunchdPlist,
    install: [['launchctl', 'bootstrap', gui, plist]],
    uninstall: [['launchctl', 'bootout', `${gui}/${LABEL}`]],
    restart: [['launchctl', 'kickstart', '-k', `${gui}/${LABEL}`]],
    status: ['launchctl', 'print', `${gui}/${LABEL}`],
    fix: 'retry from a login session on the Mac (not over ssh or sudo); if it is already loaded, uninstall first',
  };
}

/** `service install|uninstall|restart|status`; resolves to the exit code. */
export async function serviceCommand(args: string[], ctx: ServiceContext, out: Out, err: Out) {
  const [sub, ...extra] = args;
  if (!['install', 'uninstall', 'restart', 'status'].includes(sub ?? '') || extra.length)
    return fail(err, 'service: takes install, uninstall, restart or status');
  if (!ctx.env.HOME) return fail(err, 'service: HOME is not set');
  const p = plan(ctx, ctx.env.HOME);
  if (!p) return fail(err, 'service: only Linux (systemd) and macOS (launchd) are supported');
  const run = ctx.run ?? execRun(ctx.env);
  const runAll = async (cmds: string[][]) => {
    for (const [cmd = '', ...a] of cmds) {
      const r = await run(cmd, a);
      const why = (r.stderr.trim() || r.stdout.trim() || `exit ${r.code}`).split('\n')[0];
      if (r.code !== 0) return `\`${[cmd, ...a].join(' ')}\` failed (${why})`;
    }
    return undefined;
  };
  if (sub !== 'install' && !existsSync(p.file)) {
    out(`not installed (no ${p.file}): \`nanoclaw service install\` writes it`);
    return sub === 'uninstall' ? 0 : 1;
  }
  if (sub === 'status') {
    const [cmd = '', ...a] = p.status;
    const r = await run(cmd, a);
    if (r.stdout.trim()) out(r.stdout.trimEnd());
    if (r.stderr.trim()) err(r.stderr.trimEnd());
    return r.code === 0 ? 0 : 1;
  }
  if (sub === 'restart') {
    // After a change to .env or the code (`npm run build`): stops the running one gracefully first.
    const failed = await runAll(p.restart);
    if (failed) return fail(err, `service: ${failed}: ${p.fix}`);
    out('restarted');
    return 0;
  }
  if (sub === 'uninstall') {
    const failed = await runAll(p.uninstall);
    rmSync(p.file, { force: true });
    // systemd forgets a removed unit only on reload (pointless when it could not be reached).
    if (ctx.platform === 'linux' && !failed) await runAll([['systemctl', '--user', 'daemon-reload']]);
    if (failed) return fail(err, `service: removed ${p.file}, but ${failed}: if it still runs, ${p.fix}`);
    out(`stopped and removed ${p.file}; the logs stay in ${path.join(ctx.home, 'logs')}`);
    return 0;
  }
  mkdirSync(path.join(ctx.home, 'logs'), { recursive: true });
  mkdirSync(path.dirname(p.file), { recursive: true });
  const cli = path.join(ctx.projectRoot, 'dist', 'src', 'cli.js');
  const { home, projectRoot } = ctx;
  const PATH = ctx.env.PATH || '/usr/local/bin:/usr/bin:/bin';
  writeFileSync(p.file, p.render({ node: process.execPath, cli, home, projectRoot, path: PATH }));
  const failed = await runAll(p.install);
  if (failed) return fail(err, `service: wrote ${p.file}, but ${failed}: ${p.fix}`);
  out(`installed ${p.file} and started it; follow it with \`nanoclaw logs -f\``);
  return 0;
}

const STAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z /;
const size = (file: string) => (existsSync(file) ? statSync(file).size : 0);

/** The complete lines of `file` from byte `start` on (a line still being written waits). */
async function readLines(file: string, start: number) {
  const end = size(file);
  const from = end < start ? 0 : start; // truncated or replaced: read it from the top
  const chunks: Buffer[] = [];
  if (end > from) for await (const c of createReadStream(file, { start: from, end: end - 1 })) chunks.push(c);
  const buf = Buffer.concat(chunks);
  const cut = buf.lastIndexOf(10) + 1;
  return { lines: buf.subarray(0, cut).toString('utf8').split('\n').slice(0, -1), next: from + cut };
}

/** Interleaves both logs by leading ISO time; an unstamped line (a stack trace) keeps the last one. */
function merge(files: string[][]): string[] {
  const all: { at: string; line: string }[] = [];
  for (const lines of files) {
    let at = '';
    for (const line of lines) {
      at = STAMP.exec(line)?.[0] ?? at;
      all.push({ at, line });
    }
  }
  return all.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0)).map((x) => x.line);
}

export type LogsContext = {
  home: string;
  /** Resolves a chat id or folder, so lines naming either the folder or the chat id are kept. */
  group?: (ref: string) => { folder: string; jid: string } | undefined;
  /** Ends `-f`; without one it follows until the process is interrupted. */
  signal?: AbortSignal;
  pollMs?: number;
};

/** `logs [group] [-f]`: the last 200 lines of both logs, merged by time; `-f` keeps following. */
export async function logsCommand(args: string[], ctx: LogsContext, out: Out, err: Out): Promise<number> {
  const options = { follow: { type: 'boolean', short: 'f' } } as const;
  const { values, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true });
  const [ref, ...extra] = positionals;
  const files = logFiles(ctx.home);
  if (extra.length) return fail(err, 'logs takes at most one chat id or folder');
  if (!files.some((f) => existsSync(f)))
    return fail(err, `no log at ${files[0]} yet: \`nanoclaw service install\` runs NanoClaw logging there`);
  const g = ref === undefined ? undefined : ctx.group?.(ref);
  const needles = [...new Set([ref, g?.folder, g?.jid])].flatMap((n) => (n ? [`group ${n}:`] : []));
  const keep = (line: string) => needles.length === 0 || needles.some((n) => line.includes(n));
  // Only the last 8 MiB of each log is read; the first line there may be cut, so it is dropped.
  const starts = files.map((f) => Math.max(0, size(f) - (8 << 20)));
  const reads = await Promise.all(files.map((f, i) => readLines(f, starts[i] ?? 0)));
  const tails = reads.map((r, i) => (starts[i] ? r.lines.slice(1) : r.lines));
  for (const line of merge(tails).filter(keep).slice(-200)) out(line);
  const offsets = reads.map((r) => r.next);
  while (values.follow && !ctx.signal?.aborted) {
    await sleep(ctx.pollMs ?? 500, undefined, { signal: ctx.signal }).catch(() => {}); // aborted: loop ends
    const fresh = await Promise.all(files.map((f, i) => readLines(f, offsets[i] ?? 0)));
    for (const [i, r] of fresh.entries()) offsets[i] = r.next;
    for (const line of merge(fresh.map((r) => r.lines)).filter(keep)) out(line);
  }
  return 0;
}
