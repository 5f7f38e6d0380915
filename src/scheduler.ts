// Scheduled tasks: what a schedule means (pure: cron with time zones through croner, intervals,
// one-off times), the tasks in the store, and a timer to the next due task (no polling; timers
// beyond Node's 2^31−1 ms limit are chained). A due task is claimed before it runs: its next run
// moves on in the same transaction that records the run (and, for a task in the group's context,
// stores its prompt as a message of its chat), so a restart or an overlap never fires it twice,
// and runs missed while NanoClaw was down run once, not once per missed slot.
import { randomBytes } from 'node:crypto';
import { Cron } from 'croner';
import { type Db, TASK_PROMPT_ID } from './db.js';

export type Schedule =
  | { type: 'cron'; value: string }
  | { type: 'interval'; value: number }
  | { type: 'once'; value: number };

export interface Task {
  id: string;
  groupFolder: string;
  chatJid: string;
  prompt: string;
  schedule: Schedule;
  timezone: string;
  contextMode: 'group' | 'isolated';
  status: 'active' | 'paused' | 'done' | 'cancelled';
  nextRun: number | null;
  failures: number;
  createdAt: number;
}

export interface TaskRun {
  id: number;
  taskId: string;
  dueAt: number;
  startedAt: number;
  endedAt: number | null;
  status: 'running' | 'ok' | 'error';
  result: string | null;
  error: string | null;
}

const MIN_INTERVAL_MS = 60_000;
const MAX_TIMER_MS = 2 ** 31 - 1;
/** A task that fails this many times in a row is paused. */
export const MAX_FAILURES = 3;

/** Whether `tz` is an IANA time zone this runtime knows. */
export function validTimezone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false; // RangeError: unknown zone
  }
}

/** The UTC offset (ms) of `tz` at instant `at`. */
function offsetAt(at: number, tz: string): number {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: tz,
    hourCycle: 'h23',
    year: 'numeric',
    month: 'numeric',
    day: 'numeric',
    hour: 'numeric',
    minute: 'numeric',
    second: 'numeric',
  }).formatToParts(at);
  const n = (t: string) => Number(parts.find((p) => p.type === t)?.value);
  return (
    Date.UTC(n('year'), n('month') - 1, n('day'), n('hour'), n('minute'), n('second')) - (at - (at % 1000))
  );
}

/** Local midnight before `t` in `tz`; right on days a DST change moved the clock since midnight. */
export function startOfDay(t: number, tz: string): number {
  const fmt = new Intl.DateTimeFormat('en-US', { timeZone: tz, hourCycle: 'h23', timeStyle: 'medium' });
  const wall = (x: number) => {
    const [h = 0, m = 0, sec = 0] = fmt.format(x).split(':').map(Number);
    return ((h * 60 + m) * 60 + sec) * 1000 + (x % 1000);
  };
  const guess = t - wall(t);
  const off = wall(guess); // 0, or the hour the clock jumped: 23:00 (spring) or 01:00 (autumn)
  return off === 0 ? guess : off > 12 * 3_600_000 ? guess + 86_400_000 - off : guess - off;
}

const LOCAL_TIME = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?$/;

/** A wall-clock time in `tz` → epoch ms (the later reading, in a gap or overlap of DST). */
function zonedToUtc(local: RegExpExecArray, tz: string): number {
  const [y, mo, d, h, mi, s] = local.slice(1).map((v) => Number(v ?? 0)) as number[];
  const guess = Date.UTC(y as number, (mo as number) - 1, d, h, mi, s);
  // The offsets on either side of any change that night; a reading is valid when the zone has
  // that offset at that instant (an overlap has two, a gap none: then the later one is taken).
  const candidates = [offsetAt(guess - 43_200_000, tz), offsetAt(guess + 43_200_000, tz)].map(
    (o) => guess - o,
  );
  const valid = candidates.filter((t) => guess - t === offsetAt(t, tz));
  return Math.max(...(valid.length > 0 ? valid : candidates));
}

export interface ScheduleInput {
  cron?: string | undefined;
  every_ms?: number | undefined;
  at?: string | undefined;
  timezone?: string | undefined;
}

/**
 * Checks a tool's schedule arguments. Returns the schedule with its first run and, for a time
 * given without an offset, a note saying which zone it was read in; or one line saying why not.
 */
