// bubblewrap: no daemon, ~4 ms overhead. Options travel NUL-separated on fd 3 (`--args 3`) so
// `/proc/1/cmdline` inside shows only `bwrap --args 3 <command> <args>`; /etc/passwd and /etc/hosts
// are generated and passed as data on fds 4 and 5. `--clearenv` drops every inherited variable.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { type Sandbox, SandboxError, type SandboxSpec } from './index.js';

export const SANDBOX_UID = 1000;
const GUEST_COMMAND = '/opt/nanoclaw/bin/claude';

export function bwrapOptions(spec: SandboxSpec, exists: (p: string) => boolean = existsSync): string[] {
  const opts = [
    '--unshare-all',
    '--die-with-parent',
    '--new-session',
    '--uid',
    String(SANDBOX_UID),
    '--gid',
    String(SANDBOX_UID),
    '--hostname',
    'nanoclaw',
    '--ro-bind',
    '/usr',
    '/usr',
  ];
  for (const dir of ['bin', 'lib', 'lib64', 'sbin']) {
    if (exists(`/usr/${dir}`)) opts.push('--symlink', `usr/${dir}`, `/${dir}`);
  }
  for (const file of ['/etc/ssl', '/etc/ld.so.cache', '/etc/alternatives']) {
    if (exists(file)) opts.push('--ro-bind', file, file);
  }
  opts.push(
    '--ro-bind-data',
    '4',
    '/etc/passwd',
    '--ro-bind-data',
    '5',
    '/etc/hosts',
    '--proc',
    '/proc',
    '--dev',
    '/dev',
    '--tmpfs',
    '/tmp',
    '--ro-bind',
    spec.command,
    GUEST_COMMAND,
  );
  for (const m of spec.mounts) opts.push(m.readonly ? '--ro-bind' : '--bind', m.host, m.guest);
  opts.push('--clearenv');
  for (const [k, v] of Object.entries(spec.env)) opts.push('--setenv', k, v);
  opts.push('--chdir', spec.cwd);
  // Options travel NUL-separated on fd 3: a NUL inside one would smuggle in another option.
  const bad = opts.find((o) => o.includes('\0'));
  if (bad !== undefined)
    throw new SandboxError(`a sandbox option contains a NUL byte: ${JSON.stringify(bad.slice(0, 60))}`);
  return opts;
}

/** `bwrap` is the absolute path of the bubblewrap binary (found on PATH at start). */
export function createBwrapSandbox(bwrap: string): Sandbox {
  return {
    kind: 'bwrap',
    spawn(spec: SandboxSpec): ChildProcessWithoutNullStreams {
      const child = spawn(bwrap, ['--args', '3', GUEST_COMMAND, ...spec.args], {
        stdio: ['pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe'],
        env: {},
        // Its own process group: a Ctrl-C at the terminal reaches the orchestrator, which then
        // closes agents in order; --die-with-parent still ends the sandbox if we die.
        detached: true,
      });
      const [, , , fd3, fd4, fd5] = child.stdio as unknown as [
        unknown,
        unknown,
        unknown,
        Writable,
        Writable,
        Writable,
      ];
      // A bwrap that dies before reading its option fds (a missing mount source, say) breaks
      // these pipes: that failure is reported through the child's exit, not as a crash here.
      for (const fd of [fd3, fd4, fd5]) fd.on('error', () => {});
      fd3.end(
        bwrapOptions(spec)
          .map((s) => `${s}\0`)
          .join(''),
      );
      fd4.end(`agent:x:${SANDBOX_UID}:${SANDBOX_UID}:agent:/home/agent:/bin/bash\n`);
      fd5.end('127.0.0.1 localhost nanoclaw\n::1 localhost\n');
      return child as ChildProcessWithoutNullStreams;
    },
  };
}

type Writable = NodeJS.WritableStream & { on(ev: 'error', fn: (e: Error) => void): void };
