import { writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileProtocol } from '../io/file.js';
import {
  flipByte,
  headerFixtures,
  luksHeader,
  parallelsHeader,
  probeInputOf,
  qcow2Header,
  qcowHeader,
  randomBytes,
  seededRandom,
  vhdDynamicFile,
} from '../test/headers.js';
import { hasTool, shStatus, tempDir } from '../test/tmp.js';
import { PROBE_HEAD_BYTES, PROBE_TAIL_BYTES } from './driver.js';
import { be32, hasMagic, le32, readProbeInput } from './probe.js';
import { DRIVERS, findDriver, probeDriver } from './registry.js';

const fixtures = headerFixtures();
const probe = (bytes: Uint8Array, filename = 'image.img') => probeDriver(probeInputOf(bytes, filename)).name;

let t: ReturnType<typeof tempDir>;
beforeEach(() => (t = tempDir('platter-probe-')));
afterEach(() => t.cleanup());

async function probeFile(path: string) {
  const proto = await FileProtocol.open(path, { readOnly: true });
  try {
    return await readProbeInput(proto);
  } finally {
    await proto.close();
  }
}

describe('probe helpers', () => {
  it('hasMagic matches at an offset and refuses bytes that stop short', () => {
    const b = Uint8Array.from([0, 0x51, 0x46, 0x49, 0xfb]);
    expect(hasMagic(b, 'QFI\xfb', 1)).toBe(true);
    expect(hasMagic(b, 'QFI\xfb', 0)).toBe(false);
    expect(hasMagic(b.subarray(0, 4), 'QFI\xfb', 1)).toBe(false);
    expect(hasMagic(new Uint8Array(0), 'x')).toBe(false);
  });

  it('be32/le32 read their byte order, respect subarray offsets, and stop at the end', () => {
    const b = Uint8Array.from([9, 0x12, 0x34, 0x56, 0x78]).subarray(1);
    expect(be32(b, 0)).toBe(0x12345678);
    expect(le32(b, 0)).toBe(0x78563412);
    expect(be32(b, 1)).toBeUndefined();
    expect(le32(new Uint8Array(0), 0)).toBeUndefined();
  });
});

describe('probeDriver on header fixtures', () => {
  it('has a fixture for every driver that can be probed (vvfat never is)', () => {
    const covered = new Set(fixtures.map((f) => f.driver));
    const missing = DRIVERS.map((d) => d.name).filter((n) => n !== 'vvfat' && !covered.has(n));
    expect(missing).toEqual([]);
  });

  for (const f of fixtures) {
    it(`recognises ${f.label} as ${f.driver}`, () => {
      expect(probe(f.bytes, f.filename)).toBe(f.driver);
    });
  }

  it('gives each fixture to exactly one driver besides raw (no ties decided by list order)', () => {
    for (const f of fixtures) {
      const input = probeInputOf(f.bytes, f.filename);
      const claims = DRIVERS.filter((d) => d.name !== 'raw' && d.probe(input) > 0).map((d) => d.name);
      expect(claims, f.label).toEqual(f.driver === 'raw' ? [] : [f.driver]);
    }
  });

  it('vvfat claims nothing: it is never probed', () => {
    const vvfat = findDriver('vvfat');
    for (const f of fixtures) expect(vvfat.probe(probeInputOf(f.bytes, f.filename)), f.label).toBe(0);
  });

  it('reads the same head and tail from a file as the in-memory fixtures use', async () => {
    for (const f of fixtures) {
      const path = t.path(f.filename);
      writeFileSync(path, f.bytes);
      const input = await probeFile(path);
      expect(input.size).toBe(f.bytes.length);
      expect(input.head).toEqual(probeInputOf(f.bytes).head);
      expect(input.tail).toEqual(probeInputOf(f.bytes).tail);
      expect(probeDriver(input).name, f.label).toBe(f.driver);
    }
  });
});

