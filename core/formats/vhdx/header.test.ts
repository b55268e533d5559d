/**
 * Header updates as the spec asks: nothing changes until something is
 * written; the first write gets new file and data write GUIDs, through the
 * non-current header with the next sequence number, and leaves both headers
 * valid and the log empty.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { tempDir } from '../../test/tmp.js';
import { pickHeader } from './header.js';
import { isNullGuid } from './guid.js';

const KiB = 1024;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vhdx-header-')));
afterAll(() => t?.cleanup());

const headers = (path: string) => {
  const b = new Uint8Array(readFileSync(path));
  return { b, current: pickHeader(b.subarray(64 * KiB, 68 * KiB), b.subarray(128 * KiB, 132 * KiB)) };
};
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const hex = (g: Uint8Array) => Buffer.from(g).toString('hex');

describe('vhdx headers', () => {
  it('an open for writing with no write changes nothing; the first write renews the GUIDs once', async () => {
    const path = t.path('h.vhdx');
    expect((await platter(['create', '-q', '-f', 'vhdx', path, '8M'])).code).toBe(0);
    const before = headers(path);
    // qemu-img's layout: header 2 is current, numbered one past header 1.
    expect(before.current.index).toBe(1);

    let img = await openImage(path, { readOnly: false });
    await img.close();
    expect(sha(headers(path).b)).toBe(sha(before.b));

    img = await openImage(path, { readOnly: false });
    await img.write(new Uint8Array(512).fill(1), 0);
    await img.write(new Uint8Array(512).fill(2), 4096);
    await img.close();
    const after = headers(path).current.header;
    const old = before.current.header;
    expect(after.sequence).toBeGreaterThan(old.sequence);
    expect(hex(after.dataWriteGuid)).not.toBe(hex(old.dataWriteGuid));
    expect(hex(after.fileWriteGuid)).not.toBe(hex(old.fileWriteGuid));
    expect(isNullGuid(after.logGuid)).toBe(true);
    // Both headers valid: a damaged current one leaves the other.
    const b = headers(path).b;
    const other = pickHeader(b.subarray(64 * KiB, 68 * KiB), new Uint8Array(4 * KiB));
    const second = pickHeader(new Uint8Array(4 * KiB), b.subarray(128 * KiB, 132 * KiB));
    expect([other.header.sequence, second.header.sequence].sort()).toContain(after.sequence);
    expect(hex(other.header.dataWriteGuid)).toBe(hex(second.header.dataWriteGuid));
  });
});
