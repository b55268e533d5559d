/**
 * Crash safety: a process writing to a qcow2 image through Platter is killed
 * with SIGKILL at 200 random moments. After each kill qemu-img check finds
 * no corruption (leaks are allowed); the guest data is what the finished
 * operations wrote (the interrupted one may show its old or its new bytes
 * at each byte); the virtual size is the old or the new one; and a
 * lazy_refcounts image is repaired by Platter's next read-write open, after
 * which qemu-img check finds no leaks either and the data is unchanged.
 *
 * Snapshot operations are no exception: they switch to their new tables and
 * counts with one header write (snapshots.ts), so the COPIED flags of the
 * active tables agree with the counts wherever a kill falls.
 *
 * The worker (core/test/crash-worker.ts) runs seeded random operations on
 * images of several variants: writes of any size and alignment, zero
 * writes, discards, compressed writes, snapshot creation, deletion and
 * application, and resizes that move the L1 table (and shrinks, which free
 * tables, drop refcount blocks and cut the file); one variant also
 * outgrows its refcount table. Three kills in four come at an exact moment: the worker kills
 * itself before a chosen write of a chosen operation (reproducible); every
 * fourth comes from outside after a random delay.
 *
 * The run prints its seed; CRASH_SEED=<seed> replays it.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, readFileSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { buildCrashWorker } from '../../test/crash-build.js';
import { crashOps, GuestModel, OP_KINDS, PREFILL_BYTE, type CrashOp, type CrashVariant } from '../../test/crash-ops.js';
import { prng } from '../../test/prng.js';
import { CLEAN, problems, qemuCheck, type QemuCheck } from '../../test/qemu.js';
import { hasTool, sh, tempDir } from '../../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');

const KiB = 1024;
const MiB = 1 << 20;
const GiB = 1 << 30;

const KILLS = 200;
/** Workers alive at once (the machine has two cores; the workers mostly wait on the file). */
const PARALLEL = 3;
/** Exact kills pick one of the first this many operations. */
const KILL_OPS = 120;
/** Operation sequences per variant. */
const SEQUENCES = 4;
const SEED = Number(process.env.CRASH_SEED ?? Math.floor(Math.random() * 2 ** 32));

/*
 * One L1 entry maps 512 MiB of guest with 64 KiB clusters, 2 MiB with 4 KiB
 * and 32 KiB with 512 bytes: growSteps of that much move the L1 table on
 * every resize. With 512-byte clusters and 64-bit refcounts one refcount
 * table cluster counts 2 MiB of file; the prefill brings the file close to
 * that, and writes to the rest of the window take it past (after some 40
 * operations). Snapshots of the 512-byte-cluster images touch thousands of
 * clusters, so only one of them has them.
 */
const VARIANTS: CrashVariant[] = [
  ...['compat=1.1', 'compat=0.10'].map((options) => ({
    name: options,
    options,
    clusterSize: 64 * KiB,
    size: 64 * MiB,
    window: 2 * MiB,
    prefill: 512 * KiB,
    snapshots: true,
    compress: true,
    lazy: false,
    growStep: 512 * MiB,
    maxSize: 8 * GiB,
    shrinks: true,
  })),
  {
    name: 'cluster_size=512',
    options: 'cluster_size=512',
    clusterSize: 512,
    size: MiB,
    window: 256 * KiB,
    prefill: 64 * KiB,
    snapshots: true,
    compress: true,
    lazy: false,
    growStep: 32 * KiB,
    maxSize: 16 * MiB,
    shrinks: true,
  },
  {
    name: 'refcount_bits=1',
    options: 'cluster_size=4096,refcount_bits=1',
    clusterSize: 4 * KiB,
    size: 8 * MiB,
    window: MiB,
    prefill: 256 * KiB,
    snapshots: false,
    compress: false,
    lazy: false,
    growStep: 2 * MiB,
    maxSize: 64 * MiB,
    shrinks: true,
  },
  {
    name: 'refcount_bits=64',
    options: 'cluster_size=512,refcount_bits=64',
    clusterSize: 512,
    size: 4 * MiB,
    window: 4 * MiB,
    prefill: 1970 * KiB,
    snapshots: false,
    compress: true,
    lazy: false,
    growStep: 32 * KiB,
    maxSize: 16 * MiB,
    shrinks: true,
  },
  {
    name: 'lazy_refcounts=on',
    options: 'cluster_size=4096,lazy_refcounts=on',
    clusterSize: 4 * KiB,
    size: 8 * MiB,
    window: MiB,
    prefill: 128 * KiB,
    snapshots: true,
    compress: true,
    lazy: true,
    growStep: 2 * MiB,
    maxSize: 64 * MiB,
    shrinks: true,
  },
];

