/**
 * Header fixtures for probing tests: the first (or last) bytes of one small
 * image of each format, built field by field with a comment per field, so a
 * reader can check each one against the format's reference.
 *
 * Sources for the layouts: QEMU's block drivers (block/qcow2.h, block/qcow.c,
 * block/qed.h, crypto/block-luks.c, block/vdi.c, block/vmdk.c, block/vpc.c,
 * block/vhdx.h, block/bochs.c, block/cloop.c, block/dmg.c, block/parallels.c)
 * and the published specs (qcow2.txt, VHD spec, MS-VHDX, LUKS1 on-disk format).
 */
import type { ProbeInput } from '../image/driver.js';
import { PROBE_HEAD_BYTES, PROBE_TAIL_BYTES } from '../image/driver.js';

/** Writes little- and big-endian fields into a zero-filled buffer. */
export class Bytes {
  readonly buf: Uint8Array;
  private readonly view: DataView;
  constructor(length: number) {
    this.buf = new Uint8Array(length);
    this.view = new DataView(this.buf.buffer);
  }
  /** A latin1 string (each char one byte), not NUL-terminated. */
  ascii(offset: number, text: string): this {
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c > 0xff) throw new Error(`not latin1: ${text}`);
      this.buf[offset + i] = c;
    }
    return this;
  }
  utf16le(offset: number, text: string): this {
    for (let i = 0; i < text.length; i++) this.view.setUint16(offset + 2 * i, text.charCodeAt(i), true);
    return this;
  }
  u8(offset: number, v: number): this {
    this.view.setUint8(offset, v);
    return this;
  }
  u16be(offset: number, v: number): this {
    this.view.setUint16(offset, v, false);
    return this;
  }
  u16le(offset: number, v: number): this {
    this.view.setUint16(offset, v, true);
    return this;
  }
  u32be(offset: number, v: number): this {
    this.view.setUint32(offset, v, false);
    return this;
  }
  u32le(offset: number, v: number): this {
    this.view.setUint32(offset, v, true);
    return this;
  }
  u64be(offset: number, v: number | bigint): this {
    this.view.setBigUint64(offset, BigInt(v), false);
    return this;
  }
  u64le(offset: number, v: number | bigint): this {
    this.view.setBigUint64(offset, BigInt(v), true);
    return this;
  }
  fill(offset: number, length: number, v: number): this {
    this.buf.fill(v, offset, offset + length);
    return this;
  }
  /** Copies another buffer in at `offset`. */
  put(offset: number, bytes: Uint8Array): this {
    this.buf.set(bytes, offset);
    return this;
  }
}

const KiB = 1024;
const MiB = 1024 * KiB;
const ALL_ONES = 0xffff_ffff_ffff_ffffn;

// ---------------------------------------------------------------- qcow2 / qcow

/** qcow2 header (block/qcow2.h QCowHeader; all fields big-endian). */
export function qcow2Header(version: number): Uint8Array {
  const headerLength = version >= 3 ? 104 : 72;
  const b = new Bytes(headerLength + 8);
  b.ascii(0, 'QFI\xfb') //           magic "QFI\xfb" (0x514649fb)
    .u32be(4, version) //            version: 2 (compat=0.10) or 3 (compat=1.1)
    .u64be(8, 0) //                  backing_file_offset: no backing file
    .u32be(16, 0) //                 backing_file_size
    .u32be(20, 16) //                cluster_bits: 64 KiB clusters
    .u64be(24, 1 * MiB) //           size: virtual size in bytes
    .u32be(32, 0) //                 crypt_method: none
    .u32be(36, 1) //                 l1_size: one L1 entry covers 512 MiB
    .u64be(40, 0x30000) //           l1_table_offset
    .u64be(48, 0x10000) //           refcount_table_offset
    .u32be(56, 1) //                 refcount_table_clusters
    .u32be(60, 0) //                 nb_snapshots
    .u64be(64, 0); //                snapshots_offset
  if (version >= 3) {
    b.u64be(72, 0) //                incompatible_features
      .u64be(80, 0) //               compatible_features
      .u64be(88, 0) //               autoclear_features
      .u32be(96, 4) //               refcount_order: 16-bit refcounts
      .u32be(100, headerLength); //  header_length
  }
  // header extension "end of extensions": type 0, length 0 (already zeros)
  return b.buf;
}

