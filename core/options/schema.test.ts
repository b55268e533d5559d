import { describe, expect, it } from 'vitest';
import { raw } from '../formats/raw/index.js';
import { BlockError } from '../image/errors.js';
import { hasTool, sh, tempDir } from '../test/tmp.js';
import {
  formatOptionsHelp,
  formatOptionValue,
  parseOptionList,
  parseOptionValue,
  resolveOptions,
  type OptionDecl,
} from './schema.js';

const rawDecls = raw.createOptions!;

/** The BlockError `fn` throws (fails the test if it returns or throws something else). */
function thrown(fn: () => unknown): BlockError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return e as BlockError;
  }
  throw new Error('expected a BlockError, nothing was thrown');
}

/** A qcow2-like list, local to these tests. */
const QCOW2_LIKE: OptionDecl[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size', min: 0 },
  { name: 'compat', type: 'enum', values: ['0.10', '1.1'], default: '1.1', help: 'Compatibility level' },
  {
    name: 'lazy_refcounts',
    type: 'bool',
    default: false,
    help: 'Postpone refcount updates',
    requires: [{ option: 'compat', value: '1.1' }],
  },
  {
    name: 'cluster_size',
    type: 'size',
    default: 65536,
    min: 512,
    max: 2 * 1024 * 1024,
    powerOfTwo: true,
    help: 'qcow2 cluster size',
  },
  { name: 'refcount_bits', type: 'number', default: 16, min: 1, max: 64, powerOfTwo: true, help: 'Refcount width' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
];

describe('parseOptionList', () => {
  it('splits name=value pairs', () => {
    expect(parseOptionList('a=1,b=2')).toEqual({ a: '1', b: '2' });
  });

  it('reads a doubled comma as a literal comma, in values and names', () => {
    expect(parseOptionList('backing_file=a,,b')).toEqual({ backing_file: 'a,b' });
    expect(parseOptionList('backing_file=a,,,,b,c=1')).toEqual({ backing_file: 'a,,b', c: '1' });
    expect(parseOptionList('x,,y=1')).toEqual({ 'x,y': '1' });
  });

  it('reads a bare name as name=on (so bare "help" asks for help)', () => {
    expect(parseOptionList('help')).toEqual({ help: 'on' });
    expect(parseOptionList('lazy_refcounts,compat=1.1')).toEqual({ lazy_refcounts: 'on', compat: '1.1' });
  });

  it('keeps "=" inside values and allows empty values', () => {
    expect(parseOptionList('key-secret=a=b')).toEqual({ 'key-secret': 'a=b' });
    expect(parseOptionList('backing_fmt=')).toEqual({ backing_fmt: '' });
  });

  it('returns {} for an empty string and ignores empty items', () => {
    expect(parseOptionList('')).toEqual({});
    expect(parseOptionList('a=1,,')).toEqual({ a: '1,' });
    expect(parseOptionList('a=1,')).toEqual({ a: '1' });
  });

  it('lets later keys win, so repeated -o flags merge by joining with commas', () => {
    expect(parseOptionList('a=1,b=2,a=3')).toEqual({ a: '3', b: '2' });
  });

  it.each(['=x', 'a=1,=2', '='])('refuses %j: an option without a name', (text) => {
    const err = thrown(() => parseOptionList(text));
    expect(err.kind).toBe('InvalidArgument');
    expect(err.message).toBe(`invalid option list '${text}': an option has no name`);
  });

  it('keeps a name like __proto__ as a plain key, so it is refused as unknown later', () => {
    const parsed = parseOptionList('__proto__=x');
    expect(Object.keys(parsed)).toEqual(['__proto__']);
    expect(() => resolveOptions(rawDecls, parsed, 'raw')).toThrow("raw does not support option '__proto__'");
  });
});

describe('parseOptionValue', () => {
  const bool = QCOW2_LIKE[2];

  it.each([
    ['on', true],
    ['yes', true],
    ['true', true],
    ['1', true],
    ['off', false],
    ['no', false],
    ['false', false],
    ['0', false],
  ])('bool %j -> %s', (text, value) => {
    expect(parseOptionValue(bool, text)).toBe(value);
  });

  it.each(['', 'On', 'maybe', '2'])('refuses bool %j', (text) => {
    expect(thrown(() => parseOptionValue(bool, text)).message).toBe(
      `invalid value '${text}' for option lazy_refcounts: use on or off`,
    );
  });

  it('parses sizes with suffixes and checks min, max and power of two', () => {
    const cs = QCOW2_LIKE[3];
    expect(parseOptionValue(cs, '64k')).toBe(65536);
    expect(parseOptionValue(cs, '512')).toBe(512);
    expect(parseOptionValue(cs, '2M')).toBe(2 * 1024 * 1024);
    expect(thrown(() => parseOptionValue(cs, '256')).message).toBe(
      "invalid value '256' for option cluster_size: must be at least 512",
    );
    expect(thrown(() => parseOptionValue(cs, '4M')).message).toBe(
      "invalid value '4M' for option cluster_size: must be at most 2097152",
    );
    expect(thrown(() => parseOptionValue(cs, '96k')).message).toBe(
      "invalid value '96k' for option cluster_size: must be a power of two",
    );
    expect(thrown(() => parseOptionValue(cs, 'big')).message).toBe(
      "invalid value 'big' for option cluster_size: not a size",
    );
  });

  it('checks power of two for sizes above 4 GiB too', () => {
    const blockSize: OptionDecl = { name: 'block_size', type: 'size', powerOfTwo: true, help: 'Block size' };
    expect(parseOptionValue(blockSize, '8G')).toBe(8 * 2 ** 30);
    expect(parseOptionValue(blockSize, '4P')).toBe(4 * 2 ** 50);
    expect(() => parseOptionValue(blockSize, '3G')).toThrow('must be a power of two');
    // 6 GiB and 12 GiB are multiples of 2^31/2^32: a 32-bit `n & (n - 1)` sees 0 there.
    expect(() => parseOptionValue(blockSize, '6G')).toThrow('must be a power of two');
    expect(() => parseOptionValue(blockSize, '12G')).toThrow('must be a power of two');
  });

  it('parses whole numbers and checks their limits', () => {
    const rb = QCOW2_LIKE[4];
    expect(parseOptionValue(rb, '16')).toBe(16);
    expect(parseOptionValue(rb, '64')).toBe(64);
    expect(thrown(() => parseOptionValue(rb, '1.5')).message).toBe(
      "invalid value '1.5' for option refcount_bits: not a whole number",
    );
    expect(thrown(() => parseOptionValue(rb, 'x')).message).toContain('not a whole number');
    expect(thrown(() => parseOptionValue(rb, '128')).message).toContain('must be at most 64');
    expect(thrown(() => parseOptionValue(rb, '0')).message).toContain('must be at least 1');
    expect(thrown(() => parseOptionValue(rb, '24')).message).toContain('must be a power of two');
  });

  it('refuses an empty number instead of reading it as 0', () => {
    const n: OptionDecl = { name: 'cluster_bits', type: 'number', help: 'bits' };
    expect(thrown(() => parseOptionValue(n, '')).message).toBe(
      "invalid value '' for option cluster_bits: not a whole number",
    );
    expect(() => parseOptionValue(n, ' ')).toThrow('not a whole number');
  });

  it('keeps strings as they are', () => {
    expect(parseOptionValue(QCOW2_LIKE[5], ' a b,c ')).toBe(' a b,c ');
  });
});

describe('resolveOptions', () => {
  it('refuses an unknown option, listing the supported ones', () => {
    const err = thrown(() => resolveOptions(rawDecls, { cluster_size: '64k' }, 'raw'));
    expect(err.kind).toBe('InvalidArgument');
    expect(err.message).toBe("raw does not support option 'cluster_size' (supported: size, preallocation)");
  });

  it('says "none" when a format has no options', () => {
    expect(thrown(() => resolveOptions([], { a: '1' }, 'bochs')).message).toBe(
      "bochs does not support option 'a' (supported: none)",
    );
  });

  it('names the allowed values of an enum', () => {
    const err = thrown(() => resolveOptions(rawDecls, { preallocation: 'bad' }, 'raw'));
    expect(err.kind).toBe('InvalidArgument');
    expect(err.message).toContain('allowed values are off, falloc, full');
    expect(err.message).toBe("invalid value 'bad' for option preallocation: allowed values are off, falloc, full");
  });

  it('fills in defaults and types what was given', () => {
    expect(resolveOptions(rawDecls, {}, 'raw')).toEqual({ preallocation: 'off' });
    expect(resolveOptions(rawDecls, { size: '1M', preallocation: 'full' }, 'raw')).toEqual({
      size: 1048576,
      preallocation: 'full',
    });
    expect(resolveOptions(QCOW2_LIKE, { lazy_refcounts: 'on', cluster_size: '2M' }, 'qcow2')).toEqual({
      compat: '1.1',
      lazy_refcounts: true,
      cluster_size: 2097152,
      refcount_bits: 16,
    });
  });

  it('parses bool options given on/off', () => {
    expect(resolveOptions(QCOW2_LIKE, { lazy_refcounts: 'on' }, 'qcow2').lazy_refcounts).toBe(true);
    expect(resolveOptions(QCOW2_LIKE, { lazy_refcounts: 'off' }, 'qcow2').lazy_refcounts).toBe(false);
  });

  it('refuses an option whose requirement is not met, and accepts it when it is', () => {
    const err = thrown(() => resolveOptions(QCOW2_LIKE, { compat: '0.10', lazy_refcounts: 'on' }, 'qcow2'));
    expect(err.kind).toBe('InvalidArgument');
    expect(err.message).toBe('option lazy_refcounts needs compat=1.1');
    expect(resolveOptions(QCOW2_LIKE, { compat: '1.1', lazy_refcounts: 'on' }, 'qcow2')).toMatchObject({
      compat: '1.1',
      lazy_refcounts: true,
    });
    // The requirement is met by the default too.
    expect(resolveOptions(QCOW2_LIKE, { lazy_refcounts: 'on' }, 'qcow2').compat).toBe('1.1');
  });

  it('does not check requirements of options that were not given', () => {
    expect(resolveOptions(QCOW2_LIKE, { compat: '0.10' }, 'qcow2')).toMatchObject({
      compat: '0.10',
      lazy_refcounts: false,
    });
  });

  it('lets a bool option be turned off whatever it requires (qemu-img: compat=0.10,lazy_refcounts=off is fine)', () => {
    expect(resolveOptions(QCOW2_LIKE, { compat: '0.10', lazy_refcounts: 'off' }, 'qcow2')).toMatchObject({
      compat: '0.10',
      lazy_refcounts: false,
    });
  });

  it('prints requirement values as the user types them', () => {
    const decls: OptionDecl[] = [
      { name: 'a', type: 'bool', help: 'a' },
      { name: 'b', type: 'string', help: 'b', requires: [{ option: 'a', value: true }] },
    ];
    expect(thrown(() => resolveOptions(decls, { b: 'x', a: 'off' }, 'f')).message).toBe('option b needs a=on');
    expect(resolveOptions(decls, { b: 'x', a: 'yes' }, 'f')).toEqual({ a: true, b: 'x' });
    expect(formatOptionValue(false)).toBe('off');
    expect(formatOptionValue(65536)).toBe('65536');
  });
});

describe('formatOptionsHelp', () => {
  it("lays out raw's options as qemu-img does", () => {
    expect(formatOptionsHelp(rawDecls)).toBe(
      'Supported options:\n' +
        '  preallocation=<str>    - Preallocation mode (allowed values: off, falloc, full)\n' +
        '  size=<size>            - Virtual disk size\n',
    );
  });

  it('sorts by name, labels each type, and does not pad names longer than the column', () => {
    expect(formatOptionsHelp(QCOW2_LIKE)).toBe(
      [
        'Supported options:',
        '  backing_file=<str>     - File name of a base image',
        '  cluster_size=<size>    - qcow2 cluster size',
        '  compat=<str>           - Compatibility level (allowed values: 0.10, 1.1)',
        '  lazy_refcounts=<bool (on/off)> - Postpone refcount updates',
        '  refcount_bits=<num>    - Refcount width',
        '  size=<size>            - Virtual disk size',
        '',
      ].join('\n'),
    );
  });

  it.skipIf(!hasTool('qemu-img', 'apt-get install qemu-utils'))(
    "prints raw's lines exactly as `qemu-img create -f raw -o help` does",
    () => {
      const t = tempDir('platter-help-');
      try {
        const qemu = sh('qemu-img', ['create', '-f', 'raw', '-o', 'help', t.path('x.img')]).split('\n');
        expect(qemu[0]).toBe('Supported options:');
        for (const line of formatOptionsHelp(rawDecls).trimEnd().split('\n')) expect(qemu).toContain(line);
      } finally {
        t.cleanup();
      }
    },
  );
});