let t: ReturnType<typeof tempDir>;
let worker: string;
const base = (v: CrashVariant) => t.path(`base-${v.name.replace(/\W/g, '_')}.qcow2`);

beforeAll(async () => {
  t = tempDir();
  if (!HAS_QEMU) return;
  worker = t.path('crash-worker.mjs');
  await buildCrashWorker(worker);
  for (const v of VARIANTS) {
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', v.options, base(v), String(v.size)]);
    if (v.prefill) sh('qemu-io', ['-c', `write -P ${PREFILL_BYTE} 0 ${v.prefill}`, base(v)]);
  }
});
afterAll(() => t?.cleanup());

interface Kill {
  index: number;
  variant: CrashVariant;
  /** The operation sequence. */
  opsSeed: number;
  /** Killed just before this write of this operation (none: from outside after `delay` ms). */
  killAt?: { op: number; write: number };
  delay: number;
}

/** Runs the worker on a copy of the variant's image until it dies; returns the writes of each finished operation. */
async function runUntilKilled(k: Kill, image: string): Promise<number[]> {
  copyFileSync(base(k.variant), image);
  const child = spawn(
    process.execPath,
    [worker, image, JSON.stringify({ seed: k.opsSeed, variant: k.variant, killAt: k.killAt })],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d));
  child.stdout.on('data', (d: Buffer) => {
    if (!k.killAt && !out.includes('ready\n') && (out + d).includes('ready\n')) {
      setTimeout(() => child.kill('SIGKILL'), k.delay);
    }
    out += d;
  });
  const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, sig) => resolve(sig)));
  if (signal !== 'SIGKILL') {
    throw new Error(`kill ${k.index} (${k.variant.name}): the worker ended by itself (${signal}): ${err.trim()}`);
  }
  return out
    .split('\n')
    .filter((l) => /^\d+ \d+$/.test(l))
    .map((l) => Number(l.split(' ')[1]));
}

/** The guest window as qemu-img reads it. */
function readWindow(image: string, v: CrashVariant): Uint8Array {
  const out = `${image}.window.raw`;
  const bs = 64 * KiB;
  sh('qemu-img', ['dd', '-f', 'qcow2', '-O', 'raw', `bs=${bs}`, `count=${v.window / bs}`, `if=${image}`, `of=${out}`]);
  return readFileSync(out);
}

const isClean = (c: QemuCheck) => JSON.stringify(problems(c)) === JSON.stringify(CLEAN);

/** Where `got` is neither what the finished operations left nor what the interrupted one would. */
function firstMismatch(got: Uint8Array, before: Uint8Array, after: Uint8Array): number {
  for (let i = 0; i < before.length; i++) if (got[i] !== before[i] && got[i] !== after[i]) return i;
  return got.length === before.length ? -1 : got.length;
}

/** A check's counts and its first complaint (a crash can leave thousands). */
function summary(c: QemuCheck): string {
  const first = c.text.split('\n').find((l) => /^(ERROR|Leaked)/.test(l)) ?? c.text.trim();
  const counts = `${c.corruptions} corruptions, ${c.leaks} leaks, ${c.checkErrors} check errors (exit ${c.status})`;
  return `${counts}; first: ${first.trim()}`;
}

interface Verdict {
  interrupted: CrashOp;
  /** Everything wrong, one line each (none: all good). */
  wrong: string[];
}

/** Judges the image a worker left after finishing `done` operations. */
async function judge(k: Kill, image: string, done: number): Promise<Verdict> {
  const v = k.variant;
  const before = new GuestModel(v);
  const ops = crashOps(k.opsSeed, v);
  for (let i = 0; i < done; i++) before.apply(ops.next().value as CrashOp);
  const interrupted = ops.next().value as CrashOp;
  const after = before.copy();
  after.apply(interrupted);

  const wrong: string[] = [];
  const c = qemuCheck(image);
  if (c.checkErrors || ![0, 2, 3].includes(c.status)) wrong.push(`qemu-img check failed: ${summary(c)}`);
  else if (c.corruptions) wrong.push(`qemu-img check: ${summary(c)}`);
  const size = JSON.parse(sh('qemu-img', ['info', '--output=json', image]))['virtual-size'];
  if (size !== before.size && size !== after.size) {
    wrong.push(`virtual size ${size}, expected ${before.size} or ${after.size}`);
  }
  const data = readWindow(image, v);
  const at = firstMismatch(data, before.window, after.window);
  if (at >= 0) wrong.push(`guest byte ${at} reads ${data[at]}, expected ${before.window[at]} or ${after.window[at]}`);
  if (v.lazy) {
    // The next read-write open finds the image dirty and rebuilds its refcounts.
    const img = await openImage(image, { format: 'qcow2', readOnly: false });
    await img.close();
    const repaired = qemuCheck(image);
    if (!isClean(repaired)) wrong.push(`after Platter's repair, qemu-img check: ${summary(repaired)}`);
    const again = readWindow(image, v);
    const changed = firstMismatch(again, data, data);
    if (changed >= 0) wrong.push(`the repair changed guest byte ${changed}`);
  }
  return { interrupted, wrong };
}

