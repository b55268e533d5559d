/**
 * check for qcow2: count every reference to every host cluster by walking
 * the metadata, compare with the stored refcounts, and check the COPIED
 * flags; optionally repair leaks (refcount too high) and corruptions
 * (refcount too low, wrong flags), rebuilding the refcount structures where
 * they themselves are damaged (rebuild.ts). Messages, counts and order
 * follow qemu-img.
 */
import { emptyCheckReport, type CheckReport, type RepairMode } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { ClusterCounts } from './cluster-counts.js';
import { decodeL1, decodeL2, hostOf } from './l2.js';
import { OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED } from './limits.js';
import type { Qcow2Image } from './image.js';
import { rebuildRefcounts } from './rebuild.js';
import type { RefcountDamage } from './refcounts.js';
import { saveSnapshotTable, storedSnapshotTable } from './snapshots.js';
import { readTable } from './tables.js';

const hex = (e: bigint) => e.toString(16);

type Log = (line: string) => void;

/**
 * An L2 table as the file holds it, even where it overlaps other metadata
 * (which the counts then show), as qemu-img check reads it. Whatever the
 * image changed is in the file: check runs inside Qcow2Image.exclusive.
 */
function storedL2(img: Qcow2Image, offset: number): Promise<BigUint64Array> {
  return readTable(img.proto, offset, img.clusterSize / 8);
}

export async function checkQcow2(img: Qcow2Image, repair: RepairMode, log: Log): Promise<CheckReport> {
  // First, as in qemu-img: version 3 wants at least 16 bytes of extra data in every snapshot table entry.
  const stored = img.header.version >= 3 ? (await storedSnapshotTable(img)).entries : [];
  const incomplete = stored.flatMap((e, i) => ((e.extraBytes ?? 0) < 16 ? [i] : []));
  for (const i of incomplete) log(`${repair === 'all' ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`);
  const first = await img.exclusive(() => checkOnce(img, repair, log));
  let result = first;
  let snapshotsFixed = 0;
  if (incomplete.length && repair === 'all' && !first.corruptions && !first.checkErrors) {
    // Rewritten whole, with the extra data (the counts are sound now: new clusters can be taken).
    await img.exclusive(() => saveSnapshotTable(img, img.snapshots));
    snapshotsFixed = incomplete.length;
  }
  if (first.leaksFixed || first.corruptionsFixed || snapshotsFixed) {
    // Like qemu-img: after repairing, check again and report that result.
    const second = await img.exclusive(() => checkOnce(img, 'none', () => undefined));
    result = { ...second, leaksFixed: first.leaksFixed, corruptionsFixed: first.corruptionsFixed + snapshotsFixed };
  }
  result.corruptions += incomplete.length - snapshotsFixed;
  // A full repair that leaves no corruption lifts the corrupt mark.
  if (repair === 'all' && !result.corruptions && !result.checkErrors) await img.clearCorrupt();
  return result;
}

/** What qemu-img calls a damaged refcount table entry. */
const DAMAGE: Record<RefcountDamage, (i: number) => string> = {
  reserved: (i) => `ERROR refcount table entry ${i} has reserved bits set`,
  misaligned: (i) => `ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`,
  outside: (i) => `ERROR refcount block ${i} is outside image`,
};

/**
 * One pass, in qemu-img's order: count the references to every host
 * cluster, compare them with the stored refcounts, mend them, then the
 * COPIED flags. Counts are mended in place, unless the refcount structures
 * themselves are damaged (see rebuild.ts): then -r all rebuilds them and
 * checks again, and -r leaks refuses, as qemu-img does.
 */
