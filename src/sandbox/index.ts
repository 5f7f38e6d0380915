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

/** A host path bound in; or, over a path inside a read-only bind, an empty tmpfs (`tmpfs`) or an
 * empty read-only file (`hide`) so the sandbox cannot see what is there. */
export type Mount =
  | { type?: 'bind'; host: string; guest: string; readonly: boolean }
  | { type: 'tmpfs'; guest: string }
  | { type: 'hide'; guest: string };

export interface SandboxSpec {
  /** Host path of the program to run; it is bound read-only into the sandbox. */
  command: string;
  args: readonly string[];
  /** The whole environment inside the sandbox; nothing is inherited. */
  env: Readonly<Record<string, string>>;
  mounts: readonly Mount[];
  /** Guest working directory. */
  cwd: string;
  /**
   * Start the egress bridge first: a loopback listener inside the sandbox (its HTTP_PROXY) that
   * forwards every connection to the proxy's Unix socket at this guest path.
   */
  egressSocket?: string;
  /** Resource limits (containers: cgroups; bwrap: rlimits where they apply). */
  limits?: SandboxLimits;
}

export interface SandboxLimits {
  memoryBytes: number;
  cpus: number;
  pids: number;
}

/** `512m`, `2g`, `1024` (bytes) → bytes. */
export function parseSize(size: string): number {
  const m = /^(\d+)([kmg]?)$/i.exec(size.trim());
  if (!m?.[1]) throw new TypeError(`size "${size}" must look like 512m or 2g`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase()] ?? 1;
  return Number(m[1]) * unit;
}

/** The bridge's port on the sandbox's own loopback. */
export const EGRESS_BRIDGE_PORT = 3128;

// The bridge is plumbing, not a boundary: it runs as the agent and the proxy decides. noDelay:
// without it Nagle and delayed ACKs add ~40 ms to every response (research/egress.md).
export const EGRESS_BRIDGE_JS = `const net = require('net');
const [port, sock] = process.argv.slice(2);
net.createServer({ allowHalfOpen: true, noDelay: true }, (c) => {
  const u = net.connect({ path: sock, allowHalfOpen: true });
  c.pipe(u); u.pipe(c);
  c.on('error', () => u.destroy()); u.on('error', () => c.destroy());
  c.on('close', () => u.destroy()); u.on('close', () => c.destroy());
}).listen(Number(port), '127.0.0.1');
`;

/** Starts the bridge in the background (its stdin is not the CLI's), then becomes the command. */
export const ENTRY_SH = `#!/bin/sh
nice -n 19 /opt/nanoclaw/bin/node /opt/nanoclaw/bridge.cjs "$NANOCLAW_BRIDGE_PORT" "$NANOCLAW_EGRESS_SOCKET" </dev/null >/dev/null 2>&1 &
exec "$@"
`;

export interface Sandbox {
  readonly kind: Exclude<SandboxKind, 'auto'>;
  /** Why this runtime was chosen, for the start-up log. */
  readonly reason?: string;
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
    if (bwrap && probe(bwrap)) {
      const prlimit = which('prlimit', searchPath);
      return {
        ...createBwrapSandbox(bwrap, process.execPath, prlimit),
        reason:
          `${wanted === 'auto' ? 'SANDBOX=auto: the only runtime this version supports' : 'SANDBOX=bwrap'}; ` +
          `${bwrap} creates namespaces; ${prlimit ? `rlimits via ${prlimit}` : 'no prlimit: no rlimits'}`,
      };
    }
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
