/**
 * Platter's VHD driver against qemu-img and qemu-io (7.2) and libyal's
 * vhdiinfo, both ways, for dynamic and fixed images with and without
 * force_size: what Platter writes compares equal in QEMU and opens in
 * vhdiinfo with the same media size, and libvhdi's vhdimount reads its guest
 * bytes as the source's; what QEMU writes reads identically in
 * Platter; sizes (by creator app), info, map and measure agree.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { Bytes } from '../../test/headers.js';
import { platter } from '../../test/cli.js';
import { firstDifference, hasFuseTool, withFuseMount } from '../../test/fuse.js';
import { makeMixedRaw, readGuestBytes } from '../../test/images.js';
import { prng } from '../../test/prng.js';
import { qemuIo } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import { vhdiMediaSize } from '../../test/vhdi.js';
import { vhdChecksumAt, vhdFixture } from './fixture.js';

const KiB = 1024;
const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const HAS_VHDI = hasTool('vhdiinfo', 'apt-get install libvhdi-utils');
const HAS_VHDIMOUNT = hasFuseTool('vhdimount', 'apt-get install libvhdi-utils');

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vpc-interop-')));
afterAll(() => t?.cleanup());

const SUBFORMATS = [
  { label: 'dynamic', options: 'subformat=dynamic' },
  { label: 'fixed', options: 'subformat=fixed' },
  { label: 'dynamic, force_size', options: 'subformat=dynamic,force_size=on' },
  { label: 'fixed, force_size', options: 'subformat=fixed,force_size=on' },
];

/** qemu-img compare of a raw file and a VHD (named: qemu probes fixed VHDs as raw). */
function compareWithRaw(raw: string, vhd: string): string {
  const r = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, vhd]);
  return (r.stdout + r.stderr).trim();
}

function qemuVirtualSize(path: string): number {
  return JSON.parse(sh('qemu-img', ['info', '--output=json', '-f', 'vpc', path]))['virtual-size'] as number;
}

