// Reply latency and memory of the web chat path, with the fake model answering instantly on bwrap
// (the "Budgets" of docs/DESIGN.md). Four measurements, one after the other, each on its own home:
// - warm: POST /api/messages → the SSE `message` carrying its answer, with the agent live and idle;
// - cold: the same with no live agent (new sandbox, CLI start, session resume);
// - dispatch: orch.ingest() → the prompt written to the live CLI's stdin (a wrapped sandbox sees it);
// - RSS of `nanoclaw start` as its own process, idle and with one live agent.
// Prints a plain table, then one JSON line with every figure. Timings are never asserted here.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfig, projectRoot } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { startOrchestrator } from '../src/orchestrator.js';
import { detectSandbox, which } from '../src/sandbox/detect.js';
import type { Sandbox } from '../src/sandbox/index.js';
import {
  eventually,
  openEvents,
  postJson,
  REAL_KEY,
  removeHome,
  request,
  type SseClient,
  spawnApp,
  startApp,
  tempHome,
  testEnv,
} from '../test/support/app.js';
import { type FakeAnthropic, startFakeAnthropic, text } from '../test/support/fake-anthropic.js';

const WARM_N = 40;
const COLD_N = 12;
const DISPATCH_N = 200;
const DISPATCH_MIN_N = 100;
/** Dispatch goes on from 100 to 200 samples only when the first 100 took less than this. */
const DISPATCH_QUICK_MS = 30_000;
const RSS_FOLLOW_UPS = 20;
const LONG_IDLE = String(3_600_000);
const REPLY_WAIT_MS = 60_000;
/** Unique per bench run, so markers and reply texts never match anything left from before. */
const RUN = randomBytes(4).toString('hex');

interface Stats {
  n: number;
  discarded: number;
  min: number;
  p50: number;
  p95: number;
  max: number;
}

/** Nearest rank: the smallest sample with at least p% of the samples at or below it. */
function percentile(sorted: readonly number[], p: number): number {
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1] ?? Number.NaN;
}

const r2 = (xs: readonly number[]) => xs.map((v) => Math.round(v * 100) / 100);

function stats(samples: readonly number[], discarded: number): Stats {
  const sorted = [...samples].sort((a, b) => a - b);
  const round = (v: number) => Math.round(v * 100) / 100;
  return {
    n: sorted.length,
    discarded,
    min: round(sorted[0] ?? Number.NaN),
    p50: round(percentile(sorted, 50)),
    p95: round(percentile(sorted, 95)),
    max: round(sorted[sorted.length - 1] ?? Number.NaN),
  };
}

/** Resolves with performance.now() at the SSE `message` event whose text is `answer`. */
function arrival(sse: SseClient, answer: string): Promise<number> {
  return sse
    .waitFor((e) => e.event === 'message' && (e.data as { text?: unknown }).text === answer, REPLY_WAIT_MS)
    .then(() => performance.now());
}

/** Scripts one instant answer, POSTs a question and times POST → SSE answer, in ms. */
async function timedReply(fake: FakeAnthropic, key: string, port: number, sse: SseClient, label: string) {
  const answer = `ok ${RUN} ${label}`;
  fake.script(key, [{ reply: text(answer) }]);
  const arrived = arrival(sse, answer);
  const start = performance.now();
  const posted = await postJson(port, '/api/messages', { text: `question ${RUN} ${label}` });
  if (posted.status !== 202) throw new Error(`POST /api/messages answered ${posted.status}`);
  return (await arrived) - start;
}

async function warmReplies(fake: FakeAnthropic): Promise<{ samples: number[]; warnings: string[] }> {
  const key = 'warm';
  fake.script(key, []);
  const app = await startApp({ baseUrl: `${fake.baseUrl}/s/${key}`, env: { IDLE_TIMEOUT_MS: LONG_IDLE } });
  const sse = await openEvents(app.port);
  const idle = () => eventually(() => app.orch.queue.snapshot().live[0]?.idle, 30_000, 'idle agent');
  try {
    await timedReply(fake, key, app.port, sse, 'warm-start'); // starts the agent: not a follow-up
    await idle();
    const samples: number[] = [];
    for (let i = 0; i < WARM_N; i++) {
      samples.push(await timedReply(fake, key, app.port, sse, `warm-${i}`));
      await idle();
    }
    return { samples, warnings: app.logs.filter((l) => / (warn|error) /.test(l)) };
  } finally {
    sse.close();
    await app.stop();
    removeHome(app.home);
  }
}

