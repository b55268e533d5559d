/**
 * Test fixtures: small dynamic and differencing VHDs built as bytes, field by
 * field (offsets from the VHD specification; every field big-endian), for
 * the hostile-image and differencing tests.
 */
import { Bytes } from '../../test/headers.js';

const KiB = 1024;

export interface FixtureBlock {
  /** Guest block number. */
  index: number;
  /** Byte every data sector of the block holds. */
  fill: number;
  /** The sector bitmap's bytes (default: all set). */
  bitmap?: Uint8Array;
}

export interface FixtureLocator {
  platform: 'W2ru' | 'W2ku' | 'MacX';
  path: string;
}

export interface FixtureOptions {
  diskType?: 3 | 4;
  /** Guest bytes; the creator is "win " so current_size is the size. */
  size?: number;
  blockSize?: number;
  blocks?: FixtureBlock[];
  locators?: FixtureLocator[];
  parentName?: string;
}

/** Where the parts of a fixture are, for tests that damage one field. */
export const FIXTURE = {
  footerCopy: 0,
  header: 512,
  bat: 1536,
  /** Locator data: one sector each from here. */
  locatorData: 2048,
} as const;

export function vhdChecksumAt(b: Bytes, from: number, length: number, field: number): void {
  let sum = 0;
  for (let i = from; i < from + length; i++) if (i < field || i >= field + 4) sum += b.buf[i];
  b.u32be(field, ~sum >>> 0);
}

/** A footer at `at` (checksum included). */
export function writeFooter(b: Bytes, at: number, diskType: number, size: number, creator = 'win '): void {
  b.ascii(at, 'conectix') //               cookie
    .u32be(at + 8, 2) //                   features: the reserved bit
    .u32be(at + 12, 0x00010000) //         version 1.0
    .u64be(at + 16, diskType === 2 ? 0xffffffffffffffffn : 512) // data offset: the dynamic header
    .u32be(at + 24, 0) //                  timestamp
    .ascii(at + 28, creator) //            creator app
    .u32be(at + 32, 0x000a0000) //         creator version
    .ascii(at + 36, 'Wi2k') //             creator host OS
    .u64be(at + 40, size) //               original size
    .u64be(at + 48, size) //               current size
    .u16be(at + 56, 0xffff) //             cylinders \
    .u8(at + 58, 16) //                    heads      > the largest geometry
    .u8(at + 59, 255) //                   sectors   /
    .u32be(at + 60, diskType) //           disk type
    .fill(at + 68, 16, 0x5a) //            unique id
    .u8(at + 84, 0); //                    saved state
  vhdChecksumAt(b, at, 512, at + 64);
}

/** The whole image's bytes, with the end of each part for tests that cut the file. */
export function vhdFixture(o: FixtureOptions = {}): Bytes {
  const diskType = o.diskType ?? 3;
  const size = o.size ?? 4 * 64 * KiB;
  const blockSize = o.blockSize ?? 64 * KiB;
  const entries = Math.ceil(size / blockSize);
  const batBytes = Math.ceil((entries * 4) / 512) * 512;
  const locators = o.locators ?? [];
  const dataStart = Math.max(FIXTURE.locatorData, FIXTURE.bat + batBytes) + locators.length * 512;
  const bitmapBytes = Math.ceil(blockSize / 512 / 8 / 512) * 512;
  const blocks = o.blocks ?? [];
  const end = dataStart + blocks.length * (bitmapBytes + blockSize);
  const b = new Bytes(end + 512);
  writeFooter(b, FIXTURE.footerCopy, diskType, size);
  const h = FIXTURE.header;
  b.ascii(h, 'cxsparse') //                 cookie
    .u64be(h + 8, 0xffffffffffffffffn) //  data offset: none
    .u64be(h + 16, FIXTURE.bat) //          table offset
    .u32be(h + 24, 0x00010000) //           version
    .u32be(h + 28, entries) //              max table entries
    .u32be(h + 32, blockSize) //            block size
    .fill(h + 40, 16, 0x77) //              parent unique id
    .u32be(h + 56, 0); //                   parent timestamp
  // parent unicode name, UTF-16 big-endian
  [...(o.parentName ?? '')].forEach((c, i) => b.u16be(h + 64 + 2 * i, c.charCodeAt(0)));
  locators.forEach((l, i) => {
    const data = l.platform === 'MacX' ? Buffer.from(l.path, 'utf8') : Buffer.from(l.path, 'utf16le');
    const at = dataStart - (locators.length - i) * 512;
    const e = h + 576 + i * 24;
    b.ascii(e, l.platform) //                platform code
      .u32be(e + 4, 1) //                   data space: one sector
      .u32be(e + 8, data.length) //         data length
      .u64be(e + 16, at) //                 data offset
      .put(at, data);
  });
  b.fill(FIXTURE.bat, batBytes, 0xff); //     BAT: unallocated
  blocks.forEach((blk, i) => {
    const at = dataStart + i * (bitmapBytes + blockSize);
    b.u32be(FIXTURE.bat + 4 * blk.index, at / 512) // BAT entry: the bitmap's sector
      .put(at, blk.bitmap ?? new Uint8Array(bitmapBytes).fill(0xff))
      .fill(at + bitmapBytes, blockSize, blk.fill);
  });
  vhdChecksumAt(b, h, 1024, h + 36);
  writeFooter(b, end, diskType, size);
  return b;
}
