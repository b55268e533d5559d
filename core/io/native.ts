/**
 * The few libc calls Node does not expose: lseek(SEEK_DATA/SEEK_HOLE) to find
 * holes, and fallocate to punch them or reserve space. Loaded through koffi
 * when the platform has them; every caller has a portable fallback, so a
 * missing FFI only costs speed and sparseness, never correctness.
 */
import { createRequire } from 'node:module';

interface Libc {
  lseek(fd: number, offset: number, whence: number): number;
  errno(): number;
  /** fallocate(2) on koffi's worker thread; resolves true on success. */
  fallocate?: (fd: number, mode: number, offset: number, length: number) => Promise<boolean>;
  /** fallocate(2) on the calling thread, for calls too short to hand off. */
  fallocateHere?: (fd: number, mode: number, offset: number, length: number) => boolean;
  /** posix_fallocate(3) on a worker thread; resolves the error number, 0 on success. */
  posixFallocate?: (fd: number, offset: number, length: number) => Promise<number>;
  /** sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) on a worker thread. */
  startWriteback?: (fd: number) => Promise<void>;
  /** ioctl(fd, FS_IOC_GETFLAGS / FS_IOC_SETFLAGS, &flags); -1 on failure. */
  getInodeFlags?: (fd: number) => number;
  setInodeFlags?: (fd: number, flags: number) => boolean;
}

export const ENXIO = 6;

/** SEEK_DATA/SEEK_HOLE differ between Linux and the BSDs. */
const WHENCE: Partial<Record<NodeJS.Platform, { data: number; hole: number }>> = {
  linux: { data: 3, hole: 4 },
  darwin: { data: 4, hole: 3 },
  freebsd: { data: 3, hole: 4 },
};

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
const SYNC_FILE_RANGE_WRITE = 0x02;
/** _IOR('f', 1, long) and _IOW('f', 2, long); the kernel reads an int. */
const FS_IOC_GETFLAGS = 0x80086601;
const FS_IOC_SETFLAGS = 0x40086602;
const FS_NOCOW_FL = 0x00800000;

let libc: Libc | null | undefined;

/** Runs a koffi function on its worker pool, so long calls never block the event loop. */
function onWorker<T>(fn: { async: (...args: unknown[]) => void }, ...args: unknown[]): Promise<T> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, res: T) => (err ? reject(err) : resolve(res)));
  });
}

/**
 * koffi, straight from its native module where the platform package holds
 * one for this system's usual libc: koffi's own loader (its index.cjs) took
 * 7-11 ms instead of 2 on every thread that needs a hole found (it reads
 * Node's ELF header to tell glibc from musl, and resolves packages by
 * path), and each copy thread compiles it from source. Anything else, a
 * musl system or another layout, goes through koffi's loader.
 */
function loadKoffi(require: NodeJS.Require): typeof import('koffi') {
  const { platform, arch } = process;
  try {
    return require(`@koromix/koffi-${platform}-${arch}/${platform}_${arch}/koffi.node`) as typeof import('koffi');
  } catch {
    return require('koffi') as typeof import('koffi');
  }
}

function load(): Libc | null {
  if (process.env.PLATTER_NO_FFI === '1') return null;
  if (!WHENCE[process.platform]) return null;
  try {
    const koffi = loadKoffi(createRequire(import.meta.url));
    const lib = koffi.load(process.platform === 'darwin' ? 'libc.dylib' : 'libc.so.6');
    const lseek = lib.func('int64_t lseek(int fd, int64_t offset, int whence)');
    const c: Libc = {
      lseek: (fd, offset, whence) => Number(lseek(fd, offset, whence)),
      errno: () => koffi.errno(),
    };
    if (process.platform === 'linux') {
      const fa = lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
      const pfa = lib.func('int posix_fallocate(int fd, int64_t offset, int64_t len)');
      c.fallocate = async (fd, mode, offset, length) =>
        (await onWorker<number>(fa, fd, mode, offset, length)) === 0;
      c.fallocateHere = (fd, mode, offset, length) => fa(fd, mode, offset, length) === 0;
      c.posixFallocate = (fd, offset, length) => onWorker<number>(pfa, fd, offset, length);
      const sfr = lib.func('int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags)');
      c.startWriteback = async (fd) => {
        await onWorker<number>(sfr, fd, 0, 0, SYNC_FILE_RANGE_WRITE);
      };
      const ioctl = lib.func('int ioctl(int fd, unsigned long request, _Inout_ int *arg)');
      c.getInodeFlags = (fd) => {
        const flags = [0];
        return ioctl(fd, FS_IOC_GETFLAGS, flags) === 0 ? flags[0] : -1;
      };
      c.setInodeFlags = (fd, flags) => ioctl(fd, FS_IOC_SETFLAGS, [flags]) === 0;
    }
    return c;
  } catch {
    return null;
  }
}

function libcOrNull(): Libc | null {
  if (libc === undefined) libc = load();
  return libc;
}

/**
 * Where the next data (or, with `hole`, the next hole) starts at or after
 * `offset`. Returns -1 when there is none before the end of the file, and
 * undefined when the platform or file system cannot tell (then treat
 * everything as data).
 */
export function seekData(fd: number, offset: number, hole: boolean): number | undefined {
  const c = libcOrNull();
  const whence = WHENCE[process.platform];
  if (!c || !whence) return undefined;
  const res = c.lseek(fd, offset, hole ? whence.hole : whence.data);
  if (res >= 0) return res;
  return c.errno() === ENXIO ? -1 : undefined;
}

/** Frees the range (it reads as zeros after); false if this host cannot. */
export async function punchHole(fd: number, offset: number, length: number): Promise<boolean> {
  const c = libcOrNull();
  if (!c?.fallocate) return false;
  return c.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

/** Zeroes the range cheaply, keeping it allocated; false if this host cannot. */
export async function zeroRange(fd: number, offset: number, length: number): Promise<boolean> {
  const c = libcOrNull();
  if (!c?.fallocate) return false;
  return c.fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
}

/**
 * Allocates the range's blocks now, without changing the file's length
 * (FALLOC_FL_KEEP_SIZE), for writes that will fill it; false if this host
 * cannot.
 */
export function allocateAhead(fd: number, offset: number, length: number): boolean {
  return libcOrNull()?.fallocateHere?.(fd, FALLOC_FL_KEEP_SIZE, offset, length) ?? false;
}

/**
 * Reserves blocks for the range, extending the file if needed. Resolves the
 * error number (0 on success), or undefined when the host has no such call.
 */
export async function reserve(fd: number, offset: number, length: number): Promise<number | undefined> {
  const c = libcOrNull();
  if (!c?.posixFallocate) return undefined;
  return c.posixFallocate(fd, offset, length);
}

/**
 * Starts writing the file's dirty pages to disk without waiting for them, so
 * that a long copy's final fsync has little left to do. A no-op where the
 * host has no such call.
 */
export async function startWriteback(fd: number): Promise<void> {
  await libcOrNull()?.startWriteback?.(fd);
}

/**
 * Turns off copy-on-write for a new, still empty file (btrfs's NOCOW
 * attribute, what `chattr +C` sets). Other file systems have no such
 * attribute, so failing is normal there: returns whether it took effect.
 */
export function setNoCow(fd: number): boolean {
  const c = libcOrNull();
  if (!c?.getInodeFlags || !c.setInodeFlags) return false;
  const flags = c.getInodeFlags(fd);
  return flags >= 0 && c.setInodeFlags(fd, flags | FS_NOCOW_FL);
}
