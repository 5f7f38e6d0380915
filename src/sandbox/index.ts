// One small interface over the sandbox runtimes. A runtime turns a spec (command, env, mounts)
// into a running child process whose stdio carries the Claude Code control protocol.
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import type { SpawnedProcess } from '@anthropic-ai/claude-agent-sdk';
import type { SandboxKind } from '../config.js';

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
  /** A short name for the run (the group folder), used in container names. */
  label?: string;
  /** The proxy over TCP, for runtimes that cannot share its Unix socket (Sandbox.proxyHost). */
  proxyUrl?: string;
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
const EGRESS_BRIDGE_PORT = 3128;

/** Where every runtime puts Claude Code and the entry script inside the sandbox. */
export const GUEST_COMMAND = '/opt/nanoclaw/bin/claude';
export const GUEST_ENTRY = '/opt/nanoclaw/start';

// The egress bridge and the entry script that starts it are files in container/, baked into the
// image and handed to bwrap on fds: one copy of each for every runtime.
const CONTAINER_DIR = new URL('../../../container/', import.meta.url);
export const EGRESS_BRIDGE_JS = readFileSync(new URL('bridge.cjs', CONTAINER_DIR), 'utf8');
export const ENTRY_SH = readFileSync(new URL('start.sh', CONTAINER_DIR), 'utf8');

/** The proxy variables, in both cases: curl ignores an upper-case HTTP_PROXY (httpoxy). */
export function proxyEnv(url = `http://127.0.0.1:${EGRESS_BRIDGE_PORT}`): Record<string, string> {
  const noProxy = 'localhost,127.0.0.1,::1';
  return {
    HTTP_PROXY: url,
    HTTPS_PROXY: url,
    http_proxy: url,
    https_proxy: url,
    NO_PROXY: noProxy,
    no_proxy: noProxy,
  };
}

/** The environment a sandbox with an egress socket adds: the bridge's settings and the proxy. */
export function egressEnv(spec: SandboxSpec): Record<string, string> {
  if (!spec.egressSocket) return {};
  return {
    ...proxyEnv(),
    NANOCLAW_BRIDGE_PORT: String(EGRESS_BRIDGE_PORT),
    NANOCLAW_EGRESS_SOCKET: spec.egressSocket,
  };
}

/** What a sandbox runs: Claude Code, behind the entry script that starts the bridge. */
export function guestArgv(spec: SandboxSpec): string[] {
  return ['/bin/sh', GUEST_ENTRY, GUEST_COMMAND, ...spec.args];
}

/** Labels on images and containers. */
export const VERSION_LABEL = 'org.nanoclaw.claude-code-version';
export const INSTANCE_LABEL = 'org.nanoclaw.instance';

/** What an image runtime's `run` needs besides the spec. */
export interface RunOptions {
  image: string;
  name: string;
  instance: string;
  user: { uid: number; gid: number };
}

/** `args` follow the runtime's binary; `env` holds the values the CLI passes in by name. */
export interface RunCommand {
  args: string[];
  env: Record<string, string>;
}

/** Names whose values must not appear in argv (`ps` on the host shows it). */
const SECRET_NAME = /KEY|TOKEN|SECRET|PASSWORD/i;

/** `-e` arguments for a container's environment: secrets by name only, their values in `env`. */
export function envArgs(vars: Readonly<Record<string, string>>): RunCommand {
  const args: string[] = [];
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(vars)) {
    if (!k || k.includes('=') || /[\n\0]/.test(k + v)) {
      throw new SandboxError(`sandbox variable ${JSON.stringify(k)} has a bad name or a control character`);
    }
    if (SECRET_NAME.test(k)) {
      args.push('-e', k);
      env[k] = v;
    } else args.push('-e', `${k}=${v}`);
  }
  return { args, env };
}

/** A running sandbox: what the SDK drives (a ChildProcess fits), plus its stderr. */
export type SandboxProcess = SpawnedProcess & { readonly stderr: Readable | null };

export interface Sandbox {
  readonly kind: Exclude<SandboxKind, 'auto'>;
  /** Why this runtime was chosen, for the start-up log. */
  readonly reason?: string;
  /** Set when the runtime cannot share a Unix socket (Apple's VMs): the host address the proxy
   * listens on instead, reachable from the sandbox. */
  readonly proxyHost?: string;
  spawn(spec: SandboxSpec): SandboxProcess;
  /** Removes what earlier runs of this NanoClaw left behind (containers), at start. */
  reap?(): void;
  /** Waits for the clean-up of finished sandboxes (container removal), at stop. */
  close?(): Promise<void>;
}