/** qcow (version 1) header (block/qcow.c QCowHeader; big-endian). */
export function qcowHeader(version = 1): Uint8Array {
  return new Bytes(48)
    .ascii(0, 'QFI\xfb') //          magic, the same as qcow2's
    .u32be(4, version) //            version: 1 (anything else is not qcow)
    .u64be(8, 0) //                  backing_file_offset
    .u32be(16, 0) //                 backing_file_size
    .u32be(20, 0) //                 mtime
    .u64be(24, 1 * MiB) //           size
    .u8(32, 12) //                   cluster_bits: 4 KiB clusters
    .u8(33, 9) //                    l2_bits: 512 entries per L2 table
    .u16be(34, 0) //                 padding
    .u32be(36, 0) //                 crypt_method: none
    .u64be(40, 48).buf; //           l1_table_offset: right after the header
}

// ---------------------------------------------------------------------- qed

/** QED header (block/qed.h QEDHeader; little-endian). */
export function qedHeader(): Uint8Array {
  return new Bytes(64)
    .ascii(0, 'QED\0') //            magic: 'Q' | 'E' << 8 | 'D' << 16 as LE u32
    .u32le(4, 64 * KiB) //           cluster_size
    .u32le(8, 4) //                  table_size, in clusters
    .u32le(12, 1) //                 header_size, in clusters
    .u64le(16, 0) //                 features
    .u64le(24, 0) //                 compat_features
    .u64le(32, 0) //                 autoclear_features
    .u64le(40, 64 * KiB) //          l1_table_offset
    .u64le(48, 1 * MiB) //           image_size
    .u32le(56, 0) //                 backing_filename_offset
    .u32le(60, 0).buf; //            backing_filename_size
}

// --------------------------------------------------------------------- luks

/** LUKS1 phdr (crypto/block-luks.c; big-endian), 592 bytes with 8 key slots. */
export function luksHeader(version = 1): Uint8Array {
  const b = new Bytes(592)
    .ascii(0, 'LUKS\xba\xbe') //     magic, 6 bytes
    .u16be(6, version) //            version: 1 (QEMU opens LUKS1 only)
    .ascii(8, 'aes') //              cipher_name[32]
    .ascii(40, 'xts-plain64') //     cipher_mode[32]
    .ascii(72, 'sha256') //          hash_spec[32]
    .u32be(104, 4096) //             payload_offset, in 512-byte sectors
    .u32be(108, 64) //               key_bytes: AES-256-XTS
    .fill(112, 20, 0x5a) //          mk_digest[20]
    .fill(132, 32, 0xa5) //          mk_digest_salt[32]
    .u32be(164, 1000) //             mk_digest_iterations
    .ascii(168, '1b4e28ba-2fa1-11d2-883f-0016d3cca427'); // uuid[40]
  for (let slot = 0; slot < 8; slot++) {
    const at = 208 + slot * 48; //   key slots, 48 bytes each
    b.u32be(at, slot === 0 ? 0x00ac71f3 : 0x0000dead) // active / disabled
      .u32be(at + 4, slot === 0 ? 1000 : 0) //         iterations
      .u32be(at + 40, 8 + slot * 512) //               key_material_offset (sectors)
      .u32be(at + 44, 4000); //                        stripes (AF splitter)
  }
  return b.buf;
}

// ---------------------------------------------------------------------- vdi

export const VDI_BANNER = '<<< Oracle VM VirtualBox Disk Image >>>\n';

