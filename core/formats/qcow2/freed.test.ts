/**
 * Clusters an image stops using go back to the file system (holes punched),
 * as QEMU gives them back when a snapshot is deleted, a commit empties an
 * image or the guest discards; and never while a table in the file still
 * maps them, nor once they have been handed out again.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { openProtocol } from '../../io/open.js';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuIo } from '../../test/qemu.js';
import { BlockHistory, recording, replay, type Recorded } from '../../test/recording.js';
import { hasTool, sh, tempDir } from '../../test/tmp.js';
import { MAX_FREED_RUNS } from './freed-clusters.js';
import type { Qcow2Image } from './image.js';
import { qcow2 } from './index.js';

const KiB = 1024;
const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-qcow2-freed-')));
afterAll(() => t?.cleanup());

/** Bytes the file takes on disk. */
const onDisk = (p: string) => statSync(p).blocks * 512;

const clean = (p: string) => {
  const c = qemuCheck(p);
  expect(problems(c), c.text).toEqual(CLEAN);
};

/** The host offset qemu-img maps guest offset `at` to, if any. */
function hostOffset(p: string, at: number): number | undefined {
  const extents = JSON.parse(sh('qemu-img', ['map', '--output=json', p])) as { start: number; length: number; offset?: number; data: boolean }[];
  const e = extents.find((x) => x.start <= at && at < x.start + x.length);
  return e?.data && e.offset !== undefined ? e.offset + (at - e.start) : undefined;
}