export function parseSchedule(
  input: ScheduleInput,
  defaultTz: string,
  now: number,
): { schedule: Schedule; timezone: string; nextRun: number; note?: string } | string {
  const given = (['cron', 'every_ms', 'at'] as const).filter((k) => input[k] !== undefined);
  if (given.length !== 1) return 'give exactly one of cron, every_ms or at';
  const timezone = input.timezone ?? defaultTz;
  if (!validTimezone(timezone)) return `unknown time zone "${timezone}": use an IANA name like Europe/Berlin`;
  let schedule: Schedule;
  let note: string | undefined;
  if (input.cron !== undefined) {
    try {
      new Cron(input.cron, { timezone });
    } catch (e) {
      return `invalid cron "${input.cron}": ${(e as Error).message.replace(/^CronPattern: /, '')}`;
    }
    schedule = { type: 'cron', value: input.cron };
  } else if (input.every_ms !== undefined) {
    const ms = input.every_ms;
    if (!Number.isInteger(ms) || ms < MIN_INTERVAL_MS)
      return `every_ms must be a whole number ≥ ${MIN_INTERVAL_MS}`;
    schedule = { type: 'interval', value: ms };
  } else {
    const at = input.at as string;
    const local = LOCAL_TIME.exec(at);
    const ms = local ? zonedToUtc(local, timezone) : Date.parse(at);
    if (Number.isNaN(ms)) return `invalid time "${at}": use ISO 8601 like 2026-12-24T09:00`;
    if (ms <= now) return `the time ${at} is in the past`;
    if (local) note = `${at} was read in ${timezone}`;
    schedule = { type: 'once', value: ms };
  }
  const nextRun = firstRun(schedule, timezone, now);
  if (nextRun === undefined) return 'this schedule never fires';
  return { schedule, timezone, nextRun, ...(note ? { note } : {}) };
}

function firstRun(s: Schedule, tz: string, now: number): number | undefined {
  return s.type === 'once' ? s.value : nextAfter(s, tz, now, now);
}

/** The run after one due at `due`, claimed at `now`: the first slot after `now` (missed slots run
 * once), or undefined for a one-off. */
export function nextAfter(s: Schedule, tz: string, due: number, now: number): number | undefined {
  if (s.type === 'once') return undefined;
  if (s.type === 'interval') return due + (Math.floor(Math.max(0, now - due) / s.value) + 1) * s.value;
  return new Cron(s.value, { timezone: tz }).nextRun(new Date(Math.max(now, due)))?.getTime();
}

/** The next run of a task resumed at `now`, or why it cannot resume. */
function resumeAt(t: Pick<Task, 'schedule' | 'timezone'>, now: number): number | string {
  if (t.schedule.type === 'once' && t.schedule.value <= now) {
    return `its time ${new Date(t.schedule.value).toISOString()} has passed`;
  }
  return firstRun(t.schedule, t.timezone, now) ?? 'its schedule never fires again';
}

/** A CLI that changed tasks touches this file in the data directory; the orchestrator re-arms. */
export const TASKS_CHANGED = 'tasks.changed';

export function describeSchedule(t: Pick<Task, 'schedule' | 'timezone'>): string {
  const s = t.schedule;
  if (s.type === 'cron') return `cron "${s.value}" (${t.timezone})`;
  if (s.type === 'interval') return `every ${s.value} ms`;
  return `once at ${new Date(s.value).toISOString()}`;
}

type Row = Record<string, unknown>;
const toTask = (r: Row): Task => {
  const type = String(r.schedule_type) as Schedule['type'];
  const value = String(r.schedule_value);
  return {
    id: String(r.id),
    groupFolder: String(r.group_folder),
    chatJid: String(r.chat_jid),
    prompt: String(r.prompt),
    schedule: (type === 'cron' ? { type, value } : { type, value: Number(value) }) as Schedule,
    timezone: String(r.timezone),
    contextMode: r.context_mode === 'isolated' ? 'isolated' : 'group',
    status: String(r.status) as Task['status'],
    nextRun: r.next_run === null ? null : Number(r.next_run),
    failures: Number(r.failures),
    createdAt: Number(r.created_at),
  };
};
const toRun = (r: Row): TaskRun => ({
  id: Number(r.id),
  taskId: String(r.task_id),
  dueAt: Number(r.due_at),
  startedAt: Number(r.started_at),
  endedAt: r.ended_at === null ? null : Number(r.ended_at),
  status: String(r.status) as TaskRun['status'],
  result: r.result === null ? null : String(r.result),
  error: r.error === null ? null : String(r.error),
});