/** VDI header (block/vdi.c VdiHeader; little-endian), 512 bytes. */
export function vdiHeader(): Uint8Array {
  return new Bytes(512)
    .ascii(0, VDI_BANNER) //         text[0x40], NUL-padded (not checked by probing)
    .u32le(0x40, 0xbeda107f) //      signature
    .u32le(0x44, 0x00010001) //      version 1.1
    .u32le(0x48, 0x190) //           header_size (from 0x48 on)
    .u32le(0x4c, 1) //               image_type: 1 dynamic, 2 static
    .u32le(0x50, 0) //               image_flags
    //                               description[256] at 0x54: empty
    .u32le(0x154, 0x200) //          offset_bmap: block map right after the header
    .u32le(0x158, 0x400) //          offset_data
    .u32le(0x15c, 0) //              cylinders (unused)
    .u32le(0x160, 0) //              heads
    .u32le(0x164, 0) //              sectors
    .u32le(0x168, 512) //            sector_size
    .u64le(0x170, 1 * MiB) //        disk_size
    .u32le(0x178, 1 * MiB) //        block_size
    .u32le(0x17c, 0) //              block_extra
    .u32le(0x180, 1) //              blocks_in_image
    .u32le(0x184, 0) //              blocks_allocated
    .fill(0x188, 16, 0x11).buf; //   uuid_image (then uuid_last_snap, _link, _parent: zero)
}

// --------------------------------------------------------------------- vmdk

/** VMDK4 hosted sparse extent header (block/vmdk.c VMDK4Header; LE), 512 bytes. */
export function vmdkSparseHeader(): Uint8Array {
  return new Bytes(512)
    .ascii(0, 'KDMV') //             magicNumber 0x564d444b as LE u32
    .u32le(4, 1) //                  version
    .u32le(8, 3) //                  flags: valid newline test | redundant grain table
    .u64le(12, 2048) //              capacity, in sectors (1 MiB)
    .u64le(20, 128) //               grainSize, in sectors (64 KiB)
    .u64le(28, 1) //                 descriptorOffset, in sectors
    .u64le(36, 20) //                descriptorSize, in sectors
    .u32le(44, 512) //               numGTEsPerGT
    .u64le(48, 21) //                rgdOffset
    .u64le(56, 25) //                gdOffset
    .u64le(64, 128) //               overHead
    .u8(72, 0) //                    uncleanShutdown
    .ascii(73, '\n \r\n') //         singleEndLineChar, nonEndLineChar, doubleEndLineChar1/2
    .u16le(77, 0).buf; //            compressAlgorithm: none
}

/** A monolithicFlat descriptor file, as qemu-img writes one. */
export const VMDK_DESCRIPTOR = [
  '# Disk DescriptorFile',
  'version=1',
  'CID=fffffffe',
  'parentCID=ffffffff',
  'createType="monolithicFlat"',
  '',
  '# Extent description',
  'RW 2048 FLAT "disk-flat.vmdk" 0',
  '',
  '# The Disk Data Base',
  '#DDB',
  '',
  'ddb.virtualHWVersion = "4"',
  'ddb.geometry.cylinders = "2"',
  'ddb.geometry.heads = "16"',
  'ddb.geometry.sectors = "63"',
  'ddb.adapterType = "ide"',
  '',
].join('\n');

export function vmdkDescriptor(): Uint8Array {
  return new Bytes(VMDK_DESCRIPTOR.length).ascii(0, VMDK_DESCRIPTOR).buf;
}

// ---------------------------------------------------------------------- vpc

/** VHD hard disk footer (block/vpc.c VHDFooter; big-endian), 512 bytes. */
export function vhdFooter(type: 'fixed' | 'dynamic', size = 4 * KiB): Uint8Array {
  const b = new Bytes(512)
    .ascii(0, 'conectix') //         cookie
    .u32be(8, 2) //                  features: reserved bit always set
    .u32be(12, 0x00010000) //        file_format_version 1.0
    .u64be(16, type === 'fixed' ? ALL_ONES : 512) // data_offset: dynamic header, or none
    .u32be(24, 0) //                 timestamp (seconds since 2000-01-01)
    .ascii(28, 'qemu') //            creator_app
    .u32be(32, 0x00050003) //        creator_ver
    .ascii(36, 'Wi2k') //            creator_os
    .u64be(40, size) //              orig_size
    .u64be(48, size) //              current_size
    .u16be(56, 1) //                 cyls
    .u8(58, 1) //                    heads
    .u8(59, 8) //                    secs_per_cyl
    .u32be(60, type === 'fixed' ? 2 : 3) // type: 2 fixed, 3 dynamic, 4 differencing
    .fill(68, 16, 0x22); //          uuid; in_saved_state at 84 = 0
  // checksum: one's complement of the byte sum, the checksum field counted as 0
  let sum = 0;
  for (const x of b.buf) sum += x;
  b.u32be(64, ~sum >>> 0);
  return b.buf;
}

