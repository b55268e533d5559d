/**
 * Long work is a job: every op takes a JobContext, so the CLI (Ctrl-C, a
 * progress bar) and the app (a Cancel button, progress events) drive the same
 * code.
 */
import { throwIfAborted } from '../image/errors.js';

export interface Progress {
  /** Bytes of guest data processed so far. */
  done: number;
  /** Bytes to process in all. */
  total: number;
}

export interface JobContext {
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
}

/** Counts progress and reports it (at most every `intervalMs`, and at the end). */
export class ProgressMeter {
  private done = 0;
  private last = 0;

  constructor(
    private readonly total: number,
    private readonly ctx: JobContext,
    private readonly intervalMs = 100,
  ) {
    ctx.onProgress?.({ done: 0, total });
  }

  add(bytes: number): void {
    this.done += bytes;
    const now = Date.now();
    if (now - this.last >= this.intervalMs) {
      this.last = now;
      this.ctx.onProgress?.({ done: this.done, total: this.total });
    }
  }

  finish(): void {
    this.ctx.onProgress?.({ done: this.total, total: this.total });
  }
}

/**
 * Runs `count` workers that each take the next item until `next` returns
 * undefined. The first failure (or an abort) stops the others from taking
 * more and is rethrown once all have settled.
 */
export async function runWorkers<T>(
  count: number,
  next: () => T | undefined,
  work: (item: T) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  let failure: { err: unknown } | undefined;
  const worker = async () => {
    while (!failure) {
      throwIfAborted(signal);
      const item = next();
      if (item === undefined) return;
      await work(item);
    }
  };
  await Promise.all(
    Array.from({ length: count }, () =>
      worker().catch((err) => {
        failure ??= { err };
      }),
    ),
  );
  if (failure) throw failure.err;
}
