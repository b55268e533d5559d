/**
 * A threaded copy into a new image that places clusters (a qcow2, a dynamic
 * VHD or VHDX; see PlacesClusters; copy-workers.ts runs the threads). Each
 * thread reads a chunk, decides which of its guest clusters hold data,
 * writes those clusters into host clusters reserved for it, and says where
 * they went. Reserving and mapping stay on the thread that owns the
 * image (PlacementService); see PlacedShare for how the other threads get
 * their host clusters without waiting for it.
 */
import type { ClusterPlacement } from '../image/driver.js';
import { toBlockError, type BlockError } from '../image/errors.js';
import type { Protocol } from '../io/protocol.js';
import { readChunk, type CopyOptions, type CopySpan } from './copy.js';

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
 * Bytes per run of host clusters reserved for a thread, at most. Each
 * worker holds two, so the owning thread has 4 MiB of copying (a few ms) to
 * hand it the next; what is left at the end is freed again.
 */
const RUN_BYTES = 4 << 20;

/** Bytes per run at least: a copy thread's chunk (copy-workers.ts). */
const MIN_RUN_BYTES = 512 << 10;

/**
 * Runs are at most this share of the data expected. What the threads
 * reserved and did not use is freed at the end, but stays inside the file
 * as holes: with 4 MiB runs, 7 MiB of data made a 17 MB qcow2 (qemu-img's:
 * 7.7 MB). At 1/64, a copy with one worker leaves holes of at most 3/64 of
 * its data (its two slots and this thread's run).
 */
const RUN_SHARE = 64;

/** The bytes per run for a copy of about `expected` bytes of data (undefined: unknown). */
function runBytesFor(expected: number | undefined): number {
  if (expected === undefined) return RUN_BYTES;
  return Math.min(RUN_BYTES, Math.max(MIN_RUN_BYTES, Math.floor(expected / RUN_SHARE)));
}

/**
 * What the threads of a placed copy share (structured-cloned into workers).
 * Host clusters come one of two ways. In general, through slots: the owning
 * thread reserves a run for each worker's slot as the worker empties it.
 * From an append-only placement, out of one region reserved for the whole
 * copy, with a shared counter: no thread waits for another, and the unused
 * end of the region is given back whole, so no gap is left in the file.
 */
export interface PlacedShare {
  clusterSize: number;
  hostStride: number;
  /** Reserved clusters read as zeros until written (an append-only placement's, past the file's end). */
  zeroFilled: boolean;
  /** Clusters per reserved run (a slot's; in a region, what a thread takes at a time, for its chunks). */
  runClusters: number;
  slots?: SlotShare;
  region?: RegionShare;
}

/** Two slots per worker, each empty or holding a run of host clusters. */
interface SlotShare {
  /** Int32Array: per slot, SLOT_EMPTY or SLOT_FULL. */
  states: SharedArrayBuffer;
  /** Float64Array: per slot, the run's host offset and cluster count. */
  runs: SharedArrayBuffer;
}

/** Host clusters reserved for the whole copy, handed out in order. */
interface RegionShare {
  /** Where the region's first cluster's data goes, and how many clusters it has. */
  host: number;
  clusters: number;
  /** BigInt64Array of one: the clusters handed out so far. */
  taken: SharedArrayBuffer;
}

/** Puts a run into a slot and wakes its thread (the owning thread's side). */
function fillSlot(slots: SlotShare, slot: number, run: HostRun): void {
  const runs = new Float64Array(slots.runs);
  const states = new Int32Array(slots.states);
  runs[2 * slot] = run.host;
  runs[2 * slot + 1] = run.count;
  Atomics.store(states, slot, SLOT_FULL);
  Atomics.notify(states, slot);
}

/** The runs still sitting in full slots (given back at the end). */
function fullSlots(slots: SlotShare): HostRun[] {
  const runs = new Float64Array(slots.runs);
  const states = new Int32Array(slots.states);
  const out: HostRun[] = [];
  for (let slot = 0; slot < states.length; slot++) {
    if (Atomics.load(states, slot) === SLOT_FULL) out.push({ host: runs[2 * slot], count: runs[2 * slot + 1] });
  }
  return out;
}

/** Hands out clusters from a current run, taking a new run when it is used up. */
abstract class RunCursor implements HostClusters {
  private current: HostRun = { host: 0, count: 0 };
  constructor(protected readonly hostStride: number) {}

  /** The next run, or undefined when the copy was stopped. */
  protected abstract nextRun(): Promise<HostRun | undefined> | HostRun | undefined;

