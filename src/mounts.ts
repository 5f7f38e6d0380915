// The mount plan (pure): which host paths a group's sandbox sees, and where. A group sees its own
// folder read-write (its cwd), the global memory read-only, its own Claude home read-write and
// its run's socket directory. Nothing else of the host is mounted.
import path from 'node:path';
import type { Mount } from './sandbox/index.js';

export const GUEST = {
  group: '/workspace/group',
  global: '/workspace/global',
  home: '/home/agent',
  run: '/run/nanoclaw',
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

export function groupPaths(paths: HostPaths, folder: string) {
  return {
    group: path.join(paths.groupsDir, folder),
    global: path.join(paths.groupsDir, 'global'),
    home: path.join(paths.dataDir, 'sessions', folder, 'home'),
  };
}

export function groupMounts(paths: HostPaths, folder: string, runDir: string): Mount[] {
  const p = groupPaths(paths, folder);
  return [
    { host: p.group, guest: GUEST.group, readonly: false },
    { host: p.global, guest: GUEST.global, readonly: true },
    { host: p.home, guest: GUEST.home, readonly: false },
    { host: runDir, guest: GUEST.run, readonly: false },
  ];
}