export type NewTask = Omit<Task, 'id' | 'status' | 'failures' | 'createdAt' | 'nextRun'> & {
  nextRun: number;
};

/** A claimed run: the task as it was due, and where its prompt went. */
export interface Claimed {
  task: Task;
  runId: number;
  /** For a task in the group's context: the stored message carrying its prompt. */
  messageId?: number;
}

const PAST_TENSE = { pause: 'paused', resume: 'resumed', cancel: 'cancelled' } as const;

/** The tasks in the store (on the store's own connection). */
export function taskStore(db: Db) {
  const { run, one, all } = db;
  const get = (id: string): Task | undefined => {
    const r = one('SELECT * FROM tasks WHERE id = ?', [id]);
    return r && toTask(r);
  };
  const setStatus = (id: string, status: Task['status'], nextRun: number | null, failures = 0): void => {
    const sql = 'UPDATE tasks SET status = ?, next_run = ?, failures = ? WHERE id = ?';
    run(sql, [status, nextRun, failures, id]);
  };
  const columns = (t: NewTask | Task) => ({
    ...t,
    scheduleType: t.schedule.type,
    scheduleValue: String(t.schedule.value),
  });

  const claimDue = db.raw.transaction((now: number): Claimed[] => {
    const claimed: Claimed[] = [];
    const due = all("SELECT * FROM tasks WHERE status = 'active' AND next_run <= ? ORDER BY next_run", [now]);
    for (const task of due.map(toTask)) {
      const dueAt = task.nextRun ?? now;
      const next = nextAfter(task.schedule, task.timezone, dueAt, now);
      const status = next === undefined ? 'done' : 'active';
      run('UPDATE tasks SET next_run = ?, status = ? WHERE id = ?', [next ?? null, status, task.id]);
      const start = "INSERT INTO task_runs (task_id, due_at, started_at, status) VALUES (?, ?, ?, 'running')";
      const runId = Number(run(start, [task.id, dueAt, now]).lastInsertRowid);
      if (task.contextMode === 'isolated') {
        claimed.push({ task, runId });
        continue;
      }
      const { id } = db.insertMessage({
        chatJid: task.chatJid,
        platformId: `${TASK_PROMPT_ID}${runId}`,
        sender: 'scheduler',
        senderName: `Scheduled task ${task.id}`,
        text: task.prompt,
        at: now,
        isBot: false,
        fromMe: false,
        mentionsMe: true, // wakes the agent like its trigger would
      });
      run('UPDATE messages SET task_run_id = ? WHERE id = ?', [runId, id]);
      claimed.push({ task, runId, messageId: id });
    }
    return claimed;
  });

  return {
    create(t: NewTask, now: number): Task {
      const id = `t-${randomBytes(4).toString('hex')}`;
      run(
        `INSERT INTO tasks (id, group_folder, chat_jid, prompt, schedule_type, schedule_value, timezone,
           context_mode, status, next_run, created_at) VALUES (@id, @groupFolder, @chatJid, @prompt,
           @scheduleType, @scheduleValue, @timezone, @contextMode, 'active', @nextRun, @now)`,
        { ...columns(t), id, now },
      );
      return get(id) as Task;
    },
    get,
    /** Active and paused tasks, of one group or of all. */
    list(groupFolder?: string): Task[] {
      const tasks = all("SELECT * FROM tasks WHERE status IN ('active', 'paused') ORDER BY created_at, id");
      return tasks.map(toTask).filter((t) => groupFolder === undefined || t.groupFolder === groupFolder);
    },
    update(t: Task): void {
      run(
        `UPDATE tasks SET prompt = @prompt, schedule_type = @scheduleType, schedule_value = @scheduleValue,
           timezone = @timezone, next_run = @nextRun WHERE id = @id`,
        columns(t),
      );
    },
    setStatus,
    /** Pauses, resumes (from `now`) or cancels a task; the line saying what happened, or why not. */
    change(t: Task, action: 'pause' | 'resume' | 'cancel', now: number): { ok: boolean; line: string } {
      if (action === 'pause') setStatus(t.id, 'paused', t.nextRun, t.failures);
      if (action === 'cancel') setStatus(t.id, 'cancelled', null);
      if (action === 'resume') {
        const at = resumeAt(t, now);
        if (typeof at === 'string') return { ok: false, line: `${t.id} cannot resume: ${at}` };
        setStatus(t.id, 'active', at);
      }
      return { ok: true, line: `${t.id} ${PAST_TENSE[action]}` };
    },
    nextDue(): number | undefined {
      const at = one("SELECT min(next_run) AS at FROM tasks WHERE status = 'active'")?.at;
      return at === null ? undefined : Number(at);
    },
    claimDue,
    /**
     * Ends a run; counts failures in a row. Returns 'paused' when this failure paused the task.
     * A run that already ended (answered after all) stays as it was.
     */
    finishRun(
      runId: number,
      now: number,
      r: { ok: boolean; result?: string; error?: string },
    ): 'paused' | undefined {
      const ended = run(
        "UPDATE task_runs SET ended_at = ?, status = ?, result = ?, error = ? WHERE id = ? AND status = 'running'",
        [now, r.ok ? 'ok' : 'error', r.result ?? null, r.error ?? null, runId],
      );
      if (ended.changes === 0) return undefined;
      const task = get(String(one('SELECT task_id FROM task_runs WHERE id = ?', [runId])?.task_id));
      if (!task) return undefined;
      const failures = r.ok ? 0 : task.failures + 1;
      run('UPDATE tasks SET failures = ? WHERE id = ?', [failures, task.id]);
      if (failures < MAX_FAILURES || task.status !== 'active') return undefined;
      setStatus(task.id, 'paused', task.nextRun, failures);
      return 'paused';
    },
    /** Runs whose prompt is a message of this chat up to `upTo`, still running. */
    pendingInChat(chatJid: string, upTo: number): TaskRun[] {
      const sql = `SELECT r.* FROM task_runs r JOIN messages m ON m.task_run_id = r.id
        WHERE m.chat_jid = ? AND m.id <= ? AND r.status = 'running'`;
      return all(sql, [chatJid, upTo]).map(toRun);
    },
    runs(taskId: string, limit = 20): TaskRun[] {
      const sql = 'SELECT * FROM task_runs WHERE task_id = ? ORDER BY id DESC LIMIT ?';
      return all(sql, [taskId, limit]).map(toRun);
    },
    /** At start: isolated runs a crash interrupted end as errors (they are not run again); runs
     * whose prompt was answered just before the crash end as ok. */
    abandonRuns(now: number): void {
      run(
        `UPDATE task_runs SET status = 'error', error = 'interrupted by a restart', ended_at = ?
         WHERE status = 'running' AND id NOT IN (SELECT task_run_id FROM messages WHERE task_run_id IS NOT NULL)`,
        [now],
      );
      run(
        `UPDATE task_runs SET status = 'ok', result = 'answered before a restart', ended_at = ?
         WHERE status = 'running' AND id IN (SELECT m.task_run_id FROM messages m
           JOIN groups g ON g.jid = m.chat_jid WHERE m.task_run_id IS NOT NULL AND m.id <= g.cursor)`,
        [now],
      );
    },
  };
}

