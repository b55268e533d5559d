/**
 * check on damaged VDI images: Platter's messages, output and exit codes
 * against qemu-img check's on the very same files. The images are made by
 * qemu-img and qemu-io, then one thing in the block map or header is broken.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { platter } from '../../test/cli.js';
import { qemuIo } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const MiB = 1 << 20;
/** Where the block map and the allocated count are in qemu-img's images. */
const BMAP = 0x200;
const BLOCKS_ALLOCATED = 0x184;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vdi-check-')));
afterAll(() => t?.cleanup());

/** An 8 MiB image with guest blocks 1, 3 and 6 written (data blocks 0, 1, 2), damaged by `damage`. */
function damaged(name: string, damage: (b: Buffer) => void): string {
  const path = t.path(`${name}.vdi`);
  sh('qemu-img', ['create', '-q', '-f', 'vdi', path, '8M']);
  qemuIo(path, ['write -P 1 1M 64k', 'write -P 3 3M 64k', 'write -P 6 6M 64k'], 'vdi');
  const b = readFileSync(path);
  damage(b);
  writeFileSync(path, b);
  return path;
}

const setEntry = (b: Buffer, block: number, entry: number) => b.writeUInt32LE(entry, BMAP + block * 4);

describe.skipIf(!HAS_QEMU)('vdi check agrees with qemu-img check', () => {
  const cases: { name: string; damage: (b: Buffer) => void; status: number }[] = [
    { name: 'clean', damage: () => undefined, status: 0 },
    // Guest block 4 also points at data block 1 (guest block 3's).
    { name: 'duplicate-entry', damage: (b) => setEntry(b, 4, 1), status: 2 },
    // Guest block 0 points past the 8 blocks of the image.
    { name: 'entry-out-of-range', damage: (b) => setEntry(b, 0, 8), status: 2 },
    { name: 'entry-far-out', damage: (b) => setEntry(b, 7, 0xfffffff0), status: 2 },
    { name: 'count-too-high', damage: (b) => b.writeUInt32LE(5, BLOCKS_ALLOCATED), status: 2 },
    { name: 'count-too-low', damage: (b) => b.writeUInt32LE(1, BLOCKS_ALLOCATED), status: 2 },
    // A discarded entry is no corruption.
    { name: 'discarded-entry', damage: (b) => setEntry(b, 2, 0xfffffffe), status: 0 },
    {
      name: 'several',
      damage: (b) => {
        setEntry(b, 0, 2);
        setEntry(b, 2, 100);
        b.writeUInt32LE(9, BLOCKS_ALLOCATED);
      },
      status: 2,
    },
  ];

  for (const c of cases) {
    it(`${c.name}: same messages, report and exit code`, async () => {
      const path = damaged(c.name, c.damage);
      const theirs = shStatus('qemu-img', ['check', path]);
      const ours = await platter(['check', path]);
      expect(theirs.status).toBe(c.status);
      expect(ours.code).toBe(theirs.status);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(ours.stderr).toBe(theirs.stderr);
      const theirsJson = JSON.parse(shStatus('qemu-img', ['check', '--output=json', path]).stdout);
      const oursJson = await platter(['check', '--output=json', path]);
      expect(oursJson.code).toBe(c.status);
      expect(JSON.parse(oursJson.stdout)).toEqual(theirsJson);
    });
  }

  it('repairing is refused, as qemu-img refuses it (exit 63)', async () => {
    const path = damaged('repair', (b) => b.writeUInt32LE(5, BLOCKS_ALLOCATED));
    for (const mode of ['leaks', 'all']) {
      const theirs = shStatus('qemu-img', ['check', '-r', mode, path]);
      const ours = await platter(['check', '-r', mode, path]);
      expect(theirs.status).toBe(63);
      expect(ours.code).toBe(63);
      expect(ours.stderr).toMatch(/^platter: .*: VDI images cannot be repaired/);
    }
  });

  it('reading guest data past a bad entry fails; the rest of the image still reads', async () => {
    const path = damaged('read-bad', (b) => setEntry(b, 0, 8));
    const r = await platter(['convert', '-O', 'raw', path, t.path('read-bad.raw')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/block map entry 0 points to block 8, beyond the 8 blocks of the image/);
    const ok = await platter(['dd', 'bs=1M', 'skip=1', 'count=1', `if=${path}`, `of=${t.path('read-ok.raw')}`, '-O', 'raw']);
    expect(ok.stderr).toBe('');
    expect(readFileSync(t.path('read-ok.raw'))[0]).toBe(1);
    expect(readFileSync(t.path('read-ok.raw')).length).toBe(MiB);
  });
});
