// The user service and the logs command: the systemd unit checked by the real `systemd-analyze
// verify --user`, the launchd plist read back by a strict XML parser, install/uninstall/status
// against a scripted `run` on temp homes, and `logs` (tail, group filter, merge, -f) on real files.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  logsCommand,
  type Run,
  renderLaunchdPlist,
  renderSystemdUnit,
  type ServiceSpec,
  serviceCommand,
} from '../src/service.js';
import { eventually } from './support/app.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tmp(prefix = 'nanoclaw service-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  dirs.push(d);
  return d;
}

/** Paths with a space, `%`, `$`, a quote and XML specials: every escaping rule is exercised. */
function spec(root: string): ServiceSpec {
  const home = path.join(root, 'my home %z & <co>');
  const projectRoot = path.join(root, 'nano claw');
  mkdirSync(home, { recursive: true });
  mkdirSync(projectRoot, { recursive: true });
  return {
    node: process.execPath,
    cli: path.join(projectRoot, 'dist', "it's $HOME", 'cli.js'),
    home,
    projectRoot,
    path: '/usr/local/bin:/usr/bin:/bin',
  };
}

/** `systemd-analyze verify --user` on `unit`, in a throwaway user manager environment. */
function verifyUnit(unit: string): { code: number | null; stderr: string } {
  const probe = spawnSync('systemd-analyze', ['--version'], { timeout: 30_000 });
  if ((probe.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    assert.fail(
      'systemd-analyze is not installed: apt-get install systemd (it works without systemd as PID 1)',
    );
  }
  const root = tmp();
  const runtime = path.join(root, 'run');
  const dir = path.join(root, 'config', 'systemd', 'user');
  mkdirSync(runtime, { mode: 0o700 });
  mkdirSync(dir, { recursive: true });
  mkdirSync(path.join(root, 'home'));
  const file = path.join(dir, 'nanoclaw.service');
  writeFileSync(file, unit);
  // A user manager needs XDG_RUNTIME_DIR even for an offline verify; nothing else of the machine's.
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: path.join(root, 'home'),
    XDG_CONFIG_HOME: path.join(root, 'config'),
    XDG_RUNTIME_DIR: runtime,
  };
  const r = spawnSync('systemd-analyze', ['verify', '--user', '--man=no', file], {
    env,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: r.status, stderr: r.stderr };
}

describe('the systemd user unit', () => {
  test('passes systemd-analyze verify --user with spaces, % and $ in its paths', () => {
    const unit = renderSystemdUnit(spec(tmp()));
    const r = verifyUnit(unit);
    assert.equal(r.stderr, '');
    assert.equal(r.code, 0);
  });

  test('fails systemd-analyze verify when a setting is broken, so the check above has teeth', () => {
    const unit = renderSystemdUnit(spec(tmp())).replace('Restart=on-failure', 'Restart=sometimes');
    const r = verifyUnit(unit);
    assert.match(r.stderr, /sometimes/);
  });

  test('fails systemd-analyze verify when the node binary does not exist', () => {
    const r = verifyUnit(renderSystemdUnit({ ...spec(tmp()), node: '/nonexistent/node' }));
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /nonexistent\/node/);
  });

  test('runs `<node> <cli> start` in the project with the home, PATH, restarts and both log files', () => {
    const s = spec(tmp());
    const unit = renderSystemdUnit(s);
    const lines = unit.split('\n');
    const cli = s.cli.replace(/%/g, '%%').replace(/\$/g, '$$$$');
    assert.ok(lines.includes(`ExecStart=${process.execPath} "${cli}" start`), unit);
    assert.ok(lines.includes(`WorkingDirectory=${s.projectRoot}`));
    assert.ok(lines.includes(`Environment="NANOCLAW_HOME=${s.home.replace(/%/g, '%%')}"`));
    assert.ok(lines.includes('Environment="PATH=/usr/local/bin:/usr/bin:/bin"'));
    const logs = path.join(s.home, 'logs').replace(/%/g, '%%');
    assert.ok(lines.includes(`StandardOutput=append:${logs}/nanoclaw.log`));
    assert.ok(lines.includes(`StandardError=append:${logs}/nanoclaw.error.log`));
    for (const l of ['Restart=on-failure', 'RestartSec=5', 'KillSignal=SIGTERM', 'TimeoutStopSec=20']) {
      assert.ok(lines.includes(l), l);
    }
    assert.ok(lines.includes('WantedBy=default.target'));
    assert.match(lines[0] ?? '', /^# Written by `nanoclaw service install`/);
  });

  test('refuses a path with a line break, which could smuggle in a directive', () => {
    const s = { ...spec(tmp()), home: '/tmp/x\nExecStartPre=/bin/evil' };
    assert.throws(() => renderSystemdUnit(s), /home must be one line/);
    assert.throws(() => renderLaunchdPlist(s), /home must be one line/);
  });
});

// A strict reader for the XML a plist uses: prolog, doctype, comments, elements, text with the
// five predefined entities. Anything else (a bare `&`, a stray `<`, a mismatched tag) throws.
type Node = { tag: string; children: Node[] } | string;
function parseXml(src: string): Node {
  let i = 0;
  const fail = (why: string): never => {
    throw new Error(`XML at ${i}: ${why}`);
  };
  const skipMisc = () => {
    for (;;) {
      const m = /^(\s+|<\?[\s\S]*?\?>|<!--(?:(?!--)[\s\S])*-->|<!DOCTYPE[^>]*>)/.exec(src.slice(i));
      if (!m) return;
      i += m[0].length;
    }
  };
  const text = (raw: string) => {
    if (/<|&(?!(amp|lt|gt|quot|apos);)/.test(raw)) fail(`bad character data ${JSON.stringify(raw)}`);
    const ents: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
    return raw.replace(/&(\w+);/g, (_, e: string) => ents[e] ?? '');
  };
  const element = (): Node => {
    const open = /^<([A-Za-z][\w.-]*)((?:\s+[\w.-]+="[^"<&]*")*)\s*(\/?)>/.exec(src.slice(i));
    if (!open) return fail('expected an element');
    i += open[0].length;
    const tag = open[1] ?? '';
    const children: Node[] = [];
    if (open[3]) return { tag, children };
    for (;;) {
      const end = src.indexOf('<', i);
      if (end < 0) fail(`unclosed <${tag}>`);
      if (end > i) children.push(text(src.slice(i, end)));
      i = end;
      if (src.startsWith(`</${tag}>`, i)) {
        i += tag.length + 3;
        return { tag, children };
      }
      if (src.startsWith('<!--', i)) skipMisc();
      else children.push(element());
    }
  };
  skipMisc();
  const root = element();
  skipMisc();
  if (i !== src.length) fail('content after the root element');
  return root;
}

/** The plist value of an element: dict, array, string, true, false. */
function plistValue(n: Node): unknown {
  if (typeof n === 'string') return assert.fail(`unexpected text ${n}`);
  const kids = n.children.filter((c) => typeof c !== 'string' || c.trim() !== '');
  if (n.tag === 'string') return kids.join('');
  if (n.tag === 'true' || n.tag === 'false') return n.tag === 'true';
  if (n.tag === 'array') return kids.map(plistValue);
  assert.equal(n.tag, 'dict');
  const out: Record<string, unknown> = {};
  for (let k = 0; k < kids.length; k += 2) {
    const key = kids[k];
    assert.ok(typeof key !== 'string' && key?.tag === 'key', 'a dict alternates <key> and a value');
    out[String(key.children.join(''))] = plistValue(kids[k + 1] ?? assert.fail('a key without a value'));
  }
  return out;
}

describe('the launchd plist', () => {
  test('parses as XML into the label, arguments, environment, restart policy and log paths', () => {
    const s = spec(tmp());
    const root = parseXml(renderLaunchdPlist(s));
    assert.ok(typeof root !== 'string' && root.tag === 'plist');
    const dict = root.children.find((c) => typeof c !== 'string');
    assert.ok(dict);
    assert.deepEqual(plistValue(dict), {
      Label: 'com.nanoclaw.agent',
      ProgramArguments: [process.execPath, s.cli, 'start'],
      WorkingDirectory: s.projectRoot,
      EnvironmentVariables: { NANOCLAW_HOME: s.home, PATH: s.path },
      RunAtLoad: true,
      KeepAlive: { SuccessfulExit: false },
      StandardOutPath: path.join(s.home, 'logs', 'nanoclaw.log'),
      StandardErrorPath: path.join(s.home, 'logs', 'nanoclaw.error.log'),
    });
  });

  test('escapes & and < so the home "my home %z & <co>" stays well-formed', () => {
    const xml = renderLaunchdPlist(spec(tmp()));
    assert.match(xml, /my home %z &amp; &lt;co&gt;/);
    assert.doesNotMatch(xml, /& </);
  });

  test('the XML reader rejects an unescaped & and a mismatched tag, so the parse above proves something', () => {
    assert.throws(() => parseXml('<plist><string>a & b</string></plist>'), /bad character data/);
    assert.throws(() => parseXml('<plist><string>a</strong></plist>'), /XML/);
  });
});

type Call = [string, string[]];
function scripted(reply: (cmd: string, args: string[]) => Awaited<ReturnType<Run>>): {
  run: Run;
  calls: Call[];
} {
  const calls: Call[] = [];
  return {
    calls,
    run: async (cmd, args) => {
      calls.push([cmd, args]);
      return reply(cmd, args);
    },
  };
}
const ok = () => ({ code: 0, stdout: '', stderr: '' });

/** Runs `service <args>` on a fresh user home; returns what it printed and where the file goes. */
async function service(
  args: string[],
  o: { platform?: NodeJS.Platform; run: Run; userHome?: string; env?: NodeJS.ProcessEnv },
) {
  const userHome = o.userHome ?? tmp();
  const home = path.join(userHome, 'nanoclaw');
  const out: string[] = [];
  const err: string[] = [];
  const code = await serviceCommand(
    args,
    {
      env: { HOME: userHome, PATH: '/usr/bin:/bin', ...o.env },
      platform: o.platform ?? 'linux',
      home,
      projectRoot: path.join(userHome, 'src', 'nanoclaw'),
      run: o.run,
      uid: 501,
    },
    (s) => out.push(s),
    (s) => err.push(s),
  );
  const unit = path.join(userHome, '.config', 'systemd', 'user', 'nanoclaw.service');
  return { code, out, err, userHome, home, unit };
}

describe('nanoclaw service', () => {
  test('install on a machine without user systemd writes the unit, exits 1 and names the fix in one line', async () => {
    const { run } = scripted(() => ({
      code: 1,
      stdout: '',
      stderr: 'Failed to connect to bus: No such file or directory\n',
    }));
    const r = await service(['install'], { run });
    assert.equal(r.code, 1);
    assert.equal(r.err.length, 1);
    assert.match(r.err[0] ?? '', /Failed to connect to bus.*loginctl enable-linger \$USER/);
    assert.ok(r.err[0]?.includes(r.unit), 'says where the unit was written');
    assert.ok(existsSync(r.unit));
    assert.ok(existsSync(path.join(r.home, 'logs')));
    assert.match(readFileSync(r.unit, 'utf8'), new RegExp(`NANOCLAW_HOME=${r.home}"`));
  });

  test('install reloads systemd and enables the unit now, in that order', async () => {
    const { run, calls } = scripted(ok);
    const r = await service(['install'], { run });
    assert.equal(r.code, 0, r.err.join('\n'));
    assert.deepEqual(calls, [
      ['systemctl', ['--user', 'daemon-reload']],
      ['systemctl', ['--user', 'enable', '--now', 'nanoclaw.service']],
    ]);
    assert.ok(existsSync(r.unit));
  });

  test('install writes the unit under XDG_CONFIG_HOME when it is set', async () => {
    const config = tmp();
    const r = await service(['install'], { run: scripted(ok).run, env: { XDG_CONFIG_HOME: config } });
    assert.equal(r.code, 0);
    assert.ok(existsSync(path.join(config, 'systemd', 'user', 'nanoclaw.service')));
    assert.ok(!existsSync(r.unit));
  });

  test('uninstall stops and disables the unit, removes the file and reloads', async () => {
    const { run, calls } = scripted(ok);
    const installed = await service(['install'], { run });
    calls.length = 0;
    const r = await service(['uninstall'], { run, userHome: installed.userHome });
    assert.equal(r.code, 0, r.err.join('\n'));
    assert.ok(!existsSync(r.unit));
    assert.deepEqual(calls, [
      ['systemctl', ['--user', 'disable', '--now', 'nanoclaw.service']],
      ['systemctl', ['--user', 'daemon-reload']],
    ]);
  });

  test('uninstall and status say so when nothing is installed', async () => {
    const { run, calls } = scripted(ok);
    const u = await service(['uninstall'], { run });
    assert.equal(u.code, 0);
    assert.match(u.out.join('\n'), /not installed/);
    const s = await service(['status'], { run });
    assert.equal(s.code, 1);
    assert.match(s.out.join('\n'), /not installed.*nanoclaw service install/);
    assert.deepEqual(calls, []);
  });

  test('status passes systemctl status output through', async () => {
    const installed = await service(['install'], { run: scripted(ok).run });
    const status = '● nanoclaw.service - NanoClaw\n     Active: active (running)\n';
    const { run, calls } = scripted(() => ({ code: 0, stdout: status, stderr: '' }));
    const r = await service(['status'], { run, userHome: installed.userHome });
    assert.equal(r.code, 0);
    assert.deepEqual(r.out, [status.trimEnd()]);
    assert.deepEqual(calls, [['systemctl', ['--user', 'status', 'nanoclaw.service', '--no-pager']]]);
  });

  test('on macOS install writes the plist and bootstraps it into the gui domain', async () => {
    const { run, calls } = scripted(ok);
    const r = await service(['install'], { run, platform: 'darwin' });
    assert.equal(r.code, 0, r.err.join('\n'));
    const plist = path.join(r.userHome, 'Library', 'LaunchAgents', 'com.nanoclaw.agent.plist');
    assert.ok(existsSync(plist));
    assert.deepEqual(calls, [['launchctl', ['bootstrap', 'gui/501', plist]]]);
    calls.length = 0;
    await service(['status'], { run, platform: 'darwin', userHome: r.userHome });
    await service(['uninstall'], { run, platform: 'darwin', userHome: r.userHome });
    assert.deepEqual(calls, [
      ['launchctl', ['print', 'gui/501/com.nanoclaw.agent']],
      ['launchctl', ['bootout', 'gui/501/com.nanoclaw.agent']],
    ]);
    assert.ok(!existsSync(plist));
  });

  test('on any other platform it says in one line which are supported', async () => {
    const { run, calls } = scripted(ok);
    const r = await service(['install'], { run, platform: 'win32' });
    assert.equal(r.code, 1);
    assert.deepEqual(r.err, ['nanoclaw: service: only Linux (systemd) and macOS (launchd) are supported']);
    assert.deepEqual(calls, []);
  });

  test('an unknown subcommand is one usage line', async () => {
    const r = await service(['reload'], { run: scripted(ok).run });
    assert.equal(r.code, 1);
    assert.deepEqual(r.err, ['nanoclaw: service: takes install, uninstall, restart or status']);
  });

  test('restart restarts the installed unit (systemd) or kickstarts the agent (launchd)', async () => {
    const { run, calls } = scripted(ok);
    const linux = await service(['install'], { run });
    const mac = await service(['install'], { run, platform: 'darwin' });
    calls.length = 0;
    const r = await service(['restart'], { run, userHome: linux.userHome });
    assert.equal(r.code, 0, r.err.join('\n'));
    await service(['restart'], { run, platform: 'darwin', userHome: mac.userHome });
    assert.deepEqual(calls, [
      ['systemctl', ['--user', 'restart', 'nanoclaw.service']],
      ['launchctl', ['kickstart', '-k', 'gui/501/com.nanoclaw.agent']],
    ]);
    const none = await service(['restart'], { run });
    assert.equal(none.code, 1);
    assert.match(none.out.join('\n'), /not installed/);
    assert.equal(calls.length, 2, 'nothing run when nothing is installed');
  });
});

const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();

async function logs(home: string, args: string[], extra: Partial<Parameters<typeof logsCommand>[1]> = {}) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await logsCommand(
    args,
    { home, ...extra },
    (s) => out.push(s),
    (s) => err.push(s),
  );
  return { code, out, err };
}

function logHome(lines: string[], errorLines?: string[]): string {
  const home = tmp();
  mkdirSync(path.join(home, 'logs'));
  writeFileSync(path.join(home, 'logs', 'nanoclaw.log'), lines.map((l) => `${l}\n`).join(''));
  if (errorLines) {
    writeFileSync(path.join(home, 'logs', 'nanoclaw.error.log'), errorLines.map((l) => `${l}\n`).join(''));
  }
  return home;
}

describe('nanoclaw logs', () => {
  test('prints the last 200 lines', async () => {
    const lines = Array.from({ length: 250 }, (_, n) => `${at(n)} info line ${n}`);
    const r = await logs(logHome(lines), []);
    assert.equal(r.code, 0);
    assert.deepEqual(r.out, lines.slice(50));
  });

  test('keeps only the lines of one group, found by folder or by chat id', async () => {
    const home = logHome([
      `${at(1)} info group main: agent starting in bwrap`,
      `${at(2)} warn group family: egress refused evil.example`,
      `${at(3)} warn group web:main: run failed (boom); try 2 of 3 in 1000 ms`,
      `${at(4)} info group mainly: not this one`,
    ]);
    const byFolder = await logs(home, ['family']);
    assert.deepEqual(byFolder.out, [`${at(2)} warn group family: egress refused evil.example`]);
    const group = (ref: string) => (ref === 'web:main' ? { folder: 'main', jid: 'web:main' } : undefined);
    const byChat = await logs(home, ['web:main'], { group });
    assert.deepEqual(byChat.out, [
      `${at(1)} info group main: agent starting in bwrap`,
      `${at(3)} warn group web:main: run failed (boom); try 2 of 3 in 1000 ms`,
    ]);
  });

  test('interleaves the error log by time, a stack trace staying under its line', async () => {
    const home = logHome(
      [`${at(1)} info started`, `${at(4)} info stopped`],
      [`${at(2)} error boom`, '    at frame (x.js:1:1)', `${at(3)} warn later`],
    );
    const r = await logs(home, []);
    assert.deepEqual(r.out, [
      `${at(1)} info started`,
      `${at(2)} error boom`,
      '    at frame (x.js:1:1)',
      `${at(3)} warn later`,
      `${at(4)} info stopped`,
    ]);
  });

  test('-f prints lines appended later, a half-written line only once complete, and stops on abort', async () => {
    const home = logHome([`${at(1)} info group main: before`], []);
    const [log, errorLog] = [
      path.join(home, 'logs', 'nanoclaw.log'),
      path.join(home, 'logs', 'nanoclaw.error.log'),
    ];
    const stop = new AbortController();
    const out: string[] = [];
    const ctx = { home, signal: stop.signal, pollMs: 10 };
    const done = logsCommand(
      ['main', '-f'],
      ctx,
      (s) => out.push(s),
      () => {},
    );
    await eventually(() => out.length === 1, 30_000, 'the existing line');
    // Both files are sized in one tick, so once the second line shows, the half line was seen too.
    appendFileSync(errorLog, `${at(3)} warn group main: half`);
    appendFileSync(log, `${at(2)} info group other: not shown\n${at(2)} info group main: second\n`);
    await eventually(() => out.length === 2, 30_000, 'the appended line');
    assert.deepEqual(out.slice(1), [`${at(2)} info group main: second`]);
    appendFileSync(errorLog, ' written\n');
    await eventually(() => out.length === 3, 30_000, 'the completed line');
    stop.abort();
    assert.equal(await done, 0);
    assert.deepEqual(out.slice(2), [`${at(3)} warn group main: half written`]);
  });

  test('a missing log is one line naming where it would be and what writes it', async () => {
    const home = tmp();
    const r = await logs(home, []);
    assert.equal(r.code, 1);
    assert.equal(r.err.length, 1);
    assert.ok(r.err[0]?.includes(path.join(home, 'logs', 'nanoclaw.log')));
    assert.match(r.err[0] ?? '', /nanoclaw service install/);
  });
});
