/**
 * The file protocol: a regular file on a local file system, read and written
 * at positions, with holes found by SEEK_DATA/SEEK_HOLE and punched by
 * fallocate where the host has them.
 */
import { constants as fsc, promises as fsp, readSync, statfsSync, writeSync } from 'node:fs';
import { constants as osc } from 'node:os';
import { BlockError, toBlockError } from '../image/errors.js';
import { allocateAhead, punchHole, reserve, seekData, setNoCow, startWriteback, zeroRange } from './native.js';
import type { CacheMode, Preallocation, Protocol, ProtocolExtent } from './protocol.js';

/**
 * After this many bytes written, disk write-out starts in the background:
 * otherwise the kernel holds gigabytes of dirty pages until the final fsync,
 * and a large copy pays for the whole disk write at the end.
 */
const WRITEBACK_EVERY = 16 << 20;

/**
 * The most one write call covers. A buffered write of a whole 2 MiB-aligned
 * 2 MiB range makes the kernel (ext4 on Linux 6.18 here) put it in one 2 MiB
 * page-cache folio, which takes a whole free page block. On a VM whose balloon
 * hands free blocks back to the host, touching those faults to the host, and
 * such copies ran 2 to 4 times slower: raw->vhdx (1 MiB-aligned payload
 * blocks) took 0.67-2.24 s with 2 MiB writes and 0.66-0.71 s with 1 MiB
 * (2 GiB bench image, 4 runs each; qemu-img 0.61-0.63 s). 1 MiB folios are
 * still large, and the extra call per 2 MiB costs nothing measurable.
 */
const MAX_WRITE = 1 << 20;

/**
 * Space allocate() leaves free on the file system. What it allocates ahead
 * and nobody writes is freed only at the end: on a nearly full disk, a copy
 * that plain writes would fit must not fail for it.
 */
const ALLOCATE_MARGIN = 256 << 20;

/** Zero-filling happens in pieces this big, so memory stays flat. */
const ZERO_CHUNK = 1 << 20;
let zeroChunk: Uint8Array | undefined;
function zeros(): Uint8Array {
  zeroChunk ??= new Uint8Array(ZERO_CHUNK);
  return zeroChunk;
}

export interface FileOpenOptions {
  readOnly: boolean;
  /** Create the file (failing if it exists) instead of opening it. */
  create?: boolean;
  /** With `create`: turn off copy-on-write on file systems that have it (btrfs). */
  nocow?: boolean;
  /** 'unsafe' ignores flushes and never starts writeback early. */
  cache?: CacheMode;
  /** The name errors show, when it differs from the path (a temporary file). */
  displayName?: string;
  /**
   * Read and write with blocking system calls on the calling thread, for a
   * thread that does nothing else (a copy worker): no hand-off to libuv's
   * pool per request, and the data stays in this core's cache between the
   * read and the write.
   */
  blocking?: boolean;
}

export class FileProtocol implements Protocol {
  private unsynced = 0;
  private writeback: Promise<void> = Promise.resolve();

  private constructor(
    readonly name: string,
    /** Where it is (`name` may be what the user will see instead). */
    private readonly path: string,
    readonly readOnly: boolean,
    private readonly fh: fsp.FileHandle,
    /** Cached: Platter is the file's only writer while it is open. */
    private length: number,
    /** cache=unsafe: flushes do nothing. */
    private readonly noFlush: boolean,
    private readonly blocking: boolean,
  ) {}