async function checkOnce(img: Qcow2Image, repair: RepairMode, log: Log, rebuilt = false): Promise<CheckReport> {
  const report: CheckReport = { ...emptyCheckReport(), totalClusters: Math.ceil(img.size / img.clusterSize) };
  // After a rebuild qemu-img compares the counts once more only to mend
  // them: what this pass finds is not reported again, only what it repairs.
  const tally = new Tally(img, await img.proto.size(), report, rebuilt ? () => undefined : log);
  await tally.countAll();
  const found = { corruptions: report.corruptions, leaks: report.leaks };
  const { differences, highest } = await compareCounts(tally);
  if (tally.rebuild && repair === 'all') {
    if (rebuilt) throw new BlockError('Corrupt', 'the rebuilt refcount structures are still broken');
    log('Rebuilding refcount structure');
    // Blocks still read past reserved bits stay intact until the switch; the next pass frees them.
    for (const i of img.refcounts.damaged.keys()) {
      const b = img.refcounts.blocks[i];
      if (b && b < tally.fileSize) tally.counts.add(b / img.clusterSize);
    }
    await rebuildRefcounts(img, tally.counts);
    // The old structures are now unused clusters: the next pass gives them back.
    const after = await checkOnce(img, 'all', log, true);
    return {
      ...after,
      corruptionsFixed: after.corruptionsFixed + Math.max(0, report.corruptions - after.corruptions),
      leaksFixed: Math.max(0, report.leaks - after.leaks),
    };
  }
  if (tally.rebuild && repair === 'leaks') {
    log('ERROR need to rebuild refcount structures');
    throw new BlockError('Corrupt', 'check failed: the refcount structures must be rebuilt, which only -r all does', { op: 'check' });
  }
  if (repair !== 'none') {
    Object.assign(report, found);
    await mendCounts(img, differences, repair, report, log);
  }
  if (repair === 'all') await clearEmptyL1Entries(img, tally.emptyL1Entries, report, log);
  await checkCopiedFlags(img, repair, report, log);
  report.imageEndOffset = (highest + 1) * img.clusterSize;
  if (report.corruptionsFixed || report.leaksFixed) await img.proto.flush();
  return report;
}

/** The references to every host cluster, counted by walking the metadata; and whether the refcount structures need a rebuild. */
class Tally {
  readonly counts = new ClusterCounts();
  /** Mending counts in place would allocate through damaged structures: they must be rebuilt. */
  rebuild = false;
  /**
   * L1 entries with flags but no L2 table (offset 0): where each is in the
   * file, and its index when it is in the active table (which the image
   * also holds in memory). Reads take them as unallocated, but qemu-img
   * check would take the header for an L2 table. -r all clears them.
   */
  readonly emptyL1Entries: { at: number; active?: number }[] = [];

  constructor(
    readonly img: Qcow2Image,
    readonly fileSize: number,
    readonly report: CheckReport,
    readonly log: Log,
  ) {}

  corrupt(line: string): void {
    this.log(line);
    this.report.corruptions++;
  }

