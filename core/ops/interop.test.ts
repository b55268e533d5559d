/**
 * Platter against qemu-img on the same files: same sizes and keys from info,
 * the same map, the same compare verdicts, identical conversions.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { platter } from '../test/cli.js';
import { hasTool, sh, shStatus, tempDir } from '../test/tmp.js';

const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir()));
afterAll(() => t?.cleanup());

/** A sparse file of `size` bytes with random data at the given [offset, length] pieces. */
function sparse(name: string, size: number, pieces: [number, number][]): string {
  const path = t.path(name);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  for (const [off, len] of pieces) writeSync(fd, randomBytes(len), 0, len, off);
  closeSync(fd);
  return path;
}

const LAYOUTS: Record<string, [number, [number, number][]]> = {
  'all holes': [10 * MiB, []],
  'data at start': [10 * MiB, [[0, 64 * 1024]]],
  'data at end': [10 * MiB, [[10 * MiB - 4096, 4096]]],
  'scattered': [32 * MiB, [[MiB, 4096], [3 * MiB + 512 * 1024, MiB], [20 * MiB, 12 * 1024], [31 * MiB, MiB]]],
  'fully allocated': [2 * MiB, [[0, 2 * MiB]]],
  'odd size': [1000, [[0, 1000]]],
  'empty': [0, []],
};

