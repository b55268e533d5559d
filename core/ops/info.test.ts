/**
 * info on images whose backing file cannot be opened: described all the
 * same (qemu-img opens only the image for info), while what needs the
 * backing file says which one it cannot open, of which image.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { platter } from '../test/cli.js';
import { hasTool, sh, tempDir } from '../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');

const t = tempDir();
const elsewhere = tempDir();
afterAll(() => {
  t.cleanup();
  elsewhere.cleanup();
});

/** A qcow2 over `backing` (not checked to exist: qemu-img's -u). */
function overlay(name: string, backing: string): string {
  const p = t.path(name);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', 'qcow2', p, '64M']);
  return p;
}

describe.skipIf(!HAS_QEMU)('info and a backing file that cannot be opened', () => {
  it.each([
    ['missing', () => 'nothere.qcow2'],
    ['outside the folder', () => elsewhere.path('base.qcow2')],
  ])('a backing file %s: info prints what qemu-img prints', async (label, backing) => {
    const base = backing();
    if (base.startsWith('/')) sh('qemu-img', ['create', '-q', '-f', 'qcow2', base, '64M']);
    const p = overlay(`${label.replace(/\W+/g, '-')}.qcow2`, base);
    for (const args of [['info'], ['info', '--output=json']]) {
      expect(await platter([...args, p]), args.join(' ')).toMatchObject({ code: 0, stdout: sh('qemu-img', [...args, p]), stderr: '' });
    }
  });

  it('what reads through it names the image and the backing file it cannot open', async () => {
    const p = overlay('gone.qcow2', 'nothere.qcow2');
    for (const args of [['info', '--backing-chain'], ['map'], ['convert', '-O', 'raw', p, t.path('out.raw')]]) {
      const r = await platter(args[0] === 'convert' ? args : [...args, p]);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toBe(`platter: ${p}: cannot open its backing file nothere.qcow2: no such file or directory\n`);
    }
  });
});