describe('one-byte changes in the magic', () => {
  for (const f of fixtures) {
    if (!f.magic) continue;
    const { offset, length } = f.magic;
    it(`${f.label}: changing any magic byte makes it raw`, () => {
      for (let i = offset; i < offset + length; i++) {
        expect(probe(flipByte(f.bytes, i), f.filename), `${f.label}, byte ${i}`).toBe('raw');
      }
    });
  }

  it('dmg without its .dmg extension and without a trailer is raw', () => {
    const f = fixtures.find((x) => x.label === 'dmg by extension')!;
    expect(probe(f.bytes, 'a.dmg')).toBe('dmg');
    expect(probe(f.bytes, 'a.dmx')).toBe('raw');
    expect(probe(f.bytes, 'dmg')).toBe('raw');
  });

  it('a whole dynamic VHD with a damaged head copy is still a VHD by its footer; damaged at both ends it is raw', () => {
    const file = vhdDynamicFile();
    expect(probe(file)).toBe('vpc');
    expect(findDriver('vpc').probe(probeInputOf(file))).toBe(100);
    const headDamaged = flipByte(file, 0);
    expect(probe(headDamaged)).toBe('vpc');
    expect(findDriver('vpc').probe(probeInputOf(headDamaged))).toBe(50);
    expect(probe(flipByte(headDamaged, file.length - 512))).toBe('raw');
  });
});

describe('versions', () => {
  it('tells qcow from qcow2 by the version after the shared magic', () => {
    expect(probe(qcowHeader(1))).toBe('qcow');
    expect(probe(qcow2Header(2))).toBe('qcow2');
    expect(probe(qcow2Header(3))).toBe('qcow2');
    // Same bytes, only the version changed: QEMU's qcow2_probe takes any version >= 2.
    const v1as2 = qcowHeader(1);
    v1as2[7] = 2;
    expect(probe(v1as2)).toBe('qcow2');
    const v3as1 = qcow2Header(3);
    v3as1[7] = 1;
    expect(probe(v3as1)).toBe('qcow');
  });

  it('refuses the qcow magic with version 0', () => {
    expect(probe(qcowHeader(0))).toBe('raw');
  });

  it('takes LUKS version 1 only (QEMU does not open LUKS2)', () => {
    expect(probe(luksHeader(1))).toBe('luks');
    expect(probe(luksHeader(2))).toBe('raw');
  });

  it('takes Parallels version 2 only', () => {
    expect(probe(parallelsHeader('WithoutFreeSpace', 2))).toBe('parallels');
    expect(probe(parallelsHeader('WithoutFreeSpace', 1))).toBe('raw');
    expect(probe(parallelsHeader('WithouFreSpacExt', 3))).toBe('raw');
  });
});

describe('short and garbage input', () => {
  it('probes 0 bytes and 1 byte as raw, in memory', () => {
    expect(() => probe(new Uint8Array(0))).not.toThrow();
    expect(probe(new Uint8Array(0))).toBe('raw');
    expect(probe(Uint8Array.of(0x51))).toBe('raw'); // 'Q', the first byte of the qcow magic
    expect(probe(Uint8Array.of(0x23), 'x.img')).toBe('raw'); // '#', the first byte of cloop's preamble
  });

  it('probes empty and 1-byte files as raw, through readProbeInput', async () => {
    writeFileSync(t.path('empty'), new Uint8Array(0));
    writeFileSync(t.path('one'), Uint8Array.of(0x4b)); // 'K', as in "KDMV"
    const empty = await probeFile(t.path('empty'));
    expect(empty.head.length).toBe(0);
    expect(empty.tail.length).toBe(0);
    expect(probeDriver(empty).name).toBe('raw');
    const one = await probeFile(t.path('one'));
    expect([...one.head]).toEqual([0x4b]);
    expect([...one.tail]).toEqual([0x4b]);
    expect(probeDriver(one).name).toBe('raw');
  });

  it('probes a file cut short inside its magic as raw', () => {
    for (const f of fixtures) {
      if (!f.magic || f.magic.offset !== 0) continue;
      for (let n = 0; n < f.magic.length; n++) {
        expect(probe(f.bytes.slice(0, n), 'x.img'), `${f.label} cut to ${n} bytes`).toBe('raw');
      }
    }
  });

  it('does not look for tail magics in files shorter than a footer', () => {
    const footerLike = fixtures.find((f) => f.label === 'dmg koly trailer')!.bytes.slice(-512);
    expect(probe(footerLike, 'x.img')).toBe('dmg');
    expect(probe(footerLike.slice(0, 511), 'x.img')).toBe('raw');
  });

  it('probes seeded random garbage as raw', () => {
    const rand = seededRandom(0x5eed);
    for (let i = 0; i < 300; i++) {
      const len = Math.floor(rand() * (PROBE_HEAD_BYTES + PROBE_TAIL_BYTES + 100));
      const bytes = randomBytes(rand, len);
      expect(probe(bytes, 'garbage.img'), `seed 0x5eed, buffer ${i}, ${len} bytes`).toBe('raw');
    }
  });
});

