/**
 * Crash safety of VHDX metadata updates: writes that allocate blocks,
 * zeroes, a discard and a growth are recorded write by write; then the file
 * is rebuilt as it would be after a crash after each write (earlier writes
 * done, later ones lost) and judged:
 *  - qemu-img check -r all (which replays a dirty log, as QEMU must before
 *    using the image) then finds no errors;
 *  - Platter's read-only view (the log replayed in memory) equals what
 *    qemu-img reads after that repair;
 *  - every guest block reads as it was before some operation or after it:
 *    nothing flushed is lost, nothing reads as another block's data.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { openProtocol } from '../../io/open.js';
import { qemuCompare, qemuIo } from '../../test/qemu.js';
import { BlockHistory, recording, replay, type Recorded } from '../../test/recording.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import { vhdx } from './index.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const MiB = 1 << 20;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vhdx-crash-')));
afterAll(() => t?.cleanup());

describe.skipIf(!HAS_QEMU)('vhdx crash safety', () => {
  for (const sub of ['dynamic', 'fixed']) {
    it(`${sub}: a crash after any write leaves an image that repairs clean and holds old or new data`, async () => {
      const path = t.path(`crash-${sub}.vhdx`);
      sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', `subformat=${sub},block_size=1M`, path, '12M']);
      qemuIo(path, Array.from({ length: 4 }, (_, i) => `write -P ${i + 1} ${i}M 1M`), 'vhdx');
      const base = readFileSync(path);

      let blocks = 12;
      const history = new BlockHistory(16, (i) => (i < 4 ? i + 1 : 0));

      const log: Recorded[] = [];
      const proto = recording(await openProtocol(path, { readOnly: false }), log);
      const img = await vhdx.open(proto, { readOnly: false });
      const write = (block: number, at: number, data: Uint8Array) => history.write(img, block, at, data);
      const zero = (block: number, mayUnmap: boolean) => history.zero(img, block, mayUnmap);
      await write(5, 0, new Uint8Array(MiB).fill(0x21));
      await write(6, 4096, new Uint8Array(4096).fill(0x22));
      await img.flush();
      await write(1, 512, new Uint8Array(512).fill(0x23));
      await zero(2, true);
      await zero(3, false);
      await write(7, 0, new Uint8Array(MiB).fill(0x24));
      await img.flush();
      await img.discard(5 * MiB, MiB);
      history.zeroed(5);
      if (!('resize' in img)) throw new Error('vhdx images grow');
      await (img as unknown as { resize(s: number, o: object): Promise<void> }).resize(16 * MiB, { prealloc: 'off', shrink: false });
      blocks = 16;
      await write(14, 0, new Uint8Array(8192).fill(0x25));
      await img.close();
      await proto.close();

      expect(log.length).toBeGreaterThan(20);
      const crashed = t.path('crashed.vhdx');
      const repaired = t.path('repaired.vhdx');
      const view = t.path('view.raw');
      let dirty = 0;
      for (let n = 0; n <= log.length; n++) {
        const bytes = replay(base, log, n);
        writeFileSync(crashed, bytes);
        writeFileSync(repaired, bytes);
        const r = shStatus('qemu-img', ['check', '-r', 'all', repaired]);
        expect(r.status, `after ${n} writes: ${r.stdout}${r.stderr}`).toBe(0);
        const image = await openImage(crashed, { format: 'vhdx' });
        try {
          const all = new Uint8Array(image.size);
          await image.read(all, 0);
          if ((await image.layer.info()).dirty) dirty++;
          writeFileSync(view, all);
          for (let b = 0; b < Math.min(blocks, image.size / MiB); b++) {
            expect(history.refuses(b, all.subarray(b * MiB, (b + 1) * MiB)), `after ${n} writes`).toBeUndefined();
          }
        } finally {
          await image.close();
        }
        expect(qemuCompare(view, repaired), `after ${n} writes`).toBe('Images are identical.');
        // Platter's own repair (opening for writing) leaves an image QEMU can write to and finds clean.
        const reopened = await openImage(crashed, { format: 'vhdx', readOnly: false });
        await reopened.close();
        expect(qemuCompare(view, crashed), `after ${n} writes, reopened`).toBe('Images are identical.');
        qemuIo(crashed, ['write -P 9 10M 4k'], 'vhdx'); // a block never allocated: QEMU goes through its log
        expect(shStatus('qemu-img', ['check', crashed]).status, `after ${n} writes, reopened`).toBe(0);
      }
      // Some crash points fall between a log entry and its application: the log is what saves them.
      expect(dirty).toBeGreaterThan(0);
      expect(shStatus('qemu-img', ['check', path]).status).toBe(0);
    }, 240_000);
  }

  it('a flush of more BAT pages than a QEMU-readable log entry holds: a crash after each entry repairs', async () => {
    const path = t.path('many-pages.vhdx');
    // block_state_zero=off: the blocks start NOT_PRESENT, so zeroing one changes its entry.
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M,block_state_zero=off', path, '70G']);
    const base = readFileSync(path);
    const log: Recorded[] = [];
    const proto = recording(await openProtocol(path, { readOnly: false }), log);
    const img = await vhdx.open(proto, { readOnly: false });
    // Block 512p has its BAT entry in BAT page p (a 4 KiB page holds 512
    // entries, and a sector-bitmap entry comes only after 4096 blocks here).
    // Zeroing whole blocks changes their entries without growing the file.
    const pages = 130;
    for (let p = 0; p < pages; p++) await img.writeZeroes(512 * p * MiB, MiB, true);
    await img.flush();
    await img.close();
    await proto.close();

    const entries = log.flatMap((r, i) =>
      r.kind === 'write' && Buffer.from(r.data.subarray(0, 4)).toString('latin1') === 'loge' ? [i] : [],
    );
    const descriptors = entries.map((i) => {
      const r = log[i] as Extract<Recorded, { kind: 'write' }>;
      return new DataView(r.data.buffer, r.data.byteOffset).getUint32(24, true);
    });
    expect(descriptors.reduce((a, b) => a + b, 0)).toBe(pages);
    expect(Math.max(...descriptors)).toBeLessThanOrEqual(126);
    const crashed = t.path('crashed-many-pages.vhdx');
    for (const i of entries) {
      // The entry is written, nothing of it applied yet: only the log knows these pages.
      writeFileSync(crashed, replay(base, log, i + 1));
      const r = shStatus('qemu-img', ['check', '-r', 'all', crashed]);
      expect(r.status, `crash after the log entry at write ${i}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(shStatus('qemu-img', ['check', crashed]).status).toBe(0);
    }
  }, 120_000);

  it('a crash at any write while the BAT moves (growing past its region) leaves the old or the new image, clean', async () => {
    const path = t.path('crash-move.vhdx');
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', path, '8M']);
    qemuIo(path, ['write -P 7 0 3M', 'write -P 8 6M 512k'], 'vhdx');
    const base = readFileSync(path);
    const log: Recorded[] = [];
    const proto = recording(await openProtocol(path, { readOnly: false }), log);
    const img = await vhdx.open(proto, { readOnly: false });
    // 1 MiB blocks: the 1 MiB BAT region holds entries for about 128 GiB.
    await (img as unknown as { resize(s: number, o: object): Promise<void> }).resize(200 * 1024 * MiB, { prealloc: 'off', shrink: false });
    await img.close();
    await proto.close();
    const crashed = t.path('crashed-move.vhdx');
    const sizes = new Set<number>();
    for (let n = 0; n <= log.length; n++) {
      writeFileSync(crashed, replay(base, log, n));
      const r = shStatus('qemu-img', ['check', '-r', 'all', crashed]);
      expect(r.status, `after ${n} writes: ${r.stdout}${r.stderr}`).toBe(0);
      qemuIo(crashed, ['read -P 7 0 3M', 'read -P 0 3M 3M', 'read -P 8 6M 512k'], 'vhdx');
      const image = await openImage(crashed, { format: 'vhdx' });
      try {
        sizes.add(image.size);
        const head = new Uint8Array(8 * MiB);
        await image.read(head, 0);
        expect(head.subarray(0, 3 * MiB).every((b) => b === 7) && head.subarray(6 * MiB, 6 * MiB + 512 * 1024).every((b) => b === 8)).toBe(true);
      } finally {
        await image.close();
      }
    }
    expect([...sizes].sort((a, b) => a - b)).toEqual([8 * MiB, 200 * 1024 * MiB]);
  }, 120_000);
});
