/**
 * ESX sparse extents ("COWD", VMDK3): the delta files of vmfsSparse disks,
 * read-only as in QEMU. A 2048-byte header, a grain directory of 32-bit table
 * sectors, grain tables of 4096 32-bit grain sectors; 0 means "not in this
 * layer" (read from the parent). There are no zero grains.
 *
 * Layout: QEMU's block/vmdk.c (VMDK3Header, vmdk_open_vmfs_sparse) and
 * libyal's VMDK notes (header size and field values).
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import type { VmdkExtent } from './extent.js';
import { GrainMapExtent } from './legacy-grains.js';
import {
  COWD,
  COWD_HEADER_BYTES,
  COWD_MAGIC,
  COWD_MAX_GRAIN_SECTORS,
  COWD_TABLE_ENTRIES,
  COWD_VERSION,
  MAX_DIRECTORY_ENTRIES,
  SECTOR,
} from './legacy-limits.js';

/**
 * Opens a COWD extent. `length` is the extent's size in the descriptor, when
 * there is one; it must agree with the header (QEMU takes the header's).
 */
export async function openCowdExtent(file: Protocol, length?: number): Promise<VmdkExtent> {
  const fail = (kind: 'InvalidFormat' | 'Unsupported' | 'Corrupt', message: string) =>
    new BlockError(kind, message, { path: file.name, op: 'open' });

  const fileSize = await file.size();
  const head = new Uint8Array(32);
  await file.read(head, 0);
  const h = new DataView(head.buffer);
  const u32 = (at: number) => h.getUint32(at, true);

  if (fileSize < 4 || String.fromCharCode(...head.subarray(0, 4)) !== COWD_MAGIC) {
    throw fail('InvalidFormat', 'not a COWD (ESX sparse) extent: no "COWD" magic');
  }
  const version = u32(COWD.version);
  if (version !== COWD_VERSION) {
    throw fail('Unsupported', `COWD version ${version} is not supported (only ${COWD_VERSION})`);
  }

  const granularity = u32(COWD.granularity);
  if (granularity === 0) throw fail('Corrupt', 'the grain size is 0 sectors');
  if (granularity > COWD_MAX_GRAIN_SECTORS) {
    throw fail('Corrupt', `the grain size of ${granularity} sectors is over ${COWD_MAX_GRAIN_SECTORS} (1 GiB)`);
  }
  // QEMU takes any size; VMware only writes powers of two, and anything else is a damaged header.
  if ((granularity & (granularity - 1)) !== 0) {
    throw fail('Corrupt', `the grain size of ${granularity} sectors is not a power of two`);
  }

  const sectors = u32(COWD.diskSectors);
  if (length !== undefined && length !== sectors * SECTOR) {
    throw fail('Corrupt', `the descriptor gives ${length / SECTOR} sectors but the extent's header ${sectors}`);
  }

  const gdEntries = u32(COWD.gdEntries);
  if (gdEntries > MAX_DIRECTORY_ENTRIES) {
    throw fail('Corrupt', `the grain directory has ${gdEntries} entries (at most ${MAX_DIRECTORY_ENTRIES})`);
  }
  // Exact enough: either side above 2^53 can only mean "covers everything" (sectors < 2^32).
  if (gdEntries * COWD_TABLE_ENTRIES * granularity < sectors) {
    throw fail('Corrupt', `the grain directory of ${gdEntries} entries does not cover the disk's ${sectors} sectors`);
  }
  const gdAt = u32(COWD.gdSector) * SECTOR;
  const gdBytes = gdEntries * 4;
  if (gdAt < COWD_HEADER_BYTES) throw fail('Corrupt', `the grain directory at byte ${gdAt} overlaps the header`);
  if (gdAt + gdBytes > fileSize) {
    throw fail('Corrupt', `the grain directory at byte ${gdAt} lies beyond the end of the file`);
  }

  const gdBuf = new Uint8Array(gdBytes);
  await file.read(gdBuf, gdAt);
  const gd = new DataView(gdBuf.buffer);

  return new GrainMapExtent(file, fileSize, {
    length: sectors * SECTOR,
    grainSize: granularity * SECTOR,
    tableEntries: COWD_TABLE_ENTRIES,
    entryBytes: 4,
    dataStart: COWD_HEADER_BYTES,
    tableOffset: (index) => {
      const sector = gd.getUint32(index * 4, true);
      return sector === 0 ? undefined : sector * SECTOR;
    },
    grain: (table, index) => {
      const sector = table.getUint32(index * 4, true);
      return sector === 0 ? { state: 'unallocated' } : { state: 'data', hostOffset: sector * SECTOR };
    },
  });
}
