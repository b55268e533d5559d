/**
 * Sizes as qemu-img reads and prints them: "10G", "1.5M", "512" in, and
 * "10 GiB", "0.977 KiB" out.
 */
import { BlockError } from '../image/errors.js';

const SUFFIX_SHIFT: Record<string, number> = { b: 0, k: 10, m: 20, g: 30, t: 40, p: 50, e: 60 };

/** Parses a size with an optional binary suffix (k, M, G, T, P, E; B = bytes). */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe])?\s*$/i.exec(text);
  if (!m) {
    throw new BlockError(
      'InvalidArgument',
      `invalid ${what} '${text}': use a number of bytes, optionally with a suffix k, M, G, T, P or E`,
    );
  }
  const shift = SUFFIX_SHIFT[(m[2] ?? 'b').toLowerCase()];
  const value = Number(m[1]) * 2 ** shift;
  if (!Number.isSafeInteger(value)) {
    throw new BlockError('InvalidArgument', `invalid ${what} '${text}': not a whole number of bytes below 8 PiB`);
  }
  return value;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/**
 * Three significant digits and a binary unit, switching unit before the number
 * would reach 1000 (qemu's size_to_str, so outputs read alike).
 */
export function formatSize(bytes: number): string {
  if (bytes === 0) return '0 B';
  const exponent = Math.floor(Math.log2(bytes / (1000 / 1024)));
  const i = Math.min(Math.max(Math.floor(exponent / 10), 0), UNITS.length - 1);
  const value = bytes / 2 ** (i * 10);
  return `${Number(value.toPrecision(3))} ${UNITS[i]}`;
}
