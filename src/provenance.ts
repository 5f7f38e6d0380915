// Provenance: after a run changed a group folder, the host commits the folder to a bare repository
// at data/provenance/<folder>.git, outside every sandbox, so the owner can see and undo what the
// agent changed. The folder is git's work tree (`--work-tree`), but no `.git` is ever created in it:
// an agent that could reach the history could rewrite it.
import { type ExecFileOptionsWithStringEncoding, execFile } from 'node:child_process';
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
const EMPTY_TREE = '4b825dc642cb6eb9a060e54bf8d69288fbee4904';
// No system or user config (HOME is not passed either): only the repository's own, which we wrote.
const ENV = {
  LC_ALL: 'C',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_TERMINAL_PROMPT: '0',
};
const WHO = { NAME: 'NanoClaw', EMAIL: 'nanoclaw@localhost' };

// One promise chain per repository, so two commits (or a commit and a restore) of one folder never
// interleave in its index. Module-level on purpose: every caller in the process must share it.
const chains = new Map<string, Promise<unknown>>();

function repo(paths: HostPaths, folder: string): Repo {
  const problem = folderProblem(folder);
  if (problem) throw new ProvenanceError(problem);
  const gitDir = path.join(paths.dataDir, 'provenance', `${folder}.git`);
  return { gitDir, workTree: groupPaths(paths, folder).group, folder };
}

/** Runs git on `r`; with `tolerate`, a plain failure (a missing ref or path) gives ''. */
function git(r: Repo, args: string[], opts: { date?: number; tolerate?: boolean } = {}): Promise<string> {
  const env: Record<string, string> = { ...ENV, PATH: process.env.PATH ?? '/usr/bin:/bin' };
  for (const role of ['AUTHOR', 'COMMITTER']) {
    Object.assign(env, { [`GIT_${role}_NAME`]: WHO.NAME, [`GIT_${role}_EMAIL`]: WHO.EMAIL });
    if (opts.date !== undefined) env[`GIT_${role}_DATE`] = `${Math.floor(opts.date / 1000)} +0000`;
  }
  // cwd /: pathspecs are relative to the cwd when it lies inside the work tree. Detached: its own
  // process group, so a kill reaches `gc --auto` too, which runs in the foreground for that reason.
  const options = { env, cwd: '/', encoding: 'utf8', timeout: TIMEOUT_MS, killSignal: 'SIGKILL' };
  const all = { ...options, maxBuffer: MAX_OUTPUT, detached: true } as ExecFileOptionsWithStringEncoding;
  const argv = [`--git-dir=${r.gitDir}`, '-c', 'gc.autoDetach=false', '-c', 'core.quotePath=false'];
  if (args[0] !== 'init') argv.push(`--work-tree=${r.workTree}`);
  return new Promise((resolve, reject) => {
    const child = execFile('git', [...argv, ...args], all, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        return reject(new ProvenanceError('git is not installed: apt-get install -y git', { cause: err }));
      }
      if (err.killed && child.pid) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {} // the group is already gone
        // A killed git leaves its index lock behind, which would refuse every later commit.
        void rm(path.join(r.gitDir, 'index.lock'), { force: true });
      } else if (opts.tolerate) return resolve('');
      const lines = stderr.trim().split('\n');
      const why = err.killed
        ? `killed after ${TIMEOUT_MS / 1000} s or ${MAX_OUTPUT} bytes of output`
        : (lines.find((l) => /^(fatal|error):/.test(l)) ?? lines[0] ?? err.message);
      reject(new ProvenanceError(`git ${args[0]} (${r.folder}): ${why}`, { cause: err }));
    });
  });
}

const exists = (p: string) => lstat(p).then(Boolean, () => false);
/** The newest commit, or undefined in an empty repository (rev-list says so without failing). */
const head = async (r: Repo) => (await git(r, ['rev-list', '--max-count=1', '--all'])).trim() || undefined;

/** Serializes `fn` per repository and classifies whatever it throws. */
function locked<T>(r: Repo, fn: () => Promise<T>): Promise<T> {
  const run = (chains.get(r.gitDir) ?? Promise.resolve()).then(fn);
  chains.set(
    r.gitDir,
    run.catch(() => undefined),
  ); // a failure must not block the next call
  return run.catch((e: Error) => {
    throw e instanceof ProvenanceError ? e : new ProvenanceError(`${r.folder}: ${e.message}`, { cause: e });
  });
}

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
  if (!(await exists(path.join(r.gitDir, 'HEAD')))) {
    await mkdir(path.dirname(r.gitDir), { recursive: true });
    await git(r, ['init', '--quiet', '--bare', '--initial-branch=main']);
  }
  const skipped = await unrecordable(r.workTree);
  await git(r, ['add', '--all', '--force', '--', '.', ...skipped.map((p) => `:(exclude,literal)${p}`)]);
  return skipped;
}

