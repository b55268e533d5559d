/**
 * What a format driver is. One object per format (like QEMU's BlockDriver);
 * the registry lists them and nothing outside it branches on format names.
 * Optional abilities are small interfaces with type guards, not methods that
 * throw "not supported".
 */
import type { OptionDecl, OptionValues } from '../options/schema.js';
import type { Protocol } from '../io/protocol.js';

/** What probing sees of a file. */
export interface ProbeInput {
  /** The first bytes (up to PROBE_HEAD_BYTES; fewer if the file is smaller). */
  head: Uint8Array;
  /** The last bytes (up to PROBE_TAIL_BYTES), for formats with a footer. */
  tail: Uint8Array;
  /** The file's size in bytes. */
  size: number;
  /** The name the user gave, for formats that can only be told by extension. */
  filename: string;
}

export const PROBE_HEAD_BYTES = 2048;
export const PROBE_TAIL_BYTES = 512;

/** The state of one run of guest bytes in one layer of a chain. */
export type LayerState =
  /** Stored in this layer. */
  | 'data'
  /** Known to read as zeros in this layer (a zero cluster, a hole). */
  | 'zero'
  /** Not in this layer: read from the backing image (or zeros if none). */
  | 'unallocated';

export interface LayerExtent {
  offset: number;
  length: number;
  state: LayerState;
  /** Where the bytes are in this layer's file, when that means something. */
  hostOffset?: number;
  /** The file `hostOffset` is in, when not the layer's own (a qcow2 data file). */
  hostFile?: Protocol;
  compressed?: boolean;
  /**
   * For 'data', whether it reads as zeros, when the driver knows: true for a
   * hole under it in another file (a VMDK flat extent), false for data that
   * maps as data whatever the file holds (QEMU maps a vpc block so). Left
   * out, the image asks its own file (a hole there reads as zeros).
   */
  zero?: boolean;
}

/** How an image names its backing file, as stored in its header. */
export interface BackingRef {
  filename: string;
  format?: string;
}

/** Details shown by `info`, beyond size and format. */
export interface FormatInfo {
  clusterSize?: number;
  dirty?: boolean;
  /** qemu-img's "format-specific" object: {type, data}. */
  specific?: { type: string; data: Record<string, unknown> };
  /** The persistent dirty bitmaps, for formats that can hold them. */
  bitmaps?: readonly PersistentBitmap[];
  /** Bytes the image's other files (VMDK extents) take on storage, which `actual-size` adds, as qemu-img does. */
  otherFilesAllocated?: number;
}

/** A persistent dirty bitmap, as measure sizes it. */
export interface PersistentBitmap {
  name: string;
  /** Bytes each bit covers. */
  granularity: number;
}

/**
 * One open layer: the object a driver's `open` returns. Several requests may
 * be in flight at once (the copy pipeline, the app, servers): requests on
 * different bytes must all take effect even when they share a cluster or
 * block, so drivers serialise what shares one (see RangeLock).
 */
export interface FormatImage {
  readonly size: number;
  readonly readOnly: boolean;
  /** Where reads of unallocated ranges go, if the header names a backing file. */
  readonly backingRef?: BackingRef;
  /** Everything written is stored compressed (a streamOptimized VMDK), so writes cost CPU, not I/O. */
  readonly compressesWrites?: boolean;
  /**
   * Guest byte N is byte N of the file and a write changes nothing else (raw),
   * so other threads may open the same file and write distinct ranges at once.
   */
  readonly plainFile?: boolean;
  read(buf: Uint8Array, offset: number): Promise<void>;
  write(buf: Uint8Array, offset: number): Promise<void>;
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  /** The extent starting at `offset`, at most `length` long, in this layer only. */
  blockStatus(offset: number, length: number): Promise<LayerExtent>;
  flush(): Promise<void>;
  close(): Promise<void>;
  info(): Promise<FormatInfo>;
}

/**
 * How a resize prepares the new area: the file's modes, plus 'metadata'
 * (formats with tables map the new clusters without writing them).
 */
export const RESIZE_PREALLOCATION_MODES = ['off', 'metadata', 'falloc', 'full'] as const;
export type ResizePreallocation = (typeof RESIZE_PREALLOCATION_MODES)[number];

/** Images that can change their virtual size. */
export interface Resizable {
  resize(size: number, opts: { prealloc: ResizePreallocation; shrink: boolean }): Promise<void>;
}
export function isResizable(img: FormatImage): img is FormatImage & Resizable {
  return typeof (img as Partial<Resizable>).resize === 'function';
}

