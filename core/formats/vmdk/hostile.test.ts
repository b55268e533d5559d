/**
 * Hostile VMDKs. Each is a small valid image, built here byte by byte, with
 * one field changed; each must be refused with one clear sentence (a
 * BlockError; on the command line one line `platter: FILE: ...`, exit 1) or
 * read: never a crash, a JavaScript error text, a hang or a large allocation.
 *
 * Field offsets: sparse-test-helpers.ts (block/vmdk.c VMDK4Header).
 */
import { mkdirSync, symlinkSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockError, type ErrorKind } from '../../image/errors.js';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { tempDir } from '../../test/tmp.js';
import { H } from './sparse-test-helpers.js';

/** The base image's layout, in sectors: 1 MiB of guest, one grain table. */
const CAPACITY = 2048;
const GRAIN = 128;
const RGD = 21;
const RGT = 22;
const GD = 26;
const GT = 27;
const OVERHEAD = 128;

const DESCRIPTOR = `# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="monolithicSparse"

RW ${CAPACITY} SPARSE "base.vmdk"
ddb.adapterType = "ide"
`;

/** A valid monolithicSparse image whose first grain (guest 0..64 KiB) holds 0xaa. */
function baseImage(): Buffer {
  const f = Buffer.alloc((OVERHEAD + GRAIN) * 512);
  f.write('KDMV', H.magic, 'latin1');
  f.writeUInt32LE(1, H.version);
  f.writeUInt32LE(0b11, H.flags);
  f.writeBigUInt64LE(BigInt(CAPACITY), H.capacity);
  f.writeBigUInt64LE(BigInt(GRAIN), H.grainSize);
  f.writeBigUInt64LE(1n, H.descriptorOffset);
  f.writeBigUInt64LE(20n, H.descriptorSize);
  f.writeUInt32LE(512, H.numGTEsPerGT);
  f.writeBigUInt64LE(BigInt(RGD), H.rgdOffset);
  f.writeBigUInt64LE(BigInt(GD), H.gdOffset);
  f.writeBigUInt64LE(BigInt(OVERHEAD), H.overhead);
  f.write('\n \r\n', H.newlineBytes, 'latin1');
  f.write(DESCRIPTOR, 512, 'latin1');
  f.writeUInt32LE(RGT, RGD * 512); // redundant directory entry 0 -> redundant table
  f.writeUInt32LE(GT, GD * 512); //   directory entry 0 -> table
  f.writeUInt32LE(OVERHEAD, RGT * 512); // grain 0 -> the first sector after the overhead
  f.writeUInt32LE(OVERHEAD, GT * 512);
  f.fill(0xaa, OVERHEAD * 512);
  return f;
}

let t: ReturnType<typeof tempDir>;
beforeEach(() => (t = tempDir('platter-vmdk-hostile-')));
afterEach(() => t.cleanup());

const RAW_JS_TEXT = /DataView|typed array|outside the bounds|Invalid array length|Cannot read prop|undefined|NaN|ERR_[A-Z_]+|RangeError|TypeError/;
const MiB = 1 << 20;

/** Opens and reads all of `path`; returns the BlockError it fails with (the test fails if it does not). */
async function refusal(path: string): Promise<BlockError> {
  const before = process.memoryUsage().arrayBuffers;
  const err = await (async () => {
    const img = await openImage(path);
    try {
      const buf = new Uint8Array(img.size > 4 * MiB ? 4 * MiB : img.size);
      await img.read(buf, 0);
    } finally {
      await img.close();
    }
  })().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'the image was accepted').toBeInstanceOf(BlockError);
  const e = err as BlockError;
  expect(e.message).not.toMatch(RAW_JS_TEXT);
  expect(e.message).not.toContain('\n');
  expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * MiB);
  return e;
}

function patched(patch: (f: Buffer) => Buffer | void): string {
  const f = baseImage();
  return t.write('hostile.vmdk', patch(f) ?? f);
}

