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
  if (!Number.isInteger(value)) throw new BlockError('InvalidArgument', `invalid ${what} '${text}': not a whole number of bytes`);
  if (!Number.isSafeInteger(value)) throw new BlockError('InvalidArgument', `invalid ${what} '${text}': must be below 8 PiB`);
  return value;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/**
 * Three significant digits and a binary unit, switching unit before the number
 * would reach 1000: qemu's size_to_str, digit for digit, so outputs read alike.
 */
export function formatSize(bytes: number): string {
  if (bytes === 0) return '0 B';
  // The largest unit with bytes >= 1000/1024 of it, in exact integers.
  const b = BigInt(bytes);
  let i = 0;
  while (i < UNITS.length - 1 && b * 1024n >= 1000n << BigInt(10 * (i + 1))) i++;
  return `${formatG3(bytes / 2 ** (i * 10))} ${UNITS[i]}`;
}

/**
 * printf's "%0.3g" for 0.9 <= x < 1000: three significant digits, exact ties
 * rounded to even (JS's toPrecision rounds them up), trailing zeros dropped,
 * and "1e+03" when rounding reaches 1000.
 */
function formatG3(x: number): string {
  const exp = Math.floor(Math.log10(x));
  const scale = 10 ** (2 - exp);
  // x is a dyadic fraction and scale a small power of ten: y is exact.
  const value = roundHalfEven(x * scale) / scale;
  return value >= 1000 ? '1e+03' : String(value);
}

/** Rounds to an integer, exact halves to even, as printf does. */
function roundHalfEven(y: number): number {
  const floor = Math.floor(y);
  if (y - floor !== 0.5) return Math.round(y);
  return floor % 2 === 0 ? floor : floor + 1;
}

/** printf's "%.Nf": like toFixed, but an exact half rounds to even (0.625 -> "0.62"). */
export function printfFixed(x: number, digits: number): string {
  const scale = 10 ** digits;
  const y = x * scale;
  return y - Math.floor(y) === 0.5 ? (roundHalfEven(y) / scale).toFixed(digits) : x.toFixed(digits);
}