describe.skipIf(!HAS_QEMU)('interop with qemu-img', () => {
  describe.each(Object.entries(LAYOUTS))('%s', (name, [size, pieces]) => {
    const file = () => t.path(name.replace(/ /g, '-') + '.raw');
    beforeAll(() => sparse(name.replace(/ /g, '-') + '.raw', size, pieces));

    it('info --output=json equals qemu-img info', async () => {
      const ours = await platter(['info', '--output=json', file()]);
      expect(ours.code).toBe(0);
      expect(JSON.parse(ours.stdout)).toEqual(JSON.parse(sh('qemu-img', ['info', '--output=json', file()])));
    });

    it('human info equals qemu-img info', async () => {
      expect((await platter(['info', file()])).stdout).toBe(sh('qemu-img', ['info', file()]));
    });

    it('map --output=json equals qemu-img map, byte for byte', async () => {
      expect((await platter(['map', '--output=json', file()])).stdout).toBe(
        sh('qemu-img', ['map', '--output=json', '-f', 'raw', file()]),
      );
    });

    it('map of a window (--start-offset, --max-length) equals qemu-img map', async () => {
      for (const w of [['--start-offset=4096', '--max-length=400000'], ['--start-offset=1000000'], ['--start-offset=40M'], ['--max-length=1']]) {
        expect((await platter(['map', '--output=json', ...w, file()])).stdout).toBe(
          sh('qemu-img', ['map', '--output=json', '-f', 'raw', ...w, file()]),
        );
      }
    });

    it('human map equals qemu-img map', async () => {
      expect((await platter(['map', file()])).stdout).toBe(sh('qemu-img', ['map', '-f', 'raw', file()]));
    });

    it('measure equals qemu-img measure', async () => {
      for (const args of [['-O', 'raw', file()], ['--output=json', '-O', 'raw', file()]]) {
        expect((await platter(['measure', ...args])).stdout).toBe(sh('qemu-img', ['measure', '-f', 'raw', ...args]));
      }
    });

    it('convert makes an identical copy with the same holes', async () => {
      const out = file() + '.copy';
      expect((await platter(['convert', '-O', 'raw', file(), out])).code).toBe(0);
      expect(shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file(), out]).status).toBe(0);
      // The source's layout; a file of partial sectors grows to whole ones
      // like qemu-img's own copy. (qemu-img also allocates the first 4 KiB of
      // every file it creates; Platter keeps that hole.)
      const layout = (p: string) => sh('qemu-img', ['map', '--output=json', '-f', 'raw', p]).replaceAll(p, '');
      let expected = layout(file());
      if (size % 512 !== 0) {
        sh('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', file(), file() + '.qemu-copy']);
        expected = layout(file() + '.qemu-copy');
      }
      expect(layout(out)).toBe(expected);
    });

    it('hash equals sha256sum', async () => {
      const ours = (await platter(['hash', file()])).stdout;
      const padded = t.path('padded');
      // Platter hashes the guest view: the file rounded up to whole sectors.
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', file(), padded]);
      expect(ours.split(' ')[0]).toBe(sh('sha256sum', [padded]).split(' ')[0]);
    });
  });

  describe('compare gives the same verdict and exit code as qemu-img', () => {
    const pairs: [string, () => [string, string], string[]][] = [];
    beforeAll(() => {
      const data = randomBytes(64 * 1024);
      const mk = (n: string, size: number, at = MiB, bytes = data) => {
        const p = t.path(n);
        const fd = openSync(p, 'w');
        ftruncateSync(fd, size);
        writeSync(fd, bytes, 0, bytes.length, at);
        closeSync(fd);
        return p;
      };
      mk('c-a', 8 * MiB);
      mk('c-same', 8 * MiB);
      const flipped = Buffer.from(data);
      flipped[40000] ^= 1;
      mk('c-diff', 8 * MiB, MiB, flipped);
      mk('c-longer-zero', 9 * MiB);
      const longer = mk('c-longer-data', 9 * MiB);
      const fd = openSync(longer, 'r+');
      writeSync(fd, Buffer.from('tail'), 0, 4, 8 * MiB + 777);
      closeSync(fd);
      writeFileSync(t.path('c-dense'), Buffer.alloc(8 * MiB));
      const dfd = openSync(t.path('c-dense'), 'r+');
      writeSync(dfd, data, 0, data.length, MiB);
      closeSync(dfd);
    });
    const cases: [string, string, string, string[]][] = [
      ['identical', 'c-a', 'c-same', []],
      ['content differs', 'c-a', 'c-diff', []],
      ['longer with zeros', 'c-a', 'c-longer-zero', []],
      ['longer with zeros, strict', 'c-a', 'c-longer-zero', ['-s']],
      ['longer with data', 'c-a', 'c-longer-data', []],
      ['same data, holes vs zeros', 'c-a', 'c-dense', []],
      ['a missing file', 'c-a', 'c-missing', []],
    ];
    it.each(cases)('%s', async (_name, a, b, flags) => {
      const ours = await platter(['compare', ...flags, t.path(a), t.path(b)]);
      const theirs = shStatus('qemu-img', ['compare', ...flags, '-f', 'raw', '-F', 'raw', t.path(a), t.path(b)]);
      expect(ours.code).toBe(theirs.status);
      if (theirs.status !== 2) expect(ours.stdout).toBe(theirs.stdout);
    });
    void pairs;
  });

  it('convert concatenates several sources like qemu-img', async () => {
    const a = sparse('cat-a.raw', 3 * MiB, [[MiB, 4096]]);
    const b = sparse('cat-b.raw', 2 * MiB + 512, [[0, 2 * MiB + 512]]);
    expect((await platter(['convert', '-O', 'raw', a, b, t.path('cat.raw')])).code).toBe(0);
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', a, b, t.path('cat.qemu.raw')]);
    // Not -s: qemu-img also allocates the first 4 KiB of every raw file it creates.
    expect(shStatus('qemu-img', ['compare', t.path('cat.raw'), t.path('cat.qemu.raw')]).status).toBe(0);
    expect(statSync(t.path('cat.raw')).size).toBe(statSync(t.path('cat.qemu.raw')).size);
  });

  it('dd without skip copies what qemu-img dd copies', async () => {
    const src = sparse('dd-src.raw', 4 * MiB, [[0, 4 * MiB]]);
    const args = ['bs=64k', 'count=20', `if=${src}`];
    expect((await platter(['dd', '-f', 'raw', '-O', 'raw', ...args, `of=${t.path('dd.raw')}`])).code).toBe(0);
    sh('qemu-img', ['dd', '-f', 'raw', '-O', 'raw', ...args, `of=${t.path('dd.qemu.raw')}`]);
    expect(shStatus('cmp', [t.path('dd.raw'), t.path('dd.qemu.raw')]).status).toBe(0);
  });

  it('dd with skip copies count blocks after the skipped ones, as coreutils dd does', async () => {
    // qemu-img dd ends the copy at block `count` of the input instead (its
    // count includes the skipped blocks); Platter follows dd and qemu-img's manual.
    const src = t.path('dd-src.raw');
    const args = ['bs=64k', 'skip=3', 'count=20', `if=${src}`];
    expect((await platter(['dd', '-f', 'raw', '-O', 'raw', ...args, `of=${t.path('dd-skip.raw')}`])).code).toBe(0);
    sh('dd', [...args, `of=${t.path('dd-skip.coreutils.raw')}`, 'status=none']);
    expect(statSync(t.path('dd-skip.raw')).size).toBe(20 * 64 * 1024);
    expect(shStatus('cmp', [t.path('dd-skip.raw'), t.path('dd-skip.coreutils.raw')]).status).toBe(0);
    const past = await platter(['dd', 'bs=1M', 'skip=5', `if=${src}`, `of=${t.path('dd-past.raw')}`]);
    expect(past.code).toBe(1);
    expect(past.stderr).toBe(`platter: ${src}: cannot skip past the end of the input (5 blocks of 1048576 bytes)\n`);
  });

  it('create with each preallocation mode gives what qemu-img gives', async () => {
    for (const mode of ['off', 'falloc', 'full']) {
      const ours = t.path(`pre-${mode}.raw`);
      const theirs = t.path(`pre-${mode}.qemu.raw`);
      const r = await platter(['create', '-f', 'raw', '-o', `preallocation=${mode}`, ours, '3M']);
      expect(r.stdout).toBe(`Formatting '${ours}', fmt=raw size=3145728 preallocation=${mode}\n`);
      sh('qemu-img', ['create', '-f', 'raw', '-o', `preallocation=${mode}`, theirs, '3M']);
      const info = JSON.parse(sh('qemu-img', ['info', '--output=json', ours]));
      expect(info['virtual-size']).toBe(3 * MiB);
      // qemu-img also allocates the first block of a sparse file; allow that.
      expect(Math.abs(statSync(ours).blocks - statSync(theirs).blocks) * 512).toBeLessThanOrEqual(4096);
    }
  });

  it('resize grows, refuses to shrink without --shrink, and shrinks with it', async () => {
    const f = sparse('rs.raw', 4 * MiB, [[0, 4096]]);
    expect((await platter(['resize', f, '+2M'])).stdout).toBe('Image resized.\n');
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', f]))['virtual-size']).toBe(6 * MiB);
    const refused = await platter(['resize', f, '1M']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(`platter: ${f}: shrinking deletes the data past the new end; use --shrink to do it\n`);
    expect(shStatus('qemu-img', ['resize', '-f', 'raw', f, '1M']).status).toBe(1);
    expect((await platter(['resize', '--shrink', f, '-5M'])).code).toBe(0);
    expect(statSync(f).size).toBe(MiB);
    // A negative size after "--" (qemu-img takes both forms), and a size of 0, refused as qemu-img refuses it.
    expect((await platter(['resize', '--shrink', f, '--', '-512K'])).code).toBe(0);
    expect(statSync(f).size).toBe(MiB / 2);
    expect(await platter(['resize', '--shrink', f, '-512K'])).toMatchObject({ code: 1, stderr: `platter: ${f}: the new size must be positive\n` });
    expect(shStatus('qemu-img', ['resize', '-f', 'raw', '--shrink', f, '-512K']).status).toBe(1);
    expect(statSync(f).size).toBe(MiB / 2);
    expect((await platter(['resize', f, '1M'])).code).toBe(0);
    expect((await platter(['resize', '--preallocation=full', f, '3M'])).code).toBe(0);
    expect(statSync(f).blocks * 512).toBeGreaterThanOrEqual(2 * MiB);
  });

  it('a converted sparse 2 GiB file is identical and keeps its holes (disk usage within 1%)', async () => {
    const pieces: [number, number][] = [];
    for (let i = 0; i < 40; i++) pieces.push([i * 51 * MiB + 4096 * i, 256 * 1024 + i * 4096]);
    const src = sparse('big.raw', 2048 * MiB, pieces);
    const out = t.path('big.copy.raw');
    expect((await platter(['convert', '-f', 'raw', '-O', 'raw', src, out])).code).toBe(0);
    expect(shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, out]).status).toBe(0);
    const used = (p: string) => statSync(p).blocks * 512;
    expect(Math.abs(used(out) - used(src))).toBeLessThanOrEqual(used(src) * 0.01);
    expect(statSync(out).size).toBe(2048 * MiB);
  });
});