async function coldReplies(fake: FakeAnthropic): Promise<{ samples: number[]; warnings: string[] }> {
  const key = 'cold';
  fake.script(key, []);
  const app = await startApp({ baseUrl: `${fake.baseUrl}/s/${key}`, env: { IDLE_TIMEOUT_MS: '100' } });
  const sse = await openEvents(app.port);
  const gone = () => eventually(() => app.orch.queue.snapshot().live.length === 0, 30_000, 'idle close');
  try {
    // A first conversation, so that every measured reply resumes a stored session.
    await timedReply(fake, key, app.port, sse, 'cold-first');
    const samples: number[] = [];
    for (let i = 0; i < COLD_N; i++) {
      await gone();
      samples.push(await timedReply(fake, key, app.port, sse, `cold-${i}`));
    }
    await gone();
    const starts = app.logs.filter((l) => l.includes('agent starting')).length;
    if (starts !== COLD_N + 1) throw new Error(`expected ${COLD_N + 1} agent starts, saw ${starts}`);
    return { samples, warnings: app.logs.filter((l) => / (warn|error) /.test(l)) };
  } finally {
    sse.close();
    await app.stop();
    removeHome(app.home);
  }
}

function chunkHas(chunk: unknown, marker: string): boolean {
  if (typeof chunk === 'string') return chunk.includes(marker);
  if (chunk instanceof Uint8Array)
    return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length).includes(marker);
  return false;
}

/** ingest() → the chunk holding the message written to the CLI's stdin, through a wrapped real sandbox. */
async function warmDispatch(
  fake: FakeAnthropic,
): Promise<{ warmUp: number; samples: number[]; warnings: string[] }> {
  const key = 'dispatch';
  fake.script(key, []);
  const home = tempHome();
  const env = testEnv(home, `${fake.baseUrl}/s/${key}`, { IDLE_TIMEOUT_MS: LONG_IDLE });
  const config = loadConfig(env, { root: projectRoot() });
  const logs: string[] = [];
  const log = createLogger('warn', (line) => logs.push(line));
  const real = detectSandbox('bwrap', process.env.PATH);
  let watch: { marker: string; at?: number } | undefined;
  const sandbox: Sandbox = {
    kind: real.kind,
    spawn(spec) {
      const child = real.spawn(spec);
      const write = child.stdin.write.bind(child.stdin) as (...args: unknown[]) => boolean;
      child.stdin.write = ((chunk: unknown, ...rest: unknown[]) => {
        if (watch && watch.at === undefined && chunkHas(chunk, watch.marker)) watch.at = performance.now();
        return write(chunk, ...rest);
      }) as typeof child.stdin.write;
      return child;
    },
  };
  const orch = await startOrchestrator(config, { log, env, sandbox });
  const sse = await openEvents(orch.web.port());
  const idle = () => eventually(() => orch.queue.snapshot().live[0]?.idle, 30_000, 'idle agent');

  const once = async (i: number): Promise<number> => {
    const marker = `mk${RUN}n${String(i).padStart(4, '0')}`;
    const answer = `ok ${marker}`;
    fake.script(key, [{ reply: text(answer) }]);
    const current: { marker: string; at?: number } = { marker };
    watch = current;
    const answered = arrival(sse, answer);
    const start = performance.now();
    const result = orch.ingest({
      chatJid: 'web:main',
      chatName: 'Web chat',
      platformId: `bench-${marker}`,
      sender: 'web:owner',
      senderName: 'You',
      text: `question ${marker}`,
      at: Date.now(),
    });
    if (!result.stored) throw new Error(`ingest refused the message: ${result.reason}`);
    await answered;
    if (current.at === undefined) throw new Error(`${marker} was answered but never seen on the CLI's stdin`);
    await idle();
    return current.at - start;
  };

  try {
    await once(0); // starts the agent (cold)
    const warmUp = await once(1); // the first follow-up: discarded as warm-up
    const samples: number[] = [];
    const began = performance.now();
    for (let i = 0; i < DISPATCH_MIN_N; i++) samples.push(await once(i + 2));
    if (performance.now() - began < DISPATCH_QUICK_MS) {
      for (let i = DISPATCH_MIN_N; i < DISPATCH_N; i++) samples.push(await once(i + 2));
    }
    return { warmUp, samples, warnings: logs };
  } finally {
    sse.close();
    await orch.stop(5000);
    removeHome(home);
  }
}

interface Proc {
  pid: number;
  ppid: number;
  comm: string;
}

