// Image-based sandboxes: docker and podman (one argv, binary swapped) and Apple's container CLI
// (its dialect is in apple.ts). The CLI runs attached (-i): its stdio carries the Claude Code
// protocol. Each container is named after its group, labelled with this install's instance id so
// orphans can be removed at start, and never started with --rm: the docker CLI talking to podman
// 4.3 reports exit code 0 for every --rm container, so the exit code comes from `wait` on the
// named container, which is then removed.
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { lchownSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { within } from '../mounts.js';
import { appleDialect } from './apple.js';
import {
  egressEnv,
  envArgs,
  guestArgv,
  INSTANCE_LABEL,
  type RunCommand,
  type RunOptions,
  type Sandbox,
  SandboxError,
  type SandboxProcess,
  type SandboxSpec,
  VERSION_LABEL,
} from './index.js';

/** The image's own non-root user (container/Dockerfile). */
export const IMAGE_UID = 1000;

/** A runtime's CLI commands; `env` holds values the CLI passes in by name (secrets stay out of argv). */
export interface Dialect {
  kind: 'docker' | 'podman' | 'apple';
  run(spec: SandboxSpec, o: RunOptions): RunCommand;
  remove(name: string): string[];
  wait(name: string): string[] | undefined;
  list(instance: string): string[];
  imageLabel(image: string, label: string): string[];
  parseImageLabel?(stdout: string, label: string): string | undefined;
  /** When `list` cannot filter by label: picks this instance's containers from its output. */
  parseList?(stdout: string, instance: string): string[];
  /** See Sandbox.proxyHost. */
  proxyHost?: string;
}

/** A path that `-v host:guest:mode` would misread. */
function checkPath(p: string): string {
  if (/[:,\n\0]/.test(p))
    throw new SandboxError(`mount path ${JSON.stringify(p)} contains : , or a control character`);
  return p;
}

/** `docker run` / `podman run` arguments for a spec. */
export function dockerRunArgs(spec: SandboxSpec, o: RunOptions): RunCommand {
  const args = ['run', '-i', '--name', o.name, '--label', `${INSTANCE_LABEL}=${o.instance}`];
  // stdout is the conversation: the runtime must not keep a second copy in its logs.
  args.push('--log-driver', 'none', '--network', 'none', '--read-only');
  args.push('--tmpfs', '/tmp:rw,exec,nosuid,nodev', '--cap-drop', 'ALL');
  args.push('--security-opt', 'no-new-privileges', '--init', '--hostname', 'nanoclaw');
  args.push('--user', `${o.user.uid}:${o.user.gid}`, '--workdir', spec.cwd);
  if (spec.limits) {
    const mem = String(spec.limits.memoryBytes);
    args.push('--memory', mem, '--memory-swap', mem, '--cpus', String(spec.limits.cpus));
    args.push('--pids-limit', String(spec.limits.pids));
  }
  // The same file-size and open-file limits as bwrap's (fsize in bytes: 4 GiB). nproc is only a
  // backstop (--pids-limit is the real cap) but must be given: once one --ulimit is, podman
  // drops its configured defaults and tries the host's maximum, which a machine without
  // CAP_SYS_RESOURCE refuses.
  const fsize = 4 * 1024 ** 3;
  args.push('--ulimit', `fsize=${fsize}:${fsize}`, '--ulimit', 'nofile=4096:4096');
  args.push('--ulimit', 'nproc=4096:4096');
  for (const m of spec.mounts) {
    if (m.type === 'tmpfs') args.push('--tmpfs', checkPath(m.guest));
    else if (m.type === 'hide') args.push('-v', `/dev/null:${checkPath(m.guest)}:ro`);
    else args.push('-v', `${checkPath(m.host)}:${checkPath(m.guest)}:${m.readonly ? 'ro' : 'rw'}`);
  }
  const e = envArgs({ ...spec.env, ...egressEnv(spec) });
  args.push(...e.args, o.image, ...guestArgv(spec));
  return { args, env: e.env };
}

function dockerLike(kind: 'docker' | 'podman'): Dialect {
  return {
    kind,
    run: dockerRunArgs,
    remove: (name) => ['rm', '-f', name],
    wait: (name) => ['wait', name],
    list: (instance) => [
      'ps',
      '-a',
      '--filter',
      `label=${INSTANCE_LABEL}=${instance}`,
      '--format',
      '{{.Names}}',
    ],
    imageLabel: (image, label) => [
      'image',
      'inspect',
      '--format',
      `{{index .Config.Labels "${label}"}}`,
      image,
    ],
  };
}

export const DIALECTS: Record<Dialect['kind'], Dialect> = {
  docker: dockerLike('docker'),
  podman: dockerLike('podman'),
  apple: appleDialect,
};

/** A short id for one NanoClaw home: containers of other installs on the same host are not ours. */
export function instanceId(home: string): string {
  return createHash('sha256').update(path.resolve(home)).digest('hex').slice(0, 10);
}

/** Claude Code's version the installed SDK was built for (its package.json says). */
export function sdkClaudeCodeVersion(): string {
  const entry = fileURLToPath(import.meta.resolve('@anthropic-ai/claude-agent-sdk'));
  const pkg = JSON.parse(readFileSync(path.join(path.dirname(entry), 'package.json'), 'utf8'));
  return String(pkg.claudeCodeVersion);
}

/** Variables the runtime CLI itself needs from the orchestrator's environment (none are secrets). */
const CLI_ENV =
  /^(PATH|HOME|USER|LOGNAME|TMPDIR|XDG_RUNTIME_DIR|XDG_CONFIG_HOME|DOCKER_(HOST|CONFIG|CONTEXT|CERT_PATH|TLS_VERIFY)|CONTAINER_HOST|CONTAINERS_(CONF|STORAGE_CONF|REGISTRIES_CONF))$/;

/** The part of the orchestrator's environment the runtime CLI gets. */
export function runtimeEnv(env: Readonly<Record<string, string | undefined>>): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k, v]) => CLI_ENV.test(k) && v !== undefined));
}

