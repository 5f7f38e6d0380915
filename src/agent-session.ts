// One live agent for one group. The Agent SDK's query() runs here, in the orchestrator, with
// streaming input so follow-ups join the live session; through spawnClaudeCodeProcess it starts
// the Claude Code CLI inside the group's sandbox. Everything the CLI sends back is untrusted.
//
// Bookkeeping: each prompt handed to the agent is a batch (a uuid and its newest message id). A
// reply is committed to the outbox together with the cursor moving to the batch that started the
// turn (one transaction), so after a crash a batch is either answered and marked or neither. At
// the end of a turn the result names every prompt the turn consumed (follow-ups may be folded in
// mid-turn, or wait for a turn of their own), and the cursor moves past those; a turn that ends
// without any text still marks its batches processed.
import { randomUUID } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { SDKMessage, SDKUserMessage, SpawnOptions } from '@anthropic-ai/claude-agent-sdk';
import { nanoclawServer, type ToolContext } from './agent-tools.js';
import type { Config } from './config.js';
import { type Egress, type ModelCredential, openModelSocket } from './credential-proxy.js';
import type { Db, Group } from './db.js';
import type { AgentHooks, AgentOutcome, LiveAgent } from './group-queue.js';
import type { Logger } from './log.js';
import { GUEST, groupMounts, groupPaths } from './mounts.js';
import { cleanOutput, escapeXml, formatPrompt, needsWake } from './router.js';
import { type Mount, parseSize, type Sandbox } from './sandbox/index.js';

const MAX_REPLY_CHARS = 40_000;

export interface SessionDeps {
  config: Config;
  db: Db;
  sandbox: Sandbox;
  credential: ModelCredential;
  log: Logger;
  now: () => number;
  /** Called after a reply was committed to the outbox. */
  replied: (chatJid: string) => void;
  working: (chatJid: string, working: boolean) => void;
  /** The group's extra mounts that pass the allowlist now. */
  extraMounts?: (group: Group) => Mount[];
  /** The egress policy for this group's runs (tied to its socket, never to a request). */
  egress?: (group: Group) => Egress;
  setTimer: (fn: () => void, ms: number) => unknown;
  clearTimer: (t: unknown) => void;
  /** The context of the session's `nanoclaw` tools (none: no tools). */
  tools?: (group: Group) => ToolContext;
  /** A turn ended: the messages up to `upTo` are answered (or, with `error`, failed). */
  turnDone?: (t: { groupJid: string; upTo?: number; text: string; error?: string }) => void;
}

/** An AsyncIterable the SDK reads prompts from; `end()` closes the session's input. */
class Inbox implements AsyncIterable<SDKUserMessage> {
  private items: SDKUserMessage[] = [];
  private wakeUp: (() => void) | undefined;
  private ended = false;

  push(text: string, uuid: string): void {
    const msg = { type: 'user', message: { role: 'user', content: text }, parent_tool_use_id: null, uuid };
    this.items.push(msg as SDKUserMessage);
    this.wakeUp?.();
  }