describe.skipIf(!HAS_QEMU)('vpc: what Platter writes', () => {
  SUBFORMATS.forEach((sub, n) => {
    it(`${sub.label}: created, written at random and zeroed, reads the same in qemu-img and vhdiinfo`, async () => {
      const rng = prng(10 + n);
      const path = t.path(`pw${n}.vhd`);
      // 20 MB is not a CHS size: without force_size it is rounded up.
      expect((await platter(['create', '-q', '-f', 'vpc', '-o', sub.options, path, '20M'])).code).toBe(0);
      const img = await openImage(path, { format: 'vpc', readOnly: false });
      const model = new Uint8Array(img.size);
      for (let i = 0; i < 40; i++) {
        const len = rng.int(1, 600 * KiB);
        const at = rng.int(0, img.size - len);
        if (i % 5 === 4) {
          await img.writeZeroes(at, len, true);
          model.fill(0, at, at + len);
        } else {
          const data = rng.bytes(len);
          await img.write(data, at);
          model.set(data, at);
        }
      }
      await img.close();
      writeFileSync(t.path('model.raw'), model);
      expect(compareWithRaw(t.path('model.raw'), path)).toContain('Images are identical');
      expect(qemuVirtualSize(path)).toBe(model.length);
      // The same map, key for key.
      expect((await platter(['map', '--output=json', '-f', 'vpc', path])).stdout).toBe(
        sh('qemu-img', ['map', '--output=json', '-f', 'vpc', path]),
      );
      // The size qemu-img gives the same request.
      const q = t.path(`pw${n}-q.vhd`);
      sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', sub.options, q, '20M']);
      expect(model.length).toBe(qemuVirtualSize(q));
      if (sub.options.includes('force_size')) expect(model.length).toBe(20 * MiB);
      if (HAS_VHDI) expect(vhdiMediaSize(path)).toBe(model.length);
    });

    it(`${sub.label}: platter convert -O vpc of a raw file with holes compares equal in qemu-img`, async () => {
      const raw = t.path(`src${n}.raw`);
      makeMixedRaw(raw, 24 * MiB, prng(20 + n), { zeroRun: 2 * MiB });
      const out = t.path(`cv${n}.vhd`);
      const r = await platter(['convert', '-O', 'vpc', '-o', sub.options, raw, out]);
      expect(r.code, r.stderr).toBe(0);
      expect(compareWithRaw(raw, out)).toMatch(/Images are identical/);
      // The same file size as qemu-img's conversion.
      const q = t.path(`cvq${n}.vhd`);
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', sub.options, raw, q]);
      expect(statSync(out).size).toBe(statSync(q).size);
      expect(qemuVirtualSize(out)).toBe(qemuVirtualSize(q));
      if (HAS_VHDI) expect(vhdiMediaSize(out)).toBe(qemuVirtualSize(out));
    });
  });

  it('an Azure disk: platter create -f vpc -o subformat=fixed,force_size=on FILE 1G is exactly 1 GiB, fixed', async () => {
    const path = t.path('azure.vhd');
    const r = await platter(['create', '-f', 'vpc', '-o', 'subformat=fixed,force_size=on', path, '1G']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`Formatting '${path}', fmt=vpc size=1073741824 subformat=fixed force_size=on`);
    // The guest's bytes and one footer sector, nothing else.
    expect(statSync(path).size).toBe(1024 * MiB + 512);
    expect(qemuVirtualSize(path)).toBe(1024 * MiB);
    const footer = readFileSync(path).subarray(1024 * MiB);
    expect(footer.subarray(0, 8).toString('latin1')).toBe('conectix');
    expect(footer.subarray(28, 32).toString('latin1')).toBe('qem2');
    expect(footer.readUInt32BE(60)).toBe(2);
    if (HAS_VHDI) expect(vhdiMediaSize(path)).toBe(1024 * MiB);
  });

  it('-o help lists the options, and says which to use for Hyper-V and Azure', async () => {
    const r = await platter(['create', '-f', 'vpc', '-o', 'help', t.path('help.vhd'), '1M']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/force_size=<bool \(on\/off\)> +- .*exact size.*Hyper-V and Azure/);
    expect(r.stdout).toMatch(/subformat=<str> +- .*fixed.*Azure.*\(allowed values: dynamic, fixed\)/);
  });

  it('without force_size, sizes round up to a CHS geometry exactly as qemu-img rounds them', async () => {
    for (const size of ['1M', '20M', '100M', '127G', '128G', '300G']) {
      const mine = t.path(`chs-${size}.vhd`);
      const theirs = t.path(`chs-${size}-q.vhd`);
      expect((await platter(['create', '-q', '-f', 'vpc', mine, size])).code).toBe(0);
      sh('qemu-img', ['create', '-q', '-f', 'vpc', theirs, size]);
      expect(qemuVirtualSize(mine), size).toBe(qemuVirtualSize(theirs));
      // The same footer geometry and sizes, the same header and BAT.
      const a = readFileSync(mine);
      const b = readFileSync(theirs);
      expect(a.length).toBe(b.length);
      expect(a.subarray(40, 64)).toEqual(b.subarray(40, 64));
      expect(a.subarray(512, a.length - 512)).toEqual(b.subarray(512, b.length - 512));
    }
  });

  it('sizes past 2040 GiB are refused, as qemu-img refuses them', async () => {
    const q = shStatus('qemu-img', ['create', '-f', 'vpc', '-o', 'force_size=on', t.path('big-q.vhd'), '2041G']);
    expect(q.status).toBe(1);
    const r = await platter(['create', '-f', 'vpc', '-o', 'force_size=on', t.path('big.vhd'), '2041G']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("The image size is too large for file format 'vpc'");
    expect(q.stderr).toContain("The image size is too large for file format 'vpc'");
    // 2040 GiB itself is allowed.
    expect((await platter(['create', '-q', '-f', 'vpc', '-o', 'force_size=on', t.path('big.vhd'), '2040G'])).code).toBe(0);
  });
});

describe.skipIf(!HAS_VHDIMOUNT)('vpc: libvhdi (vhdimount) reads the guest bytes Platter wrote', () => {
  SUBFORMATS.forEach((sub, n) => {
    it(`${sub.label}: platter convert -O vpc of a raw file with holes, every byte the source's`, async () => {
      const raw = t.path(`vm${n}.raw`);
      const source = makeMixedRaw(raw, 24 * MiB, prng(50 + n), { zeroRun: 2 * MiB });
      const out = t.path(`vm${n}.vhd`);
      const r = await platter(['convert', '-O', 'vpc', '-o', sub.options, raw, out]);
      expect(r.code, r.stderr).toBe(0);
      // Without force_size the disk rounds up to a CHS geometry (as qemu-img's, tested above): zeros past the source.
      const mine = await readGuestBytes(out, 'vpc');
      if (sub.options.includes('force_size')) expect(mine.length).toBe(source.length);
      expect(mine.length).toBeGreaterThanOrEqual(source.length);
      const expected = new Uint8Array(mine.length);
      expected.set(source);
      expect(firstDifference(mine, expected), 'Platter').toBeUndefined();
      const seen = await withFuseMount('vhdimount', out, t.path(`vm-mnt-${n}`), 'vhdi1', (f) => readFileSync(f));
      expect(firstDifference(seen, expected), 'vhdimount').toBeUndefined();
    });
  });
});

describe.skipIf(!HAS_QEMU)('vpc: what qemu-img writes', () => {
  SUBFORMATS.forEach((sub, n) => {
    it(`${sub.label}: written at random by qemu-io, reads identically in Platter`, async () => {
      const rng = prng(30 + n);
      const path = t.path(`qw${n}.vhd`);
      sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', sub.options, path, '20M']);
      const size = qemuVirtualSize(path);
      const cmds: string[] = [];
      for (let i = 0; i < 30; i++) {
        const len = rng.int(1, 300) * 512;
        cmds.push(`write -P ${rng.int(1, 255)} ${rng.int(0, (size - len) / 512) * 512} ${len}`);
      }
      qemuIo(path, cmds, 'vpc');
      const raw = t.path(`qw${n}.raw`);
      sh('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', path, raw]);
      const mine = await readGuestBytes(path, 'vpc');
      expect(mine.length).toBe(size);
      expect(Buffer.compare(mine, readFileSync(raw))).toBe(0);
      // The same map, key for key.
      const m = await platter(['map', '--output=json', '-f', 'vpc', path]);
      expect(m.stdout).toBe(sh('qemu-img', ['map', '--output=json', '-f', 'vpc', path]));
      const info = JSON.parse((await platter(['info', '--output=json', '-f', 'vpc', path])).stdout);
      const qinfo = JSON.parse(sh('qemu-img', ['info', '--output=json', '-f', 'vpc', path]));
      expect(Object.keys(info).sort()).toEqual(Object.keys(qinfo).sort());
      expect(info['virtual-size']).toBe(qinfo['virtual-size']);
      expect(info['cluster-size']).toBe(qinfo['cluster-size']);
    });
  });

  it('measure gives the size qemu-img convert -O vpc makes (qemu-img itself cannot measure vpc)', async () => {
    const raw = t.path('measure.raw');
    // Written zeros count as data to measure (as in qemu-img measure) but convert skips them: none here.
    makeMixedRaw(raw, 24 * MiB, prng(40), { zeroRun: 0 });
    expect(shStatus('qemu-img', ['measure', '-O', 'vpc', raw]).stderr).toContain('does not support size measurement');
    for (const sub of SUBFORMATS) {
      const q = t.path('measure.vhd');
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', sub.options, raw, q]);
      const r = await platter(['measure', '--output=json', '-O', 'vpc', '-o', sub.options, raw]);
      expect(r.code, r.stderr).toBe(0);
      const m = JSON.parse(r.stdout);
      expect(m.required, sub.label).toBe(statSync(q).size);
      const full = t.path('measure-full.raw');
      sh('qemu-img', ['create', '-q', '-f', 'raw', full, String(qemuVirtualSize(q))]);
      sh('qemu-io', ['-f', 'raw', '-c', `write -P 1 0 ${qemuVirtualSize(q)}`, full]);
      const f = t.path('measure-full.vhd');
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', sub.options, full, f]);
      expect(m['fully-allocated'], sub.label).toBe(statSync(f).size);
    }
  });

  it('resize is refused, as qemu-img refuses it', async () => {
    const path = t.path('resize.vhd');
    sh('qemu-img', ['create', '-q', '-f', 'vpc', path, '10M']);
    const q = shStatus('qemu-img', ['resize', path, '20M']);
    const r = await platter(['resize', path, '20M']);
    expect([r.code, q.status]).toEqual([1, 1]);
    expect(q.stderr).toContain('Image format driver does not support resize');
    expect(r.stderr).toContain('Image format driver does not support resize');
  });
});

