/**
 * Mutation fuzzing of image drivers: take a small valid image, change a few
 * of its bytes, and run what a user would run on a file they were handed
 * (info, map, reading the guest, check, check -r all, writing). Each must either work
 * or refuse with one clear sentence (a BlockError), quickly and without a
 * large allocation; never a JavaScript error, a hang or a crash.
 *
 * Most of an image is data, where a change is harmless, so mutations aim at
 * metadata: the bytes a format names as hot (headers, tables), and any
 * non-zero 8-byte word (table entries are non-zero, sparse data is not).
 * Formats with checksums have them made right again on most cases, or
 * nothing past the checksum test would ever be reached.
 */
import { copyFileSync } from 'node:fs';
import { BlockError } from '../image/errors.js';
import { openImage } from '../image/open.js';
import { check, type CheckResult } from '../ops/check.js';
import { info } from '../ops/info.js';
import { bounded, RAW_JS_TEXT } from './hostile.js';
import type { Rng } from './prng.js';

const MiB = 1 << 20;

/** A valid image to mutate, and what to aim at in it. */
export interface FuzzSeed {
  name: string;
  path: string;
  /** Byte ranges [from, to) of metadata worth aiming at beyond the non-zero words. */
  hot: [number, number][];
  /** Makes the checksums right again after a mutation (formats that have them). */
  fixChecksums?: (bytes: Uint8Array) => void;
  /** Also run check -r all on a copy (formats that repair). */
  repairs?: boolean;
  /** Judges a copy that check -r all called clean (by another tool): what is wrong with it, if anything. */
  judgeRepaired?: (path: string) => string | undefined;
}

/** One changed field: where, and the bytes put there. */
interface Mutation {
  at: number;
  bytes: number[];
}

/** Values that hit limits and off-by-ones when read as a field of 1, 2, 4 or 8 bytes. */
function interesting(rng: Rng, width: number, fileSize: number): bigint {
  const max = (1n << BigInt(8 * width)) - 1n;
  const pick = rng.pick([
    0n,
    1n,
    max,
    max >> 1n,
    (max >> 1n) + 1n,
    BigInt(rng.int(0, 256)),
    BigInt(fileSize),
    BigInt(fileSize) + 512n,
    BigInt(1 << rng.int(0, 31)),
    BigInt(1 << rng.int(0, 31)) - 1n,
    BigInt(rng.int(0, Math.max(1, fileSize))),
  ]);
  return pick & max;
}

/** Where to change: a hot range, or a non-zero 8-byte word anywhere. */
function target(rng: Rng, bytes: Uint8Array, seed: FuzzSeed, words: number[]): number {
  if ((rng.next() < 0.5 || !words.length) && seed.hot.length) {
    const [from, to] = rng.pick(seed.hot);
    return rng.int(from, Math.min(to, bytes.length));
  }
  return words.length ? rng.pick(words) + rng.int(0, 8) : rng.int(0, bytes.length);
}

/** Offsets of the non-zero 8-byte words of `bytes`. */
export function nonZeroWords(bytes: Uint8Array): number[] {
  const out: number[] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 0; at + 8 <= bytes.length; at += 8) if (view.getBigUint64(at) !== 0n) out.push(at);
  return out;
}

