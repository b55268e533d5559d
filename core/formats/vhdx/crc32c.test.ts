import { describe, expect, it } from 'vitest';
import { crc32c, hasValidChecksum, setVhdxChecksum, vhdxChecksum } from './crc32c.js';

const ascii = (s: string) => new TextEncoder().encode(s);

describe('crc32c', () => {
  it('matches the published check values', () => {
    // The CRC catalogue's check value, and RFC 3720 (iSCSI) appendix B.4's vectors.
    expect(crc32c(ascii('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
    expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e);
    expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i))).toBe(0x113fdb5c);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  it('continues across pieces of any length', () => {
    const data = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7919) & 0xff);
    const whole = crc32c(data);
    for (const cut of [0, 1, 3, 7, 8, 9, 500, 999, 1000]) {
      expect(crc32c(data.subarray(cut), crc32c(data.subarray(0, cut)))).toBe(whole);
    }
  });

  it('computes VHDX checksums with the field zeroed, and checks them', () => {
    const buf = Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff);
    const zeroed = buf.slice();
    zeroed.fill(0, 4, 8);
    expect(vhdxChecksum(buf, 4)).toBe(crc32c(zeroed));
    setVhdxChecksum(buf, 4);
    expect(hasValidChecksum(buf, 4)).toBe(true);
    buf[100] ^= 1;
    expect(hasValidChecksum(buf, 4)).toBe(false);
  });
});