function processes(): Proc[] {
  const out: Proc[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // `pid (comm) state ppid …`; comm may hold spaces and parentheses, so split at the last ')'.
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const ppid = Number(stat.slice(close + 2).split(' ')[1]);
      out.push({ pid: Number(name), ppid, comm });
    } catch {
      // the process ended between readdir and read: it is not part of the tree any more
    }
  }
  return out;
}

/** VmRSS in MiB; 0 for a process that is gone or has no memory of its own (a zombie). */
function rssMiB(pid: number): number {
  try {
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb === undefined ? 0 : Math.round((Number(kb) / 1024) * 10) / 10;
  } catch {
    return 0; // gone: nothing resident
  }
}

interface SandboxRss {
  processes: { pid: number; comm: string; rssMiB: number }[];
  /** The sandboxed processes that are not bwrap itself (the Claude Code CLI and anything it started). */
  cliMiB: number;
}

/** Every bwrap child of the orchestrator and all of its descendants, with their RSS. */
function sandboxRss(orchestratorPid: number): SandboxRss {
  const all = processes();
  const found: Proc[] = [];
  let frontier = all.filter((p) => p.ppid === orchestratorPid && p.comm === 'bwrap');
  while (frontier.length > 0) {
    found.push(...frontier);
    const pids = new Set(frontier.map((p) => p.pid));
    frontier = all.filter((p) => pids.has(p.ppid));
  }
  const list = found.map((p) => ({ pid: p.pid, comm: p.comm, rssMiB: rssMiB(p.pid) }));
  const cli = list.filter((p) => p.comm !== 'bwrap').reduce((sum, p) => sum + p.rssMiB, 0);
  return { processes: list, cliMiB: Math.round(cli * 10) / 10 };
}

async function remoteIdle(port: number): Promise<boolean> {
  const res = await request(port, 'GET', '/api/status', undefined);
  const status = JSON.parse(res.text) as { queue?: { live?: { idle?: boolean }[] } };
  return status.queue?.live?.[0]?.idle === true;
}

async function waitRemoteIdle(port: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await remoteIdle(port))) {
    if (Date.now() > deadline) throw new Error('timed out waiting for the idle agent');
    await sleep(20);
  }
}

interface RssFigures {
  idleMiB: number;
  oneAgentMiB: number;
  afterFollowUpsMiB: number;
  followUps: number;
  sandboxOneAgent: SandboxRss;
  sandboxAfterFollowUps: SandboxRss;
}

async function orchestratorRss(fake: FakeAnthropic): Promise<RssFigures> {
  const key = 'rss';
  fake.script(key, []);
  const home = tempHome();
  writeFileSync(path.join(home, '.env'), `ANTHROPIC_API_KEY=${REAL_KEY}\nSANDBOX=bwrap\n`);
  const app = await spawnApp(home, {
    ANTHROPIC_BASE_URL: `${fake.baseUrl}/s/${key}`,
    WEB_PORT: '0',
    IDLE_TIMEOUT_MS: LONG_IDLE,
    TIMEZONE: 'UTC',
    CLAUDE_CODE_MAX_RETRIES: '0',
  });
  const pid = app.child.pid;
  let sse: SseClient | undefined;
  try {
    if (pid === undefined) throw new Error('nanoclaw start has no pid');
    await sleep(2000);
    const idleMiB = rssMiB(pid);
    sse = await openEvents(app.port);
    await timedReply(fake, key, app.port, sse, 'rss-0');
    await waitRemoteIdle(app.port);
    await sleep(1000);
    const oneAgentMiB = rssMiB(pid);
    const sandboxOneAgent = sandboxRss(pid);
    for (let i = 1; i <= RSS_FOLLOW_UPS; i++) {
      await timedReply(fake, key, app.port, sse, `rss-${i}`);
      await waitRemoteIdle(app.port);
    }
    await sleep(1000);
    return {
      idleMiB,
      oneAgentMiB,
      afterFollowUpsMiB: rssMiB(pid),
      followUps: RSS_FOLLOW_UPS,
      sandboxOneAgent,
      sandboxAfterFollowUps: sandboxRss(pid),
    };
  } catch (err) {
    throw new Error(`${(err as Error).message}; stderr of nanoclaw start: ${app.stderr().slice(-2000)}`, {
      cause: err,
    });
  } finally {
    sse?.close();
    app.child.kill('SIGTERM');
    const exited = await Promise.race([app.exited.then(() => true), sleep(15_000).then(() => false)]);
    if (!exited) {
      app.child.kill('SIGKILL');
      await app.exited;
    }
    removeHome(home);
  }
}

