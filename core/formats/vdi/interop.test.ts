/**
 * Platter's VDI driver against qemu-img and qemu-io (7.2), both ways, for
 * dynamic and static images: what Platter writes checks clean and compares
 * equal in QEMU; what QEMU writes reads identically in Platter; info, map and
 * probing agree.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { makeMixedRaw, readGuestBytes, writeAsAGuest } from '../../test/images.js';
import { prng } from '../../test/prng.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo, qemuIo } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const KiB = 1024;
const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vdi-interop-')));
afterAll(() => t?.cleanup());

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

/** The 16 bytes of the image UUID (header offset 0x188). */
const imageUuid = (path: string) => readFileSync(path).subarray(0x188, 0x198).toString('hex');

/** Where qemu-img's map says data is stored (not where in the file). */
function storedBlocks(path: string): { start: number; length: number; data: boolean }[] {
  const out: { start: number; length: number; data: boolean }[] = [];
  for (const e of JSON.parse(sh('qemu-img', ['map', '--output=json', path])) as { start: number; length: number; data: boolean }[]) {
    const last = out[out.length - 1];
    if (last && last.data === e.data) last.length += e.length;
    else out.push({ start: e.start, length: e.length, data: e.data });
  }
  return out;
}

const KINDS = [
  { label: 'dynamic', opts: [] as string[] },
  { label: 'static', opts: ['-o', 'static=on'] },
];

describe.skipIf(!HAS_QEMU)('vdi interop: Platter writes, QEMU reads', () => {
  for (const kind of KINDS) {
    it(`${kind.label}: create and random writes, zeroes and discards check clean and compare equal`, async () => {
      const path = t.path(`pw-${kind.label}.vdi`);
      const size = 12 * MiB + 512;
      expect((await platter(['create', '-q', '-f', 'vdi', ...kind.opts, path, String(size)])).code).toBe(0);
      const model = new Uint8Array(size);
      const rng = prng(kind.label.length);
      const img = await openImage(path, { readOnly: false });
      try {
        await writeAsAGuest(img, model, rng, { count: 40, burstAt: 8 * MiB, stride: 100 * KiB });
        // Whole blocks dropped, partial ranges zeroed, a discard.
        await img.writeZeroes(2 * MiB, 2 * MiB, true);
        model.fill(0, 2 * MiB, 4 * MiB);
        await img.writeZeroes(6 * MiB + 1024, 5000 * 2, true);
        model.fill(0, 6 * MiB + 1024, 6 * MiB + 1024 + 10000);
        await img.discard(7 * MiB, MiB);
        model.fill(0, 7 * MiB, 8 * MiB);
        await img.writeZeroes(12 * MiB, 512, false);
        model.fill(0, 12 * MiB, 12 * MiB + 512);
        await img.flush();
      } finally {
        await img.close();
      }
      expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
      writeFileSync(t.path(`pw-${kind.label}.raw`), model);
      expect(qemuCompare(path, t.path(`pw-${kind.label}.raw`))).toBe('Images are identical.');
      expect(sha256(await readGuestBytes(path))).toBe(sha256(model));
      const pmap = (await platter(['map', '--output=json', path])).stdout;
      expect(JSON.parse(pmap)).toEqual(JSON.parse(sh('qemu-img', ['map', '--output=json', path])));
    });

    it(`${kind.label}: convert -O vdi of a mixed raw file checks clean and compares equal`, async () => {
      const raw = t.path(`conv-${kind.label}.raw`);
      makeMixedRaw(raw, 24 * MiB, prng(7));
      const out = t.path(`conv-${kind.label}.vdi`);
      const r = await platter(['convert', '-O', 'vdi', ...kind.opts, raw, out]);
      expect(r.stderr).toBe('');
      expect(problems(qemuCheck(out, 'vdi'))).toEqual(CLEAN);
      expect(qemuCompare(out, raw)).toBe('Images are identical.');
      // The same blocks stored as by qemu-img's own conversion, so the same file size.
      const theirs = t.path(`conv-${kind.label}-qemu.vdi`);
      sh('qemu-img', ['convert', '-O', 'vdi', ...kind.opts, raw, theirs]);
      expect(storedBlocks(out)).toEqual(storedBlocks(theirs));
      expect(statSync(out).size).toBe(statSync(theirs).size);
      // measure (which qemu-img cannot do for vdi) predicts that size, counting as qemu-img measure
      // does for other formats what the source stores: its block of written zeros too.
      const m = JSON.parse((await platter(['measure', '--output=json', '-O', 'vdi', ...kind.opts, raw])).stdout);
      expect(m.required).toBe(statSync(theirs).size + (kind.label === 'dynamic' ? MiB : 0));
    });
  }

  it('every create gets fresh random image and modification UUIDs, and qemu-img reads the image', async () => {
    const a = t.path('uuid-a.vdi');
    const b = t.path('uuid-b.vdi');
    await platter(['create', '-q', '-f', 'vdi', a, '1M']);
    await platter(['create', '-q', '-f', 'vdi', b, '1M']);
    expect(imageUuid(a)).not.toBe(imageUuid(b));
    const bytes = readFileSync(a);
    expect(bytes.subarray(0x188, 0x198).equals(bytes.subarray(0x198, 0x1a8))).toBe(false);
    // Version 4, RFC 4122 variant (stored with the first three fields little-endian).
    expect(bytes[0x188 + 7] >> 4).toBe(4);
    expect(bytes[0x188 + 8] >> 6).toBe(2);
    // A converted copy is a new disk with its own UUID.
    const c = t.path('uuid-c.vdi');
    await platter(['convert', '-O', 'vdi', a, c]);
    expect(imageUuid(c)).not.toBe(imageUuid(a));
    expect(qemuInfo(a)).toMatchObject({ format: 'vdi', 'virtual-size': MiB });
  });

  it('create rounds the size up to a sector and refuses sizes past QEMU\'s limit with its words', async () => {
    const path = t.path('odd.vdi');
    await platter(['create', '-q', '-f', 'vdi', path, '1000']);
    expect(qemuInfo(path)['virtual-size']).toBe(1024);
    const big = await platter(['create', '-q', '-f', 'vdi', t.path('big.vdi'), String(0x1fffff80 * MiB + 512)]);
    const theirs = shStatus('qemu-img', ['create', '-q', '-f', 'vdi', t.path('big-q.vdi'), String(0x1fffff80 * MiB + 512)]);
    expect(big.code).toBe(1);
    expect(theirs.status).toBe(1);
    expect(big.stderr).toContain('Unsupported VDI image size (size is 0x1fffff8000200, max supported is 0x1fffff8000000)');
    expect(theirs.stderr).toContain('Unsupported VDI image size (size is 0x1fffff8000200, max supported is 0x1fffff8000000)');
  });

  it('qemu-img cannot measure vdi; Platter says what a static image takes', async () => {
    const r = shStatus('qemu-img', ['measure', '-O', 'vdi', '--size', '10M']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('does not support size measurement');
    const path = t.path('measure-static.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', '-o', 'static=on', path, '10M']);
    const m = JSON.parse((await platter(['measure', '--output=json', '-O', 'vdi', '-o', 'static=on', '--size', '10M'])).stdout);
    expect(m).toEqual({ required: statSync(path).size, 'fully-allocated': statSync(path).size });
    const empty = JSON.parse((await platter(['measure', '--output=json', '-O', 'vdi', '--size', '10M'])).stdout);
    sh('qemu-img', ['create', '-q', '-f', 'vdi', t.path('measure-dyn.vdi'), '10M']);
    expect(empty.required).toBe(statSync(t.path('measure-dyn.vdi')).size);
  });
});

