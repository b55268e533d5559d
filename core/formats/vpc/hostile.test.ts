/**
 * Hostile VHDs. Each test starts from one small valid image built as bytes
 * (fixture.ts, a comment per field), changes one field, and expects one
 * clear sentence (a BlockError of a stable kind) before anything is
 * allocated from the bad value: never a crash, a JavaScript error text, a
 * hang or a large allocation. Where QEMU refuses the same image, qemu-img
 * info must refuse it too (and where Platter goes further, QEMU's verdict is
 * recorded).
 */
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ErrorKind } from '../../image/errors.js';
import { openImage } from '../../image/open.js';
import type { Bytes } from '../../test/headers.js';
import { expectRefused } from '../../test/hostile.js';
import { hasTool, shStatus, tempDir } from '../../test/tmp.js';
import { FIXTURE, vhdChecksumAt, vhdFixture, type FixtureOptions } from './fixture.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const KiB = 1024;
const BLOCK = 64 * KiB;

/** The base image: 256 KiB guest in 64 KiB blocks; block 0 holds 0x11s, block 2 0x22s, 1 and 3 unallocated. */
const BASE: FixtureOptions = {
  size: 4 * BLOCK,
  blockSize: BLOCK,
  blocks: [
    { index: 0, fill: 0x11 },
    { index: 2, fill: 0x22 },
  ],
};
/** A differencing child of parent.vhd, by a relative path. */
const CHILD: FixtureOptions = { ...BASE, diskType: 4, locators: [{ platform: 'W2ru', path: '.\\parent.vhd' }] };

/** Dynamic header fields (from FIXTURE.header). */
const H = {
  tableOffset: FIXTURE.header + 16, //     u64
  maxTableEntries: FIXTURE.header + 28, // u32
  blockSize: FIXTURE.header + 32, //       u32
  checksum: FIXTURE.header + 36, //        u32
  locator0: FIXTURE.header + 576, //       24-byte entry: platform, space, length, reserved, offset (u64 at +16)
};
/** Footer fields (from the start of a footer). */
const F = { cookie: 0, dataOffset: 16, creator: 28, currentSize: 48, diskType: 60, checksum: 64 };

let t: ReturnType<typeof tempDir>;
beforeAll(() => {
  t = tempDir('platter-vpc-hostile-');
  writeFileSync(t.path('parent.vhd'), vhdFixture(BASE).buf);
});
afterAll(() => t?.cleanup());

/** Both footers of `b` (the copy and the one at the end) changed by `change`, checksums made right again. */
function bothFooters(b: Bytes, change: (b: Bytes, at: number) => void): void {
  for (const at of [0, b.buf.length - 512]) {
    change(b, at);
    vhdChecksumAt(b, at, 512, at + F.checksum);
  }
}

function imageWith(name: string, base: FixtureOptions, change: (b: Bytes) => void, length?: number): string {
  const b = vhdFixture(base);
  change(b);
  const path = t.path(`${name}.vhd`);
  writeFileSync(path, length === undefined ? b.buf : b.buf.subarray(0, length));
  return path;
}

async function openAndClose(path: string): Promise<void> {
  const img = await openImage(path, { format: 'vpc' });
  await img.close();
}

const qemuRefuses = (path: string) => shStatus('qemu-img', ['info', '-f', 'vpc', path]).status !== 0;