/** Runs `fn` on every item, PARALLEL at a time. */
async function pool<T>(items: T[], fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, lane));
}

/** The image header's L1 and refcount table offsets (to see that they moved). */
function tableOffsets(image: string): { l1: bigint; refcountTable: bigint } {
  const dv = new DataView(readFileSync(image).buffer);
  return { l1: dv.getBigUint64(40), refcountTable: dv.getBigUint64(48) };
}

describe.skipIf(!HAS_QEMU)('qcow2 crash safety', () => {
  it(`${KILLS} kills -9 leave no corruption (seed ${SEED})`, { timeout: 180_000 }, async () => {
    console.log(`qcow2 crash test seed ${SEED} (replay with CRASH_SEED=${SEED})`);
    const rng = prng(SEED);
    // A few operation sequences per variant, run once without a kill to
    // learn how many writes each operation makes: kills then fall evenly on
    // the writes of the chosen operation, be it one write or thousands.
    const sequences = VARIANTS.flatMap((variant) =>
      Array.from({ length: SEQUENCES }, () => ({ variant, opsSeed: rng.int(0, 2 ** 31), writes: [] as number[] })),
    );
    await pool(sequences, async (sq, i) => {
      // Killed once operation KILL_OPS is done (its write 0 never comes).
      const killAt = { op: KILL_OPS, write: 0 };
      const image = t.path(`calibrate-${i}.qcow2`);
      sq.writes = await runUntilKilled({ index: -1 - i, ...sq, killAt, delay: 0 }, image);
      rmSync(image);
    });
    const kills: Kill[] = Array.from({ length: KILLS }, (_, index) => {
      const { variant, opsSeed, writes } = sequences[index % sequences.length];
      const op = rng.int(0, KILL_OPS);
      // Write writes[op] + 1 is never reached: then the kill comes right after the operation.
      const killAt = { op, write: rng.int(1, writes[op] + 2) };
      const delay = rng.int(0, 300);
      return { index, variant, opsSeed, killAt: index % 4 === 3 ? undefined : killAt, delay };
    });
    const failures: string[] = [];
    const interrupted = new Map<string, number>();
    const moved = { l1: 0, refcountTable: 0 };
    await pool(kills, async (k) => {
      const image = t.path(`kill-${k.index}.qcow2`);
      const done = (await runUntilKilled(k, image)).length;
      const now = tableOffsets(image);
      const was = tableOffsets(base(k.variant));
      if (now.l1 !== was.l1) moved.l1++;
      if (now.refcountTable !== was.refcountTable) moved.refcountTable++;
      const verdict = await judge(k, image, done);
      const kind = verdict.interrupted.kind;
      interrupted.set(kind, (interrupted.get(kind) ?? 0) + 1);
      const how = k.killAt ? `before its write ${k.killAt.write}` : `after ${k.delay} ms`;
      const what = `kill ${k.index} (${k.variant.name}, ${how}, during operation ${done}: ${kind})`;
      for (const w of verdict.wrong) failures.push(`${what}: ${w}`);
      // 200 images and their exports would take a gigabyte.
      for (const f of [image, `${image}.window.raw`, `${image}.repaired.qcow2`]) rmSync(f, { force: true });
    });
    console.log('operations interrupted:', Object.fromEntries(interrupted));
    console.log(`images whose L1 table had moved: ${moved.l1}; whose refcount table had: ${moved.refcountTable}`);
    expect(failures, `seed ${SEED}`).toEqual([]);
    // Every kind of operation was interrupted, and the tables really moved.
    expect(OP_KINDS.filter((kind) => !interrupted.has(kind))).toEqual([]);
    expect(moved.l1).toBeGreaterThan(0);
    expect(moved.refcountTable).toBeGreaterThan(0);
  });
});
