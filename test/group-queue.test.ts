import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type AgentHooks,
  type AgentOutcome,
  createGroupQueue,
  type GroupQueueDeps,
} from '../src/group-queue.js';

// The queue is driven entirely by a fake clock and fake agents: no real timers, no sandboxes.
// Time only moves when a test calls `advance`, and an agent only finishes when a test settles it.

/** A manual timer list: `advance(ms)` fires every timer due by then, earliest first. */
function fakeClock() {
  let now = 0;
  let nextId = 0;
  const timers: { id: number; at: number; fn: () => void }[] = [];
  return {
    now: (): number => now,
    setTimer(fn: () => void, ms: number): unknown {
      nextId++;
      timers.push({ id: nextId, at: now + ms, fn });
      return nextId;
    },
    clearTimer(timer: unknown): void {
      const i = timers.findIndex((t) => t.id === timer);
      if (i >= 0) timers.splice(i, 1);
    },
    pending: (): number => timers.length,
    advance(ms: number): void {
      const target = now + ms;
      for (;;) {
        const due = timers.filter((t) => t.at <= target).sort((a, b) => a.at - b.at || a.id - b.id)[0];
        if (!due) break;
        timers.splice(timers.indexOf(due), 1);
        now = due.at;
        due.fn();
      }
      now = target;
    },
  };
}

/** One started agent, as the test sees it. */
interface FakeRun {
  readonly key: string;
  readonly hooks: AgentHooks;
  wakes: number;
  closes: number;
  kills: number;
  /** What `wake()` returns; false models an agent that is closing. */
  accepting: boolean;
  /** Settles `done` and lets the queue react. */
  finish(outcome?: AgentOutcome): Promise<void>;
}

/** Lets promise reactions (the queue's `done.then`) run; no timers involved. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

function harness(overrides: Partial<GroupQueueDeps> = {}) {
  const clock = fakeClock();
  const runs: FakeRun[] = [];
  const giveUps: { key: string; error: string; tries: number }[] = [];
  const h = {
    clock,
    runs,
    giveUps,
    /** `startAgent` throws the error set here for a key. */
    startErrors: new Map<string, Error>(),
    /** Keys in the order their agents were started. */
    started: (): string[] => runs.map((r) => r.key),
    /** The most recent run for `key`. */
    run(key: string): FakeRun {
      const found = runs.filter((r) => r.key === key).at(-1);
      assert.ok(found, `no agent was started for ${key}`);
      return found;
    },
    queue: undefined as unknown as ReturnType<typeof createGroupQueue>,
  };
  h.queue = createGroupQueue({
    maxConcurrent: 2,
    startAgent(key, hooks) {
      const startError = h.startErrors.get(key);
      if (startError) throw startError;
      let resolve: (outcome: AgentOutcome) => void = () => undefined;
      const done = new Promise<AgentOutcome>((r) => {
        resolve = r;
      });
      const run: FakeRun = {
        key,
        hooks,
        wakes: 0,
        closes: 0,
        kills: 0,
        accepting: true,
        async finish(outcome = { ok: true }) {
          resolve(outcome);
          await settle();
        },
      };
      runs.push(run);
      return {
        wake() {
          run.wakes++;
          return run.accepting;
        },
        close() {
          run.closes++;
        },
        kill() {
          run.kills++;
        },
        done,
      };
    },
    onGiveUp(key, error, tries) {
      giveUps.push({ key, error, tries });
    },
    now: clock.now,
    setTimer: clock.setTimer,
    clearTimer: clock.clearTimer,
    retryBaseMs: 1_000,
    maxTries: 5,
    ...overrides,
  });
  return h;
}

