/**
 * platter amend on qcow2 images made by qemu-img, judged by qemu-img: check
 * clean, compare equal (the current content and every snapshot's) with a
 * copy made before, info showing the new settings, and the same info as
 * qemu-img amend doing the same to another copy.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Protocol } from '../../io/protocol.js';
import { openProtocol } from '../../io/open.js';
import type { OptionValues } from '../../options/schema.js';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';
import { openQcow2 } from './open.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir()));
afterAll(() => t?.cleanup());

let n = 0;
const fresh = (name: string) => t.path(`${n++}-${name}`);
const io = (p: string, ...cmds: string[]) => sh('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), p]);
const specific = (p: string) => JSON.parse(sh('qemu-img', ['info', '--output=json', '-U', p]))['format-specific'].data;
const snapshots = (p: string): string[] =>
  (JSON.parse(sh('qemu-img', ['info', '--output=json', '-U', p]))['snapshots'] ?? []).map((s: { name: string }) => s.name);

/** The settings amend changes, as qemu-img info shows them. */
const settings = (p: string) => {
  const d = specific(p);
  return { compat: d.compat, lazy: d['lazy-refcounts'], bits: d['refcount-bits'] };
};

/** The guest content of `p`, or of one of its snapshots, as raw bytes (read by qemu-img). */
function content(p: string, snapshot?: string): Buffer {
  const out = fresh('content.raw');
  sh('qemu-img', ['convert', '-U', '-f', 'qcow2', ...(snapshot ? ['-l', `snapshot.name=${snapshot}`] : []), '-O', 'raw', p, out]);
  return readFileSync(out);
}

/**
 * An image made by qemu-img and qemu-io with every kind of cluster: data,
 * zero clusters with and without a host cluster, a discard, a snapshot and
 * data written after it (so tables are shared and copied).
 */
function makeImage(opts: { compat?: string; backing?: string; cluster?: number } = {}): string {
  const p = fresh('img.qcow2');
  const o = [`compat=${opts.compat ?? '1.1'}`, `cluster_size=${opts.cluster ?? 65536}`];
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', o.join(','), ...(opts.backing ? ['-b', opts.backing, '-F', 'qcow2'] : []), p, '8M']);
  io(p, 'write -P 1 0 1M', 'write -P 5 3M 256k');
  if ((opts.compat ?? '1.1') === '1.1') {
    // Over data (the host cluster stays), over nothing (a plain zero cluster), unmapped.
    io(p, 'write -z 64k 128k', 'write -z 2M 128k', 'write -z -u 3M 64k');
  }
  io(p, 'discard 512k 64k');
  sh('qemu-img', ['snapshot', '-c', 'before', p]);
  io(p, 'write -P 2 128k 64k', 'write -P 3 4M 64k');
  if ((opts.compat ?? '1.1') === '1.1') io(p, 'write -z 256k 64k', 'write -z 5M 64k');
  return p;
}

/** Rewrites the first snapshot entry without its extra data, as old version 2 writers left it. */
function stripSnapshotExtraData(p: string): void {
  const b = readFileSync(p);
  const e = b.subarray(Number(b.readBigUInt64BE(64)));
  const extra = e.readUInt32BE(36);
  const names = Buffer.from(e.subarray(40 + extra, 40 + extra + e.readUInt16BE(12) + e.readUInt16BE(14)));
  e.writeUInt32BE(0, 36);
  e.fill(0, 40, 40 + extra + names.length);
  names.copy(e, 40);
  writeFileSync(p, b);
}

function backingFile(): string {
  const b = fresh('base.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', b, '8M']);
  io(b, 'write -P 9 0 8M');
  return b;
}

