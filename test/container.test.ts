// The docker/podman runtime without a real docker: the `run` argv, and the sandbox driving a fake
// runtime CLI (a shell script that logs its argv and imitates the docker CLI against podman 4.3,
// which reports 0 for every container: the real exit code comes from `wait`). Then the instance
// id, the image check and the hand-over of writable trees when running as root.
import assert from 'node:assert/strict';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  type ContainerSettings,
  createContainerSandbox,
  DIALECTS,
  dockerRunArgs,
  handOver,
  IMAGE_UID,
  imageProblem,
  instanceId,
  runtimeEnv,
} from '../src/sandbox/container.js';
import {
  type Mount,
  type RunOptions,
  SandboxError,
  type SandboxProcess,
  type SandboxSpec,
  VERSION_LABEL,
} from '../src/sandbox/index.js';
import { envOf, parseRunArgs } from './support/run-args.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tempDir(prefix = 'nanoclaw-container-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  dirs.push(d);
  return d;
}

const SECRET = 'sk-ant-run-token-5f3c9a';
const OAUTH = 'oauth-token-77b1e2';
const opts: RunOptions = {
  image: 'nanoclaw-agent:latest',
  name: 'nanoclaw-3fa2b1c0d9-family-a1b2c3',
  instance: '3fa2b1c0d9',
  user: { uid: 1000, gid: 1000 },
};
const spec: SandboxSpec = {
  command: '/host/sdk/claude-binary',
  args: ['--output-format', 'stream-json', '--verbose'],
  env: {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    TZ: 'UTC',
    ANTHROPIC_API_KEY: SECRET,
    CLAUDE_CODE_OAUTH_TOKEN: OAUTH,
  },
  mounts: [
    { host: '/srv/nc/groups/family', guest: '/workspace/group', readonly: false },
    { host: '/srv/nc/groups/global', guest: '/workspace/global', readonly: true },
    { type: 'tmpfs', guest: '/workspace/global/cache' },
    { type: 'hide', guest: '/workspace/global/.env' },
  ],
  cwd: '/workspace/group',
  limits: { memoryBytes: 2 * 1024 ** 3, cpus: 1.5, pids: 512 },
  label: 'family',
};

// Arity of every option `docker run` may get from dockerRunArgs: anything else fails the parse.
const ARITY: Readonly<Record<string, number>> = {
  '-i': 0,
  '--name': 1,
  '--label': 1,
  '--log-driver': 1,
  '--network': 1,
  '--read-only': 0,
  '--tmpfs': 1,
  '--cap-drop': 1,
  '--security-opt': 1,
  '--init': 0,
  '--hostname': 1,
  '--user': 1,
  '--workdir': 1,
  '--memory': 1,
  '--memory-swap': 1,
  '--cpus': 1,
  '--pids-limit': 1,
  '--ulimit': 1,
  '-v': 1,
  '-e': 1,
};

const parse = (args: readonly string[]) => parseRunArgs(args, ARITY);

