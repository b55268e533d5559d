/**
 * A threaded copy into a new qcow2 (an image that places clusters, see
 * PlacesClusters; copy-workers.ts runs the threads). Each thread reads a
 * chunk, decides which of its guest clusters hold data, writes those whole
 * clusters into host clusters reserved for it, and says where they went.
 * Reserving and mapping stay on the thread that owns the image
 * (PlacementService); a worker gets its host clusters through two shared
 * slots, one refilled while it uses the other, so it rarely waits.
 */
import type { ClusterPlacement } from '../image/driver.js';
import { toBlockError, type BlockError } from '../image/errors.js';
import type { Protocol } from '../io/protocol.js';
import type { CopyOptions, CopySpan } from './copy.js';
import { zeroRuns } from './zero-runs.js';

/** A run of host clusters: where the first is, and how many. */
export interface HostRun {
  host: number;
  count: number;
}

/** Where one thread gets its host clusters. */
export interface HostClusters {
  /** Runs covering `count` clusters, in order; undefined when the copy was stopped meanwhile. */
  take(count: number): Promise<HostRun[] | undefined>;
  /** What this thread took and did not use (to give back at the end). */
  leftover(): HostRun[];
}

/** Slot states in the shared Int32Array: the owning thread is filling it, or it holds a run. */
const SLOT_EMPTY = 0;
const SLOT_FULL = 1;
/** Slots per worker thread: one in use while the other is refilled. */
const SLOTS_PER_THREAD = 2;

/**
 * Bytes per run of host clusters reserved for a thread. Each worker holds
 * two, so the owning thread has 4 MiB of copying (a few ms) to hand it the
 * next; what is left at the end is freed again.
 */
const RUN_BYTES = 4 << 20;

/** What the threads of a placed copy share (structured-cloned into workers). */
export interface PlacedShare {
  clusterSize: number;
  /** Clusters per reserved run. */
  runClusters: number;
  /** Int32Array: per slot, SLOT_EMPTY or SLOT_FULL. */
  states: SharedArrayBuffer;
  /** Float64Array: per slot, the run's host offset and cluster count. */
  runs: SharedArrayBuffer;
}

function newPlacedShare(clusterSize: number, workers: number): PlacedShare {
  const slots = workers * SLOTS_PER_THREAD;
  return {
    clusterSize,
    runClusters: Math.max(1, Math.floor(RUN_BYTES / clusterSize)),
    states: new SharedArrayBuffer(slots * Int32Array.BYTES_PER_ELEMENT),
    runs: new SharedArrayBuffer(slots * 2 * Float64Array.BYTES_PER_ELEMENT),
  };
}

/** Puts a run into a slot and wakes its thread (the owning thread's side). */
function fillSlot(share: PlacedShare, slot: number, run: HostRun): void {
  const runs = new Float64Array(share.runs);
  const states = new Int32Array(share.states);
  runs[2 * slot] = run.host;
  runs[2 * slot + 1] = run.count;
  Atomics.store(states, slot, SLOT_FULL);
  Atomics.notify(states, slot);
}

/** The runs still sitting in full slots (given back at the end). */
function fullSlots(share: PlacedShare): HostRun[] {
  const runs = new Float64Array(share.runs);
  const states = new Int32Array(share.states);
  const out: HostRun[] = [];
  for (let slot = 0; slot < states.length; slot++) {
    if (Atomics.load(states, slot) === SLOT_FULL) out.push({ host: runs[2 * slot], count: runs[2 * slot + 1] });
  }
  return out;
}

/** Hands out clusters from a current run, taking a new run when it is used up. */
abstract class RunCursor implements HostClusters {
  private current: HostRun = { host: 0, count: 0 };
  constructor(protected readonly clusterSize: number) {}

  /** The next run, or undefined when the copy was stopped. */
  protected abstract nextRun(): Promise<HostRun | undefined> | HostRun | undefined;