/** VHD dynamic disk header (block/vpc.c VHDDynDiskHeader; big-endian), 1024 bytes. */
export function vhdDynamicHeader(): Uint8Array {
  const b = new Bytes(1024)
    .ascii(0, 'cxsparse') //         magic
    .u64be(8, ALL_ONES) //           data_offset: unused
    .u64be(16, 1536) //              table_offset: BAT right after this header
    .u32be(24, 0x00010000) //        version
    .u32be(28, 1) //                 max_table_entries
    .u32be(32, 2 * MiB); //          block_size
  let sum = 0;
  for (const x of b.buf) sum += x;
  b.u32be(36, ~sum >>> 0); //        checksum
  return b.buf;
}

/** The start of a dynamic VHD: footer copy at 0, dynamic header at 512. */
export function vhdDynamicHead(): Uint8Array {
  return new Bytes(1536).put(0, vhdFooter('dynamic')).put(512, vhdDynamicHeader()).buf;
}

/** A whole dynamic VHD: footer copy, dynamic header, one-entry BAT (sector-padded), footer. */
export function vhdDynamicFile(): Uint8Array {
  return new Bytes(2560)
    .put(0, vhdFooter('dynamic'))
    .put(512, vhdDynamicHeader())
    .fill(1536, 512, 0xff) //        BAT: every entry 0xffffffff (unallocated)
    .put(2048, vhdFooter('dynamic')).buf;
}

/** A fixed VHD: the guest's bytes, then the footer; nothing at the start says VHD. */
export function vhdFixedFile(dataSize = 4 * KiB): Uint8Array {
  return new Bytes(dataSize + 512).put(dataSize, vhdFooter('fixed', dataSize)).buf;
}

// --------------------------------------------------------------------- vhdx

/** VHDX file type identifier (MS-VHDX 2.2.1), the first structure of the file. */
export function vhdxHeader(): Uint8Array {
  return new Bytes(520)
    .ascii(0, 'vhdxfile') //         signature
    .utf16le(8, 'Platter test').buf; // creator[256], UTF-16LE, informational
}

// -------------------------------------------------------------------- bochs

/** Bochs sparse ("growing") redolog header (block/bochs.c; little-endian), 512 bytes. */
export function bochsHeader(): Uint8Array {
  return new Bytes(512)
    .ascii(0, 'Bochs Virtual HD Image') // magic[32], NUL-padded
    .ascii(32, 'Redolog') //         type[16]
    .ascii(48, 'Growing') //         subtype[16]
    .u32le(64, 0x00020000) //        version 2.0
    .u32le(68, 512) //               header size
    .u32le(72, 2) //                 catalog: entries in the catalog
    .u32le(76, 1) //                 bitmap: bitmap size in sectors
    .u32le(80, 512 * KiB) //         extent: bytes per extent
    .u32le(84, 0) //                 reserved
    .u64le(88, 1 * MiB).buf; //      disk: virtual size
}

// -------------------------------------------------------------------- cloop

export const CLOOP_V2_PREAMBLE =
  '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n';

/** cloop v2 (block/cloop.c; big-endian): a 128-byte shell preamble, then the table. */
export function cloopHeader(): Uint8Array {
  return new Bytes(152)
    .ascii(0, CLOOP_V2_PREAMBLE) //  preamble, NUL-padded to 128 bytes
    .u32be(128, 64 * KiB) //         block_size
    .u32be(132, 1) //                n_blocks
    .u64be(136, 152) //              offsets[0]: first compressed block
    .u64be(144, 152).buf; //         offsets[1]: end of the last block
}

