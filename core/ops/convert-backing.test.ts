/**
 * convert into a new image with a backing file (-B FILE -F FMT, or -o
 * backing_file,backing_fmt): the target reads the rest from that file, so
 * only what each source's own layer holds is copied, zeros included; checked
 * against qemu-img convert doing the same.
 */
import { existsSync, readdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { platter } from '../test/cli.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuIo } from '../test/qemu.js';
import { hasTool, sh, tempDir } from '../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-convert-backing-')));
afterAll(() => t?.cleanup());

/** qemu-img map's extents without host offsets (each tool lays out its file its own way). */
function layout(p: string): unknown[] {
  return (JSON.parse(sh('qemu-img', ['map', '--output=json', p])) as Record<string, unknown>[]).map(({ offset: _o, ...rest }) => rest);
}

describe.skipIf(!HAS_QEMU)('convert into an image with a backing file', () => {
  /** base.raw <- mid.qcow2 <- top.qcow2, each layer with data of its own, and zeros written over data below. */
  beforeAll(() => {
    sh('qemu-img', ['create', '-q', '-f', 'raw', t.path('base.raw'), '8M']);
    qemuIo(t.path('base.raw'), ['write -P 1 0 4M'], 'raw');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', t.path('mid.qcow2')]);
    qemuIo(t.path('mid.qcow2'), ['write -P 2 3M 2M']);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', t.path('top.qcow2')]);
    qemuIo(t.path('top.qcow2'), ['write -z 0 1M', 'write -P 9 6M 1M', 'write -P 8 2M 4k', 'write -z 3M 64k']);
  });

  it.each([
    ['-B/-F', 'flags', ['-B', 'mid.qcow2', '-F', 'qcow2']],
    ['-o backing_file', 'options', ['-o', 'backing_file=mid.qcow2,backing_fmt=qcow2']],
    ['-c -B/-F (whole clusters compressed)', 'compressed', ['-c', '-B', 'mid.qcow2', '-F', 'qcow2']],
  ])('with %s: reads as the source, holds what qemu-img convert puts there', async (_name, tag, args) => {
    const mine = `mine-${tag}.qcow2`;
    const theirs = `theirs-${tag}.qcow2`;
    const r = await platter(['convert', '-O', 'qcow2', ...args, t.path('top.qcow2'), t.path(mine)]);
    expect(r.stderr).toBe('');
    sh('qemu-img', ['convert', '-O', 'qcow2', ...args, t.path('top.qcow2'), t.path(theirs)]);

    expect(qemuCompare(t.path('top.qcow2'), t.path(mine))).toBe('Images are identical.');
    expect(problems(qemuCheck(t.path(mine)))).toEqual(CLEAN);
    // The top layer's data and zeros are in the new image; the rest is left to mid.qcow2 and base.raw.
    expect(layout(t.path(mine))).toEqual(layout(t.path(theirs)));
    expect(layout(t.path(mine))).toContainEqual(expect.objectContaining({ start: 0, depth: 0, zero: true }));
  });

  it('a source without a backing file is copied whole, zeros over the new backing file included', async () => {
    sh('qemu-img', ['convert', '-O', 'raw', t.path('top.qcow2'), t.path('flat.raw')]);
    const r = await platter(['convert', '-f', 'raw', '-O', 'qcow2', '-B', 'base.raw', '-F', 'raw', t.path('flat.raw'), t.path('over-base.qcow2')]);
    expect(r.stderr).toBe('');
    sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-B', 'base.raw', '-F', 'raw', t.path('flat.raw'), t.path('over-base-qemu.qcow2')]);

    expect(qemuCompare(t.path('flat.raw'), t.path('over-base.qcow2'))).toBe('Images are identical.');
    expect(problems(qemuCheck(t.path('over-base.qcow2')))).toEqual(CLEAN);
    expect(layout(t.path('over-base.qcow2'))).toEqual(layout(t.path('over-base-qemu.qcow2')));
  });

  it.each([
    [['-O', 'qcow2', '-B', 'mid.qcow2'], 'a backing file needs its format too (-F FMT)'],
    [['-O', 'raw', '-B', 'mid.qcow2', '-F', 'qcow2'], "raw does not support option 'backing_file'"],
    [['-O', 'qcow2', '-F', 'qcow2'], 'backing_fmt needs backing_file'],
  ])('%j is refused with one line, and leaves no file', async (args, message) => {
    const before = readdirSync(t.dir).sort();
    const r = await platter(['convert', ...args, t.path('top.qcow2'), t.path('refused.img')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(existsSync(t.path('refused.img'))).toBe(false);
    expect(readdirSync(t.dir).sort()).toEqual(before);
  });
});
