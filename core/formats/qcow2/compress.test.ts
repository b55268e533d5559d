/** convert -c: compressed qcow2 clusters that qemu-img checks clean and reads back. */
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
let src: string;

beforeAll(() => {
  t = tempDir();
  src = t.path('src.raw');
  const fd = openSync(src, 'w');
  // 9 MiB + 512: text (compresses), random (does not), holes, and an odd tail.
  ftruncateSync(fd, 9 * MiB + 512);
  writeSync(fd, Buffer.from('compressible disk sector text\n'.repeat(70000)), 0, 2 * MiB, 0);
  writeSync(fd, randomBytes(MiB), 0, MiB, 3 * MiB);
  writeSync(fd, Buffer.alloc(MiB, 0x41), 0, MiB, 6 * MiB);
  writeSync(fd, Buffer.from('tail'), 0, 4, 9 * MiB + 100);
  closeSync(fd);
});
afterAll(() => t.cleanup());

describe.skipIf(!HAS_QEMU)('convert -c', () => {
  it.each([
    [512, 'zlib'],
    [4096, 'zlib'],
    [65536, 'zlib'],
    [2 * MiB, 'zlib'],
    [512, 'zstd'],
    [65536, 'zstd'],
    [2 * MiB, 'zstd'],
  ])('with %d-byte clusters and %s: check clean, contents identical, smaller', async (cs, type) => {
    const out = t.path(`c-${cs}-${type}.qcow2`);
    const r = await platter(['convert', '-c', '-O', 'qcow2', '-o', `cluster_size=${cs},compression_type=${type}`, src, out]);
    expect(r.stderr).toBe('');
    const check = JSON.parse(shStatus('qemu-img', ['check', '--output=json', out]).stdout);
    expect(check).toMatchObject({ 'check-errors': 0 });
    expect(check.corruptions ?? 0).toBe(0);
    expect(check.leaks ?? 0).toBe(0);
    expect(check['compressed-clusters']).toBeGreaterThan(0);
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', out]))['format-specific'].data['compression-type']).toBe(type);
    expect(shStatus('qemu-img', ['compare', src, out]).status).toBe(0);
    // And Platter reads its own compressed clusters back.
    expect((await platter(['compare', src, out])).code).toBe(0);
    const plain = t.path(`p-${cs}.qcow2`);
    sh('qemu-img', ['convert', '-O', 'qcow2', '-o', `cluster_size=${cs}`, src, plain]);
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', out]))['actual-size']).toBeLessThan(
      JSON.parse(sh('qemu-img', ['info', '--output=json', plain]))['actual-size'],
    );
  });

  it('map shows compressed data without host offsets, like qemu-img', async () => {
    const out = t.path('c-65536-zlib.qcow2');
    expect((await platter(['map', '--output=json', out])).stdout).toBe(sh('qemu-img', ['map', '--output=json', out]));
  });

  it('human map lists the data before the first compressed cluster, then fails, as qemu-img does', async () => {
    const p = t.path('partly-compressed.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '8M']);
    sh('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'write -P 2 2M 64k', '-c', 'write -c -P 3 4M 64k', '-c', 'write -P 4 6M 64k', p]);
    const ours = await platter(['map', p]);
    const theirs = shStatus('qemu-img', ['map', p]);
    expect(ours.stdout).toBe(theirs.stdout);
    expect(ours.stdout.trim().split('\n')).toHaveLength(3);
    expect(ours.code).toBe(theirs.status);
    expect(ours.stderr).toMatch(/compressed or encrypted data/);
  });

  it.each(['zlib', 'zstd'])('reads what qemu-img compresses with %s, and says so in info', async (type) => {
    const out = t.path(`q-${type}.qcow2`);
    sh('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type}`, src, out]);
    expect((await platter(['compare', src, out])).stdout).toBe('Images are identical.\n');
    expect((await platter(['info', '--output=json', out])).stdout).toBe(sh('qemu-img', ['info', '--output=json', out]));
  });

  it('zstd needs compat=1.1, as in qemu-img', async () => {
    const r = await platter(['create', '-f', 'qcow2', '-o', 'compat=0.10,compression_type=zstd', t.path('z.qcow2'), '1M']);
    expect(r.stderr).toBe(`platter: ${t.path('z.qcow2')}: compression_type=zstd needs compat=1.1\n`);
  });

  it('never packs compressed data into a cluster freed and reused since', async () => {
    // Found by crash.test.ts: the next compressed cluster was appended after
    // the previous one even when that host cluster had been freed and handed
    // out again as a data cluster, overwriting the data there.
    const p = t.path('tail.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '1M']);
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    const cs = 65536;
    const text = new Uint8Array(Buffer.from('compressible '.repeat(cs / 13 + 1)).subarray(0, cs));
    await (await img.compressClusters(text, 0))();
    await img.write(new Uint8Array(cs).fill(1), 0); // frees the compressed cluster's host cluster
    await img.write(new Uint8Array(cs).fill(2), cs); // takes it again, as data
    await (await img.compressClusters(text, 2 * cs))();
    await img.close();
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
    const raw = t.path('tail.raw');
    sh('qemu-img', ['convert', '-O', 'raw', p, raw]);
    const data = readFileSync(raw);
    expect(data.subarray(0, cs).every((b) => b === 1)).toBe(true);
    expect(data.subarray(cs, 2 * cs).every((b) => b === 2)).toBe(true);
    expect(data.subarray(2 * cs, 3 * cs).equals(text)).toBe(true);
  });

  it('refuses a target format that cannot compress', async () => {
    const r = await platter(['convert', '-c', '-O', 'raw', src, t.path('x.raw')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`platter: ${t.path('x.raw')}: raw images cannot store compressed data\n`);
  });
});