  static async open(path: string, opts: FileOpenOptions): Promise<FileProtocol> {
    const name = opts.displayName ?? path;
    const ctx = { path: name, op: opts.create ? 'create' : 'open' };
    let flags = opts.readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
    if (opts.create) flags = fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL;
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, flags, 0o644);
    } catch (err) {
      throw toBlockError(err, ctx);
    }
    let size: number;
    try {
      const st = await fh.stat();
      if (st.isDirectory()) throw new BlockError('InvalidArgument', 'is a directory, not an image file', ctx);
      if (!st.isFile()) {
        throw new BlockError('Unsupported', 'not a regular file (host devices are not supported yet)', ctx);
      }
      size = st.size;
      // Only an empty file can change it, so before anything is written.
      if (opts.create && opts.nocow) setNoCow(fh.fd);
    } catch (err) {
      await fh.close();
      throw toBlockError(err, ctx);
    }
    return new FileProtocol(name, path, opts.readOnly, fh, size, opts.cache === 'unsafe', opts.blocking === true);
  }

  get fd(): number {
    return this.fh.fd;
  }

  private fail(err: unknown, op: string, offset?: number): never {
    throw toBlockError(err, { path: this.name, op, offset });
  }

  private checkWritable(op: string): void {
    if (this.readOnly) throw new BlockError('InvalidArgument', 'image is open read-only', { path: this.name, op });
  }

  async size(): Promise<number> {
    return this.length;
  }

  async resync(): Promise<void> {
    try {
      this.length = (await this.fh.stat()).size;
    } catch (err) {
      this.fail(err, 'stat');
    }
  }

  /**
   * Node reads and writes at a position that is not a non-negative safe
   * integer (2^53 and above, negative, NaN, fractional) at the file's
   * *current* position instead of failing: refuse it.
   */
  private checkOffset(op: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(offset + length)) {
      throw new BlockError('OutOfBounds', `${op} at offset ${offset} is beyond what a file can hold`, { path: this.name, op, offset });
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.checkOffset('read', offset, buf.length);
    let done = 0;
    try {
      while (done < buf.length) {
        const bytesRead = this.blocking
          ? readSync(this.fd, buf, done, buf.length - done, offset + done)
          : (await this.fh.read(buf, done, buf.length - done, offset + done)).bytesRead;
        if (bytesRead === 0) {
          buf.fill(0, done); // past the end of the file: zeros, as qemu's file driver
          return;
        }
        done += bytesRead;
      }
    } catch (err) {
      this.fail(err, 'read', offset + done);
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable('write');
    this.checkOffset('write', offset, buf.length);
    let done = 0;
    try {
      while (done < buf.length) {
        const n = Math.min(buf.length - done, MAX_WRITE);
        done += this.blocking
          ? writeSync(this.fd, buf, done, n, offset + done)
          : (await this.fh.write(buf, done, n, offset + done)).bytesWritten;
      }
    } catch (err) {
      this.fail(err, 'write', offset + done);
    }
    this.length = Math.max(this.length, offset + buf.length);
    this.unsynced += buf.length;
    if (this.unsynced >= WRITEBACK_EVERY && !this.noFlush) {
      this.unsynced = 0;
      // Not awaited: it only starts disk writes; flush waits for it.
      this.writeback = this.writeback.then(() => startWriteback(this.fd)).catch(() => undefined);
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.noFlush) return;
    try {
      await this.writeback;
      await this.fh.sync();
    } catch (err) {
      this.fail(err, 'flush');
    }
  }

  async truncate(size: number, prealloc: Preallocation = 'off'): Promise<void> {
    this.checkWritable('truncate');
    const old = this.length;
    try {
      if (size <= old || prealloc === 'off') {
        await this.fh.truncate(size);
      } else if (prealloc === 'falloc') {
        const err = await reserve(this.fd, old, size - old);
        if (err === undefined) {
          throw new BlockError('Unsupported', 'preallocation=falloc is not supported on this system', {
            path: this.name,
            op: 'truncate',
          });
        }
        if (err !== 0) throw errnoError(err);
      } else {
        await this.fh.truncate(size);
        await this.fillZeroes(old, size - old);
      }
      this.length = size;
    } catch (err) {
      this.fail(err, 'truncate', old);
    }
  }

  /**
   * A buffered write into a hole makes ext4 reserve each 4 KiB block on its
   * own (delayed allocation) while it holds the file's inode lock, which
   * every other thread writing the file waits for; a write into allocated
   * space skips that.
   */
  async allocate(offset: number, length: number): Promise<void> {
    this.checkWritable('allocate');
    let free: number;
    try {
      const { bavail, bsize } = statfsSync(this.path);
      free = bavail * bsize;
    } catch {
      return; // only a hint
    }
    if (free >= length + ALLOCATE_MARGIN) allocateAhead(this.fd, offset, length);
  }

  /** ext4 punches no hole past the end: truncating to the length as it is frees what lies there. */
  async freePastEnd(): Promise<void> {
    this.checkWritable('truncate');
    await this.resync();
    try {
      await this.fh.truncate(this.length);
    } catch (err) {
      this.fail(err, 'truncate', this.length);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable('discard');
    // Discard is a hint: a host that cannot punch holes keeps the data.
    await punchHole(this.fd, offset, length);
  }

  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.checkWritable('write-zeroes');
    if (mayUnmap && (await punchHole(this.fd, offset, length))) return;
    if (await zeroRange(this.fd, offset, length)) return;
    await this.fillZeroes(offset, length);
  }

  private async fillZeroes(offset: number, length: number): Promise<void> {
    const z = zeros();
    for (let at = offset; at < offset + length; at += z.length) {
      await this.write(z.subarray(0, Math.min(z.length, offset + length - at)), at);
    }
  }

  async blockStatus(offset: number, length: number): Promise<ProtocolExtent> {
    const end = Math.min(offset + length, this.length);
    if (offset >= end) return { offset, length, data: false };
    let known = this.lastExtent;
    if (!known || offset < known.start || offset >= known.end) {
      known = this.extentAt(offset);
      // A copy asks about every chunk of an extent; each lseek costs tens of
      // microseconds on ext4. Only a file no one here writes keeps its answer.
      if (this.readOnly) this.lastExtent = known;
    }
    return { offset, length: Math.min(known.end, end) - offset, data: known.data };
  }

  private lastExtent?: { start: number; end: number; data: boolean };

  /** The data or hole run at `offset` (which is inside the file), to its end. */
  private extentAt(offset: number): { start: number; end: number; data: boolean } {
    const nextData = seekData(this.fd, offset, false);
    if (nextData === undefined) return { start: offset, end: this.length, data: true };
    if (nextData === -1) return { start: offset, end: this.length, data: false };
    if (nextData > offset) return { start: offset, end: nextData, data: false };
    const nextHole = seekData(this.fd, offset, true);
    return { start: offset, end: nextHole === undefined || nextHole < 0 ? this.length : nextHole, data: true };
  }

  async allocatedSize(): Promise<number | undefined> {
    const st = await this.fh.stat();
    return st.blocks * 512;
  }

  async close(): Promise<void> {
    await this.writeback;
    await this.fh.close();
  }
}

/** A Node-style error for an error number returned (not set in errno) by libc. */
function errnoError(errno: number): NodeJS.ErrnoException {
  const code = Object.entries(osc.errno).find(([, n]) => n === errno)?.[0] ?? `E${errno}`;
  const err: NodeJS.ErrnoException = new Error(code);
  err.code = code;
  err.errno = errno;
  return err;
}
