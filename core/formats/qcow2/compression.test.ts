/** The codecs on their own: round trips, trailing bytes, and hostile zstd frames. */
import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { codecFor, loadZstd, zstdFrame } from './compression.js';

beforeAll(() => loadZstd());

const CLUSTER = 65536;
const text = () => new Uint8Array(Buffer.from('a cluster of guest text\n'.repeat(3000)).subarray(0, CLUSTER));

/** A zstd frame header: magic, descriptor, then `rest`. */
const frame = (descriptor: number, ...rest: number[]) => new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, descriptor, ...rest]);

describe.each(['zlib', 'zstd'] as const)('%s', (type) => {
  const codec = codecFor(type);

  it('round-trips a cluster, ignoring the bytes after the compressed data', async () => {
    const data = text();
    const z = await codec.compress(data);
    expect(z).toBeDefined();
    const padded = new Uint8Array(z!.length + 511);
    padded.set(z!);
    padded.fill(0xa5, z!.length);
    expect(Buffer.from(codec.decompress(padded, CLUSTER)).equals(data)).toBe(true);
  });

  it('does not compress what would not get smaller', async () => {
    expect(await codec.compress(new Uint8Array(randomBytes(CLUSTER)))).toBeUndefined();
  });
});

describe('zstd frames', () => {
  const zstd = codecFor('zstd');

  it('finds where a frame ends, so several frames can fill one cluster', async () => {
    const half = text().subarray(0, CLUSTER / 2);
    const a = (await zstd.compress(half))!;
    expect(zstdFrame(a).length).toBe(a.length);
    const two = new Uint8Array([...a, ...a, 1, 2, 3]);
    expect(Buffer.from(zstd.decompress(two, CLUSTER)).equals(Buffer.concat([half, half]))).toBe(true);
  });

  it.each([
    ['a truncated frame', frame(0x20, 8), /truncated/],
    ['a reserved header bit', frame(0x28, 8, 1, 0, 0), /reserved header bit/],
    ['a reserved block type', frame(0x20, 8, 0x07, 0, 0), /reserved block type/],
    // 8-byte content size: 2^40 bytes claimed for a 64 KiB cluster.
    ['a content size larger than the cluster', frame(0xe0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0), /more than a cluster/],
    ['a frame that is not zstd', new Uint8Array(64).fill(7), /does not start with a frame/],
    ['data that ends before a whole cluster', frame(0x20, 4, 0x21, 0, 0, 1, 2, 3, 4), /truncated/],
  ])('refuses %s with one clear error', (_, bytes, message) => {
    expect(() => zstd.decompress(bytes, CLUSTER)).toThrow(message);
  });
});
