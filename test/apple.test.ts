// The Apple `container` dialect: argv only (no Mac here). Every option `run` emits is parsed with
// its arity, so an option Apple's CLI does not have, or a missing value, fails the parse.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { appleDialect, parseImageLabel, parseList } from '../src/sandbox/apple.js';
import { type Mount, type RunOptions, SandboxError, type SandboxSpec } from '../src/sandbox/index.js';
import { envOf, parseRunArgs } from './support/run-args.js';

const PROXY = 'http://192.168.64.1:41234';
const opts: RunOptions = {
  image: 'nanoclaw-agent:latest',
  name: 'nanoclaw-3fa2b1c0d9-family-k3j9x2',
  instance: '3fa2b1c0d9',
  user: { uid: 501, gid: 20 },
};
const mounts: Mount[] = [
  { host: '/Users/me/nc/groups/family', guest: '/workspace/group', readonly: false },
  { host: '/Users/me/nc/groups/global', guest: '/workspace/global', readonly: true },
  { host: '/Users/me/nc/data/run/r1', guest: '/run/nanoclaw', readonly: false },
];
const spec: SandboxSpec = {
  command: '/host/path/to/claude',
  args: ['--output-format', 'stream-json', '-i'],
  env: {
    PATH: '/usr/bin:/bin',
    TZ: 'UTC',
    ANTHROPIC_API_KEY: 'run-token-123',
    GH_TOKEN: 'gh-secret-456',
    DB_PASSWORD: 'pw-789',
    ANTHROPIC_UNIX_SOCKET: '/run/nanoclaw/api.sock',
    NANOCLAW_EGRESS_SOCKET: '/run/nanoclaw/api.sock',
  },
  mounts,
  cwd: '/workspace/group',
  egressSocket: '/run/nanoclaw/api.sock',
  limits: { memoryBytes: 2 * 1024 ** 3, cpus: 1.5, pids: 512 },
  label: 'family',
  proxyUrl: PROXY,
};

// Arity of every option of `container run` this dialect may emit (command-reference, 1.0.0).
const ARITY: Readonly<Record<string, number>> = {
  '-i': 0,
  '--name': 1,
  '--label': 1,
  '--init': 0,
  '--read-only': 0,
  '--tmpfs': 1,
  '--cap-drop': 1,
  '--uid': 1,
  '--gid': 1,
  '--workdir': 1,
  '--memory': 1,
  '--cpus': 1,
  '--ulimit': 1,
  '--mount': 1,
  '-e': 1,
};

const parse = (args: readonly string[]) => parseRunArgs(args, ARITY);