/** Creator apps and how QEMU sizes their images: by CHS geometry or by current_size. */
const CREATORS = ['vpc ', 'qemu', 'qem2', 'win ', 'd2v ', 'CTXS', 'tap\0', 'VBox', 'xyz '];

describe.skipIf(!HAS_QEMU)('vpc: virtual size by creator app', () => {
  for (const subformat of ['dynamic', 'fixed']) {
    it(`${subformat}: Platter's size is qemu-img's for every creator`, async () => {
      const base = t.path(`creator-${subformat}.vhd`);
      // 20 MB rounds up to a geometry, so CHS and current_size differ once current_size is set to 20 MB.
      sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', `subformat=${subformat}`, base, '20M']);
      const bytes = readFileSync(base);
      const footers = subformat === 'fixed' ? [bytes.length - 512] : [0, bytes.length - 512];
      const sizes: Record<string, number[]> = {};
      for (const creator of CREATORS) {
        const b = new Bytes(bytes.length);
        b.put(0, bytes);
        for (const at of footers) {
          b.ascii(at + 28, creator).u64be(at + 48, 20 * MiB);
          vhdChecksumAt(b, at, 512, at + 64);
        }
        const path = t.path(`creator-${subformat}-${creator.replace(/\W/g, '_')}.vhd`);
        writeFileSync(path, b.buf);
        const img = await openImage(path, { format: 'vpc' });
        sizes[creator] = [img.size, qemuVirtualSize(path)];
        await img.close();
      }
      for (const creator of CREATORS) expect(sizes[creator][0], JSON.stringify(creator)).toBe(sizes[creator][1]);
      // And the two rules really differ here.
      expect(sizes['win '][0]).toBe(20 * MiB);
      expect(sizes['vpc '][0]).not.toBe(20 * MiB);
    });
  }
});

