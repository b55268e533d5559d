/**
 * The metadata log. A dirty log, constructed here or left by a qemu-io
 * killed mid-write, reads in Platter (read-only) as qemu-img shows the image
 * after `qemu-img check -r all`, and the file is not changed; opened for
 * writing (check -r all), Platter replays it as QEMU does.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck, qemuCompare } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import { setVhdxChecksum } from './crc32c.js';
import { buildEntry, findActiveSequence } from './log.js';

const KiB = 1024;
const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vhdx-log-')));
afterAll(() => t?.cleanup());

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

async function platterRead(path: string): Promise<{ data: Uint8Array; dirty: boolean | undefined }> {
  const img = await openImage(path);
  try {
    const data = new Uint8Array(img.size);
    await img.read(data, 0);
    return { data, dirty: (await img.layer.info()).dirty };
  } finally {
    await img.close();
  }
}

/**
 * A 4 MiB image (1 MiB blocks; log at 1 MiB, BAT at 2 MiB) with block 0 of
 * 0x11s, then a dirty log whose one entry points block 1 at a new block of
 * 0x77s appended to the file, and zeroes the 4 KiB sector holding the
 * data write... of nothing else: the BAT page is all it carries, as QEMU's.
 */
async function constructed(path: string): Promise<void> {
  expect((await platter(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', path, '4M'])).code).toBe(0);
  const img = await openImage(path, { readOnly: false });
  await img.write(new Uint8Array(MiB).fill(0x11), 0);
  await img.close();
  const before = new Uint8Array(readFileSync(path));
  const blockAt = before.length;
  const b = new Uint8Array(blockAt + MiB);
  b.set(before);
  b.fill(0x77, blockAt);
  const page = b.slice(2 * MiB, 2 * MiB + 4 * KiB);
  new DataView(page.buffer).setBigUint64(8, BigInt(blockAt) | 6n, true);
  const guid = new Uint8Array(16).fill(0xa5);
  const entry = buildEntry({ sequence: 9n, logGuid: guid, tail: 0, fileSize: b.length, writes: [{ fileOffset: 2 * MiB, data: page }] });
  b.set(entry, MiB);
  for (const h of [64 * KiB, 128 * KiB]) {
    b.set(guid, h + 48);
    setVhdxChecksum(b.subarray(h, h + 4 * KiB), 4);
  }
  writeFileSync(path, b);
}

describe('log parsing', () => {
  it('finds the sequence with the highest number, across the wrap', () => {
    const guid = new Uint8Array(16).fill(1);
    const log = new Uint8Array(MiB);
    const entry = (seq: bigint) => buildEntry({ sequence: seq, logGuid: guid, tail: 0, fileSize: 0, writes: [{ fileOffset: 0, data: new Uint8Array(4 * KiB).fill(Number(seq)) }] });
    // An old sequence 3, 4 at the start; the active one 7, 8 wraps from the end to the start.
    const e7 = entry(7n);
    log.set(entry(3n), 0);
    log.set(entry(4n), 8 * KiB);
    log.set(e7, MiB - 8 * KiB);
    const e8 = entry(8n);
    expect(findActiveSequence(log, guid).map((e) => e.sequence)).toEqual([7n]);
    // 8 follows 7 only where 7 ends (the start of the log): there it is now.
    log.set(e8, 0);
    expect(findActiveSequence(log, guid).map((e) => e.sequence)).toEqual([7n, 8n]);
    // Entries of another log GUID are not entries.
    expect(findActiveSequence(log, new Uint8Array(16).fill(2))).toEqual([]);
  });
});

describe.skipIf(!HAS_QEMU)('a dirty log', () => {
  it('constructed: read-only reads the replayed content, file unchanged; equal to qemu-img after check -r all', async () => {
    const path = t.path('built.vhdx');
    await constructed(path);
    const before = sha(path);
    const { data, dirty } = await platterRead(path);
    expect(dirty).toBe(true);
    expect(sha(path)).toBe(before);
    expect(data[0]).toBe(0x11);
    expect(data[MiB]).toBe(0x77);
    expect(data[2 * MiB]).toBe(0);
    // qemu-img will not open it read-only; after its repair the content is Platter's.
    expect(shStatus('qemu-img', ['info', path]).stderr).toMatch(/contains a log that needs to be replayed/);
    const byQemu = t.path('built-qemu.vhdx');
    copyFileSync(path, byQemu);
    sh('qemu-img', ['check', '-r', 'all', byQemu]);
    const raw = t.path('built.raw');
    writeFileSync(raw, data);
    expect(qemuCompare(raw, byQemu)).toBe('Images are identical.');
    // The command line sees the same: convert copies the replayed content, info calls the image dirty.
    const converted = t.path('built-converted.raw');
    expect((await platter(['convert', '-O', 'raw', path, converted])).code).toBe(0);
    expect(qemuCompare(converted, byQemu)).toBe('Images are identical.');
    expect(JSON.parse((await platter(['info', '--output=json', path])).stdout)['dirty-flag']).toBe(true);
    expect(sha(path)).toBe(before);
    // Platter's own repair: the same image as QEMU's, clean.
    const byPlatter = t.path('built-platter.vhdx');
    copyFileSync(path, byPlatter);
    const r = await platter(['check', '-r', 'all', byPlatter]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/1 corruptions/);
    expect(problems(qemuCheck(byPlatter, 'vhdx'))).toEqual(CLEAN);
    expect(qemuCompare(byPlatter, byQemu)).toBe('Images are identical.');
    expect((await platterRead(byPlatter)).dirty).toBe(false);
  });

  it('left by qemu-io killed mid-write: read-only equals qemu-img after check -r all, file unchanged', async () => {
    const clean = t.path('clean.vhdx');
    sh('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', clean, '1G']);
    const path = t.path('killed.vhdx');
    let found = false;
    for (let i = 0; i < 30 && !found; i++) {
      copyFileSync(clean, path);
      const child = spawn('qemu-io', ['-f', 'vhdx', '-c', `write -P ${0x20 + i} 0 512M`, path], { stdio: 'ignore' });
      await new Promise((r) => setTimeout(r, 300 + ((i * 97) % 1200)));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      found = (await platterRead(path)).dirty === true;
    }
    if (!found) {
      console.warn('SKIPPED: no kill of qemu-io left a log to replay in 30 tries');
      return;
    }
    const before = sha(path);
    const { data } = await platterRead(path);
    expect(sha(path)).toBe(before);
    const byQemu = t.path('killed-qemu.vhdx');
    copyFileSync(path, byQemu);
    sh('qemu-img', ['check', '-r', 'all', byQemu]);
    const raw = t.path('killed.raw');
    writeFileSync(raw, data);
    expect(qemuCompare(raw, byQemu)).toBe('Images are identical.');
  }, 120_000);
});
