/**
 * Test images: a mixed raw file to convert from, a guest's writes into an
 * image (mirrored in a model of its bytes), and the guest bytes of any image
 * as Platter reads them.
 */
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import type { Image } from '../image/image.js';
import { openImage } from '../image/open.js';
import type { Rng } from './prng.js';

const KiB = 1024;
const MiB = 1 << 20;

/**
 * A sparse raw file of `size` bytes (at least 8 MiB): random data at
 * unaligned places, `zeroRun` bytes of written zeros at 5 MiB (allocated in
 * the file, so convert must detect them), holes, and data in the first and
 * last bytes. Returns its content.
 */
export function makeMixedRaw(path: string, size: number, rng: Rng, { zeroRun = MiB } = {}): Uint8Array {
  const content = new Uint8Array(size);
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    const put = (off: number, data: Uint8Array) => {
      content.set(data, off);
      writeSync(fd, data, 0, data.length, off);
    };
    for (let i = 0; i < 20; i++) {
      const len = rng.int(1, 300 * KiB);
      put(rng.int(0, size - len), rng.bytes(len));
    }
    if (zeroRun) put(5 * MiB, new Uint8Array(zeroRun));
    put(0, rng.bytes(3000));
    put(size - 1000, rng.bytes(1000));
  } finally {
    closeSync(fd);
  }
  return content;
}

/**
 * Writes into `img` as a guest would, and the same into `model` (its guest
 * bytes): `count` writes of random sector-aligned lengths and places, one
 * after the other, then 24 of 4 KiB in flight together, `stride` bytes apart
 * from `burstAt` (some in the same block).
 */
export async function writeAsAGuest(
  img: Image,
  model: Uint8Array,
  rng: Rng,
  { count, burstAt, stride }: { count: number; burstAt: number; stride: number },
): Promise<void> {
  for (let i = 0; i < count; i++) {
    const len = rng.int(1, 1500) * 512;
    const off = rng.int(0, (model.length - len) / 512) * 512;
    const data = rng.bytes(len);
    model.set(data, off);
    await img.write(data, off);
  }
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 24; i++) {
    const data = rng.bytes(4096);
    const off = burstAt + i * stride;
    model.set(data, off);
    writes.push(img.write(data, off));
  }
  await Promise.all(writes);
}

/** Everything the guest sees in an image, read by Platter (the format probed unless given). */
export async function readGuestBytes(path: string, format?: string): Promise<Uint8Array> {
  const img = await openImage(path, { format });
  try {
    const buf = new Uint8Array(img.size);
    await img.read(buf, 0);
    return buf;
  } finally {
    await img.close();
  }
}
