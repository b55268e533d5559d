/**
 * A read-only view of a file with a dirty log replayed: reads see the log's
 * writes (4 KiB data sectors and zeroed ranges) over the file, which is
 * never changed. QEMU refuses such an image read-only; Platter can show it
 * as it will be once the log is replayed. Sectors are not copied out of the
 * log: each replayed sector is noted as where its data sector sits in the
 * log (and the 12 bytes its descriptor carries), and read from there, so a
 * log of any size costs a small index entry per sector it replaces.
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol, ProtocolExtent } from '../../io/protocol.js';
import { LOG_SECTOR_SIZE as S, MAX_LOG_OVERLAY_SECTORS } from './limits.js';
import { restoreSector, type LogOp } from './log.js';
import type { LogReader } from './log-reader.js';
import { replay } from './log-replay.js';
import type { ActiveSequence } from './log-search.js';

/** Bytes a replayed sector's descriptor carries: 4 trailing, 8 leading. */
const EDGES = 12;

/** A zeroed byte range; `op` orders it among the sectors written (see settle). */
interface Zeroed {
  start: number;
  end: number;
  op: number;
}

/** The first index of sorted `a` whose value is at least `x`. */
function lowerBound(a: readonly number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class LogOverlay implements Protocol {
  readonly readOnly = true;
  /** Replayed sector (by index) to its slot in the arrays below. */
  private readonly slots = new Map<number, number>();
  private used = 0;
  /** Per slot: the data sector's file offset, its descriptor's edge bytes, the operation that wrote it. */
  private from = new Float64Array(0);
  private edges = new Uint8Array(0);
  private op = new Uint32Array(0);
  private ops = 0;
  private zeroed: Zeroed[] = [];
  /** After the replay: the zeroed ranges merged, sorted; a sector in `slots` is newer than any of them. */
  private zeroStarts: number[] = [];
  private zeroEnds: number[] = [];

  private constructor(
    private readonly base: Protocol,
    private length: number,
  ) {}

  /** The file `base` as it will be once `seq` (checked by validateReplay) is replayed. */
  static async replayed(base: Protocol, log: LogReader, seq: ActiveSequence): Promise<LogOverlay> {
    const o = new LogOverlay(base, await base.size());
    await replay(
      {
        apply: async (ops) => o.note(ops),
        grow: async (size) => {
          o.length = Math.max(o.length, size);
        },
      },
      log,
      seq,
    );
    o.settle();
    return o;
  }

  private note(ops: readonly LogOp[]): void {
    for (const op of ops) {
      const n = this.ops++;
      if (op.kind === 'data') {
        const slot = this.slotOf(op.fileOffset / S);
        this.from[slot] = op.from;
        this.edges.set(op.edges, slot * EDGES);
        this.op[slot] = n;
      } else if (op.length) {
        this.makeRoom();
        this.zeroed.push({ start: op.fileOffset, end: op.fileOffset + op.length, op: n });
      }
    }
  }

  /** Refuses one more index entry (a new sector or a zeroed range) past the limit. */
  private makeRoom(): void {
    if (this.used + this.zeroed.length < MAX_LOG_OVERLAY_SECTORS) return;
    const why = `the VHDX log replaces more than ${MAX_LOG_OVERLAY_SECTORS} sectors, too many to replay read-only`;
    throw new BlockError('Unsupported', `${why} (check -r all replays it into the file)`, { op: 'open' });
  }

  private slotOf(sector: number): number {
    const known = this.slots.get(sector);
    if (known !== undefined) return known;
    this.makeRoom();
    if (this.used === this.from.length) {
      const n = Math.max(64, this.used * 2);
      const from = new Float64Array(n);
      const edges = new Uint8Array(n * EDGES);
      const op = new Uint32Array(n);
      from.set(this.from);
      edges.set(this.edges);
      op.set(this.op);
      [this.from, this.edges, this.op] = [from, edges, op];
    }
    this.slots.set(sector, this.used);
    return this.used++;
  }

  /**
   * Drops the sectors a later zeroed range covers, then merges the ranges.
   * Newest range first, each sector is decided by the first (newest) range
   * over it only: `next` skips the sectors already decided, so however the
   * ranges overlap, each sector is looked at once.
   */
  private settle(): void {
    const zeroed = this.zeroed;
    this.zeroed = [];
    if (!zeroed.length) return;
    const sectors = [...this.slots.keys()].sort((a, b) => a - b);
    const next = Int32Array.from({ length: sectors.length + 1 }, (_, i) => i);
    const skip = (i: number) => {
      while (next[i] !== i) i = next[i] = next[next[i]];
      return i;
    };
    for (let z = zeroed.length - 1; z >= 0; z--) {
      const { start, end, op } = zeroed[z];
      for (let k = skip(lowerBound(sectors, start / S)); k < sectors.length && sectors[k] * S < end; k = skip(k)) {
        if (this.op[this.slots.get(sectors[k]) as number] < op) this.slots.delete(sectors[k]);
        next[k] = k + 1;
      }
    }
    for (const z of zeroed.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start)) {
      const last = this.zeroEnds.length - 1;
      if (last >= 0 && z.start <= this.zeroEnds[last]) this.zeroEnds[last] = Math.max(this.zeroEnds[last], z.end);
      else {
        this.zeroStarts.push(z.start);
        this.zeroEnds.push(z.end);
      }
    }
  }

  get name(): string {
    return this.base.name;
  }

  async size(): Promise<number> {
    return this.length;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    await this.base.read(buf, offset);
    const end = offset + buf.length;
    for (let z = lowerBound(this.zeroEnds, offset + 1); z < this.zeroEnds.length && this.zeroStarts[z] < end; z++) {
      buf.fill(0, Math.max(this.zeroStarts[z], offset) - offset, Math.min(this.zeroEnds[z], end) - offset);
    }
    if (!this.slots.size) return;
    for (let s = Math.floor(offset / S); s * S < end; ) {
      const run = this.runAt(s, end);
      if (run.length) await this.readRun(buf, offset, s, run);
      s += Math.max(1, run.length);
    }
  }

  /** The slots of the replayed sectors from `s` on (before `end`) whose data sectors follow each other in the log. */
  private runAt(s: number, end: number): number[] {
    const run: number[] = [];
    for (let slot = this.slots.get(s); slot !== undefined; slot = this.slots.get(s + run.length)) {
      if (run.length && this.from[slot] !== this.from[run[0]] + run.length * S) break;
      run.push(slot);
      if ((s + run.length) * S >= end) break;
    }
    return run;
  }

  /** Copies the part of the run of sectors from `s` that falls in `buf` (at `offset`), read from the log. */
  private async readRun(buf: Uint8Array, offset: number, s: number, run: number[]): Promise<void> {
    const data = new Uint8Array(run.length * S);
    await this.base.read(data, this.from[run[0]]);
    run.forEach((slot, k) => {
      restoreSector(data.subarray(k * S, (k + 1) * S), this.edges.subarray(slot * EDGES, (slot + 1) * EDGES));
    });
    const a = Math.max(s * S, offset);
    const b = Math.min((s + run.length) * S, offset + buf.length);
    buf.set(data.subarray(a - s * S, b - s * S), a - offset);
  }

  async write(): Promise<void> {
    readOnly('write');
  }

  async writeZeroes(): Promise<void> {
    readOnly('write');
  }

  async truncate(): Promise<void> {
    readOnly('truncate');
  }

  async discard(): Promise<void> {
    readOnly('discard');
  }

  async blockStatus(offset: number, length: number): Promise<ProtocolExtent> {
    return { offset, length, data: true };
  }

  async flush(): Promise<void> {}

  allocatedSize(): Promise<number | undefined> {
    return this.base.allocatedSize();
  }

  /** The file under it is the caller's to close. */
  async close(): Promise<void> {}
}

function readOnly(op: string): never {
  throw new BlockError('Unsupported', 'a VHDX image with a dirty log is open read-only', { op });
}
