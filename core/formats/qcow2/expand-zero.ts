/**
 * Version 2 has no zero clusters: before a downgrade every zero cluster, in
 * the active L2 tables and in every snapshot's, becomes something version 2
 * can say. Without a backing file an unallocated cluster reads as zeros, so
 * zero clusters with no host cluster simply become unallocated; the others
 * become data clusters whose host cluster is filled with zeros first (their
 * own preallocated one, or a new one). As in QEMU.
 */
import { BlockError } from '../../image/errors.js';
import type { Qcow2Image } from './image.js';
import { decodeL1, decodeL2, encodeL2 } from './l2.js';
import { encodeTable, readTable } from './tables.js';

export async function expandZeroClusters(
  img: Qcow2Image,
  progress: (done: number, total: number) => void = () => undefined,
): Promise<void> {
  const cs = img.clusterSize;
  const backed = img.header.backingFile !== undefined;
  const l1s = [img.l1Table];
  for (const sn of img.snapshots) l1s.push(await readTable(img.proto, sn.l1TableOffset, sn.l1Size));
  const total = l1s.reduce((n, l1) => n + l1.length, 0);
  const zeros = new Uint8Array(cs);
  // Snapshots share L2 tables with each other and the active view: each is expanded once.
  const seen = new Set<number>();
  let done = 0;
  try {
    for (const l1 of l1s) {
      for (let i = 0; i < l1.length; i++) {
        progress(done++, total);
        const { offset } = decodeL1(l1[i], cs, i);
        if (!offset || seen.has(offset)) continue;
        seen.add(offset);
        // Every L1 table that reaches this L2 table holds one reference on each of its clusters.
        const refs = await img.refcounts.get(offset / cs);
        if (!refs) throw new BlockError('Corrupt', `the L2 table at ${offset} has a refcount of 0; repair the image with check -r all`);
        const table = BigUint64Array.from(await img.readL2(offset));
        const released: number[] = [];
        let changed = false;
        for (let j = 0; j < table.length; j++) {
          const m = decodeL2(table[j], img.clusterBits, img.header.version, () => `L2 entry ${j} of the table at ${offset}`);
          if (m.kind !== 'zero') continue;
          changed = true;
          if (!m.host && !backed) {
            table[j] = 0n;
            continue;
          }
          const own = m.host ? await img.refcounts.get(m.host / cs) : 0;
          if (m.host && own < refs) {
            throw new BlockError('Corrupt', `the zero cluster at ${m.host} has a refcount too low; repair the image with check -r all`);
          }
          let host: number;
          if (m.host && own === refs) {
            // Only this table uses it: zero it where it is.
            const overlap = img.metadataOverlap(m.host, cs, true);
            if (overlap) throw new BlockError('Corrupt', `the zero cluster at ${m.host} overlaps the ${overlap}; repair the image with check -r all`);
            host = m.host;
          } else {
            // None, or shared with other tables that may read it as data: a new one, counted for every L1 first.
            host = await img.refcounts.allocate(1);
            if (refs > 1) await img.refcounts.update(host / cs, 1, refs - 1);
            if (m.host) released.push(m.host);
          }
          await img.proto.write(zeros, host);
          table[j] = encodeL2({ kind: 'data', host, copied: refs === 1 }, img.clusterBits);
        }
        if (!changed) continue;
        // The zeros are on disk before the table points at them.
        await img.proto.flush();
        await img.proto.write(encodeTable(table, cs), offset);
        await img.proto.flush();
        for (const host of released) await img.refcounts.update(host / cs, 1, -refs);
      }
    }
  } finally {
    // The tables were rewritten behind the cache.
    img.dropL2Cache();
  }
  progress(total, total);
}