/** One to four changes: a flipped bit, a random byte, or a field set to an interesting value (either endianness). */
export function mutate(rng: Rng, original: Uint8Array, seed: FuzzSeed, words: number[]): { bytes: Uint8Array; changes: Mutation[] } {
  const bytes = original.slice();
  const changes: Mutation[] = [];
  for (let n = rng.int(1, 5); n > 0; n--) {
    const at = target(rng, bytes, seed, words);
    const kind = rng.int(0, 3);
    let put: number[];
    if (kind === 0) put = [bytes[at] ^ (1 << rng.int(0, 8))];
    else if (kind === 1) put = [rng.int(0, 256)];
    else {
      const width = rng.pick([1, 2, 4, 8]);
      const v = interesting(rng, width, original.length);
      put = Array.from({ length: width }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
      if (rng.next() < 0.5) put.reverse();
    }
    put = put.slice(0, bytes.length - at);
    bytes.set(put, at);
    changes.push({ at, bytes: put });
  }
  if (seed.fixChecksums && rng.next() < 0.75) seed.fixChecksums(bytes);
  return { bytes, changes };
}

/** What a mutated image did: each step's outcome, or the first thing that went wrong. */
export interface FuzzOutcome {
  /** Step names with 'ok' or the refusal's kind. */
  steps: string[];
  /** Set when a step crashed, hung, allocated too much or said something unclear. */
  failure?: string;
}

/** Guest bytes read at most, from the start and at random places. */
const READ_LIMIT = 8 * MiB;
/** Block-status calls at most per image. */
const STATUS_CALLS = 4096;

/** Reads what a user would: info, the map, the guest's data (a bounded sample). */
async function readAround(path: string, rng: Rng): Promise<void> {
  await info({ filename: path });
  const image = await openImage(path, { readOnly: true });
  try {
    const size = image.size;
    for (let at = 0, calls = 0; at < size && calls < STATUS_CALLS; calls++) {
      const st = await image.blockStatus(at, size - at);
      if (!(st.length > 0)) throw new Error(`block status at ${at} covered ${st.length} bytes`);
      at += st.length;
    }
    const buf = new Uint8Array(MiB);
    for (let at = 0; at < Math.min(size, READ_LIMIT / 2); at += MiB) {
      await image.read(buf.subarray(0, Math.min(MiB, size - at)), at);
    }
    for (let i = 0; i < 4 && size > 0; i++) {
      const at = Math.floor(rng.next() * size);
      await image.read(buf.subarray(0, Math.min(MiB, size - at)), at);
    }
  } finally {
    await image.close();
  }
}

/** Writes what a user might: data, zeros and a discard at a few places, then flushes. */
async function writeAround(path: string, rng: Rng): Promise<void> {
  const image = await openImage(path, { readOnly: false });
  try {
    const sectors = Math.floor(image.size / 512);
    if (sectors === 0) return;
    const piece = () => {
      const at = rng.int(0, sectors) * 512;
      return { at, length: Math.min(rng.int(1, 129) * 512, image.size - at) };
    };
    for (let i = 0; i < 3; i++) {
      const { at, length } = piece();
      await image.write(new Uint8Array(length).fill(0x5a + i), at);
    }
    const zeros = piece();
    await image.writeZeroes(zeros.at, zeros.length, true);
    const gone = piece();
    await image.discard(gone.at, gone.length);
    await image.flush();
  } finally {
    await image.close();
  }
}

/**
 * Runs each step on the image at `path`; a step may refuse (a clear
 * BlockError) and the next still runs. `scratch` receives copies to repair
 * and to write to.
 */
export async function exercise(path: string, scratch: string, seed: FuzzSeed, rng: Rng): Promise<FuzzOutcome> {
  const steps: string[] = [];
  const run = async (name: string, fn: () => Promise<unknown>, judge?: (value: unknown) => string | undefined) => {
    try {
      const value = await bounded(fn, { quickMs: 10_000, memoryLimit: 256 * MiB, checkRss: false });
      steps.push(`${name}:ok`);
      const wrong = judge?.(value);
      return wrong && `${name}: ${wrong}`;
    } catch (err) {
      if (err instanceof BlockError && !RAW_JS_TEXT.test(err.message) && !err.message.includes('\n')) {
        steps.push(`${name}:${err.kind}`);
        return undefined;
      }
      return `${name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`;
    }
  };
  for (const [name, fn] of [
    ['read', () => readAround(path, rng)],
    ['check', () => check({ filename: path })],
  ] as const) {
    const failure = await run(name, fn);
    if (failure) return { steps, failure };
  }
  if (seed.repairs) {
    copyFileSync(path, scratch);
    const repaired = (r: unknown) => {
      const { corruptions, checkErrors } = r as CheckResult;
      return corruptions || checkErrors ? undefined : seed.judgeRepaired?.(scratch);
    };
    const failure = await run('repair', () => check({ filename: scratch, repair: 'all' }), repaired);
    if (failure) return { steps, failure };
  }
  copyFileSync(path, scratch);
  const failure = await run('write', () => writeAround(scratch, rng));
  return failure ? { steps, failure } : { steps };
}
