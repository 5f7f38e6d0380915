// Process and memory caps for bwrap, which has no cgroups of its own: a cgroup per sandbox, made
// under the orchestrator's own cgroup where it may write there (root; cgroup v1 or v2). The
// sandbox enters it before anything of the agent runs (`echo 0 > cgroup.procs`, then exec), and
// it is removed after the sandbox exits. Without a writable cgroup there are only rlimits.
import { randomBytes } from 'node:crypto';
import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import type { SandboxLimits } from './index.js';

const ROOT = '/sys/fs/cgroup';

export interface Controller {
  /** The cgroup directory our new ones are made in. */
  base: string;
  /** Limit file → value. */
  limits: (l: SandboxLimits) => Record<string, string>;
}

/** Where this process may make cgroups with a pids and a memory limit; empty when it may not. */
export function findControllers(
  procSelfCgroup = '/proc/self/cgroup',
  root = ROOT,
  writable: (dir: string) => boolean = canWrite,
): Controller[] {
  const lines = read(procSelfCgroup)?.split('\n');
  if (!lines) return [];
  // id:controllers:path — the path may itself hold colons (systemd unit names).
  const entries = lines.map((l) => /^[^:]*:([^:]*):(.*)$/.exec(l));
  const own = (name: string) => entries.find((m) => m?.[1]?.split(',').includes(name))?.[2];
  // cgroup v1 (separate pids and memory hierarchies) first; then a unified v2 hierarchy.
  const pids = own('pids');
  const memory = own('memory');
  if (pids !== undefined && memory !== undefined && existsSync(path.join(root, 'pids'))) {
    const found: Controller[] = [
      { base: path.join(root, 'pids', pids), limits: (l) => ({ 'pids.max': String(l.pids) }) },
      {
        base: path.join(root, 'memory', memory),
        // memsw (memory + swap, when the kernel accounts swap) may not go below the memory limit,
        // so it is written second.
        limits: (l) => ({
          'memory.limit_in_bytes': String(l.memoryBytes),
          'memory.memsw.limit_in_bytes': String(l.memoryBytes),
        }),
      },
    ];
    return found.every((c) => writable(c.base)) ? found : [];
  }
  const unified = lines.find((l) => l.startsWith('0::'))?.slice(3);
  if (unified === undefined || !existsSync(path.join(root, 'cgroup.controllers'))) return [];
  const base = path.join(root, unified);
  const enabled = read(path.join(base, 'cgroup.subtree_control'))?.trim().split(/\s+/) ?? [];
  if (!enabled.includes('pids') || !enabled.includes('memory') || !writable(base)) return [];
  return [
    {
      base,
      limits: (l) => ({
        'pids.max': String(l.pids),
        'memory.max': String(l.memoryBytes),
        'memory.swap.max': '0',
      }),
    },
  ];
}

function read(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined; // unreadable: no cgroups from here
  }
}

function canWrite(dir: string): boolean {
  try {
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export interface SandboxCgroup {
  /** The files the sandbox writes `0` into to enter its cgroups. */
  procs: string[];
  /** Removes the cgroups; false while one still holds a (dying) process. */
  remove(): boolean;
}

/** Makes the cgroups for one sandbox with its limits set. */
export function makeCgroup(controllers: readonly Controller[], limits: SandboxLimits): SandboxCgroup {
  const name = `nanoclaw-${process.pid}-${randomBytes(4).toString('hex')}`;
  const dirs: string[] = [];
  /** True when every directory is gone. */
  const removeAll = (): boolean =>
    dirs.every((d) => {
      try {
        rmdirSync(d);
        return true;
      } catch (e) {
        return (e as NodeJS.ErrnoException).code === 'ENOENT'; // EBUSY: its last process is exiting
      }
    });
  try {
    for (const c of controllers) {
      const dir = path.join(c.base, name);
      mkdirSync(dir);
      dirs.push(dir);
      for (const [file, value] of Object.entries(c.limits(limits))) {
        if (existsSync(path.join(dir, file))) writeFileSync(path.join(dir, file), value);
      }
    }
  } catch (e) {
    removeAll();
    throw e;
  }
  return {
    procs: dirs.map((d) => path.join(d, 'cgroup.procs')),
    remove: removeAll,
  };
}

/** Removes the cgroups that orchestrators no longer running left behind (they died first). A
 * live orchestrator's are kept, even empty: a sandbox may be about to enter one. */
export function reapCgroups(controllers: readonly Controller[]): void {
  for (const c of controllers) {
    let names: string[] = [];
    try {
      names = readdirSync(c.base).filter((n) => {
        const pid = Number(/^nanoclaw-(\d+)-/.exec(n)?.[1]);
        return Number.isInteger(pid) && pid > 0 && !alive(pid);
      });
    } catch {
      continue;
    }
    for (const n of names) {
      try {
        rmdirSync(path.join(c.base, n));
      } catch {
        // busy: in use
      }
    }
  }
}

/** argv prefix that moves the sandbox into its cgroups, then execs the rest. */
export function enterArgs(procs: readonly string[]): string[] {
  return [
    '/bin/sh',
    '-c',
    'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@"',
    'nanoclaw-enter',
    ...procs,
    '--',
  ];
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