describe('vpc: the base images', () => {
  it('open and read what they hold', async () => {
    for (const [name, opts] of [
      ['base', BASE],
      ['child', CHILD],
    ] as const) {
      const img = await openImage(imageWith(name, opts, () => undefined));
      try {
        const buf = new Uint8Array(4 * BLOCK);
        await img.read(buf, 0);
        // The child reads the parent (this same layout) through its unallocated blocks: the same bytes.
        expect([buf[0], buf[BLOCK - 1], buf[BLOCK], buf[2 * BLOCK], buf[3 * BLOCK]], name).toEqual([0x11, 0x11, 0, 0x22, 0]);
      } finally {
        await img.close();
      }
    }
  });

  it.skipIf(!HAS_QEMU)('open in qemu-img', () => {
    expect(qemuRefuses(t.path('base.vhd'))).toBe(false);
  });

  it("a wrong dynamic header checksum is accepted, as QEMU accepts it (it never checks that one)", async () => {
    const path = imageWith('dyn-checksum', BASE, (b) => b.u32be(H.checksum, 0x12345678));
    await openAndClose(path);
    if (HAS_QEMU) expect(qemuRefuses(path)).toBe(false);
  });
});

describe('vpc: one field changed is refused with one sentence', () => {
  const cases: {
    name: string;
    base?: FixtureOptions;
    change: (b: Bytes) => void;
    kind: ErrorKind;
    message: RegExp;
    length?: number;
    /** Whether qemu-img refuses it too (false: Platter goes further than QEMU). */
    qemu: boolean;
  }[] = [
    { name: 'block-size-0', change: (b) => b.u32be(H.blockSize, 0), kind: 'Corrupt', message: /Invalid block size 0/, qemu: true },
    { name: 'block-size-0x80', change: (b) => b.u32be(H.blockSize, 0x80), kind: 'Corrupt', message: /Invalid block size 128/, qemu: true },
    {
      name: 'block-size-0x12345678',
      change: (b) => b.u32be(H.blockSize, 0x12345678),
      kind: 'Corrupt',
      message: /Invalid block size 305419896/,
      qemu: true,
    },
    {
      name: 'bat-beyond-file',
      change: (b) => b.u64be(H.tableOffset, 0x100000000),
      kind: 'Corrupt',
      message: /the BAT \(0x100000000 to 0x100000010\) is beyond the end of the file/,
      qemu: true,
    },
    // QEMU refuses it too, for another reason: the footer's bytes read as BAT entries point past the end.
    { name: 'bat-on-footer', change: (b) => b.u64be(H.tableOffset, 0), kind: 'Corrupt', message: /overlaps the footer copy/, qemu: true },
    {
      name: 'bat-entry-beyond-file',
      change: (b) => b.u32be(FIXTURE.bat + 4, 0x00100000),
      kind: 'Corrupt',
      message: /BAT entry 1 points past the end of the file .*truncated/,
      qemu: true,
    },
    {
      name: 'bat-entry-on-header',
      change: (b) => b.u32be(FIXTURE.bat + 4, 1),
      kind: 'Corrupt',
      message: /BAT entry 1 points into the image's metadata/,
      qemu: false,
    },
    {
      name: 'truncated',
      change: () => undefined,
      length: 3 * KiB,
      kind: 'Corrupt',
      message: /BAT entry 0 points past the end of the file/,
      qemu: true,
    },
    {
      name: 'table-too-small-for-size',
      change: (b) => b.u32be(H.maxTableEntries, 3),
      kind: 'Corrupt',
      message: /Page table too small \(3 blocks of 65536 bytes for a 262144-byte disk\)/,
      qemu: true,
    },
    {
      name: 'table-entries-huge',
      change: (b) => b.u32be(H.maxTableEntries, 0xffffffff),
      kind: 'Unsupported',
      message: /Max Table Entries too large \(4294967295\)/,
      qemu: true,
    },
    // The largest count QEMU takes, in a small file: its 2 GiB BAT cannot be there, so nothing is read or allocated.
    {
      name: 'table-entries-max',
      change: (b) => b.u32be(H.maxTableEntries, 0x1fffffff),
      kind: 'Corrupt',
      message: /the BAT .* is beyond the end of the file/,
      qemu: true,
    },
    {
      name: 'data-offset-past-file',
      change: (b) => bothFooters(b, (x, at) => x.u64be(at + F.dataOffset, 0x7fffffffffff)),
      kind: 'Corrupt',
      message: /the dynamic disk header offset 0x7fffffffffff is outside the file/,
      qemu: true,
    },
    {
      name: 'footer-cookie',
      change: (b) => bothFooters(b, (x, at) => x.ascii(at + F.cookie, 'conectiX')),
      kind: 'InvalidFormat',
      message: /invalid VPC image/,
      qemu: true,
    },
    { name: 'header-cookie', change: (b) => b.ascii(FIXTURE.header, 'cxsparsE'), kind: 'InvalidFormat', message: /Invalid header magic/, qemu: true },
    {
      name: 'footer-checksum',
      change: (b) => b.u32be(F.checksum, 0x12345678),
      kind: 'Corrupt',
      message: /Incorrect header checksum \(the footer says 0x12345678/,
      qemu: true,
    },
    {
      name: 'disk-type-5',
      change: (b) => bothFooters(b, (x, at) => x.u32be(at + F.diskType, 5)),
      kind: 'Unsupported',
      message: /unsupported VHD disk type 5/,
      qemu: false,
    },
    {
      name: 'size-over-2040-GiB',
      change: (b) => bothFooters(b, (x, at) => x.u64be(at + F.currentSize, 2041 * 1024 ** 3)),
      kind: 'Unsupported',
      message: /too large .* at most 2040 GiB/,
      qemu: true,
    },
    { name: 'short-file', change: () => undefined, length: 300, kind: 'InvalidFormat', message: /File too small for a VHD header/, qemu: true },
    {
      name: 'locator-offset-past-file',
      base: CHILD,
      change: (b) => b.u64be(H.locator0 + 16, 0x7fffffffffff),
      kind: 'Corrupt',
      message: /parent locator 0 \(W2ru: 24 bytes at 0x7fffffffffff\) is beyond the end of the file/,
      qemu: false,
    },
    {
      name: 'locator-length-huge',
      base: CHILD,
      change: (b) => b.u32be(H.locator0 + 8, 0xffffffff),
      kind: 'Corrupt',
      message: /parent locator 0 \(W2ru: 4294967295 bytes/,
      qemu: false,
    },
    {
      name: 'locator-bad-url',
      base: { ...BASE, diskType: 4, locators: [{ platform: 'MacX', path: 'file://%E0%A4%A.vhd' }] },
      change: () => undefined,
      kind: 'Corrupt',
      message: /the MacX parent locator is not a valid file URL/,
      qemu: false,
    },
    {
      name: 'no-parent',
      base: { ...BASE, diskType: 4 },
      change: () => undefined,
      kind: 'Corrupt',
      message: /names no parent/,
      qemu: false,
    },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const path = imageWith(c.name, c.base ?? BASE, c.change, c.length);
      await expectRefused(() => openAndClose(path), path, c.kind, c.message);
      if (HAS_QEMU) expect(qemuRefuses(path), 'qemu-img refuses it too').toBe(c.qemu);
    });
  }
});

describe('vpc: hostile fixed images', () => {
  it('a footer that says the disk is bigger than the file is refused', async () => {
    const b = vhdFixture(BASE);
    const path = t.path('fixed-short.vhd');
    // A fixed image of 4 KiB whose footer claims 1 MiB.
    const file = new Uint8Array(4 * KiB + 512);
    file.set(b.buf.subarray(0, 512), 4 * KiB);
    const v = new DataView(file.buffer);
    v.setUint32(4 * KiB + F.diskType, 2);
    v.setBigUint64(4 * KiB + F.currentSize, BigInt(1 << 20));
    let sum = 0;
    for (let i = 4 * KiB; i < file.length; i++) if (i < 4 * KiB + 64 || i >= 4 * KiB + 68) sum += file[i];
    v.setUint32(4 * KiB + F.checksum, ~sum >>> 0);
    writeFileSync(path, file);
    await expectRefused(() => openAndClose(path), path, 'Corrupt', /the footer says the disk has 1048576 bytes, but the file holds only 4096/);
  });
});