/** Images that can store clusters compressed (qemu-img convert -c). */
export interface CompressedWrites {
  /** Compression works on whole clusters of this size. */
  readonly compressionCluster: number;
  /**
   * Compresses whole clusters at a cluster-aligned `offset` (the last may be
   * cut by the end of the image) and returns the write that stores them.
   * Compressing is slow and runs in parallel; the returned writes are meant
   * to be run one at a time.
   */
  compressClusters(buf: Uint8Array, offset: number): Promise<() => Promise<void>>;
}
export function hasCompressedWrites(img: FormatImage): img is FormatImage & CompressedWrites {
  return typeof (img as Partial<CompressedWrites>).compressClusters === 'function';
}

/**
 * Images whose new data clusters other threads may write: the image hands
 * out host clusters of its own file and maps guest clusters to them once the
 * data is there, and the threads write the data straight into the file. A
 * threaded copy into a new qcow2, dynamic VHD or VHDX works so (see
 * ops/placed-copy.ts): data moves on every core, metadata stays with the
 * one thread that owns it.
 */
export interface PlacesClusters {
  /** How to place clusters now, or undefined when this image cannot take such writes (it has data, a backing file...). */
  clusterPlacement(): ClusterPlacement | undefined;
}
export function placesClusters(img: FormatImage): img is FormatImage & PlacesClusters {
  return typeof (img as Partial<PlacesClusters>).clusterPlacement === 'function';
}

export interface ClusterPlacement {
  readonly clusterSize: number;
  /**
   * Bytes from one host cluster of a reservation to the next: the cluster
   * size, or more where each cluster is stored after a header of its own (a
   * VHD block's sector bitmap, which `map` writes). Host offsets here are
   * where a cluster's data starts.
   */
  readonly hostStride: number;
  /**
   * Nothing but reservations takes space in the file while clusters are
   * placed, each reservation follows the previous one past the end of the
   * file's data (so it reads as zeros until written), and unreserving the
   * end of the last gives that space back. A copy may then reserve all it
   * could need at once, give back the rest, leaving no gap, and write only
   * the data of each cluster. (A qcow2 allocates L2 tables and refcount
   * blocks meanwhile.)
   */
  readonly appendOnly: boolean;
  /** `count` new host clusters, `hostStride` apart, counted but mapped by nothing yet: where the first's data goes. */
  reserve(count: number): Promise<number>;
  /** Guest clusters [guestCluster, +count) now hold their data, in the reserved host clusters from `host` on. */
  map(guestCluster: number, host: number, count: number): Promise<void>;
  /** Reserved host clusters that were not used after all. */
  unreserve(host: number, count: number): Promise<void>;
}

