// The sandbox: the pure bwrap option list, runtime detection, and a real bwrap run that reports
// what a process inside can see. The only addresses used are 127.0.0.1 and 10.0.0.1 (which the
// sandbox has no route to); nothing here can leave the machine.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { bwrapOptions, createBwrapSandbox, SANDBOX_UID } from '../src/sandbox/bwrap.js';
import { detectSandbox, which } from '../src/sandbox/detect.js';
import { SandboxError, type SandboxSpec } from '../src/sandbox/index.js';

const GUEST_COMMAND = '/opt/nanoclaw/bin/claude';

const binds: { host: string; guest: string; readonly: boolean }[] = [
  { host: '/srv/nc/groups/family', guest: '/workspace/group', readonly: false },
  { host: '/srv/nc/groups/global', guest: '/workspace/global', readonly: true },
  { host: '/srv/nc/data/sessions/family/home', guest: '/home/agent', readonly: false },
  { host: '/srv/nc/data/run/r1', guest: '/run/nanoclaw', readonly: false },
];
const spec: SandboxSpec = {
  command: '/opt/sdk/claude-binary',
  args: ['--output-format', 'stream-json'],
  env: { PATH: '/usr/bin:/bin', HOME: '/home/agent', ANTHROPIC_API_KEY: 'nanoclaw-run-token', TZ: 'UTC' },
  mounts: binds,
  cwd: '/workspace/group',
};
// How many arguments each option bwrapOptions may emit takes. Any other option fails the parse,
// so a new way of exposing host paths cannot slip in unnoticed.
const ARITY: Readonly<Record<string, number>> = {
  '--unshare-all': 0,
  '--die-with-parent': 0,
  '--new-session': 0,
  '--clearenv': 0,
  '--uid': 1,
  '--gid': 1,
  '--hostname': 1,
  '--proc': 1,
  '--dev': 1,
  '--tmpfs': 1,
  '--chdir': 1,
  '--ro-bind': 2,
  '--bind': 2,
  '--symlink': 2,
  '--ro-bind-data': 2,
  '--setenv': 2,
};

function parseOptions(opts: readonly string[]): { name: string; args: string[] }[] {
  const out: { name: string; args: string[] }[] = [];
  for (let i = 0; i < opts.length; ) {
    const name = opts[i] ?? '';
    const arity = ARITY[name];
    assert.ok(arity !== undefined, `unexpected bwrap option ${name}`);
    const args = opts.slice(i + 1, i + 1 + arity);
    assert.equal(args.length, arity, `${name} is missing arguments`);
    out.push({ name, args });
    i += 1 + arity;
  }
  return out;
}

describe('bwrapOptions', () => {
  const all = bwrapOptions(spec, () => true);
  const parsed = parseOptions(all);
  const named = (name: string) => parsed.filter((o) => o.name === name).map((o) => o.args);

  test('unshares every namespace, dies with its parent and clears the environment', () => {
    for (const flag of ['--unshare-all', '--die-with-parent', '--new-session', '--clearenv']) {
      assert.ok(all.includes(flag), flag);
    }
    assert.deepEqual(named('--uid'), [[String(SANDBOX_UID)]]);
    assert.deepEqual(named('--gid'), [['1000']]);
    assert.equal(SANDBOX_UID, 1000);
    assert.deepEqual(named('--hostname'), [['nanoclaw']]);
  });

  test('binds each mount in order with its mode, after the command', () => {
    const mountBinds = parsed.filter(
      (o) => (o.name === '--bind' || o.name === '--ro-bind') && o.args[0]?.startsWith('/srv/nc/'),
    );
    assert.deepEqual(
      mountBinds.map((o) => [o.name, ...o.args]),
      binds.map((m) => [m.readonly ? '--ro-bind' : '--bind', m.host, m.guest]),
    );
    const commandAt = parsed.findIndex((o) => o.name === '--ro-bind' && o.args[1] === GUEST_COMMAND);
    assert.deepEqual(parsed[commandAt]?.args, [spec.command, GUEST_COMMAND]);
    const firstMount = parsed.findIndex((o) => o.args[0] === binds[0]?.host);
    assert.ok(commandAt < firstMount);
  });

  test('sets every env var with --setenv after --clearenv', () => {
    const clear = parsed.findIndex((o) => o.name === '--clearenv');
    const setenvs = parsed.map((o, i) => ({ ...o, i })).filter((o) => o.name === '--setenv');
    assert.deepEqual(
      setenvs.map((o) => o.args),
      Object.entries(spec.env),
    );
    assert.ok(
      setenvs.every((o) => o.i > clear),
      '--clearenv would wipe a --setenv before it',
    );
  });

  test('ends with --chdir to the guest working directory', () => {
    assert.deepEqual(all.slice(-2), ['--chdir', '/workspace/group']);
  });

  test('exposes no host path but the mounts, /usr, a few /etc files and the command', () => {
    const allowed = new Set([
      '/usr',
      '/etc/ssl',
      '/etc/ld.so.cache',
      '/etc/alternatives',
      spec.command,
      ...binds.map((m) => m.host),
    ]);
    const hostSources = parsed
      .filter((o) => o.name === '--bind' || o.name === '--ro-bind')
      .map((o) => o.args[0] ?? '');
    assert.deepEqual(
      hostSources.filter((p) => !allowed.has(p)),
      [],
    );
    // Symlinks point into /usr; data binds come from fds, not host paths.
    for (const [target, link] of named('--symlink')) {
      assert.match(target ?? '', /^usr\/(bin|lib|lib64|sbin)$/);
      assert.equal(link, `/${target?.slice(4)}`);
    }
    assert.deepEqual(named('--ro-bind-data'), [
      ['4', '/etc/passwd'],
      ['5', '/etc/hosts'],
    ]);
  });

  test('binds only the /usr links and /etc files that exist on the host', () => {
    const none = parseOptions(bwrapOptions(spec, () => false));
    assert.equal(none.filter((o) => o.name === '--symlink').length, 0);
    assert.equal(none.filter((o) => o.args[0]?.startsWith('/etc/')).length, 0);
    const some = parseOptions(bwrapOptions(spec, (p) => p === '/usr/lib64' || p === '/etc/ssl'));
    assert.deepEqual(
      some.filter((o) => o.name === '--symlink').map((o) => o.args),
      [['usr/lib64', '/lib64']],
    );
    assert.deepEqual(
      some.filter((o) => o.args[0]?.startsWith('/etc/')).map((o) => o.args),
      [['/etc/ssl', '/etc/ssl']],
    );
  });
});