describe('createGroupQueue', () => {
  test('runs one agent per group and hands more work for a live group to it with wake', () => {
    const h = harness();
    h.queue.enqueue('a');
    h.queue.enqueue('a');
    h.queue.enqueue('a');
    assert.deepEqual(h.started(), ['a']);
    assert.equal(h.run('a').wakes, 2);
    h.queue.enqueue('b');
    assert.deepEqual(h.started(), ['a', 'b']);
    assert.equal(h.run('b').wakes, 0);
  });

  test('starts at most maxConcurrent agents and makes a third group wait', async () => {
    const h = harness({ maxConcurrent: 2 });
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    h.queue.enqueue('c');
    assert.deepEqual(h.started(), ['a', 'b']);
    assert.deepEqual(h.queue.snapshot().waiting, ['c']);
    // Both agents are busy, so neither is asked to close.
    assert.equal(h.run('a').closes, 0);
    assert.equal(h.run('b').closes, 0);
    await h.run('a').finish();
    assert.deepEqual(h.started(), ['a', 'b', 'c']);
    assert.deepEqual(h.queue.snapshot().waiting, []);
  });

  test('closes the idle agent rather than a busy one when a group waits, and starts the group once it is done', async () => {
    const h = harness({ maxConcurrent: 2 });
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    h.clock.advance(10);
    h.run('b').hooks.idle();
    h.queue.enqueue('c');
    assert.equal(h.run('a').closes, 0);
    assert.equal(h.run('b').closes, 1);
    // The slot is freed only when the closed agent has finished.
    assert.deepEqual(h.started(), ['a', 'b']);
    await settle();
    assert.deepEqual(h.started(), ['a', 'b']);
    await h.run('b').finish();
    assert.deepEqual(h.started(), ['a', 'b', 'c']);
    assert.equal(h.run('a').closes, 0);
  });

  test('closes the agent that has been idle longest when two agents are idle', async () => {
    const h = harness({ maxConcurrent: 2 });
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    h.clock.advance(10);
    h.run('b').hooks.idle();
    h.clock.advance(10);
    h.run('a').hooks.idle();
    h.clock.advance(10);
    h.queue.enqueue('c');
    assert.equal(h.run('b').closes, 1);
    assert.equal(h.run('a').closes, 0);
    await h.run('b').finish();
    assert.deepEqual(h.started(), ['a', 'b', 'c']);
    assert.equal(h.run('a').closes, 0);
  });

  test('closes a busy agent as soon as it turns idle while a group waits', async () => {
    const h = harness({ maxConcurrent: 2 });
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    h.queue.enqueue('c');
    assert.equal(h.run('a').closes + h.run('b').closes, 0);
    h.clock.advance(10);
    h.run('b').hooks.idle();
    assert.equal(h.run('b').closes, 1);
    assert.equal(h.run('a').closes, 0);
    await h.run('b').finish();
    assert.deepEqual(h.started(), ['a', 'b', 'c']);
  });

  test('does not close an idle agent once it is woken with new work', () => {
    const h = harness({ maxConcurrent: 2 });
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    h.run('a').hooks.idle();
    h.queue.enqueue('a');
    assert.equal(h.run('a').wakes, 1);
    h.queue.enqueue('c');
    assert.equal(h.run('a').closes, 0);
    assert.equal(h.run('b').closes, 0);
    assert.deepEqual(h.queue.snapshot().waiting, ['c']);
  });

  test('serves waiting groups in arrival order', async () => {
    const h = harness({ maxConcurrent: 1 });
    h.queue.enqueue('a');
    h.queue.enqueue('d');
    h.queue.enqueue('b');
    h.queue.enqueue('c');
    h.queue.enqueue('b');
    assert.deepEqual(h.queue.snapshot().waiting, ['d', 'b', 'c']);
    await h.run('a').finish();
    assert.deepEqual(h.started(), ['a', 'd']);
    await h.run('d').finish();
    assert.deepEqual(h.started(), ['a', 'd', 'b']);
    await h.run('b').finish();
    assert.deepEqual(h.started(), ['a', 'd', 'b', 'c']);
    assert.deepEqual(h.queue.snapshot().waiting, []);
  });

  test('restarts a group whose agent is closing once its done resolves', async () => {
    const h = harness();
    h.queue.enqueue('a');
    h.run('a').accepting = false;
    h.queue.enqueue('a');
    assert.equal(h.run('a').wakes, 1);
    assert.deepEqual(h.started(), ['a']);
    await h.run('a').finish();
    assert.deepEqual(h.started(), ['a', 'a']);
  });

  test('does not restart a group that got no new work after its agent finished', async () => {
    const h = harness();
    h.queue.enqueue('a');
    await h.run('a').finish();
    assert.deepEqual(h.started(), ['a']);
    assert.deepEqual(h.queue.snapshot(), { live: [], waiting: [], retrying: [] });
  });

  test('retries a failed run after retryBaseMs, then after twice and four times as long', async () => {
    const h = harness({ retryBaseMs: 1_000, maxTries: 5 });
    h.queue.enqueue('a');
    for (const delay of [1_000, 2_000, 4_000, 8_000]) {
      const before = h.runs.length;
      await h.run('a').finish({ ok: false, error: 'boom' });
      assert.deepEqual(h.queue.snapshot().retrying, ['a']);
      h.clock.advance(delay - 1);
      assert.equal(h.runs.length, before, `started before ${delay} ms`);
      h.clock.advance(1);
      assert.equal(h.runs.length, before + 1, `not started at ${delay} ms`);
      assert.deepEqual(h.queue.snapshot().retrying, []);
    }
    assert.deepEqual(h.giveUps, []);
  });

  test('gives up after maxTries failures, calls onGiveUp once and schedules no further retry', async () => {
    const h = harness({ retryBaseMs: 1_000, maxTries: 3 });
    h.queue.enqueue('a');
    await h.run('a').finish({ ok: false, error: 'boom 1' });
    h.clock.advance(1_000);
    await h.run('a').finish({ ok: false, error: 'boom 2' });
    h.clock.advance(2_000);
    assert.equal(h.runs.length, 3);
    await h.run('a').finish({ ok: false, error: 'boom 3' });
    assert.deepEqual(h.giveUps, [{ key: 'a', error: 'boom 3', tries: 3 }]);
    assert.equal(h.clock.pending(), 0);
    assert.deepEqual(h.queue.snapshot(), { live: [], waiting: [], retrying: [] });
    h.clock.advance(1_000_000);
    assert.equal(h.runs.length, 3);
    assert.equal(h.giveUps.length, 1);
    // New work starts afresh: the next failure is retried after the base delay again.
    h.queue.enqueue('a');
    assert.equal(h.runs.length, 4);
    await h.run('a').finish({ ok: false, error: 'boom 4' });
    h.clock.advance(1_000);
    assert.equal(h.runs.length, 5);
  });

  test('resets the try count after a successful run', async () => {
    const h = harness({ retryBaseMs: 1_000, maxTries: 3 });
    h.queue.enqueue('a');
    await h.run('a').finish({ ok: false, error: 'boom' });
    h.clock.advance(1_000);
    await h.run('a').finish({ ok: false, error: 'boom' });
    h.clock.advance(2_000);
    assert.equal(h.runs.length, 3);
    await h.run('a').finish();
    h.queue.enqueue('a');
    assert.equal(h.runs.length, 4);
    // Were the count not reset, this would be the third failure and a give-up.
    await h.run('a').finish({ ok: false, error: 'boom' });
    assert.deepEqual(h.giveUps, []);
    h.clock.advance(999);
    assert.equal(h.runs.length, 4);
    h.clock.advance(1);
    assert.equal(h.runs.length, 5);
  });

  test('does not start a second agent when work arrives during a pending retry', async () => {
    const h = harness({ retryBaseMs: 1_000 });
    h.queue.enqueue('a');
    await h.run('a').finish({ ok: false, error: 'boom' });
    h.queue.enqueue('a');
    h.queue.enqueue('a');
    assert.equal(h.runs.length, 1);
    assert.deepEqual(h.queue.snapshot().retrying, ['a']);
    h.clock.advance(1_000);
    assert.equal(h.runs.length, 2);
    assert.equal(h.clock.pending(), 0);
    assert.deepEqual(h.queue.snapshot().live, [{ key: 'a', idle: false }]);
  });

  test('stop closes live agents, cancels retry timers, waits for done and ignores later enqueues', async () => {
    const h = harness({ maxConcurrent: 2, retryBaseMs: 1_000 });
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    await h.run('b').finish({ ok: false, error: 'boom' });
    h.queue.enqueue('c');
    h.queue.enqueue('d');
    assert.deepEqual(h.queue.snapshot(), {
      live: [
        { key: 'a', idle: false },
        { key: 'c', idle: false },
      ],
      waiting: ['d'],
      retrying: ['b'],
    });

    let stopped = false;
    const stopping = h.queue.stop().then(() => {
      stopped = true;
    });
    assert.equal(h.run('a').closes, 1);
    assert.equal(h.run('c').closes, 1);
    assert.equal(h.clock.pending(), 0);
    await settle();
    assert.equal(stopped, false);
    await h.run('a').finish();
    assert.equal(stopped, false);
    await h.run('c').finish({ ok: false, error: 'killed' });
    await stopping;
    assert.equal(stopped, true);

    // Nothing is retried, restarted or started afterwards.
    h.clock.advance(1_000_000);
    h.queue.enqueue('a');
    h.queue.enqueue('e');
    assert.deepEqual(h.started(), ['a', 'b', 'c']);
    assert.deepEqual(h.giveUps, []);
    assert.deepEqual(h.queue.snapshot(), { live: [], waiting: [], retrying: [] });
  });

  test('kill after a bounded stop kills the agents still live', async () => {
    const h = harness();
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    void h.queue.stop();
    await h.run('b').finish();
    h.queue.kill();
    assert.equal(h.run('a').kills, 1);
    assert.equal(h.run('b').kills, 0);
  });

  test('counts a startAgent that throws as a failed try', () => {
    const h = harness({ retryBaseMs: 1_000, maxTries: 2 });
    h.startErrors.set('a', new Error('no sandbox'));
    h.queue.enqueue('a');
    assert.equal(h.runs.length, 0);
    assert.deepEqual(h.queue.snapshot(), { live: [], waiting: [], retrying: ['a'] });
    h.clock.advance(999);
    assert.deepEqual(h.queue.snapshot().retrying, ['a']);
    h.clock.advance(1);
    // The second throw is the last of maxTries = 2.
    assert.deepEqual(h.giveUps, [{ key: 'a', error: 'no sandbox', tries: 2 }]);
    assert.equal(h.clock.pending(), 0);
    assert.deepEqual(h.queue.snapshot(), { live: [], waiting: [], retrying: [] });
  });

  test('a startAgent that throws frees its slot for the next waiting group', async () => {
    const h = harness({ maxConcurrent: 1, retryBaseMs: 1_000 });
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    h.queue.enqueue('c');
    h.startErrors.set('b', new Error('no sandbox'));
    await h.run('a').finish();
    // b's start threw, so c gets the slot at once; b retries later and waits for the slot.
    assert.deepEqual(h.started(), ['a', 'c']);
    assert.deepEqual(h.queue.snapshot().retrying, ['b']);
    h.startErrors.delete('b');
    h.clock.advance(1_000);
    assert.deepEqual(h.queue.snapshot().waiting, ['b']);
    await h.run('c').finish();
    assert.deepEqual(h.started(), ['a', 'c', 'b']);
  });

  test('snapshot reports live agents with their idle flag, waiting groups and retrying groups', async () => {
    const h = harness({ maxConcurrent: 2 });
    assert.deepEqual(h.queue.snapshot(), { live: [], waiting: [], retrying: [] });
    h.queue.enqueue('r');
    await h.run('r').finish({ ok: false, error: 'boom' });
    h.queue.enqueue('a');
    h.queue.enqueue('b');
    h.run('a').hooks.idle();
    h.run('a').hooks.busy();
    h.run('b').hooks.idle();
    assert.deepEqual(h.queue.snapshot(), {
      live: [
        { key: 'a', idle: false },
        { key: 'b', idle: true },
      ],
      waiting: [],
      retrying: ['r'],
    });
    h.queue.enqueue('w');
    assert.deepEqual(h.queue.snapshot().waiting, ['w']);
    assert.equal(h.run('b').closes, 1);
  });

  test('regression: new work for an agent closed to free a slot no longer takes that slot from the group waiting for it', async () => {
    const h = harness({ maxConcurrent: 1 });
    h.queue.enqueue('a');
    h.run('a').hooks.idle();
    h.queue.enqueue('b');
    assert.equal(h.run('a').closes, 1);
    // Work for a arrives while its agent is closing: a must run again, but after b, which was first.
    h.queue.enqueue('a');
    await h.run('a').finish();
    assert.deepEqual(h.started(), ['a', 'b'], 'the group waiting for the freed slot starts next');
    assert.deepEqual(h.queue.snapshot().waiting, ['a']);
  });
});
