/**
 * Hostile VHDX images. Each test starts from one small valid image (made by
 * Platter: 4 MiB, 1 MiB blocks, blocks 0 and 2 written), changes one field
 * (fixing the checksum over it when the checksum is not what is tested),
 * and expects one clear sentence before anything is allocated from the bad
 * value. Layout of the base image: headers at 64 and 128 KiB, region tables
 * at 192 and 256 KiB, log at 1 MiB, BAT at 2 MiB, metadata at 3 MiB (items
 * from 3 MiB + 64 KiB: block size, flags, disk size, page 83, logical and
 * physical sector sizes), blocks at 8 MiB (block 0) and 9 MiB (block 2).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ErrorKind } from '../../image/errors.js';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { expectRefused } from '../../test/hostile.js';
import { hasTool, shStatus, tempDir } from '../../test/tmp.js';
import { setVhdxChecksum } from './crc32c.js';
import { MAX_LOG_OVERLAY_SECTORS } from './limits.js';
import { buildEntry } from './log.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
const KiB = 1024;
const MiB = 1 << 20;
const H1 = 64 * KiB;
const H2 = 128 * KiB;
const RT1 = 192 * KiB;
const RT2 = 256 * KiB;
const LOG = MiB;
const BAT = 2 * MiB;
const META = 3 * MiB;
const ITEMS = META + 64 * KiB;

let t: ReturnType<typeof tempDir>;
let base: Uint8Array;

beforeAll(async () => {
  t = tempDir('platter-vhdx-hostile-');
  const path = t.path('base.vhdx');
  expect((await platter(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', path, '4M'])).code).toBe(0);
  const img = await openImage(path, { readOnly: false });
  await img.write(new Uint8Array(MiB).fill(0x11), 0);
  await img.write(new Uint8Array(MiB).fill(0x22), 2 * MiB);
  await img.close();
  base = new Uint8Array(readFileSync(path));
});
afterAll(() => t.cleanup());

class Edit {
  readonly v: DataView;
  constructor(readonly b: Uint8Array) {
    this.v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  u16(at: number, n: number) {
    this.v.setUint16(at, n, true);
    return this;
  }
  u32(at: number, n: number) {
    this.v.setUint32(at, n, true);
    return this;
  }
  u64(at: number, n: bigint) {
    this.v.setBigUint64(at, n, true);
    return this;
  }
  /** Recomputes the checksums of both headers and both region tables. */
  sums() {
    for (const h of [H1, H2]) setVhdxChecksum(this.b.subarray(h, h + 4 * KiB), 4);
    for (const r of [RT1, RT2]) setVhdxChecksum(this.b.subarray(r, r + 64 * KiB), 4);
    return this;
  }
}

function imageWith(name: string, change: (e: Edit) => void): string {
  const b = base.slice();
  change(new Edit(b));
  const path = t.path(`${name}.vhdx`);
  writeFileSync(path, b);
  return path;
}

/** Region table entry i's fields (entries from byte 16, 32 bytes each: guid, offset, length, flags). */
const RE = (table: number, i: number) => table + 16 + i * 32;

