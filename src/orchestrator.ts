// The orchestrator: the store, the channels, the group queue, the agents and the outbox, joined.
// A message is committed to SQLite first; a stored message that should wake its group goes to the
// queue at once (no polling); replies go out through the outbox. At start, messages left
// unanswered and replies left undelivered by a crash are picked up again.
import { lookup } from 'node:dns/promises';
import {
  constants,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  realpathSync,
  rmSync,
  watch,
} from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startAgentSession } from './agent-session.js';
import type { ToolContext } from './agent-tools.js';
import { addedChannels } from './channels/added.js';
import type { Channel, InboundMessage, IngestResult } from './channels/channel.js';
import { createWebChannel, type WebChannel } from './channels/web.js';
import type { Config } from './config.js';
import type { Egress, ModelCredential } from './credential-proxy.js';
import { type Db, type Group, openDb } from './db.js';
import { createEgressPolicy, type Resolve } from './egress.js';
import { createGroupQueue } from './group-queue.js';
import type { Logger } from './log.js';
import {
  checkExtraMount,
  defaultAllowlistPath,
  folderProblem,
  groupPaths,
  type MountAllowlist,
  readAllowlist,
} from './mounts.js';
import { createOutbox } from './outbox.js';
import { commitFolder } from './provenance.js';
import { needsWake, triggerFor } from './router.js';
import { sandboxFor } from './sandbox/detect.js';
import type { Mount, Sandbox } from './sandbox/index.js';
import {
  type Claimed,
  MAX_FAILURES,
  startOfDay,
  startScheduler,
  TASKS_CHANGED,
  taskStore,
} from './scheduler.js';
import { nextTasks } from './status.js';

export interface OrchestratorDeps {
  log: Logger;
  now?: () => number;
  sandbox?: Sandbox;
  /** The orchestrator's own environment: its PATH is where sandbox runtimes are looked up. */
  env?: NodeJS.ProcessEnv;
  retryBaseMs?: number;
  /** The scheduler's timers (tests: a fake clock with `now`); default the real ones. */
  schedulerTimers?: { setTimer(fn: () => void, ms: number): unknown; clearTimer(t: unknown): void };
  /** More channels (a test's fake); each gets the ingest function. */
  channels?: (ingest: (m: InboundMessage) => IngestResult) => Channel[];
  discord?: { typingIntervalMs?: number };
  /** Where the mount allowlist lives (default ~/.config/nanoclaw/mount-allowlist.json). */
  mountAllowlistPath?: string;
  /** Test seams for the egress policy: a static resolver and a recording dial. */
  egress?: { resolve?: Resolve; dial?: Egress['dial']; testAddresses?: readonly string[] };
}

type Outcome = { ok: boolean; result?: string; error?: string };

/** `/new` or `/stop`, alone or after a trigger word. */
const COMMAND = /^(?:@[\p{L}\p{N}_-]+[\s,:]*)?\/(new|stop)$/iu;

/** Queue keys of isolated task runs (the group's chat key is its jid). */
const TASK_RUN = 'task-run:';

export const NO_CREDENTIAL_NOTICE =
  'I have no model credential yet: put ANTHROPIC_API_KEY=… (or CLAUDE_CODE_OAUTH_TOKEN=…) in .env and restart me.';

function credentialFrom(config: Config): ModelCredential | undefined {
  if (config.anthropicApiKey) return { type: 'api_key', value: config.anthropicApiKey };
  if (config.claudeOauthToken) return { type: 'oauth', value: config.claudeOauthToken };
  return undefined;
}

/**
 * DISCORD_MAIN_CHANNEL_ID (and a skill channel's like it) is shorthand for
 * `groups add <jid> --main`, in folder `<channel>-main`; an explicit registration wins.
 */
export function registerMainChat(db: Db, jid: string, assistantName: string, now: number): void {
  if (db.group(jid)) return;
  const [channel = 'chat', id = ''] = jid.split(':');
  const base = `${channel}-main`;
  const folder = db.groupByFolder(base) ? `${base}-${id.toLowerCase().replace(/[^a-z0-9-]/g, '')}` : base;
  db.addGroup(
    {
      jid,
      name: `${channel[0]?.toUpperCase()}${channel.slice(1)} main`,
      folder,
      trigger: triggerFor(assistantName),
      requiresTrigger: false,
      isMain: true,
    },
    now,
  );
}