  async take(count: number): Promise<HostRun[] | undefined> {
    const out: HostRun[] = [];
    for (;;) {
      const n = Math.min(count, this.current.count);
      if (n > 0) {
        out.push({ host: this.current.host, count: n });
        this.current = { host: this.current.host + n * this.clusterSize, count: this.current.count - n };
        count -= n;
      }
      if (count === 0) return out;
      const next = await this.nextRun();
      if (!next) return undefined;
      this.current = next;
    }
  }

  leftover(): HostRun[] {
    return this.current.count > 0 ? [this.current] : [];
  }
}

/** The owning thread's clusters: reserved straight from the image. */
class ReservedClusters extends RunCursor {
  constructor(
    private readonly placement: ClusterPlacement,
    private readonly runClusters: number,
  ) {
    super(placement.clusterSize);
  }

  protected async nextRun(): Promise<HostRun> {
    return { host: await this.placement.reserve(this.runClusters), count: this.runClusters };
  }
}

/** How long a worker sleeps on an empty slot before looking at the stop flag again (ms). */
const SLOT_WAIT = 50;

/** A worker's clusters: its two slots in turn, each refilled by the owning thread once taken. */
export class SlotClusters extends RunCursor {
  private turn = 0;
  private readonly states: Int32Array;
  private readonly runs: Float64Array;

  constructor(
    share: PlacedShare,
    /** This worker's number, from 0. */
    private readonly worker: number,
    private readonly stopped: () => boolean,
    /** Asks the owning thread to refill a slot. */
    private readonly refill: (slot: number) => void,
  ) {
    super(share.clusterSize);
    this.states = new Int32Array(share.states);
    this.runs = new Float64Array(share.runs);
  }

  protected nextRun(): HostRun | undefined {
    const slot = this.worker * SLOTS_PER_THREAD + this.turn;
    this.turn = (this.turn + 1) % SLOTS_PER_THREAD;
    while (Atomics.load(this.states, slot) !== SLOT_FULL) {
      if (this.stopped()) return undefined;
      Atomics.wait(this.states, slot, SLOT_EMPTY, SLOT_WAIT);
    }
    const run = { host: this.runs[2 * slot], count: this.runs[2 * slot + 1] };
    Atomics.store(this.states, slot, SLOT_EMPTY);
    this.refill(slot);
    return run;
  }
}

/**
 * The owning thread's side of a placed copy: it reserves the workers' runs
 * and fills their slots, makes the mappings the threads send, one request
 * after another in the order they came, and gives back what nobody used.
 */
export class PlacementService {
  readonly share: PlacedShare;
  private queue: Promise<void> = Promise.resolve();
  private readonly unused: HostRun[] = [];
  private readonly own: ReservedClusters;
  private broken = false;

  constructor(
    private readonly placement: ClusterPlacement,
    private readonly workers: number,
    /** Stops the copy with this error. */
    private readonly fail: (err: BlockError) => void,
  ) {
    this.share = newPlacedShare(placement.clusterSize, workers);
    this.own = new ReservedClusters(placement, this.share.runClusters);
  }

  /** Runs `fn` after every earlier request; a failure stops the copy and every later request. */
  private enqueue(fn: () => Promise<void>): Promise<void> {
    this.queue = this.queue.then(async () => {
      if (this.broken) return;
      try {
        await fn();
      } catch (err) {
        this.broken = true;
        this.fail(toBlockError(err));
      }
    });
    return this.queue;
  }

  /** Fills every worker's slots, before they start. */
  async fillAll(): Promise<void> {
    for (let slot = 0; slot < this.workers * SLOTS_PER_THREAD; slot++) await this.refill(slot);
  }

  /** A worker took the run in `slot`: reserves the next one. */
  refill(slot: number): Promise<void> {
    return this.enqueue(async () => {
      const count = this.share.runClusters;
      fillSlot(this.share, slot, { host: await this.placement.reserve(count), count });
    });
  }