describe('detectSandbox', () => {
  test('SANDBOX=bwrap without bubblewrap on PATH says how to install it', () => {
    assert.throws(
      () => detectSandbox('bwrap', '/nonexistent'),
      (err: unknown) =>
        err instanceof SandboxError &&
        err.message.includes('apt-get install -y bubblewrap') &&
        !/\n/.test(err.message),
    );
  });

  test('SANDBOX=auto with no runtime says what to install', () => {
    assert.throws(
      () => detectSandbox('auto', '/nonexistent'),
      (err: unknown) => {
        return err instanceof SandboxError && err.message.includes('apt-get install -y bubblewrap');
      },
    );
  });

  test('SANDBOX=bwrap with a bwrap that cannot create namespaces says so', () => {
    assert.throws(
      () => detectSandbox('bwrap', process.env.PATH, { probe: () => false }),
      (err: unknown) => err instanceof SandboxError && /cannot create namespaces/.test(err.message),
    );
  });

  // Regression: with SANDBOX=auto an installed-but-unusable bwrap falls through to the "no runtime
  // found: install bubblewrap" message, which is wrong advice; SANDBOX=bwrap gets it right.
  test('regression: SANDBOX=auto with an installed bwrap that cannot create namespaces says so instead of asking to install it', () => {
    assert.throws(
      () => detectSandbox('auto', process.env.PATH, { probe: () => false }),
      (err: unknown) =>
        err instanceof SandboxError &&
        /cannot create namespaces/.test(err.message) &&
        !err.message.includes('apt-get install'),
    );
  });

  test('SANDBOX=auto picks bwrap here and says why', () => {
    const auto = detectSandbox('auto', process.env.PATH);
    assert.equal(auto.kind, 'bwrap');
    assert.match(
      auto.reason ?? '',
      /^SANDBOX=auto: .*bwrap creates namespaces; rlimits via .*prlimit; process and memory caps in cgroups under \/sys\/fs\/cgroup\/pids/,
    );
    assert.equal(detectSandbox('bwrap', process.env.PATH).kind, 'bwrap');
  });

  const container = {
    image: 'nanoclaw-agent:latest',
    home: '/nonexistent/home',
    env: {},
    ownedRoots: [],
    claudeCodeVersion: '2.1.332',
  };

  test('an image runtime that is not installed says how to install it, in one line', () => {
    for (const [kind, hint] of [
      ['docker', /docker is not installed: install Docker/],
      ['podman', /podman is not installed: sudo apt-get install -y podman runc/],
      ['apple', /container is not installed: install Apple container/],
    ] as const) {
      assert.throws(
        () => detectSandbox(kind, '/nonexistent', { container }),
        (err: unknown) =>
          err instanceof SandboxError &&
          hint.test(err.message) &&
          err.message.startsWith(`SANDBOX=${kind} but `),
      );
    }
  });

  test('an image runtime without its image, or with another Claude Code, refuses with the fix', () => {
    const bin = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-bin-'));
    try {
      writeFileSync(path.join(bin, 'podman'), '#!/bin/sh\necho 2.0.1\n', { mode: 0o755 });
      assert.throws(
        () => detectSandbox('podman', bin, { container }),
        (err: unknown) =>
          err instanceof SandboxError &&
          err.message ===
            'SANDBOX=podman but image nanoclaw-agent:latest has Claude Code 2.0.1 but the SDK needs 2.1.332: rebuild it with container/build.sh',
      );
      writeFileSync(path.join(bin, 'podman'), '#!/bin/sh\necho "Error: image not known" >&2; exit 125\n', {
        mode: 0o755,
      });
      assert.throws(
        () => detectSandbox('podman', bin, { container }),
        (err: unknown) =>
          err instanceof SandboxError &&
          /^SANDBOX=podman but image nanoclaw-agent:latest is not available \(Error: image not known\): build it with container\/build\.sh$/.test(
            err.message,
          ),
      );
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });

  test('SANDBOX=auto takes the next ready runtime and says why the faster ones were passed over', () => {
    const bin = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-bin-'));
    try {
      writeFileSync(path.join(bin, 'podman'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
      const auto = detectSandbox('auto', `${bin}:${process.env.PATH}`, {
        probe: () => false,
        container,
        imageCheck: (kind) => (kind === 'podman' ? undefined : 'not here'),
      });
      assert.equal(auto.kind, 'podman');
      assert.match(
        auto.reason ?? '',
        /^SANDBOX=auto: not bwrap \(.*cannot create namespaces.*\); podman: .*podman runs image nanoclaw-agent:latest/,
      );
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });

  test('which finds executables on a PATH string and nothing on an empty one', () => {
    assert.equal(which('bwrap', `/nonexistent:${process.env.PATH}`)?.endsWith('/bwrap'), true);
    assert.equal(which('bwrap', undefined), undefined);
    assert.equal(which('bwrap', ''), undefined);
  });
});

describe('a real bwrap sandbox', () => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-sandbox-'));
  after(() => rmSync(root, { recursive: true, force: true }));

  // Regression: spawn() writes the options, /etc/passwd and /etc/hosts to fds 3-5 but never listens
  // for 'error' on those streams. When bwrap exits before reading them (here: a mount source that
  // does not exist, e.g. a deleted groups/global), the pipe errors (ECONNRESET/EPIPE) are unhandled
  // and kill the whole orchestrator, even though the caller handles the child's own errors.
  // Run in a separate process so the crash is observed rather than taking this runner down.
  test('regression: a bwrap that exits before reading fds 3-5 no longer crashes the orchestrator with an unhandled pipe error', () => {
    const bwrap = which('bwrap', process.env.PATH);
    assert.ok(bwrap, 'bwrap must be installed for this test');
    const module = new URL('../src/sandbox/bwrap.js', import.meta.url).href;
    const script = `
      import { createBwrapSandbox } from ${JSON.stringify(module)};
      const child = createBwrapSandbox(${JSON.stringify(bwrap)}).spawn({
        command: '/usr/bin/bash',
        args: ['-c', 'true'],
        env: { PATH: '/usr/bin:/bin' },
        mounts: [{ host: ${JSON.stringify(path.join(root, 'missing'))}, guest: '/workspace/group', readonly: false }],
        cwd: '/workspace/group',
      });
      let stderr = '';
      child.on('error', (err) => console.log('spawn error ' + err.message));
      child.stderr.on('data', (d) => { stderr += d; });
      child.stdout.resume();
      child.on('close', (code) => console.log(JSON.stringify({ code, stderr })));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.equal(r.stderr, '', 'the host process printed an error');
    assert.equal(r.status, 0);
    const closed = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as {
      code?: number;
      stderr?: string;
    };
    assert.equal(closed.code, 1);
    assert.match(closed.stderr ?? '', /Can't find source path/);
  });

  test('a process inside sees only its mounts and its env, as uid 1000 with no network', async (t) => {
    const bwrap = which('bwrap', process.env.PATH);
    assert.ok(bwrap, 'bwrap must be installed for this test');
    const group = path.join(root, 'group');
    const global = path.join(root, 'global');
    mkdirSync(group);
    mkdirSync(global);
    writeFileSync(path.join(global, 'CLAUDE.md'), 'shared memory\n');

    // A host listener on loopback: the sandbox has its own loopback, so it must not reach this.
    let hostConnections = 0;
    const listener = net.createServer((s) => {
      hostConnections++;
      s.destroy();
    });
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    t.after(() => listener.close());
    const hostPort = (listener.address() as net.AddressInfo).port;

    const script = `
      {
        echo "== uid =="; id -u
        echo "== gid =="; id -g
        echo "== hostname =="; hostname
        echo "== cmdline =="; cat /proc/1/cmdline | tr "\\0" " "; echo
        echo "== env =="; env
        echo "== cwd =="; pwd
        echo "== global-read =="; cat /workspace/global/CLAUDE.md
        echo "== global-write =="
        if (echo x > /workspace/global/written) 2>/dev/null; then echo WRITE_OK; else echo WRITE_FAILED; fi
        echo "== host-paths =="
        for p in /root /home /work /sys /var /etc/shadow /etc/hostname "${root}"; do
          if [ -e "$p" ]; then echo "present $p"; else echo "absent $p"; fi
        done
        echo "== pids =="; ls /proc | grep -c '^[0-9]'
        echo "== passwd =="; cat /etc/passwd
        echo "== loopback =="; (exec 3<>/dev/tcp/127.0.0.1/9) 2>&1; echo "exit $?"
        echo "== host-port =="; (exec 3<>/dev/tcp/127.0.0.1/${hostPort}) 2>&1; echo "exit $?"
        echo "== outside =="; timeout 2 bash -c 'exec 3<>/dev/tcp/10.0.0.1/9' 2>&1; echo "exit $?"
        echo "== end =="
      } > /workspace/group/report.txt 2>&1
    `;
    const child = createBwrapSandbox(bwrap, process.execPath).spawn({
      command: '/usr/bin/bash',
      args: ['-c', script],
      env: { PATH: '/usr/bin:/bin', FOO: 'bar' },
      mounts: [
        { host: group, guest: '/workspace/group', readonly: false },
        { host: global, guest: '/workspace/global', readonly: true },
      ],
      cwd: '/workspace/group',
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.stdout.resume();
    child.stdin.end();
    const exit = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => {
        // Its own process group: reach bwrap and everything under it.
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      }, 20_000);
      child.on('exit', (code) => {
        clearTimeout(timer);
        resolve(code);
      });
    });
    assert.equal(exit, 0, `bwrap failed: ${stderr}`);

    const report = readFileSync(path.join(group, 'report.txt'), 'utf8');
    const sections = new Map<string, string>();
    for (const part of report.split(/^== /m).slice(1)) {
      const [head = '', ...rest] = part.split('\n');
      sections.set(head.replace(/ ==$/, ''), rest.join('\n').trim());
    }
    const section = (name: string): string => {
      const s = sections.get(name);
      assert.ok(s !== undefined, `no ${name} in report:\n${report}`);
      return s;
    };

    assert.equal(section('uid'), '1000');
    assert.equal(section('gid'), '1000');
    assert.equal(section('hostname'), 'nanoclaw');

    const cmdline = section('cmdline');
    assert.match(cmdline, /^\S*bwrap --args 3 \/opt\/nanoclaw\/bin\/claude -c /);
    // The script names `root` itself; the mount sources under it must not appear.
    for (const leak of ['--setenv', '--bind', '--ro-bind', '--clearenv', 'FOO', group, global]) {
      assert.ok(!cmdline.includes(leak), `/proc/1/cmdline shows ${leak}: ${cmdline}`);
    }

    const env = new Map(
      section('env')
        .split('\n')
        .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)] as const),
    );
    assert.equal(env.get('PATH'), '/usr/bin:/bin');
    assert.equal(env.get('FOO'), 'bar');
    const bashOwn = new Set(['PWD', 'SHLVL', '_', 'OLDPWD']);
    assert.deepEqual(
      [...env.keys()].filter((k) => k !== 'PATH' && k !== 'FOO' && !bashOwn.has(k)),
      [],
    );

    assert.equal(section('cwd'), '/workspace/group');
    assert.equal(section('global-read'), 'shared memory');
    assert.equal(section('global-write'), 'WRITE_FAILED');
    assert.equal(existsSync(path.join(global, 'written')), false);
    assert.deepEqual(
      section('host-paths')
        .split('\n')
        .filter((l) => !l.startsWith('absent ')),
      [],
    );

    const pids = Number(section('pids'));
    assert.ok(pids >= 2 && pids <= 6, `expected a handful of pids, saw ${pids}`);

    assert.equal(section('passwd'), 'agent:x:1000:1000:agent:/home/agent:/bin/bash');

    assert.match(section('loopback'), /Connection refused[\s\S]*exit 1$/);
    assert.match(section('host-port'), /Connection refused[\s\S]*exit 1$/);
    assert.equal(hostConnections, 0);
    assert.match(section('outside'), /Network is unreachable[\s\S]*exit 1$/);
    assert.equal(section('end'), '');
  });
});
