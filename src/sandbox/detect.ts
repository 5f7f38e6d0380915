// Choosing the runtime: the one SANDBOX names, or with `auto` the fastest one that is ready —
// bwrap (~4 ms a start, no image), then podman, docker and Apple's container (an image, 130 ms
// and more). "Ready" means it would run an agent now: namespaces work, or the CLI answers and the
// image is there with the SDK's Claude Code version.
import { execFileSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import type { Config, SandboxKind } from '../config.js';
import { createBwrapSandbox } from './bwrap.js';
import { type Controller, findControllers } from './cgroup.js';
import {
  type ContainerSettings,
  createContainerSandbox,
  DIALECTS,
  imageProblem,
  runtimeEnv,
  sdkClaudeCodeVersion,
} from './container.js';
import { type Sandbox, SandboxError } from './index.js';

/** Finds an executable on a PATH string (argv spawning never goes through a shell). */
export function which(cmd: string, searchPath: string | undefined): string | undefined {
  for (const dir of (searchPath ?? '').split(':')) {
    if (!dir) continue;
    const file = path.join(dir, cmd);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not in this directory: try the next one
    }
  }
  return undefined;
}

export interface DetectOptions {
  /** Whether bwrap can create namespaces here (default: a real probe). */
  probe?: (bwrap: string) => boolean;
  /** Settings of the image runtimes; without them only bwrap is considered. */
  container?: ContainerSettings;
  /** Where bwrap sandboxes get their cgroups (default: found from /proc/self/cgroup). */
  cgroups?: () => Controller[];
  /** One line saying why a runtime's image cannot run agents (default: inspect its label). */
  imageCheck?: (kind: 'docker' | 'podman' | 'apple', bin: string) => string | undefined;
}

const BINARY = { podman: 'podman', docker: 'docker', apple: 'container' } as const;
const INSTALL = {
  bwrap: 'sudo apt-get install -y bubblewrap',
  podman: 'sudo apt-get install -y podman runc',
  docker: 'install Docker (https://docs.docker.com/engine/install/)',
  apple: 'install Apple container (https://github.com/apple/container/releases)',
} as const;

type Kind = Exclude<SandboxKind, 'auto'>;

/** Picks the runtime named by SANDBOX, or with `auto` the fastest one that is ready. */
export function detectSandbox(
  wanted: SandboxKind,
  searchPath: string | undefined,
  opts: DetectOptions = {},
): Sandbox {
  const order: Kind[] = wanted === 'auto' ? ['bwrap', 'podman', 'docker', 'apple'] : [wanted];
  const skipped: string[] = [];
  for (const kind of order) {
    const tried = tryRuntime(kind, searchPath, opts);
    if (typeof tried !== 'string') {
      const why = wanted === 'auto' ? `SANDBOX=auto: ${[...skipped, tried.reason].join('; ')}` : tried.reason;
      return { ...tried.sandbox, reason: why };
    }
    if (wanted !== 'auto') throw new SandboxError(`SANDBOX=${kind} but ${tried}`);
    skipped.push(`not ${kind} (${tried})`);
  }
  throw new SandboxError(`no sandbox runtime is ready: ${skipped.join('; ')}`);
}

function tryRuntime(
  kind: Kind,
  searchPath: string | undefined,
  opts: DetectOptions,
): { sandbox: Sandbox; reason: string } | string {
  if (kind === 'bwrap') {
    const bwrap = which('bwrap', searchPath);
    if (!bwrap) return `bubblewrap is not installed: ${INSTALL.bwrap}`;
    if (!(opts.probe ?? canRun)(bwrap)) {
      return `${bwrap} cannot create namespaces here: enable unprivileged user namespaces`;
    }
    const prlimit = which('prlimit', searchPath);
    const cgroups = (opts.cgroups ?? findControllers)();
    return {
      sandbox: createBwrapSandbox(bwrap, process.execPath, prlimit, cgroups),
      reason:
        `bwrap: ${bwrap} creates namespaces; ${prlimit ? `rlimits via ${prlimit}` : 'no prlimit: no rlimits'}; ` +
        (cgroups.length > 0
          ? `process and memory caps in cgroups under ${cgroups.map((c) => c.base).join(', ')}`
          : 'no writable cgroup: no process or memory cap'),
    };
  }
  const bin = which(BINARY[kind], searchPath);
  if (!bin) return `${BINARY[kind]} is not installed: ${INSTALL[kind]}`;
  const settings = opts.container;
  if (!settings) return `${kind} needs the image settings`;
  const problem = opts.imageCheck
    ? opts.imageCheck(kind, bin)
    : imageProblem(DIALECTS[kind], bin, settings, runtimeEnv(settings.env));
  if (problem) return problem;
  return {
    sandbox: createContainerSandbox(DIALECTS[kind], bin, settings),
    reason: `${kind}: ${bin} runs image ${settings.image} (Claude Code ${settings.claudeCodeVersion})`,
  };
}

/** The runtime the configuration asks for, with the image settings taken from it. */
export function sandboxFor(config: Config, env: Readonly<Record<string, string | undefined>>): Sandbox {
  return detectSandbox(config.sandbox, env.PATH, {
    container: {
      image: config.containerImage,
      home: config.home,
      env,
      ownedRoots: [config.groupsDir, config.dataDir],
      claudeCodeVersion: sdkClaudeCodeVersion(),
    },
  });
}

function canRun(file: string): boolean {
  try {
    // A real namespace probe, not just `--version`: bwrap can be installed but unusable
    // (no user namespaces), and we want to fail at start rather than on the first message.
    execFileSync(file, ['--unshare-all', '--ro-bind', '/', '/', '--die-with-parent', 'true'], {
      stdio: 'ignore',
      timeout: 5000,
      env: {},
    });
    return true;
  } catch {
    return false; // unusable: the caller says what to do
  }
}