/** Amends a copy of `p` with Platter and another with qemu-img; both must read as `p` did and agree. */
async function amendBoth(p: string, options: string) {
  const ours = fresh('ours.qcow2');
  const theirs = fresh('theirs.qcow2');
  copyFileSync(p, ours);
  copyFileSync(p, theirs);
  const r = await platter(['amend', '-f', 'qcow2', '-o', options, ours]);
  expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
  sh('qemu-img', ['amend', '-f', 'qcow2', '-o', options, theirs]);
  expect(problems(qemuCheck(ours))).toEqual(CLEAN);
  expect(content(ours).equals(content(p))).toBe(true);
  expect(shStatus('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', p, ours]).status).toBe(0);
  for (const sn of snapshots(p)) expect(content(ours, sn).equals(content(p, sn)), `snapshot ${sn}`).toBe(true);
  expect(snapshots(ours)).toEqual(snapshots(p));
  expect(settings(ours)).toEqual(settings(theirs));
  return ours;
}

describe.skipIf(!HAS_QEMU)('qcow2 amend compat', () => {
  it('downgrades to 0.10: zero clusters expanded in the active view and the snapshot', async () => {
    const p = makeImage();
    const ours = await amendBoth(p, 'compat=0.10');
    expect(settings(ours)).toEqual({ compat: '0.10', lazy: undefined, bits: 16 });
    // Nothing left that version 2 cannot read: the feature table went with the version 3 header.
    expect(readFileSync(ours).indexOf('dirty bit')).toBe(-1);
  });

  it('downgrades over a backing file: plain zero clusters become zeroed data, not holes', async () => {
    const p = makeImage({ backing: backingFile() });
    const ours = await amendBoth(p, 'compat=0.10');
    expect(settings(ours).compat).toBe('0.10');
    // 2M was written as zeros over the backing file's 9s: it must still read as zeros.
    expect(content(ours).subarray(2 << 20, (2 << 20) + 131072).every((b) => b === 0)).toBe(true);
  });

  it('downgrades with small clusters and lazy refcounts on', async () => {
    const p = makeImage({ cluster: 4096 });
    sh('qemu-img', ['amend', '-o', 'lazy_refcounts=on', p]);
    await amendBoth(p, 'compat=0.10');
  });

  it('upgrades 0.10 images (with a snapshot) to 1.1', async () => {
    const p = makeImage({ compat: '0.10' });
    const ours = await amendBoth(p, 'compat=1.1');
    expect(settings(ours)).toEqual({ compat: '1.1', lazy: false, bits: 16 });
  });

  it('upgrades a snapshot entry without extra data to the version 3 form', async () => {
    const p = makeImage({ compat: '0.10' });
    stripSnapshotExtraData(p);
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
    // qemu-img check calls a version 3 entry without the sizes "incomplete": the table must be rewritten.
    await amendBoth(p, 'compat=1.1');
  });

  it('upgrades and sets lazy refcounts and the refcount width at once', async () => {
    const p = makeImage({ compat: '0.10' });
    const ours = await amendBoth(p, 'compat=1.1,lazy_refcounts=on,refcount_bits=64');
    expect(settings(ours)).toEqual({ compat: '1.1', lazy: true, bits: 64 });
  });

  it('round trip 1.1 -> 0.10 -> 1.1 reads the same', async () => {
    const p = makeImage();
    const mid = await amendBoth(p, 'compat=0.10');
    await amendBoth(mid, 'compat=1.1');
  });
});

describe.skipIf(!HAS_QEMU)('qcow2 amend lazy_refcounts', () => {
  it('turns them on and off', async () => {
    const p = makeImage();
    const on = await amendBoth(p, 'lazy_refcounts=on');
    expect(settings(on).lazy).toBe(true);
    const off = await amendBoth(on, 'lazy_refcounts=off');
    expect(settings(off).lazy).toBe(false);
  });

  it('turning them off on a dirty image repairs it first', async () => {
    const p = fresh('dirty.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', p, '8M']);
    // qemu-io's abort leaves the image dirty, its refcounts not written.
    shStatus('qemu-io', ['-f', 'qcow2', '-c', 'write -P 4 0 2M', '-c', 'abort', p]);
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', '-U', p]))['dirty-flag']).toBe(true);
    const r = await platter(['amend', '-o', 'lazy_refcounts=off', p]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['dirty-flag']).toBe(false);
    expect(settings(p).lazy).toBe(false);
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
    expect(content(p).subarray(0, 2 << 20).every((b) => b === 4)).toBe(true);
  });
});