describe('hostile sparse headers', () => {
  it('the base image opens and reads as built', async () => {
    const img = await openImage(t.write('base.vmdk', baseImage()));
    try {
      const buf = new Uint8Array(128 * 1024);
      await img.read(buf, 0);
      expect(buf.subarray(0, 65536).every((b) => b === 0xaa)).toBe(true);
      expect(buf.subarray(65536).every((b) => b === 0)).toBe(true);
    } finally {
      await img.close();
    }
  });

  const cases: [string, (f: Buffer) => Buffer | void, ErrorKind, RegExp][] = [
    ['granularity all ones', (f) => void f.writeBigUInt64LE(2n ** 64n - 1n, H.grainSize), 'Corrupt', /grain size .* too large/],
    ['granularity over 1 GiB', (f) => void f.writeBigUInt64LE(0x400000n, H.grainSize), 'Corrupt', /Invalid granularity/],
    ['granularity not a power of two', (f) => void f.writeBigUInt64LE(100n, H.grainSize), 'Corrupt', /Invalid granularity/],
    ['granularity 0', (f) => void f.writeBigUInt64LE(0n, H.grainSize), 'Corrupt', /Invalid granularity/],
    ['grain table size 0xffffffff', (f) => void f.writeUInt32LE(0xffffffff, H.numGTEsPerGT), 'Corrupt', /L2 table size too big/],
    ['grain table size 0', (f) => void f.writeUInt32LE(0, H.numGTEsPerGT), 'Corrupt', /L1 entry size is invalid/],
    ['capacity 0xffffffff sectors', (f) => void f.writeBigUInt64LE(0xffffffffn, H.capacity), 'Corrupt', /grain directory lies past the end/],
    ['capacity all ones (AFL)', (f) => void f.writeBigUInt64LE(2n ** 64n - 1n, H.capacity), 'Corrupt', /capacity .* too large/],
    ['capacity past 2^53 bytes', (f) => void f.writeBigUInt64LE(2n ** 50n, H.capacity), 'Corrupt', /capacity .* too large/],
    [
      'a grain directory of more than 32M entries',
      (f) => {
        f.writeBigUInt64LE(1n, H.grainSize);
        f.writeUInt32LE(1, H.numGTEsPerGT);
        f.writeBigUInt64LE(2n ** 25n + 1n, H.capacity);
      },
      'Corrupt',
      /L1 size too big/,
    ],
    ['version 4', (f) => void f.writeUInt32LE(4, H.version), 'Unsupported', /Unsupported VMDK version 4/],
    ['version 0', (f) => void f.writeUInt32LE(0, H.version), 'Unsupported', /Unsupported VMDK version 0/],
    ['an unknown flag', (f) => void f.writeUInt32LE(0b11 | (1 << 9), H.flags), 'Unsupported', /unknown header flags 0x200/],
    ['damaged newline bytes', (f) => void f.write('\n \n\n', H.newlineBytes, 'latin1'), 'Corrupt', /newline-detection/],
    ['an unknown compression', (f) => void f.writeUInt16LE(7, H.compressAlgorithm), 'Unsupported', /compression algorithm 7/],
    ['a grain directory past the end', (f) => void f.writeBigUInt64LE(1000n, H.gdOffset), 'Corrupt', /grain directory lies past/],
    ['a redundant directory past the end', (f) => void f.writeBigUInt64LE(1000n, H.rgdOffset), 'Corrupt', /redundant grain directory/],
    ['an overhead past the end', (f) => void f.writeBigUInt64LE(100000n, H.overhead), 'Corrupt', /File truncated/],
    ['a huge descriptor', (f) => void f.writeBigUInt64LE(1n << 40n, H.descriptorSize), 'Corrupt', /embedded descriptor .* larger/],
    ['a descriptor past the end', (f) => void f.writeBigUInt64LE(250n, H.descriptorOffset), 'Corrupt', /descriptor lies past/],
    ['a file cut mid-table', (f) => f.subarray(0, (GT + 2) * 512), 'Corrupt', /File truncated/],
    ['a grain table past the end', (f) => void f.writeUInt32LE(5000, GD * 512), 'Corrupt', /grain table 0 lies past the end/],
    ['a grain table on the redundant directory', (f) => void f.writeUInt32LE(RGD, GD * 512), 'Corrupt', /grain table 0 overlaps/],
    ['a grain in the metadata', (f) => void f.writeUInt32LE(5, GT * 512), 'Corrupt', /grain 0 points into the extent's metadata/],
    ['no footer where the header says', (f) => void f.writeBigUInt64LE(2n ** 64n - 1n, H.gdOffset), 'Corrupt', /Invalid footer/],
    ['a malformed embedded extent line', (f) => void f.write('RW 2048 SPARSE "x" 7\n', 512 + DESCRIPTOR.indexOf('RW'), 'latin1'), 'InvalidFormat', /invalid extent line/],
    ['an embedded descriptor without CID', (f) => void f.write('XID', 512 + DESCRIPTOR.indexOf('CID'), 'latin1'), 'InvalidFormat', /no CID/],
  ];
  for (const [label, patch, kind, message] of cases) {
    it(`refuses ${label}`, async () => {
      const err = await refusal(patched(patch));
      expect(err.kind).toBe(kind);
      expect(err.message).toMatch(message);
    });
  }

  it('refuses a compressed grain that claims more than two grains', async () => {
    const path = patched((f) => {
      f.writeUInt32LE(0b11 | (1 << 16) | (1 << 17), H.flags);
      f.writeUInt32LE(3, H.version);
      f.writeUInt16LE(1, H.compressAlgorithm);
      f.writeBigUInt64LE(0n, OVERHEAD * 512); // grain marker: lba
      f.writeUInt32LE(0x7fffffff, OVERHEAD * 512 + 8); // size
    });
    const err = await refusal(path);
    expect(err.message).toMatch(/compressed grain at sector 128 claims 2147483647 bytes/);
  });

  it('says so in one line on the command line', async () => {
    const path = patched((f) => void f.writeUInt32LE(0xffffffff, H.numGTEsPerGT));
    const r = await platter(['info', path]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`platter: ${path}: L2 table size too big (4294967295 grain table entries)\n`);
  });
});

describe('hostile descriptor files', () => {
  const descriptor = (extents: string) =>
    `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n${extents}\n`;

  it('reads a good one (two flat extents, one with an offset)', async () => {
    t.write('a.bin', Buffer.alloc(4096, 1));
    t.write('b.bin', Buffer.concat([Buffer.alloc(1024, 9), Buffer.alloc(1024, 2)]));
    const img = await openImage(t.write('d.vmdk', descriptor('RW 8 FLAT "a.bin" 0\nRW 2 FLAT "b.bin" 2')));
    try {
      expect(img.size).toBe(5120);
      const buf = new Uint8Array(5120);
      await img.read(buf, 0);
      expect(buf.subarray(0, 4096).every((b) => b === 1)).toBe(true);
      expect(buf.subarray(4096).every((b) => b === 2)).toBe(true);
    } finally {
      await img.close();
    }
  });

  it('refuses a malformed extent line, quoting it', async () => {
    const err = await refusal(t.write('d.vmdk', descriptor('RW 8 FLAT "a.bin"')));
    expect(err.message).toBe('invalid extent line: "RW 8 FLAT \\"a.bin\\""');
  });

  it('refuses a descriptor file larger than 1 MiB', async () => {
    const err = await refusal(t.write('d.vmdk', descriptor('RW 8 FLAT "a.bin" 0') + '#'.repeat(1 << 20)));
    expect(err.message).toMatch(/descriptor file is larger than/);
  });

  it('refuses extents adding up past 8 PiB', async () => {
    t.write('a.bin', Buffer.alloc(512));
    const err = await refusal(t.write('d.vmdk', descriptor('RW 9007199254740000 FLAT "a.bin" 0\nRW 9007199254740000 FLAT "a.bin" 0')));
    expect(err.message).toMatch(/add up to more than 8 PiB/);
  });

  it('opens a file named by many extent lines once, and refuses more extents than a disk can have', async () => {
    t.write('a.bin', Buffer.alloc(512, 3));
    const img = await openImage(t.write('d.vmdk', descriptor('RW 1 FLAT "a.bin" 0\n'.repeat(3000))));
    try {
      expect(img.size).toBe(3000 * 512);
    } finally {
      await img.close();
    }
    const err = await refusal(t.write('e.vmdk', descriptor('RW 1 FLAT "a.bin" 0\n'.repeat(5000))));
    expect(err.message).toBe('the descriptor lists 5000 extents; at most 4096 are supported');
  });

  it("refuses a sparse extent whose header disagrees with the descriptor's sectors", async () => {
    t.write('base.vmdk', baseImage());
    const text = descriptor(`RW ${CAPACITY * 1000} SPARSE "base.vmdk"`).replace('monolithicFlat', 'twoGbMaxExtentSparse');
    const err = await refusal(t.write('d.vmdk', text));
    expect(err.message).toMatch(/holds 2048 sectors but the descriptor gives it 2048000/);
  });

  it('refuses an unsupported create type and a missing extent file', async () => {
    expect((await refusal(t.write('d.vmdk', descriptor('RW 8 FLAT "a.bin" 0').replace('monolithicFlat', 'fullDevice')))).message).toBe(
      "Unsupported image type 'fullDevice'",
    );
    expect((await refusal(t.write('d.vmdk', descriptor('RW 8 FLAT "missing.bin" 0')))).kind).toBe('NotFound');
  });

  it('refuses extents outside the folder (/etc/hosts) unless allowed', async () => {
    const path = t.write('d.vmdk', descriptor('RW 1 FLAT "/etc/hosts" 0'));
    expect((await refusal(path)).message).toMatch(/extent file \/etc\/hosts is outside the image's folder; pass --allow-external-files/);
    const img = await openImage(path, { allowExternalFiles: true });
    await img.close();
  });

  it('refuses extents leading out of the folder by ../ or a symlink to a regular file, unless allowed', async () => {
    // The image lives in disk/; its neighbour one level up is a plain file it must not reach on its own.
    mkdirSync(t.path('disk'));
    t.write('outside-flat.vmdk', Buffer.alloc(512, 5));
    t.write('disk/inside-flat.vmdk', Buffer.alloc(512, 6));
    symlinkSync(t.path('outside-flat.vmdk'), t.path('disk/out-link-flat.vmdk'));
    symlinkSync(t.path('disk/inside-flat.vmdk'), t.path('disk/in-link-flat.vmdk'));
    const up = t.write('disk/up.vmdk', descriptor('RW 1 FLAT "../outside-flat.vmdk" 0'));
    const link = t.write('disk/link.vmdk', descriptor('RW 1 FLAT "out-link-flat.vmdk" 0'));
    const outside = (name: string) => `extent file ${name} is outside the image's folder; pass --allow-external-files`;
    expect((await refusal(up)).message).toContain(outside('../outside-flat.vmdk'));
    expect((await refusal(link)).message).toContain(outside('out-link-flat.vmdk'));
    // Allowed, both read the outside file; a symlink that stays inside the folder needs no permission.
    const inLink = t.write('disk/in-link.vmdk', descriptor('RW 1 FLAT "in-link-flat.vmdk" 0'));
    for (const [path, fill, allowExternalFiles] of [[up, 5, true], [link, 5, true], [inLink, 6, false]] as const) {
      const img = await openImage(path, { allowExternalFiles });
      try {
        const buf = new Uint8Array(512);
        await img.read(buf, 0);
        expect(buf.every((b) => b === fill), path).toBe(true);
      } finally {
        await img.close();
      }
    }
  });

  it('refuses extents that are devices, named directly or through a symlink in the folder', async () => {
    symlinkSync('/dev/null', t.path('dev.vmdk'));
    const viaLink = await refusal(t.write('d.vmdk', descriptor('RW 1 FLAT "dev.vmdk" 0')));
    expect(viaLink.message).toMatch(/extent file dev.vmdk is not a regular file; pass --allow-external-files/);
    const direct = await refusal(t.write('e.vmdk', descriptor('RW 1 FLAT "/dev/zero" 0')));
    expect(direct.message).toMatch(/extent file \/dev\/zero is not a regular file/);
    const r = await platter(['info', t.path('d.vmdk')]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('hands ESX sparse and seSparse extents to their readers, which refuse a damaged header in one line', async () => {
    t.write('c.bin', Buffer.from('COWD'.padEnd(2048, '\0')));
    const cowd = await refusal(t.write('d.vmdk', descriptor('RW 8 VMFSSPARSE "c.bin"').replace('monolithicFlat', 'vmfsSparse')));
    expect([cowd.kind, cowd.message]).toEqual(['Unsupported', expect.stringMatching(/COWD version 0/)]);
    const lone = await refusal(t.path('c.bin'));
    expect([lone.kind, lone.message]).toEqual(['Unsupported', expect.stringMatching(/COWD version 0/)]);
    const se = await refusal(t.write('e.vmdk', descriptor('RW 8 SESPARSE "c.bin"').replace('monolithicFlat', 'seSparse')));
    expect([se.kind, se.message]).toEqual(['InvalidFormat', expect.stringMatching(/seSparse/i)]);
  });
});
