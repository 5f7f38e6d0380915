// Provenance: after a run changed a group folder, the host commits the folder to a bare repository
// at data/provenance/<folder>.git, outside every sandbox, so the owner can see and undo what the
// agent changed. The folder is git's work tree (`--work-tree`), but no `.git` is ever created in it:
// an agent that could reach the history could rewrite it.
import { spawn } from 'node:child_process';
import { lstat, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { folderProblem, groupPaths, type HostPaths } from './mounts.js';

export class ProvenanceError extends Error {
  override name = 'ProvenanceError';
}

/** One commit; `at` in ms since the epoch. */
export type Commit = { id: string; at: number; message: string; files: string[] };
type Repo = { gitDir: string; workTree: string; folder: string };

const TIMEOUT_MS = 30_000;
const MAX_OUTPUT = 64 * 1024 * 1024;
// Files over 10 MiB are not recorded: the history is for memory and notes, and a large binary the
// agent rewrites on every run (a database, a download) would grow data/ by its size each time. The
// commit message names what was skipped, so the owner knows it cannot be restored.
const MAX_FILE_BYTES = 10 * 1024 * 1024;
// No system or user config (and no HOME): git reads only the repository's own, which we wrote.
const ENV = { LC_ALL: 'C', GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null' };

// One promise chain per repository, so no two git calls on one folder's history interleave (and a
// lock a killed git left behind is ours to remove). Module-level: every caller must share it.
const chains = new Map<string, Promise<unknown>>();

/** Runs `fn` on the folder's repository after every earlier call on it; classifies what it throws. */
function locked<T>(paths: HostPaths, folder: string, fn: (r: Repo) => Promise<T>): Promise<T> {
  const gitDir = path.join(paths.dataDir, 'provenance', `${folder}.git`);
  const r = { gitDir, workTree: groupPaths(paths, folder).group, folder };
  const problem = folderProblem(folder);
  if (problem) return Promise.reject(new ProvenanceError(problem));
  const run = (chains.get(gitDir) ?? Promise.resolve()).then(() => fn(r));
  const settled = run.catch(() => undefined); // a failure must not block the next call
  chains.set(gitDir, settled);
  return run.catch((e: Error) => {
    throw e instanceof ProvenanceError ? e : new ProvenanceError(`${folder}: ${e.message}`, { cause: e });
  });
}

/** Runs git on `r` (committing at `date`, if given); its stdout. */
function git(r: Repo, args: string[], date?: number): Promise<string> {
  const env: Record<string, string> = { ...ENV, PATH: process.env.PATH ?? '/usr/bin:/bin' };
  for (const role of ['AUTHOR', 'COMMITTER']) {
    Object.assign(env, { [`GIT_${role}_NAME`]: 'NanoClaw', [`GIT_${role}_EMAIL`]: 'nanoclaw@localhost' });
    if (date !== undefined) env[`GIT_${role}_DATE`] = `${Math.floor(date / 1000)} +0000`;
  }
  // cwd /: pathspecs are relative to the cwd when it lies inside the work tree. Detached: git gets
  // its own process group, so a kill reaches `gc --auto` too (run in the foreground for that reason).
  const argv = [`--git-dir=${r.gitDir}`, '-c', 'gc.autoDetach=false', '-c', 'core.quotePath=false'];
  if (args[0] !== 'init') argv.push(`--work-tree=${r.workTree}`);
  argv.push(...args);
  const child = spawn('git', argv, { env, cwd: '/', detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let killed = ''; // why we killed it
  const kill = (why: string) => {
    killed ||= why;
    try {
      if (child.pid) process.kill(-child.pid, 'SIGKILL');
    } catch {
      // the group is gone already: nothing left to kill
    }
  };
  const timer = setTimeout(() => kill(`killed after ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS);
  child.stdout.setEncoding('utf8').on('data', (s: string) => {
    stdout += s;
    if (stdout.length > MAX_OUTPUT) kill(`killed: more than ${MAX_OUTPUT} characters of output`);
  });
  child.stderr.setEncoding('utf8').on('data', (s: string) => {
    stderr = (stderr + s).slice(-65_536); // its last lines say why it failed
  });
  return new Promise((resolve, reject) => {
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why = err.code === 'ENOENT' ? 'git is not installed: apt-get install git' : `git: ${err.message}`;
      reject(new ProvenanceError(why, { cause: err }));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0 && !killed) return resolve(stdout);
      // A killed git leaves its index lock behind, which would refuse every later call.
      if (killed) rm(path.join(r.gitDir, 'index.lock'), { force: true }).catch(() => undefined);
      const why = killed || (stderr.split('\n').find((l) => /^(fatal|error):/.test(l)) ?? `exit ${code}`);
      reject(new ProvenanceError(`git ${args[0]} (${r.folder}): ${why}`));
    });
  });
}

const exists = (p: string) => lstat(p).then(Boolean, () => false);
const hasRepo = (r: Repo) => exists(path.join(r.gitDir, 'HEAD'));

/** What git must not add: files over the limit, and folders that are repositories of their own
 * (git refuses one without a commit, which would stop every later commit). Links are not followed. */
async function unrecordable(root: string, rel = ''): Promise<string[]> {
  const found: string[] = [];
  for (const e of await readdir(path.join(root, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isFile() && (await lstat(path.join(root, p))).size > MAX_FILE_BYTES) found.push(p);
    else if (!e.isDirectory() || e.name === '.git') continue;
    else if (await exists(path.join(root, p, '.git'))) found.push(p);
    else found.push(...(await unrecordable(root, p)));
  }
  return found;
}

/** Stages the whole folder, files an agent's .gitignore hides included; returns what it skipped. */
async function stage(r: Repo): Promise<string[]> {
  if (!(await exists(r.workTree))) throw new ProvenanceError(`${r.workTree} does not exist`);
  if (!(await hasRepo(r))) {
    await mkdir(path.dirname(r.gitDir), { recursive: true });
    await git(r, ['init', '--quiet', '--bare', '--initial-branch=main']);
  }
  const skipped = await unrecordable(r.workTree);
  await git(r, ['add', '--all', '--force', '--', '.', ...skipped.map((p) => `:(exclude,literal)${p}`)]);
  return skipped;
}

async function commitNow(r: Repo, message: string, now: number): Promise<string | undefined> {
  const skipped = await stage(r);
  // Against HEAD, or against nothing before the first commit.
  if ((await git(r, ['diff', '--cached', '--name-only'])) === '') return undefined;
  const note = skipped.length ? `; not recorded (too big, or a repository): ${skipped.join(', ')}` : '';
  await git(r, ['commit', '--quiet', '--allow-empty-message', '-m', message + note], now);
  return (await git(r, ['rev-parse', 'HEAD'])).trim();
}

/** Commits the folder as it is now; the new commit id, or undefined when nothing changed. */
export function commitFolder(paths: HostPaths, folder: string, message: string, opts: { now?: number } = {}) {
  return locked(paths, folder, (r) => commitNow(r, message, opts.now ?? Date.now()));
}

/** The newest `limit` commits, newest first, each with the files it changed. */
export async function log(paths: HostPaths, folder: string, limit = 20): Promise<Commit[]> {
  if (!Number.isInteger(limit) || limit < 1) throw new TypeError(`limit must be an integer ≥ 1: ${limit}`);
  // --all, not HEAD: a repository without commits yet then lists nothing instead of failing.
  const args = ['log', '--all', `--max-count=${limit}`, '--format=%x1e%H%x1f%at%x1f%s', '--name-only', '-z'];
  const out = await locked(paths, folder, async (r) => ((await hasRepo(r)) ? git(r, args) : ''));
  const chunks = out.split('\x1e').slice(1);
  return chunks.map((chunk) => {
    const [header = '', ...files] = chunk.split('\0');
    const [id = '', at = '0', message = ''] = header.split('\x1f');
    return { id, at: Number(at) * 1000, message, files: files.map((f) => f.trim()).filter(Boolean) };
  });
}

/** The full id of commit `rev` (--revs-only prints nothing, and exits 0, for a bad one). */
async function commitOf(r: Repo, rev: string): Promise<string> {
  const ok = !rev.startsWith('-') && (await hasRepo(r));
  const sha = ok ? (await git(r, ['rev-parse', '--revs-only', `${rev}^{commit}`])).trim() : '';
  if (!sha) throw new ProvenanceError(`no commit ${rev} in the history of ${r.folder}`);
  return sha;
}

/** The folder's changes since the last commit, or what commit `rev` changed. */
export function diff(paths: HostPaths, folder: string, rev?: string): Promise<string> {
  return locked(paths, folder, async (r) => {
    if (rev !== undefined) return git(r, ['show', '--format=', '--patch', await commitOf(r, rev)]);
    await stage(r);
    return git(r, ['diff', '--cached']);
  });
}

/**
 * Brings the folder (or one path in it) back as it was at `rev`, and commits that; the state before
 * is committed first, planted links included, so a restore can itself be undone. Where a symlink
 * stands in the way, git removes it and writes a real file or directory in its place (it never
 * writes through one: the tests hold it to that).
 */
export function restore(paths: HostPaths, folder: string, rev: string, file?: string) {
  return locked(paths, folder, async (r) => {
    if (file !== undefined && (path.isAbsolute(file) || file.split('/').includes('..') || !file)) {
      throw new ProvenanceError(`${file} is not a path inside the group folder`);
    }
    const sha = await commitOf(r, rev);
    const what = `${file ?? 'the folder'} to ${sha.slice(0, 12)}`;
    if (file !== undefined && !(await git(r, ['ls-tree', sha, '--', file]))) {
      throw new ProvenanceError(`${file} is not in commit ${sha.slice(0, 12)} of ${folder}`);
    }
    await commitNow(r, `before restoring ${what}`, Date.now());
    await git(r, ['restore', `--source=${sha}`, '--staged', '--worktree', '--', `:(literal)${file ?? '.'}`]);
    return commitNow(r, `restore ${what}`, Date.now());
  });
}
