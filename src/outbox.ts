// Delivery of committed replies. Rows are sent in id order per chat; a failed send is retried
// with backoff (honouring a channel's retry-after hint) and after the last try kept as 'failed'
// for inspection. Event-driven: `kick()` after a commit; a timer only for the next retry.
import type { Channel } from './channels/channel.js';
import { ChannelError } from './channels/channel.js';
import type { Db } from './db.js';
import type { Logger } from './log.js';

export interface OutboxDeps {
  db: Db;
  channels: () => readonly Channel[];
  log: Logger;
  now: () => number;
  setTimer: (fn: () => void, ms: number) => unknown;
  clearTimer: (t: unknown) => void;
}

const MAX_ATTEMPTS = 8;
const BASE_DELAY_MS = 1000;

export function createOutbox(deps: OutboxDeps) {
  let running: Promise<void> | undefined;
  let again = false;
  let timer: unknown;
  let stopped = false;

  async function pass(): Promise<void> {
    const blocked = new Set<string>();
    for (const row of deps.db.outboxDue(deps.now())) {
      if (blocked.has(row.chatJid)) continue;
      const channel = deps.channels().find((c) => c.owns(row.chatJid));
      try {
        if (!channel) throw new ChannelError(`no channel serves ${row.chatJid}`, undefined, true);
        const sent = await channel.send({
          outboxId: row.id,
          chatJid: row.chatJid,
          text: row.text,
          ...(row.sender ? { sender: row.sender } : {}),
          ...(row.replyTo ? { replyTo: row.replyTo } : {}),
          ...(row.threadId ? { threadId: row.threadId } : {}),
          ...(row.file ? { file: row.file } : {}),
        });
        deps.db.markSent(row.id, sent.platformId, deps.now());
      } catch (err) {
        blocked.add(row.chatJid); // keep the chat's order: later rows wait for this one
        const e =
          err instanceof ChannelError ? err : new ChannelError(String((err as Error)?.message ?? err));
        const attempts = row.attempts + 1;
        const final = e.permanent || attempts >= MAX_ATTEMPTS;
        const delay = Math.max(e.retryAfterMs ?? 0, BASE_DELAY_MS * 2 ** (attempts - 1));
        deps.db.markRetry(row.id, e.message, deps.now() + delay, final);
        const what = `outbox ${row.id} to ${row.chatJid}: ${e.message}`;
        if (final) deps.log.error(`${what}; giving up after ${attempts} tries (kept as failed)`);
        else deps.log.warn(`${what}; retry ${attempts + 1} in ${delay} ms`);
      }
    }
  }

  function schedule(): void {
    deps.clearTimer(timer);
    const next = deps.db.outboxNextDue();
    if (next === undefined || stopped) return;
    timer = deps.setTimer(kick, Math.max(0, next - deps.now()));
  }

  function kick(): void {
    if (running) {
      again = true;
      return;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await pass();
        } while (again);
      } catch (err) {
        deps.log.error(`outbox: ${(err as Error).message}`);
      } finally {
        running = undefined;
        schedule();
      }
    })();
  }

  return {
    kick,
    /** Delivers what is due now and waits for it (bounded by the caller). */
    async flush(): Promise<void> {
      kick();
      while (running) await running;
    },
    stop(): void {
      stopped = true;
      deps.clearTimer(timer);
    },
  };
}

export type Outbox = ReturnType<typeof createOutbox>;