describe('dockerRunArgs', () => {
  const out = dockerRunArgs(spec, opts);
  const p = parse(out.args);

  test('runs attached and named, labelled, without logs or network, locked down, never --rm', () => {
    assert.deepEqual(out.args.slice(0, 4), ['run', '-i', '--name', opts.name]);
    assert.deepEqual(p.values('--label'), ['org.nanoclaw.instance=3fa2b1c0d9']);
    assert.deepEqual(p.values('--log-driver'), ['none']);
    assert.deepEqual(p.values('--network'), ['none']);
    for (const flag of ['--read-only', '--init']) assert.equal(p.values(flag).length, 1, flag);
    assert.ok(p.values('--tmpfs')[0]?.startsWith('/tmp:'), 'the first tmpfs is /tmp');
    assert.deepEqual(p.values('--cap-drop'), ['ALL']);
    assert.deepEqual(p.values('--security-opt'), ['no-new-privileges']);
    assert.ok(!out.args.includes('--rm'), 'never --rm: podman 4.3 would report exit code 0');
    assert.ok(!out.args.includes('--privileged'));
  });

  test('runs as the given user in the working directory', () => {
    assert.deepEqual(p.values('--user'), ['1000:1000']);
    assert.deepEqual(p.values('--workdir'), ['/workspace/group']);
    const other = parse(dockerRunArgs(spec, { ...opts, user: { uid: 501, gid: 20 } }).args);
    assert.deepEqual(other.values('--user'), ['501:20']);
  });

  test('memory and swap are both the memory limit; cpus, pids and the ulimits are set', () => {
    assert.deepEqual(p.values('--memory'), [String(2 * 1024 ** 3)]);
    assert.deepEqual(p.values('--memory-swap'), [String(2 * 1024 ** 3)]);
    assert.deepEqual(p.values('--cpus'), ['1.5']);
    assert.deepEqual(p.values('--pids-limit'), ['512']);
    const fsize = 4 * 1024 ** 3;
    assert.deepEqual(p.values('--ulimit'), [
      `fsize=${fsize}:${fsize}`,
      'nofile=4096:4096',
      'nproc=4096:4096',
    ]);
    const none = parse(dockerRunArgs({ ...spec, limits: undefined }, opts).args);
    for (const flag of ['--memory', '--memory-swap', '--cpus', '--pids-limit'])
      assert.deepEqual(none.values(flag), [], flag);
  });

  test('ends with the image and the entry script running the image binary, arguments untouched', () => {
    assert.equal(p.image, 'nanoclaw-agent:latest');
    assert.deepEqual(p.command, [
      '/bin/sh',
      '/opt/nanoclaw/start',
      '/opt/nanoclaw/bin/claude',
      '--output-format',
      'stream-json',
      '--verbose',
    ]);
    assert.ok(!out.args.includes(spec.command), 'the host binary path is not used');
  });

  test('mounts: binds with their mode, tmpfs at its guest path, hidden paths as /dev/null', () => {
    assert.deepEqual(p.values('-v'), [
      '/srv/nc/groups/family:/workspace/group:rw',
      '/srv/nc/groups/global:/workspace/global:ro',
      '/dev/null:/workspace/global/.env:ro',
    ]);
    assert.deepEqual(p.values('--tmpfs').slice(1), ['/workspace/global/cache']);
  });

  test('a mount path with a colon, comma, newline or NUL is refused with a SandboxError', () => {
    for (const bad of ['/a:b', '/a,b', '/a\nb', '/a\0b']) {
      const cases: Mount[] = [
        { host: bad, guest: '/workspace/x', readonly: true },
        { host: '/ok', guest: bad, readonly: false },
        { type: 'tmpfs', guest: bad },
        { type: 'hide', guest: bad },
      ];
      for (const m of cases) {
        assert.throws(() => dockerRunArgs({ ...spec, mounts: [m] }, opts), SandboxError, JSON.stringify(m));
      }
    }
  });

  test('secrets go by name only: never in argv, returned in env for the CLI to pass', () => {
    const joined = out.args.join('\n');
    for (const secret of [SECRET, OAUTH]) assert.ok(!joined.includes(secret), 'a secret value is in argv');
    const e = p.values('-e');
    assert.ok(e.includes('ANTHROPIC_API_KEY') && e.includes('CLAUDE_CODE_OAUTH_TOKEN'));
    assert.deepEqual(out.env, { ANTHROPIC_API_KEY: SECRET, CLAUDE_CODE_OAUTH_TOKEN: OAUTH });
    const byName = envOf(e);
    assert.equal(byName.get('TZ'), 'TZ=UTC');
    assert.equal(byName.get('PATH'), 'PATH=/usr/local/bin:/usr/bin:/bin');
    const gh = dockerRunArgs({ ...spec, env: { GH_TOKEN: 'g1', DB_PASSWORD: 'p1', MY_SECRET: 's1' } }, opts);
    assert.deepEqual(gh.env, { GH_TOKEN: 'g1', DB_PASSWORD: 'p1', MY_SECRET: 's1' });
    for (const v of ['g1', 'p1', 's1']) assert.ok(!gh.args.some((a) => a.includes(v)), v);
  });

  test('a variable with a newline or NUL, or a name that is empty or has =, is refused', () => {
    const bad: Record<string, string>[] = [
      { A: 'x\ny' },
      { A: 'x\0y' },
      { 'A\nB': 'x' },
      { 'A=B': 'x' },
      { '': 'x' },
    ];
    for (const env of bad) {
      assert.throws(() => dockerRunArgs({ ...spec, env }, opts), SandboxError);
    }
  });

  test('with an egress socket: the bridge variables and the proxy variables in both cases', () => {
    assert.ok(!envOf(p.values('-e')).has('HTTP_PROXY'), 'no proxy without an egress socket');
    assert.ok(!envOf(p.values('-e')).has('NANOCLAW_EGRESS_SOCKET'));
    const q = parse(dockerRunArgs({ ...spec, egressSocket: '/run/nanoclaw/api.sock' }, opts).args);
    const e = envOf(q.values('-e'));
    assert.equal(e.get('NANOCLAW_EGRESS_SOCKET'), 'NANOCLAW_EGRESS_SOCKET=/run/nanoclaw/api.sock');
    assert.equal(e.get('NANOCLAW_BRIDGE_PORT'), 'NANOCLAW_BRIDGE_PORT=3128');
    for (const k of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'])
      assert.equal(e.get(k), `${k}=http://127.0.0.1:3128`);
    for (const k of ['NO_PROXY', 'no_proxy']) assert.equal(e.get(k), `${k}=localhost,127.0.0.1,::1`);
  });
});

describe('docker and podman side commands', () => {
  test('remove force-removes, wait waits, list filters by the instance label, imageLabel formats', () => {
    for (const d of [DIALECTS.docker, DIALECTS.podman]) {
      assert.deepEqual(d.remove('c1'), ['rm', '-f', 'c1']);
      assert.deepEqual(d.wait('c1'), ['wait', 'c1']);
      assert.deepEqual(d.list('abc'), [
        'ps',
        '-a',
        '--filter',
        'label=org.nanoclaw.instance=abc',
        '--format',
        '{{.Names}}',
      ]);
      assert.deepEqual(d.imageLabel('img:1', VERSION_LABEL), [
        'image',
        'inspect',
        '--format',
        '{{index .Config.Labels "org.nanoclaw.claude-code-version"}}',
        'img:1',
      ]);
      assert.equal(d.run, dockerRunArgs);
    }
    assert.equal(DIALECTS.docker.kind, 'docker');
    assert.equal(DIALECTS.podman.kind, 'podman');
  });

  test('runtimeEnv keeps only the CLI variables', () => {
    const env = runtimeEnv({
      PATH: '/bin',
      HOME: '/root',
      DOCKER_HOST: 'unix:///x',
      CONTAINER_HOST: 'unix:///y',
      ANTHROPIC_API_KEY: 'k',
      DISCORD_BOT_TOKEN: 't',
      NODE_OPTIONS: '--inspect',
      USER: undefined,
    });
    assert.deepEqual(env, {
      PATH: '/bin',
      HOME: '/root',
      DOCKER_HOST: 'unix:///x',
      CONTAINER_HOST: 'unix:///y',
    });
  });
});

describe('instanceId', () => {
  test('is stable for the same home, differs between homes, ten hex digits', () => {
    const a = instanceId('/srv/nanoclaw');
    assert.match(a, /^[0-9a-f]{10}$/);
    assert.equal(instanceId('/srv/nanoclaw'), a);
    assert.equal(instanceId('/srv/./nanoclaw/'), a, 'the same directory written differently');
    assert.notEqual(instanceId('/srv/nanoclaw2'), a);
    assert.notEqual(instanceId('/home/me/nanoclaw'), a);
  });
});

/** A fake runtime CLI: logs `argv<TAB>arg<TAB>...` and `env<TAB>$ANTHROPIC_API_KEY` per call. */
function fakeCli(script: { run: string; rm?: string }): { bin: string; log: string; dir: string } {
  const dir = tempDir('nanoclaw-fakecli-');
  const log = path.join(dir, 'log');
  const bin = path.join(dir, 'podman');
  writeFileSync(
    bin,
    `#!/bin/sh
LOG='${log}'
DIR='${dir}'
TAB=$(printf '\\t')
(IFS="$TAB"; printf 'argv\\t%s\\n' "$*") >> "$LOG"
printf 'env\\t%s\\n' "\${ANTHROPIC_API_KEY-unset}" >> "$LOG"
case "$1" in
  run) ${script.run} ;;
  wait) [ $# -eq 2 ] || exit 1; echo 3 ;;
  rm) [ "$2" = -f ] && [ $# -eq 3 ] || exit 1; ${script.rm ?? ':'}; printf 'removed\\t%s\\n' "$3" >> "$LOG" ;;
  ps) [ "$2" = -a ] || exit 1; echo nanoclaw-0123456789-family-aaaaaa; echo nanoclaw-0123456789-main-bbbbbb ;;
  *) exit 1 ;;
esac
`,
  );
  chmodSync(bin, 0o755);
  return { bin, log, dir };
}

function calls(log: string): string[][] {
  if (!existsSync(log)) return [];
  return readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('argv\t'))
    .map((l) => l.split('\t').slice(1));
}

