// The mount plan (pure): which host paths a group's sandbox sees, and where. A group sees its own
// folder read-write (its cwd), the global memory read-only, its own Claude home read-write and
// its run's socket directory. Main also sees the project read-only, with `.env`, `store/` and
// `data/` shadowed, and the global memory read-write. Nothing else of the host is mounted.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Mount } from './sandbox/index.js';

export const GUEST = {
  group: '/workspace/group',
  global: '/workspace/global',
  home: '/home/agent',
  run: '/run/nanoclaw',
  project: '/workspace/project',
  extra: '/workspace/extra',
} as const;

const FOLDER = /^[a-z0-9][a-z0-9-]{0,63}$/;
const RESERVED = new Set(['global']);

/** One line saying why a folder name is refused, or undefined when it is fine. */
export function folderProblem(folder: string): string | undefined {
  if (!FOLDER.test(folder)) {
    return `folder "${folder}" must be 1-64 lowercase letters, digits or '-', starting with a letter or digit`;
  }
  if (RESERVED.has(folder)) return `folder "${folder}" is reserved`;
  return undefined;
}

/** A folder name derived from a display name: "Family Chat!" → "family-chat". */
export function folderFromName(name: string): string {
  const slug = name
    .normalize('NFKD')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 64)
    .replace(/-+$/, '');
  return slug === '' || RESERVED.has(slug) ? `group-${slug || 'chat'}` : slug;
}

export interface HostPaths {
  groupsDir: string;
  dataDir: string;
}

export interface ProjectPaths extends HostPaths {
  projectRoot: string;
  home: string;
  storeDir: string;
}