describe.skipIf(!HAS_QEMU)('qcow2 amend refcount_bits', () => {
  it('walks every width down and up, each step clean and equal', async () => {
    const p = fresh('widths.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', p, '16M']);
    io(p, 'write -P 1 0 3M', 'write -P 2 12M 1M', 'write -z 1M 64k', 'discard 2M 64k');
    const before = content(p);
    let cur = p;
    for (const bits of [8, 4, 2, 1, 2, 4, 8, 16, 32, 64, 1, 64, 16]) {
      cur = await amendBoth(cur, `refcount_bits=${bits}`);
      expect(settings(cur).bits).toBe(bits);
      expect(content(cur).equals(before)).toBe(true);
    }
  });

  it('refuses a width a refcount does not fit, leaving the image untouched', async () => {
    const p = makeImage();
    const bytes = readFileSync(p);
    const r = await platter(['amend', '-o', 'refcount_bits=1', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^platter: .*: cannot decrease refcount entry width to 1 bits: cluster at offset 0x[0-9a-f]+ has a refcount of 2\n$/);
    expect(readFileSync(p).equals(bytes)).toBe(true);
    // Wide enough for the snapshot's shared clusters: fine.
    expect(settings(await amendBoth(p, 'refcount_bits=2')).bits).toBe(2);
  });
});

