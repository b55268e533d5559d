/** Internal snapshots both ways with qemu-img: listed, applied, deleted, exported; checks clean. */
import { copyFileSync, readFileSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../image/open.js';
import type { Qcow2Image } from './image.js';
import { platter } from '../../test/cli.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../test/tmp.js';

const MiB = 1 << 20;
const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils') && hasTool('qemu-io', 'apt-get install qemu-utils');
let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir()));
afterAll(() => t?.cleanup());

const clean = (p: string) => {
  const c = qemuCheck(p);
  expect(problems(c), c.text).toEqual(CLEAN);
};
/** The guest content of `p` (or of one of its snapshots) as qemu-img exports it. */
const exported = (p: string, snap?: string) => {
  const out = `${p}.${snap ?? 'now'}.${Math.random().toString(36).slice(2)}.raw`;
  sh('qemu-img', ['convert', ...(snap ? ['-l', `snapshot.name=${snap}`] : []), '-O', 'raw', p, out]);
  return readFileSync(out);
};

describe.skipIf(!HAS_QEMU)('qcow2 snapshots', () => {
  /** qemu-img's image: data, snapshot "one", more data, snapshot "two", more data. */
  function qemuImage(name: string, opts = 'cluster_size=65536'): string {
    const p = t.path(name);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', opts, p, '8M']);
    sh('qemu-io', ['-c', 'write -P 1 0 192k', '-c', 'write -c -P 5 1M 64k', p]);
    sh('qemu-img', ['snapshot', '-c', 'one', p]);
    sh('qemu-io', ['-c', 'write -P 2 64k 64k', '-c', 'write -z 128k 64k', p]);
    sh('qemu-img', ['snapshot', '-c', 'two', p]);
    sh('qemu-io', ['-c', 'write -P 3 100k 3k', '-c', 'discard 1M 64k', p]);
    return p;
  }

  it('lists qemu-img snapshots exactly as qemu-img does, in info too', async () => {
    const p = qemuImage('list.qcow2');
    expect((await platter(['snapshot', '-l', p])).stdout).toBe(sh('qemu-img', ['snapshot', '-l', p]));
    expect((await platter(['info', p])).stdout).toBe(sh('qemu-img', ['info', p]));
    expect((await platter(['info', '--output=json', p])).stdout).toBe(sh('qemu-img', ['info', '--output=json', p]));
  });

  it('info on an image with snapshots and a backing file prints what qemu-img prints, key for key', async () => {
    const base = qemuImage('listed-base.qcow2');
    const p = t.path('listed-top.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', p]);
    sh('qemu-img', ['snapshot', '-c', 'top', p]);
    for (const args of [['info'], ['info', '--output=json'], ['info', '--output=json', '--backing-chain']]) {
      expect((await platter([...args, p])).stdout, args.join(' ')).toBe(sh('qemu-img', [...args, p]));
    }
  });

  it.each([['cluster_size=65536'], ['cluster_size=512'], ['compat=0.10'], ['cluster_size=4096,refcount_bits=64']])(
    'applies and deletes qemu-img snapshots (%s), checks clean',
    async (opts) => {
      const p = qemuImage(`apply-${opts.replace(/\W/g, '')}.qcow2`, opts);
      const one = exported(p, 'one');
      const two = exported(p, 'two');
      expect((await platter(['snapshot', '-a', 'one', p])).code).toBe(0);
      clean(p);
      expect(exported(p).equals(one)).toBe(true);
      expect((await platter(['snapshot', '-d', 'one', p])).code).toBe(0);
      clean(p);
      expect(exported(p).equals(one)).toBe(true);
      expect(exported(p, 'two').equals(two)).toBe(true);
      expect(sh('qemu-img', ['snapshot', '-l', p])).not.toContain(' one ');
      expect((await platter(['snapshot', '-d', 'two', p])).code).toBe(0);
      clean(p);
      expect(sh('qemu-img', ['snapshot', '-l', p])).toBe('');
      expect(exported(p).equals(one)).toBe(true);
    },
  );

  it('snapshots Platter makes are kept intact by writes and are usable by qemu-img', async () => {
    const p = t.path('ours.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '4M']);
    sh('qemu-io', ['-c', 'write -P 7 0 256k', p]);
    const before = exported(p);
    expect((await platter(['snapshot', '-c', 'base', p])).code).toBe(0);
    clean(p);
    // Write through Platter: the shared clusters must be copied, not overwritten.
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    await img.write(new Uint8Array(70000).fill(9), 1000);
    await img.writeZeroes(131072, 65536, true);
    await img.close();
    clean(p);
    expect(exported(p, 'base').equals(before)).toBe(true);
    expect(exported(p).equals(before)).toBe(false);
    // qemu-img sees and applies it.
    expect(sh('qemu-img', ['snapshot', '-l', p])).toMatch(/\n1\s+base\s/);
    sh('qemu-img', ['snapshot', '-a', 'base', p]);
    clean(p);
    expect(exported(p).equals(before)).toBe(true);
    // And Platter deletes what qemu-img made.
    sh('qemu-img', ['snapshot', '-c', 'q', p]);
    expect((await platter(['snapshot', '-d', 'q', p])).code).toBe(0);
    clean(p);
  });

  it('reuses the clusters of a deleted snapshot for data in the same session', async () => {
    // Found by crash.test.ts: deleting a snapshot read its L2 tables into the
    // cache and freed them; data later written to such a cluster was taken
    // for an overwrite of an L2 table, and the image was marked corrupt.
    const p = t.path('reuse.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '4M']);
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    const layer = img.layer as Qcow2Image;
    await img.write(new Uint8Array(65536).fill(1), 0);
    await layer.createSnapshot('s');
    await img.write(new Uint8Array(65536).fill(2), 0);
    await layer.deleteSnapshot('s');
    // New clusters take the freed ones (the snapshot's L2 table among them); then rewrite them in place.
    for (const at of [1, 2, 3]) await img.write(new Uint8Array(65536).fill(at + 2), at * MiB);
    for (const at of [1, 2, 3]) await img.write(new Uint8Array(100).fill(9), at * MiB + 100);
    await img.close();
    clean(p);
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['format-specific'].data.corrupt).toBe(false);
    const data = exported(p);
    for (const at of [1, 2, 3]) expect([data[at * MiB], data[at * MiB + 100]]).toEqual([at + 2, 9]);
  });

  /** Snapshots with IDs 1, 2 and 3 named '2', '1' and 'x', holding 1s, 2s and 3s. */
  function namedLikeIds(name: string): string {
    const p = t.path(name);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '1M']);
    for (const [tag, fill] of [['2', 1], ['1', 2], ['x', 3]] as const) {
      sh('qemu-io', ['-c', `write -P ${fill} 0 64k`, p]);
      sh('qemu-img', ['snapshot', '-c', tag, p]);
    }
    return p;
  }

  it('convert -l picks the snapshot qemu-img picks: snapshot.name by name only, snapshot.id by ID only, both when both are given', async () => {
    const p = namedLikeIds('pick.qcow2');
    for (const l of ['snapshot.name=1', 'snapshot.id=1', '1', 'snapshot.id=1,snapshot.name=2', 'snapshot.id=1,snapshot.name=1']) {
      const [out, ref] = [t.path('pick.raw'), t.path('pick.qemu.raw')];
      const r = await platter(['convert', '-l', l, '-O', 'raw', p, out]);
      const q = shStatus('qemu-img', ['convert', '-l', l, '-O', 'raw', p, ref]);
      expect(r.code, l).toBe(q.status);
      if (q.status === 0) expect(readFileSync(out).equals(readFileSync(ref)), l).toBe(true);
      else expect(r.stderr).toBe(`platter: ${p}: no snapshot with ID 1 and name '1'\n`);
      rmSync(out, { force: true });
      rmSync(ref, { force: true });
    }
  });

  it('convert -l exports a snapshot like qemu-img convert -l', async () => {
    const p = qemuImage('export.qcow2');
    for (const l of ['snapshot.name=one', 'two', 'snapshot.id=1']) {
      const out = t.path(`export-${l.replace(/\W/g, '')}.raw`);
      expect((await platter(['convert', '-l', l, '-O', 'raw', p, out])).code).toBe(0);
      const ref = t.path(`export-${l.replace(/\W/g, '')}.qemu.raw`);
      sh('qemu-img', ['convert', '-l', l, '-O', 'raw', p, ref]);
      expect(readFileSync(out).equals(readFileSync(ref))).toBe(true);
    }
  });

  it('an image with snapshots grows and shrinks as qemu-img resizes it; each snapshot keeps its own size', async () => {
    const p = qemuImage('resize.qcow2');
    const q = t.path('resize-qemu.qcow2');
    copyFileSync(p, q);
    const snapshotsBefore = ['one', 'two'].map((snap) => exported(p, snap));
    const same = async () => {
      clean(p);
      expect(exported(p).equals(exported(q))).toBe(true);
      for (const snap of ['one', 'two']) expect(exported(p, snap).equals(exported(q, snap)), snap).toBe(true);
      // Platter exports a snapshot at the size it was taken at (qemu-img: at the image's size now).
      for (const [i, snap] of ['one', 'two'].entries()) {
        const out = t.path(`resized-${snap}.raw`);
        expect((await platter(['convert', '-l', snap, '-O', 'raw', p, out])).code).toBe(0);
        expect(readFileSync(out).equals(snapshotsBefore[i]), snap).toBe(true);
      }
    };

    expect((await platter(['resize', p, '24M'])).code).toBe(0);
    sh('qemu-img', ['resize', '-q', q, '24M']);
    await same();
    // The grown area takes data, through the active view only.
    const img = await openImage(p, { format: 'qcow2', readOnly: false });
    await img.write(new Uint8Array(65536).fill(6), 20 * MiB);
    await img.close();
    sh('qemu-io', ['-c', 'write -P 6 20M 64k', q]);
    await same();

    expect((await platter(['resize', '--shrink', p, '4M'])).code).toBe(0);
    sh('qemu-img', ['resize', '-q', '--shrink', q, '4M']);
    await same();

    // Applying a snapshot brings back its size.
    expect((await platter(['snapshot', '-a', 'one', p])).code).toBe(0);
    sh('qemu-img', ['snapshot', '-a', 'one', q]);
    expect(JSON.parse(sh('qemu-img', ['info', '--output=json', p]))['virtual-size']).toBe(8 * MiB);
    await same();
  });

  it('refuses snapshots where refcounts cannot count two, changing nothing', async () => {
    const p = t.path('rc1.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1', p, '1M']);
    sh('qemu-io', ['-c', 'write -P 1 0 64k', p]);
    const before = readFileSync(p);
    const r = await platter(['snapshot', '-c', 'x', p]);
    expect(r.stderr).toBe(`platter: ${p}: an image with refcount_bits=1 cannot hold snapshots\n`);
    expect(readFileSync(p).equals(before)).toBe(true);
    // With 2-bit refcounts a compressed host cluster shared by several guest
    // clusters already counts more than one: a snapshot would overflow it.
    const p2 = t.path('rc2.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=2', p2, '1M']);
    sh('qemu-io', ['-c', 'write -c -P 5 0 64k', p2]);
    const before2 = readFileSync(p2);
    const r2 = await platter(['snapshot', '-c', 'x', p2]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/refcount above 3 \(refcount_bits too small\)\n$/);
    clean(p2);
    expect(readFileSync(p2).equals(before2)).toBe(true);
  });

  it('a disk of size 0 (an empty L1 table, which takes no cluster): snapshots made by either tool check clean in both', async () => {
    for (const maker of ['qemu', 'platter'] as const) {
      const p = t.path(`empty-${maker}.qcow2`);
      if (maker === 'qemu') {
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '0']);
        for (const name of ['s1', 's2']) sh('qemu-img', ['snapshot', '-c', name, p]);
      } else {
        expect((await platter(['create', '-q', '-f', 'qcow2', p, '0'])).code).toBe(0);
        for (const name of ['s1', 's2']) expect((await platter(['snapshot', '-c', name, p])).code).toBe(0);
      }
      clean(p);
      expect((await platter(['check', p])).code, maker).toBe(0);
      for (const args of [['-a', 's2'], ['-d', 's1']]) {
        const r = await platter(['snapshot', ...args, p]);
        expect(r.code, `${maker} ${args.join(' ')}: ${r.stderr}`).toBe(0);
        clean(p);
      }
    }
  });

  it('applies by ID or name but deletes by name only, as qemu-img: an ID that is another name never deletes the wrong one', async () => {
    const names = (p: string) => sh('qemu-img', ['snapshot', '-l', p]).split('\n').slice(2, -1).map((l) => l.split(/\s+/).slice(0, 2).join(' '));
    const [ours, theirs] = [namedLikeIds('ids-platter.qcow2'), namedLikeIds('ids-qemu.qcow2')];
    expect((await platter(['snapshot', '-d', '1', ours])).code).toBe(0);
    sh('qemu-img', ['snapshot', '-d', '1', theirs]);
    expect(names(ours)).toEqual(['1 2', '3 x']);
    expect(names(ours)).toEqual(names(theirs));
    const r = await platter(['snapshot', '-d', '3', ours]);
    expect(r).toMatchObject({ code: 1, stderr: `platter: ${ours}: no snapshot named '3' (snapshots are deleted by name: ID 3 is 'x')\n` });
    // Apply takes the ID first: ID 1 is the snapshot named '2', whose data is 1s.
    expect((await platter(['snapshot', '-a', '1', ours])).code).toBe(0);
    expect(exported(ours).subarray(0, 64 * 1024).every((b) => b === 1)).toBe(true);
    clean(ours);
  });

  it('unknown snapshots and formats without snapshots give one line', async () => {
    const p = qemuImage('errors.qcow2');
    const r = await platter(['snapshot', '-a', 'nope', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`platter: ${p}: no snapshot named 'nope'\n`);
    const raw = t.path('plain.raw');
    sh('qemu-img', ['create', '-q', '-f', 'raw', raw, '1M']);
    expect((await platter(['snapshot', '-c', 'x', raw])).stderr).toBe(`platter: ${raw}: raw images have no internal snapshots\n`);
  });
});