// ---------------------------------------------------------------------- dmg

/** UDIF "koly" trailer (block/dmg.c; big-endian), the last 512 bytes of a .dmg. */
export function dmgTrailer(dataForkLength: number): Uint8Array {
  return new Bytes(512)
    .ascii(0, 'koly') //             signature
    .u32be(4, 4) //                  version
    .u32be(8, 512) //                header_size
    .u32be(12, 1) //                 flags: flattened
    .u64be(16, 0) //                 running_data_fork_offset
    .u64be(24, 0) //                 data_fork_offset
    .u64be(32, dataForkLength) //    data_fork_length
    .u64be(40, 0) //                 rsrc_fork_offset
    .u64be(48, 0) //                 rsrc_fork_length
    .u32be(56, 1) //                 segment_number
    .u32be(60, 1) //                 segment_count
    .fill(64, 16, 0x33) //           segment_id
    .u32be(80, 2) //                 data_checksum_type: CRC32
    .u32be(84, 32) //                data_checksum_size, in bits
    .u64be(216, dataForkLength) //   xml_offset: the plist follows the data fork
    .u64be(224, 0) //                xml_length
    .u32be(352, 2) //                checksum_type: CRC32
    .u32be(356, 32) //               checksum_size
    .u32be(488, 1) //                image_variant: device image
    .u64be(492, 8).buf; //           sector_count: 4 KiB of guest data
}

/** A minimal .dmg: a data fork of 1 KiB (not parsed by probing) and the trailer. */
export function dmgFile(): Uint8Array {
  return new Bytes(1024 + 512).fill(0, 1024, 0x78).put(1024, dmgTrailer(1024)).buf;
}

// ---------------------------------------------------------------- parallels

/** Parallels header (block/parallels.c ParallelsHeader; little-endian), 64 bytes. */
export function parallelsHeader(magic: 'WithoutFreeSpace' | 'WithouFreSpacExt', version = 2): Uint8Array {
  return new Bytes(64)
    .ascii(0, magic) //              magic[16]; the second one marks images over 2 TiB
    .u32le(16, version) //           version: 2
    .u32le(20, 16) //                heads
    .u32le(24, 2) //                 cylinders
    .u32le(28, 2048) //              tracks: cluster size in sectors (1 MiB)
    .u32le(32, 1) //                 bat_entries
    .u64le(36, 2048) //              nb_sectors: virtual size in sectors
    .u32le(44, 0) //                 inuse: closed cleanly
    .u32le(48, 1) //                 data_off, in sectors
    .u32le(52, 0) //                 flags
    .u64le(56, 0).buf; //            ext_off: no format extension
}

// ---------------------------------------------------------------------- raw

/** A DOS MBR boot sector: raw, and nothing any other format may claim. */
export function mbrSector(): Uint8Array {
  return new Bytes(512)
    .u8(0, 0xeb).u8(1, 0x63).u8(2, 0x90) // x86 jump over the BPB
    .u8(446, 0x80) //                partition 1: bootable
    .u8(446 + 4, 0x83) //            type: Linux
    .u32le(446 + 8, 2048) //         first LBA
    .u32le(446 + 12, 2048) //        sectors
    .u8(510, 0x55).u8(511, 0xaa).buf; // boot signature
}

// ------------------------------------------------------------------ the table

export interface HeaderFixture {
  /** A label for test names. */
  label: string;
  /** The driver that must claim it. */
  driver: string;
  /** The whole (small) file. */
  bytes: Uint8Array;
  /** File name to probe it under (the extension matters to dmg only). */
  filename: string;
  /** Where the magic is, in file offsets: changing any of these bytes makes it raw. */
  magic: { offset: number; length: number } | undefined;
}

