// The mount plan (pure): which host paths a group's sandbox sees, and where. A group sees its own
// folder read-write (its cwd), the global memory read-only, its own Claude home read-write and
// its run's socket directory. Main also sees the project read-only, with `.env`, `store/` and
// `data/` shadowed, and the global memory read-write. Nothing else of the host is mounted.
import path from 'node:path';
import type { Mount } from './sandbox/index.js';

export const GUEST = {
  group: '/workspace/group',
  global: '/workspace/global',
  home: '/home/agent',
  run: '/run/nanoclaw',
  project: '/workspace/project',
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

/** `child` relative to `parent` when it lies inside it, else undefined. */
function inside(parent: string, child: string): string | undefined {
  const rel = path.relative(parent, child);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : undefined;
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
      const rel = inside(paths.projectRoot, host);
      if (rel && exists(host)) project.push({ type, guest: path.posix.join(GUEST.project, rel) });
    }
  }
  return [
    ...project,
    { host: p.group, guest: GUEST.group, readonly: false },
    { host: p.global, guest: GUEST.global, readonly: !group.isMain },
    { host: p.home, guest: GUEST.home, readonly: false },
    { host: runDir, guest: GUEST.run, readonly: false },
  ];
}