/** Creates groups/global and the folder of `folder` from the shipped templates; refuses symlinks. */
export function ensureGroupFolder(config: Config, folder: string, isMain: boolean): void {
  const problem = folderProblem(folder);
  if (problem) throw new Error(problem);
  const p = groupPaths(config, folder);
  for (const [dir, template] of [
    [p.global, 'global'],
    [p.group, isMain ? 'main' : 'group'],
  ] as const) {
    mkdirSync(dir, { recursive: true });
    if (lstatSync(dir).isSymbolicLink()) throw new Error(`${dir} is a symlink: refusing to use it`);
    const source = path.join(config.projectRoot, 'templates', 'groups', template, 'CLAUDE.md');
    // Never through a link an agent planted: COPYFILE_EXCL (O_EXCL) refuses any existing path,
    // a dangling symlink included, where existsSync would follow it and say "missing".
    if (existsSync(source)) {
      try {
        copyFileSync(source, path.join(dir, 'CLAUDE.md'), constants.COPYFILE_EXCL);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
  }
  mkdirSync(path.join(p.home, '.claude'), { recursive: true });
}

export async function startOrchestrator(config: Config, deps: OrchestratorDeps) {
  const { log } = deps;
  const now = deps.now ?? Date.now;
  const sandbox = deps.sandbox ?? sandboxFor(config, deps.env ?? process.env);
  log.info(`sandbox: ${sandbox.kind}${sandbox.reason ? ` (${sandbox.reason})` : ''}`);
  // Containers an earlier run left (a kill -9, a crash) would hold stale sockets and memory.
  sandbox.reap?.();
  if (sandbox.reason?.includes('no rlimits'))
    log.warn('prlimit (util-linux) not found: sandboxes run without rlimits');
  if (sandbox.reason?.includes('no writable cgroup'))
    log.warn('no writable cgroup: bwrap sandboxes run without a process or memory cap');
  const db: Db = openDb(path.join(config.storeDir, 'messages.db'));
  db.abandonRuns(now());
  // Socket directories of runs a crash left behind: nothing listens on them any more.
  rmSync(path.join(config.dataDir, 'run'), { recursive: true, force: true });
  ensureGroupFolder(config, 'main', true);
  const credential = credentialFrom(config);
  if (!credential)
    log.warn('no model credential: set ANTHROPIC_API_KEY in .env; answering with a notice until then');
  const timers = {
    // Unref'd: a pending idle close or retry never keeps a stopped orchestrator alive.
    setTimer: (fn: () => void, ms: number) => setTimeout(fn, Math.min(ms, 2 ** 31 - 1)).unref(),
    clearTimer: (t: unknown) => clearTimeout(t as NodeJS.Timeout),
  };

  const resolve: Resolve =
    deps.egress?.resolve ??
    ((host) => lookup(host, { all: true, verbatim: true }).then((a) => a.map((x) => x.address)));
  /** The policy for a group's run: its own allowlist, else EGRESS_ALLOW; address refusals always. */
  const policyFor = (allow: readonly string[] | null | undefined) =>
    createEgressPolicy({ allow: allow ?? undefined, resolve, testAddresses: deps.egress?.testAddresses });
  const dial: Egress['dial'] =
    deps.egress?.dial ?? ((address, port) => net.connect({ host: address, port, noDelay: true }));

  const allowlistPath = deps.mountAllowlistPath ?? defaultAllowlistPath();
  /** A group's extra mounts that pass the allowlist as it is now; refusals are logged. */
  function extraMountsFor(group: Group): Mount[] {
    if (group.mounts.length === 0) return [];
    let list: MountAllowlist | undefined;
    try {
      list = readAllowlist(allowlistPath);
    } catch (err) {
      log.warn(`group ${group.folder}: mount allowlist ${allowlistPath}: ${(err as Error).message}`);
    }
    return group.mounts.flatMap((m) => {
      const r = checkExtraMount(m, list, realpathSync, [config.projectRoot, config.home]);
      if (r.ok) return [r.mount];
      log.warn(`group ${group.folder}: extra mount ${m.host} refused: ${r.reason}`);
      return [];
    });
  }

  const channels: Channel[] = [];
  const outbox = createOutbox({ db, channels: () => channels, log, now, ...timers });

  /** Commits a one-line notice to a chat; with `cursor`, its messages up to there are processed. */
  function notice(chatJid: string, text: string, cursor?: number): void {
    db.enqueueReply({ chatJid, text, cursor, now: now() });
    outbox.kick();
  }

  const tasks = taskStore(db);
  tasks.abandonRuns(now());
  /** Ends a task run; a failure is told in its chat, and the third in a row pauses the task. */
  function finishTaskRun(runId: number, task: { id: string; chatJid: string }, r: Outcome) {
    const paused = tasks.finishRun(runId, now(), r);
    if (!r.ok) notice(task.chatJid, `Scheduled task ${task.id} failed: ${r.error ?? 'unknown error'}`);
    if (paused)
      notice(task.chatJid, `Scheduled task ${task.id} failed ${MAX_FAILURES} times in a row and is paused.`);
  }
  const summary = (text: string) => (text.length > 500 ? `${text.slice(0, 499)}…` : text);
  /** Task runs whose prompt was a message of this chat, now answered (or failed). */
  function settleChatRuns(chatJid: string, upTo: number, r: Outcome) {
    for (const run of tasks.pendingInChat(chatJid, upTo)) {
      const task = tasks.get(run.taskId);
      if (task) finishTaskRun(run.id, task, r);
    }
  }
  const isolated = new Map<string, Claimed>();
  /** Provenance commits in flight: stop waits for them. */
  const commits = new Set<Promise<unknown>>();
  const scheduler = startScheduler({
    store: tasks,
    now,
    ...(deps.schedulerTimers ?? timers),
    run: (c) => {
      if (!db.group(c.task.chatJid)) {
        finishTaskRun(c.runId, c.task, {
          ok: false,
          error: `chat ${c.task.chatJid} is no longer registered`,
        });
      } else if (c.task.contextMode === 'isolated' && overDailyBudget(c.task.groupFolder)) {
        finishTaskRun(c.runId, c.task, { ok: false, error: 'daily budget reached' });
      } else if (c.task.contextMode === 'isolated') {
        const key = `${TASK_RUN}${c.runId}`;
        isolated.set(key, c);
        queue.enqueue(key);
      } else route(c.task.chatJid);
    },
  });
  // `nanoclaw tasks pause|resume|cancel` touches a file here: re-arm for the new next run.
  mkdirSync(config.dataDir, { recursive: true });
  const watcher = watch(config.dataDir, (_event, name) => {
    if (name === TASKS_CHANGED) scheduler.changed();
  });
  watcher.on('error', (err) => log.warn(`watching ${config.dataDir}: ${err.message}`));
  const toolsFor = (group: Group): ToolContext => ({
    group,
    db,
    tasks,
    log,
    now,
    timezone: config.timezone,
    assistantName: config.assistantName,
    groupsDir: config.groupsDir,
    scheduleChanged: () => scheduler.changed(),
    delivered: () => outbox.kick(),
    registered: (g) => ensureGroupFolder(config, g.folder, g.isMain),
  });

  const queue = createGroupQueue({
    maxConcurrent: config.maxConcurrentAgents,
    now,
    ...timers,
    retryBaseMs: deps.retryBaseMs,
    log: (line) => log.warn(line),
    startAgent: (key, hooks) => {
      const claimed = isolated.get(key);
      const jid = claimed ? claimed.task.chatJid : key;
      const group = db.group(jid);
      if (group) ensureGroupFolder(config, group.folder, group.isMain);
      return startAgentSession(
        {
          config,
          db,
          sandbox,
          credential: credential as ModelCredential,
          log,
          now,
          ...timers,
          replied: () => outbox.kick(),
          extraMounts: extraMountsFor,
          egress: (group) => ({
            decide: policyFor(group.egressAllow ?? config.egressAllow),
            dial,
            onRefuse: (line) => log.warn(`group ${group.folder}: egress refused ${line}`),
          }),
          working: (chatJid, w) => channels.find((c) => c.owns(chatJid))?.setWorking(chatJid, w),
          tools: toolsFor,
          turnDone: (t) => {
            // What the run changed in the folder goes into its history, outside the sandbox.
            if (group) {
              const commit = commitFolder(
                config,
                group.folder,
                `run in ${jid}${t.error ? ` (failed: ${t.error})` : ''}`,
              )
                .catch((err: Error) => log.warn(`group ${group.folder}: provenance: ${err.message}`))
                .finally(() => commits.delete(commit));
              commits.add(commit);
            }
            if (claimed) {
              isolated.delete(key);
              const r = t.error ? { ok: false, error: t.error } : { ok: true, result: summary(t.text) };
              finishTaskRun(claimed.runId, claimed.task, r);
            } else if (t.upTo !== undefined)
              settleChatRuns(jid, t.upTo, { ok: true, result: summary(t.text) });
          },
        },
        jid,
        hooks,
        ...(claimed ? [{ prompt: claimed.task.prompt }] : []),
      );
    },
    onGiveUp: (key, error, tries) => {
      log.error(`group ${key}: giving up after ${tries} tries: ${error}`);
      const claimed = isolated.get(key);
      if (claimed) {
        isolated.delete(key);
        finishTaskRun(claimed.runId, claimed.task, { ok: false, error });
        return;
      }
      settleChatRuns(key, db.latestMessageId(key), { ok: false, error });
      notice(key, `Sorry, I could not answer (${error}). I will try again with your next message.`);
    },
  });

  function route(jid: string): void {
    const group = db.group(jid);
    if (!group) return;
    if (!credential) {
      notice(jid, NO_CREDENTIAL_NOTICE);
      return;
    }
    const over = overDailyBudget(group.folder);
    if (over) {
      // Answered with the one line, not kept for tomorrow; a scheduled prompt among them fails.
      const upTo = db.latestMessageId(jid);
      settleChatRuns(jid, upTo, { ok: false, error: 'daily budget reached' });
      notice(jid, over, upTo);
      return;
    }
    queue.enqueue(jid);
  }

  /** The one-line answer while a group is over DAILY_COST_USD today (in TIMEZONE), if it is. */
  function overDailyBudget(folder: string): string | undefined {
    const budget = config.dailyCostUsd;
    if (budget === undefined) return undefined;
    if (db.costSince(folder, startOfDay(now(), config.timezone)) < budget) return undefined;
    return `Today's budget of $${budget} (DAILY_COST_USD) is used up: I will answer again tomorrow.`;
  }

  /** `/new` and `/stop`, from someone who may wake the agent; answered with one line. */
  function command(group: Group, name: string, messageId: number): void {
    db.advanceCursor(group.jid, messageId);
    if (name === 'stop') {
      notice(group.jid, queue.end(group.jid, 'kill') ? 'Stopped.' : 'Nothing was running.');
      return;
    }
    db.clearSession(group.folder);
    queue.end(group.jid, 'close');
    notice(group.jid, 'Started a new session: the earlier conversation is behind me, my notes are not.');
  }

  /** Who was told they are over SENDER_RATE_PER_MIN, and when (chat and sender). */
  const toldRate = new Map<string, number>();

  let intake = true;
  function ingest(m: InboundMessage): IngestResult {
    if (!intake) return { stored: false, reason: 'shutting down' };
    const group = db.group(m.chatJid);
    if (!group) {
      // Remembered for listing only; registered chats skip this write on the hot path.
      db.upsertChat(m.chatJid, m.chatName, m.chatJid.split(':')[0] ?? '', m.at);
      return { stored: false, reason: `chat ${m.chatJid} is not registered` };
    }
    // Past SENDER_RATE_PER_MIN a member's messages are stored but never wake the agent (main
    // chats are the owner's and exempt); the sender is told once a minute at most.
    const overRate =
      !group.isMain &&
      !m.fromMe &&
      m.mayWake !== false &&
      db.recentWakers(m.chatJid, m.sender, m.at - 60_000) >= config.senderRatePerMin;
    const { id, inserted } = db.insertMessage({
      ...m,
      isBot: m.isBot ?? false,
      fromMe: m.fromMe ?? false,
      ...(overRate ? { mayWake: false } : {}),
    });
    const result = { stored: true as const, id, duplicate: !inserted };
    if (!inserted || m.fromMe) return result;
    const cmd =
      m.mayWake !== false && !overRate ? COMMAND.exec(m.text.trim())?.[1]?.toLowerCase() : undefined;
    if (cmd) command(group, cmd, id);
    else if (overRate) {
      const key = `${m.chatJid} ${m.sender}`;
      if (now() - (toldRate.get(key) ?? 0) >= 60_000) {
        // Entries older than a minute decide nothing: dropped, so the map cannot grow without end.
        for (const [k, at] of toldRate) if (now() - at >= 60_000) toldRate.delete(k);
        toldRate.set(key, now());
        notice(
          m.chatJid,
          `${m.senderName}, that is more than ${config.senderRatePerMin} messages a minute: I will not answer the rest of them.`,
        );
      }
    } else if (needsWake([m], group)) route(m.chatJid);
    return result;
  }

  const web: WebChannel = createWebChannel({
    host: config.webHost,
    port: config.webPort,
    token: config.webToken,
    assistantName: config.assistantName,
    projectRoot: config.projectRoot,
    db,
    log,
    now,
    ingest,
    status: () => ({
      channels: Object.fromEntries(channels.map((c) => [c.name, c.connected?.() === false ? 'down' : 'up'])),
      groups: db.groups().map((g) => ({
        chat: g.jid,
        name: g.name,
        folder: g.folder,
        main: g.isMain,
        trigger: g.requiresTrigger ? g.trigger : null,
      })),
      queue: queue.snapshot(),
      outboxPending: db.outboxPendingCount(),
      nextTasks: nextTasks(tasks),
      recentRuns: db.recentRuns(20),
    }),
  });
  channels.push(web, ...(deps.channels?.(ingest) ?? []));
  const registerMain = (jid: string) => registerMainChat(db, jid, config.assistantName, now());
  if (config.discordBotToken) {
    if (config.discordMainChannelId) registerMain(`discord:${config.discordMainChannelId}`);
    // Loaded only when configured: discord.js is ~38 MiB of RSS.
    const { createDiscordChannel } = await import('./channels/discord.js');
    channels.push(
      createDiscordChannel({
        token: config.discordBotToken,
        apiUrl: config.discordApiUrl,
        ownerId: config.discordOwnerId,
        wakeOnBots: config.discordWakeOnBots,
        attachmentMaxBytes: config.attachmentMaxBytes,
        groupsDir: config.groupsDir,
        db,
        log,
        ingest,
        ...(deps.discord?.typingIntervalMs ? { typingIntervalMs: deps.discord.typingIntervalMs } : {}),
      }),
    );
  }
  let tried = 0;
  try {
    for (const add of addedChannels) {
      const channel = await add({ config, db, log, now, ingest, registerMain });
      if (channel) channels.push(channel);
    }
    for (const c of channels) {
      tried++;
      await c.start();
    }
  } catch (err) {
    // A refused start leaves nothing behind (server, watcher, store): the caller may go on living.
    channels.splice(tried);
    await shutdown(1000).catch((e: unknown) => log.warn(`after a failed start: ${(e as Error).message}`));
    throw err;
  }
  log.info(`web chat on http://${config.webHost}:${web.port()}/`);

  // Recovery: deliver what a crash left in the outbox, answer what it left unanswered.
  outbox.kick();
  for (const jid of db.groupsWithUnprocessed()) {
    const group = db.group(jid);
    if (group && needsWake(db.messagesAfter(jid, group.cursor), group)) route(jid);
  }

  /** SIGTERM: stop intake, let live agents close (bounded), flush the outbox, close. */
  async function shutdown(graceMs: number): Promise<void> {
    intake = false;
    // One channel failing to stop or close must not keep the others, or the store, open.
    await Promise.allSettled(channels.map((c) => c.stop()));
    const bounded = <T>(p: Promise<T>, ms = graceMs) =>
      Promise.race([p, new Promise<void>((r) => setTimeout(r, ms).unref())]);
    scheduler.stop();
    watcher.close();
    await bounded(queue.stop());
    queue.kill();
    await bounded(queue.stop(), 3000);
    await bounded(outbox.flush());
    outbox.stop();
    await bounded(sandbox.close?.() ?? Promise.resolve());
    await bounded(Promise.all([...commits]));
    for (const c of channels)
      await c.close().catch((e: unknown) => log.warn(`${c.name}: ${(e as Error).message}`));
    db.close();
  }
  let stopping: Promise<void> | undefined;

  return {
    db,
    queue,
    web,
    ingest,
    /** Delivers what is due in the outbox now (used after committing replies outside a run). */
    deliver: () => outbox.kick(),
    /** Stops once; a second call (a second signal) waits for the first. */
    stop(graceMs = 10_000): Promise<void> {
      stopping ??= shutdown(graceMs);
      return stopping;
    },
  };
}

export type Orchestrator = Awaited<ReturnType<typeof startOrchestrator>>;