  async take(count: number): Promise<HostRun[] | undefined> {
    const out: HostRun[] = [];
    for (;;) {
      const n = Math.min(count, this.current.count);
      if (n > 0) {
        out.push({ host: this.current.host, count: n });
        this.current = { host: this.current.host + n * this.hostStride, count: this.current.count - n };
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

/** The owning thread's clusters: runs it reserves itself. */
class ReservedClusters extends RunCursor {
  constructor(
    hostStride: number,
    private readonly reserveRun: () => Promise<HostRun>,
  ) {
    super(hostStride);
  }

  protected nextRun(): Promise<HostRun> {
    return this.reserveRun();
  }
}

/** How long a worker sleeps on an empty slot before looking at the stop flag again (ms). */
const SLOT_WAIT = 50;

/** A worker's clusters: its two slots in turn, each refilled by the owning thread once taken. */
class SlotClusters extends RunCursor {
  private turn = 0;
  private readonly states: Int32Array;
  private readonly runs: Float64Array;

  constructor(
    hostStride: number,
    slots: SlotShare,
    /** This worker's number, from 0. */
    private readonly worker: number,
    private readonly stopped: () => boolean,
    /** Asks the owning thread to refill a slot. */
    private readonly refill: (slot: number) => void,
  ) {
    super(hostStride);
    this.states = new Int32Array(slots.states);
    this.runs = new Float64Array(slots.runs);
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

/** Any thread's clusters from a region reserved for the whole copy: each take bumps the shared counter. */
class RegionClusters implements HostClusters {
  private readonly taken: BigInt64Array;

  constructor(
    private readonly region: RegionShare,
    private readonly hostStride: number,
  ) {
    this.taken = new BigInt64Array(region.taken);
  }

  async take(count: number): Promise<HostRun[]> {
    const first = Number(Atomics.add(this.taken, 0, BigInt(count)));
    // The region holds a cluster for every guest cluster of the copy, so this is a bug, not bad input.
    if (first + count > this.region.clusters) throw new Error('a placed copy ran out of the clusters it reserved');
    return [{ host: this.region.host + first * this.hostStride, count }];
  }

  leftover(): HostRun[] {
    return [];
  }
}

/** A worker thread's host clusters, however the share hands them out. */
export function workerClusters(
  share: PlacedShare,
  worker: number,
  stopped: () => boolean,
  refill: (slot: number) => void,
): HostClusters {
  if (share.region) return new RegionClusters(share.region, share.hostStride);
  if (share.slots) return new SlotClusters(share.hostStride, share.slots, worker, stopped, refill);
  throw new Error('a placed copy shares neither slots nor a region');
}

/**
 * The owning thread's side of a placed copy: it reserves host clusters
 * (the workers' runs, filling their slots, or one region for all), makes
 * the mappings the threads send, one request after another in the order
 * they came, and gives back what nobody used.
 */
export class PlacementService {
  private queue: Promise<void> = Promise.resolve();
  private readonly unused: HostRun[] = [];
  private readonly own: HostClusters;
  private broken = false;

  private constructor(
    private readonly placement: ClusterPlacement,
    /** The target image's file (the owning thread's handle). */
    private readonly file: Protocol,
    readonly share: PlacedShare,
    /** Stops the copy with this error. */
    private readonly fail: (err: BlockError) => void,
  ) {
    const { region, hostStride } = share;
    this.own = region ? new RegionClusters(region, hostStride) : new ReservedClusters(hostStride, () => this.reserveRun());
  }

  /**
   * A run for one thread, its blocks allocated in the file at once, so that
   * the threads' writes do not each reserve blocks under the file's inode
   * lock (FileProtocol.allocate): the 2 GiB bench image's raw->qcow2
   * (`-t unsafe`, 11 alternating runs) took 573 ms and 694 ms of system time
   * without, 503 and 534 with. Here, where runs are reserved one after
   * another, not by each writing thread as it goes: allocated piece by
   * piece from two threads, that image's data came out in some 2,600
   * fragments instead of about 11 (a C model of the copy, filefrag).
   */
  private async reserveRun(): Promise<HostRun> {
    const count = this.share.runClusters;
    const host = await this.placement.reserve(count);
    await this.file.allocate?.(host, count * this.share.hostStride);
    return { host, count };
  }

  /**
   * Reserves what the threads start with: every worker's slots filled, or,
   * from an append-only placement, a region of `clusters` (one for each
   * guest cluster the copy covers). `expected`: the bytes of data the
   * copy is expected to write, for the size of runs (runBytesFor).
   */
  static async start(
    placement: ClusterPlacement,
    file: Protocol,
    workers: number,
    clusters: number,
    expected: number | undefined,
    fail: (err: BlockError) => void,
  ): Promise<PlacementService> {
    const { clusterSize, hostStride } = placement;
    const runClusters = Math.max(1, Math.floor(runBytesFor(expected) / clusterSize));
    const share: PlacedShare = { clusterSize, hostStride, zeroFilled: placement.appendOnly, runClusters };
    if (placement.appendOnly) {
      const taken = new SharedArrayBuffer(BigInt64Array.BYTES_PER_ELEMENT);
      share.region = { host: await placement.reserve(clusters), clusters, taken };
      return new PlacementService(placement, file, share, fail);
    }
    const slots = workers * SLOTS_PER_THREAD;
    share.slots = {
      states: new SharedArrayBuffer(slots * Int32Array.BYTES_PER_ELEMENT),
      runs: new SharedArrayBuffer(slots * 2 * Float64Array.BYTES_PER_ELEMENT),
    };
    const service = new PlacementService(placement, file, share, fail);
    for (let slot = 0; slot < slots; slot++) await service.refill(slot);
    return service;
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

  /** A worker took the run in `slot`: reserves the next one. */
  refill(slot: number): Promise<void> {
    return this.enqueue(async () => fillSlot(this.share.slots!, slot, await this.reserveRun()));
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

  /** The owning thread's own clusters, and its mappings, made directly. */
  ownSide(): { clusters: HostClusters; mapped(runs: number[]): Promise<void> } {
    return { clusters: this.own, mapped: (runs) => this.map(runs) };
  }

  /**
   * Once every thread is done: frees the clusters reserved and never
   * written, and the blocks allocated for them in the file (reserveRun).
   */
  async finish(): Promise<void> {
    await this.queue;
    const { slots, region, hostStride } = this.share;
    const left = [...this.own.leftover(), ...this.unused, ...(slots ? fullSlots(slots) : [])];
    for (const run of left) {
      await this.enqueue(async () => {
        await this.file.discard(run.host, run.count * hostStride);
        await this.placement.unreserve(run.host, run.count);
      });
    }
    if (region) {
      const used = Math.min(region.clusters, Number(Atomics.load(new BigInt64Array(region.taken), 0)));
      const count = region.clusters - used;
      if (count > 0) await this.enqueue(() => this.placement.unreserve(region.host + used * hostStride, count));
    } else {
      // Discarding frees nothing past the end of the file on ext4. No other thread writes any more.
      await this.enqueue(async () => this.file.freePastEnd?.());
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
 * writes them: whole, the end of the image's last cluster padded with
 * zeros, or, where reserved clusters read as zeros already, only their data
 * (the rest stays a hole, as the in-process copy leaves it). `buf` holds at
 * least the chunk rounded up to whole clusters. Returns the mappings made,
 * as (guest cluster, host, count) triples, or undefined when the copy was
 * stopped.
 */
export async function copyChunkPlaced(
  chunk: CopySpan,
  buf: Uint8Array,
  file: Protocol,
  clusters: HostClusters,
  layout: Pick<PlacedShare, 'clusterSize' | 'hostStride' | 'zeroFilled'>,
  opts: Pick<CopyOptions, 'sparseSize'>,
): Promise<number[] | undefined> {
  const { clusterSize: cs, hostStride, zeroFilled } = layout;
  const count = Math.ceil(chunk.length / cs);
  const data = new Uint8Array(count);
  /** The chunk's data, as [from, to) pairs in order, neighbours merged. */
  const pieces: number[] = [];
  const addData = (from: number, to: number) => {
    data.fill(1, Math.floor(from / cs), Math.ceil(to / cs));
    if (pieces.length && pieces[pieces.length - 1] === from) pieces[pieces.length - 1] = to;
    else pieces.push(from, to);
  };
  // Clusters are placed only in a new image with no backing file: every byte is copied.
  for (const { start, length, zero } of await readChunk(chunk, buf, { ...opts, targetHasBacking: false })) {
    if (!zero) addData(start, start + length);
    else if (!zeroFilled) {
      // Only clusters this range shares with data are written (whole): zero its parts of those.
      const headEnd = Math.min(start + length, Math.ceil(start / cs) * cs);
      buf.fill(0, start, headEnd);
      buf.fill(0, Math.max(headEnd, Math.floor((start + length) / cs) * cs), start + length);
    }
  }
  if (!zeroFilled) buf.fill(0, chunk.length, count * cs);
  const first = chunk.targetOffset / cs;
  const maps: number[] = [];
  let next = 0;
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
      const from = i * cs;
      const to = (i + run.count) * cs;
      // Chunk byte p of this run goes to its host cluster ⌊(p - from) / cs⌋, at (p - from) % cs.
      const hostOf = (p: number) => run.host + Math.floor((p - from) / cs) * hostStride + ((p - from) % cs);
      const writes: [number, number][] = [];
      if (!zeroFilled) writes.push([from, to]);
      else {
        while (next < pieces.length && pieces[next + 1] <= from) next += 2;
        for (let k = next; k < pieces.length && pieces[k] < to; k += 2) {
          writes.push([Math.max(from, pieces[k]), Math.min(to, pieces[k + 1])]);
        }
      }
      for (const [start, end] of writes) {
        // Clusters with headers between them in the file go out one by one.
        for (let at = start; at < end; ) {
          const upTo = hostStride === cs ? end : Math.min(end, (Math.floor(at / cs) + 1) * cs);
          await file.write(buf.subarray(at, upTo), hostOf(at));
          at = upTo;
        }
      }
      maps.push(first + i, run.host, run.count);
      i += run.count;
    }
  }
  return maps;
}
