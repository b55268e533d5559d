/**
 * check for qcow2: count every reference to every host cluster by walking
 * the metadata, compare with the stored refcounts, and check the COPIED
 * flags; optionally repair leaks (refcount too high) and corruptions
 * (refcount too low, wrong flags). Messages and counts follow qemu-img.
 */
import { emptyCheckReport, type CheckReport, type RepairMode } from '../../image/driver.js';
import { decodeL1, decodeL2, hostOf } from './l2.js';
import { OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED } from './limits.js';
import type { Qcow2Image } from './image.js';
import { serializeSnapshotTable } from './snapshot-table.js';
import { readTable } from './tables.js';

const hex = (e: bigint) => e.toString(16);

export async function checkQcow2(img: Qcow2Image, repair: RepairMode, log: (line: string) => void): Promise<CheckReport> {
  const first = await img.exclusive(() => checkOnce(img, repair, log));
  let result = first;
  if (first.leaksFixed || first.corruptionsFixed) {
    // Like qemu-img: after repairing, check again and report that result.
    const second = await img.exclusive(() => checkOnce(img, 'none', () => undefined));
    result = { ...second, leaksFixed: first.leaksFixed, corruptionsFixed: first.corruptionsFixed };
  }
  // A full repair that leaves no corruption lifts the corrupt mark.
  if (repair === 'all' && !result.corruptions && !result.checkErrors) await img.clearCorrupt();
  return result;
}

async function checkOnce(img: Qcow2Image, repair: RepairMode, log: (line: string) => void): Promise<CheckReport> {
  const cs = img.clusterSize;
  const h = img.header;
  const rc = img.refcounts;
  const report: CheckReport = { ...emptyCheckReport(), totalClusters: Math.ceil(h.size / cs) };
  const fileClusters = Math.ceil((await img.proto.size()) / cs);
  const expected = new Uint32Array(fileClusters);
  const beyond = new Map<number, number>();
  const inc = (offset: number, length: number) => {
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + length - 1) / cs); c++) {
      if (c < fileClusters) expected[c]++;
      else beyond.set(c, (beyond.get(c) ?? 0) + 1);
    }
  };
  const corrupt = (line: string) => {
    log(line);
    report.corruptions++;
  };

  inc(0, cs);
  if (h.l1Size) inc(h.l1TableOffset, h.l1Size * 8);
  const rt = rc.tableLocation;
  inc(rt.offset, rt.clusters * cs);
  rc.blocks.forEach((b, i) => {
    if (!b) return;
    if (b % cs) corrupt(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
    else if (b / cs >= fileClusters) corrupt(`ERROR refcount block ${i} is outside image`);
    else inc(b, cs);
  });
  if (h.nbSnapshots) inc(h.snapshotsOffset, serializeSnapshotTable(img.snapshots, h.version).length);
  for (const r of (await img.bitmaps?.references()) ?? []) inc(r.offset, r.length);

  /** Counts an L1 table's L2 tables and clusters; the active one also gathers fragmentation. */
  const walk = async (l1: BigUint64Array, active: boolean) => {
    for (let i = 0; i < l1.length; i++) {
      let l2Offset: number;
      try {
        l2Offset = decodeL1(l1[i], cs, i).offset;
      } catch (err) {
        corrupt(`ERROR ${(err as Error).message}`);
        continue;
      }
      if (!l2Offset) continue;
      inc(l2Offset, cs);
      // Like qemu-img, contiguity is judged within each L2 table.
      let nextContiguous = 0;
      let table: BigUint64Array;
      try {
        table = await img.readL2(l2Offset);
      } catch (err) {
        corrupt(`ERROR ${(err as Error).message}`);
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
            corrupt(`ERROR compressed cluster ${j} with non-zero subcluster allocation bitmap, entry=0x${hex(e)}`);
            continue;
          }
          if (!(e & OFFSET_MASK) && alloc) {
            corrupt('ERROR: Unallocated cluster has non-zero subcluster allocation map');
            bitmap &= ~0xffffffffn;
          } else if ((bitmap >> 32n) & alloc) {
            const host = hex(e & OFFSET_MASK);
            corrupt(`ERROR offset=${host}: Allocated cluster has corrupted subcluster allocation bitmap`);
            bitmap = alloc;
          }
        }
        let m;
        try {
          m = decodeL2(e, img.clusterBits, h.version, () => `L2 entry ${j} of the table at ${l2Offset}`, bitmap, img.externalData);
        } catch (err) {
          corrupt(`ERROR ${(err as Error).message}`);
          continue;
        }
        if (m.kind === 'compressed') {
          inc(m.host, m.length);
          if (active) {
            report.allocatedClusters++;
            report.compressedClusters++;
            report.fragmentedClusters++;
          }
        } else if (hostOf(m) || (img.externalData && m.kind === 'data')) {
          const host = hostOf(m);
          // Clusters of an external data file have no refcounts.
          if (!img.externalData) inc(host, cs);
          if (active) {
            report.allocatedClusters++;
            if (nextContiguous && host !== nextContiguous) report.fragmentedClusters++;
            nextContiguous = host + cs;
          }
        }
      }
    }
  };
  for (const sn of img.snapshots) {
    inc(sn.l1TableOffset, Math.max(1, sn.l1Size * 8));
    await walk(await readTable(img.proto, sn.l1TableOffset, sn.l1Size), false);
  }
  await walk(img.l1Table, true);

  // Stored against counted.
  const indexes = [...Array(fileClusters).keys(), ...[...beyond.keys()].sort((a, b) => a - b)];
  for (const c of indexes) {
    const want = c < fileClusters ? expected[c] : beyond.get(c)!;
    const have = await rc.get(c);
    if (have === want) continue;
    const tooLow = have < want;
    log(`${tooLow ? 'ERROR' : 'Leaked'} cluster ${c} refcount=${have} reference=${want}`);
    if (repair === 'all' || (repair === 'leaks' && !tooLow)) {
      log(`Repairing cluster ${c} refcount=${have} reference=${want}`);
      await rc.update(c, 1, want - have);
      if (tooLow) report.corruptionsFixed++;
      else report.leaksFixed++;
    } else if (tooLow) report.corruptions++;
    else report.leaks++;
  }

  // COPIED flags of the active tables must say "refcount is exactly one".
  const l1 = img.l1Table;
  for (let i = 0; i < l1.length; i++) {
    let l2Offset: number;
    try {
      l2Offset = decodeL1(l1[i], cs, i).offset;
    } catch {
      continue;
    }
    if (!l2Offset) continue;
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
      table = await img.readL2(l2Offset);
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

  // The end of the last cluster in use (references past the end of the file included).
  let last = -1;
  for (const c of beyond.keys()) if (c > last && (await rc.get(c)) > 0) last = c;
  for (let c = fileClusters - 1; c > last; c--) {
    if ((await rc.get(c)) > 0) {
      last = c;
      break;
    }
  }
  report.imageEndOffset = (last + 1) * cs;
  if (report.corruptionsFixed || report.leaksFixed) await img.proto.flush();
  return report;
}
