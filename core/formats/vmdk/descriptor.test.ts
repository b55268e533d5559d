import { describe, expect, it } from 'vitest';
import { BlockError } from '../../image/errors.js';
import { formatDescriptor, parseDescriptor, replaceCid } from './descriptor.js';
import { MAX_DESCRIPTOR_BYTES } from './limits.js';

/** What qemu-img 7.2 writes for `create -f vmdk -o subformat=twoGbMaxExtentSparse,adapter_type=lsilogic,hwversion=7 b.vmdk 5G`. */
const QEMU_SPLIT = `# Disk DescriptorFile
version=1
CID=58b36504
parentCID=ffffffff
createType="twoGbMaxExtentSparse"

# Extent description
RW 4194304 SPARSE "b-s001.vmdk"
RW 4194304 SPARSE "b-s002.vmdk"
RW 2097152 SPARSE "b-s003.vmdk"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "7"
ddb.geometry.cylinders = "652"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.adapterType = "lsilogic"
ddb.toolsVersion = "2147483647"
`;

function refusal(text: string): BlockError {
  try {
    parseDescriptor(text);
  } catch (err) {
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).message).not.toContain('\n');
    return err as BlockError;
  }
  throw new Error('the descriptor was accepted');
}

describe('VMDK descriptor', () => {
  it("parses qemu-img's and writes it back byte for byte", () => {
    const d = parseDescriptor(QEMU_SPLIT);
    expect(d).toMatchObject({ version: 1, cid: 0x58b36504, parentCid: 0xffffffff, createType: 'twoGbMaxExtentSparse' });
    expect(d.extents).toEqual([
      { access: 'RW', sectors: 4194304, type: 'SPARSE', file: 'b-s001.vmdk' },
      { access: 'RW', sectors: 4194304, type: 'SPARSE', file: 'b-s002.vmdk' },
      { access: 'RW', sectors: 2097152, type: 'SPARSE', file: 'b-s003.vmdk' },
    ]);
    expect(d.ddb.get('geometry.heads')).toBe('255');
    expect(formatDescriptor(d)).toBe(QEMU_SPLIT);
  });

  it('writes CIDs as qemu-img does (%x), so a CID under 0x10000000 has no leading zero', () => {
    const d = parseDescriptor(QEMU_SPLIT);
    const text = formatDescriptor({ ...d, cid: 0x6cdc924, parentCid: 0x0000abcd });
    expect(text).toContain('\nCID=6cdc924\nparentCID=abcd\n');
    expect(parseDescriptor(text)).toMatchObject({ cid: 0x6cdc924, parentCid: 0xabcd });
  });

  it('reads every extent kind, CRLF line ends, a parent and VMware keys', () => {
    const text = [
      '# Disk DescriptorFile',
      'version=1',
      'encoding="UTF-8"',
      'CID=fffffffe',
      'parentCID=1234abcd',
      'isNativeSnapshot="no"',
      'createType="vmfs"',
      'parentFileNameHint="base.vmdk"',
      'RW 2048 FLAT "a-flat.vmdk" 16',
      'RDONLY 100 VMFS "b.vmdk"',
      'NOACCESS 8 ZERO',
      'RW 4096 VMFSSPARSE "c-delta.vmdk"',
      'RW 4096 SESPARSE "d-sesparse.vmdk"',
      'ddb.uuid = "60 00 C2 9a"',
      'ddb.longContentID = "abc"',
    ].join('\r\n');
    const d = parseDescriptor(text);
    expect(d.encoding).toBe('UTF-8');
    expect(d.parentCid).toBe(0x1234abcd);
    expect(d.parentFileNameHint).toBe('base.vmdk');
    expect(d.extents.map((e) => [e.access, e.type, e.file, e.offset])).toEqual([
      ['RW', 'FLAT', 'a-flat.vmdk', 16],
      ['RDONLY', 'VMFS', 'b.vmdk', undefined],
      ['NOACCESS', 'ZERO', undefined, undefined],
      ['RW', 'VMFSSPARSE', 'c-delta.vmdk', undefined],
      ['RW', 'SESPARSE', 'd-sesparse.vmdk', undefined],
    ]);
    expect(d.ddb.get('uuid')).toBe('60 00 C2 9a');
    expect(d.ddb.get('longContentID')).toBe('abc');
  });

  it('ends an embedded descriptor at its first NUL', () => {
    const d = parseDescriptor(QEMU_SPLIT + '\0\0garbage that is not a line');
    expect(d.extents).toHaveLength(3);
  });

  const base = (extent: string) => QEMU_SPLIT.replace('RW 4194304 SPARSE "b-s001.vmdk"', extent);
  for (const [label, line] of [
    ['an unknown type', 'RW 2048 SPARSY "a.vmdk"'],
    ['no file name', 'RW 2048 SPARSE'],
    ['a FLAT extent without its offset', 'RW 2048 FLAT "a.vmdk"'],
    ['a negative offset', 'RW 2048 FLAT "a.vmdk" -1'],
    ['an offset on a sparse extent', 'RW 2048 SPARSE "a.vmdk" 0'],
    ['zero sectors', 'RW 0 SPARSE "a.vmdk"'],
    ['sectors that are not a number', 'RW 12abc SPARSE "a.vmdk"'],
    ['sectors past 2^53', 'RW 99999999999999999999 FLAT "a.vmdk" 0'],
    ['an unterminated name', 'RW 2048 SPARSE "a.vmdk'],
    ['a ZERO extent with a file', 'RW 2048 ZERO "a.vmdk"'],
  ]) {
    it(`refuses an extent line with ${label}`, () => {
      expect(refusal(base(line)).message).toMatch(/^invalid extent line: /);
    });
  }

  it('refuses a missing or malformed CID, a missing createType, no extents and a bad version', () => {
    expect(refusal(QEMU_SPLIT.replace('CID=58b36504\n', '')).message).toBe('the descriptor has no CID');
    expect(refusal(QEMU_SPLIT.replace('CID=58b36504', 'CID=xyz')).message).toMatch(/CID is not a 32-bit hex number/);
    expect(refusal(QEMU_SPLIT.replace('parentCID=ffffffff', 'parentCID=123456789')).message).toMatch(/parentCID/);
    expect(refusal(QEMU_SPLIT.replace('createType="twoGbMaxExtentSparse"\n', '')).message).toMatch(/no createType/);
    expect(refusal(QEMU_SPLIT.replace(/^RW.*\n/gm, '')).message).toBe('the descriptor lists no extents');
    expect(refusal(QEMU_SPLIT.replace('version=1', 'version=9')).kind).toBe('Unsupported');
    expect(refusal(QEMU_SPLIT + 'this is not a key\n').message).toMatch(/^invalid descriptor line/);
  });

  it('refuses a descriptor larger than QEMU reads', () => {
    const big = QEMU_SPLIT + '#'.repeat(MAX_DESCRIPTOR_BYTES);
    expect(refusal(big).message).toMatch(/larger than/);
  });

  it('changes only the CID line', () => {
    const text = QEMU_SPLIT.replace('version=1', 'version=1\n# a comment\nsomeVMwareKey="x"');
    const changed = replaceCid(text, 0xabc);
    // QEMU's vmdk_write_cid prints it with %x: no leading zeros.
    expect(changed).toBe(text.replace('CID=58b36504', 'CID=abc'));
    expect(parseDescriptor(changed).cid).toBe(0xabc);
    expect(parseDescriptor(changed).parentCid).toBe(0xffffffff);
  });
});
