/**
 * rebase against qemu-img rebase (7.2) on twin copies of the same chains: the
 * guest content must not change, the result must read as qemu's does, name
 * the same backing file and check clean; errors must leave the image alone.
 */
import { mkdirSync, renameSync } from 'node:fs';
import { relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileHashes, guestRaw, makeChain, twinFolder, type Folder } from '../test/chains.js';
import { platter } from '../test/cli.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo } from '../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../test/tmp.js';
import { rebase } from './rebase.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const IDENTICAL = 'Images are identical.';

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-rebase-')));
afterAll(() => t?.cleanup());

const chain = (name: string) => makeChain(t.path(name));
const twin = (p: Folder, name: string) => twinFolder(p, t.path(name));

/** How `image` names its backing file, with the full name relative to its folder (the twins live in different folders). */
function backingOf(image: string, folder: string) {
  const info = qemuInfo(image);
  const full = info['full-backing-filename'] as string | undefined;
  return {
    name: info['backing-filename'],
    format: info['backing-filename-format'],
    full: full === undefined ? undefined : relative(folder, full),
  };
}

describe.skipIf(!HAS_QEMU)('rebase (safe) matches qemu-img rebase', () => {
  const cases: [string, string, string[]][] = [
    ['onto a layer lower in the chain', 'top.qcow2', ['-b', 'base.qcow2', '-F', 'qcow2']],
    ['onto an unrelated image', 'top.qcow2', ['-b', 'other.qcow2', '-F', 'qcow2']],
    ['onto no backing file', 'top.qcow2', ['-b', '']],
    ['a compat=0.10 image with small clusters onto an unrelated image', 'mid.qcow2', ['-b', 'other.qcow2', '-F', 'qcow2']],
    ['an image without a backing file onto a shorter one', 'other.qcow2', ['-b', 'base.qcow2', '-F', 'qcow2']],
  ];
  it.each(cases)('%s', async (name, image, args) => {
    const p = chain(name.replace(/\W+/g, '-'));
    const q = twin(p, name.replace(/\W+/g, '-') + '-qemu');
    const expected = guestRaw(p(image), t.path(name.replace(/\W+/g, '-') + '.raw'));
    const others = ['base.qcow2', 'mid.qcow2', 'top.qcow2', 'other.qcow2'].filter((f) => f !== image);
    const before = fileHashes(p, others);

    const r = await platter(['rebase', ...args, p(image)]);
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(shStatus('qemu-img', ['rebase', ...args, q(image)]).status).toBe(0);

    expect(qemuCompare(p(image), expected)).toBe(IDENTICAL);
    expect(qemuCompare(p(image), q(image))).toBe(IDENTICAL);
    expect(problems(qemuCheck(p(image)))).toEqual(CLEAN);
    expect(backingOf(p(image), p(''))).toEqual(backingOf(q(image), q('')));
    // Only the rebased image was written.
    expect(fileHashes(p, others)).toEqual(before);
  });

  it('--progress=json reports up to 100%', async () => {
    const p = chain('progress');
    const r = await platter(['rebase', '--progress=json', '-b', 'base.qcow2', '-F', 'qcow2', p('top.qcow2')]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { done: number; total: number; percent: number });
    expect(lines.at(-1)).toMatchObject({ done: 4 << 20, total: 4 << 20, percent: 100 });
  });

  it('a cancelled rebase leaves the backing file name as it was', async () => {
    const p = chain('cancelled');
    const controller = new AbortController();
    controller.abort();
    await expect(rebase({ filename: p('top.qcow2'), backing: 'other.qcow2', backingFormat: 'qcow2' }, { signal: controller.signal })).rejects.toMatchObject({
      kind: 'Cancelled',
    });
    expect(qemuInfo(p('top.qcow2'))['backing-filename']).toBe('mid.qcow2');
    expect(problems(qemuCheck(p('top.qcow2')))).toEqual(CLEAN);
  });
});

describe.skipIf(!HAS_QEMU)('rebase -u (the header only) matches qemu-img rebase -u', () => {
  it('renames a backing file that was moved', async () => {
    const p = chain('renamed');
    const q = twin(p, 'renamed-qemu');
    const expected = guestRaw(p('mid.qcow2'), t.path('renamed.raw'));
    for (const f of [p, q]) renameSync(f('base.qcow2'), f('moved base.qcow2'));
    const r = await platter(['rebase', '-u', '-b', 'moved base.qcow2', '-F', 'qcow2', p('mid.qcow2')]);
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    sh('qemu-img', ['rebase', '-u', '-b', 'moved base.qcow2', '-F', 'qcow2', q('mid.qcow2')]);
    expect(qemuCompare(p('mid.qcow2'), expected)).toBe(IDENTICAL);
    expect(problems(qemuCheck(p('mid.qcow2')))).toEqual(CLEAN);
    expect(backingOf(p('mid.qcow2'), p(''))).toEqual(backingOf(q('mid.qcow2'), q('')));
  });

  it('names a backing file that does not exist (yet), without opening anything', async () => {
    const p = chain('missing-u');
    const q = twin(p, 'missing-u-qemu');
    expect((await platter(['rebase', '-u', '-b', 'later.qcow2', '-F', 'qcow2', p('top.qcow2')])).code).toBe(0);
    sh('qemu-img', ['rebase', '-u', '-b', 'later.qcow2', '-F', 'qcow2', q('top.qcow2')]);
    expect(backingOf(p('top.qcow2'), p(''))).toEqual(backingOf(q('top.qcow2'), q('')));
    expect(backingOf(p('top.qcow2'), p(''))).toEqual({ name: 'later.qcow2', format: 'qcow2', full: 'later.qcow2' });
  });

  it('without -b drops the backing file, keeping other header extensions (a bitmap)', async () => {
    const p = chain('drop-u');
    sh('qemu-img', ['bitmap', '--add', p('top.qcow2'), 'b0']);
    const q = twin(p, 'drop-u-qemu');
    expect((await platter(['rebase', '-u', p('top.qcow2')])).code).toBe(0);
    sh('qemu-img', ['rebase', '-u', q('top.qcow2')]);
    expect(backingOf(p('top.qcow2'), p(''))).toEqual({ name: undefined, format: undefined, full: undefined });
    // Everything but where the files are and how much room they take on the host.
    const described = (path: string) => ({ ...qemuInfo(path), filename: undefined, 'actual-size': undefined });
    expect(described(p('top.qcow2'))).toEqual(described(q('top.qcow2')));
    expect(JSON.stringify(qemuInfo(p('top.qcow2'))['format-specific'])).toContain('"name":"b0"');
    expect(problems(qemuCheck(p('top.qcow2')))).toEqual(CLEAN);
  });
});