export type TaskStore = ReturnType<typeof taskStore>;

export interface SchedulerDeps {
  store: TaskStore;
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(t: unknown): void;
  /** A claimed run, to be started (its prompt is already stored when in the group's context). */
  run(claimed: Claimed): void;
}

/** Keeps one timer armed for the next due task; `changed()` after any task edit. */
export function startScheduler(deps: SchedulerDeps) {
  let timer: unknown;
  let stopped = false;

  function arm(): void {
    deps.clearTimer(timer);
    timer = undefined;
    if (stopped) return;
    const at = deps.store.nextDue();
    if (at === undefined) return;
    const wait = Math.max(0, at - deps.now());
    // Longer waits are chained: the timer wakes at Node's limit and simply re-arms.
    timer = deps.setTimer(wait > MAX_TIMER_MS ? arm : tick, Math.min(wait, MAX_TIMER_MS));
  }

  function tick(): void {
    deps.clearTimer(timer);
    timer = undefined;
    if (stopped) return;
    for (const c of deps.store.claimDue(deps.now())) deps.run(c);
    arm();
  }

  arm();
  return {
    changed: arm,
    /** Claims and starts what is due now (also at start: runs missed while down). */
    tick,
    stop(): void {
      stopped = true;
      deps.clearTimer(timer);
    },
  };
}
