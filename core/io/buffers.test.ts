import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { giveBuffer, takeBuffer } from './buffers.js';

const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');

/** The buffer's address in memory (koffi reads the ArrayBuffer's base). */
const address = (buf: Uint8Array) => (koffi.address(buf.buffer) as bigint) + BigInt(buf.byteOffset);

describe('I/O buffers', () => {
  it('are page-aligned, of the size asked, and apart from each other', () => {
    // Odd sizes in between, so that a buffer ending mid-page would misalign the next.
    const sizes = [512 << 10, 1000, 64 << 10, 3 << 20, 4097, 20 << 20, 512 << 10];
    const bufs = sizes.map((n) => takeBuffer(n));
    bufs.forEach((b, i) => {
      expect(b.length).toBe(sizes[i]);
      expect(address(b) % 4096n).toBe(0n);
      b.fill(i + 1);
    });
    bufs.forEach((b, i) => expect(b.every((x) => x === i + 1)).toBe(true));
    bufs.forEach(giveBuffer);
  });

  it('are reused once given back', () => {
    const a = takeBuffer(12345);
    giveBuffer(a);
    expect(takeBuffer(12345)).toBe(a);
    expect(takeBuffer(12345)).not.toBe(a);
  });
});
