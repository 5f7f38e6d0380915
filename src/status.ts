// `nanoclaw status`: channels, agents, queue, next tasks and today's runs. Agents and the queue
// live in the orchestrator's memory, so they come from its GET /api/status (2 s timeout); when no
// orchestrator answers, the rest comes from the store. Today's runs always come from the store:
// the API carries only the 20 most recent runs.
import { z } from 'zod';
import type { Config } from './config.js';
import type { Db } from './db.js';
import { startOfDay, type TaskStore, taskStore } from './scheduler.js';

const str = z.string();
const apiSchema = z.object({
  channels: z.record(str, z.enum(['up', 'down'])),
  groups: z.array(z.object({ chat: str, name: str, folder: str, main: z.boolean() })),
  queue: z.object({
    live: z.array(z.object({ key: str, idle: z.boolean() })),
    waiting: z.array(str),
    retrying: z.array(str),
  }),
  outboxPending: z.number(),
  nextTasks: z.array(z.object({ id: str, group: str, nextRun: z.number().nullable(), prompt: str })),
});
type Api = z.infer<typeof apiSchema>;

/** The orchestrator's figures, or why there are none (`refused`: nothing listens). */
async function fetchLive(c: Config, f: typeof fetch): Promise<Api | { refused: boolean; why: string }> {
  const host = ['0.0.0.0', '::', ''].includes(c.webHost) ? '127.0.0.1' : c.webHost;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${c.webPort}/api/status`;
  const fail = (why: string) => ({ refused: false, why: `${url}: ${why}` });
  try {
    // web.ts checks the Host header against the bound name and port; fetch sends exactly that.
    const res = await f(url, {
      headers: c.webToken ? { authorization: `Bearer ${c.webToken}` } : {},
      signal: AbortSignal.timeout(2000),
    });
    if (!res.ok) return fail(`HTTP ${res.status} ${(await res.text()).slice(0, 200)}`);
    const parsed = apiSchema.safeParse(await res.json());
    return parsed.success ? parsed.data : fail('an answer that is not the status');
  } catch (e) {
    const code = (e as { cause?: { code?: string } }).cause?.code;
    if (code === 'ECONNREFUSED') return { refused: true, why: `nothing listens on ${url}` };
    return fail((e as Error).name === 'TimeoutError' ? 'no answer in 2 s' : (code ?? (e as Error).message));
  }
}

/** The next active tasks, as GET /api/status lists them. */
export function nextTasks(tasks: TaskStore) {
  return tasks
    .list()
    .filter((t) => t.status === 'active')
    .sort((a, b) => (a.nextRun ?? 0) - (b.nextRun ?? 0))
    .slice(0, 10)
    .map((t) => ({ id: t.id, group: t.groupFolder, nextRun: t.nextRun, prompt: t.prompt.slice(0, 100) }));
}

export async function statusCommand(
  args: string[],
  ctx: { config: Config; db: Db; fetch?: typeof fetch; now?: () => number },
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  const bad = args.find((a) => a !== '--json');
  if (bad !== undefined) {
    err(`nanoclaw status: unknown argument ${bad}: status takes only --json`);
    return 1;
  }
  const { config, db } = ctx;
  const live = await fetchLive(config, ctx.fetch ?? fetch);
  const up = 'queue' in live;
  const since = startOfDay(ctx.now?.() ?? Date.now(), config.timezone);
  const runs = db.recentRuns(10_000).filter((r) => r.startedAt >= since);
  const today = { since, runs: runs.length, costUsd: 0, inputTokens: 0, outputTokens: 0 };
  for (const r of runs) for (const k of ['costUsd', 'inputTokens', 'outputTokens'] as const) today[k] += r[k];
  // Live: every started channel, up or down; from the store: only what the configuration says.
  const channels: Record<string, string> = up ? { ...live.channels } : { web: 'down' };
  channels.discord ??= config.discordBotToken ? 'configured' : 'off';
  const report = {
    orchestrator: up ? 'running' : live.refused ? 'not running' : 'not answering',
    ...(up ? {} : { why: live.why }),
    channels,
    groups: up
      ? live.groups
      : db.groups().map((g) => ({ chat: g.jid, name: g.name, folder: g.folder, main: g.isMain })),
    agents: up ? live.queue : null,
    outboxPending: up ? live.outboxPending : db.outboxPendingCount(),
    nextTasks: up ? live.nextTasks : nextTasks(taskStore(db)),
    today,
  };
  if (args.includes('--json')) {
    out(JSON.stringify(report, null, 2));
    return 0;
  }
  const { agents, groups } = report;
  const from = up ? '' : ` (figures from the store)${live.refused ? '' : `: ${live.why}`}`;
  out(`orchestrator: ${report.orchestrator}${from}`);
  out(
    `channels: ${Object.entries(channels)
      .map(([name, state]) => `${name} ${state}`)
      .join(', ')}`,
  );
  out(`groups: ${groups.length} (${groups.map((g) => `${g.chat}${g.main ? ' main' : ''}`).join(', ')})`);
  const working = agents?.live.filter((a) => !a.idle).length;
  out(agents ? `agents: ${agents.live.length} running (${working} working)` : 'agents: none running');
  if (agents) out(`queue: ${agents.waiting.length} waiting, ${agents.retrying.length} retrying`);
  out(`outbox: ${report.outboxPending} pending`);
  out(report.nextTasks.length ? 'next tasks:' : 'next tasks: none');
  for (const t of report.nextTasks) {
    const next = t.nextRun === null ? '-' : new Date(t.nextRun).toISOString();
    out(`  ${t.id}\t${next}\t${t.group}\t${t.prompt.slice(0, 60)}`);
  }
  const tokens = `${today.inputTokens} in / ${today.outputTokens} out tokens`;
  out(
    `today: ${today.runs} runs, $${today.costUsd.toFixed(4)}, ${tokens} (since ${new Date(since).toISOString()})`,
  );
  return 0;
}