const CASES: { name: string; kind: ErrorKind; message: RegExp; change: (e: Edit) => void }[] = [
  { name: 'both header checksums bad', kind: 'Corrupt', message: /No valid VHDX header found .*bad checksum/, change: (e) => e.u32(H1 + 4, 1).u32(H2 + 4, 1) },
  { name: 'header signatures', kind: 'Corrupt', message: /No valid VHDX header found/, change: (e) => e.u32(H1, 0x12345678).u32(H2, 0).sums() },
  {
    name: 'both region tables damaged',
    kind: 'Corrupt',
    message: /region table checksum is wrong/,
    change: (e) => e.u32(RT1 + 4, 7).u32(RT2 + 4, 7),
  },
  { name: 'region entry count', kind: 'Corrupt', message: /3000 entries, more than 2047/, change: (e) => e.u32(RT1 + 8, 3000).u32(RT2 + 8, 3000).sums() },
  {
    name: 'overlapping regions',
    kind: 'Corrupt',
    message: /overlaps the BAT/,
    change: (e) => e.u64(RE(RT1, 1) + 16, BigInt(BAT)).u64(RE(RT2, 1) + 16, BigInt(BAT)).sums(),
  },
  {
    name: 'region in the log',
    kind: 'Corrupt',
    message: /overlaps the log/,
    change: (e) => e.u64(RE(RT1, 0) + 16, BigInt(LOG)).u64(RE(RT2, 0) + 16, BigInt(LOG)).sums(),
  },
  {
    name: 'region beyond the file',
    kind: 'Corrupt',
    message: /beyond the end of the file/,
    change: (e) => e.u64(RE(RT1, 1) + 16, 1n << 50n).u64(RE(RT2, 1) + 16, 1n << 50n).sums(),
  },
  {
    name: 'region length huge',
    kind: 'Corrupt',
    message: /beyond the end of the file/,
    change: (e) => e.u32(RE(RT1, 0) + 24, 0xfff00000).u32(RE(RT2, 0) + 24, 0xfff00000).sums(),
  },
  {
    name: 'unknown required region',
    kind: 'Unsupported',
    message: /required but unknown/,
    change: (e) => e.u32(RE(RT1, 0), 0xdeadbeef).u32(RE(RT2, 0), 0xdeadbeef).sums(),
  },
  { name: 'block size not a power of two', kind: 'Corrupt', message: /block size 3145728 is not a power of two/, change: (e) => e.u32(ITEMS, 3 * MiB) },
  { name: 'block size too large', kind: 'Corrupt', message: /block size 536870912/, change: (e) => e.u32(ITEMS, 512 * MiB) },
  { name: 'block size too small', kind: 'Corrupt', message: /block size 4096/, change: (e) => e.u32(ITEMS, 4096) },
  { name: 'logical sector size', kind: 'Corrupt', message: /logical sector size 1000/, change: (e) => e.u32(ITEMS + 32, 1000) },
  { name: 'physical sector size', kind: 'Corrupt', message: /physical sector size 0/, change: (e) => e.u32(ITEMS + 36, 0) },
  { name: 'disk size', kind: 'Corrupt', message: /larger than 64 TiB/, change: (e) => e.u64(ITEMS + 8, 1n << 60n) },
  { name: 'disk size needs a BAT larger than its region', kind: 'Corrupt', message: /too small for/, change: (e) => e.u64(ITEMS + 8, 1n << 40n) },
  { name: 'metadata signature', kind: 'Corrupt', message: /no "metadata" signature/, change: (e) => e.u32(META, 0) },
  { name: 'metadata entry count', kind: 'Corrupt', message: /more than 2047/, change: (e) => e.u16(META + 10, 0xffff) },
  { name: 'metadata item out of bounds', kind: 'Corrupt', message: /outside the metadata region/, change: (e) => e.u32(META + 32 + 16, 0xffffff00) },
  { name: 'metadata item too long', kind: 'Corrupt', message: /item is 4294967295 bytes long/, change: (e) => e.u32(META + 32 + 20, 0xffffffff) },
  { name: 'metadata item in the table', kind: 'Corrupt', message: /outside the metadata region/, change: (e) => e.u32(META + 32 + 16, 16) },
  { name: 'missing required item', kind: 'Corrupt', message: /no page 83 data item/, change: (e) => e.u32(META + 32 + 2 * 32, 0x12345678).u32(META + 32 + 2 * 32 + 24, 0) },
  {
    name: 'unknown required metadata item',
    kind: 'Unsupported',
    message: /metadata item 5 is required but unknown/,
    change: (e) => e.u16(META + 10, 6).u32(META + 32 + 5 * 32, 0xabcdef).u32(META + 32 + 5 * 32 + 24, 4),
  },
  { name: 'has parent, no locator', kind: 'Corrupt', message: /has a parent but no parent locator/, change: (e) => e.u32(ITEMS + 4, 2) },
  { name: 'BAT entry beyond the file', kind: 'Corrupt', message: /BAT entry 0 start offset .* points after end of file/, change: (e) => e.u64(BAT, (1000n << 20n) | 6n) },
  { name: 'BAT entry into the metadata', kind: 'Corrupt', message: /BAT entry 2 .*overlaps the metadata region/, change: (e) => e.u64(BAT + 16, (3n << 20n) | 6n) },
  { name: 'BAT entry in the header section', kind: 'Corrupt', message: /overlaps the header section/, change: (e) => e.u64(BAT, 6n) },
  { name: 'log offset', kind: 'Corrupt', message: /log offset 0x12345/, change: (e) => e.u64(H1 + 72, 0x12345n).u64(H2 + 72, 0x12345n).sums() },
  { name: 'log length', kind: 'Corrupt', message: /log length 12345 is not a multiple/, change: (e) => e.u32(H1 + 68, 12345).u32(H2 + 68, 12345).sums() },
  { name: 'log beyond the file', kind: 'Corrupt', message: /log .* is beyond the end of the file/, change: (e) => e.u32(H1 + 68, 0xfff00000).u32(H2 + 68, 0xfff00000).sums() },
  { name: 'log version', kind: 'Unsupported', message: /log version 7/, change: (e) => e.u16(H1 + 64, 7).u16(H2 + 64, 7).sums() },
];

