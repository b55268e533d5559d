/**
 * A protocol is a byte source: a file, a host device, an NBD export... Format
 * drivers sit on top of one and never touch the file system themselves.
 */

/** How new space is reserved when a file grows (same names as qemu-img). */
export const PREALLOCATION_MODES = ['off', 'falloc', 'full'] as const;
export type Preallocation = (typeof PREALLOCATION_MODES)[number];

/**
 * How writes reach the disk (qemu-img's -t): 'writeback' flushes when asked
 * and starts writing dirty pages early; 'unsafe' ignores flushes, leaving the
 * data to the page cache (faster; a power cut soon after may lose it).
 */
export const CACHE_MODES = ['writeback', 'unsafe'] as const;
export type CacheMode = (typeof CACHE_MODES)[number];

/** One run of bytes that is either stored data or a hole (reads as zeros). */
export interface ProtocolExtent {
  offset: number;
  length: number;
  data: boolean;
}

export interface Protocol {
  /** What the user named: a path or a URL. */
  readonly name: string;
  readonly readOnly: boolean;
  /** Current length in bytes. */
  size(): Promise<number>;
  /** Fills `buf` from `offset`; bytes past the end read as zeros. */
  read(buf: Uint8Array, offset: number): Promise<void>;
  write(buf: Uint8Array, offset: number): Promise<void>;
  /** Makes every completed write durable (fsync). */
  flush(): Promise<void>;
  /** Sets the length; growth is reserved as `prealloc` says. */
  truncate(size: number, prealloc?: Preallocation): Promise<void>;
  /** Frees the range if the storage can; afterwards it reads as zeros. */
  discard(offset: number, length: number): Promise<void>;
  /** Makes the range read as zeros, freeing it when `mayUnmap` allows. */
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  /** The extent that starts at `offset`, at most `length` bytes long. */
  blockStatus(offset: number, length: number): Promise<ProtocolExtent>;
  /**
   * Has the storage allocate the range now, for writes that will fill it
   * soon, without changing the length (past the end too). Only a hint: the
   * storage may not. What is not written is given back with discard, and
   * past the end with freePastEnd.
   */
  allocate?(offset: number, length: number): Promise<void>;
  /** Frees what allocate reserved past the end; only while nothing else writes the file. */
  freePastEnd?(): Promise<void>;
  /** Other threads wrote to the file (a threaded copy): re-read what is cached about it, such as its length. */
  resync?(): Promise<void>;
  /** Bytes really used on the storage (st_blocks), when known. */
  allocatedSize(): Promise<number | undefined>;
  close(): Promise<void>;
}