describe.skipIf(!HAS_QEMU)('qcow2: freed clusters go back to the file system', () => {
  it('snapshot -d gives back what qemu-img snapshot -d gives back', async () => {
    const p = t.path('snap.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '64M']);
    qemuIo(p, ['write -P 1 0 16M']);
    sh('qemu-img', ['snapshot', '-c', 's', p]);
    qemuIo(p, ['write -P 2 0 16M']);
    const q = t.path('snap-qemu.qcow2');
    copyFileSync(p, q);
    const before = onDisk(p);

    const r = await platter(['snapshot', '-d', 's', p]);
    expect(r.stderr).toBe('');
    sh('qemu-img', ['snapshot', '-d', 's', q]);

    clean(p);
    expect(qemuCompare(p, q)).toBe('Images are identical.');
    // The snapshot alone held 16 MiB of data.
    expect(before - onDisk(p)).toBeGreaterThanOrEqual(16 * MiB);
    expect(onDisk(p)).toBeLessThanOrEqual(onDisk(q) + 256 * KiB);
  });

  it('commit leaves the emptied image as small on disk as qemu-img commit does', async () => {
    const make = (name: string) => {
      const base = t.path(`${name}-base.raw`);
      const top = t.path(`${name}-top.qcow2`);
      sh('qemu-img', ['create', '-q', '-f', 'raw', base, '32M']);
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', top]);
      qemuIo(top, ['write -P 7 1M 12M', 'write -c -P 8 20M 1M']);
      return { base, top };
    };
    const mine = make('platter');
    const theirs = make('qemu');
    const before = onDisk(mine.top);

    const r = await platter(['commit', mine.top]);
    expect(r.stderr).toBe('');
    sh('qemu-img', ['commit', theirs.top]);

    clean(mine.top);
    expect(readFileSync(mine.base).equals(readFileSync(theirs.base))).toBe(true);
    expect(before - onDisk(mine.top)).toBeGreaterThanOrEqual(12 * MiB);
    expect(onDisk(mine.top)).toBeLessThanOrEqual(onDisk(theirs.top) + 256 * KiB);
  });

  it('commit gives back the space of an external data file, as qemu-img commit does', async () => {
    const make = (name: string) => {
      const base = t.path(`${name}-db.raw`);
      const top = t.path(`${name}-dt.qcow2`);
      sh('qemu-img', ['create', '-q', '-f', 'raw', base, '32M']);
      // In the images' folder: qemu-img and qemu-io find a relative data file in their working folder.
      const cwd = t.dir;
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${name}-data.raw`, '-b', base, '-F', 'raw', top, '32M'], { cwd });
      sh('qemu-io', ['-c', 'write -P 6 0 8M', top], { cwd });
      return { base, top, data: t.path(`${name}-data.raw`) };
    };
    const mine = make('platter');
    const theirs = make('qemu');

    const r = await platter(['commit', mine.top]);
    expect(r.stderr).toBe('');
    sh('qemu-img', ['commit', theirs.top], { cwd: t.dir });

    expect(sh('qemu-img', ['check', mine.top], { cwd: t.dir })).toMatch(/^No errors were found on the image\./);
    expect(readFileSync(mine.base).equals(readFileSync(theirs.base))).toBe(true);
    expect(onDisk(mine.data)).toBeLessThanOrEqual(onDisk(theirs.data) + 64 * KiB);
  });

  it('a discard gives its clusters back; clusters still in a snapshot stay', async () => {
    const p = t.path('discard.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '32M']);
    qemuIo(p, ['write -P 3 0 8M']);
    sh('qemu-img', ['snapshot', '-c', 's', p]);
    qemuIo(p, ['write -P 4 8M 8M']);
    const before = onDisk(p);

    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    await img.discard(0, 16 * MiB);
    await img.close();

    clean(p);
    // Only the clusters written after the snapshot were the active view's alone.
    expect(before - onDisk(p)).toBeGreaterThanOrEqual(8 * MiB);
    expect(before - onDisk(p)).toBeLessThan(9 * MiB);
    const kept = t.path('kept.raw');
    sh('qemu-img', ['convert', '-l', 'snapshot.name=s', '-O', 'raw', p, kept]);
    expect(readFileSync(kept).subarray(0, 8 * MiB).every((b) => b === 3)).toBe(true);
  });

  /**
   * 512-byte clusters written evens first, then odds: in guest order, no two
   * freed clusters are neighbours in the file.
   */
  function scatteredImage(name: string): { p: string; n: number } {
    const p = t.path(name);
    const n = MAX_FREED_RUNS + 2000;
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', p, String(n * 512)]);
    const order = [...Array.from({ length: n / 2 }, (_, i) => 2 * i), ...Array.from({ length: n / 2 }, (_, i) => 2 * i + 1)];
    const script = order.map((c) => `write -P 5 ${c * 512} 512`).join('\n');
    const written = spawnSync('qemu-io', ['-t', 'unsafe', p], { input: script, stdio: ['pipe', 'ignore', 'pipe'], encoding: 'utf8' });
    expect(written.stderr).toBe('');
    expect(written.status).toBe(0);
    return { p, n };
  }

  it('one discard freeing clusters all over the file gives them back as it goes', async () => {
    const { p, n } = scatteredImage('scattered.qcow2');
    const before = onDisk(p);
    const log: Recorded[] = [];
    const proto = recording(await openProtocol(p, { readOnly: false }), log);
    const img = await qcow2.open(proto, { readOnly: false });
    await img.discard(0, n * 512);
    const duringDiscard = log.slice();
    await img.close();
    await proto.close();

    // Punched while the discard still went on: before some of its table and count writes.
    const firstPunch = duringDiscard.findIndex((r) => r.kind === 'discard');
    expect(firstPunch).toBeGreaterThan(0);
    expect(duringDiscard.slice(firstPunch).some((r) => r.kind === 'write')).toBe(true);
    clean(p);
    // Punched in file order, neighbours together: whole file-system blocks come back.
    expect(before - onDisk(p)).toBeGreaterThanOrEqual((n * 512) / 2);
  });

  it('many small discards with no flush between them are given back as they go', async () => {
    const { p, n } = scatteredImage('small-discards.qcow2');
    const log: Recorded[] = [];
    const proto = recording(await openProtocol(p, { readOnly: false }), log);
    const img = await qcow2.open(proto, { readOnly: false });
    // Last first: each frees a cluster right before one freed earlier, never after it.
    for (let c = n - 1; c >= 0; c--) await img.discard(c * 512, 512);
    const punchedBeforeClose = log.some((r) => r.kind === 'discard');
    await img.close();
    await proto.close();

    expect(punchedBeforeClose).toBe(true);
    clean(p);
  });

  it('punches only clusters nothing in the file maps any more, and none handed out again', async () => {
    // Blocks 0-3 compressed, 4-7 plain data; 8-11 never written.
    const path = t.path('order.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', path, '12M']);
    qemuIo(path, Array.from({ length: 8 }, (_, i) => `write ${i < 4 ? '-c ' : ''}-P ${i + 1} ${i}M 1M`));
    const base = readFileSync(path);

    const blocks = 12;
    const history = new BlockHistory(blocks, (i) => (i < 8 ? i + 1 : 0));
    const expected = Array.from({ length: blocks }, (_, i) => (i < 8 ? i + 1 : 0));
    const log: Recorded[] = [];
    const flushes: number[] = [];
    const proto = recording(await openProtocol(path, { readOnly: false }), log, flushes);
    const img = (await qcow2.open(proto, { readOnly: false })) as Qcow2Image;
    const fill = async (block: number, byte: number) => {
      await history.write(img, block, 0, new Uint8Array(MiB).fill(byte));
      expected[block] = byte;
    };
    const discard = async (block: number) => {
      await img.discard(block * MiB, MiB);
      history.zeroed(block);
      expected[block] = 0;
    };

    // Every compressed piece rewritten: their host clusters are freed.
    for (let b = 0; b < 4; b++) await fill(b, 0x10 + b);
    await discard(4);
    // Before any flush: new data takes clusters freed just now.
    await fill(8, 0x20);
    await img.createSnapshot('s');
    await fill(5, 0x21);
    // The snapshot's copy of block 5 is freed with it.
    await img.deleteSnapshot('s');
    await discard(6);
    await img.flush();
    await fill(9, 0x22);
    await img.close();
    await proto.close();

    // Every cluster of the file was in use before: block 8 lies in freed ones.
    expect(hostOffset(path, 8 * MiB), 'block 8 takes clusters freed before the flush').toBeLessThan(base.length);
    const final = readFileSync(guestRaw(path));
    for (let b = 0; b < blocks; b++) expect(final.subarray(b * MiB, (b + 1) * MiB).every((x) => x === expected[b]), `block ${b}`).toBe(true);
    clean(path);

    const discards = log.flatMap((r, i) => (r.kind === 'discard' ? [i] : []));
    // Blocks 4, 5 (the snapshot's copy) and 6, and the compressed clusters.
    const punched = discards.reduce((n, i) => n + (log[i] as Extract<Recorded, { kind: 'discard' }>).length, 0);
    expect(punched).toBeGreaterThanOrEqual(2 * MiB);
    const crashed = t.path('crashed.qcow2');
    for (const i of discards) {
      // Nothing written between the flush before a punch and the punch.
      const flushed = Math.max(...flushes.filter((f) => f <= i));
      expect(log.slice(flushed, i).every((r) => r.kind === 'discard'), `writes between the flush at ${flushed} and the punch at ${i}`).toBe(true);
      // A crash right after it: consistent, and every block reads as it did at some point.
      writeFileSync(crashed, replay(base, log, i + 1));
      const c = qemuCheck(crashed);
      expect(c.corruptions, `after punch ${i}: ${c.text}`).toBe(0);
      const guest = readFileSync(guestRaw(crashed));
      for (let b = 0; b < blocks; b++) {
        expect(history.refuses(b, guest.subarray(b * MiB, (b + 1) * MiB)), `after punch ${i}`).toBeUndefined();
      }
    }
  });
});

/** The guest content of `p` as qemu-img exports it (reading every compressed cluster). */
function guestRaw(p: string): string {
  const out = `${p}.${Math.random().toString(36).slice(2)}.raw`;
  sh('qemu-img', ['convert', '-O', 'raw', p, out]);
  return out;
}