describe.skipIf(!HAS_QEMU)('vdi interop: QEMU writes, Platter reads', () => {
  for (const kind of KINDS) {
    it(`${kind.label}: qemu-io writes read identically, and info, map and probing agree`, async () => {
      const path = t.path(`qw-${kind.label}.vdi`);
      const size = 16 * MiB;
      sh('qemu-img', ['create', '-q', '-f', 'vdi', ...kind.opts, path, String(size)]);
      const model = new Uint8Array(size);
      const rng = prng(99 + kind.label.length);
      const cmds: string[] = [];
      for (let i = 0; i < 25; i++) {
        const len = rng.int(1, 600) * 512;
        const off = rng.int(0, (size - len) / 512) * 512;
        const pattern = rng.int(1, 256);
        model.fill(pattern, off, off + len);
        cmds.push(`write -P ${pattern} ${off} ${len}`);
      }
      cmds.push(`write -z ${3 * MiB} ${MiB}`);
      model.fill(0, 3 * MiB, 4 * MiB);
      qemuIo(path, cmds, 'vdi');

      expect(sha256(await readGuestBytes(path))).toBe(sha256(model));
      writeFileSync(t.path(`qw-${kind.label}.raw`), model);
      expect((await platter(['compare', path, t.path(`qw-${kind.label}.raw`)])).code).toBe(0);

      const theirs = qemuInfo(path);
      const ours = JSON.parse((await platter(['info', '--output=json', path])).stdout);
      for (const key of ['virtual-size', 'format', 'cluster-size', 'format-specific'] as const) expect(ours[key], key).toEqual(theirs[key]);
      expect(ours.format).toBe('vdi');

      const qmap = sh('qemu-img', ['map', '--output=json', path]);
      const pmap = (await platter(['map', '--output=json', path])).stdout;
      expect(JSON.parse(pmap)).toEqual(JSON.parse(qmap));
      expect(problems(qemuCheck(path, 'vdi'))).toEqual(CLEAN);
      const check = await platter(['check', '--output=json', path]);
      expect(check.code).toBe(0);
      expect(JSON.parse(check.stdout)).toEqual(JSON.parse(shStatus('qemu-img', ['check', '--output=json', path]).stdout));
    });
  }

  it('a sparse image maps as qemu-img maps it, never-written and written-over blocks alike', async () => {
    const path = t.path('sparse.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', path, '64M']);
    qemuIo(path, ['write -P 1 1M 4k', 'write -P 2 40M 2M', 'write -P 3 63M 512'], 'vdi');
    const pmap = (await platter(['map', '--output=json', path])).stdout;
    expect(JSON.parse(pmap)).toEqual(JSON.parse(sh('qemu-img', ['map', '--output=json', path])));
    const human = (await platter(['map', path])).stdout;
    expect(human).toBe(sh('qemu-img', ['map', path]));
  });
});