export function headerFixtures(): HeaderFixture[] {
  const dmg = dmgFile();
  const fixed = vhdFixedFile();
  return [
    { label: 'raw (MBR)', driver: 'raw', bytes: mbrSector(), filename: 'disk.img', magic: undefined },
    { label: 'qcow2 v2', driver: 'qcow2', bytes: qcow2Header(2), filename: 'a.qcow2', magic: { offset: 0, length: 4 } },
    { label: 'qcow2 v3', driver: 'qcow2', bytes: qcow2Header(3), filename: 'a.qcow2', magic: { offset: 0, length: 4 } },
    { label: 'qcow v1', driver: 'qcow', bytes: qcowHeader(), filename: 'a.qcow', magic: { offset: 0, length: 4 } },
    { label: 'qed', driver: 'qed', bytes: qedHeader(), filename: 'a.qed', magic: { offset: 0, length: 4 } },
    { label: 'luks v1', driver: 'luks', bytes: luksHeader(), filename: 'a.luks', magic: { offset: 0, length: 6 } },
    { label: 'vdi', driver: 'vdi', bytes: vdiHeader(), filename: 'a.vdi', magic: { offset: 0x40, length: 4 } },
    { label: 'vmdk sparse', driver: 'vmdk', bytes: vmdkSparseHeader(), filename: 'a.vmdk', magic: { offset: 0, length: 4 } },
    {
      label: 'vmdk descriptor',
      driver: 'vmdk',
      bytes: vmdkDescriptor(),
      filename: 'a.vmdk',
      // As QEMU probes it: comment lines are skipped, and the first other line must be "version=N".
      magic: { offset: '# Disk DescriptorFile\n'.length, length: 'version=1'.length },
    },
    { label: 'vpc dynamic (head)', driver: 'vpc', bytes: vhdDynamicHead(), filename: 'a.vhd', magic: { offset: 0, length: 8 } },
    {
      label: 'vpc fixed (footer in tail)',
      driver: 'vpc',
      bytes: fixed,
      filename: 'a.vhd',
      magic: { offset: fixed.length - 512, length: 8 },
    },
    { label: 'vhdx', driver: 'vhdx', bytes: vhdxHeader(), filename: 'a.vhdx', magic: { offset: 0, length: 8 } },
    { label: 'bochs', driver: 'bochs', bytes: bochsHeader(), filename: 'a.bochs', magic: { offset: 0, length: 22 } },
    {
      label: 'cloop v2',
      driver: 'cloop',
      bytes: cloopHeader(),
      filename: 'a.cloop',
      magic: { offset: 0, length: CLOOP_V2_PREAMBLE.length },
    },
    // Named .img so only the trailer can make it a dmg.
    { label: 'dmg koly trailer', driver: 'dmg', bytes: dmg, filename: 'a.img', magic: { offset: dmg.length - 512, length: 4 } },
    // No magic at all: only the name says dmg (QEMU's dmg_probe looks at nothing else).
    { label: 'dmg by extension', driver: 'dmg', bytes: new Uint8Array(4096).fill(0x5c), filename: 'a.dmg', magic: undefined },
    {
      label: 'parallels',
      driver: 'parallels',
      bytes: parallelsHeader('WithoutFreeSpace'),
      filename: 'a.hdd',
      magic: { offset: 0, length: 16 },
    },
    {
      label: 'parallels ext',
      driver: 'parallels',
      bytes: parallelsHeader('WithouFreSpacExt'),
      filename: 'a.hdd',
      magic: { offset: 0, length: 16 },
    },
  ];
}

/** What readProbeInput would return for a file holding `bytes`. */
export function probeInputOf(bytes: Uint8Array, filename = 'image'): ProbeInput {
  return {
    head: bytes.slice(0, Math.min(PROBE_HEAD_BYTES, bytes.length)),
    tail: bytes.slice(bytes.length - Math.min(PROBE_TAIL_BYTES, bytes.length)),
    size: bytes.length,
    filename,
  };
}

/** A copy of `bytes` with the byte at `offset` changed (bits inverted). */
export function flipByte(bytes: Uint8Array, offset: number): Uint8Array {
  const copy = bytes.slice();
  copy[offset] ^= 0xff;
  return copy;
}

/** Deterministic pseudo-random bytes (mulberry32), so a failure can be replayed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(rand: () => number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = Math.floor(rand() * 256);
  return out;
}