  end(): void {
    this.ended = true;
    this.wakeUp?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<SDKUserMessage> {
    for (;;) {
      const item = this.items.shift();
      if (item) yield item;
      else if (this.ended) return;
      else await new Promise<void>((resolve) => (this.wakeUp = resolve));
    }
  }
}

export function systemPromptFor(config: Config, group: Group): string {
  // Claude Code loads only the cwd's CLAUDE.md (an import from outside it needs an approval no one
  // can give here), so the shared notes come with the system prompt, read at each agent start.
  let shared = '';
  try {
    shared = readFileSync(path.join(groupPaths(config, group.folder).global, 'CLAUDE.md'), 'utf8')
      .slice(0, 20_000)
      .trim();
  } catch {
    shared = ''; // no shared notes yet
  }
  return [
    `You are ${config.assistantName}, a personal assistant in the chat "${group.name}".`,
    'Chat messages reach you as <messages> with one <message sender="…" time="…"> per message.',
    'Your text replies are sent to the chat as they are written; keep them short and plain.',
    'Wrap anything the chat should not see in <internal>…</internal>.',
    `Your files live in ${GUEST.group} (your working directory, kept between conversations); its CLAUDE.md is your memory.`,
    `Shared notes are in ${GUEST.global}/CLAUDE.md (${group.isMain ? 'yours to edit: every chat reads them' : 'read-only'}).`,
    ...(shared ? ['<shared-notes>', escapeXml(shared), '</shared-notes>'] : []),
  ].join('\n');
}

/** With `oneShot` (a task in an isolated context) the run takes one prompt in a fresh session never stored. */
export function startAgentSession(
  deps: SessionDeps,
  groupJid: string,
  hooks: AgentHooks,
  oneShot?: { prompt: string },
): LiveAgent {
  const { config, db, log } = deps;
  const initial = db.group(groupJid);
  if (!initial) return { wake: () => false, close() {}, kill() {}, done: Promise.resolve({ ok: true }) };
  const group: Group = initial;
  const inbox = new Inbox();
  const abort = new AbortController();
  let delivered = group.cursor;
  /** Prompts handed over and not yet consumed by a finished turn, oldest first. */
  const batches: { uuid: string; maxId?: number; replyTo?: string; threadId?: string }[] = [];
  let turnText = '';
  let shotTaken = false;
  let busy = false;
  let closing = false;
  let killed = false;
  /** Set when a turn ended in an error result: the session is closed and the run retried. */
  let failure: string | undefined;
  let turnAnswered = false;
  let runId: number | undefined;
  const stored = oneShot ? undefined : db.session(group.folder);
  let sessionId = stored?.id;
  // Results report a running total that a resumed session continues from its transcript.
  let lastTotalCost = stored?.totalCostUsd ?? 0;
  let idleTimer: unknown;
  let silenceTimer: unknown;
  let child: ReturnType<Sandbox['spawn']> | undefined;
  let stderrTail = '';

  /** Formats and hands over what arrived since `delivered`, if it should wake the agent. */
  function takeWork(): boolean {
    if (oneShot) {
      if (shotTaken) return false;
      shotTaken = true;
      const uuid = randomUUID();
      batches.push({ uuid });
      inbox.push(oneShot.prompt, uuid);
      return true;
    }
    const current = db.group(groupJid);
    if (!current) return false;
    const pending = db.messagesAfter(groupJid, delivered).filter((m) => !m.fromMe);
    if (pending.length === 0 || !needsWake(pending, current)) return false;
    const uuid = randomUUID();
    delivered = pending[pending.length - 1]?.id ?? delivered;
    // The reply references the newest message that woke the agent, in its thread.
    const trigger = [...pending].reverse().find((m) => needsWake([m], current));
    batches.push({
      uuid,
      maxId: delivered,
      ...(trigger ? { replyTo: trigger.platformId } : {}),
      ...(trigger?.threadId ? { threadId: trigger.threadId } : {}),
    });
    inbox.push(formatPrompt(pending, { timezone: config.timezone }), uuid);
    return true;
  }

  function beginTurn(): void {
    busy = true;
    turnAnswered = false;
    deps.clearTimer(idleTimer);
    runId = db.startRun(group.folder, groupJid, deps.now());
    deps.working(groupJid, true);
    armSilence();
  }

  function armSilence(): void {
    deps.clearTimer(silenceTimer);
    silenceTimer = deps.setTimer(() => {
      log.warn(`group ${group.folder}: no output for ${config.agentTimeoutMs} ms, killing the agent`);
      kill();
    }, config.agentTimeoutMs);
  }

  function kill(): void {
    killed = true;
    closing = true;
    inbox.end();
    child?.kill('SIGKILL');
    abort.abort();
  }

  function close(): void {
    if (closing) return;
    closing = true;
    deps.clearTimer(idleTimer);
    inbox.end();
  }

  function endTurn(
    status: 'ok' | 'error',
    error?: string,
    usage = { inputTokens: 0, outputTokens: 0, costUsd: 0 },
  ) {
    if (runId !== undefined) {
      db.finishRun(runId, {
        now: deps.now(),
        status,
        ...usage,
        ...(sessionId ? { sessionId } : {}),
        ...(error ? { error } : {}),
      });
    }
    runId = undefined;
    busy = false;
    deps.clearTimer(silenceTimer);
    deps.working(groupJid, false);
  }

  function handle(msg: SDKMessage): void {
    if (busy) armSilence();
    if (msg.type === 'system' && msg.subtype === 'init') {
      if (msg.session_id && msg.session_id !== sessionId) {
        sessionId = msg.session_id;
        lastTotalCost = 0;
        if (!oneShot) db.setSession(group.folder, sessionId, deps.now());
      }
      return;
    }
    // An API failure arrives as a synthetic assistant message flagged `error`: not a reply.
    if (msg.type === 'assistant' && msg.parent_tool_use_id === null && !msg.error) {
      for (const block of msg.message.content) {
        if (block.type !== 'text') continue;
        let text = cleanOutput(block.text);
        if (text === '') continue;
        if (text.length > MAX_REPLY_CHARS) {
          log.warn(`group ${group.folder}: reply of ${text.length} characters cut to ${MAX_REPLY_CHARS}`);
          text = `${text.slice(0, MAX_REPLY_CHARS)}\n[… reply cut: ${text.length - MAX_REPLY_CHARS} characters left out]`;
        }
        const batch = batches[0];
        db.enqueueReply({
          chatJid: groupJid,
          text,
          ...(batch?.maxId !== undefined ? { cursor: batch.maxId } : {}),
          // Only the turn's first reply references the message it answers.
          ...(batch?.replyTo && !turnAnswered ? { replyTo: batch.replyTo } : {}),
          ...(batch?.threadId ? { threadId: batch.threadId } : {}),
          now: deps.now(),
        });
        turnAnswered = true;
        turnText += (turnText ? '\n' : '') + text;
        deps.replied(groupJid);
      }
      return;
    }
    if (msg.type === 'result') {
      const delta =
        msg.total_cost_usd >= lastTotalCost ? msg.total_cost_usd - lastTotalCost : msg.total_cost_usd;
      const costUsd = Math.round(delta * 1e9) / 1e9; // float noise from the subtraction
      const usage = { inputTokens: msg.usage.input_tokens, outputTokens: msg.usage.output_tokens, costUsd };
      lastTotalCost = msg.total_cost_usd;
      if (sessionId && !oneShot) db.setSessionCost(group.folder, lastTotalCost);
      if (msg.subtype === 'error_max_budget_usd') {
        // The CLI stopped at MAX_RUN_COST_USD before another model request: the run's prompts count
        // as answered (with this notice), and it is not retried.
        const upTo = Math.max(0, ...batches.map((b) => b.maxId ?? 0));
        const text = `I stopped: this run reached its budget of $${config.maxRunCostUsd} (MAX_RUN_COST_USD).`;
        db.enqueueReply({ chatJid: groupJid, text, ...(upTo > 0 ? { cursor: upTo } : {}), now: deps.now() });
        deps.replied(groupJid);
        batches.length = 0;
        deps.turnDone?.({ groupJid, text: turnText, error: 'run budget reached' });
        endTurn('error', 'run budget reached', usage);
        close();
        return;
      }
      const error = msg.is_error ? resultError(msg) : undefined;
      // A turn that failed before any reply leaves its batches for the retry; otherwise the
      // batches it consumed are done (a partly answered batch counts as answered).
      if (!error || turnAnswered) {
        const consumed = new Set(msg.user_message_uuids ?? [msg.user_message_uuid]);
        let done = batches.filter((b) => consumed.has(b.uuid));
        if (done.length === 0) done = batches.slice(0, 1); // an older CLI that names no prompt
        for (const b of done) batches.splice(batches.indexOf(b), 1);
        const upTo = Math.max(...done.map((b) => b.maxId ?? 0));
        if (upTo > 0) db.advanceCursor(groupJid, upTo);
        deps.turnDone?.({ groupJid, ...(upTo > 0 ? { upTo } : {}), text: turnText });
      } else deps.turnDone?.({ groupJid, text: turnText, error });
      turnText = '';
      endTurn(error ? 'error' : 'ok', error, usage);
      // In streaming mode an API error ends the turn, not the CLI. Close it: the queue retries the
      // unanswered batches in a fresh sandbox, with backoff.
      if (error && !turnAnswered) failure = error;
      // With a run budget each run gets a query of its own: the CLI counts the budget per query.
      if (failure || oneShot || config.maxRunCostUsd !== undefined) close();
      if (closing) return;
      // A prompt the turn did not consume is queued in the CLI: its turn starts at once.
      if (batches.length > 0) {
        beginTurn();
        return;
      }
      hooks.idle();
      deps.clearTimer(idleTimer);
      idleTimer = deps.setTimer(() => {
        log.info(`group ${group.folder}: idle for ${config.idleTimeoutMs} ms, closing the agent`);
        close();
      }, config.idleTimeoutMs);
    }
  }

  function spawnInSandbox(o: SpawnOptions) {
    const sdkEnv = Object.fromEntries(
      Object.entries(o.env).filter(
        (e): e is [string, string] =>
          (e[0].startsWith('CLAUDE_CODE_ENTRYPOINT') || e[0] === 'CLAUDE_AGENT_SDK_VERSION') &&
          e[1] !== undefined,
      ),
    );
    child = deps.sandbox.spawn({
      command: o.command,
      args: o.args,
      cwd: GUEST.group,
      label: group.folder,
      mounts: groupMounts(config, group, runDir, existsSync, deps.extraMounts?.(group) ?? []),
      limits: {
        memoryBytes: parseSize(config.sandboxMemory),
        cpus: config.sandboxCpus,
        pids: config.sandboxPids,
      },
      ...(deps.egress ? { egressSocket: `${GUEST.run}/api.sock` } : {}),
      ...(proxyUrl ? { proxyUrl } : {}),
      env: {
        PATH: '/usr/local/bin:/usr/bin:/bin',
        HOME: GUEST.home,
        USER: 'agent',
        SHELL: '/bin/bash',
        LANG: 'C.UTF-8',
        TZ: config.timezone,
        TMPDIR: '/tmp',
        CLAUDE_CODE_TMPDIR: '/tmp',
        CLAUDE_CONFIG_DIR: `${GUEST.home}/.claude`,
        ANTHROPIC_UNIX_SOCKET: `${GUEST.run}/api.sock`,
        ANTHROPIC_BASE_URL: 'http://localhost',
        // The per-run stand-in takes the form of the real credential, so the CLI speaks the
        // matching protocol (an OAuth token adds its beta header); the proxy swaps it.
        [deps.credential.type === 'oauth' ? 'CLAUDE_CODE_OAUTH_TOKEN' : 'ANTHROPIC_API_KEY']: token,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
        // Agent teams (teammates messaging each other) are still experimental in Claude Code.
        CLAUDE_CODE_EXPERIMENTAL_AGENT_TEAMS: '1',
        DISABLE_TELEMETRY: '1',
        DISABLE_AUTOUPDATER: '1',
        ...config.cliEnv,
        ...sdkEnv,
      },
    });
    child.stderr?.on('data', (d: Buffer) => {
      stderrTail = (stderrTail + d.toString('utf8')).slice(-2000);
    });
    return child;
  }

  const runDir = path.join(
    config.dataDir,
    'run',
    `${group.folder}-${process.pid}-${Date.now().toString(36)}`,
  );
  let token = '';
  let proxyUrl: string | undefined;

  async function run(): Promise<AgentOutcome> {
    if (!takeWork()) return { ok: true };
    beginTurn();
    const p = groupPaths(config, group.folder);
    mkdirSync(path.join(p.home, '.claude'), { recursive: true });
    const socket = await openModelSocket({
      dir: runDir,
      upstream: config.anthropicBaseUrl,
      credential: deps.credential,
      onError: (m) => log.warn(`group ${group.folder}: ${m}`),
      ...(deps.egress ? { egress: deps.egress(group) } : {}),
      ...(deps.sandbox.proxyHost ? { tcpHost: deps.sandbox.proxyHost } : {}),
    });
    token = socket.token;
    proxyUrl = socket.url;
    const archiveBeforeCompact = async (input: { transcript_path: string; session_id: string }) => {
      archiveTranscript(p, input.transcript_path, input.session_id, deps.now(), log, group.folder);
      return {};
    };
    log.info(
      `group ${group.folder}: agent starting in ${deps.sandbox.kind}${sessionId ? `, resuming ${sessionId}` : ''}`,
    );
    try {
      // Loaded at the first run, not at start: the SDK is ~28 MiB of an idle orchestrator's RSS.
      const sdk = await import('@anthropic-ai/claude-agent-sdk');
      const q = sdk.query({
        prompt: inbox,
        options: {
          cwd: p.group,
          ...(sessionId ? { resume: sessionId } : {}),
          ...(config.model ? { model: config.model } : {}),
          env: {},
          settingSources: ['project'],
          settings: { skipWebFetchPreflight: true, autoMemoryEnabled: true },
          hooks: { PreCompact: [{ hooks: [archiveBeforeCompact] }] },
          // Claude Code's own schedulers die with its session; tasks go through schedule_task.
          disallowedTools: ['CronCreate', 'CronList', 'CronDelete', 'ScheduleWakeup'],
          permissionMode: 'bypassPermissions',
          allowDangerouslySkipPermissions: true,
          systemPrompt: { type: 'preset', preset: 'claude_code', append: systemPromptFor(config, group) },
          abortController: abort,
          ...(config.maxRunCostUsd !== undefined ? { maxBudgetUsd: config.maxRunCostUsd } : {}),
          spawnClaudeCodeProcess: spawnInSandbox,
          ...(deps.tools ? { mcpServers: { nanoclaw: nanoclawServer(sdk, deps.tools(group)) } } : {}),
        },
      });
      for await (const msg of q) handle(msg);
      if (busy) endTurn('error', 'agent ended mid-turn');
      if (failure) return { ok: false, error: failure };
      return killed && !turnAnswered ? { ok: false, error: 'agent timed out' } : { ok: true };
    } catch (err) {
      const message = `${(err as Error).message}${stderrTail ? ` (stderr: ${stderrTail.trim().slice(-300)})` : ''}`;
      if (busy) endTurn('error', message);
      if (/No conversation found/i.test(message)) db.clearSession(group.folder);
      log.warn(`group ${group.folder}: agent failed: ${message}`);
      if (failure) return { ok: false, error: failure };
      // A turn that already answered, or a close we asked for, is not a failure to retry.
      return turnAnswered || (closing && !killed) ? { ok: true } : { ok: false, error: firstLine(message) };
    } finally {
      deps.clearTimer(idleTimer);
      deps.clearTimer(silenceTimer);
      child?.kill('SIGKILL');
      await socket.close();
    }
  }

  return {
    wake(): boolean {
      if (closing) return false;
      if (takeWork() && !busy) beginTurn();
      return true;
    },
    close,
    kill,
    done: run(),
  };
}

/**
 * Before Claude Code compacts a session, its transcript is kept as readable Markdown in the group
 * folder (`conversations/<date>-<session>.md`), so what was said survives the summary. The path
 * the CLI names is a guest path: only one under the group's Claude home is read. Written with
 * O_EXCL (never through a planted link) into a `conversations` directory that is not a symlink.
 */
export function archiveTranscript(
  p: { group: string; home: string },
  guestPath: string,
  sessionId: string,
  now: number,
  log: Logger,
  folder: string,
): void {
  const rel = path.posix.relative(GUEST.home, guestPath);
  if (rel.startsWith('..') || path.isAbsolute(rel)) return;
  try {
    const lines: string[] = [];
    for (const line of readFileSync(path.join(p.home, rel), 'utf8').split('\n')) {
      let entry: { type?: string; message?: { content?: unknown } };
      try {
        entry = JSON.parse(line);
      } catch {
        continue; // a partial or foreign line: skipped
      }
      if (entry.type !== 'user' && entry.type !== 'assistant') continue;
      const content = entry.message?.content;
      const blocks: { type?: string; text?: string }[] =
        typeof content === 'string'
          ? [{ type: 'text', text: content }]
          : Array.isArray(content)
            ? content
            : [];
      const text = blocks.flatMap((b) => (b.type === 'text' && b.text ? [b.text] : [])).join('\n');
      if (text.trim()) lines.push(`**${entry.type === 'user' ? 'Chat' : 'Assistant'}:** ${text.trim()}\n`);
    }
    const dir = path.join(p.group, 'conversations');
    mkdirSync(dir, { recursive: true });
    if (lstatSync(dir).isSymbolicLink()) throw new Error('conversations/ is a symlink');
    const name = `${new Date(now).toISOString().slice(0, 10)}-${sessionId.slice(0, 8)}-${now}.md`;
    writeFileSync(path.join(dir, name), `# Conversation ${sessionId}\n\n${lines.join('\n')}`, { flag: 'wx' });
  } catch (err) {
    log.warn(`group ${folder}: transcript not archived: ${(err as Error).message}`);
  }
}

/** The one line a failed result is told by; never empty (an empty error would count as success). */
export function resultError(msg: Extract<SDKMessage, { type: 'result' }>): string {
  if (msg.subtype === 'success') return firstLine(msg.result || 'the model returned an error');
  return firstLine(msg.errors?.join('; ') || msg.subtype);
}

function firstLine(s: string): string {
  return (s.split('\n').find((l) => l.trim() !== '') ?? 'an error without a message').trim().slice(0, 300);
}