function settings(home: string, over: Partial<ContainerSettings> = {}): ContainerSettings {
  return {
    image: 'img:1',
    home,
    env: { PATH: process.env.PATH },
    ownedRoots: [],
    claudeCodeVersion: 'x',
    uid: 1234,
    gid: 1234,
    ...over,
  };
}

function exited(p: SandboxProcess): Promise<[number | null, NodeJS.Signals | null]> {
  return new Promise((resolve) => p.on('exit', (code, signal) => resolve([code, signal])));
}

function readAll(p: SandboxProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let s = '';
    p.stdout.setEncoding('utf8');
    p.stdout.on('data', (c: string) => {
      s += c;
    });
    p.stdout.on('end', () => resolve(s));
    p.stdout.on('error', reject);
  });
}

const runSpec: SandboxSpec = {
  command: '/host/claude',
  args: ['--print'],
  env: { PATH: '/usr/bin:/bin', ANTHROPIC_API_KEY: SECRET },
  mounts: [{ host: '/srv/nc/groups/family', guest: '/workspace/group', readonly: false }],
  cwd: '/workspace/group',
  label: 'family',
};

describe('createContainerSandbox against a fake podman', () => {
  test('stdio is the CLI stdio; exit reports the code from `wait`, then the container is removed', async () => {
    const home = tempDir();
    const fake = fakeCli({ run: 'cat; exit 0' });
    const sb = createContainerSandbox(DIALECTS.podman, fake.bin, settings(home));
    assert.equal(sb.kind, 'podman');
    const p = sb.spawn(runSpec);
    const out = readAll(p);
    const exit = exited(p);
    p.stdin.end('{"type":"user","message":"hello"}\n');
    assert.equal(await out, '{"type":"user","message":"hello"}\n');
    assert.deepEqual(await exit, [3, null], 'the CLI said 0, `wait` said 3');
    assert.equal(p.exitCode, 3);
    assert.equal(p.killed, false);

    const log = calls(fake.log);
    const run = log[0] ?? [];
    assert.deepEqual(run.slice(0, 3), ['run', '-i', '--name']);
    const name = run[3] ?? '';
    assert.match(name, new RegExp(`^nanoclaw-${instanceId(home)}-family-[0-9a-f]{6}$`));
    assert.ok(run.includes('1234:1234'), 'runs as the orchestrator user, not the image user');
    assert.ok(run.includes('img:1'));
    assert.deepEqual(log.slice(1), [
      ['wait', name],
      ['rm', '-f', name],
    ]);
    await sb.close?.();
  });

  test('each spawn gets its own name; the label is reduced to safe characters', async () => {
    const home = tempDir();
    const fake = fakeCli({ run: 'cat; exit 0' });
    const sb = createContainerSandbox(DIALECTS.podman, fake.bin, settings(home));
    for (const label of ['family', 'fam ily/../x;rm', undefined]) {
      const p = sb.spawn({ ...runSpec, ...(label === undefined ? { label: undefined } : { label }) });
      const exit = exited(p);
      p.stdin.end();
      await exit;
    }
    await sb.close?.();
    const names = calls(fake.log)
      .filter((c) => c[0] === 'run')
      .map((c) => c[3] ?? '');
    const id = instanceId(home);
    assert.equal(names.length, 3);
    assert.match(names[0] ?? '', new RegExp(`^nanoclaw-${id}-family-[0-9a-f]{6}$`));
    assert.match(names[1] ?? '', new RegExp(`^nanoclaw-${id}-familyxrm-[0-9a-f]{6}$`));
    assert.match(names[2] ?? '', new RegExp(`^nanoclaw-${id}-agent-[0-9a-f]{6}$`));
  });

  test('the secret reaches the CLI environment by name, never its argv; other calls get no secret', async () => {
    const home = tempDir();
    const fake = fakeCli({ run: 'cat; exit 0' });
    const sb = createContainerSandbox(DIALECTS.podman, fake.bin, settings(home));
    const p = sb.spawn(runSpec);
    const exit = exited(p);
    p.stdin.end();
    await exit;
    await sb.close?.();
    const lines = readFileSync(fake.log, 'utf8').split('\n');
    assert.equal(lines[0]?.split('\t')[1], 'run');
    assert.equal(lines[1], `env\t${SECRET}`, 'the run CLI has the secret in its environment');
    assert.ok(calls(fake.log)[0]?.includes('ANTHROPIC_API_KEY'), 'passed by name: -e ANTHROPIC_API_KEY');
    for (const l of lines.filter((x) => x.startsWith('argv\t'))) assert.ok(!l.includes(SECRET), l);
    const otherEnv = lines.filter((l) => l.startsWith('env\t')).slice(1);
    assert.equal(otherEnv.length, 2, 'wait and rm');
    for (const l of otherEnv) assert.equal(l, 'env\tunset');
  });

  test('kill removes the running container (which ignores SIGTERM); close() waits for the removals', async () => {
    const home = tempDir();
    // The "container" ignores the CLI's SIGTERM: only `rm -f` (here: SIGKILL to it) ends it.
    const fake = fakeCli({
      run: `echo $$ > "$DIR/run.pid"; trap '' TERM; while :; do sleep 0.05; done`,
      rm: `[ -f "$DIR/run.pid" ] && kill -9 "$(cat "$DIR/run.pid")" 2>/dev/null; sleep 0.3`,
    });
    const pidFile = path.join(fake.dir, 'run.pid');
    const sb = createContainerSandbox(DIALECTS.podman, fake.bin, settings(home));
    const p = sb.spawn(runSpec);
    const exit = exited(p);
    try {
      const deadline = Date.now() + 5000;
      while (!existsSync(pidFile) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const name = calls(fake.log)[0]?.[3] ?? '';
      assert.ok(name.startsWith('nanoclaw-') && existsSync(pidFile), 'the fake run started');
      assert.equal(p.kill('SIGTERM'), true);
      assert.equal(p.killed, true);
      await sb.close?.();
      const log = calls(fake.log);
      const rms = log.filter((c) => c[0] === 'rm');
      assert.ok(rms.length >= 1, 'rm -f was issued');
      for (const c of rms) assert.deepEqual(c, ['rm', '-f', name]);
      const removed = readFileSync(fake.log, 'utf8')
        .split('\n')
        .filter((l) => l.startsWith('removed\t'));
      assert.equal(removed.length, rms.length, 'close() resolved only after every rm finished');
      assert.ok(!log.some((c) => c[0] === 'wait'), 'a killed container is not waited for');
      const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 5000).unref());
      assert.deepEqual(await Promise.race([exit, timeout]), [null, 'SIGKILL'], 'ended by the rm -f');
      assert.equal(p.exitCode, null);
    } finally {
      if (existsSync(pidFile)) {
        try {
          process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  });

  test('reap removes every container the list names', () => {
    const home = tempDir();
    const fake = fakeCli({ run: 'exit 1' });
    const sb = createContainerSandbox(DIALECTS.podman, fake.bin, settings(home));
    sb.reap?.();
    assert.deepEqual(calls(fake.log), [
      ['ps', '-a', '--filter', `label=org.nanoclaw.instance=${instanceId(home)}`, '--format', '{{.Names}}'],
      ['rm', '-f', 'nanoclaw-0123456789-family-aaaaaa'],
      ['rm', '-f', 'nanoclaw-0123456789-main-bbbbbb'],
    ]);
  });

  test('as root: runs as the image user and hands writable mounts inside owned roots to it', async () => {
    const home = tempDir();
    const fake = fakeCli({ run: 'cat; exit 0' });
    const root = process.getuid?.() === 0;
    const owned = tempDir();
    const group = path.join(owned, 'group');
    const global = path.join(owned, 'global');
    const elsewhere = path.join(tempDir(), 'project');
    for (const d of [group, global, elsewhere]) mkdirSync(d);
    writeFileSync(path.join(group, 'notes.md'), 'x');
    const sb = createContainerSandbox(
      DIALECTS.podman,
      fake.bin,
      settings(home, { uid: 0, gid: 0, ownedRoots: root ? [owned] : [] }),
    );
    const p = sb.spawn({
      ...runSpec,
      mounts: [
        { host: group, guest: '/workspace/group', readonly: false },
        { host: global, guest: '/workspace/global', readonly: true },
        { host: elsewhere, guest: '/workspace/project', readonly: false },
      ],
    });
    const exit = exited(p);
    p.stdin.end();
    await exit;
    await sb.close?.();
    assert.ok(calls(fake.log)[0]?.includes(`${IMAGE_UID}:${IMAGE_UID}`), 'never uid 0 in the container');
    if (root) {
      assert.equal(statSync(group).uid, IMAGE_UID);
      assert.equal(statSync(path.join(group, 'notes.md')).uid, IMAGE_UID);
      assert.equal(statSync(global).uid, 0, 'a read-only mount is not handed over');
      assert.equal(statSync(elsewhere).uid, 0, 'a mount outside the owned roots is not handed over');
    }
  });
});

describe('imageProblem', () => {
  function cli(body: string): string {
    const bin = path.join(tempDir('nanoclaw-fakeimg-'), 'podman');
    writeFileSync(bin, `#!/bin/sh\n${body}\n`);
    chmodSync(bin, 0o755);
    return bin;
  }
  const inspecting = (version: string) =>
    cli(`[ "$1 $2 $3 $5" = 'image inspect --format img:1' ] || exit 1
[ "$4" = '{{index .Config.Labels "${VERSION_LABEL}"}}' ] || exit 1
echo '${version}'`);
  const env = runtimeEnv(process.env);
  const s = { image: 'img:1', claudeCodeVersion: '2.1.7' };

  test('the right version: no problem', () => {
    assert.equal(imageProblem(DIALECTS.podman, inspecting('2.1.7'), s, env), undefined);
  });

  test('another version: one line naming both versions and the build script', () => {
    const m = imageProblem(DIALECTS.podman, inspecting('2.0.1'), s, env) ?? '';
    assert.ok(m.includes('2.0.1') && m.includes('2.1.7') && m.includes('container/build.sh'), m);
    assert.ok(!m.includes('\n'), m);
    const none = imageProblem(DIALECTS.podman, inspecting(''), s, env) ?? '';
    assert.ok(none.includes('unknown version') && none.includes('container/build.sh'), none);
  });

  test('a failing CLI: not available, with the first line of its error', () => {
    const bin = cli(`echo 'Error: img:1: image not known' >&2; echo 'second line' >&2; exit 125`);
    const m = imageProblem(DIALECTS.podman, bin, s, env) ?? '';
    assert.ok(m.includes('build it with container/build.sh'), m);
    assert.ok(m.includes('image not known') && !m.includes('second line') && !m.includes('\n'), m);
    const missing = imageProblem(DIALECTS.podman, path.join(tempDir(), 'no-such-cli'), s, env) ?? '';
    assert.ok(missing.includes('build it with container/build.sh'), missing);
  });
});

describe('handOver', () => {
  test('chowns the whole tree without following a symlink out of it', () => {
    const uid = process.getuid?.() === 0 ? 1000 : (process.getuid?.() ?? 1000);
    const gid = process.getuid?.() === 0 ? 1000 : (process.getgid?.() ?? 1000);
    const tree = tempDir();
    const outside = tempDir();
    const secret = path.join(outside, 'shadow');
    const outDir = path.join(outside, 'dir');
    writeFileSync(secret, 'root only');
    mkdirSync(outDir);
    writeFileSync(path.join(outDir, 'inner'), 'x');
    const before = {
      file: statSync(secret).uid,
      dir: statSync(outDir).uid,
      inner: statSync(path.join(outDir, 'inner')).uid,
    };
    mkdirSync(path.join(tree, 'sub', 'deeper'), { recursive: true });
    writeFileSync(path.join(tree, 'file.txt'), 'x');
    writeFileSync(path.join(tree, 'sub', 'deeper', 'nested.txt'), 'x');
    symlinkSync(secret, path.join(tree, 'sub', 'link'));
    symlinkSync(outDir, path.join(tree, 'dirlink'));

    handOver(tree, uid, gid);

    for (const rel of ['', 'sub', 'sub/deeper', 'file.txt', 'sub/deeper/nested.txt', 'sub/link', 'dirlink']) {
      const st = lstatSync(path.join(tree, rel));
      assert.deepEqual([st.uid, st.gid], [uid, gid], rel || '.');
    }
    assert.equal(statSync(secret).uid, before.file, 'the symlinked file outside is untouched');
    assert.equal(statSync(outDir).uid, before.dir, 'the symlinked directory outside is untouched');
    assert.equal(statSync(path.join(outDir, 'inner')).uid, before.inner, 'and so is what it holds');
    assert.doesNotThrow(() => handOver(path.join(tree, 'missing'), uid, gid));
  });
});
