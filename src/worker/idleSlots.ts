/**
 * Idle slots waiting for work. A job released or created sends one NOTIFY; waking every idle slot
 * for it would send them all to claim one job (N-1 empty claims per job on a busy fleet), so a
 * notification wakes the slot that has waited longest, and only `stop()` wakes them all.
 */
export class IdleSlots {
  readonly #waiting = new Set<() => void>();

  /** Resolve after `ms`, or sooner when woken. */
  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#waiting.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#waiting.add(wake);
    });
  }

  /** Wake the longest-waiting slot (a Set iterates in insertion order); false if none waits. */
  wakeOne(): boolean {
    const first = this.#waiting.values().next();
    if (first.done) return false;
    first.value();
    return true;
  }

  wakeAll(): void {
    for (const wake of [...this.#waiting]) wake();
  }

  get size(): number {
    return this.#waiting.size;
  }
}
