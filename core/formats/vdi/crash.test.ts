/**
 * Crash safety of VDI metadata updates: a sequence of writes, discards, a
 * compaction and a growth that moves the block map is recorded write by
 * write; then the file is rebuilt as it would be after a crash after each
 * write (earlier writes done, later ones lost) and judged:
 *  - qemu-img check finds no corruption, except an allocated count above the
 *    blocks in use (QEMU allocates from that count, so above is harmless;
 *    below would make it hand out a block twice);
 *  - every guest block reads as it was before some operation or after it:
 *    nothing written and flushed is lost, nothing reads as another block's data.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { openProtocol } from '../../io/open.js';
import { qemuIo } from '../../test/qemu.js';
import { BlockHistory, recording, replay, type Recorded } from '../../test/recording.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import { vdi } from './index.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const MiB = 1 << 20;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vdi-crash-')));
afterAll(() => t?.cleanup());

describe.skipIf(!HAS_QEMU)('vdi crash safety', () => {
  it('a crash after any write leaves a consistent image holding old or new data', async () => {
    const path = t.path('crash.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', path, '16M']);
    qemuIo(path, Array.from({ length: 8 }, (_, i) => `write -P ${i + 1} ${i}M 1M`), 'vdi');
    const base = readFileSync(path);

    // The guest content after each operation: block -> allowed states.
    const blocks = 16;
    const history = new BlockHistory(blocks, (i) => (i < 8 ? i + 1 : 0));

    const log: Recorded[] = [];
    const proto = recording(await openProtocol(path, { readOnly: false }), log);
    const img = await vdi.open(proto, { readOnly: false });
    const write = (block: number, at: number, data: Uint8Array) => history.write(img, block, at, data);
    const zero = (block: number, mayUnmap: boolean) => history.zero(img, block, mayUnmap);
    await write(8, 0, new Uint8Array(MiB).fill(0x21));
    await write(9, 0, new Uint8Array(MiB).fill(0x22));
    await write(10, 0, new Uint8Array(4096).fill(0x23));
    await img.flush();
    await zero(2, true);
    await zero(3, true);
    await write(12, 0, new Uint8Array(MiB).fill(0x24));
    await zero(5, false);
    await img.flush();
    if (!('compact' in img) || !('resize' in img)) throw new Error('vdi images compact and resize');
    const c = img as unknown as { compact(o: object): Promise<unknown>; resize(s: number, o: object): Promise<void> };
    await c.compact({});
    // 600 blocks need five map sectors: the first data blocks move.
    await c.resize(600 * MiB, { prealloc: 'off', shrink: false });
    await write(1, 4096, new Uint8Array(4096).fill(0x25));
    await img.close();
    await proto.close();

    expect(log.length).toBeGreaterThan(20);
    const crashed = t.path('crashed.vdi');
    for (let n = 0; n <= log.length; n++) {
      writeFileSync(crashed, replay(base, log, n));
      const check = shStatus('qemu-img', ['check', crashed]);
      const errors = check.stderr.split('\n').filter((l) => l.startsWith('ERROR'));
      for (const e of errors) {
        const m = /^ERROR: allocated blocks mismatch, is (\d+), should be (\d+)$/.exec(e);
        expect(m, `after ${n} writes: ${e}`).not.toBeNull();
        expect(Number(m![1]), `after ${n} writes: ${e}`).toBeLessThan(Number(m![2]));
      }
      const image = await openImage(crashed, { format: 'vdi' });
      try {
        const buf = new Uint8Array(MiB);
        for (let b = 0; b < blocks; b++) {
          await image.read(buf, b * MiB);
          expect(history.refuses(b, buf), `after ${n} writes`).toBeUndefined();
        }
      } finally {
        await image.close();
      }
    }
    // And at the end, clean and as the model says.
    expect(shStatus('qemu-img', ['check', path]).status).toBe(0);
  });
});