describe('appleDialect.run', () => {
  const out = appleDialect.run(spec, opts);
  const p = parse(out.args);

  test('runs attached and named, labelled, locked down, as the user, in the working directory', () => {
    assert.deepEqual(out.args.slice(0, 4), ['run', '-i', '--name', opts.name]);
    assert.deepEqual(p.values('--label'), ['org.nanoclaw.instance=3fa2b1c0d9']);
    for (const flag of ['--init', '--read-only']) assert.equal(p.values(flag).length, 1, flag);
    assert.deepEqual(p.values('--cap-drop'), ['ALL']);
    assert.deepEqual([p.values('--uid'), p.values('--gid')], [['501'], ['20']]);
    assert.deepEqual(p.values('--workdir'), ['/workspace/group']);
    assert.ok(!out.args.includes('--rm') && !out.args.includes('--network'));
  });

  test('ends with the image, the entry script, the image binary and the arguments untouched', () => {
    assert.equal(p.image, 'nanoclaw-agent:latest');
    assert.deepEqual(p.command, [
      '/bin/sh',
      '/opt/nanoclaw/start',
      '/opt/nanoclaw/bin/claude',
      '--output-format',
      'stream-json',
      '-i',
    ]);
    assert.ok(!out.args.includes(spec.command), 'the host binary path is not used');
  });

  test('memory rounds up to whole MiB, cpus up to an integer, pids become an nproc rlimit', () => {
    const limits = (memoryBytes: number, cpus: number) => {
      const q = parse(appleDialect.run({ ...spec, limits: { memoryBytes, cpus, pids: 64 } }, opts).args);
      return [q.values('--memory')[0], q.values('--cpus')[0], q.values('--ulimit')[0]];
    };
    assert.deepEqual(limits(2 * 1024 ** 3, 1.5), ['2048M', '2', 'nproc=64:64']);
    assert.deepEqual(limits(512 * 1024 ** 2 + 1, 2), ['513M', '2', 'nproc=64:64']);
    assert.deepEqual(limits(1000, 0.25), ['1M', '1', 'nproc=64:64']);
    const none = parse(appleDialect.run({ ...spec, limits: undefined }, opts).args);
    assert.deepEqual([none.values('--memory'), none.values('--cpus'), none.values('--ulimit')], [[], [], []]);
  });

  test('secrets go by name only: never in argv, returned in env for the CLI to pass', () => {
    const joined = out.args.join('\n');
    for (const secret of ['run-token-123', 'gh-secret-456', 'pw-789'])
      assert.ok(!joined.includes(secret), secret);
    const e = p.values('-e');
    for (const name of ['ANTHROPIC_API_KEY', 'GH_TOKEN', 'DB_PASSWORD']) assert.ok(e.includes(name), name);
    assert.deepEqual(out.env, {
      ANTHROPIC_API_KEY: 'run-token-123',
      GH_TOKEN: 'gh-secret-456',
      DB_PASSWORD: 'pw-789',
    });
    assert.equal(envOf(e).get('TZ'), 'TZ=UTC');
  });

  test('reaches the proxy over TCP: no socket variables, base URL and proxy variables set', () => {
    const e = envOf(p.values('-e'));
    assert.ok(!e.has('ANTHROPIC_UNIX_SOCKET') && !e.has('NANOCLAW_EGRESS_SOCKET'));
    assert.equal(e.get('ANTHROPIC_BASE_URL'), `ANTHROPIC_BASE_URL=${PROXY}`);
    for (const k of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy'])
      assert.equal(e.get(k), `${k}=${PROXY}`);
    for (const k of ['NO_PROXY', 'no_proxy']) assert.equal(e.get(k), `${k}=localhost,127.0.0.1,::1`);
  });

  test("binds directories with their mode and drops the egress socket's directory", () => {
    assert.deepEqual(p.values('--mount'), [
      'type=bind,source=/Users/me/nc/groups/family,target=/workspace/group',
      'type=bind,source=/Users/me/nc/groups/global,target=/workspace/global,readonly',
    ]);
    const noSocket = parse(appleDialect.run({ ...spec, egressSocket: undefined }, opts).args);
    assert.equal(noSocket.values('--mount').length, 3, 'without egressSocket /run/nanoclaw stays');
  });
});

describe('appleDialect.run mounts', () => {
  const run = (m: Mount[]) => parse(appleDialect.run({ ...spec, mounts: m }, opts).args);

  test('a hidden file drops its whole enclosing read-only bind and keeps the other mounts', () => {
    const q = run([
      { host: '/Users/me/nc/groups/main', guest: '/workspace/group', readonly: false },
      { host: '/Users/me/code/nanoclaw', guest: '/workspace/project', readonly: true },
      { type: 'hide', guest: '/workspace/project/.env' },
      { host: '/Users/me/nc/groups/global', guest: '/workspace/global', readonly: true },
    ]);
    assert.deepEqual(q.values('--mount'), [
      'type=bind,source=/Users/me/nc/groups/main,target=/workspace/group',
      'type=bind,source=/Users/me/nc/groups/global,target=/workspace/global,readonly',
    ]);
    assert.ok(!q.values('--mount').join().includes('/dev/null'));
  });

  test('a tmpfs mount becomes --tmpfs at its guest path, after the /tmp one', () => {
    const q = run([
      { host: '/Users/me/code/nanoclaw', guest: '/workspace/project', readonly: true },
      { type: 'tmpfs', guest: '/workspace/project/data' },
    ]);
    assert.deepEqual(q.values('--tmpfs'), ['/tmp', '/workspace/project/data']);
    assert.equal(q.values('--mount').length, 1);
  });

  test('paths with a comma, colon, equals sign, newline or NUL are refused with one line', () => {
    for (const bad of ['/a,b', '/a:b', '/a=b', '/a\nb', '/a\0b']) {
      for (const m of [
        { host: bad, guest: '/workspace/x', readonly: true },
        { host: '/ok', guest: bad, readonly: false },
        { type: 'tmpfs' as const, guest: bad },
      ]) {
        assert.throws(
          () => run([m]),
          (e: unknown) => e instanceof SandboxError && !e.message.includes('\n'),
          JSON.stringify(m),
        );
      }
    }
  });
});

describe('appleDialect.run refuses', () => {
  test('a run without a proxy URL, or with one that is not a URL', () => {
    for (const proxyUrl of [undefined, '']) {
      assert.throws(() => appleDialect.run({ ...spec, proxyUrl }, opts), {
        name: 'SandboxError',
        message: 'the Apple container sandbox needs the proxy TCP URL (proxyUrl)',
      });
    }
    assert.throws(() => appleDialect.run({ ...spec, proxyUrl: 'not a url' }, opts), SandboxError);
  });

  test('a variable with a newline or NUL, or a name with =', () => {
    for (const env of [{ A: 'x\ny' }, { A: 'x\0y' }, { 'A=B': 'x' }] as Record<string, string>[]) {
      assert.throws(() => appleDialect.run({ ...spec, env }, opts), SandboxError);
    }
  });
});

describe('appleDialect side commands', () => {
  test('remove force-deletes, wait has no command, list and imageLabel print JSON', () => {
    assert.equal(appleDialect.kind, 'apple');
    assert.deepEqual(appleDialect.remove('c1'), ['delete', '--force', 'c1']);
    assert.equal(appleDialect.wait('c1'), undefined);
    assert.deepEqual(appleDialect.list('3fa2b1c0d9'), ['list', '--all', '--format', 'json']);
    assert.deepEqual(appleDialect.imageLabel('nanoclaw-agent:latest', 'x'), [
      'image',
      'inspect',
      'nanoclaw-agent:latest',
    ]);
  });

  test("parseImageLabel reads the label from an image's variants", () => {
    const inspect = JSON.stringify([
      {
        name: 'nanoclaw-agent:latest',
        index: { digest: 'sha256:abc', size: 1, mediaType: 'application/vnd.oci.image.index.v1+json' },
        variants: [
          {
            platform: { os: 'linux', architecture: 'arm64' },
            size: 123,
            config: {
              architecture: 'arm64',
              os: 'linux',
              config: {
                Labels: { 'org.nanoclaw.claude-code-version': '2.1.7', 'org.nanoclaw.browser': '1' },
              },
              rootfs: { type: 'layers', diff_ids: [] },
            },
          },
        ],
      },
    ]);
    assert.equal(parseImageLabel(inspect, 'org.nanoclaw.claude-code-version'), '2.1.7');
    assert.equal(parseImageLabel(inspect, 'org.nanoclaw.missing'), undefined);
    assert.equal(parseImageLabel('Error: image not found', 'org.nanoclaw.claude-code-version'), undefined);
  });

  test("parseList keeps only this instance's containers, running or stopped", () => {
    const c = (id: string, labels: Record<string, string>, state: string) => ({
      configuration: { id, labels, image: { reference: 'x' } },
      status: { state },
    });
    const stdout = JSON.stringify([
      c('nanoclaw-3fa2b1c0d9-family-aaaaaa', { 'org.nanoclaw.instance': '3fa2b1c0d9' }, 'running'),
      c('nanoclaw-3fa2b1c0d9-main-bbbbbb', { 'org.nanoclaw.instance': '3fa2b1c0d9' }, 'stopped'),
      c('nanoclaw-ffffffffff-main-cccccc', { 'org.nanoclaw.instance': 'ffffffffff' }, 'running'),
      c('my-postgres', {}, 'running'),
    ]);
    assert.deepEqual(parseList(stdout, '3fa2b1c0d9'), [
      'nanoclaw-3fa2b1c0d9-family-aaaaaa',
      'nanoclaw-3fa2b1c0d9-main-bbbbbb',
    ]);
    assert.deepEqual(parseList('[]', '3fa2b1c0d9'), []);
    assert.deepEqual(parseList('not json', '3fa2b1c0d9'), []);
  });
});
