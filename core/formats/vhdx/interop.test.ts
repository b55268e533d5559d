/**
 * Platter's VHDX driver against qemu-img and qemu-io (7.2) and libvhdi's
 * vhdiinfo, both ways, for every subformat and option combination: what
 * Platter writes checks clean, compares equal and satisfies vhdiinfo; what
 * QEMU writes reads identically in Platter; info and check agree. (qemu-img
 * maps every VHDX byte as data at no offset, so maps are not compared.)
 * libvhdi's vhdimount reads the guest bytes Platter wrote, 4096-byte logical
 * sectors included, which qemu-img cannot read.
 */
import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { openProtocol } from '../../io/open.js';
import { platter } from '../../test/cli.js';
import { firstDifference, hasFuseTool, withFuseMount } from '../../test/fuse.js';
import { makeMixedRaw, readGuestBytes, writeAsAGuest } from '../../test/images.js';
import { prng, type Rng } from '../../test/prng.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo, qemuIo } from '../../test/qemu.js';
import { recording, replay, type Recorded } from '../../test/recording.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import { vhdiinfo } from '../../test/vhdi.js';
import { vhdx } from './index.js';

const KiB = 1024;
const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const HAS_VHDI = hasTool('vhdiinfo', 'apt-get install libvhdi-utils');
const HAS_VHDIMOUNT = hasFuseTool('vhdimount', 'apt-get install libvhdi-utils');

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vhdx-interop-')));
afterAll(() => t?.cleanup());

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

/** vhdiinfo reads the image without complaint, at its size. */
function expectVhdiReads(path: string, size: number): void {
  if (HAS_VHDI) expect(vhdiinfo(path)).toContain(`(${size} bytes)`);
}

const SIZE = 40 * MiB + 512;
const COMBOS = ['dynamic', 'fixed'].flatMap((subformat) =>
  // 256M is the largest block size VHDX allows: the whole image is one partial block.
  ['1M', '32M', '256M', '0'].flatMap((block) =>
    ['on', 'off'].flatMap((zero) =>
      ['1M', '4M'].map((log) => ({
        label: `${subformat} block_size=${block} block_state_zero=${zero} log_size=${log}`,
        opts: ['-o', `subformat=${subformat},block_size=${block},block_state_zero=${zero},log_size=${log}`],
      })),
    ),
  ),
);

describe.skipIf(!HAS_QEMU)('vhdx interop: Platter writes, QEMU and libvhdi read', () => {
  for (const combo of COMBOS) {
    it(`${combo.label}: create and random writes, zeroes and discards`, async () => {
      const path = t.path(`pw-${combo.label.replace(/\W+/g, '-')}.vhdx`);
      expect((await platter(['create', '-q', '-f', 'vhdx', ...combo.opts, path, String(SIZE)])).code).toBe(0);
      const model = new Uint8Array(SIZE);
      const rng = prng(combo.label.length * 31 + 7);
      const img = await openImage(path, { readOnly: false });
      try {
        await writeAsAGuest(img, model, rng, { count: 30, burstAt: 20 * MiB, stride: 300 * KiB });
        await img.writeZeroes(2 * MiB, 2 * MiB, true);
        model.fill(0, 2 * MiB, 4 * MiB);
        await img.writeZeroes(6 * MiB + 1024, 10000, true);
        model.fill(0, 6 * MiB + 1024, 6 * MiB + 1024 + 10000);
        await img.discard(32 * MiB, 8 * MiB + 512);
        model.fill(0, 32 * MiB);
        await img.flush();
      } finally {
        await img.close();
      }
      expect(problems(qemuCheck(path, 'vhdx'))).toEqual(CLEAN);
      const raw = path.replace(/\.vhdx$/, '.raw');
      writeFileSync(raw, model);
      expect(qemuCompare(path, raw)).toBe('Images are identical.');
      expect(sha256(await readGuestBytes(path))).toBe(sha256(model));
      expectVhdiReads(path, SIZE);
    });

    it(`${combo.label}: convert -O vhdx of a mixed raw file`, async () => {
      const raw = t.path(`conv-${combo.label.replace(/\W+/g, '-')}.raw`);
      makeMixedRaw(raw, SIZE, prng(combo.label.length));
      const out = raw.replace(/\.raw$/, '.vhdx');
      const r = await platter(['convert', '-O', 'vhdx', ...combo.opts, raw, out]);
      expect(r.stderr).toBe('');
      expect(problems(qemuCheck(out, 'vhdx'))).toEqual(CLEAN);
      expect(qemuCompare(out, raw)).toBe('Images are identical.');
      expectVhdiReads(out, SIZE);
    });

    it(`${combo.label}: qemu-io writes read identically; info and check agree`, async () => {
      const path = t.path(`qw-${combo.label.replace(/\W+/g, '-')}.vhdx`);
      sh('qemu-img', ['create', '-q', '-f', 'vhdx', ...combo.opts, path, String(SIZE)]);
      const model = new Uint8Array(SIZE);
      const rng = prng(99 + combo.label.length);
      const cmds: string[] = [];
      for (let i = 0; i < 25; i++) {
        const len = rng.int(1, 600) * 512;
        const off = rng.int(0, (SIZE - len) / 512) * 512;
        const pattern = rng.int(1, 256);
        model.fill(pattern, off, off + len);
        cmds.push(`write -P ${pattern} ${off} ${len}`);
      }
      cmds.push(`write -z ${3 * MiB} ${MiB}`);
      model.fill(0, 3 * MiB, 4 * MiB);
      qemuIo(path, cmds, 'vhdx');
      expect(sha256(await readGuestBytes(path))).toBe(sha256(model));
      const theirs = qemuInfo(path);
      const ours = JSON.parse((await platter(['info', '--output=json', path])).stdout);
      for (const key of ['virtual-size', 'format', 'cluster-size', 'dirty-flag'] as const) expect(ours[key], key).toEqual(theirs[key]);
      const check = await platter(['check', '--output=json', path]);
      expect(check.code).toBe(0);
      expect(JSON.parse(check.stdout)).toEqual(JSON.parse(shStatus('qemu-img', ['check', '--output=json', path]).stdout));
    });
  }
});

