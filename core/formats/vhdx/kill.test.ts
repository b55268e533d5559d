/**
 * Crash safety with real kills: a process writing to a VHDX image through
 * Platter (core/test/crash-worker.ts: random writes, zero writes, discards
 * and growth, a flush after each) is killed with SIGKILL: three times in
 * four just before a chosen write of a chosen operation, else from outside
 * at a random moment.
 * After each kill: qemu-img check -r all (which replays a dirty log, as QEMU
 * must) leaves an image with no errors; Platter's read-only view (the log
 * replayed in memory) equals qemu-img's repaired image; and the guest data is
 * what the finished operations wrote, the interrupted one showing its old or
 * new bytes at each byte.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { buildCrashWorker } from '../../test/crash-build.js';
import { crashOps, type CrashOp, type CrashVariant } from '../../test/crash-ops.js';
import { prng } from '../../test/prng.js';
import { qemuCompare } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const KiB = 1024;
const MiB = 1 << 20;
const KILLS = 24;

const VARIANT: CrashVariant = {
  name: 'vhdx 1 MiB blocks',
  options: 'block_size=1M',
  clusterSize: 64 * KiB,
  size: 8 * MiB,
  window: 8 * MiB,
  prefill: 0,
  snapshots: false,
  compress: false,
  lazy: false,
  growStep: MiB,
  maxSize: 16 * MiB,
};

let t: ReturnType<typeof tempDir>;
let worker: string;
let base: string;

beforeAll(async () => {
  t = tempDir('platter-vhdx-kill-');
  if (!HAS_QEMU) return;
  worker = t.path('crash-worker.mjs');
  await buildCrashWorker(worker);
  base = t.path('base.vhdx');
  sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', VARIANT.options, base, String(VARIANT.size)]);
});
afterAll(() => t?.cleanup());

/** The guest content after `op`: VHDX discards read as zeros over their whole range. */
function apply(content: Uint8Array<ArrayBufferLike>, op: CrashOp): Uint8Array<ArrayBufferLike> {
  if (op.kind === 'grow') {
    const grown = new Uint8Array(op.size);
    grown.set(content);
    return grown;
  }
  if (op.kind === 'write') content.set(op.data, op.offset);
  else if (op.kind === 'zero' || op.kind === 'discard') content.fill(0, op.offset, op.offset + op.length);
  return content;
}

interface Kill {
  /** The worker kills itself just before this write of this operation (reproducible)... */
  killAt?: { op: number; write: number };
  /** ...or is killed from outside this long after it is ready. */
  delay: number;
}

/** Runs the worker on `image` until it is killed; returns how many operations finished. */
async function runUntilKilled(image: string, seed: number, kill: Kill): Promise<number> {
  copyFileSync(base, image);
  const args = JSON.stringify({ seed, variant: VARIANT, format: 'vhdx', killAt: kill.killAt });
  const child = spawn(process.execPath, [worker, image, args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d));
  child.stdout.on('data', (d: Buffer) => {
    if (!kill.killAt && !out.includes('ready\n') && (out + d).includes('ready\n')) {
      setTimeout(() => child.kill('SIGKILL'), kill.delay);
    }
    out += d;
  });
  const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_c, sig) => resolve(sig)));
  if (signal !== 'SIGKILL') throw new Error(`the worker ended by itself: ${err.trim()}`);
  return out.split('\n').filter((l) => /^\d+ \d+$/.test(l)).length;
}

describe.skipIf(!HAS_QEMU)('vhdx crash safety under SIGKILL', () => {
  it(`${KILLS} kills: repairs clean, reads the same in Platter and QEMU, keeps every finished operation`, async () => {
    const seed = Number(process.env.CRASH_SEED ?? Date.now() % 1_000_000);
    console.log(`vhdx kill test seed ${seed} (CRASH_SEED=${seed} replays it)`);
    const rng = prng(seed);
    let dirty = 0;
    for (let k = 0; k < KILLS; k++) {
      const opsSeed = rng.int(1, 1 << 30);
      const image = t.path(`kill-${k}.vhdx`);
      // Three kills in four at an exact write (a log cycle is about ten writes), the rest from outside.
      // Early operations allocate blocks, so their flushes go through the log.
      const exact = { killAt: { op: rng.int(0, 12), write: rng.int(1, 10) }, delay: 0 };
      const kill: Kill = k % 4 === 3 ? { delay: rng.int(20, 600) } : exact;
      const done = await runUntilKilled(image, opsSeed, kill);
      // The model after the finished operations, and after the interrupted one.
      const ops = crashOps(opsSeed, VARIANT);
      let before: Uint8Array<ArrayBufferLike> = new Uint8Array(VARIANT.size);
      for (let i = 0; i < done; i++) before = apply(before, ops.next().value!);
      const interrupted = ops.next().value!;
      const after = apply(before.slice(), interrupted);
      const at = `kill ${k} (seed ${seed}) after ${done} operations, in ${interrupted.kind}`;

      const img = await openImage(image, { format: 'vhdx' });
      let got: Uint8Array;
      try {
        got = new Uint8Array(img.size);
        await img.read(got, 0);
        if ((await img.layer.info()).dirty) dirty++;
      } finally {
        await img.close();
      }
      expect([before.length, after.length], at).toContain(got.length);
      const ref = got.length === before.length ? before : after;
      const other = got.length === after.length ? after : before;
      const bad = got.findIndex((x, i) => x !== ref[i] && x !== other[i]);
      expect(bad, `${at}: byte ${bad} reads ${got[bad]}`).toBe(-1);

      const repaired = t.path(`kill-${k}-repaired.vhdx`);
      copyFileSync(image, repaired);
      const r = shStatus('qemu-img', ['check', '-r', 'all', repaired]);
      expect(r.status, `${at}: ${r.stdout}${r.stderr}`).toBe(0);
      const view = t.path(`kill-${k}.raw`);
      writeFileSync(view, got);
      expect(qemuCompare(view, repaired), at).toBe('Images are identical.');
    }
    console.log(`${dirty} of ${KILLS} kills left a log to replay`);
  }, 300_000);
});
