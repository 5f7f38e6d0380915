// The store: SQLite in WAL mode, numbered migrations on PRAGMA user_version, typed queries.
// Rows become camelCase objects here (task rows: in scheduler.ts). Cursors are message row ids, never times.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { folderFromName, folderProblem } from './mounts.js';
import { triggerFor } from './router.js';

export interface Group {
  jid: string;
  name: string;
  folder: string;
  trigger: string;
  requiresTrigger: boolean;
  isMain: boolean;
  cursor: number;
  createdAt: number;
  /** The group's egress allowlist (host globs); null: the global EGRESS_ALLOW applies. */
  egressAllow: string[] | null;
  /** Extra mounts, judged against the mount allowlist at every agent start. */
  mounts: { host: string; name: string; rw: boolean }[];
}

export interface StoredMessage {
  id: number;
  chatJid: string;
  platformId: string;
  sender: string;
  senderName: string;
  text: string;
  at: number;
  isBot: boolean;
  fromMe: boolean;
  /** False for messages that may never wake the agent (bots, non-owners in a main chat). */
  mayWake: boolean;
  /** The message @mentions the assistant (counts as the trigger). */
  mentionsMe: boolean;
  /** The platform thread it was posted in, under the chat (replies go there). */
  threadId: string | null;
  /** Guest paths of downloaded attachments. */
  attachments: string[];
}

export interface OutboxRow {
  id: number;
  chatJid: string;
  text: string;
  sender: string | null;
  replyTo: string | null;
  threadId: string | null;
  /** A file in the group folder to post (host path). */
  file: string | null;
  status: 'pending' | 'sent' | 'failed';
  attempts: number;
  nextAttemptAt: number;
  createdAt: number;
}

export interface RunRow {
  id: number;
  groupFolder: string;
  chatJid: string;
  startedAt: number;
  endedAt: number | null;
  status: 'running' | 'ok' | 'error';
  inputTokens: number;
  outputTokens: number;
  costUsd: number;
  error: string | null;
}

export type NewMessage = Omit<StoredMessage, 'id' | 'mayWake' | 'mentionsMe' | 'threadId' | 'attachments'> &
  Partial<Pick<StoredMessage, 'mayWake' | 'mentionsMe' | 'threadId' | 'attachments'>>;
export type NewGroup = Omit<Group, 'cursor' | 'createdAt' | 'egressAllow' | 'mounts'>;