describe.skipIf(!HAS_QEMU)('vpc: differencing disks', () => {
  const BLOCK = 64 * KiB;
  const SIZE = 4 * BLOCK;

  /** A parent made by qemu-img, holding 0x11 everywhere. */
  function parent(name: string): void {
    sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'force_size=on', t.path(name), String(SIZE)]);
    qemuIo(t.path(name), [`write -P 0x11 0 ${SIZE}`], 'vpc');
  }

  /**
   * A child whose block 1 holds 0x22 in sectors 0..7 and 16..(end) (bits set)
   * and block 3 holds 0x33 everywhere; what it leaves clear comes from the parent.
   */
  function child(locators: Parameters<typeof vhdFixture>[0]): Uint8Array {
    const bitmap = new Uint8Array(512).fill(0xff);
    bitmap[1] = 0; // sectors 8..15 clear
    return vhdFixture({
      diskType: 4,
      size: SIZE,
      blockSize: BLOCK,
      blocks: [
        { index: 1, fill: 0x22, bitmap },
        { index: 3, fill: 0x33 },
      ],
      ...locators,
    }).buf;
  }

  function expected(): Uint8Array {
    const e = new Uint8Array(SIZE).fill(0x11);
    e.fill(0x22, BLOCK, 2 * BLOCK);
    e.fill(0x11, BLOCK + 8 * 512, BLOCK + 16 * 512);
    e.fill(0x33, 3 * BLOCK, 4 * BLOCK);
    return e;
  }

  for (const c of [
    {
      label: 'a relative path (W2ru)',
      locators: { locators: [{ platform: 'W2ru' as const, path: '.\\parent.vhd' }] },
      backingName: 'parent.vhd',
    },
    {
      label: 'an absolute Windows path (W2ku), found next to the child',
      locators: { locators: [{ platform: 'W2ku' as const, path: 'C:\\VMs\\parent.vhd' }] },
      backingName: 'parent.vhd',
    },
    {
      label: 'a Mac OS X file URL (MacX)',
      locators: { locators: [{ platform: 'MacX' as const, path: 'file://./parent.vhd' }] },
      backingName: './parent.vhd',
    },
    { label: "only the header's parent name", locators: { parentName: 'C:\\VMs\\parent.vhd' }, backingName: 'parent.vhd' },
  ]) {
    it(`reads through the parent named by ${c.label}; clear bitmap bits read the parent`, async () => {
      parent('parent.vhd');
      const path = t.path('child.vhd');
      writeFileSync(path, child(c.locators));
      const img = await openImage(path);
      try {
        expect(img.backing?.filename).toBe(t.path('parent.vhd'));
        const buf = new Uint8Array(SIZE);
        await img.read(buf, 0);
        expect(Buffer.compare(buf, expected())).toBe(0);
      } finally {
        await img.close();
      }
      // Map: the child's sectors at depth 0, the rest from the parent at depth 1.
      const m = JSON.parse((await platter(['map', '--output=json', path])).stdout) as { start: number; depth: number }[];
      expect(m.map((e) => [e.start, e.depth])).toEqual([
        [0, 1],
        [BLOCK, 0],
        [BLOCK + 8 * 512, 1],
        [BLOCK + 16 * 512, 0],
        [2 * BLOCK, 1],
        [3 * BLOCK, 0],
      ]);
      // info names the parent (qemu-img shows none: QEMU does not follow it).
      const info = JSON.parse((await platter(['info', '--output=json', path])).stdout);
      expect(info['backing-filename']).toBe(c.backingName);
      expect(info['full-backing-filename']).toBe(t.path('parent.vhd'));
      if (HAS_VHDI) expect(vhdiMediaSize(path)).toBe(SIZE);
    });
  }

  it('is read-only, and convert flattens it into an image qemu-img compares equal', async () => {
    parent('parent.vhd');
    const path = t.path('child.vhd');
    writeFileSync(path, child({ locators: [{ platform: 'W2ru', path: '.\\parent.vhd' }] }));
    const w = await platter(['resize', path, '1M']);
    expect(w.code).toBe(1);
    expect(w.stderr).toMatch(/differencing VHDs can only be opened read-only|does not support resize/);
    const out = t.path('flat.vhd');
    expect((await platter(['convert', '-O', 'vpc', '-o', 'force_size=on', path, out])).code).toBe(0);
    writeFileSync(t.path('expected.raw'), expected());
    expect(compareWithRaw(t.path('expected.raw'), out)).toContain('Images are identical');
  });
});
