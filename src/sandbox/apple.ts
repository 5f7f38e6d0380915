// Apple's `container` CLI (macOS, github.com/apple/container): pure argv builders, no spawning.
// Flags checked against apple/container 1.0.0: docs/command-reference.md plus the CLI's own
// Flags.swift and Parser.swift. 1.0.0 is the first release with --cap-drop; --read-only, --init,
// --ulimit and `-e NAME` (value inherited from the CLI's environment) all came before it.
// No Apple equivalent, so left out: --log-driver none (the runtime keeps stdio until `delete`),
// --security-opt no-new-privileges, --hostname, --memory-swap, --pids-limit (an nproc rlimit
// instead), `wait`, a label filter on `list`, and --network none (the proxy is reached over TCP).
import path from 'node:path';
import { within } from '../mounts.js';
import {
  envArgs,
  guestArgv,
  INSTANCE_LABEL,
  proxyEnv,
  type RunCommand,
  type RunOptions,
  SandboxError,
  type SandboxSpec,
} from './index.js';

const MIB = 1024 * 1024;

/** `--mount` splits on `,` and each `key=value` on `=` (a `=` in a path silently truncates it). */
function checkPath(p: string): string {
  if (/[,:=\n\0]/.test(p))
    throw new SandboxError(`mount path ${JSON.stringify(p)} contains , : = or a control character`);
  return p;
}

function run(spec: SandboxSpec, o: RunOptions): RunCommand {
  const { proxyUrl } = spec;
  if (!proxyUrl) throw new SandboxError('the Apple container sandbox needs the proxy TCP URL (proxyUrl)');
  if (/[\s\0]/.test(proxyUrl) || !URL.canParse(proxyUrl)) {
    throw new SandboxError(`proxy URL ${JSON.stringify(proxyUrl)} is not a URL`);
  }
  const args = ['run', '-i', '--name', o.name, '--label', `${INSTANCE_LABEL}=${o.instance}`];
  args.push('--init', '--read-only', '--tmpfs', '/tmp', '--cap-drop', 'ALL');
  args.push('--uid', String(o.user.uid), '--gid', String(o.user.gid), '--workdir', spec.cwd);
  if (spec.limits) {
    // --memory sizes the whole VM (MiB granularity); --cpus takes an integer; RLIMIT_NPROC counts
    // the agent user's processes, and the VM holds nothing else.
    const { memoryBytes, cpus, pids } = spec.limits;
    args.push('--memory', `${Math.ceil(memoryBytes / MIB)}M`, '--cpus', String(Math.max(1, Math.ceil(cpus))));
    args.push('--ulimit', `nproc=${pids}:${pids}`);
  }
  // No Unix socket crosses into the VM: the egress socket's directory is not shared.
  const socketDir = spec.egressSocket ? path.posix.dirname(spec.egressSocket) : undefined;
  // A single file cannot be covered, so a hidden file takes its whole enclosing bind with it.
  const hidden = spec.mounts.flatMap((m) => (m.type === 'hide' ? [m.guest] : []));
  for (const m of spec.mounts) {
    if (m.type === 'hide') continue;
    if (m.type === 'tmpfs') {
      args.push('--tmpfs', checkPath(m.guest));
      continue;
    }
    if (m.guest === socketDir || hidden.some((h) => within(m.guest, h))) continue;
    const ro = m.readonly ? ',readonly' : '';
    args.push('--mount', `type=bind,source=${checkPath(m.host)},target=${checkPath(m.guest)}${ro}`);
  }
  const vars: Record<string, string> = { ...spec.env, ANTHROPIC_BASE_URL: proxyUrl };
  delete vars.ANTHROPIC_UNIX_SOCKET;
  delete vars.NANOCLAW_EGRESS_SOCKET; // start.sh starts no bridge without it
  const e = envArgs({ ...vars, ...proxyEnv(proxyUrl) });
  args.push(...e.args, o.image, ...guestArgv(spec));
  return { args, env: e.env };
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
const isObject = (j: unknown): j is Record<string, Json> =>
  typeof j === 'object' && j !== null && !Array.isArray(j);

function parseJson(stdout: string): Json | undefined {
  try {
    return JSON.parse(stdout) as Json;
  } catch {
    return undefined; // not JSON (an error message): nothing found
  }
}

/** The label's value from `container image inspect` (variants[].config.config.Labels). */
export function parseImageLabel(stdout: string, label: string): string | undefined {
  const find = (j: Json | undefined): string | undefined => {
    if (Array.isArray(j)) return j.map(find).find((v) => v !== undefined);
    if (!isObject(j)) return undefined;
    const labels = j.Labels;
    if (isObject(labels) && typeof labels[label] === 'string') return labels[label];
    return Object.values(j)
      .map(find)
      .find((v) => v !== undefined);
  };
  return find(parseJson(stdout));
}

/** The ids of this instance's containers from `container list --all --format json`. */
export function parseList(stdout: string, instance: string): string[] {
  const all = parseJson(stdout);
  return (Array.isArray(all) ? all : [all]).flatMap((c) => {
    const config = isObject(c) && isObject(c.configuration) ? c.configuration : undefined;
    const labels = config?.labels;
    const ok = isObject(labels) && labels[INSTANCE_LABEL] === instance && typeof config?.id === 'string';
    return ok ? [config.id as string] : [];
  });
}

export const appleDialect = {
  kind: 'apple' as const,
  run,
  remove: (name: string): string[] => ['delete', '--force', name],
  // No `wait` subcommand: the attached `run` itself exits with the container's exit code.
  wait: (_name: string): string[] | undefined => undefined,
  // `list` has no label filter and `--quiet` prints every container: filter the JSON with parseList.
  list: (_instance: string): string[] => ['list', '--all', '--format', 'json'],
  imageLabel: (image: string, _label: string): string[] => ['image', 'inspect', image],
  parseImageLabel,
  parseList,
  // The host's address on Apple's default vmnet network (192.168.64.0/24): the proxy listens
  // there, since a VM cannot reach a Unix socket on the host.
  proxyHost: '192.168.64.1',
};