function machine() {
  const cpus = os.cpus();
  const bwrap = which('bwrap', process.env.PATH);
  let bwrapVersion = 'not found';
  if (bwrap) {
    bwrapVersion = execFileSync(bwrap, ['--version'], { encoding: 'utf8', timeout: 5000 }).trim();
  }
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    node: process.version,
    kernel: os.release(),
    bwrap: bwrapVersion,
  };
}

function row(name: string, s: Stats, budget: string): string {
  const num = (v: number) => v.toFixed(1).padStart(8);
  return `${name.padEnd(40)}${String(s.n).padStart(5)}${num(s.min)}${num(s.p50)}${num(s.p95)}${num(s.max)}   ${budget}`;
}

async function main(): Promise<void> {
  const m = machine();
  const fake = await startFakeAnthropic({ maxRequestsPerScript: 10_000 });
  try {
    const warm = await warmReplies(fake);
    const cold = await coldReplies(fake);
    const dispatch = await warmDispatch(fake);
    const rss = await orchestratorRss(fake);

    const [warmUp, ...warmSamples] = warm.samples;
    const warmStats = stats(warmSamples, 1);
    const coldStats = stats(cold.samples, 0);
    const dispatchStats = stats(dispatch.samples, 1);
    const sandboxLine = (s: SandboxRss) =>
      s.processes.map((p) => `${p.comm}[${p.pid}] ${p.rssMiB.toFixed(1)}`).join(', ') || 'none found';

    const lines = [
      `machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, Node ${m.node}, kernel ${m.kernel}, ${m.bwrap}`,
      'fake model: instant text replies (default usage); web chat path; sandbox bwrap',
      '',
      `${'measurement (ms)'.padEnd(40)}${'n'.padStart(5)}${'min'.padStart(8)}${'p50'.padStart(8)}${'p95'.padStart(8)}${'max'.padStart(8)}   budget`,
      row('warm reply, POST → SSE message', warmStats, 'p50 ≤ 60'),
      row('cold reply, POST → SSE message', coldStats, 'p50 ≤ 450'),
      row('warm dispatch, ingest → CLI stdin', dispatchStats, 'p95 ≤ 10'),
      '',
      `warm: ${WARM_N} follow-ups to one live agent; the first was discarded as warm-up.`,
      `cold: ${COLD_N} replies, each with a new bwrap sandbox, CLI start and session resume (IDLE_TIMEOUT_MS=100).`,
      `dispatch: ${dispatchStats.n + 1} follow-ups via orch.ingest(); the first was discarded as warm-up.`,
      '',
      `${'orchestrator RSS (MiB, host side)'.padEnd(40)}${'value'.padStart(8)}   budget`,
      `${'idle after start (2 s)'.padEnd(40)}${rss.idleMiB.toFixed(1).padStart(8)}   ≤ 100 (with Discord)`,
      `${'one live agent, idle (1 s)'.padEnd(40)}${rss.oneAgentMiB.toFixed(1).padStart(8)}   ≤ idle + 10`,
      `${`after ${rss.followUps} more follow-ups`.padEnd(40)}${rss.afterFollowUpsMiB.toFixed(1).padStart(8)}`,
      `sandbox (one agent): ${sandboxLine(rss.sandboxOneAgent)}; CLI ${rss.sandboxOneAgent.cliMiB.toFixed(1)} MiB`,
      `sandbox (after follow-ups): ${sandboxLine(rss.sandboxAfterFollowUps)}; CLI ${rss.sandboxAfterFollowUps.cliMiB.toFixed(1)} MiB`,
    ];
    const warnings = [...warm.warnings, ...cold.warnings, ...dispatch.warnings].map((l) => l.trim());
    if (warnings.length > 0) lines.push('', `log warnings (${warnings.length}):`, ...warnings.slice(0, 20));
    if (fake.errors.length > 0) lines.push('', `fake model errors (${fake.errors.length}):`, ...fake.errors);
    console.log(lines.join('\n'));
    console.log(
      JSON.stringify({
        machine: m,
        warmReplyMs: warmStats,
        coldReplyMs: coldStats,
        warmDispatchMs: dispatchStats,
        rss,
        samples: { warm: r2(warmSamples), cold: r2(cold.samples), dispatch: r2(dispatch.samples) },
        discardedWarmUpMs: { warm: r2([warmUp ?? Number.NaN])[0], dispatch: r2([dispatch.warmUp])[0] },
        warnings: warnings.length,
        fakeErrors: fake.errors.length,
      }),
    );
  } finally {
    await fake.close();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exitCode = 1;
});
