/**
 * Assertions for hostile-input tests: a damaged image must be refused with
 * one clear sentence (a BlockError of a stable kind about the file), quickly
 * and without a large allocation; never a raw JavaScript error text.
 */
import { expect } from 'vitest';
import { BlockError, type ErrorKind } from '../image/errors.js';

const MiB = 1 << 20;

/** Messages that are JavaScript leaking through instead of a sentence about the file. */
export const RAW_JS_TEXT =
  /DataView|typed array|out of range|outside the bounds|Invalid array length|Cannot read prop|undefined|NaN|ERR_[A-Z_]+|RangeError|TypeError|is not a function|Maximum call stack/;

/** The typed-array constructors the engine allocates its buffers with. */
const WATCHED = ['ArrayBuffer', 'Uint8Array', 'BigUint64Array'] as const;

/**
 * Records the largest buffer, and the sum of all, made with `new Uint8Array(n)`
 * and friends while installed: the engine's buffers come from these globals,
 * so a size taken from a hostile field shows up even if it is freed at once.
 */
function watchAllocations(): { largest: () => number; total: () => number; restore: () => void } {
  let largest = 0;
  let total = 0;
  const g = globalThis as unknown as Record<string, unknown>;
  const saved = WATCHED.map((name) => [name, g[name]] as const);
  for (const [name, original] of saved) {
    g[name] = new Proxy(original as new (...args: unknown[]) => { byteLength: number }, {
      construct(target, args) {
        const made = Reflect.construct(target, args, target) as { byteLength: number };
        largest = Math.max(largest, made.byteLength);
        if (!(args[0] instanceof ArrayBuffer)) total += made.byteLength; // views of an existing buffer are free
        return made;
      },
    });
  }
  return {
    largest: () => largest,
    total: () => total,
    restore: () => {
      for (const [name, original] of saved) g[name] = original;
    },
  };
}

export interface Bounds {
  /** Time the call may take. */
  quickMs?: number;
  /** Memory it may allocate in all, and grow the process by. */
  memoryLimit?: number;
  /** Size of the largest single buffer it may make (memoryLimit unless said). */
  maxBuffer?: number;
  /** Whether RSS growth counts (it says little where parsing legitimately makes many small objects). */
  checkRss?: boolean;
}

/**
 * Runs `fn`, failing if it takes long, allocates one buffer of `maxBuffer`
 * bytes or more, allocates `memoryLimit` bytes or more in all, or makes
 * memory (ArrayBuffers or RSS, sampled between awaits) grow by that much.
 */
export async function bounded<T>(fn: () => Promise<T>, bounds: Bounds = {}): Promise<T> {
  const { quickMs = 3_000, memoryLimit = 64 * MiB, maxBuffer = memoryLimit, checkRss = true } = bounds;
  const before = process.memoryUsage();
  let peakArrayBuffers = before.arrayBuffers;
  let peakRss = before.rss;
  const sample = () => {
    const m = process.memoryUsage();
    peakArrayBuffers = Math.max(peakArrayBuffers, m.arrayBuffers);
    peakRss = Math.max(peakRss, m.rss);
  };
  const timer = setInterval(sample, 1);
  const watch = watchAllocations();
  const started = performance.now();
  let outcome: { ok: true; value: T } | { ok: false; error: unknown };
  try {
    outcome = { ok: true, value: await fn() };
  } catch (error) {
    outcome = { ok: false, error };
  } finally {
    watch.restore();
    clearInterval(timer);
    sample();
  }
  expect(performance.now() - started, 'took too long').toBeLessThan(quickMs);
  expect(watch.largest(), 'the largest single buffer').toBeLessThan(maxBuffer);
  expect(watch.total(), 'all buffers allocated').toBeLessThan(memoryLimit);
  expect(peakArrayBuffers - before.arrayBuffers, 'ArrayBuffer memory grew').toBeLessThan(memoryLimit);
  if (checkRss) expect(peakRss - before.rss, 'RSS grew').toBeLessThan(memoryLimit);
  if (!outcome.ok) throw outcome.error;
  return outcome.value;
}

/** The error `p` rejects with; fails the test if it resolves. */
export async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the image to be refused, but it was accepted');
}

/** One clear sentence of the expected kind, about `path`. */
export function expectClear(err: unknown, path: string, kind: ErrorKind, message: RegExp): void {
  if (!(err instanceof BlockError)) throw err;
  expect({ kind: err.kind, message: err.message, path: err.context.path }).toEqual({
    kind,
    message: expect.stringMatching(message),
    path,
  });
  expect(err.message).not.toMatch(RAW_JS_TEXT);
  expect(err.message).not.toContain('\n');
}

/** `fn` is refused with one clear sentence, within `bounds`. */
export async function expectRefused(
  fn: () => Promise<unknown>,
  path: string,
  kind: ErrorKind,
  message: RegExp,
  bounds?: Bounds,
): Promise<void> {
  expectClear(await bounded(() => rejection(fn()), bounds), path, kind, message);
}
