/**
 * commit against qemu-img commit (7.2) on twin copies of the same chains: the
 * base must end up reading as the top did, the same as qemu's base; the top
 * is emptied (or left alone with -d or -b) and every image written checks
 * clean; errors leave every file alone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileHashes, guestRaw, makeChain, twinFolder, type Folder } from '../test/chains.js';
import { platter } from '../test/cli.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo } from '../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../test/tmp.js';
import { commit } from './commit.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const IDENTICAL = 'Images are identical.';
const FILES = ['base.qcow2', 'mid.qcow2', 'top.qcow2', 'other.qcow2'];

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-commit-')));
afterAll(() => t?.cleanup());

/** A chain (see makeChain), its twin for qemu-img, and the top's guest content before anything ran. */
function setup(name: string): { p: Folder; q: Folder; expected: string } {
  const slug = name.replace(/\W+/g, '-');
  const p = makeChain(t.path(slug));
  const q = twinFolder(p, t.path(slug + '-qemu'));
  return { p, q, expected: guestRaw(p('top.qcow2'), t.path(slug + '.raw')) };
}

/** qemu-img map of `image` without host offsets: where the data comes from, not where it is stored. */
function layout(image: string) {
  const map = JSON.parse(sh('qemu-img', ['map', '--output=json', image])) as Record<string, unknown>[];
  return map.map(({ offset: _offset, ...rest }) => rest);
}

describe.skipIf(!HAS_QEMU)('commit matches qemu-img commit', () => {
  it('into the immediate backing file, then empties the top', async () => {
    const { p, q, expected } = setup('empties');
    const untouched = fileHashes(p, ['base.qcow2', 'other.qcow2']);
    expect(await platter(['commit', p('top.qcow2')])).toEqual({ code: 0, stdout: 'Image committed.\n', stderr: '' });
    expect(shStatus('qemu-img', ['commit', q('top.qcow2')]).status).toBe(0);

    expect(qemuCompare(p('mid.qcow2'), expected)).toBe(IDENTICAL);
    expect(qemuCompare(p('top.qcow2'), expected)).toBe(IDENTICAL);
    expect(qemuCompare(p('mid.qcow2'), q('mid.qcow2'))).toBe(IDENTICAL);
    // Nothing left in the top: every range reads from below, as after qemu's commit.
    expect(layout(p('top.qcow2')).filter((e) => e.depth === 0)).toEqual([]);
    expect(layout(p('top.qcow2'))).toEqual(layout(q('top.qcow2')));
    for (const f of ['mid.qcow2', 'top.qcow2']) expect(problems(qemuCheck(p(f))), f).toEqual(CLEAN);
    expect(fileHashes(p, ['base.qcow2', 'other.qcow2'])).toEqual(untouched);
  });

  it('-d leaves the top as it was', async () => {
    const { p, q, expected } = setup('keep');
    const untouched = fileHashes(p, ['base.qcow2', 'top.qcow2', 'other.qcow2']);
    expect(await platter(['commit', '-d', p('top.qcow2')])).toEqual({ code: 0, stdout: 'Image committed.\n', stderr: '' });
    sh('qemu-img', ['commit', '-d', q('top.qcow2')]);
    expect(qemuCompare(p('mid.qcow2'), expected)).toBe(IDENTICAL);
    expect(qemuCompare(p('mid.qcow2'), q('mid.qcow2'))).toBe(IDENTICAL);
    expect(problems(qemuCheck(p('mid.qcow2')))).toEqual(CLEAN);
    expect(fileHashes(p, ['base.qcow2', 'top.qcow2', 'other.qcow2'])).toEqual(untouched);
  });

  it.each([
    ['by the name the chain gives it', (_p: Folder) => 'base.qcow2'],
    ['by its path', (p: Folder) => p('base.qcow2')],
  ])('-b BASE across three layers, %s (growing the shorter base, leaving the rest)', async (how, base) => {
    const { p, q, expected } = setup(`base ${how}`);
    const untouched = fileHashes(p, ['mid.qcow2', 'top.qcow2', 'other.qcow2']);
    const r = await platter(['commit', '-q', '-b', base(p), p('top.qcow2')]);
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    sh('qemu-img', ['commit', '-q', '-b', base(q), q('top.qcow2')]);
    expect(qemuCompare(p('base.qcow2'), expected)).toBe(IDENTICAL);
    expect(qemuCompare(p('base.qcow2'), q('base.qcow2'))).toBe(IDENTICAL);
    expect(qemuInfo(p('base.qcow2'))['virtual-size']).toBe(qemuInfo(q('base.qcow2'))['virtual-size']);
    expect(problems(qemuCheck(p('base.qcow2')))).toEqual(CLEAN);
    expect(fileHashes(p, ['mid.qcow2', 'top.qcow2', 'other.qcow2'])).toEqual(untouched);
  });

  it('--progress=json reports progress before the message (and -r is accepted)', async () => {
    const { p, expected } = setup('progress');
    const r = await platter(['commit', '--progress=json', '-r', '64M', '-d', p('top.qcow2')]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.at(-1)).toBe('Image committed.');
    expect(JSON.parse(lines.at(-2)!)).toMatchObject({ percent: 100 });
    expect(qemuCompare(p('mid.qcow2'), expected)).toBe(IDENTICAL);
  });

  it('a cancelled commit leaves the top as it was', async () => {
    const { p } = setup('cancelled');
    const before = fileHashes(p, ['top.qcow2']);
    const controller = new AbortController();
    controller.abort();
    await expect(commit({ filename: p('top.qcow2') }, { signal: controller.signal })).rejects.toMatchObject({ kind: 'Cancelled' });
    expect(fileHashes(p, ['top.qcow2'])).toEqual(before);
    expect(problems(qemuCheck(p('mid.qcow2')))).toEqual(CLEAN);
  });
});

describe.skipIf(!HAS_QEMU)('commit refuses, in one line, as qemu-img does, and leaves every file alone', () => {
  const refusals: [string, (p: Folder) => string[], RegExp][] = [
    ['an image without a backing file', (p) => [p('base.qcow2')], /^platter: .*base\.qcow2: the image has no backing file\n$/],
    ['a base that is not in the chain', (p) => ['-b', p('other.qcow2'), p('top.qcow2')], /^platter: .*top\.qcow2: did not find '.*other\.qcow2' in its backing chain\n$/],
    ['the top as its own base', (p) => ['-b', p('top.qcow2'), p('top.qcow2')], /^platter: .*top\.qcow2: did not find '.*top\.qcow2' in its backing chain\n$/],
    ['an invalid rate limit', (p) => ['-r', 'fast', p('top.qcow2')], /^platter: .*rate limit.*\n$/],
  ];
  it.each(refusals)('%s', async (name, args, message) => {
    const { p, q } = setup(`refuse ${name}`);
    const before = fileHashes(p, FILES);
    const r = await platter(['commit', ...args(p)]);
    expect(r.stderr).toMatch(message);
    expect(r.code).toBe(1);
    expect(shStatus('qemu-img', ['commit', ...args(q)]).status).toBe(1);
    expect(fileHashes(p, FILES)).toEqual(before);
  });
});