/** A dirty log: both headers name `guid`, and the log holds one entry (made valid, then damaged by `damage`). */
function dirtyLog(e: Edit, opts: { flushed?: number; damage?: (entry: Uint8Array) => void }) {
  const guid = new Uint8Array(16).fill(0x5a);
  for (const h of [H1, H2]) e.b.set(guid, h + 48);
  const page = e.b.slice(BAT, BAT + 4 * KiB);
  const entry = buildEntry({ sequence: 5n, logGuid: guid, tail: 0, fileSize: opts.flushed ?? e.b.length, writes: [{ fileOffset: BAT, data: page }] });
  opts.damage?.(entry);
  setVhdxChecksum(entry, 4);
  e.b.set(entry, LOG);
  e.sums();
}

describe('hostile VHDX images are refused with one clear sentence', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const path = imageWith(c.name.replace(/\W+/g, '-'), c.change);
      await expectRefused(() => openImage(path), path, c.kind, c.message);
    });
  }

  it('a log written for a longer file (truncated image)', async () => {
    const path = imageWith('log-flushed', (e) => dirtyLog(e, { flushed: 1 << 30 }));
    await expectRefused(() => openImage(path), path, 'Corrupt', /log was written when the file was 1073741824 bytes.*truncated/);
  });

  it('a log entry whose data sector is not valid', async () => {
    const path = imageWith('log-data', (e) => dirtyLog(e, { damage: (entry) => entry.set([0, 0, 0, 0], 4096) }));
    await expectRefused(() => openImage(path), path, 'Corrupt', /data sector 0 is not valid/);
  });

  it('a log entry whose descriptor writes beyond the file', async () => {
    const path = imageWith('log-beyond', (e) =>
      dirtyLog(e, { damage: (entry) => new DataView(entry.buffer).setBigUint64(64 + 16, 1n << 45n, true) }),
    );
    await expectRefused(() => openImage(path), path, 'Corrupt', /writes at .*beyond the file/);
  });

  it('a log entry that writes into the log itself', async () => {
    const path = imageWith('log-into-log', (e) =>
      dirtyLog(e, { damage: (entry) => new DataView(entry.buffer).setBigUint64(64 + 16, BigInt(LOG + 4 * KiB), true) }),
    );
    await expectRefused(() => openImage(path), path, 'Corrupt', /writes at 1052672, into the log itself/);
  });

  it('a log replacing more sectors than a read-only open notes: refused, check -r all replays it', async () => {
    const path = t.path('log-many.vhdx');
    expect((await platter(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M,log_size=9M', path, '4M'])).code).toBe(0);
    const img = await openImage(path, { readOnly: false });
    await img.write(new Uint8Array(MiB).fill(0x11), 0);
    await img.close();
    const e = new Edit(new Uint8Array(readFileSync(path)));
    const guid = new Uint8Array(16).fill(0x5a);
    for (const h of [H1, H2]) e.b.set(guid, h + 48);
    // Zeroed ranges are noted one by one too: one more than the limit, all over block 0's last sector.
    const zero = { fileOffset: e.b.length - 4 * KiB, zeroLength: 4 * KiB };
    const writes = Array.from({ length: MAX_LOG_OVERLAY_SECTORS + 1 }, () => zero);
    e.b.set(buildEntry({ sequence: 5n, logGuid: guid, tail: 0, fileSize: e.b.length, writes }), LOG);
    writeFileSync(path, e.sums().b);
    const tooMany = new RegExp(`replaces more than ${MAX_LOG_OVERLAY_SECTORS} sectors, too many to replay read-only`);
    await expectRefused(() => openImage(path), path, 'Unsupported', tooMany);
    const r = await platter(['check', '-r', 'all', path]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const buf = new Uint8Array(MiB);
    const repaired = await openImage(path);
    try {
      await repaired.read(buf, 0);
    } finally {
      await repaired.close();
    }
    expect(buf.subarray(0, MiB - 4 * KiB).every((x) => x === 0x11)).toBe(true);
    expect(buf.subarray(MiB - 4 * KiB).every((x) => x === 0)).toBe(true);
  });

  it('a log of overlapping entries that all fail their checksum: refused, not searched for ever', async () => {
    const path = imageWith('log-overlapping', (e) => {
      dirtyLog(e, {});
      // An entry header as long as the log at every sector, checksums wrong.
      const head = e.b.slice(LOG, LOG + 64);
      new DataView(head.buffer).setUint32(8, MiB, true);
      for (let at = LOG; at < 2 * MiB; at += 4 * KiB) e.b.set(head, at);
    });
    await expectRefused(() => openImage(path), path, 'Corrupt', /too many overlapping entries/, { quickMs: 2000 });
  });

  it('a log entry with a bad checksum is not an entry: the image opens as it is', async () => {
    const path = imageWith('log-crc', (e) => {
      dirtyLog(e, {});
      e.b[LOG + 4] ^= 0xff;
    });
    const img = await openImage(path);
    try {
      const buf = new Uint8Array(MiB);
      await img.read(buf, 2 * MiB);
      expect(buf.every((x) => x === 0x22)).toBe(true);
    } finally {
      await img.close();
    }
  });

  it('one damaged header or region table: the other copy is used', async () => {
    for (const [name, change] of [
      ['header1', (e: Edit) => e.u32(H1 + 4, 1)],
      ['header2', (e: Edit) => e.u32(H2 + 4, 1)],
      ['region1', (e: Edit) => e.u32(RT1 + 4, 1)],
    ] as const) {
      const path = imageWith(name, change);
      const img = await openImage(path);
      try {
        const buf = new Uint8Array(4 * MiB);
        await img.read(buf, 0);
        expect(buf[0], name).toBe(0x11);
        expect(buf[2 * MiB], name).toBe(0x22);
        expect(buf[MiB], name).toBe(0);
      } finally {
        await img.close();
      }
    }
  });

  it('a damaged first region table: check reports it, -r all mends it from the second so that qemu-img opens the image', async () => {
    const path = imageWith('region1-mend', (e) => e.u32(RT1 + 4, 1));
    const found = await platter(['check', path]);
    expect(found.code).toBe(2);
    expect(found.stderr).toMatch(/^ERROR the region table's first copy is damaged, its second is in use: .*checksum/m);
    const mended = await platter(['check', '-r', 'all', path]);
    expect(mended.code, mended.stderr).toBe(0);
    expect(mended.stdout).toContain('1 corruptions');
    const after = readFileSync(path);
    expect(after.subarray(RT1, RT1 + 64 * KiB).equals(after.subarray(RT2, RT2 + 64 * KiB))).toBe(true);
    expect((await platter(['check', path])).code).toBe(0);
    if (HAS_QEMU) expect(shStatus('qemu-img', ['check', '-f', 'vhdx', path]).status).toBe(0);
  });

  it('a log of 0 bytes: the image reads, and a write that needs the log is refused in one sentence (it looped)', async () => {
    const path = imageWith('log-0', (e) => e.u32(H1 + 68, 0).u32(H2 + 68, 0).sums());
    const img = await openImage(path, { readOnly: false });
    const buf = new Uint8Array(4 * KiB);
    await img.read(buf, 0);
    expect(buf[0]).toBe(0x11);
    await expectRefused(
      async () => {
        await img.write(new Uint8Array(4 * KiB).fill(7), MiB);
        await img.flush();
      },
      path,
      'Corrupt',
      /the VHDX log is 0 bytes long, too short for any entry/,
    );
    await img.close().catch(() => undefined);
  });

  it('on the command line: one line, exit 1', async () => {
    const path = imageWith('cli', (e) => e.u32(ITEMS, 3 * MiB));
    const r = await platter(['info', path]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^platter: .*cli\.vhdx: .*block size 3145728 is not a power of two.*\n$/);
  });
});