const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE chats (
    jid TEXT PRIMARY KEY, name TEXT NOT NULL, channel TEXT NOT NULL, seen_at INTEGER NOT NULL
  );
  CREATE TABLE groups (
    jid TEXT PRIMARY KEY, name TEXT NOT NULL, folder TEXT NOT NULL UNIQUE,
    trigger TEXT NOT NULL, requires_trigger INTEGER NOT NULL, is_main INTEGER NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL
  );
  CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, chat_jid TEXT NOT NULL, platform_id TEXT NOT NULL,
    sender TEXT NOT NULL, sender_name TEXT NOT NULL, text TEXT NOT NULL, at INTEGER NOT NULL,
    is_bot INTEGER NOT NULL DEFAULT 0, from_me INTEGER NOT NULL DEFAULT 0,
    UNIQUE (chat_jid, platform_id)
  );
  CREATE INDEX messages_chat ON messages (chat_jid, id);
  CREATE TABLE sessions (
    group_folder TEXT PRIMARY KEY, session_id TEXT NOT NULL, updated_at INTEGER NOT NULL,
    total_cost_usd REAL NOT NULL DEFAULT 0
  );
  CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, chat_jid TEXT NOT NULL, text TEXT NOT NULL,
    sender TEXT, reply_to TEXT, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL, sent_at INTEGER, platform_id TEXT, error TEXT
  );
  CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
  CREATE INDEX outbox_chat ON outbox (chat_jid, id);
  CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, group_folder TEXT NOT NULL, chat_jid TEXT NOT NULL,
    started_at INTEGER NOT NULL, ended_at INTEGER, status TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0, session_id TEXT, error TEXT
  );
  INSERT INTO chats (jid, name, channel, seen_at) VALUES ('web:main', 'Web chat', 'web', 0);
  INSERT INTO groups (jid, name, folder, trigger, requires_trigger, is_main, created_at)
    VALUES ('web:main', 'Web chat', 'main', '', 0, 1, 0);
  `,
  `
  ALTER TABLE messages ADD COLUMN may_wake INTEGER NOT NULL DEFAULT 1;
  ALTER TABLE messages ADD COLUMN mentions_me INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE messages ADD COLUMN thread_id TEXT;
  ALTER TABLE messages ADD COLUMN attachments TEXT;
  ALTER TABLE outbox ADD COLUMN thread_id TEXT;
  ALTER TABLE outbox ADD COLUMN file TEXT;
  `,
  `
  ALTER TABLE groups ADD COLUMN egress_allow TEXT;
  `,
  `
  ALTER TABLE groups ADD COLUMN mounts TEXT;
  `,
  `
  CREATE TABLE tasks (
    id TEXT PRIMARY KEY, group_folder TEXT NOT NULL, chat_jid TEXT NOT NULL, prompt TEXT NOT NULL,
    schedule_type TEXT NOT NULL, schedule_value TEXT NOT NULL, timezone TEXT NOT NULL,
    context_mode TEXT NOT NULL, status TEXT NOT NULL, next_run INTEGER,
    failures INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL
  );
  CREATE INDEX tasks_due ON tasks (status, next_run);
  CREATE TABLE task_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, due_at INTEGER NOT NULL,
    started_at INTEGER NOT NULL, ended_at INTEGER, status TEXT NOT NULL, result TEXT, error TEXT
  );
  CREATE INDEX task_runs_task ON task_runs (task_id, id);
  ALTER TABLE messages ADD COLUMN task_run_id INTEGER;
  `,
];

/** The schema version this NanoClaw migrates a store to. */
export const SCHEMA_VERSION = MIGRATIONS.length;

type Row = Record<string, unknown>;
const num = (v: unknown): number => Number(v ?? 0);
const str = (v: unknown): string => String(v ?? '');
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

const toGroup = (r: Row): Group => ({
  jid: str(r.jid),
  name: str(r.name),
  folder: str(r.folder),
  trigger: str(r.trigger),
  requiresTrigger: r.requires_trigger === 1,
  isMain: r.is_main === 1,
  cursor: num(r.cursor),
  createdAt: num(r.created_at),
  egressAllow: r.egress_allow ? (JSON.parse(str(r.egress_allow)) as string[]) : null,
  mounts: r.mounts ? (JSON.parse(str(r.mounts)) as Group['mounts']) : [],
});
const toMessage = (r: Row): StoredMessage => ({
  id: num(r.id),
  chatJid: str(r.chat_jid),
  platformId: str(r.platform_id),
  sender: str(r.sender),
  senderName: str(r.sender_name),
  text: str(r.text),
  at: num(r.at),
  isBot: r.is_bot === 1,
  fromMe: r.from_me === 1,
  mayWake: r.may_wake !== 0,
  mentionsMe: r.mentions_me === 1,
  threadId: strOrNull(r.thread_id),
  attachments: r.attachments ? (JSON.parse(str(r.attachments)) as string[]) : [],
});
const toOutbox = (r: Row): OutboxRow => ({
  id: num(r.id),
  chatJid: str(r.chat_jid),
  text: str(r.text),
  sender: strOrNull(r.sender),
  replyTo: strOrNull(r.reply_to),
  threadId: strOrNull(r.thread_id),
  file: strOrNull(r.file),
  status: str(r.status) as OutboxRow['status'],
  attempts: num(r.attempts),
  nextAttemptAt: num(r.next_attempt_at),
  createdAt: num(r.created_at),
});
const toRun = (r: Row): RunRow => ({
  id: num(r.id),
  groupFolder: str(r.group_folder),
  chatJid: str(r.chat_jid),
  startedAt: num(r.started_at),
  endedAt: r.ended_at === null ? null : num(r.ended_at),
  status: str(r.status) as RunRow['status'],
  inputTokens: num(r.input_tokens),
  outputTokens: num(r.output_tokens),
  costUsd: num(r.cost_usd),
  error: strOrNull(r.error),
});

export type Db = ReturnType<typeof openDb>;

/** A chat id: `<channel>:<id>`. */
/** The platform id of a scheduled task's prompt stored as a chat message: `task-run-<run id>`. */
export const TASK_PROMPT_ID = 'task-run-';
const CHAT_ID = /^[a-z][a-z0-9-]{0,15}:[A-Za-z0-9_.@-]{1,128}$/;

/** What registering a chat would store (the CLI's `groups add`, main's `register_group`), or one
 * line saying why it cannot be registered. */
export function planGroup(
  db: Db,
  r: {
    chat: string;
    name: string;
    folder?: string;
    trigger?: string;
    requiresTrigger?: boolean;
    main?: boolean;
  },
  assistantName: string,
): NewGroup | string {
  if (!CHAT_ID.test(r.chat)) return `"${r.chat}" is not a chat id like discord:123456789 or web:main`;
  if (!r.name.trim()) return 'a group needs a name';
  const folder = r.folder ?? folderFromName(r.name);
  const problem = folderProblem(folder);
  if (problem) return problem;
  if (db.group(r.chat)) return `${r.chat} is already registered (remove it first)`;
  const owner = db.groupByFolder(folder);
  if (owner) return `folder "${folder}" already belongs to ${owner.jid}: choose another folder`;
  const trigger = r.trigger ?? triggerFor(assistantName);
  if (!/^@?[\p{L}\p{N}_-]{1,32}$/u.test(trigger))
    return `trigger "${trigger}" must be a word like @${assistantName}`;
  const isMain = r.main ?? false;
  return {
    jid: r.chat,
    name: r.name.trim(),
    folder,
    trigger: trigger.startsWith('@') ? trigger : `@${trigger}`,
    requiresTrigger: !isMain && (r.requiresTrigger ?? true),
    isMain,
  };
}

/** Opens (creating and migrating) the store. `:memory:` gives the same schema in memory. */
export function openDb(file: string) {
  if (file !== ':memory:') mkdirSync(path.dirname(file), { recursive: true });
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  migrate(db);

  // Each statement is prepared once, on first use, and kept. Parameters: an array for `?`, an
  // object for `@name`.
  const prepared = new Map<string, Database.Statement>();
  type Params = unknown[] | Record<string, unknown>;
  const statement = (sql: string): Database.Statement => {
    const s = prepared.get(sql) ?? db.prepare(sql);
    prepared.set(sql, s);
    return s;
  };
  const run = (sql: string, params: Params = []) => statement(sql).run(params);
  const one = (sql: string, params: Params = []) => statement(sql).get(params) as Row | undefined;
  const all = (sql: string, params: Params = []) => statement(sql).all(params) as Row[];
  const group = (jid: string): Group | undefined => {
    const r = one('SELECT * FROM groups WHERE jid = ?', [jid]);
    return r && toGroup(r);
  };
  const advanceCursor = (jid: string, to: number): void => {
    run('UPDATE groups SET cursor = max(cursor, ?) WHERE jid = ?', [to, jid]);
  };

  return {
    raw: db,
    close: () => db.close(),
    /** Queries on the store's connection, for the task store. */
    run,
    one,
    all,

    upsertChat(jid: string, name: string, channel: string, at: number): void {
      run(
        `INSERT INTO chats (jid, name, channel, seen_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (jid) DO UPDATE SET name = excluded.name, seen_at = excluded.seen_at`,
        [jid, name, channel, at],
      );
    },
    /** Every chat a channel has seen (registered or not), most recent first. */
    chats(): { jid: string; name: string; channel: string; seenAt: number }[] {
      return all('SELECT * FROM chats ORDER BY seen_at DESC, jid').map((r) => ({
        jid: str(r.jid),
        name: str(r.name),
        channel: str(r.channel),
        seenAt: num(r.seen_at),
      }));
    },
    /** Stores a message once per (chat, platform id); returns its row id and whether it is new. */
    insertMessage(m: NewMessage): { id: number; inserted: boolean } {
      const info = run(
        `INSERT INTO messages (chat_jid, platform_id, sender, sender_name, text, at, is_bot, from_me,
           may_wake, mentions_me, thread_id, attachments)
         VALUES (@chatJid, @platformId, @sender, @senderName, @text, @at, @isBot, @fromMe, @mayWake,
           @mentionsMe, @threadId, @attachments) ON CONFLICT (chat_jid, platform_id) DO NOTHING`,
        {
          ...m,
          isBot: m.isBot ? 1 : 0,
          fromMe: m.fromMe ? 1 : 0,
          mayWake: m.mayWake === false ? 0 : 1,
          mentionsMe: m.mentionsMe ? 1 : 0,
          threadId: m.threadId ?? null,
          attachments: m.attachments?.length ? JSON.stringify(m.attachments) : null,
        },
      );
      if (info.changes === 1) return { id: Number(info.lastInsertRowid), inserted: true };
      const row = one('SELECT id FROM messages WHERE chat_jid = @chatJid AND platform_id = @platformId', m);
      return { id: num(row?.id), inserted: false };
    },
    messagesAfter(chatJid: string, afterId: number, limit = 10_000): StoredMessage[] {
      const sql = 'SELECT * FROM messages WHERE chat_jid = ? AND id > ? ORDER BY id LIMIT ?';
      return all(sql, [chatJid, afterId, limit]).map(toMessage);
    },
    /** The platform id of the newest stored message posted in the chat itself (not a thread). */
    lastPlatformId(chatJid: string): string | undefined {
      // A scheduled task's prompt is stored in its chat but never came from the platform.
      const r = one(
        `SELECT platform_id FROM messages WHERE chat_jid = ? AND thread_id IS NULL
         AND platform_id NOT LIKE '${TASK_PROMPT_ID}%' ORDER BY id DESC LIMIT 1`,
        [chatJid],
      );
      return r ? str(r.platform_id) : undefined;
    },
    latestMessageId(chatJid: string): number {
      return num(one('SELECT coalesce(max(id), 0) AS id FROM messages WHERE chat_jid = ?', [chatJid])?.id);
    },

    group,
    groupByFolder(folder: string): Group | undefined {
      const r = one('SELECT * FROM groups WHERE folder = ?', [folder]);
      return r && toGroup(r);
    },
    groups(): Group[] {
      return all('SELECT * FROM groups ORDER BY created_at, jid').map(toGroup);
    },
    /** Registers a chat; its cursor starts at the chat's latest message, so history is context, not backlog. */
    addGroup(g: NewGroup, now: number): Group {
      run(
        `INSERT INTO groups (jid, name, folder, trigger, requires_trigger, is_main, cursor, created_at)
         VALUES (@jid, @name, @folder, @trigger, @requiresTrigger, @isMain,
           (SELECT coalesce(max(id), 0) FROM messages WHERE chat_jid = @jid), @now)`,
        { ...g, requiresTrigger: g.requiresTrigger ? 1 : 0, isMain: g.isMain ? 1 : 0, now },
      );
      return group(g.jid) as Group;
    },
    /** Sets (or with null clears) a group's egress allowlist. */
    setGroupEgress(jid: string, allow: readonly string[] | null): void {
      run('UPDATE groups SET egress_allow = ? WHERE jid = ?', [allow ? JSON.stringify(allow) : null, jid]);
    },
    setGroupMounts(jid: string, mounts: Group['mounts']): void {
      run('UPDATE groups SET mounts = ? WHERE jid = ?', [mounts.length ? JSON.stringify(mounts) : null, jid]);
    },
    removeGroup(jid: string): boolean {
      return run('DELETE FROM groups WHERE jid = ?', [jid]).changes === 1;
    },
    advanceCursor,
    /** Chats of registered groups with stored messages past their cursor. */
    groupsWithUnprocessed(): string[] {
      return all(
        `SELECT g.jid FROM groups g WHERE EXISTS
           (SELECT 1 FROM messages m WHERE m.chat_jid = g.jid AND m.id > g.cursor AND m.from_me = 0)`,
      ).map((r) => str(r.jid));
    },

    /** The group's Claude session and the cumulative cost the CLI last reported for it. */
    session(folder: string): { id: string; totalCostUsd: number } | undefined {
      const r = one('SELECT session_id, total_cost_usd FROM sessions WHERE group_folder = ?', [folder]);
      return r ? { id: str(r.session_id), totalCostUsd: num(r.total_cost_usd) } : undefined;
    },
    /** A resumed session's results carry the running total saved in its transcript. */
    setSessionCost(folder: string, totalCostUsd: number): void {
      run('UPDATE sessions SET total_cost_usd = ? WHERE group_folder = ?', [totalCostUsd, folder]);
    },
    setSession(folder: string, sessionId: string, now: number): void {
      run(
        `INSERT INTO sessions (group_folder, session_id, updated_at) VALUES (?, ?, ?)
         ON CONFLICT (group_folder) DO UPDATE SET session_id = excluded.session_id, updated_at = excluded.updated_at,
           total_cost_usd = CASE WHEN session_id = excluded.session_id THEN total_cost_usd ELSE 0 END`,
        [folder, sessionId, now],
      );
    },
    clearSession(folder: string): void {
      run('DELETE FROM sessions WHERE group_folder = ?', [folder]);
    },

    enqueueReply: db.transaction(
      (r: {
        chatJid: string;
        text: string;
        sender?: string;
        replyTo?: string;
        threadId?: string;
        file?: string;
        cursor?: number;
        now: number;
      }): number => {
        const { lastInsertRowid } = run(
          `INSERT INTO outbox (chat_jid, text, sender, reply_to, thread_id, file, next_attempt_at, created_at)
           VALUES (@chatJid, @text, @sender, @replyTo, @threadId, @file, @now, @now)`,
          { sender: null, replyTo: null, threadId: null, file: null, ...r },
        );
        // The reply and the cursor move together: after a crash a batch is either answered and
        // marked, or neither (DESIGN, Invariant 1).
        if (r.cursor !== undefined) advanceCursor(r.chatJid, r.cursor);
        return Number(lastInsertRowid);
      },
    ),
    outboxDue(now: number): OutboxRow[] {
      return all(
        "SELECT * FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT 100",
        [now],
      ).map(toOutbox);
    },
    outboxNextDue(): number | undefined {
      const at = one("SELECT min(next_attempt_at) AS at FROM outbox WHERE status = 'pending'")?.at;
      return at === null ? undefined : num(at);
    },
    outboxPendingCount(): number {
      return num(one("SELECT count(*) AS n FROM outbox WHERE status = 'pending'")?.n);
    },
    outboxAfter(chatJid: string, afterId: number, limit = 1000): OutboxRow[] {
      const sql = 'SELECT * FROM outbox WHERE chat_jid = ? AND id > ? ORDER BY id LIMIT ?';
      return all(sql, [chatJid, afterId, limit]).map(toOutbox);
    },
    latestOutboxId(chatJid: string): number {
      const sql = "SELECT coalesce(max(id), 0) AS id FROM outbox WHERE chat_jid = ? AND status = 'sent'";
      return num(one(sql, [chatJid])?.id);
    },
    outboxRow(id: number): OutboxRow | undefined {
      const r = one('SELECT * FROM outbox WHERE id = ?', [id]);
      return r && toOutbox(r);
    },
    markSent(id: number, platformId: string | undefined, now: number): void {
      run(
        "UPDATE outbox SET status = 'sent', sent_at = ?, platform_id = ?, attempts = attempts + 1 WHERE id = ?",
        [now, platformId ?? null, id],
      );
    },
    markRetry(id: number, error: string, nextAt: number, final: boolean): void {
      run(
        'UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, error = ?, status = ? WHERE id = ?',
        [nextAt, error, final ? 'failed' : 'pending', id],
      );
    },

    startRun(groupFolder: string, chatJid: string, now: number): number {
      const sql = "INSERT INTO runs (group_folder, chat_jid, started_at, status) VALUES (?, ?, ?, 'running')";
      return Number(run(sql, [groupFolder, chatJid, now]).lastInsertRowid);
    },
    finishRun(
      id: number,
      r: {
        now: number;
        status: 'ok' | 'error';
        inputTokens: number;
        outputTokens: number;
        costUsd: number;
        sessionId?: string;
        error?: string;
      },
    ): void {
      run(
        `UPDATE runs SET ended_at = @now, status = @status, input_tokens = @inputTokens,
           output_tokens = @outputTokens, cost_usd = @costUsd, session_id = @sessionId, error = @error
         WHERE id = @id`,
        { sessionId: null, error: null, ...r, id },
      );
    },
    /** Runs left 'running' by a crash are closed as errors at start. */
    abandonRuns(now: number): void {
      run(
        "UPDATE runs SET status = 'error', error = 'orchestrator stopped', ended_at = ? WHERE status = 'running'",
        [now],
      );
    },
    recentRuns(limit = 20): RunRow[] {
      return all('SELECT * FROM runs ORDER BY id DESC LIMIT ?', [limit]).map(toRun);
    },
    /** What a group's runs cost since `since` (their start). */
    costSince(folder: string, since: number): number {
      const sql =
        'SELECT coalesce(sum(cost_usd), 0) AS c FROM runs WHERE group_folder = ? AND started_at >= ?';
      return num(one(sql, [folder, since])?.c);
    },
    /** Messages from `sender` in the chat since `since` that could wake the agent. */
    recentWakers(chatJid: string, sender: string, since: number): number {
      const sql = `SELECT count(*) AS n FROM messages WHERE chat_jid = ? AND sender = ? AND at > ?
        AND may_wake = 1 AND from_me = 0`;
      return num(one(sql, [chatJid, sender, since])?.n);
    },
  };
}

function migrate(db: Database.Database): void {
  const current = Number(db.pragma('user_version', { simple: true }));
  if (current > MIGRATIONS.length) {
    throw new Error(
      `store schema version ${current} is newer than this NanoClaw (${MIGRATIONS.length}): upgrade NanoClaw`,
    );
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v] as string);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