  /** Counts a reference to every cluster [offset, offset + length) touches. */
  inc(offset: number, length: number): void {
    const cs = this.img.clusterSize;
    if (length <= 0) return;
    // As qemu-img: a reference reaching a cluster or more past the file's end is not counted.
    if (offset + length - this.fileSize >= cs) {
      const hexOf = (n: number) => n.toString(16);
      this.corrupt(
        'ERROR: counting reference for region exceeding the end of the file by one cluster or more: ' +
          `offset 0x${hexOf(offset)} size 0x${hexOf(length)}`,
      );
      return;
    }
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + length - 1) / cs); c++) this.counts.add(c);
  }

  async countAll(): Promise<void> {
    const { img } = this;
    const cs = img.clusterSize;
    const h = img.header;
    const rc = img.refcounts;
    this.inc(0, cs);
    if (h.l1Size) this.inc(h.l1TableOffset, h.l1Size * 8);
    await this.walk(img.l1Table, h.l1TableOffset, true);
    for (const sn of img.snapshots) {
      this.inc(sn.l1TableOffset, sn.l1Size * 8);
      await this.walk(await readTable(img.proto, sn.l1TableOffset, sn.l1Size), sn.l1TableOffset, false);
    }
    if (h.nbSnapshots) this.inc(h.snapshotsOffset, (await storedSnapshotTable(img)).size);
    const rt = rc.tableLocation;
    this.inc(rt.offset, rt.clusters * cs);
    for (const r of (await img.bitmaps?.references()) ?? []) this.inc(r.offset, r.length);
    // Last, the refcount blocks: each must be in the file, and used by nothing else.
    for (let i = 0; i < rc.blocks.length; i++) {
      const damage = rc.damaged.get(i)?.kind;
      const b = rc.blocks[i];
      if (damage || b >= this.fileSize) {
        // Not counted, as in qemu-img: a block still read past reserved bits shows as leaked.
        this.corrupt(DAMAGE[damage ?? 'outside'](i));
        this.rebuild = true;
      } else if (b) {
        this.inc(b, cs);
        const n = this.counts.get(b / cs);
        if (n !== 1) {
          this.corrupt(`ERROR refcount block ${i} refcount=${n}`);
          this.rebuild = true;
        }
      }
    }
  }

  /** Counts the L2 tables and clusters of the L1 table at `at`; the active one also gathers fragmentation. */
  private async walk(l1: BigUint64Array, at: number, active: boolean): Promise<void> {
    const { img, report } = this;
    const cs = img.clusterSize;
    for (let i = 0; i < l1.length; i++) {
      let l2Offset: number;
      try {
        l2Offset = decodeL1(l1[i], cs, i).offset;
      } catch (err) {
        this.corrupt(`ERROR ${(err as Error).message}`);
        continue;
      }
      if (!l2Offset) {
        if (l1[i]) {
          this.corrupt(`ERROR L1 entry ${i} has flags set but no L2 table: 0x${hex(l1[i])}`);
          this.emptyL1Entries.push({ at: at + i * 8, active: active ? i : undefined });
        }
        continue;
      }
      this.inc(l2Offset, cs);
      // Like qemu-img, contiguity is judged within each L2 table.
      let nextContiguous = 0;
      let table: BigUint64Array;
      try {
        table = await storedL2(img, l2Offset);
      } catch (err) {
        this.corrupt(`ERROR ${(err as Error).message}`);
        continue;
      }
      for (let j = 0; j < img.l2Entries; j++) {
        const e = table[j * img.l2Stride];
        let bitmap = img.extended ? table[j * 2 + 1] : undefined;
        if (bitmap) {
          // Subcluster bitmaps, judged as qemu-img check judges them.
          const alloc = bitmap & 0xffffffffn;
          if (e & OFLAG_COMPRESSED) {
            // Not counted either: its clusters then show as leaked, as in qemu-img.
            this.corrupt(`ERROR compressed cluster ${j} with non-zero subcluster allocation bitmap, entry=0x${hex(e)}`);
            continue;
          }
          if (!(e & OFFSET_MASK) && alloc) {
            this.corrupt('ERROR: Unallocated cluster has non-zero subcluster allocation map');
            bitmap &= ~0xffffffffn;
          } else if ((bitmap >> 32n) & alloc) {
            const host = hex(e & OFFSET_MASK);
            this.corrupt(`ERROR offset=${host}: Allocated cluster has corrupted subcluster allocation bitmap`);
            bitmap = alloc;
          }
        }
        let m;
        try {
          m = decodeL2(e, img.clusterBits, img.header.version, () => `L2 entry ${j} of the table at ${l2Offset}`, bitmap, img.externalData);
        } catch (err) {
          this.corrupt(`ERROR ${(err as Error).message}`);
          continue;
        }
        if (m.kind === 'compressed') {
          this.inc(m.host, m.length);
          if (active) {
            report.allocatedClusters++;
            report.compressedClusters++;
            report.fragmentedClusters++;
          }
        } else if (hostOf(m) || (img.externalData && m.kind === 'data')) {
          const host = hostOf(m);
          // Clusters of an external data file have no refcounts.
          if (!img.externalData) this.inc(host, cs);
          if (active) {
            report.allocatedClusters++;
            if (nextContiguous && host !== nextContiguous) report.fragmentedClusters++;
            nextContiguous = host + cs;
          }
        }
      }
    }
  }
}

/** A cluster whose stored refcount is not the references counted. */
interface Difference {
  c: number;
  have: number;
  want: number;
}

/**
 * Stored refcounts against counted references, each difference reported
 * as qemu-img reports it (and counted in the report). A cluster in use that
 * the stored counts call free means a rebuild: anything allocated since may
 * have taken it. Also the highest cluster in use either way.
 */
async function compareCounts(tally: Tally): Promise<{ differences: Difference[]; highest: number }> {
  const { img, counts, report, log } = tally;
  const rc = img.refcounts;
  // Up to the file's end, or one cluster past it: a compressed cluster at the end may run over (see Tally.inc).
  const end = Math.max(Math.ceil(tally.fileSize / img.clusterSize), counts.highest() + 1);
  const differences: Difference[] = [];
  // As in qemu-img: the header's cluster at least, even when no count could be read.
  let highest = 0;
  let signalled = false;
  for (let c = 0; c < end; c++) {
    const bi = Math.floor(c / rc.perBlock);
    const misaligned = rc.damaged.get(bi);
    if (misaligned?.kind === 'misaligned') {
      // Its counts cannot be read: qemu-img says so for each cluster, as a check error.
      if (!signalled) {
        const where = `Refblock offset 0x${misaligned.offset.toString(16)} unaligned (reftable index: ${bi})`;
        log(`qcow2: Image is corrupt: ${where}; further non-fatal corruption events will be suppressed`);
        signalled = true;
      }
      log(`Can't get refcount for cluster ${c}: Input/output error`);
      report.checkErrors++;
      continue;
    }
    // A range no block stores and nothing references: skip it whole (a sparse file may be huge).
    if (c % rc.perBlock === 0 && !rc.blocks[bi] && !counts.anyIn(c, c + rc.perBlock)) {
      c += rc.perBlock - 1;
      continue;
    }
    const have = await rc.get(c);
    const want = counts.get(c);
    if (have || want) highest = c;
    if (have === want) continue;
    if (have === 0) tally.rebuild = true;
    differences.push({ c, have, want });
    log(`${have < want ? 'ERROR' : 'Leaked'} cluster ${c} refcount=${have} reference=${want}`);
    if (have < want) report.corruptions++;
    else report.leaks++;
  }
  return { differences, highest };
}

