// One small interface over the sandbox runtimes. A runtime turns a spec (command, env, mounts)
// into a running child process whose stdio carries the Claude Code control protocol.
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import type { SandboxKind } from '../config.js';
import { createBwrapSandbox } from './bwrap.js';

export class SandboxError extends Error {
  override name = 'SandboxError';
}

export interface Mount {
  host: string;
  guest: string;
  readonly: boolean;
}

export interface SandboxSpec {
  /** Host path of the program to run; it is bound read-only into the sandbox. */
  command: string;
  args: readonly string[];
  /** The whole environment inside the sandbox; nothing is inherited. */
  env: Readonly<Record<string, string>>;
  mounts: readonly Mount[];
  /** Guest working directory. */
  cwd: string;
}

export interface Sandbox {
  readonly kind: Exclude<SandboxKind, 'auto'>;
  spawn(spec: SandboxSpec): ChildProcessWithoutNullStreams;
}

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

/** Picks the runtime named by SANDBOX, or with `auto` the fastest one that is ready. */
export function detectSandbox(
  wanted: SandboxKind,
  searchPath: string | undefined,
  probe: (file: string) => boolean = canRun,
): Sandbox {
  if (wanted === 'auto' || wanted === 'bwrap') {
    const bwrap = which('bwrap', searchPath);
    if (bwrap && probe(bwrap)) return createBwrapSandbox(bwrap);
    if (wanted === 'bwrap') {
      throw new SandboxError(
        bwrap
          ? `SANDBOX=bwrap but ${bwrap} cannot create namespaces here: enable unprivileged user namespaces`
          : 'SANDBOX=bwrap but bubblewrap is not installed: sudo apt-get install -y bubblewrap',
      );
    }
    throw new SandboxError(
      bwrap
        ? `no sandbox runtime works: ${bwrap} cannot create namespaces here (enable unprivileged user namespaces)`
        : 'no sandbox runtime found: install bubblewrap (sudo apt-get install -y bubblewrap), or set SANDBOX',
    );
  }
  throw new SandboxError(`SANDBOX=${wanted} is not available in this version yet: use SANDBOX=bwrap`);
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
