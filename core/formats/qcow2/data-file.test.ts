/**
 * qcow2 external data files (data_file, data_file_raw): guest data lives in
 * another file at guest offsets, without refcounts. Both ways with qemu-img.
 *
 * qemu-img 7.2 resolves a relative data file name against its working
 * directory, Platter against the image's folder (as for backing files), so
 * qemu runs in the images' folder here and both find the same file.
 */
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { prng } from '../../test/prng.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const KiB = 1024;
const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
let src: string;

/** qemu-img in the images' folder. */
const qemu = (...args: string[]) => sh('qemu-img', args, { cwd: t.dir });
const qemuIo = (img: string, cmds: string[]) => {
  const out = sh('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), img], { cwd: t.dir });
  if (/error|fail/i.test(out)) throw new Error(out);
};
const expectClean = (img: string) => expect(problems(qemuCheck(img, 'qcow2', t.dir))).toEqual(CLEAN);
const guest = (img: string) => {
  const out = t.path(`${img}.guest.raw`);
  qemu('convert', '-O', 'raw', img, out);
  return readFileSync(out);
};

beforeAll(() => {
  t = tempDir();
  src = t.path('src.raw');
  const r = prng(7);
  const content = new Uint8Array(6 * MiB);
  content.set(r.bytes(MiB), 0);
  content.set(r.bytes(300 * KiB), 2 * MiB + 5000);
  content.fill(9, 5 * MiB, 5 * MiB + 64 * KiB);
  writeFileSync(src, content);
});
afterAll(() => t?.cleanup());

describe.skipIf(!HAS_QEMU)('qcow2 external data files', () => {
  describe.each([false, true])('data_file_raw=%s', (raw) => {
    const tag = raw ? 'raw' : 'plain';

    it('convert writes an image qemu-img checks clean and reads identically, with the same info and map', async () => {
      const img = `conv-${tag}.qcow2`;
      const r = await platter(['convert', '-O', 'qcow2', '-o', `data_file=conv-${tag}.data,data_file_raw=${raw ? 'on' : 'off'}`, src, t.path(img)]);
      expect(r).toMatchObject({ code: 0, stderr: '' });
      expectClean(img);
      expect(qemu('compare', '-f', 'raw', src, img)).toBe('Images are identical.\n');
      // Guest data sits at guest offsets in the data file.
      expect(readFileSync(t.path(`conv-${tag}.data`)).equals(readFileSync(src))).toBe(true);
      expect((await platter(['info', '--output=json', t.path(img)])).stdout.replace(t.dir + '/', '')).toBe(
        qemu('info', '--output=json', img),
      );
      expect((await platter(['map', '--output=json', t.path(img)])).stdout).toBe(qemu('map', '--output=json', img));
      expect((await platter(['check', t.path(img)])).code).toBe(0);
    });

    it('reads what qemu-io wrote into a qemu-img image, and writes into it so that qemu-img agrees', async () => {
      const img = `qemu-${tag}.qcow2`;
      qemu('create', '-q', '-f', 'qcow2', '-o', `data_file=qemu-${tag}.data,data_file_raw=${raw ? 'on' : 'off'}`, img, '4M');
      qemuIo(img, ['write -P 5 64k 100k', 'write -z 1M 64k', 'write -P 6 1100k 200k', 'discard 2M 64k', 'write -P 7 3M 4k']);
      // Platter reads it as qemu does.
      const model = guest(img);
      const mine = t.path(`${img}.platter.raw`);
      expect((await platter(['convert', '-O', 'raw', t.path(img), mine])).code).toBe(0);
      expect(readFileSync(mine).equals(model)).toBe(true);
      expect((await platter(['map', '--output=json', t.path(img)])).stdout).toBe(qemu('map', '--output=json', img));

      // Platter writes: partial clusters, zeroes and discards, mirrored on a raw model.
      const r = prng(raw ? 11 : 12);
      const image = await openImage(t.path(img), { readOnly: false });
      try {
        for (let i = 0; i < 40; i++) {
          const offset = r.int(0, 4 * MiB - 200 * KiB);
          const len = r.int(1, 200 * KiB);
          const op = r.pick(['write', 'write', 'zero', 'discard'] as const);
          if (op === 'write') {
            const data = r.bytes(len);
            await image.write(data, offset);
            model.set(data, offset);
          } else if (op === 'zero') {
            await image.writeZeroes(offset, len, true);
            model.fill(0, offset, offset + len);
          } else {
            // Only whole clusters are discarded; no backing file, so they read as zeros.
            const first = Math.ceil(offset / (64 * KiB)) * 64 * KiB;
            const end = Math.floor((offset + len) / (64 * KiB)) * 64 * KiB;
            await image.discard(offset, len);
            if (end > first) model.fill(0, first, end);
          }
        }
      } finally {
        await image.close();
      }
      expectClean(img);
      expect(guest(img).equals(model)).toBe(true);
      if (raw) expect(readFileSync(t.path(`qemu-${tag}.data`)).equals(model)).toBe(true);
    });
  });

  it('preallocation=full fills the data file, not the image', async () => {
    const r = await platter(['create', '-q', '-f', 'qcow2', '-o', 'data_file=full.data,preallocation=full', t.path('full.qcow2'), '8M']);
    expect(r.code).toBe(0);
    expectClean('full.qcow2');
    const usage = (f: string) => Number(sh('du', ['-B1', t.path(f)]).split('\t')[0]);
    expect(usage('full.data')).toBeGreaterThanOrEqual(8 * MiB);
    expect(usage('full.qcow2')).toBeLessThan(MiB);
  });

  it.each([
    ['compat=0.10,data_file=x.data', 'option data_file needs compat=1.1'],
    ['data_file_raw=on', 'data_file_raw needs data_file'],
    ['data_file=x.data,data_file_raw=on,backing_file=src.raw,backing_fmt=raw', 'a backing file and data_file_raw cannot be used together'],
  ])('create -o %s is refused, as qemu-img refuses it', async (opts, message) => {
    const img = t.path('refused.qcow2');
    const r = await platter(['create', '-f', 'qcow2', '-o', opts, img, '1M']);
    expect(r.stderr).toBe(`platter: ${img}: ${message}\n`);
    expect(existsSync(img) || existsSync(t.path('x.data'))).toBe(false);
    expect(shStatus('qemu-img', ['create', '-f', 'qcow2', '-o', opts, t.path('q-refused.qcow2'), '1M']).status).toBe(1);
  });

  it.each([
    ['plain', '', ['--shrink', '1M']],
    ['plain', '', ['+16M']],
    ['plain', '', ['--preallocation=falloc', '+16M']],
    ['raw', ',data_file_raw=on', ['+16M']],
    ['raw', ',data_file_raw=on', ['--shrink', '1M']],
  ])('resize (%s data file, %j) leaves the data file and the map as qemu-img does', async (_kind, raw, args) => {
    const [flags, size] = [args.slice(0, -1), args[args.length - 1]];
    const tag = `rs-${raw ? 'raw' : 'plain'}-${args.join('').replace(/\W/g, '')}`;
    for (const who of ['ours', 'theirs']) {
      qemu('create', '-q', '-f', 'qcow2', '-o', `data_file=${tag}-${who}.data${raw}`, `${tag}-${who}.qcow2`, '32M');
      qemuIo(`${tag}-${who}.qcow2`, ['write -P 1 0 1M', 'write -P 2 31M 1M']);
    }
    expect((await platter(['resize', ...flags, t.path(`${tag}-ours.qcow2`), size])).code).toBe(0);
    qemu('resize', ...flags, `${tag}-theirs.qcow2`, size);
    const data = (who: string) => statSync(t.path(`${tag}-${who}.data`));
    // Past a shrink's end nothing stays; a grow makes the file the guest's size, preallocated as asked.
    expect(data('ours').size).toBe(data('theirs').size);
    expect(data('ours').blocks).toBe(data('theirs').blocks);
    const map = (who: string) => qemu('map', '--output=json', `${tag}-${who}.qcow2`).replaceAll(`${tag}-${who}`, 'X');
    expect(map('ours')).toBe(map('theirs'));
    expectClean(`${tag}-ours.qcow2`);
  });

  it('amend renames the data file and stops keeping it raw, refusing what qemu-img refuses', async () => {
    // Two copies of one image, one amended by each tool, each over its own data file.
    for (const who of ['ours', 'theirs']) {
      qemu('create', '-q', '-f', 'qcow2', '-o', `data_file=${who}-old.data,data_file_raw=on`, `${who}.qcow2`, '2M');
      qemuIo(`${who}.qcow2`, ['write -P 5 64k 64k']);
      renameSync(t.path(`${who}-old.data`), t.path(`${who}-new.data`));
    }
    // The old name is gone: the image cannot be opened, so amend cannot run on it (nor qemu-img's).
    expect((await platter(['amend', '-o', 'data_file=ours-new.data', t.path('ours.qcow2')])).code).toBe(1);
    for (const who of ['ours', 'theirs']) renameSync(t.path(`${who}-new.data`), t.path(`${who}-old.data`));
    const both = async (opts: (who: string) => string) => {
      const r = await platter(['amend', '-o', opts('ours'), t.path('ours.qcow2')]);
      const q = shStatus('qemu-img', ['amend', '-o', opts('theirs'), 'theirs.qcow2'], { cwd: t.dir });
      expect(r.code, opts('ours')).toBe(q.status);
      return r.code;
    };
    expect(await both((who) => `data_file=${who}-new.data,data_file_raw=off`)).toBe(0);
    for (const who of ['ours', 'theirs']) renameSync(t.path(`${who}-old.data`), t.path(`${who}-new.data`));
    expect(await both(() => 'data_file_raw=on')).toBe(1);
    // qemu-img empties the name, leaving an image it opens only with --image-opts; Platter refuses.
    expect((await platter(['amend', '-o', 'data_file=', t.path('ours.qcow2')])).stderr).toBe(
      `platter: ${t.path('ours.qcow2')}: data_file cannot be emptied: the image could not be opened without it\n`,
    );
    const info = (who: string) => qemu('info', `${who}.qcow2`).replaceAll(who, 'X').replace(/disk size: .*\n/, '');
    expect(info('ours')).toMatch(/data file: X-new\.data\n\s+data file raw: false/);
    expect(info('ours')).toBe(info('theirs'));
    expectClean('ours.qcow2');
    expect(guest('ours.qcow2').equals(guest('theirs.qcow2'))).toBe(true);
  });

  it('no internal snapshots and no compressed clusters with a data file (as in qemu)', async () => {
    const img = t.path('conv-plain.qcow2');
    const snap = await platter(['snapshot', '-c', 's1', img]);
    expect(snap.stderr).toBe(`platter: ${img}: an image with an external data file cannot have internal snapshots\n`);
    const c = await platter(['convert', '-c', '-O', 'qcow2', '-o', 'data_file=c.data', src, t.path('c.qcow2')]);
    expect(c.code).toBe(1);
    expect(existsSync(t.path('c.qcow2')) || existsSync(t.path('c.data'))).toBe(false);
  });

  it('refuses a data file outside the image folder unless allowed, and says when it is missing', async () => {
    const outside = tempDir();
    try {
      const img = t.path('outside.qcow2');
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${outside.path('d.data')}`, img, '1M']);
      const refused = await platter(['info', img]);
      expect(refused.stderr).toBe(
        `platter: ${img}: the data file ${outside.path('d.data')} is outside the image's folder; pass --allow-external-files if you trust this image\n`,
      );
      expect((await platter(['info', '--allow-external-files', img])).code).toBe(0);
      const missing = t.path('missing.qcow2');
      qemu('create', '-q', '-f', 'qcow2', '-o', 'data_file=gone.data', 'missing.qcow2', '1M');
      sh('rm', [t.path('gone.data')]);
      const r = await platter(['info', missing]);
      expect(r.stderr).toBe(`platter: ${missing}: cannot open its data file gone.data: no such file or directory\n`);
    } finally {
      outside.cleanup();
    }
  });
});
