/**
 * Platter's VMDK driver against qemu-img/qemu-io 7.2 and libvmdk's vmdkinfo,
 * both ways, for every subformat and create option: what Platter writes
 * checks clean and compares equal in QEMU and opens in vmdkinfo; what QEMU
 * writes reads identically in Platter; chains made by either tool read the
 * same in both; descriptors and `info` agree.
 */
import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { hasFuseTool, withFuseMount } from '../../test/fuse.js';
import { prng, type Rng } from '../../test/prng.js';
import { CLEAN, problems, qemuCheck, qemuCompare, qemuInfo, qemuIo } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import { H } from './sparse-test-helpers.js';

const KiB = 1024;
const MiB = 1 << 20;
const GiB = 1 << 30;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
const HAS_VMDKINFO = hasTool('vmdkinfo', 'apt-get install libvmdk-utils');
const HAS_VMDKMOUNT = hasFuseTool('vmdkmount', 'apt-get install libvmdk-utils');
const TIMEOUT = 120_000;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-vmdk-interop-')));
afterAll(() => t?.cleanup());

/** Guest size: past two 2 GiB extents, so split subformats get three. */
const SIZE = 4 * GiB + 16 * MiB;
/** Places writes land: each extent boundary, the start and the end. */
const HOT = [0, 2 * GiB - 100 * KiB, 4 * GiB - 1 * MiB, SIZE - 300 * KiB];

interface Case {
  subformat: string;
  options: string;
}
const CASES: Case[] = [
  { subformat: 'monolithicSparse', options: '' },
  { subformat: 'monolithicSparse', options: 'adapter_type=lsilogic,hwversion=7' },
  { subformat: 'monolithicSparse', options: 'zeroed_grain=on,compat6=on,toolsversion=10240' },
  { subformat: 'monolithicFlat', options: 'adapter_type=buslogic' },
  { subformat: 'monolithicFlat', options: 'compat6=on,toolsversion=10240' },
  { subformat: 'twoGbMaxExtentSparse', options: 'zeroed_grain=on,adapter_type=legacyESX' },
  { subformat: 'twoGbMaxExtentSparse', options: 'compat6=on,toolsversion=9344' },
  { subformat: 'twoGbMaxExtentFlat', options: 'hwversion=6' },
  { subformat: 'twoGbMaxExtentFlat', options: 'toolsversion=12345' },
  { subformat: 'streamOptimized', options: 'adapter_type=lsilogic' },
  // qemu-img makes this a version 3 header that has the zeroed-grain flag (bit 2) as well.
  { subformat: 'streamOptimized', options: 'zeroed_grain=on' },
  { subformat: 'streamOptimized', options: 'compat6=on,toolsversion=9344' },
];
const optionsOf = (c: Case) => [`subformat=${c.subformat}`, c.options].filter(Boolean).join(',');
const label = (c: Case) => `${c.subformat}${c.options ? ` (${c.options})` : ''}`;
let seq = 0;
const fresh = (stem: string) => t.path(`${stem}-${++seq}.vmdk`);

/** Writes pieces of random data and zeros near the hot spots, in increasing order, each once; returns them. */
function pieces(rng: Rng, grainAligned: boolean): { offset: number; data: Uint8Array }[] {
  const out: { offset: number; data: Uint8Array }[] = [];
  for (const hot of HOT) {
    let at = hot;
    for (let i = 0; i < 6; i++) {
      const len = grainAligned ? rng.int(1, 4) * 64 * KiB : rng.int(1, 150 * KiB);
      if (at + len > SIZE) break;
      out.push({ offset: at, data: i === 3 ? new Uint8Array(len) : rng.bytes(len) });
      at += len + (grainAligned ? rng.int(0, 3) * 64 * KiB : rng.int(0, 100 * KiB));
    }
  }
  return out;
}