async function commitNow(r: Repo, message: string, now: number): Promise<string | undefined> {
  const skipped = await stage(r);
  const changed = await git(r, ['diff', '--cached', '--name-only', (await head(r)) ?? EMPTY_TREE]);
  if (changed === '') return undefined;
  const note = skipped.length
    ? `; not recorded (over 10 MiB or a git repository): ${skipped.join(', ')}`
    : '';
  await git(r, ['commit', '--quiet', '--allow-empty-message', '-m', message + note], { date: now });
  return head(r);
}

/** Commits the folder as it is now; the new commit id, or undefined when nothing changed. */
export function commitFolder(paths: HostPaths, folder: string, message: string, opts: { now?: number } = {}) {
  const r = repo(paths, folder);
  return locked(r, () => commitNow(r, message, opts.now ?? Date.now()));
}

/** The newest `limit` commits, newest first, each with the files it changed. */
export async function log(paths: HostPaths, folder: string, limit = 20): Promise<Commit[]> {
  const r = repo(paths, folder);
  if (!Number.isInteger(limit) || limit < 1)
    throw new TypeError(`limit must be a whole number ≥ 1: ${limit}`);
  if (!(await exists(path.join(r.gitDir, 'HEAD'))) || !(await head(r))) return [];
  const format = '--format=%x1e%H%x1f%at%x1f%s';
  const out = await git(r, ['log', `--max-count=${limit}`, format, '--name-only', '-z']);
  return out
    .split('\x1e')
    .slice(1)
    .map((chunk) => {
      const [header = '', ...files] = chunk.split('\0');
      const [id = '', at = '0', message = ''] = header.split('\x1f');
      return { id, at: Number(at) * 1000, message, files: files.map((f) => f.trim()).filter(Boolean) };
    });
}

async function commitOf(r: Repo, rev: string): Promise<string> {
  const verify = ['rev-parse', '--quiet', '--verify', `${rev}^{commit}`];
  const sha = rev.startsWith('-') ? '' : (await git(r, verify, { tolerate: true })).trim();
  if (!sha) throw new ProvenanceError(`no commit ${rev} in the history of ${r.folder}`);
  return sha;
}

/** The folder's changes since the last commit, or what commit `rev` changed. */
export async function diff(paths: HostPaths, folder: string, rev?: string): Promise<string> {
  const r = repo(paths, folder);
  if (rev !== undefined) return git(r, ['show', '--format=', '--patch', await commitOf(r, rev)]);
  return locked(r, async () => {
    await stage(r);
    return git(r, ['diff', '--cached', (await head(r)) ?? EMPTY_TREE]);
  });
}

/**
 * Brings the folder (or one path in it) back as it was at `rev`, and commits that; the state before
 * is committed first, planted links included, so a restore can itself be undone. Where a symlink
 * stands in the way, git removes it and writes a real file or directory in its place (it never
 * writes through one: the tests hold it to that).
 */
export function restore(paths: HostPaths, folder: string, rev: string, file?: string) {
  const r = repo(paths, folder);
  const rel = file === undefined ? '.' : path.posix.normalize(file).replace(/\/+$/, '');
  if (file !== undefined && /^(\/|\.\.(\/|$)|\.?$)/.test(rel)) {
    throw new ProvenanceError(`${file} is not a path inside the group folder`);
  }
  return locked(r, async () => {
    const sha = await commitOf(r, rev);
    const what = `${rel === '.' ? 'the folder' : rel} to ${sha.slice(0, 12)}`;
    if (rel !== '.' && !(await git(r, ['cat-file', '-t', `${sha}:${rel}`], { tolerate: true }))) {
      throw new ProvenanceError(`${rel} is not in commit ${sha.slice(0, 12)} of ${folder}`);
    }
    await commitNow(r, `before restoring ${what}`, Date.now());
    await git(r, ['restore', `--source=${sha}`, '--staged', '--worktree', '--', `:(literal)${rel}`]);
    return commitNow(r, `restore ${what}`, Date.now());
  });
}
