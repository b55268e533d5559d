/**
 * The operations of the qcow2 crash test, made from a seed: the worker
 * (crash-worker.ts) runs them on an image, and the test replays the same
 * sequence into a model of the guest content, so the worker only has to say
 * how many operations it finished.
 */
import { prng, type Rng } from './prng.js';

/** One kind of image the crash test writes to. */
export interface CrashVariant {
  name: string;
  /** qemu-img create -o options. */
  options: string;
  clusterSize: number;
  /** The virtual size the image starts with. */
  size: number;
  /** Operations change guest bytes [0, window) only; growing adds zeros past it. */
  window: number;
  /** Bytes qemu-io writes (pattern PREFILL_BYTE) before the worker starts: a fuller file. */
  prefill: number;
  /** Internal snapshots (they need refcounts of 2: not with refcount_bits=1). */
  snapshots: boolean;
  /** Compressed writes (clusters packed together need refcounts of 2 as well). */
  compress: boolean;
  lazy: boolean;
  /** Each resize grows the image by 1 to 3 of these, up to maxSize. */
  growStep: number;
  maxSize: number;
  /** Resizes may also shrink the image by 1 to 3 growSteps, never below the window. */
  shrinks?: boolean;
}

export const PREFILL_BYTE = 0x5a;

export type CrashOp =
  | { kind: 'write'; offset: number; data: Uint8Array }
  | { kind: 'zero'; offset: number; length: number; mayUnmap: boolean }
  | { kind: 'discard'; offset: number; length: number }
  | { kind: 'compress'; offset: number; data: Uint8Array }
  | { kind: 'snapshot-create'; name: string }
  | { kind: 'snapshot-delete'; name: string }
  | { kind: 'snapshot-apply'; name: string }
  | { kind: 'grow'; size: number }
  | { kind: 'shrink'; size: number };

export const OP_KINDS: readonly CrashOp['kind'][] = [
  'write',
  'zero',
  'discard',
  'compress',
  'snapshot-create',
  'snapshot-delete',
  'snapshot-apply',
  'grow',
  'shrink',
];

/** At most this many snapshots at once: each create and delete walks every table. */
const MAX_SNAPSHOTS = 3;

/** Random bytes half the time, otherwise a short random motif repeated (compressible). */
function content(rng: Rng, n: number): Uint8Array {
  if (rng.next() < 0.5) return rng.bytes(n);
  const motif = rng.bytes(rng.int(1, 17));
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = motif[i % motif.length];
  return b;
}

/** The endless operation sequence for `seed` on an image of `v`. */
export function* crashOps(seed: number, v: CrashVariant): Generator<CrashOp> {
  const rng = prng(seed);
  const cs = v.clusterSize;
  let size = v.size;
  const snapshots: string[] = [];
  let made = 0;
  /** A range of 1..max bytes inside the window, at any alignment. */
  const range = (max: number) => {
    const length = rng.int(1, Math.min(max, v.window) + 1);
    return { offset: rng.int(0, v.window - length + 1), length };
  };
  for (;;) {
    const r = rng.next();
    if (r < 0.12) {
      yield { kind: 'zero', ...range(6 * cs), mayUnmap: rng.next() < 0.5 };
    } else if (r < 0.24) {
      yield { kind: 'discard', ...range(8 * cs) };
    } else if (r < 0.36 && v.compress) {
      const n = rng.int(1, 5);
      const offset = rng.int(0, v.window / cs - n + 1) * cs;
      yield { kind: 'compress', offset, data: content(rng, n * cs) };
    } else if (r < 0.46 && v.snapshots && snapshots.length < MAX_SNAPSHOTS) {
      const name = `s${++made}`;
      snapshots.push(name);
      yield { kind: 'snapshot-create', name };
    } else if (r < 0.52 && snapshots.length) {
      const [name] = snapshots.splice(rng.int(0, snapshots.length), 1);
      yield { kind: 'snapshot-delete', name };
    } else if (r < 0.58 && snapshots.length) {
      yield { kind: 'snapshot-apply', name: snapshots[rng.int(0, snapshots.length)] };
    } else if (r < 0.64 && !snapshots.length && size + v.growStep <= v.maxSize) {
      // Version 2 qcow2 images with snapshots cannot be resized: resize only without.
      size = Math.min(v.maxSize, size + rng.int(1, 4) * v.growStep);
      yield { kind: 'grow', size };
    } else if (r < 0.72 && v.shrinks && !snapshots.length && size - v.growStep >= v.window) {
      size = Math.max(v.window, size - rng.int(1, 4) * v.growStep);
      yield { kind: 'shrink', size };
    } else {
      const { offset, length } = range(4 * cs);
      yield { kind: 'write', offset, data: content(rng, length) };
    }
  }
}

/** The guest content of the window and the virtual size, as the operations leave them. */
export class GuestModel {
  readonly window: Uint8Array;
  size: number;
  /** What each snapshot holds: its window and virtual size. */
  private snapshots = new Map<string, { window: Uint8Array; size: number }>();

  constructor(private readonly v: CrashVariant) {
    this.window = new Uint8Array(v.window);
    this.window.fill(PREFILL_BYTE, 0, v.prefill);
    this.size = v.size;
  }

  copy(): GuestModel {
    const m = new GuestModel(this.v);
    m.window.set(this.window);
    m.size = this.size;
    m.snapshots = new Map(this.snapshots);
    return m;
  }

  apply(op: CrashOp): void {
    const cs = this.v.clusterSize;
    switch (op.kind) {
      case 'write':
      case 'compress':
        this.window.set(op.data, op.offset);
        return;
      case 'zero':
        this.window.fill(0, op.offset, op.offset + op.length);
        return;
      case 'discard':
        // Platter's qcow2 discard drops whole clusters only; they read as zeros.
        this.window.fill(0, Math.ceil(op.offset / cs) * cs, Math.floor((op.offset + op.length) / cs) * cs);
        return;
      case 'grow':
      case 'shrink':
        // Past the window the guest holds zeros only: nothing else changes.
        this.size = op.size;
        return;
      case 'snapshot-create':
        this.snapshots.set(op.name, { window: this.window.slice(), size: this.size });
        return;
      case 'snapshot-delete':
        this.snapshots.delete(op.name);
        return;
      case 'snapshot-apply': {
        const sn = this.snapshots.get(op.name)!;
        this.window.set(sn.window);
        this.size = sn.size;
        return;
      }
    }
  }
}
