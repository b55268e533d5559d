/**
 * Crash safety of VHD block allocation: writes that allocate blocks (the
 * footer moves to the new end, BAT entries follow on flush) are recorded
 * write by write; the file is rebuilt as it would be after a crash after
 * each one, and judged: qemu-img opens it, and every guest block reads (in
 * qemu-img and Platter alike) as it was before some operation or after it.
 * And space a crash left behind past the blocks in use (written, never
 * referenced) never shows through a new block.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { openProtocol } from '../../io/open.js';
import { qemuIo } from '../../test/qemu.js';
import { recording, replay, type Recorded } from '../../test/recording.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import { vpc } from './index.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const HAS_VHDI = hasTool('vhdiinfo', 'apt-get install libvhdi-utils');
const MiB = 1 << 20;
const BLOCK = 2 * MiB;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vpc-crash-')));
afterAll(() => t?.cleanup());

const blockKey = (b: Uint8Array) => createHash('sha1').update(b).digest('hex').slice(0, 12);

async function readBlocks(path: string, blocks: number): Promise<string[]> {
  const image = await openImage(path, { format: 'vpc' });
  try {
    const buf = new Uint8Array(BLOCK);
    const keys: string[] = [];
    for (let b = 0; b < blocks; b++) {
      await image.read(buf, b * BLOCK);
      keys.push(blockKey(buf));
    }
    return keys;
  } finally {
    await image.close();
  }
}

/** qemu-img's view of each block (through a raw copy). */
function qemuBlocks(path: string, blocks: number): string[] {
  const raw = t.path('qemu-view.raw');
  sh('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', path, raw]);
  const data = readFileSync(raw);
  return Array.from({ length: blocks }, (_, b) => blockKey(data.subarray(b * BLOCK, (b + 1) * BLOCK)));
}

describe.skipIf(!HAS_QEMU)('vpc crash safety', () => {
  it('a crash after any write leaves an image qemu-img opens, holding old or new data', async () => {
    const path = t.path('crash.vhd');
    const blocks = 8;
    sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'force_size=on', path, String(blocks * BLOCK)]);
    qemuIo(path, ['write -P 1 0 2M', 'write -P 2 4M 64k'], 'vpc');
    const base = readFileSync(path);

    // The guest content after each operation, and each block's allowed states.
    const model = new Uint8Array(blocks * BLOCK);
    model.fill(1, 0, BLOCK);
    model.fill(2, 2 * BLOCK, 2 * BLOCK + 64 * 1024);
    const blockOf = (b: number) => model.subarray(b * BLOCK, (b + 1) * BLOCK);
    const allowed: Set<string>[] = Array.from({ length: blocks }, (_, b) => new Set([blockKey(blockOf(b))]));
    const snapshot = () => allowed.forEach((set, b) => set.add(blockKey(blockOf(b))));

    const log: Recorded[] = [];
    const proto = recording(await openProtocol(path, { readOnly: false }), log);
    const img = await vpc.open(proto, { readOnly: false });
    const write = async (block: number, at: number, data: Uint8Array) => {
      await img.write(data, block * BLOCK + at);
      model.set(data, block * BLOCK + at);
      snapshot();
    };
    await write(1, 0, new Uint8Array(BLOCK).fill(0x21));
    await write(3, 4096, new Uint8Array(8192).fill(0x22));
    await img.flush();
    await write(0, 512, new Uint8Array(512).fill(0x23));
    // Two blocks in one request.
    await write(5, BLOCK - 4096, new Uint8Array(8192).fill(0x24));
    await img.writeZeroes(BLOCK, BLOCK, true);
    model.fill(0, BLOCK, 2 * BLOCK);
    snapshot();
    await img.close();
    await proto.close();

    expect(log.length).toBeGreaterThan(8);
    const crashed = t.path('crashed.vhd');
    let footers = 0;
    for (let n = 0; n <= log.length; n++) {
      writeFileSync(crashed, replay(base, log, n));
      const info = shStatus('qemu-img', ['info', '-f', 'vpc', crashed]);
      expect(info.status, `after ${n} writes: ${info.stderr}`).toBe(0);
      // Once a request's footer is out (and until the next block's bitmap), the file ends in a footer again.
      const last = log[n - 1];
      const footerLast = last?.kind === 'write' && Buffer.from(last.data.subarray(0, 8)).toString('latin1') === 'conectix';
      if (footerLast) footers++;
      if (HAS_VHDI && footerLast) expect(shStatus('vhdiinfo', [crashed]).status, `after ${n} writes`).toBe(0);
      const theirs = qemuBlocks(crashed, blocks);
      const mine = await readBlocks(crashed, blocks);
      for (let b = 0; b < blocks; b++) {
        expect(allowed[b].has(theirs[b]), `after ${n} writes, qemu-img reads block ${b} as ${theirs[b]}`).toBe(true);
        expect(mine[b], `after ${n} writes, block ${b}`).toBe(theirs[b]);
      }
    }
    // One footer per request that allocated: blocks 1, 3, and 4 with 5.
    expect(footers).toBe(3);
    // At the end: as the model says.
    expect(qemuBlocks(path, blocks)).toEqual(Array.from({ length: blocks }, (_, b) => blockKey(blockOf(b))));
  });

  it('bytes a crash left past the blocks in use never show through a new block', async () => {
    const path = t.path('stale.vhd');
    sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'force_size=on', path, String(4 * BLOCK)]);
    const file = readFileSync(path);
    const footer = file.subarray(file.length - 512);
    // A block's worth of junk where the next block goes (written, its BAT entry lost), then the footer.
    const junk = Buffer.alloc(512 + BLOCK + 512, 0xee);
    footer.copy(junk, 512 + BLOCK);
    writeFileSync(path, Buffer.concat([file.subarray(0, file.length - 512), junk]));
    expect(qemuBlocks(path, 4)).toEqual(Array(4).fill(blockKey(new Uint8Array(BLOCK))));

    const img = await openImage(path, { format: 'vpc', readOnly: false });
    await img.write(new Uint8Array(4096).fill(0x31), BLOCK + 8192);
    await img.close();
    const expected = new Uint8Array(BLOCK);
    expected.fill(0x31, 8192, 8192 + 4096);
    expect(qemuBlocks(path, 4)[1]).toBe(blockKey(expected));
    expect((await readBlocks(path, 4))[1]).toBe(blockKey(expected));
  });
});
