// A fake clock for the scheduler: `now` and timers that fire only when the test moves time on.
export class FakeClock {
  private timers = new Set<{ at: number; fn: () => void }>();
  constructor(private t: number) {}

  readonly now = (): number => this.t;
  readonly setTimer = (fn: () => void, ms: number): unknown => {
    const timer = { at: this.t + ms, fn };
    this.timers.add(timer);
    return timer;
  };
  readonly clearTimer = (timer: unknown): void => {
    this.timers.delete(timer as { at: number; fn: () => void });
  };

  /** Moves time to `to`, firing every timer due on the way, in order (a fired timer may arm more). */
  advanceTo(to: number): void {
    for (;;) {
      const next = [...this.timers].sort((a, b) => a.at - b.at)[0];
      if (!next || next.at > to) break;
      this.timers.delete(next);
      this.t = Math.max(this.t, next.at);
      next.fn();
    }
    this.t = Math.max(this.t, to);
  }

  advance(ms: number): void {
    this.advanceTo(this.t + ms);
  }

  /** When the earliest pending timer fires, if any. */
  nextTimerAt(): number | undefined {
    return [...this.timers].sort((a, b) => a.at - b.at)[0]?.at;
  }
}