describe.skipIf(!HAS_QEMU)('rebase refuses, in one line, and leaves the image alone', () => {
  const refusals: [string, (p: (f: string) => string) => string[], RegExp, number | undefined][] = [
    [
      'a new backing file that does not exist (safe mode)',
      (p) => ['-b', 'missing.qcow2', '-F', 'qcow2', p('top.qcow2')],
      /^platter: .*top\.qcow2: could not open the new backing file .*missing\.qcow2: no such file or directory\n$/,
      1,
    ],
    ['a backing file without its format', (p) => ['-b', 'base.qcow2', p('top.qcow2')], /^platter: .*top\.qcow2: a backing file needs its format too \(-F FMT\)\n$/, 1],
    ['neither -b nor -u', (p) => [p('top.qcow2')], /^platter: give the new backing file \(-b FILE, or -b "" for none\) or use unsafe mode \(-u\)\n$/, 1],
    ['a name too long for the header', (p) => ['-u', '-b', 'x'.repeat(1100), '-F', 'qcow2', p('top.qcow2')], /^platter: .*top\.qcow2: the backing file name is too long/, 1],
    // qemu-img would write the loop; no peer to compare with.
    ['a new backing file backed by the image itself', (p) => ['-b', 'top.qcow2', '-F', 'qcow2', p('base.qcow2')], /^platter: .*base\.qcow2: the new backing file top\.qcow2 is, or is backed by, the image itself\n$/, undefined],
  ];
  it.each(refusals)('%s', async (name, args, message, qemuStatus) => {
    const p = chain(name.replace(/\W+/g, '-'));
    const before = fileHashes(p, ['base.qcow2', 'mid.qcow2', 'top.qcow2', 'other.qcow2']);
    const r = await platter(['rebase', ...args(p)]);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.code).toBe(1);
    if (qemuStatus !== undefined) {
      const q = twin(p, name.replace(/\W+/g, '-') + '-qemu');
      const qa = args(q);
      expect(shStatus('qemu-img', ['rebase', ...qa]).status).toBe(qemuStatus);
    }
    expect(fileHashes(p, ['base.qcow2', 'mid.qcow2', 'top.qcow2', 'other.qcow2'])).toEqual(before);
  });

  it('a name that fits the limit but not the first cluster of a 512-byte-cluster image', async () => {
    const p = chain('small-cluster');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', '-b', 'base.qcow2', '-F', 'qcow2', p('small.qcow2'), '4M']);
    const before = fileHashes(p, ['small.qcow2']);
    const r = await platter(['rebase', '-u', '-b', 'y'.repeat(900), '-F', 'qcow2', p('small.qcow2')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^platter: .*small\.qcow2: the backing file name does not fit in the first cluster\n$/);
    expect(fileHashes(p, ['small.qcow2'])).toEqual(before);
    expect(shStatus('qemu-img', ['rebase', '-u', '-b', 'y'.repeat(900), '-F', 'qcow2', p('small.qcow2')]).status).toBe(1);
  });

  it('a new backing chain that leads outside its folder, unless --allow-external-files', async () => {
    const p = chain('external');
    mkdirSync(p('sub'));
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '../other.qcow2', '-F', 'qcow2', p('sub/new.qcow2'), '4M']);
    const expected = guestRaw(p('top.qcow2'), t.path('external.raw'));
    const refused = await platter(['rebase', '-b', 'sub/new.qcow2', '-F', 'qcow2', p('top.qcow2')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/could not open the new backing file .*outside the image's folder; pass --allow-external-files/);
    expect(qemuInfo(p('top.qcow2'))['backing-filename']).toBe('mid.qcow2');
    const allowed = await platter(['rebase', '--allow-external-files', '-b', 'sub/new.qcow2', '-F', 'qcow2', p('top.qcow2')]);
    expect(allowed.code).toBe(0);
    expect(qemuCompare(p('top.qcow2'), expected)).toBe(IDENTICAL);
    expect(problems(qemuCheck(p('top.qcow2')))).toEqual(CLEAN);
  });
});