/** Mends the differences in place (leaks only, or all), reported again as qemu-img's second pass reports them. */
async function mendCounts(img: Qcow2Image, differences: Difference[], repair: RepairMode, report: CheckReport, log: Log): Promise<void> {
  for (const { c, have, want } of differences) {
    const tooLow = have < want;
    if (repair === 'all' || !tooLow) {
      log(`Repairing cluster ${c} refcount=${have} reference=${want}`);
      await img.refcounts.update(c, 1, want - have);
      if (tooLow) report.corruptionsFixed++;
      else report.leaksFixed++;
    } else {
      log(`ERROR cluster ${c} refcount=${have} reference=${want}`);
      report.corruptions++;
    }
  }
}

/** Clears L1 entries that have flags but no L2 table (reads see no difference: both mean unallocated). */
async function clearEmptyL1Entries(img: Qcow2Image, entries: Tally['emptyL1Entries'], report: CheckReport, log: Log): Promise<void> {
  for (const { at, active } of entries) {
    log(`Repairing L1 entry at offset ${at}: flags without an L2 table cleared`);
    if (active !== undefined) await img.rewriteL1Entry(active, 0n);
    else await img.proto.write(new Uint8Array(8), at);
    report.corruptions--;
    report.corruptionsFixed++;
  }
}

/** The COPIED flags of the active tables must say "refcount is exactly one"; -r all sets them right. */
async function checkCopiedFlags(img: Qcow2Image, repair: RepairMode, report: CheckReport, log: Log): Promise<void> {
  const cs = img.clusterSize;
  const rc = img.refcounts;
  // A count that cannot be read was reported already; like qemu-img, no flag is judged by it.
  const unreadable = (c: number) => rc.damaged.get(Math.floor(c / rc.perBlock))?.kind === 'misaligned';
  const l1 = img.l1Table;
  for (let i = 0; i < l1.length; i++) {
    let l2Offset: number;
    try {
      l2Offset = decodeL1(l1[i], cs, i).offset;
    } catch {
      continue;
    }
    if (!l2Offset) continue;
    if (unreadable(l2Offset / cs)) continue;
    const l2rc = await rc.get(l2Offset / cs);
    const copied = (l1[i] & OFLAG_COPIED) !== 0n;
    if ((l2rc === 1) !== copied) {
      log(`ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex(l1[i])} refcount=${l2rc}`);
      if (repair === 'all') {
        await img.rewriteL1Entry(i, l2rc === 1 ? l1[i] | OFLAG_COPIED : l1[i] & ~OFLAG_COPIED);
        report.corruptionsFixed++;
      } else report.corruptions++;
    }
    let table: BigUint64Array;
    try {
      table = await storedL2(img, l2Offset);
    } catch {
      continue;
    }
    for (let j = 0; j < img.l2Entries; j++) {
      let m;
      try {
        m = img.entryAt(table, j, () => '');
      } catch {
        continue;
      }
      const host = hostOf(m);
      if (!host && !(img.externalData && m.kind === 'data')) continue;
      if (!img.externalData && unreadable(host / cs)) continue;
      const e = table[j * img.l2Stride];
      // Clusters of an external data file have no refcounts; they are always the image's own.
      const drc = img.externalData ? 1 : await rc.get(host / cs);
      if ((drc === 1) !== (e & OFLAG_COPIED) > 0n) {
        log(`ERROR OFLAG_COPIED data cluster: l2_entry=${hex(e)} refcount=${drc}`);
        if (repair === 'all') {
          await img.rewriteL2Entry(l2Offset, j, drc === 1 ? e | OFLAG_COPIED : e & ~OFLAG_COPIED);
          report.corruptionsFixed++;
        } else report.corruptions++;
      }
    }
  }
}