  /** Makes mappings sent as (guest cluster, host, count) triples. */
  map(runs: number[]): Promise<void> {
    return this.enqueue(async () => {
      for (let i = 0; i < runs.length; i += 3) await this.placement.map(runs[i], runs[i + 1], runs[i + 2]);
    });
  }

  /** Runs a worker took and did not use, given back at the end. */
  giveBack(runs: HostRun[]): void {
    this.unused.push(...runs);
  }

  /** The owning thread's own clusters, reserved directly, and its mappings, made directly. */
  ownSide(): { clusters: HostClusters; mapped(runs: number[]): Promise<void> } {
    return { clusters: this.own, mapped: (runs) => this.map(runs) };
  }

  /** Once every thread is done: frees the clusters reserved and never written. */
  async finish(): Promise<void> {
    await this.queue;
    for (const run of [...this.own.leftover(), ...this.unused, ...fullSlots(this.share)]) {
      await this.enqueue(() => this.placement.unreserve(run.host, run.count));
    }
  }
}

/**
 * Whether the spans can be copied cluster by cluster: every span starts on a
 * cluster and all but the last end on one, so no cluster is split between
 * two chunks (two threads would both place it).
 */
export function clusterAligned(spans: CopySpan[], clusterSize: number): boolean {
  const last = spans.length - 1;
  return spans.every((s, i) => s.targetOffset % clusterSize === 0 && (i === last || s.length % clusterSize === 0));
}

/**
 * Copies one cluster-aligned chunk: reads it (ranges the source knows to be
 * zero are not read), places the clusters holding data (all of them with a
 * sparse size of 0, else those with a non-zero block of that size) and
 * writes them whole, the end of the image's last cluster padded with zeros.
 * `buf` holds at least the chunk rounded up to whole clusters. Returns the
 * mappings made, as (guest cluster, host, count) triples, or undefined when
 * the copy was stopped.
 */
export async function copyChunkPlaced(
  chunk: CopySpan,
  buf: Uint8Array,
  file: Protocol,
  clusters: HostClusters,
  clusterSize: number,
  opts: Pick<CopyOptions, 'sparseSize'>,
): Promise<number[] | undefined> {
  const cs = clusterSize;
  const count = Math.ceil(chunk.length / cs);
  const data = new Uint8Array(count);
  const mark = (from: number, to: number) => data.fill(1, Math.floor(from / cs), Math.ceil(to / cs));
  for (let at = 0; at < chunk.length; ) {
    const st = await chunk.source.blockStatus(chunk.sourceOffset + at, chunk.length - at);
    const piece = buf.subarray(at, at + st.length);
    if (st.zero) {
      // Only clusters this range shares with data are written: zero its parts of those.
      const headEnd = Math.min(at + st.length, Math.ceil(at / cs) * cs);
      buf.fill(0, at, headEnd);
      buf.fill(0, Math.max(headEnd, Math.floor((at + st.length) / cs) * cs), at + st.length);
    } else {
      await chunk.source.read(piece, chunk.sourceOffset + at);
      const whole = [{ start: 0, length: st.length, zero: false }];
      const runs = opts.sparseSize ? zeroRuns(piece, chunk.targetOffset + at, opts.sparseSize) : whole;
      for (const run of runs) if (!run.zero) mark(at + run.start, at + run.start + run.length);
    }
    at += st.length;
  }
  buf.fill(0, chunk.length, count * cs);
  const first = chunk.targetOffset / cs;
  const maps: number[] = [];
  for (let i = 0; i < count; ) {
    if (!data[i]) {
      i++;
      continue;
    }
    let j = i;
    while (j < count && data[j]) j++;
    const runs = await clusters.take(j - i);
    if (!runs) return undefined;
    for (const run of runs) {
      await file.write(buf.subarray(i * cs, (i + run.count) * cs), run.host);
      maps.push(first + i, run.host, run.count);
      i += run.count;
    }
  }
  return maps;
}
