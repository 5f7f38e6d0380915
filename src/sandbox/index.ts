// One small interface over the sandbox runtimes. A runtime turns a spec (command, env, mounts)
// into a running child process whose stdio carries the Claude Code control protocol.
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { execFileSync } from 'node:child_process';
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

/** Picks the runtime named by SANDBOX, or with `auto` the fastest one that is ready. */
export function detectSandbox(wanted: SandboxKind, probe: (cmd: string) => boolean = canRun): Sandbox {
  if (wanted === 'auto' || wanted === 'bwrap') {
    if (probe('bwrap')) return createBwrapSandbox();
    if (wanted === 'bwrap') {
      throw new SandboxError(
        'SANDBOX=bwrap but bubblewrap does not run here: sudo apt-get install -y bubblewrap',
      );
    }
    throw new SandboxError(
      'no sandbox runtime found: install bubblewrap (sudo apt-get install -y bubblewrap), or set SANDBOX',
    );
  }
  throw new SandboxError(`SANDBOX=${wanted} is not available in this version yet: use SANDBOX=bwrap`);
}

function canRun(cmd: string): boolean {
  try {
    // A real namespace probe, not just `--version`: bwrap can be installed but unusable
    // (no user namespaces), and we want to fail at start rather than on the first message.
    execFileSync(cmd, ['--unshare-all', '--ro-bind', '/', '/', '--die-with-parent', 'true'], {
      stdio: 'ignore',
      timeout: 5000,
      env: {},
    });
    return true;
  } catch {
    return false; // not installed or not usable: the caller reports which runtime to install
  }
}