describe.skipIf(!HAS_QEMU)('vhdx interop: the rest', () => {
  it('4096-byte logical sectors (Platter\'s own create option): written, read back, and libvhdi agrees', async () => {
    const path = t.path('4k.vhdx');
    expect((await platter(['create', '-q', '-f', 'vhdx', '-o', 'logical_sector_size=4096,block_size=1M', path, '8M'])).code).toBe(0);
    const model = new Uint8Array(8 * MiB);
    const img = await openImage(path, { readOnly: false });
    try {
      const data = prng(4).bytes(3 * 4096);
      model.set(data, MiB - 4096);
      await img.write(data, MiB - 4096);
    } finally {
      await img.close();
    }
    expect(sha256(await readGuestBytes(path))).toBe(sha256(model));
    if (HAS_VHDI) expect(vhdiinfo(path)).toMatch(/Bytes per sector\s*: 4096 bytes/);
    const r = await platter(['create', '-q', '-f', 'vhdx', '-o', 'logical_sector_size=1024', t.path('bad.vhdx'), '8M']);
    expect(r.code).toBe(1);
  });

  it('a fixed image is fully allocated: written zeros, no holes (see README, Windows and sparse VHDX)', async () => {
    const path = t.path('fixed-alloc.vhdx');
    expect((await platter(['create', '-q', '-f', 'vhdx', '-o', 'subformat=fixed,block_size=1M', path, '16M'])).code).toBe(0);
    const st = statSync(path);
    expect(st.blocks * 512).toBeGreaterThanOrEqual(st.size);
    // Converting into one keeps it so, whatever the source's holes.
    const raw = t.path('fixed-alloc.raw');
    makeMixedRaw(raw, 16 * MiB, prng(3));
    const out = t.path('fixed-alloc-conv.vhdx');
    expect((await platter(['convert', '-O', 'vhdx', '-o', 'subformat=fixed,block_size=1M', raw, out])).code).toBe(0);
    const s2 = statSync(out);
    expect(s2.blocks * 512).toBeGreaterThanOrEqual(s2.size);
    expect(qemuCompare(out, raw)).toBe('Images are identical.');
  });

  it('fixed, block_state_zero=on: its blocks stay present, where qemu-img marks them ZERO (see README)', async () => {
    const opts = ['-o', 'subformat=fixed,block_size=1M,block_state_zero=on'];
    const [ours, theirs] = [t.path('fixed-zero-p.vhdx'), t.path('fixed-zero-q.vhdx')];
    expect((await platter(['create', '-q', '-f', 'vhdx', ...opts, ours, '4M'])).code).toBe(0);
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', ...opts, theirs, '4M']);
    const map = async (path: string) => JSON.parse((await platter(['map', '--output=json', path])).stdout);
    const present = { length: 4 * MiB, data: true, zero: false, offset: 8 * MiB };
    expect(await map(ours)).toEqual([expect.objectContaining(present)]);
    expect(await map(theirs)).toEqual([expect.objectContaining({ length: 4 * MiB, data: false, zero: true })]);
    expect(statSync(ours).size).toBe(statSync(theirs).size);
    // So a write to qemu-img's allocates a second block at the end; Platter's stays the size it was made.
    const before = statSync(ours).size;
    for (const path of [ours, theirs]) qemuIo(path, ['write -P 3 0 1M'], 'vhdx');
    expect([statSync(ours).size, statSync(theirs).size]).toEqual([before, before + MiB]);
    expect(problems(qemuCheck(ours, 'vhdx'))).toEqual(CLEAN);
  });

  it('create rounds and refuses as qemu-img does', async () => {
    for (const [opts, words] of [
      ['log_size=0', 'Log size must be a multiple of 1 MB'],
      ['block_size=3M', 'Block size must be a power of two'],
    ] as const) {
      const ours = await platter(['create', '-q', '-f', 'vhdx', '-o', opts, t.path('x.vhdx'), '8M']);
      const theirs = shStatus('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', opts, t.path('y.vhdx'), '8M']);
      expect(ours.code, opts).toBe(1);
      expect(theirs.status, opts).toBe(1);
      expect(ours.stderr, opts).toContain(words);
      expect(theirs.stderr, opts).toContain(words);
    }
    const big = await platter(['create', '-q', '-f', 'vhdx', t.path('big.vhdx'), String(64 * 2 ** 40 + 512)]);
    expect(big.stderr).toContain('Image size too large; max of 64TB');
    // Odd sizes and block sizes round up silently; block_size=0 picks QEMU's size.
    for (const [size, opts] of [['1000', 'block_size=1500000'], ['3G', 'block_size=0'], ['200G', 'block_size=0']] as const) {
      const a = t.path('ra.vhdx');
      const b = t.path('rb.vhdx');
      await platter(['create', '-q', '-f', 'vhdx', '-o', opts, a, size]);
      sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', opts, b, size]);
      const [qa, qb] = [qemuInfo(a), qemuInfo(b)];
      expect([qa['virtual-size'], qa['cluster-size']]).toEqual([qb['virtual-size'], qb['cluster-size']]);
    }
  });

  it('an empty disk (size 0): qemu-img opens it clean, as its own, and it grows to a disk qemu-img reads', async () => {
    for (const opts of ['subformat=dynamic', 'subformat=fixed', 'block_size=1M', 'block_size=128M']) {
      const path = t.path('empty.vhdx');
      const r = await platter(['create', '-q', '-f', 'vhdx', '-o', opts, path, '0']);
      expect(r.code, r.stderr).toBe(0);
      expect(problems(qemuCheck(path, 'vhdx')), opts).toEqual(CLEAN);
      expect(qemuInfo(path)['virtual-size'], opts).toBe(0);
      expect((await platter(['resize', path, '3M'])).code, opts).toBe(0);
      expect(problems(qemuCheck(path, 'vhdx')), opts).toEqual(CLEAN);
      expect(qemuInfo(path)['virtual-size'], opts).toBe(3 * MiB);
    }
    // With 256 MiB blocks qemu-img can make no empty disk (it would need a 2 GiB BAT): Platter's is small and its own.
    expect(shStatus('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=256M', t.path('q.vhdx'), '0']).status).toBe(1);
    const path = t.path('empty-256m.vhdx');
    expect((await platter(['create', '-q', '-f', 'vhdx', '-o', 'block_size=256M', path, '0'])).code).toBe(0);
    expect(statSync(path).size).toBeLessThan(16 * MiB);
    expect((await platter(['check', path])).code).toBe(0);
  });

  it('measure: the size Platter\'s convert makes (qemu-img cannot measure vhdx)', async () => {
    expect(shStatus('qemu-img', ['measure', '-O', 'vhdx', '--size', '10M']).stderr).toContain('does not support size measurement');
    const raw = t.path('measure.raw');
    makeMixedRaw(raw, SIZE, prng(5));
    for (const opts of [['-o', 'block_size=1M'], ['-o', 'subformat=fixed,block_size=1M']]) {
      const out = t.path('measure.vhdx');
      await platter(['convert', '-O', 'vhdx', ...opts, raw, out]);
      const m = JSON.parse((await platter(['measure', '--output=json', '-O', 'vhdx', ...opts, raw])).stdout);
      // Platter's measure counts the source's block of written zeros too, as qemu-img measure does for other formats.
      const stored = readFileSync(out).length;
      expect(m.required - stored === 0 || m.required - stored === MiB, `${m.required} vs ${stored}`).toBe(true);
    }
  });

  it('grows (which qemu-img cannot), keeping content; qemu-img reads the new size clean', async () => {
    for (const sub of ['dynamic', 'fixed']) {
      const path = t.path(`grow-${sub}.vhdx`);
      sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', `subformat=${sub},block_size=1M`, path, '5000K']);
      qemuIo(path, ['write -P 7 0 5000K'], 'vhdx');
      expect(shStatus('qemu-img', ['resize', path, '12M']).stderr).toContain('does not support resize');
      const r = await platter(['resize', path, '12M']);
      expect(r.code, r.stderr).toBe(0);
      expect(problems(qemuCheck(path, 'vhdx'))).toEqual(CLEAN);
      expect(qemuInfo(path)['virtual-size']).toBe(12 * MiB);
      const model = new Uint8Array(12 * MiB);
      model.fill(7, 0, 5000 * KiB);
      const raw = t.path(`grow-${sub}.raw`);
      writeFileSync(raw, model);
      expect(qemuCompare(path, raw), sub).toBe('Images are identical.');
      expect((await platter(['resize', path, '11M'])).code).toBe(1);
    }
  });

  it('grows past the room of its BAT region: the BAT moves to the end, and qemu-img reads it all clean', async () => {
    // 1 MiB blocks: a 1 MiB BAT region holds entries for about 128 GiB; 200 GiB needs more.
    const path = t.path('grow-far.vhdx');
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', path, '8M']);
    qemuIo(path, ['write -P 7 0 3M', 'write -P 8 6M 512k'], 'vhdx');
    const r = await platter(['resize', path, '200G']);
    expect(r.code, r.stderr).toBe(0);
    qemuIo(path, ['write -P 9 150G 2M', 'write -P 10 214748360704 4k'], 'vhdx');
    expect(problems(qemuCheck(path, 'vhdx'))).toEqual(CLEAN);
    expect(qemuInfo(path)['virtual-size']).toBe(200 * 1024 * MiB);
    // Both tools read every piece, and zeros between.
    qemuIo(path, ['read -P 7 0 3M', 'read -P 0 3M 3M', 'read -P 8 6M 512k', 'read -P 9 150G 2M', 'read -P 10 214748360704 4k'], 'vhdx');
    const img = await openImage(path);
    try {
      for (const [at, len, fill] of [[0, 3 * MiB, 7], [6 * MiB, 512 * KiB, 8], [150 * 1024 * MiB, 2 * MiB, 9], [200 * 1024 * MiB - 4096, 4096, 10], [100 * 1024 * MiB, MiB, 0]]) {
        const buf = new Uint8Array(len);
        await img.read(buf, at);
        expect(buf.every((b) => b === fill), `${len} bytes at ${at}`).toBe(true);
      }
    } finally {
      await img.close();
    }
  });

  it('check agrees with qemu-img on a truncated image', async () => {
    const path = t.path('trunc.vhdx');
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', path, '8M']);
    qemuIo(path, ['write -P 1 0 1M', 'write -P 2 4M 1M'], 'vhdx');
    const size = readFileSync(path).length;
    const fd = openSync(path, 'r+');
    ftruncateSync(fd, size - 512 * KiB);
    closeSync(fd);
    const theirs = shStatus('qemu-img', ['check', path]);
    const ours = await platter(['check', path]);
    expect(ours.code).toBe(theirs.status);
    expect(theirs.status).toBe(2);
    const line = (s: string) => s.split('\n').find((l) => l.includes('points after end of file'))?.replace(/^.*VHDX BAT/, 'VHDX BAT');
    expect(line(ours.stderr + ours.stdout)).toBe(line(theirs.stderr));
    // Opening it otherwise is refused, as by QEMU.
    expect((await platter(['info', path])).code).toBe(1);
  });

  /**
   * An image as a crash leaves it between writing a log entry and applying it:
   * a block allocated by Platter, its data written but its BAT entry only in the log.
   */
  async function dirtyLogImage(path: string): Promise<Uint8Array> {
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', path, '8M']);
    qemuIo(path, ['write -P 1 0 1M'], 'vhdx');
    const base = readFileSync(path);
    const writes: Recorded[] = [];
    const proto = recording(await openProtocol(path, { readOnly: false }), writes);
    const img = await vhdx.open(proto, { readOnly: false });
    await img.write(new Uint8Array(MiB).fill(2), 4 * MiB);
    await img.close();
    await proto.close();
    for (let n = 1; n <= writes.length; n++) {
      const bytes = replay(base, writes, n);
      writeFileSync(path, bytes);
      const image = await openImage(path, { format: 'vhdx' });
      try {
        if ((await image.layer.info()).dirty) return bytes;
      } finally {
        await image.close();
      }
    }
    throw new Error('no write left a log to replay');
  }

  it('check without -r reports a dirty log (exit 2) where qemu-img cannot open it (exit 1): see README', async () => {
    const path = t.path('dirty-plain.vhdx');
    const bytes = await dirtyLogImage(path);
    const q = shStatus('qemu-img', ['check', path]);
    expect(q.status).toBe(1);
    expect(q.stderr).toContain('contains a log that needs to be replayed');
    const p = await platter(['check', path]);
    expect(p.code).toBe(2);
    expect(p.stderr).toBe('ERROR: the VHDX log needs to be replayed; check -r all replays it\n');
    expect(p.stdout).toContain('1 errors were found on the image.');
    // Neither writes without -r.
    expect(Buffer.compare(readFileSync(path), bytes)).toBe(0);
  });

  it('check -r all prints what qemu-img check -r all prints, and exits as it does: dirty log, truncation', async () => {
    const dirty = await dirtyLogImage(t.path('dirty.vhdx'));
    const trunc = t.path('trunc-r.vhdx');
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', trunc, '8M']);
    qemuIo(trunc, ['write -P 1 0 1M', 'write -P 2 4M 1M'], 'vhdx');
    const truncated = readFileSync(trunc).subarray(0, -512 * KiB);
    for (const [name, bytes, status] of [['dirty', dirty, 0], ['truncated', truncated, 2]] as const) {
      const [ours, theirs] = [t.path(`${name}-p.vhdx`), t.path(`${name}-q.vhdx`)];
      writeFileSync(ours, bytes);
      writeFileSync(theirs, bytes);
      const q = shStatus('qemu-img', ['check', '-r', 'all', theirs]);
      const p = await platter(['check', '-r', 'all', ours]);
      expect(p.stdout, name).toBe(q.stdout);
      expect([p.code, q.status], name).toEqual([status, status]);
      // The same messages, but qemu-img puts its name before each.
      expect(p.stderr, name).toBe(q.stderr.replace(/^qemu-img: /gm, ''));
      if (name === 'dirty') {
        // The log replayed (the block it allocates reads back), the same guest contents, clean.
        expect(p.stdout).toContain('1 corruptions');
        qemuIo(ours, ['read -P 1 0 1M', 'read -P 2 4M 1M'], 'vhdx');
        expect(qemuCompare(ours, theirs)).toBe('Images are identical.');
        expect(problems(qemuCheck(ours, 'vhdx'))).toEqual(CLEAN);
      } else {
        // Neither can repair a truncation: both files are left as they were.
        expect(Buffer.compare(readFileSync(ours), bytes)).toBe(0);
        expect(Buffer.compare(readFileSync(theirs), bytes)).toBe(0);
      }
    }
  });
});

