// bubblewrap: no daemon, ~4 ms overhead. Options travel NUL-separated on fd 3 (`--args 3`) so
// `/proc/1/cmdline` inside shows only `bwrap --args 3 <command> <args>`; /etc/passwd and /etc/hosts
// are generated and passed as data on fds 4 and 5. `--clearenv` drops every inherited variable.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { type Controller, enterArgs, makeCgroup, reapCgroups } from './cgroup.js';
import {
  EGRESS_BRIDGE_JS,
  ENTRY_SH,
  egressEnv,
  GUEST_COMMAND,
  GUEST_ENTRY,
  guestArgv,
  type Sandbox,
  SandboxError,
  type SandboxLimits,
  type SandboxSpec,
} from './index.js';

export const SANDBOX_UID = 1000;
const GUEST_NODE = '/opt/nanoclaw/bin/node';

/**
 * bwrap's options for a spec. `hostNode` is the node binary the egress bridge runs on (bound
 * read-only); with an egress socket the bridge script and entry script arrive on fds 6 and 7.
 */
export function bwrapOptions(
  spec: SandboxSpec,
  exists: (p: string) => boolean = existsSync,
  hostNode = '/usr/bin/node',
): string[] {
  const uid = String(SANDBOX_UID);
  const opts = ['--unshare-all', '--die-with-parent', '--new-session', '--uid', uid, '--gid', uid];
  opts.push('--hostname', 'nanoclaw', '--ro-bind', '/usr', '/usr');
  for (const dir of ['bin', 'lib', 'lib64', 'sbin']) {
    if (exists(`/usr/${dir}`)) opts.push('--symlink', `usr/${dir}`, `/${dir}`);
  }
  for (const file of ['/etc/ssl', '/etc/ld.so.cache', '/etc/alternatives']) {
    if (exists(file)) opts.push('--ro-bind', file, file);
  }
  opts.push('--ro-bind-data', '4', '/etc/passwd', '--ro-bind-data', '5', '/etc/hosts');
  opts.push('--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp', '--ro-bind', spec.command, GUEST_COMMAND);
  for (const m of spec.mounts) {
    if (m.type === 'tmpfs') opts.push('--tmpfs', m.guest);
    else if (m.type === 'hide') opts.push('--ro-bind', '/dev/null', m.guest);
    else opts.push(m.readonly ? '--ro-bind' : '--bind', m.host, m.guest);
  }
  if (spec.egressSocket) {
    opts.push('--ro-bind', hostNode, GUEST_NODE, '--ro-bind-data', '6', '/opt/nanoclaw/bridge.cjs');
    opts.push('--ro-bind-data', '7', GUEST_ENTRY);
  }
  opts.push('--clearenv');
  for (const [k, v] of Object.entries({ ...spec.env, ...egressEnv(spec) })) opts.push('--setenv', k, v);
  opts.push('--chdir', spec.cwd);
  // Options travel NUL-separated on fd 3: a NUL inside one would smuggle in another option.
  const bad = opts.find((o) => o.includes('\0'));
  if (bad !== undefined)
    throw new SandboxError(`a sandbox option contains a NUL byte: ${JSON.stringify(bad.slice(0, 60))}`);
  return opts;
}

/**
 * rlimits for a bwrap sandbox (bwrap has no cgroups): address space 4 × the memory limit (a cap on
 * runaway allocation; virtual reservations need headroom), files up to 4 GiB, 4096 open files.
 * RLIMIT_NPROC is left alone: it counts every process of the host uid the sandbox maps to.
 */
function rlimitArgs(limits: SandboxLimits): string[] {
  return [`--as=${limits.memoryBytes * 4}`, `--fsize=${4 * 1024 ** 3}`, '--nofile=4096'];
}

/** `bwrap`: bubblewrap's absolute path. `prlimit` (util-linux), when found, applies the rlimits. */
export function createBwrapSandbox(
  bwrap: string,
  hostNode: string,
  prlimit?: string,
  cgroups: readonly Controller[] = [],
): Omit<Sandbox, 'spawn'> & { spawn(spec: SandboxSpec): ChildProcessWithoutNullStreams } {
  return {
    kind: 'bwrap',
    reap: () => reapCgroups(cgroups),
    spawn(spec: SandboxSpec): ChildProcessWithoutNullStreams {
      const argv = [
        bwrap,
        '--args',
        '3',
        ...(spec.egressSocket ? guestArgv(spec) : [GUEST_COMMAND, ...spec.args]),
      ];
      const rlimited = prlimit && spec.limits ? [prlimit, ...rlimitArgs(spec.limits), '--', ...argv] : argv;
      const cg = spec.limits && cgroups.length > 0 ? makeCgroup(cgroups, spec.limits) : undefined;
      const limited = cg ? [...enterArgs(cg.procs), ...rlimited] : rlimited;
      const child = spawn(limited[0] as string, limited.slice(1), {
        stdio: ['pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe'],
        env: {},
        // Its own process group: a Ctrl-C at the terminal reaches the orchestrator, which then
        // closes agents in order; --die-with-parent still ends the sandbox if we die.
        detached: true,
      });
      // fd 3: the options; 4 and 5: /etc/passwd and /etc/hosts; 6 and 7: the bridge and entry scripts.
      const data = [
        bwrapOptions(spec, existsSync, hostNode)
          .map((s) => `${s}\0`)
          .join(''),
        `agent:x:${SANDBOX_UID}:${SANDBOX_UID}:agent:/home/agent:/bin/bash\n`,
        '127.0.0.1 localhost nanoclaw\n::1 localhost\n',
        spec.egressSocket ? EGRESS_BRIDGE_JS : '',
        spec.egressSocket ? ENTRY_SH : '',
      ];
      for (const [i, fd] of (child.stdio.slice(3) as Writable[]).entries()) {
        // A bwrap that dies before reading its option fds (a missing mount source, say) breaks
        // these pipes: that failure is reported through the child's exit, not as a crash here.
        fd.on('error', () => {});
        fd.end(data[i]);
      }
      // The pid namespace's processes die with its first one, a moment after the exit.
      if (cg) {
        child.once('exit', () => {
          let tries = 0;
          const attempt = () => {
            if (!cg.remove() && ++tries < 10) setTimeout(attempt, 200).unref();
          };
          attempt();
        });
      }
      return child as ChildProcessWithoutNullStreams;
    },
  };
}