/** A sparse raw file holding `writes`. */
function rawWith(path: string, writes: { offset: number; data: Uint8Array }[]): string {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, SIZE);
    for (const w of writes) writeSync(fd, w.data, 0, w.data.length, w.offset);
  } finally {
    closeSync(fd);
  }
  return path;
}

/** Cuts the file at `path` to `size` bytes. */
function truncateFile(path: string, size: number): void {
  const fd = openSync(path, 'r+');
  try {
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}

/** qemu-img's descriptor without its random CID. */
const withoutCid = (text: string) => text.replace(/^CID=[0-9a-f]+$/m, 'CID=*');
/** The descriptor in a monolithic sparse file, or the descriptor file itself. */
function descriptorText(path: string): string {
  const f = readFileSync(path);
  const text = f.subarray(0, 4).toString('latin1') === 'KDMV' ? f.subarray(512, 512 * 21).toString('latin1') : f.toString('latin1');
  return text.replace(/\0+$/, '');
}

function expectClean(path: string): void {
  expect(problems(qemuCheck(path, 'vmdk')), qemuCheck(path, 'vmdk').text).toEqual(CLEAN);
}

/** Platter prints what qemu-img prints for the same command line. */
async function expectSameOutput(args: string[]): Promise<void> {
  expect((await platter(args)).stdout, args.join(' ')).toBe(sh('qemu-img', args));
}

/** libvmdk opens the image cleanly: exit 0 and nothing on stderr. */
function expectVmdkinfoReads(path: string): void {
  if (!HAS_VMDKINFO) return;
  const r = shStatus('vmdkinfo', [path]);
  expect({ status: r.status, stderr: r.stderr }, r.stdout).toEqual({ status: 0, stderr: '' });
}

describe.skipIf(!HAS_QEMU)('VMDK interop with qemu-img', () => {
  for (const c of CASES) {
    const stream = c.subformat === 'streamOptimized';

    it(
      `${label(c)}: Platter's create has qemu-img's descriptor; its writes check clean and compare equal`,
      async () => {
        const mine = fresh('mine');
        const theirs = fresh('theirs');
        expect((await platter(['create', '-q', '-f', 'vmdk', '-o', optionsOf(c), mine, String(SIZE)])).code).toBe(0);
        sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', optionsOf(c), theirs, String(SIZE)]);
        const rename = (text: string, path: string) => text.replaceAll(path.replace(/^.*\//, '').replace(/\.vmdk$/, ''), 'IMG');
        expect(rename(withoutCid(descriptorText(mine)), mine)).toBe(rename(withoutCid(descriptorText(theirs)), theirs));

        const writes = pieces(prng(seq), stream);
        const img = await openImage(mine, { readOnly: false });
        try {
          for (const w of writes) await img.write(w.data, w.offset);
          if (!stream) await img.writeZeroes(HOT[1], 64 * KiB, true);
        } finally {
          await img.close();
        }
        if (!stream) writes.push({ offset: HOT[1], data: new Uint8Array(64 * KiB) });
        const raw = rawWith(t.path(`raw-${seq}`), writes);
        expectClean(mine);
        expect(qemuCompare(raw, mine)).toBe('Images are identical.');
        expectVmdkinfoReads(mine);
      },
      TIMEOUT,
    );

    it(
      `${label(c)}: convert from a mixed raw file checks clean, compares equal, opens in vmdkinfo`,
      async () => {
        const raw = rawWith(t.path(`src-${++seq}`), pieces(prng(seq), false));
        const out = fresh('conv');
        const r = await platter(['convert', '-O', 'vmdk', '-o', optionsOf(c), raw, out]);
        expect(r.code, r.stderr).toBe(0);
        expectClean(out);
        expect(qemuCompare(raw, out)).toBe('Images are identical.');
        expectVmdkinfoReads(out);
      },
      TIMEOUT,
    );

    it(
      `${label(c)}: what qemu-img writes reads identically in Platter`,
      async () => {
        const theirs = fresh('qemu');
        const writes = pieces(prng(++seq), false);
        if (stream) {
          sh('qemu-img', ['convert', '-O', 'vmdk', '-o', optionsOf(c), rawWith(t.path(`qsrc-${seq}`), writes), theirs]);
        } else {
          sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', optionsOf(c), theirs, String(SIZE)]);
          const cmds = writes.map((w, i) =>
            w.data.every((b) => b === 0) ? `write -z ${w.offset} ${w.data.length}` : `write -P ${(i % 250) + 1} ${w.offset} ${w.data.length}`,
          );
          qemuIo(theirs, cmds, 'vmdk');
        }
        const out = t.path(`platter-read-${seq}.raw`);
        const r = await platter(['convert', '-O', 'raw', theirs, out]);
        expect(r.code, r.stderr).toBe(0);
        expect(qemuCompare(out, theirs)).toBe('Images are identical.');
        expect((await platter(['compare', theirs, out])).stdout.trim()).toBe('Images are identical.');
        // Where data, zeros and holes are, and where they are stored: as qemu-img maps them.
        await expectSameOutput(['map', '--output=json', theirs]);
      },
      TIMEOUT,
    );

    it(
      `${label(c)}: info (human and JSON) prints what qemu-img prints`,
      async () => {
        const path = fresh('info');
        const raw = rawWith(t.path(`info-src-${seq}`), pieces(prng(seq), false));
        sh('qemu-img', ['convert', '-O', 'vmdk', '-o', optionsOf(c), raw, path]);
        // Sizes, CIDs, create type, extents (files, sizes, grains, types) and actual size over all the files.
        await expectSameOutput(['info', '--output=json', path]);
        await expectSameOutput(['info', path]);
      },
      TIMEOUT,
    );
  }

  it(
    'a streamOptimized image refuses a second write to a grain, and reads what it holds',
    async () => {
      const path = fresh('stream');
      expect((await platter(['create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', path, '1M'])).code).toBe(0);
      const img = await openImage(path, { readOnly: false });
      try {
        await img.write(new Uint8Array(64 * KiB).fill(7), 0);
        await expect(img.write(new Uint8Array(512), 512)).rejects.toThrow(/written once, in order/);
      } finally {
        await img.close();
      }
      expectClean(path);
      const raw = t.path('stream.raw');
      sh('qemu-img', ['convert', '-O', 'raw', path, raw]);
      expect(readFileSync(raw).subarray(0, 64 * KiB).every((b) => b === 7)).toBe(true);
    },
    TIMEOUT,
  );

  it(
    'convert -c: streams compress in parallel; other subformats take it and store plainly, as with qemu-img',
    async () => {
      const raw = rawWith(t.path('c-src'), pieces(prng(99), false));
      for (const subformat of ['streamOptimized', 'monolithicSparse', 'twoGbMaxExtentFlat']) {
        const out = fresh('c');
        const r = await platter(['convert', '-c', '-O', 'vmdk', '-o', `subformat=${subformat}`, raw, out]);
        expect(r.code, r.stderr).toBe(0);
        expectClean(out);
        expect(qemuCompare(raw, out)).toBe('Images are identical.');
      }
    },
    TIMEOUT,
  );

  it(
    'out-of-order convert (-W, 16 requests): no grain allocated twice, stream grains split by zero runs come out whole',
    async () => {
      const raw = rawWith(t.path('w-src'), pieces(prng(77), false));
      for (const subformat of ['monolithicSparse', 'streamOptimized']) {
        const out = fresh('w');
        const r = await platter(['convert', '-W', '-m', '16', '-O', 'vmdk', '-o', `subformat=${subformat}`, raw, out]);
        expect(r.code, r.stderr).toBe(0);
        expectClean(out);
        expect(qemuCompare(raw, out)).toBe('Images are identical.');
      }
    },
    TIMEOUT,
  );

  // libvmdk 20200926's vmdkmount has no monolithicFlat ("Unsupported disk type"), for qemu-img's files too.
  for (const subformat of ['monolithicSparse', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized']) {
    it.skipIf(!HAS_VMDKMOUNT)(
      `${subformat}: libvmdk (vmdkmount) reads what Platter wrote byte for byte`,
      async () => {
        const size = 48 * MiB;
        const writes = pieces(prng(++seq), false).filter((w) => w.offset + w.data.length <= size);
        writes.push({ offset: 20 * MiB + 123, data: prng(seq).bytes(300 * KiB) });
        const raw = rawWith(t.path(`lv-${seq}`), writes);
        truncateFile(raw, size);
        const out = fresh(`lv-${subformat}`);
        expect((await platter(['convert', '-O', 'vmdk', '-o', `subformat=${subformat}`, raw, out])).code).toBe(0);
        const seen = await withFuseMount('vmdkmount', out, t.path(`mnt-${seq}`), 'vmdk1', (f) => readFileSync(f));
        expect(seen.equals(readFileSync(raw))).toBe(true);
      },
      TIMEOUT,
    );
  }

  describe('a VMDK child of a VMDK parent', () => {
    const tools = ['qemu-img', 'platter'] as const;
    // A split child too: one of its writes crosses from its first extent into its second.
    const childSubformats = ['monolithicSparse', 'twoGbMaxExtentSparse'];
    const chains = tools.flatMap((parentTool) =>
      tools.flatMap((childTool) => childSubformats.map((subformat) => ({ parentTool, childTool, subformat }))),
    );
    for (const { parentTool, childTool, subformat } of chains) {
      it(
        `parent by ${parentTool}, ${subformat} child by ${childTool}: both tools read the same`,
        async () => {
          const parent = fresh(`parent-${parentTool}`);
          const child = fresh(`child-${childTool}`);
          const base = pieces(prng(++seq), false);
          const raw = rawWith(t.path(`chain-${seq}`), base);
          if (parentTool === 'qemu-img') sh('qemu-img', ['convert', '-O', 'vmdk', raw, parent]);
          else expect((await platter(['convert', '-O', 'vmdk', raw, parent])).code).toBe(0);
          const create = ['create', '-q', '-f', 'vmdk', '-o', `subformat=${subformat}`];
          const args = [...create, '-b', parent.replace(/^.*\//, ''), '-F', 'vmdk', child];
          if (childTool === 'qemu-img') sh('qemu-img', args);
          else expect((await platter(args)).code).toBe(0);
          // Partial-grain writes in the child: the rest of each grain must come from the parent. QEMU's only
          // go to the first extent: past it, qemu-io 7.2 copies the rest from the parent at the offset within
          // the extent, not within the disk (block/vmdk.c get_cluster_offset), which would store wrong bytes.
          qemuIo(child, ['write -P 0x5a 1000 3000', `write -P 0x6b ${HOT[1] + 777} 7000`], 'vmdk');
          const img = await openImage(child, { readOnly: false });
          try {
            await img.write(new Uint8Array(5000).fill(0x7c), HOT[1] + 14321);
            await img.write(new Uint8Array(6000).fill(0x3e), 2 * GiB - 3000);
            await img.write(new Uint8Array(70000).fill(0x4d), HOT[2] + 777);
          } finally {
            await img.close();
          }
          expectClean(child);
          expectVmdkinfoReads(child);
          // What the child must read: the parent with the five writes on top.
          const expected = rawWith(t.path(`chain-expected-${seq}`), [
            ...base,
            { offset: 1000, data: new Uint8Array(3000).fill(0x5a) },
            { offset: HOT[1] + 777, data: new Uint8Array(7000).fill(0x6b) },
            { offset: HOT[1] + 14321, data: new Uint8Array(5000).fill(0x7c) },
            { offset: 2 * GiB - 3000, data: new Uint8Array(6000).fill(0x3e) },
            { offset: HOT[2] + 777, data: new Uint8Array(70000).fill(0x4d) },
          ]);
          expect(qemuCompare(expected, child)).toBe('Images are identical.');
          const viaQemu = t.path(`chain-q-${seq}.raw`);
          const viaPlatter = t.path(`chain-p-${seq}.raw`);
          sh('qemu-img', ['convert', '-O', 'raw', child, viaQemu]);
          expect((await platter(['convert', '-O', 'raw', child, viaPlatter])).code).toBe(0);
          expect(qemuCompare(viaQemu, viaPlatter)).toBe('Images are identical.');
          expect(qemuCompare(child, viaPlatter)).toBe('Images are identical.');
        },
        TIMEOUT,
      );
    }
  });

  it(
    'check finds what qemu-img check finds: nothing on a good image, the first grain past the end of a cut one',
    async () => {
      const path = fresh('check');
      sh('qemu-img', ['create', '-q', '-f', 'vmdk', path, '64M']);
      qemuIo(path, ['write -P 1 0 1M', 'write -P 2 32M 1M'], 'vmdk');
      const good = await platter(['check', path]);
      expect([good.code, good.stdout]).toEqual([0, 'No errors were found on the image.\n']);
      truncateFile(path, 1 * MiB);
      const q = shStatus('qemu-img', ['check', path]);
      const p = await platter(['check', path]);
      expect(p.code).toBe(2);
      const firstError = (text: string) => text.split('\n').find((l) => l.startsWith('ERROR'));
      expect(firstError(p.stderr + p.stdout)).toBe(firstError(q.stderr + q.stdout));
    },
    TIMEOUT,
  );

  it(
    'the first write of each open gives the disk a new CID; reads leave it; a child names its parent\'s',
    async () => {
      const cidOf = (path: string) => JSON.parse(sh('qemu-img', ['info', '--output=json', path]))['format-specific'].data.cid as number;
      for (const subformat of ['monolithicSparse', 'monolithicFlat', 'streamOptimized']) {
        const path = fresh(`cid-${subformat}`);
        expect((await platter(['create', '-q', '-f', 'vmdk', '-o', `subformat=${subformat}`, path, '1M'])).code).toBe(0);
        const before = cidOf(path);
        const ro = await openImage(path);
        await ro.read(new Uint8Array(4096), 0);
        await ro.close();
        expect(cidOf(path)).toBe(before);
        const rw = await openImage(path, { readOnly: false });
        await rw.write(new Uint8Array(64 * KiB).fill(1), 0);
        // A stream is whole again only once closed (its tables are written last).
        const stream = subformat === 'streamOptimized';
        const mid = stream ? undefined : cidOf(path);
        await rw.write(new Uint8Array(64 * KiB).fill(2), 64 * KiB);
        await rw.close();
        const after = cidOf(path);
        expect(after, subformat).not.toBe(before);
        if (!stream) expect(after, 'one new CID per open').toBe(mid);
        expectClean(path);
        const child = fresh('cid-child');
        expect((await platter(['create', '-q', '-f', 'vmdk', '-b', path.replace(/^.*\//, ''), '-F', 'vmdk', child])).code).toBe(0);
        expect(JSON.parse(sh('qemu-img', ['info', '--output=json', child]))['format-specific'].data['parent-cid']).toBe(after);
      }
    },
    TIMEOUT,
  );

  it(
    'writes into a sparse extent whose directory names no table yet: the tables are made at the end',
    async () => {
      const path = fresh('no-tables');
      sh('qemu-img', ['create', '-q', '-f', 'vmdk', path, '64M']);
      // Directory entries 0 and 1 (and their redundant copies) cleared: header rgdOffset at 48, gdOffset at 56.
      const f = readFileSync(path);
      for (const at of [Number(f.readBigUInt64LE(48)), Number(f.readBigUInt64LE(56))]) f.fill(0, at * 512, at * 512 + 8);
      writeFileSync(path, f);
      const img = await openImage(path, { readOnly: false });
      try {
        await img.write(new Uint8Array(100000).fill(9), 5000);
        await img.write(new Uint8Array(70000).fill(8), 32 * MiB + 1000);
      } finally {
        await img.close();
      }
      expectClean(path);
      const expected = rawWith(t.path('no-tables.raw'), [
        { offset: 5000, data: new Uint8Array(100000).fill(9) },
        { offset: 32 * MiB + 1000, data: new Uint8Array(70000).fill(8) },
      ]);
      truncateFile(expected, 64 * MiB);
      expect(qemuCompare(expected, path)).toBe('Images are identical.');
    },
    TIMEOUT,
  );

  it(
    'a child whose parent changed since it was made (another CID) is refused by both tools',
    async () => {
      const parent = fresh('changed-parent');
      const child = fresh('changed-child');
      sh('qemu-img', ['create', '-q', '-f', 'vmdk', parent, '1M']);
      expect((await platter(['create', '-q', '-f', 'vmdk', '-b', parent.replace(/^.*\//, ''), '-F', 'vmdk', child])).code).toBe(0);
      expect(shStatus('qemu-img', ['convert', '-O', 'raw', child, t.path('changed-q.raw')]).status).toBe(0);
      expect((await platter(['convert', '-O', 'raw', child, t.path('changed-p.raw')])).code).toBe(0);
      qemuIo(parent, ['write -P 1 0 4k'], 'vmdk');
      expect(shStatus('qemu-img', ['convert', '-O', 'raw', child, t.path('changed-q2.raw')]).status).toBe(1);
      const r = await platter(['convert', '-O', 'raw', child, t.path('changed-p2.raw')]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/the parent's CID [0-9a-f]{8} is not the parentCID [0-9a-f]{8} this disk was made against/);
    },
    TIMEOUT,
  );

  it(
    "a child's descriptor is qemu-img's: its parent's CID and name",
    async () => {
      const parent = fresh('desc-parent');
      sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'adapter_type=lsilogic', parent, '10M']);
      const name = parent.replace(/^.*\//, '');
      const mine = t.path('desc-child-a.vmdk');
      const theirs = t.path('desc-child-b.vmdk');
      expect((await platter(['create', '-q', '-f', 'vmdk', '-b', name, '-F', 'vmdk', mine])).code).toBe(0);
      sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', name, '-F', 'vmdk', theirs]);
      const text = (path: string) => withoutCid(descriptorText(path)).replace(/desc-child-[ab]/g, 'CHILD');
      expect(text(mine)).toBe(text(theirs));
      expect(text(mine)).toContain(`parentFileNameHint="${name}"`);
    },
    TIMEOUT,
  );

  it(
    'a hosted sparse version 3 (changed block tracking) reads as in qemu-img; opening it to write fails in its words',
    async () => {
      const path = fresh('v3');
      sh('qemu-img', ['create', '-q', '-f', 'vmdk', path, '8M']);
      qemuIo(path, ['write -P 0x33 1M 200k', 'write -P 0x44 7M 4k'], 'vmdk');
      const f = readFileSync(path);
      f.writeUInt32LE(3, H.version);
      writeFileSync(path, f);

      const raw = t.path('v3.raw');
      expect((await platter(['convert', '-O', 'raw', path, raw])).code).toBe(0);
      expect(qemuCompare(path, raw)).toBe('Images are identical.');
      await expectSameOutput(['info', '--output=json', path]);
      await expectSameOutput(['check', path]);

      // Version 3 adds changed block tracking, which Platter does not keep up to date either: as QEMU, read-only.
      const message = 'VMDK version 3 must be read only';
      await expect(openImage(path, { readOnly: false })).rejects.toThrow(message);
      const q = shStatus('qemu-img', ['rebase', '-u', '-b', '', path]);
      expect([q.status, q.stderr]).toEqual([1, `qemu-img: Could not open '${path}': ${message}\n`]);
      const r = await platter(['rebase', '-u', '-b', '', path]);
      expect([r.code, r.stderr]).toEqual([1, `platter: ${path}: ${message}\n`]);
      expect(readFileSync(path).equals(f), 'the refused opens left the file as it was').toBe(true);
    },
    TIMEOUT,
  );

  it(
    'an ESX descriptor (createType "vmfs", a VMFS extent) reads as in qemu-img; both refuse an offset on its line',
    async () => {
      const flat = t.path('esx-flat.vmdk');
      const sectors = 3 * 2048 + 5;
      writeFileSync(flat, prng(5).bytes(sectors * 512));
      const descriptor = (extent: string) =>
        `# Disk DescriptorFile\nversion=1\nCID=2b3c4d5e\nparentCID=ffffffff\ncreateType="vmfs"\n\n` +
        `# Extent description\n${extent}\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\n`;
      const path = t.path('esx.vmdk');
      writeFileSync(path, descriptor(`RW ${sectors} VMFS "esx-flat.vmdk"`));

      const raw = t.path('esx.raw');
      expect((await platter(['convert', '-O', 'raw', path, raw])).code).toBe(0);
      expect(readFileSync(raw).equals(readFileSync(flat))).toBe(true);
      expect(qemuCompare(path, raw)).toBe('Images are identical.');
      expect(qemuInfo(path)['virtual-size']).toBe(sectors * 512);
      await expectSameOutput(['info', '--output=json', path]);
      await expectSameOutput(['info', path]);
      await expectSameOutput(['map', '--output=json', path]);

      // block/vmdk.c vmdk_parse_extents: only FLAT lines take an offset; a VMFS line with one is invalid.
      const line = `RW ${sectors} VMFS "esx-flat.vmdk" 0`;
      const withOffset = t.path('esx-offset.vmdk');
      writeFileSync(withOffset, descriptor(line));
      const q = shStatus('qemu-img', ['info', withOffset]);
      const could = `qemu-img: Could not open '${withOffset}'`;
      expect([q.status, q.stderr]).toEqual([1, `${could}: Invalid extent line: ${line}\n`]);
      const r = await platter(['info', withOffset]);
      expect([r.code, r.stderr]).toEqual([1, `platter: ${withOffset}: invalid extent line: ${JSON.stringify(line)}\n`]);
    },
    TIMEOUT,
  );

  it('create refuses what qemu-img refuses, in its words, and leaves no file', async () => {
    const path = fresh('bad');
    // A real VMDK parent: without one, both tools would stop earlier, at opening it.
    const parent = fresh('flat-parent');
    sh('qemu-img', ['create', '-q', '-f', 'vmdk', parent, '1M']);
    const backing = `backing_file=${parent.replace(/^.*\//, '')},backing_fmt=vmdk`;
    const cases: [string, string][] = [
      ['compat6=on,hwversion=7', 'compat6 cannot be enabled with hwversion set'],
      ['subformat=monolithicFlat,zeroed_grain=on', "Flat image can't enable zeroed grain"],
      [`subformat=monolithicFlat,${backing}`, "Flat image can't have backing file"],
      [`subformat=twoGbMaxExtentFlat,${backing}`, "Flat image can't have backing file"],
    ];
    for (const [opts, message] of cases) {
      const r = await platter(['create', '-q', '-f', 'vmdk', '-o', opts, path, '1M']);
      expect(r.code, opts).toBe(1);
      expect(r.stderr).toBe(`platter: ${path}: ${message}\n`);
      expect(existsSync(path), opts).toBe(false);
      const q = shStatus('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', opts, path, '1M']);
      expect([q.status, q.stderr]).toEqual([1, `qemu-img: ${path}: ${message}\n`]);
      expect(existsSync(path), opts).toBe(false);
    }
  });
});