export interface ContainerSettings {
  image: string;
  /** The NanoClaw home: names the instance label. */
  home: string;
  /** The orchestrator's environment; only the runtime CLI's own variables are passed on. */
  env: Readonly<Record<string, string | undefined>>;
  /** NanoClaw's own directories: read-write mounts inside them are handed to the image's user
   * when the orchestrator runs as root (so the sandbox is never uid 0). */
  ownedRoots: readonly string[];
  /** Claude Code's version the SDK needs. */
  claudeCodeVersion: string;
  /** The orchestrator's uid and gid (tests); default: the process's own. */
  uid?: number;
  gid?: number;
}

/** One line saying why the image cannot run agents, or undefined when it can. */
export function imageProblem(
  dialect: Dialect,
  bin: string,
  s: Pick<ContainerSettings, 'image' | 'claudeCodeVersion'>,
  cliEnv: NodeJS.ProcessEnv,
): string | undefined {
  let out: string;
  try {
    out = execFileSync(bin, dialect.imageLabel(s.image, VERSION_LABEL), {
      encoding: 'utf8',
      env: cliEnv,
      timeout: 15_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (e) {
    const stderr = String((e as { stderr?: string }).stderr ?? '').trim();
    const why = (stderr || (e as Error).message).split('\n')[0];
    return `image ${s.image} is not available (${why}): build it with container/build.sh`;
  }
  const found = dialect.parseImageLabel ? dialect.parseImageLabel(out, VERSION_LABEL) : out.trim();
  if (found !== s.claudeCodeVersion) {
    return (
      `image ${s.image} has Claude Code ${found || 'of unknown version'} but the SDK needs ` +
      `${s.claudeCodeVersion}: rebuild it with container/build.sh`
    );
  }
  return undefined;
}

/**
 * Hands a tree to `uid` without following symlinks (an agent may have planted some). Only
 * NanoClaw's own directories are handed over, at a sandbox's start, and no other sandbox can write
 * in them then (one agent per group; main's project view is read-only), so nothing can swap a
 * directory for a symlink between the lstat and the readdir.
 */
export function handOver(root: string, uid: number, gid: number): void {
  const st = lstatSync(root, { throwIfNoEntry: false });
  if (!st) return;
  if (st.uid !== uid || st.gid !== gid) lchownSync(root, uid, gid);
  if (!st.isDirectory()) return;
  for (const e of readdirSync(root, { withFileTypes: true })) {
    const p = path.join(root, e.name);
    if (e.isDirectory()) handOver(p, uid, gid);
    else lchownSync(p, uid, gid);
  }
}

export function createContainerSandbox(dialect: Dialect, bin: string, s: ContainerSettings): Sandbox {
  const instance = instanceId(s.home);
  const cliEnv = runtimeEnv(s.env);
  const hostUid = s.uid ?? process.getuid?.() ?? IMAGE_UID;
  const hostGid = s.gid ?? process.getgid?.() ?? IMAGE_UID;
  // As root, the sandbox runs as the image's user and NanoClaw's writable directories are handed
  // to it; otherwise as the owner, so the files an agent writes are the owner's.
  const user = hostUid === 0 ? { uid: IMAGE_UID, gid: IMAGE_UID } : { uid: hostUid, gid: hostGid };
  const pending = new Set<Promise<unknown>>();

  function cli(args: string[], timeout = 30_000): Promise<string> {
    const p = new Promise<string>((resolve, reject) => {
      execFile(bin, args, { env: cliEnv, timeout, encoding: 'utf8' }, (err, stdout) =>
        err ? reject(err) : resolve(stdout),
      );
    });
    const tracked = p.catch(() => undefined).finally(() => pending.delete(tracked));
    pending.add(tracked);
    return p;
  }

  return {
    kind: dialect.kind,
    ...(dialect.proxyHost ? { proxyHost: dialect.proxyHost } : {}),
    reap(): void {
      const out = execFileSync(bin, dialect.list(instance), {
        encoding: 'utf8',
        env: cliEnv,
        timeout: 30_000,
      });
      const names = dialect.parseList
        ? dialect.parseList(out, instance)
        : out
            .split('\n')
            .map((n) => n.trim())
            .filter(Boolean);
      for (const name of names)
        execFileSync(bin, dialect.remove(name), { stdio: 'ignore', env: cliEnv, timeout: 30_000 });
    },
    async close(): Promise<void> {
      while (pending.size > 0) await Promise.all([...pending]);
    },
    spawn(spec: SandboxSpec): SandboxProcess {
      if (hostUid === 0) {
        for (const m of spec.mounts) {
          if (!('host' in m) || m.readonly) continue;
          if (s.ownedRoots.some((r) => within(r, m.host))) handOver(m.host, user.uid, user.gid);
        }
      }
      const folder = (spec.label ?? 'agent').replace(/[^a-z0-9-]/gi, '').slice(0, 40) || 'agent';
      const name = `nanoclaw-${instance}-${folder}-${randomBytes(3).toString('hex')}`;
      const run = dialect.run(spec, { image: s.image, name, instance, user });
      const child = spawn(bin, run.args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...cliEnv, ...run.env } });
      return new ContainerProcess(child, name, dialect, cli);
    },
  };
}

/** The runtime CLI's process, seen as the container: `exit` fires once the container is gone. */
class ContainerProcess extends EventEmitter {
  killed = false;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  readonly stdin;
  readonly stdout;
  readonly stderr;

  constructor(
    private readonly child: ChildProcess,
    private readonly name: string,
    private readonly dialect: Dialect,
    private readonly cli: (args: string[], timeout?: number) => Promise<string>,
  ) {
    super();
    if (!child.stdin || !child.stdout || !child.stderr) throw new SandboxError('container CLI without stdio');
    this.stdin = child.stdin;
    this.stdout = child.stdout;
    this.stderr = child.stderr;
    child.on('error', (e) => this.emit('error', e));
    child.on('exit', (code, signal) => void this.finish(code, signal));
  }

  private async finish(code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    const wait = this.killed ? undefined : this.dialect.wait(this.name);
    const waited = wait ? await this.cli(wait, 15_000).catch(() => '') : '';
    await this.cli(this.dialect.remove(this.name)).catch(() => undefined);
    const n = Number.parseInt(waited.trim(), 10);
    this.exitCode = Number.isInteger(n) ? n : code;
    this.signalCode = Number.isInteger(n) ? null : signal;
    this.emit('exit', this.exitCode, this.signalCode);
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    if (!this.killed) void this.cli(this.dialect.remove(this.name)).catch(() => undefined);
    this.killed = true;
    return this.child.kill(signal);
  }
}