describe.skipIf(!HAS_QEMU)('qcow2 amend size and backing', () => {
  it('size grows the image, as resize does', async () => {
    const p = fresh('size.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '8M']);
    io(p, 'write -P 1 0 1M');
    const r = await platter(['amend', '-o', 'size=16M', p]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['virtual-size']).toBe(16 << 20);
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
  });

  it('backing_file may only repeat the current one', async () => {
    const base = backingFile();
    const p = fresh('backed.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', p]);
    expect((await platter(['amend', '-o', `backing_file=${base},backing_fmt=qcow2`, p])).code).toBe(0);
    const r = await platter(['amend', '-o', 'backing_file=other.qcow2', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/backing file cannot be amended/);
  });
});

describe.skipIf(!HAS_QEMU)('qcow2 amend errors', () => {
  const refused = async (args: string[], message: RegExp) => {
    const p = makeImage();
    const bytes = readFileSync(p);
    const r = await platter(['amend', ...args, p]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(message);
    expect(r.stderr.split('\n').length).toBe(2);
    expect(readFileSync(p).equals(bytes)).toBe(true);
    // qemu-img refuses the same.
    expect(shStatus('qemu-img', ['amend', ...args, p]).status).toBe(1);
  };

  it('compat=0.10 with refcount_bits=1', () => refused(['-o', 'compat=0.10,refcount_bits=1'], /refcount_bits other than 16 needs compat=1.1/));
  it('compat=0.10 on an image with 8-bit refcounts', async () => {
    const p = makeImage();
    sh('qemu-img', ['amend', '-o', 'refcount_bits=8', p]);
    const bytes = readFileSync(p);
    const r = await platter(['amend', '-o', 'compat=0.10', p]);
    expect(r.stderr).toMatch(/compat=0.10 requires refcount_bits=16/);
    expect(readFileSync(p).equals(bytes)).toBe(true);
  });
  it('compat=0.10 when a snapshot has another disk size', async () => {
    const p = fresh('grown.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '8M']);
    sh('qemu-img', ['snapshot', '-c', 'small', p]);
    sh('qemu-img', ['resize', '-q', p, '16M']);
    const bytes = readFileSync(p);
    const r = await platter(['amend', '-o', 'compat=0.10', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/internal snapshots prevent downgrade of image/);
    expect(readFileSync(p).equals(bytes)).toBe(true);
    expect(shStatus('qemu-img', ['amend', '-o', 'compat=0.10', p]).status).toBe(1);
  });
  it('size on a compat=0.10 image with snapshots (as qemu-img refuses it), before anything changes', async () => {
    const p = makeImage({ compat: '0.10' });
    const bytes = readFileSync(p);
    const r = await platter(['amend', '-o', 'size=16M', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/a compat=0.10 image with internal snapshots cannot be resized/);
    expect(readFileSync(p).equals(bytes)).toBe(true);
    expect(shStatus('qemu-img', ['amend', '-o', 'size=16M', p]).stderr).toMatch(/Can't resize a v2 image which has snapshots/);
  });
  it('lazy_refcounts with compat=0.10', () => refused(['-o', 'compat=0.10,lazy_refcounts=on'], /lazy_refcounts needs compat=1.1/));
  it('an unknown option', () => refused(['-o', 'foo=1'], /qcow2 does not support option 'foo'/));
  it('an option only creation sets', () => refused(['-o', 'cluster_size=4096'], /option 'cluster_size' can only be set when the image is created/));
  it('a refcount width that is not a power of two', () => refused(['-o', 'refcount_bits=3'], /must be a power of two/));
  it('no -o at all', () => refused([], /must specify options \(-o\)/));

  it('-o help lists what amend can change, with or without -f', async () => {
    const p = makeImage();
    for (const args of [['-f', 'qcow2', '-o', 'help'], ['-o', 'help', p]]) {
      const r = await platter(['amend', ...args]);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^Amend options for 'qcow2':\n/);
      for (const name of ['compat', 'lazy_refcounts', 'refcount_bits', 'size', 'backing_file']) expect(r.stdout).toContain(`  ${name}=`);
      expect(r.stdout).not.toContain('cluster_size');
    }
  });

  it('formats without amend say so', async () => {
    const p = fresh('raw.img');
    sh('qemu-img', ['create', '-q', '-f', 'raw', p, '1M']);
    const r = await platter(['amend', '-f', 'raw', '-o', 'size=2M', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/format driver 'raw' does not support option amendment/);
  });
});

/**
 * Amends a copy of `p` through a file whose writes stop for good after
 * `limit` of them, as if the machine died there. Returns the copy and how
 * many writes the amend made (or tried).
 */
async function amendCrashingAfter(p: string, options: OptionValues, limit: number) {
  const copy = fresh('crash.qcow2');
  copyFileSync(p, copy);
  const file = await openProtocol(copy, { readOnly: false });
  let writes = 0;
  const dies = <A extends unknown[]>(fn: (...args: A) => Promise<void>) => async (...args: A) => {
    if (writes++ >= limit) throw new Error('power cut');
    await fn(...args);
  };
  const crashing: Protocol = Object.assign(Object.create(file) as Protocol, {
    write: dies(file.write.bind(file)),
    truncate: dies(file.truncate.bind(file)),
    writeZeroes: dies(file.writeZeroes.bind(file)),
    discard: dies(file.discard.bind(file)),
  });
  const img = await openQcow2(crashing, false);
  await img.amend(options).catch((err: Error) => expect(err.message).toBe('power cut'));
  await file.close();
  return { copy, writes };
}

describe.skipIf(!HAS_QEMU)('qcow2 amend stopped at any write', () => {
  // Every prefix of the writes must leave an image qemu-img finds consistent
  // (leaks allowed) that reads as before, in its current state and snapshots.
  for (const [what, options] of [
    ['refcount_bits=4', { refcount_bits: 4 }],
    ['refcount_bits=64', { refcount_bits: 64 }],
    ['compat=0.10', { compat: '0.10' }],
  ] as const) {
    it(what, async () => {
      const p = makeImage({ backing: backingFile(), cluster: 4096 });
      const before = content(p);
      const snap = content(p, 'before');
      const { writes } = await amendCrashingAfter(p, options, Infinity);
      expect(writes).toBeGreaterThan(3);
      // Every stopping point when there are few, about 40 spread over them otherwise.
      const step = Math.ceil(writes / 40);
      const limits = new Set([...Array.from({ length: Math.ceil(writes / step) }, (_, k) => k * step), writes - 1]);
      for (const limit of limits) {
        const { copy } = await amendCrashingAfter(p, options, limit);
        const c = qemuCheck(copy);
        expect({ limit, corruptions: c.corruptions, checkErrors: c.checkErrors }, c.text).toEqual({ limit, corruptions: 0, checkErrors: 0 });
        expect(content(copy).equals(before), `content after ${limit} writes`).toBe(true);
        expect(content(copy, 'before').equals(snap), `snapshot after ${limit} writes`).toBe(true);
      }
    });
  }
});
