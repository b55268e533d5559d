/**
 * Buffers for bulk I/O (the copy pipeline, read-ahead, copy threads):
 * page-aligned, and kept for reuse after a job. The pool is bounded by how
 * many buffers jobs hold at once (at most MAX_PARALLEL per job).
 *
 * Why page-aligned: the kernel copies to and from whole pages then. V8's own
 * buffers start 16 bytes into a page; a 1.2 GB read/write loop in 512 KiB
 * chunks took 620-640 ms from them and 500-520 ms from aligned ones.
 *
 * Where from: a WebAssembly.Memory, which V8 maps at a page boundary, carved
 * into buffers at page offsets. It needs no FFI (posix_memalign through koffi
 * did the same and cost every thread ~10 ms to load koffi before its first
 * read). Such memory is never freed, hence the pool.
 */

const PAGE = 4096;

/** WebAssembly's page (the unit a Memory is sized in). */
const WASM_PAGE = 64 << 10;

/** A new arena's size: 32 of the copy's 512 KiB chunks. Pages never touched take no memory. */
const ARENA = 16 << 20;

const pool = new Map<number, Uint8Array[]>();

/** The arena buffers are carved from, and where its free part starts. */
let arena: ArrayBuffer | undefined;
let used = 0;

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/** `size` page-aligned bytes from the arena (a new one when it is full), or undefined if none can be had. */
function carve(size: number): Uint8Array | undefined {
  const span = roundUp(size, PAGE);
  if (!arena || used + span > arena.byteLength) {
    const bytes = roundUp(Math.max(ARENA, span), WASM_PAGE);
    try {
      const pages = bytes / WASM_PAGE;
      arena = new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer;
    } catch {
      // No WebAssembly, or no address space left for one more Memory.
      return undefined;
    }
    used = 0;
  }
  const buf = new Uint8Array(arena, used, size);
  used += span;
  return buf;
}

/** A buffer of `size` bytes (contents undefined). */
export function takeBuffer(size: number): Uint8Array {
  return pool.get(size)?.pop() ?? carve(size) ?? new Uint8Array(size);
}

/** Returns a buffer for reuse; the caller must not touch it afterwards. */
export function giveBuffer(buf: Uint8Array): void {
  let list = pool.get(buf.length);
  if (!list) pool.set(buf.length, (list = []));
  list.push(buf);
}
