// Scheduled tasks: the pure schedule functions, the task store on real SQLite (`:memory:`, and a
// temp file where a restart matters), and the timer loop driven by a FakeClock. Time only moves
// when a test moves it; nothing here waits on a real timer.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { type Db, openDb } from '../src/db.js';
import {
  type Claimed,
  MAX_FAILURES,
  nextAfter,
  parseSchedule,
  type Schedule,
  startScheduler,
  type TaskStore,
  taskStore,
} from '../src/scheduler.js';
import { FakeClock } from './support/clock.js';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempStore(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-scheduler-'));
  dirs.push(dir);
  return path.join(dir, 'store', 'messages.db');
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const MAX_TIMER_MS = 2 ** 31 - 1;
const BERLIN = 'Europe/Berlin';
const CHAT = 'discord:1';
const at = (iso: string): number => Date.parse(iso);

/** The calendar date of `ms` in `tz`, as YYYY-MM-DD. */
const localDate = (ms: number, tz: string): string =>
  new Date(ms).toLocaleString('sv-SE', { timeZone: tz }).slice(0, 10);

/** A store with the Sales chat registered, closed when the test ends. */
function salesStore(t: { after(fn: () => void): void }, now: number, file = ':memory:') {
  const db = openDb(file);
  t.after(() => {
    if (db.raw.open) db.close();
  });
  const group = addSales(db, now);
  return { db, group, store: taskStore(db) };
}

function addSales(db: Db, now: number) {
  return db.addGroup(
    { jid: CHAT, name: 'Sales', folder: 'sales', trigger: '@Krabby', requiresTrigger: true, isMain: false },
    now,
  );
}

function newTask(
  store: TaskStore,
  now: number,
  schedule: Schedule,
  nextRun: number,
  extra: { contextMode?: 'group' | 'isolated'; prompt?: string; timezone?: string } = {},
) {
  return store.create(
    {
      groupFolder: 'sales',
      chatJid: CHAT,
      prompt: extra.prompt ?? 'Summarise the pipeline',
      schedule,
      timezone: extra.timezone ?? BERLIN,
      contextMode: extra.contextMode ?? 'group',
      nextRun,
    },
    now,
  );
}

/** A scheduler on a FakeClock that records every claimed run with the time it was started. */
function scheduled(store: TaskStore, clock: FakeClock, onRun: (c: Claimed) => void = () => undefined) {
  const runs: { claimed: Claimed; at: number }[] = [];
  const scheduler = startScheduler({
    store,
    now: clock.now,
    setTimer: clock.setTimer,
    clearTimer: clock.clearTimer,
    run: (claimed) => {
      runs.push({ claimed, at: clock.now() });
      onRun(claimed);
    },
  });
  return { scheduler, runs };
}

/** parseSchedule's answer when it accepted the input (fails the test otherwise). */
function accepted(r: ReturnType<typeof parseSchedule>) {
  assert.equal(typeof r, 'object', `refused: ${String(r)}`);
  return r as Exclude<typeof r, string>;
}

/** parseSchedule's refusal (fails the test when it accepted). */
function refused(r: ReturnType<typeof parseSchedule>): string {
  assert.equal(typeof r, 'string', `accepted: ${JSON.stringify(r)}`);
  return r as string;
}

describe('parseSchedule', () => {
  const now = at('2026-11-27T08:00:00Z'); // a Friday, 09:00 in Berlin

  test('a valid cron with a time zone gives its first run at the exact instant', () => {
    const r = accepted(parseSchedule({ cron: '0 9 * * 1-5', timezone: BERLIN }, 'UTC', now));
    assert.deepEqual(r.schedule, { type: 'cron', value: '0 9 * * 1-5' });
    assert.equal(r.timezone, BERLIN);
    // Friday 09:00 itself is not after now: the next weekday 09:00 is Monday, 08:00Z in winter.
    assert.equal(new Date(r.nextRun).toISOString(), '2026-11-30T08:00:00.000Z');
    assert.equal(r.note, undefined);
  });

  test('the default time zone applies when none is given', () => {
    const r = accepted(parseSchedule({ cron: '0 9 * * 1-5' }, 'America/New_York', now));
    assert.equal(r.timezone, 'America/New_York');
    assert.equal(new Date(r.nextRun).toISOString(), '2026-11-27T14:00:00.000Z');
  });

  test('an invalid cron string is refused in one line starting with "invalid cron"', () => {
    for (const cron of ['61 * * * *', 'every tuesday']) {
      const why = refused(parseSchedule({ cron, timezone: BERLIN }, BERLIN, now));
      assert.ok(why.startsWith(`invalid cron "${cron}"`), why);
      assert.doesNotMatch(why, /\n/);
      assert.doesNotMatch(why, /CronPattern/);
    }
  });

  test('zero or two of cron, every_ms and at are refused', () => {
    const inputs = [
      {},
      { timezone: BERLIN },
      { cron: '0 9 * * *', every_ms: 60_000 },
      { every_ms: 60_000, at: '2026-12-24T09:00' },
      { cron: '0 9 * * *', at: '2026-12-24T09:00' },
    ];
    for (const input of inputs) {
      assert.equal(parseSchedule(input, BERLIN, now), 'give exactly one of cron, every_ms or at');
    }
  });

  test('an interval under a minute or not a whole number is refused', () => {
    for (const every_ms of [59_999, 0, -60_000, 60_000.5, Number.NaN]) {
      assert.equal(parseSchedule({ every_ms }, BERLIN, now), 'every_ms must be a whole number ≥ 60000');
    }
    const r = accepted(parseSchedule({ every_ms: 60_000 }, BERLIN, now));
    assert.deepEqual(r.schedule, { type: 'interval', value: 60_000 });
    assert.equal(r.nextRun, now + 60_000);
  });

  test('an unknown time zone is refused with a line naming it', () => {
    const why = refused(parseSchedule({ cron: '0 9 * * *', timezone: 'Mars/Olympus' }, BERLIN, now));
    assert.match(why, /Mars\/Olympus/);
    assert.doesNotMatch(why, /\n/);
    // An unknown default zone is refused the same way.
    assert.match(refused(parseSchedule({ every_ms: 60_000 }, 'Nowhere/City', now)), /Nowhere\/City/);
  });

  test('a time with an offset is that instant, with no note', () => {
    const r = accepted(
      parseSchedule({ at: '2026-12-24T09:00:00+01:00', timezone: 'America/New_York' }, BERLIN, now),
    );
    assert.deepEqual(r.schedule, { type: 'once', value: at('2026-12-24T08:00:00Z') });
    assert.equal(r.nextRun, at('2026-12-24T08:00:00Z'));
    assert.equal(r.note, undefined);
  });

  test('a time without an offset is read in the time zone, and the note says so', () => {
    const berlin = accepted(parseSchedule({ at: '2026-12-24T09:00', timezone: BERLIN }, 'UTC', now));
    assert.equal(new Date(berlin.nextRun).toISOString(), '2026-12-24T08:00:00.000Z');
    assert.match(berlin.note ?? '', /Europe\/Berlin/);

    const ny = accepted(parseSchedule({ at: '2026-12-24T09:00' }, 'America/New_York', now));
    assert.equal(new Date(ny.nextRun).toISOString(), '2026-12-24T14:00:00.000Z');
    assert.match(ny.note ?? '', /America\/New_York/);

    // In summer Berlin is two hours ahead.
    const summer = accepted(parseSchedule({ at: '2027-07-01T09:00:30', timezone: BERLIN }, 'UTC', now));
    assert.equal(new Date(summer.nextRun).toISOString(), '2027-07-01T07:00:30.000Z');
  });

  test('a local time in a daylight-saving gap or overlap is read as the later instant, east and west of UTC', () => {
    // The documented rule (zonedToUtc: "the later reading, in a gap or overlap of DST"). Berlin
    // springs forward at 2027-03-28T01:00Z and falls back at 2027-10-31T01:00Z; New York at
    // 2027-03-14T07:00Z and 2027-11-07T06:00Z.
    const cases: [string, string, string][] = [
      [BERLIN, '2027-03-28T02:30', '2027-03-28T01:30:00.000Z'], // 02:30 does not exist: 02:30 CET
      [BERLIN, '2027-10-31T02:30', '2027-10-31T01:30:00.000Z'], // twice: the second, 02:30 CET
      ['America/New_York', '2027-03-14T02:30', '2027-03-14T07:30:00.000Z'], // gap: 02:30 EST
      ['America/New_York', '2027-11-07T01:30', '2027-11-07T06:30:00.000Z'], // twice: 01:30 EST
    ];
    const actual = cases.map(([timezone, local]) => {
      const r = accepted(parseSchedule({ at: local, timezone }, 'UTC', now));
      return [timezone, local, new Date(r.nextRun).toISOString()];
    });
    assert.deepEqual(actual, cases);
  });

  test('a time in the past, or now, is refused', () => {
    const later = at('2026-12-25T00:00:00Z');
    assert.equal(
      parseSchedule({ at: '2026-12-24T09:00:00+01:00' }, BERLIN, later),
      'the time 2026-12-24T09:00:00+01:00 is in the past',
    );
    assert.match(refused(parseSchedule({ at: '2026-12-24T09:00', timezone: BERLIN }, BERLIN, later)), /past/);
    assert.match(refused(parseSchedule({ at: '2026-11-27T08:00:00Z' }, BERLIN, now)), /past/);
  });

  test('a time that is not ISO 8601 is refused in one line', () => {
    const why = refused(parseSchedule({ at: 'next tuesday' }, BERLIN, now));
    assert.ok(why.startsWith('invalid time "next tuesday"'), why);
    assert.doesNotMatch(why, /\n/);
  });
});

describe('nextAfter', () => {
  test('an interval claimed late runs once and lands on the first slot after now', () => {
    const every = { type: 'interval', value: MINUTE } as const;
    assert.equal(nextAfter(every, BERLIN, 0, 185_000), 240_000);
    // On time, and exactly on a later slot: still strictly after now.
    assert.equal(nextAfter(every, BERLIN, 0, 0), 60_000);
    assert.equal(nextAfter(every, BERLIN, 0, 180_000), 240_000);
  });

  test('a cron slot missed during downtime runs once, then the next slot after now', () => {
    const weekdays = { type: 'cron', value: '0 9 * * 1-5' } as const;
    const monday = at('2026-11-30T08:00:00Z'); // 09:00 in Berlin
    const wednesday = at('2026-12-02T09:00:00Z'); // 10:00 in Berlin
    assert.equal(
      new Date(nextAfter(weekdays, BERLIN, monday, wednesday) ?? 0).toISOString(),
      '2026-12-03T08:00:00.000Z',
    );
  });

  test('a one-off task has no next run', () => {
    assert.equal(nextAfter({ type: 'once', value: 1_000 }, BERLIN, 1_000, 5_000), undefined);
  });

  test('the store claims a cron task missed for days once, not once per missed slot', (t) => {
    const monday = at('2026-11-30T08:00:00Z');
    const { store } = salesStore(t, monday - DAY);
    const task = newTask(store, monday - DAY, { type: 'cron', value: '0 9 * * 1-5' }, monday);
    const claimed = store.claimDue(at('2026-12-02T09:00:00Z'));
    assert.equal(claimed.length, 1);
    assert.equal(store.runs(task.id)[0]?.dueAt, monday);
    assert.equal(store.get(task.id)?.nextRun, at('2026-12-03T08:00:00Z'));
  });
});

describe('daylight saving', () => {
  /** Runs a daily 02:30 Berlin task from `fromIso` for `days` days; returns the claimed run times. */
  function runDaily(t: { after(fn: () => void): void }, fromIso: string, days: number): number[] {
    const start = at(fromIso);
    const clock = new FakeClock(start);
    const { store } = salesStore(t, start);
    const s = accepted(parseSchedule({ cron: '30 2 * * *', timezone: BERLIN }, 'UTC', start));
    newTask(store, start, s.schedule, s.nextRun, { timezone: s.timezone, contextMode: 'isolated' });
    const { scheduler, runs } = scheduled(store, clock);
    t.after(() => scheduler.stop());
    clock.advanceTo(start + days * DAY);
    return runs.map((r) => r.at);
  }

  function perDate(times: number[]): Map<string, number> {
    const counts = new Map<string, number>();
    for (const ms of times) counts.set(localDate(ms, BERLIN), (counts.get(localDate(ms, BERLIN)) ?? 0) + 1);
    return counts;
  }

  test('a daily 02:30 task fires exactly once per day across the spring-forward night', (t) => {
    // 2027-03-28: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that night.
    const times = runDaily(t, '2027-03-26T00:00:00Z', 5);
    assert.deepEqual(
      [...perDate(times)],
      [
        ['2027-03-26', 1],
        ['2027-03-27', 1],
        ['2027-03-28', 1],
        ['2027-03-29', 1],
        ['2027-03-30', 1],
      ],
    );
  });

  test('a daily 02:30 task fires exactly once per day across the fall-back night', (t) => {
    // 2027-10-31: 03:00 CEST goes back to 02:00 CET, so 02:30 happens twice that night.
    const times = runDaily(t, '2027-10-29T00:00:00Z', 5);
    assert.deepEqual(
      [...perDate(times)],
      [
        ['2027-10-29', 1],
        ['2027-10-30', 1],
        ['2027-10-31', 1],
        ['2027-11-01', 1],
        ['2027-11-02', 1],
      ],
    );
  });
});

describe('timers', () => {
  test('a one-off task 40 days ahead is reached through chained timers and claimed once, on time', (t) => {
    const start = at('2026-11-27T08:00:00Z');
    const due = start + 40 * DAY;
    const clock = new FakeClock(start);
    const { store } = salesStore(t, start);
    const task = newTask(store, start, { type: 'once', value: due }, due);
    const { scheduler, runs } = scheduled(store, clock);
    t.after(() => scheduler.stop());

    const armed = clock.nextTimerAt();
    assert.ok(armed !== undefined, 'no timer armed');
    assert.ok(armed - clock.now() <= MAX_TIMER_MS, `timer armed ${armed - clock.now()} ms ahead`);

    clock.advance(39 * DAY);
    assert.equal(runs.length, 0);
    assert.deepEqual(store.runs(task.id), []);
    const rearmed = clock.nextTimerAt();
    assert.ok(rearmed !== undefined && rearmed - clock.now() <= MAX_TIMER_MS, 'no timer re-armed');

    clock.advanceTo(due - 1);
    assert.equal(runs.length, 0);
    clock.advanceTo(due);
    assert.equal(runs.length, 1);
    assert.equal(runs[0]?.at, due);
    assert.equal(runs[0]?.claimed.task.id, task.id);
    assert.equal(store.runs(task.id).length, 1);
    assert.equal(store.get(task.id)?.status, 'done');
    assert.equal(store.get(task.id)?.nextRun, null);
    assert.equal(clock.nextTimerAt(), undefined);

    clock.advance(400 * DAY);
    assert.equal(runs.length, 1);
  });

  test('changed() re-arms to a task created with an earlier next run', (t) => {
    const start = 1_000_000;
    const clock = new FakeClock(start);
    const { store } = salesStore(t, start);
    const late = newTask(store, start, { type: 'once', value: start + HOUR }, start + HOUR);
    const { scheduler, runs } = scheduled(store, clock);
    t.after(() => scheduler.stop());
    assert.equal(clock.nextTimerAt(), start + HOUR);

    const early = newTask(store, start, { type: 'once', value: start + 10 * MINUTE }, start + 10 * MINUTE);
    scheduler.changed();
    assert.equal(clock.nextTimerAt(), start + 10 * MINUTE);

    clock.advanceTo(start + 10 * MINUTE);
    assert.deepEqual(
      runs.map((r) => r.claimed.task.id),
      [early.id],
    );
    clock.advanceTo(start + HOUR);
    assert.deepEqual(
      runs.map((r) => r.claimed.task.id),
      [early.id, late.id],
    );
  });

  test('a task paused before its time never fires', (t) => {
    const start = 1_000_000;
    const clock = new FakeClock(start);
    const { store } = salesStore(t, start);
    const task = newTask(store, start, { type: 'interval', value: MINUTE }, start + MINUTE);
    const { scheduler, runs } = scheduled(store, clock);
    t.after(() => scheduler.stop());
    assert.equal(clock.nextTimerAt(), start + MINUTE);

    store.setStatus(task.id, 'paused', task.nextRun);
    scheduler.changed();
    assert.equal(clock.nextTimerAt(), undefined);
    clock.advance(DAY);
    assert.equal(runs.length, 0);
    assert.deepEqual(store.runs(task.id), []);
    assert.equal(store.get(task.id)?.status, 'paused');
  });

  test('no timer fires after stop()', (t) => {
    const start = 1_000_000;
    const clock = new FakeClock(start);
    const { store } = salesStore(t, start);
    const task = newTask(store, start, { type: 'interval', value: MINUTE }, start + MINUTE);
    const { scheduler, runs } = scheduled(store, clock);
    assert.equal(clock.nextTimerAt(), start + MINUTE);

    scheduler.stop();
    assert.equal(clock.nextTimerAt(), undefined);
    scheduler.changed();
    assert.equal(clock.nextTimerAt(), undefined);
    clock.advance(DAY);
    assert.equal(runs.length, 0);
    assert.deepEqual(store.runs(task.id), []);
  });

  test('tick() by hand while a timer is armed leaves no stray timer behind', (t) => {
    // tick() is exported "also at start: runs missed while down", i.e. called right after
    // startScheduler() has armed its timer. It must replace that timer, not orphan it.
    const start = 1_000_000;
    const clock = new FakeClock(start);
    const { store } = salesStore(t, start);
    newTask(store, start, { type: 'interval', value: HOUR }, start + HOUR);
    const { scheduler } = scheduled(store, clock);
    t.after(() => scheduler.stop());
    assert.equal(clock.nextTimerAt(), start + HOUR);

    scheduler.tick();
    scheduler.stop();
    assert.equal(clock.nextTimerAt(), undefined, 'a timer is still armed after stop()');
  });
});

describe('claiming', () => {
  test('two claims at the same time claim a due task once', (t) => {
    const now = 1_000_000;
    const { store } = salesStore(t, now);
    const task = newTask(store, now, { type: 'interval', value: MINUTE }, now);
    const first = store.claimDue(now);
    const second = store.claimDue(now);
    assert.deepEqual(
      first.map((c) => c.task.id),
      [task.id],
    );
    assert.deepEqual(second, []);
    assert.equal(store.runs(task.id).length, 1);
    assert.equal(store.get(task.id)?.nextRun, now + MINUTE);
  });

  test('a task that is not yet due is not claimed', (t) => {
    const now = 1_000_000;
    const { store } = salesStore(t, now);
    newTask(store, now, { type: 'interval', value: MINUTE }, now + 1);
    assert.deepEqual(store.claimDue(now), []);
  });

  test('the next run has moved on in the store before the run is started', (t) => {
    const start = 1_000_000;
    const clock = new FakeClock(start);
    const { store } = salesStore(t, start);
    const task = newTask(store, start, { type: 'interval', value: MINUTE }, start + MINUTE);
    const seen: (number | null | undefined)[] = [];
    const { scheduler, runs } = scheduled(store, clock, (c) => seen.push(store.get(c.task.id)?.nextRun));
    t.after(() => scheduler.stop());

    clock.advanceTo(start + MINUTE);
    assert.equal(runs.length, 1);
    assert.equal(runs[0]?.claimed.task.nextRun, start + MINUTE); // the task as it was due
    assert.deepEqual(seen, [start + 2 * MINUTE]);
    assert.equal(store.runs(task.id)[0]?.status, 'running');
  });

  test("a task in the group's context stores its prompt as a message of its chat, linked to the run", (t) => {
    const now = 1_000_000;
    const { db, group, store } = salesStore(t, now);
    const task = newTask(store, now, { type: 'interval', value: MINUTE }, now, {
      prompt: 'Post the standup',
    });
    const [claimed] = store.claimDue(now);
    assert.ok(claimed);
    assert.ok(claimed.messageId !== undefined, 'no message id on the claim');

    const messages = db.messagesAfter(CHAT, group.cursor);
    assert.equal(messages.length, 1);
    const m = messages[0];
    assert.ok(m);
    assert.equal(m.id, claimed.messageId);
    assert.equal(m.chatJid, CHAT);
    assert.equal(m.text, 'Post the standup');
    assert.equal(m.sender, 'scheduler');
    assert.equal(m.senderName, `Scheduled task ${task.id}`);
    assert.equal(m.mentionsMe, true);
    assert.equal(m.isBot, false);
    assert.equal(m.fromMe, false);
    assert.equal(m.at, now);

    assert.deepEqual(
      store.pendingInChat(CHAT, m.id).map((r) => r.id),
      [claimed.runId],
    );
    assert.deepEqual(store.pendingInChat(CHAT, m.id - 1), []);
    assert.deepEqual(store.pendingInChat('web:main', m.id), []);
    // Once answered, the run is no longer pending.
    store.finishRun(claimed.runId, now + 1, { ok: true, result: 'posted' });
    assert.deepEqual(store.pendingInChat(CHAT, m.id), []);
  });

  test('an isolated task stores no message', (t) => {
    const now = 1_000_000;
    const { db, store } = salesStore(t, now);
    const task = newTask(store, now, { type: 'interval', value: MINUTE }, now, { contextMode: 'isolated' });
    const [claimed] = store.claimDue(now);
    assert.ok(claimed);
    assert.equal(claimed.task.id, task.id);
    assert.equal(claimed.messageId, undefined);
    assert.deepEqual(db.messagesAfter(CHAT, 0), []);
    assert.equal(store.runs(task.id)[0]?.status, 'running');
  });

  test('a restart between claim and completion does not run the task again', (t) => {
    const file = tempStore();
    const start = at('2026-11-27T08:00:00Z');
    const clock = new FakeClock(start);

    const first = salesStore(t, start, file);
    const inChat = newTask(first.store, start, { type: 'interval', value: HOUR }, start);
    const isolated = newTask(first.store, start, { type: 'interval', value: HOUR }, start, {
      contextMode: 'isolated',
    });
    const before = scheduled(first.store, clock);
    clock.advance(0);
    assert.deepEqual(before.runs.map((r) => r.claimed.task.id).sort(), [inChat.id, isolated.id].sort());
    const groupRun = before.runs.find((r) => r.claimed.task.id === inChat.id)?.claimed;
    const isolatedRun = before.runs.find((r) => r.claimed.task.id === isolated.id)?.claimed;
    assert.ok(groupRun && isolatedRun);
    // The process dies here: neither run finished.
    before.scheduler.stop();
    first.db.close();

    const db = openDb(file);
    t.after(() => db.close());
    const store = taskStore(db);
    store.abandonRuns(clock.now());
    const after = scheduled(store, clock);
    t.after(() => after.scheduler.stop());
    clock.advance(0);
    assert.equal(after.runs.length, 0);

    // The prompt is still an unanswered message of its chat: recovery will answer it.
    const group = db.group(CHAT);
    assert.ok(group);
    const pending = db.messagesAfter(CHAT, group.cursor);
    assert.deepEqual(
      pending.map((m) => m.id),
      [groupRun.messageId],
    );
    assert.deepEqual(
      store.pendingInChat(CHAT, groupRun.messageId ?? 0).map((r) => r.id),
      [groupRun.runId],
    );
    assert.equal(store.runs(inChat.id)[0]?.status, 'running');

    const lost = store.runs(isolated.id);
    assert.equal(lost.length, 1);
    assert.equal(lost[0]?.status, 'error');
    assert.equal(lost[0]?.error, 'interrupted by a restart');
    assert.equal(lost[0]?.endedAt, clock.now());

    // Both tasks stay scheduled for their next slot, and run there once.
    assert.equal(store.get(inChat.id)?.nextRun, start + HOUR);
    clock.advanceTo(start + HOUR);
    assert.deepEqual(after.runs.map((r) => r.claimed.task.id).sort(), [inChat.id, isolated.id].sort());
  });
});

describe('finishRun', () => {
  /** Claims the task's next run (it is an every-minute task due at `t0`) at run `n`. */
  function claimAt(store: TaskStore, t0: number, n: number): number {
    const [claimed] = store.claimDue(t0 + n * MINUTE);
    assert.ok(claimed, `nothing claimed at run ${n}`);
    return claimed.runId;
  }

  test('failures count up on errors and reset on success', (t) => {
    const t0 = 1_000_000;
    const { store } = salesStore(t, t0);
    const task = newTask(store, t0, { type: 'interval', value: MINUTE }, t0);

    assert.equal(store.finishRun(claimAt(store, t0, 0), t0 + 1, { ok: false, error: 'boom' }), undefined);
    assert.equal(store.get(task.id)?.failures, 1);
    assert.equal(store.finishRun(claimAt(store, t0, 1), t0 + 1, { ok: false, error: 'boom' }), undefined);
    assert.equal(store.get(task.id)?.failures, 2);
    assert.equal(store.finishRun(claimAt(store, t0, 2), t0 + 1, { ok: true, result: 'fine' }), undefined);
    assert.equal(store.get(task.id)?.failures, 0);
    assert.equal(store.get(task.id)?.status, 'active');

    const [latest] = store.runs(task.id, 1);
    assert.equal(latest?.status, 'ok');
    assert.equal(latest?.result, 'fine');
    assert.equal(latest?.endedAt, t0 + 1);
  });

  test('the third failure in a row pauses the task', (t) => {
    const t0 = 1_000_000;
    const { store } = salesStore(t, t0);
    const task = newTask(store, t0, { type: 'interval', value: MINUTE }, t0);
    assert.equal(MAX_FAILURES, 3);

    assert.equal(store.finishRun(claimAt(store, t0, 0), t0, { ok: false, error: 'e1' }), undefined);
    assert.equal(store.finishRun(claimAt(store, t0, 1), t0, { ok: false, error: 'e2' }), undefined);
    assert.equal(store.get(task.id)?.status, 'active');
    assert.equal(store.finishRun(claimAt(store, t0, 2), t0, { ok: false, error: 'e3' }), 'paused');
    const paused = store.get(task.id);
    assert.equal(paused?.status, 'paused');
    assert.equal(paused?.failures, 3);
    // A paused task is not claimed.
    assert.deepEqual(store.claimDue(t0 + 10 * MINUTE), []);
    assert.equal(store.runs(task.id)[0]?.error, 'e3');
  });

  test('finishing an already finished run changes nothing', (t) => {
    const t0 = 1_000_000;
    const { store } = salesStore(t, t0);
    const task = newTask(store, t0, { type: 'interval', value: MINUTE }, t0);
    const runId = claimAt(store, t0, 0);
    store.finishRun(runId, t0 + 5, { ok: false, error: 'first' });
    const runBefore = store.runs(task.id);
    const taskBefore = store.get(task.id);

    assert.equal(store.finishRun(runId, t0 + 9, { ok: true, result: 'late answer' }), undefined);
    assert.equal(store.finishRun(runId, t0 + 9, { ok: false, error: 'again' }), undefined);
    assert.deepEqual(store.runs(task.id), runBefore);
    assert.deepEqual(store.get(task.id), taskBefore);
    assert.equal(store.get(task.id)?.failures, 1);
    // An unknown run too.
    assert.equal(store.finishRun(9_999, t0, { ok: false, error: 'none' }), undefined);
  });
});
