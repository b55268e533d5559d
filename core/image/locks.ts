/** Async locks for drivers whose metadata changes must not interleave. */

/** A simple async mutex: metadata changes happen one at a time. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise((r) => (release = r));
    await prev;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

/**
 * Many readers or one writer: guest I/O runs shared, work that moves data
 * under it (relocating blocks) runs exclusive. Writers are served in turn, and
 * shared work that arrives while one waits queues behind it.
 */
export class RwLock {
  private active = 0;
  private writer = false;
  private readonly queue: { exclusive: boolean; wake: () => void }[] = [];

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    if (this.writer || this.queue.length) await this.wait(false);
    else this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.next();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.writer || this.active || this.queue.length) await this.wait(true);
    else this.writer = true;
    try {
      return await fn();
    } finally {
      this.writer = false;
      this.next();
    }
  }

  /** Queues the caller; `next` lets it in (and counts it in) when its turn comes. */
  private wait(exclusive: boolean): Promise<void> {
    return new Promise<void>((wake) => this.queue.push({ exclusive, wake }));
  }

  /** Lets in the next writer, or every reader up to it. */
  private next(): void {
    if (this.writer || this.active) return;
    const head = this.queue[0];
    if (!head) return;
    if (head.exclusive) {
      this.queue.shift();
      this.writer = true;
      head.wake();
      return;
    }
    while (this.queue.length && !this.queue[0].exclusive) {
      this.active++;
      this.queue.shift()!.wake();
    }
  }
}
