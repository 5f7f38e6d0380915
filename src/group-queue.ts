// The group queue: at most one live agent per group, at most `maxConcurrent` agents in all.
// Work for a group with a live agent is handed to it at once. Groups that wait for a slot are
// served in arrival order; an idle agent is closed, least recently used first, as soon as
// another group waits. A failed run is retried with exponential backoff; after the last try the
// user is told and the messages stay unprocessed for the next successful run.

export type AgentOutcome = { ok: true } | { ok: false; error: string };

export interface LiveAgent {
  /** Hands newly stored work to the running agent; false when it is closing and cannot take it. */
  wake(): boolean;
  /** Asks the agent to finish; `done` settles once it has. */
  close(): void;
  /** Ends the agent now (its sandbox is killed). */
  kill(): void;
  readonly done: Promise<AgentOutcome>;
}

export interface AgentHooks {
  /** The agent finished a turn and waits for input; its slot may be reclaimed. */
  idle(): void;
  /** The agent started working on input again. */
  busy(): void;
}

export interface GroupQueueDeps {
  maxConcurrent: number;
  startAgent(key: string, hooks: AgentHooks): LiveAgent;
  onGiveUp(key: string, error: string, tries: number): void;
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(timer: unknown): void;
  retryBaseMs?: number;
  maxTries?: number;
  log?: (line: string) => void;
}

type Entry =
  | { state: 'waiting' }
  | { state: 'retrying'; timer: unknown }
  | {
      state: 'live';
      agent: LiveAgent;
      idle: boolean;
      lastActive: number;
      closing: boolean;
      again: boolean;
      /** Ended on request (/stop, /new): its outcome is not a failure to retry. */
      ended: boolean;
    };

export interface QueueSnapshot {
  live: { key: string; idle: boolean }[];
  waiting: string[];
  retrying: string[];
}

export function createGroupQueue(deps: GroupQueueDeps) {
  const entries = new Map<string, Entry>();
  const tries = new Map<string, number>();
  const waiting: string[] = [];
  const retryBaseMs = deps.retryBaseMs ?? 5_000;
  const maxTries = deps.maxTries ?? 5;
  let stopping = false;

  const live = () => [...entries.values()].filter((e) => e.state === 'live');

  function start(key: string): void {
    const entry: Entry = {
      state: 'live',
      agent: undefined as unknown as LiveAgent,
      idle: false,
      lastActive: deps.now(),
      closing: false,
      again: false,
      ended: false,
    };
    entries.set(key, entry);
    const hooks: AgentHooks = {
      idle: () => {
        entry.idle = true;
        entry.lastActive = deps.now();
        reclaim();
      },
      busy: () => {
        entry.idle = false;
        entry.lastActive = deps.now();
      },
    };
    try {
      entry.agent = deps.startAgent(key, hooks);
    } catch (err) {
      entries.delete(key);
      finished(key, { ok: false, error: err instanceof Error ? err.message : String(err) }, false);
      return;
    }
    entry.agent.done
      .catch((err: unknown): AgentOutcome => ({ ok: false, error: String(err) }))
      .then((outcome) => finished(key, entry.ended ? { ok: true } : outcome, entry.again));
  }

  /** Closes idle agents, least recently used first, while groups wait for a slot. */
  function reclaim(): void {
    const agents = live();
    const closing = agents.filter((e) => e.closing).length;
    let needed = waiting.length - (deps.maxConcurrent - agents.length) - closing;
    const idle = agents.filter((e) => e.idle && !e.closing).sort((a, b) => a.lastActive - b.lastActive);
    for (const e of idle) {
      if (needed <= 0) break;
      e.closing = true;
      e.agent.close();
      needed--;
    }
  }

  function drain(): void {
    while (!stopping && waiting.length > 0 && live().length < deps.maxConcurrent) {
      start(waiting.shift() as string);
    }
    if (!stopping) reclaim();
  }

  function finished(key: string, outcome: AgentOutcome, again: boolean): void {
    entries.delete(key);
    if (outcome.ok) {
      tries.delete(key);
      // Back of the line: a group that waited for this slot goes first (round-robin).
      if (again && !stopping) wait(key);
    } else if (!stopping) {
      const n = (tries.get(key) ?? 0) + 1;
      if (n < maxTries) {
        tries.set(key, n);
        const delay = retryBaseMs * 2 ** (n - 1);
        deps.log?.(`group ${key}: run failed (${outcome.error}); try ${n + 1} of ${maxTries} in ${delay} ms`);
        const timer = deps.setTimer(() => {
          entries.delete(key);
          enqueue(key);
        }, delay);
        entries.set(key, { state: 'retrying', timer });
      } else {
        tries.delete(key);
        deps.onGiveUp(key, outcome.error, n);
      }
    }
    drain();
  }

  function wait(key: string): void {
    entries.set(key, { state: 'waiting' });
    waiting.push(key);
  }

  /** There is new work for `key`: hand it to the live agent, or start one, or wait for a slot. */
  function enqueue(key: string): void {
    if (stopping) return;
    const entry = entries.get(key);
    if (entry?.state === 'live') {
      if (!entry.closing && entry.agent.wake()) {
        entry.idle = false;
        entry.lastActive = deps.now();
        return;
      }
      entry.again = true;
      return;
    }
    if (entry) return; // waiting or retrying: that run will see the new work
    if (live().length < deps.maxConcurrent) {
      start(key);
      return;
    }
    wait(key);
    reclaim();
  }

  return {
    enqueue,
    snapshot(): QueueSnapshot {
      const s: QueueSnapshot = { live: [], waiting: [...waiting], retrying: [] };
      for (const [key, e] of entries) {
        if (e.state === 'live') s.live.push({ key, idle: e.idle });
        if (e.state === 'retrying') s.retrying.push(key);
      }
      return s;
    },
    /** Stops intake, closes every live agent and waits for them (bounded by the caller). */
    async stop(): Promise<void> {
      stopping = true;
      waiting.length = 0;
      const done: Promise<unknown>[] = [];
      for (const [key, e] of entries) {
        if (e.state === 'retrying') deps.clearTimer(e.timer);
        if (e.state === 'live') {
          e.closing = true;
          e.agent.close();
          done.push(e.agent.done.catch(() => undefined));
        } else entries.delete(key);
      }
      await Promise.all(done);
    },
    /** Ends one group's agent on request: killed now (`/stop`) or closed after its turn (`/new`);
     * either way not retried. False when it has none. */
    end(key: string, how: 'kill' | 'close'): boolean {
      const e = entries.get(key);
      if (e?.state === 'retrying') {
        deps.clearTimer(e.timer);
        entries.delete(key);
        tries.delete(key);
        return true;
      }
      if (e?.state !== 'live') return false;
      e.ended = true;
      e.closing = true;
      if (how === 'kill') e.agent.kill();
      else e.agent.close();
      return true;
    },
    /** After a bounded stop: kills whatever is still live. */
    kill(): void {
      for (const e of live()) e.agent.kill();
    },
  };
}