/** What `check` found, in qemu-img's terms. */
export interface CheckReport {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

/** A report with nothing found yet, for a check to fill in. */
export function emptyCheckReport(): CheckReport {
  return {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    imageEndOffset: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
}

/** qemu-img check -r: nothing, leaks only, or leaks and corruptions. */
export const REPAIR_MODES = ['none', 'leaks', 'all'] as const;
export type RepairMode = (typeof REPAIR_MODES)[number];

/** Images whose metadata can be checked (and repaired). */
export interface Checkable {
  /** `log` receives one line per problem found or fixed. */
  check(repair: RepairMode, log: (line: string) => void): Promise<CheckReport>;
}
export function isCheckable(img: FormatImage): img is FormatImage & Checkable {
  return typeof (img as Partial<Checkable>).check === 'function';
}

/** One internal snapshot, as `snapshot -l` and `info` list it. */
export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSize: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  /** Instructions executed by the guest, when recorded. */
  icount?: bigint;
  diskSize?: number;
}

/** Images with internal snapshots (qcow2). */
export interface Snapshots {
  listSnapshots(): SnapshotInfo[];
  createSnapshot(name: string): Promise<void>;
  applySnapshot(idOrName: string): Promise<void>;
  deleteSnapshot(name: string): Promise<void>;
}
export function hasSnapshots(img: FormatImage): img is FormatImage & Snapshots {
  return typeof (img as Partial<Snapshots>).listSnapshots === 'function';
}

/** How far an amend has got: `done` of `total` units of work. */
export type AmendProgress = (done: number, total: number) => void;

/**
 * Images whose creation options can be changed in place (qemu-img amend).
 * `options` holds only what the user gave, typed by the driver's
 * `amendOptions`; what is left out stays as it is.
 */
export interface Amendable {
  amend(options: OptionValues, progress?: AmendProgress): Promise<void>;
}
export function isAmendable(img: FormatImage): img is FormatImage & Amendable {
  return typeof (img as Partial<Amendable>).amend === 'function';
}

/** How far a compaction has got: `done` of `total` units of work. */
export type CompactProgress = (done: number, total: number) => void;

/**
 * Images whose file can be packed: stored blocks that read as zeros are
 * dropped and the rest moved down, so the file shrinks (VBoxManage compact).
 * Returns the file's size before and after.
 */
export interface Compactable {
  compact(opts: { signal?: AbortSignal; progress?: CompactProgress }): Promise<{ before: number; after: number }>;
}
export function isCompactable(img: FormatImage): img is FormatImage & Compactable {
  return typeof (img as Partial<Compactable>).compact === 'function';
}

/** Images that read from a backing image must be given it after opening. */
export interface HasBacking {
  setBacking(backing: BackingImage | undefined): void;
}

/** What a layer sees of its backing image. */
export interface BackingImage {
  read(buf: Uint8Array, offset: number): Promise<void>;
  size: number;
  /** The backing image's format and details, for formats that check them (a VMDK parent's CID). */
  readonly format?: string;
  info?(): Promise<FormatInfo>;
}
export function hasBacking(img: FormatImage): img is FormatImage & HasBacking {
  return typeof (img as Partial<HasBacking>).setBacking === 'function';
}

/** Images whose header names their backing file, and can name another (rebase). */
export interface ChangesBacking {
  /**
   * Rewrites the header to name `filename` (with `format`, if given) as the
   * backing file, or no backing file when `filename` is undefined. Only the
   * name changes: the caller makes sure the guest content stays right.
   */
  changeBackingFile(filename?: string, format?: string): Promise<void>;
}
export function changesBacking(img: FormatImage): img is FormatImage & ChangesBacking {
  return typeof (img as Partial<ChangesBacking>).changeBackingFile === 'function';
}

/** Images that can drop everything they store, so reads fall through to the backing file (commit). */
export interface Emptiable {
  makeEmpty(): Promise<void>;
}
export function isEmptiable(img: FormatImage): img is FormatImage & Emptiable {
  return typeof (img as Partial<Emptiable>).makeEmpty === 'function';
}

/**
 * An internal snapshot: a text is an ID or, failing that, a name (qemu-img's
 * -l TEXT, snapshot -a); an object matches what it gives, exactly (qemu-img's
 * -l snapshot.id=ID,snapshot.name=NAME, either or both).
 */
export type SnapshotKey = string | { id?: string; name?: string };

export interface DriverOpenOptions {
  readOnly: boolean;
  /** Open this internal snapshot's content, read-only. */
  snapshot?: SnapshotKey;
  /** Opened by check to repair it: allowed even when marked corrupt. */
  repair?: boolean;
  /** Opened by check: damage that open would refuse is left for check to report. */
  forCheck?: boolean;
  /**
   * Opens another file the image names (a qcow2 external data file),
   * resolved against the image's folder and subject to the same policy as
   * backing files. Absent when there is no file system around the image.
   */
  openFile?(name: string, opts: { readOnly: boolean; what: string }): Promise<Protocol>;
}

export interface CreateRequest {
  size: number;
  options: OptionValues;
  /**
   * Creates another file the new image names (a qcow2 external data file),
   * next to the image; removed again if creating the image fails.
   */
  createFile?(name: string): Promise<Protocol>;
  /**
   * Opens, read-only, a file the new image will name (a VMDK's parent, whose
   * content ID the child records), resolved against the image's folder.
   */
  openFile?(name: string): Promise<Protocol>;
}

/** Sizes `measure` reports for a new image of this format. */
export interface Measurement {
  required: number;
  fullyAllocated: number;
  /** Room for the source's persistent bitmaps, where both formats have them. */
  bitmaps?: number;
}

export interface FormatDriver {
  readonly name: string;
  /** One line for lists and menus. */
  readonly description: string;
  /** 0 (not this format) to 100 (certainly this format). */
  probe(input: ProbeInput): number;
  open(proto: Protocol, opts: DriverOpenOptions): Promise<FormatImage>;
  /** Present when the format can be created; `size` is always among them. */
  readonly createOptions?: readonly OptionDecl[];
  create?(proto: Protocol, req: CreateRequest): Promise<void>;
  /** The options `amend` can change on an existing image (no defaults: only what is given changes). */
  readonly amendOptions?: readonly OptionDecl[];
  /**
   * How much room an image of this format needs for `size` guest bytes whose
   * stored data is `dataExtents` (sorted; empty for a new image).
   */
  measure?(
    size: number,
    dataExtents: readonly { offset: number; length: number }[],
    options: OptionValues,
    /** The source's bitmaps, when it can hold them (then the result sizes them, if this format can too). */
    sourceBitmaps?: readonly PersistentBitmap[],
  ): Measurement;
}