/** Whether `child` is `parent` or lies inside it. */
export function within(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  // `..foo` is a child's name, not a way up: only `..` itself or `../…` leaves the parent.
  return rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

export function groupPaths(paths: HostPaths, folder: string) {
  return {
    group: path.join(paths.groupsDir, folder),
    global: path.join(paths.groupsDir, 'global'),
    home: path.join(paths.dataDir, 'sessions', folder, 'home'),
  };
}

export function groupMounts(
  paths: ProjectPaths,
  group: { folder: string; isMain: boolean },
  runDir: string,
  exists: (p: string) => boolean,
  extra: readonly Mount[] = [],
): Mount[] {
  const p = groupPaths(paths, group.folder);
  const project: Mount[] = [];
  if (group.isMain) {
    project.push({ host: paths.projectRoot, guest: GUEST.project, readonly: true });
    // Secrets and live state stay hidden inside the read-only view of the project.
    for (const [host, type] of [
      [path.join(paths.home, '.env'), 'hide'],
      [paths.storeDir, 'tmpfs'],
      [paths.dataDir, 'tmpfs'],
    ] as const) {
      const rel = path.relative(paths.projectRoot, host);
      if (rel && within(paths.projectRoot, host) && exists(host))
        project.push({ type, guest: path.posix.join(GUEST.project, rel) });
    }
  }
  return [
    ...project,
    { host: p.group, guest: GUEST.group, readonly: false },
    { host: p.global, guest: GUEST.global, readonly: !group.isMain },
    { host: p.home, guest: GUEST.home, readonly: false },
    { host: runDir, guest: GUEST.run, readonly: false },
    ...extra,
  ];
}

// Extra mounts: only from the allowlist file outside the project, only as a group's setting in the
// store. Every path is resolved (symlinks followed) before it is judged.

/** Path components that never enter a sandbox, whatever the allowlist says. */
const BLOCKED_PATTERNS: readonly string[] = [
  '.ssh',
  '.gnupg',
  '.aws',
  '.azure',
  '.gcloud',
  '.kube',
  '.docker',
  '.env',
  '.netrc',
  '.npmrc',
  '.pypirc',
  '.git-credentials',
  '.password-store',
  'credentials',
  'id_rsa',
  'id_dsa',
  'id_ecdsa',
  'id_ed25519',
  'private_key',
];

export interface ExtraMount {
  host: string;
  /** Mounted at /workspace/extra/<name>. */
  name: string;
  rw: boolean;
}

export interface MountAllowlist {
  roots: { path: string; readWrite: boolean }[];
  blockedPatterns: string[];
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** `<host>:<name>[:rw]` → an ExtraMount, or one line saying what is wrong. */
export function parseMountSpec(spec: string, homedir: string): ExtraMount | string {
  const m = /^(.+?):([^:]+?)(?::(rw|ro))?$/.exec(spec);
  if (!m?.[1] || !m[2]) return `mount "${spec}" must be <host path>:<name>[:rw]`;
  const host = m[1].startsWith('~/') ? path.join(homedir, m[1].slice(2)) : m[1];
  if (!path.isAbsolute(host)) return `mount host path "${m[1]}" must be absolute (or start with ~/)`;
  if (!NAME.test(m[2]))
    return `mount name "${m[2]}" must be 1-64 of a-z 0-9 . _ - (it appears at /workspace/extra/<name>)`;
  return { host: path.normalize(host), name: m[2], rw: m[3] === 'rw' };
}

/** The allowlist file's JSON: {"allowedRoots":[{"path","readWrite"?}], "blockedPatterns"?: []}. */
export function parseAllowlist(json: unknown, homedir: string): MountAllowlist {
  const o = json as { allowedRoots?: unknown; blockedPatterns?: unknown } | null;
  if (!o || typeof o !== 'object' || !Array.isArray(o.allowedRoots)) {
    throw new TypeError(
      'mount allowlist must be {"allowedRoots": [{"path": "~/projects", "readWrite": false}]}',
    );
  }
  const roots = o.allowedRoots.map((r: unknown, i) => {
    const root = r as { path?: unknown; readWrite?: unknown } | null;
    if (
      typeof root?.path !== 'string' ||
      (root.readWrite !== undefined && typeof root.readWrite !== 'boolean')
    ) {
      throw new TypeError(
        `mount allowlist allowedRoots[${i}] must be {"path": string, "readWrite"?: boolean}`,
      );
    }
    const p = root.path.startsWith('~/') ? path.join(homedir, root.path.slice(2)) : root.path;
    if (!path.isAbsolute(p)) throw new TypeError(`mount allowlist root "${root.path}" must be absolute`);
    return { path: p, readWrite: root.readWrite === true };
  });
  const extra = Array.isArray(o.blockedPatterns)
    ? o.blockedPatterns.filter((p) => typeof p === 'string')
    : [];
  return { roots, blockedPatterns: [...BLOCKED_PATTERNS, ...extra.map((p: string) => p.toLowerCase())] };
}

/**
 * Judges one extra mount against the allowlist. `realpath` resolves symlinks (throws when the
 * path does not exist); `forbidden` are NanoClaw's own directories (project, home), never mountable.
 */
export function checkExtraMount(
  m: ExtraMount,
  list: MountAllowlist | undefined,
  realpath: (p: string) => string,
  forbidden: readonly string[],
): { ok: true; mount: Mount } | { ok: false; reason: string } {
  if (!list) return { ok: false, reason: 'no mount allowlist (~/.config/nanoclaw/mount-allowlist.json)' };
  const resolved = (p: string): string | undefined => {
    try {
      return realpath(p);
    } catch {
      return undefined; // does not exist
    }
  };
  const real = resolved(m.host);
  if (real === undefined) return { ok: false, reason: `${m.host} does not exist` };
  for (const component of real.split(path.sep).filter(Boolean)) {
    const c = component.toLowerCase();
    const hit = list.blockedPatterns.find((p) => c.includes(p));
    if (hit)
      return { ok: false, reason: `${real}: component "${component}" matches blocked pattern "${hit}"` };
  }
  for (const f of forbidden) {
    const rf = resolved(f) ?? f;
    if (within(rf, real) || within(real, rf)) {
      return { ok: false, reason: `${real} overlaps NanoClaw's own directory ${rf}` };
    }
  }
  // A root that does not exist allows nothing.
  const root = list.roots.find((r) => {
    const rr = resolved(r.path);
    return rr !== undefined && within(rr, real);
  });
  if (!root) return { ok: false, reason: `${real} is not under an allowed root` };
  if (m.rw && !root.readWrite) return { ok: false, reason: `${root.path} allows read-only mounts only` };
  return { ok: true, mount: { host: real, guest: `${GUEST.extra}/${m.name}`, readonly: !m.rw } };
}

/** ~/.config/nanoclaw/mount-allowlist.json: outside the project, out of every sandbox's reach. */
export function defaultAllowlistPath(): string {
  return path.join(os.homedir(), '.config', 'nanoclaw', 'mount-allowlist.json');
}

/** Reads and checks the owner's allowlist file; throws on a missing, unreadable or malformed one. */
export function readAllowlist(file = defaultAllowlistPath()): MountAllowlist {
  return parseAllowlist(JSON.parse(readFileSync(file, 'utf8')), os.homedir());
}