/** A write Platter makes: data, or (with `unmap` set) zeros by writeZeroes. */
interface Piece {
  at: number;
  data: Uint8Array;
  unmap?: boolean;
}

/**
 * What to write to a disk of `size` bytes in 1 MiB blocks: random data at
 * unaligned places in the first 8 MiB, a few bytes in an otherwise empty
 * block, data across two block boundaries with zeros written into it, a whole
 * block of zeros over data, a block's worth across each of `across`, and data
 * ending at the disk's last byte.
 */
function knownPieces(size: number, rng: Rng, across: number[] = []): Piece[] {
  const pieces: Piece[] = [];
  const data = (at: number, length: number) => pieces.push({ at, data: rng.bytes(length) });
  const zeros = (at: number, length: number, unmap: boolean) =>
    pieces.push({ at, data: new Uint8Array(length), unmap });
  for (let i = 0; i < 12; i++) {
    const length = rng.int(1, 300 * KiB);
    data(rng.int(0, 8 * MiB - length), length);
  }
  data(10 * MiB + 333, 5000);
  data(12 * MiB - 777, 2 * MiB + 1000);
  zeros(13 * MiB - 3000, 7000, false);
  data(15 * MiB, MiB);
  zeros(15 * MiB, MiB, true);
  for (const at of across) data(at - 777, MiB + 1000);
  data(size - 5000, 5000);
  return pieces;
}