/**
 * qemu-img times PBKDF2 by thread CPU time before making a LUKS header; on a
 * busy virtual machine that can read as zero ("Unable to get accurate CPU
 * usage"). Only that failure is retried.
 */
function createWithRetry(args: string[]): void {
  for (let attempt = 1; ; attempt++) {
    const r = shStatus('qemu-img', args);
    if (r.status === 0) return;
    if (attempt === 3 || !r.stderr.includes('Unable to get accurate CPU usage')) {
      throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr}`);
    }
  }
}

describe('interop: images made by qemu-img', () => {
  const hasQemuImg = hasTool('qemu-img', 'apt-get install qemu-utils');

  const cases: { label: string; driver: string; args: string[] }[] = [
    { label: 'qcow2 compat=0.10', driver: 'qcow2', args: ['-f', 'qcow2', '-o', 'compat=0.10'] },
    { label: 'qcow2 compat=1.1', driver: 'qcow2', args: ['-f', 'qcow2', '-o', 'compat=1.1'] },
    { label: 'qcow', driver: 'qcow', args: ['-f', 'qcow'] },
    { label: 'qed', driver: 'qed', args: ['-f', 'qed'] },
    { label: 'vdi', driver: 'vdi', args: ['-f', 'vdi'] },
    { label: 'vmdk monolithicSparse', driver: 'vmdk', args: ['-f', 'vmdk'] },
    { label: 'vmdk monolithicFlat', driver: 'vmdk', args: ['-f', 'vmdk', '-o', 'subformat=monolithicFlat'] },
    { label: 'vmdk streamOptimized', driver: 'vmdk', args: ['-f', 'vmdk', '-o', 'subformat=streamOptimized'] },
    { label: 'vpc dynamic', driver: 'vpc', args: ['-f', 'vpc'] },
    { label: 'vpc fixed', driver: 'vpc', args: ['-f', 'vpc', '-o', 'subformat=fixed'] },
    { label: 'vhdx', driver: 'vhdx', args: ['-f', 'vhdx'] },
    { label: 'parallels', driver: 'parallels', args: ['-f', 'parallels'] },
    {
      label: 'luks',
      driver: 'luks',
      args: ['-f', 'luks', '--object', 'secret,id=sec0,data=platter', '-o', 'key-secret=sec0,iter-time=10'],
    },
    { label: 'raw', driver: 'raw', args: ['-f', 'raw'] },
  ];

  for (const c of cases) {
    it.skipIf(!hasQemuImg)(`probes qemu-img's ${c.label} as ${c.driver}`, async () => {
      const path = t.path(`img-${c.label.replace(/\W+/g, '-')}`);
      createWithRetry(['create', '-q', ...c.args, path, '1M']);
      expect(probeDriver(await probeFile(path)).name).toBe(c.driver);
    });
  }
});