/** The guest's bytes `from` to `to` once the pieces are written to an empty disk. */
function expectedBytes(pieces: Piece[], from: number, to: number): Uint8Array {
  const out = new Uint8Array(to - from);
  for (const p of pieces) {
    const [a, b] = [Math.max(p.at, from), Math.min(p.at + p.data.length, to)];
    if (a < b) out.set(p.data.subarray(a - p.at, b - p.at), a - from);
  }
  return out;
}

/** Creates a VHDX with Platter and writes the pieces through it. */
async function platterWrites(path: string, size: number, opts: string, pieces: (size: number) => Piece[]) {
  const r = await platter(['create', '-q', '-f', 'vhdx', '-o', opts, path, String(size)]);
  expect(r.code, r.stderr).toBe(0);
  const img = await openImage(path, { readOnly: false });
  try {
    expect(img.size).toBe(size);
    const written = pieces(size);
    for (const p of written) {
      if (p.unmap === undefined) await img.write(p.data, p.at);
      else await img.writeZeroes(p.at, p.data.length, p.unmap);
    }
    await img.flush();
    return written;
  } finally {
    await img.close();
  }
}

describe.skipIf(!HAS_VHDIMOUNT)('vhdx: libvhdi (vhdimount) reads the guest bytes Platter wrote', () => {
  // 4096-byte sectors are Platter's own option, which qemu-img cannot read: libvhdi is their only other reader.
  const CASES = [4096, 512].flatMap((lss) => ['dynamic', 'fixed'].map((subformat) => ({ lss, subformat })));
  CASES.forEach(({ lss, subformat }, n) => {
    it(`${subformat}, logical_sector_size=${lss}: every byte, Platter's and vhdimount's the same`, async () => {
      // A last block only 12 KiB long.
      const size = 24 * MiB + 12 * KiB;
      const path = t.path(`vm-${subformat}-${lss}.vhdx`);
      const opts = `subformat=${subformat},logical_sector_size=${lss},block_size=1M`;
      const pieces = await platterWrites(path, size, opts, (s) => knownPieces(s, prng(70 + n)));
      const expected = expectedBytes(pieces, 0, size);
      expect(firstDifference(await readGuestBytes(path), expected), 'Platter').toBeUndefined();
      const seen = await withFuseMount('vhdimount', path, t.path(`vm-mnt-${n}`), 'vhdi1', (f) => readFileSync(f));
      expect(firstDifference(seen, expected), 'vhdimount').toBeUndefined();
    });
  });

  // The chunk ratio, 2^23 * logical_sector_size / block_size, places the BAT's first sector bitmap entry: the
  // blocks past 2^23 sectors (32 GiB of 4096-byte sectors, 4 GiB of 512) are found only if both count it so.
  for (const lss of [4096, 512]) {
    it(`dynamic, logical_sector_size=${lss}: the blocks past the first chunk of 2^23 sectors`, async () => {
      const chunk = 2 ** 23 * lss;
      const size = chunk + 8 * MiB + 12 * KiB;
      const path = t.path(`vm-far-${lss}.vhdx`);
      const opts = `logical_sector_size=${lss},block_size=1M`;
      const pieces = await platterWrites(path, size, opts, (s) => knownPieces(s, prng(lss), [chunk]));
      const windows = [[0, 17 * MiB], [chunk - 2 * MiB, chunk + 2 * MiB], [size - 2 * MiB, size]];
      await withFuseMount('vhdimount', path, t.path(`vm-far-mnt-${lss}`), 'vhdi1', (file) => {
        expect(statSync(file).size).toBe(size);
        const fd = openSync(file, 'r');
        try {
          for (const [from, to] of windows) {
            const seen = Buffer.alloc(to - from);
            expect(readSync(fd, seen, 0, seen.length, from)).toBe(seen.length);
            expect(firstDifference(seen, expectedBytes(pieces, from, to)), `bytes ${from} to ${to}`).toBeUndefined();
          }
        } finally {
          closeSync(fd);
        }
      });
    });
  }
});
