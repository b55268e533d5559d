/**
 * Rebuilding the refcount structures from the references check counted,
 * for check -r all when the structures themselves are damaged: a refcount
 * block outside the file, misaligned, sharing its cluster with other
 * metadata, or clusters in use that they call free. Mending counts in place
 * would then allocate through the damaged counts and could hand out a
 * cluster in use, overwriting the guest's data; QEMU rebuilds in these
 * cases too (rebuild_refcount_structure).
 *
 * The new blocks and table go into clusters no reference uses (the old
 * structures' own clusters count as used, so they stay intact until the
 * switch), are written and flushed, and one header write switches to them.
 * A crash before that write leaves the old image as it was. The old
 * structures are then unused clusters, which the leak repair that follows
 * gives back.
 */
import { BlockError } from '../../image/errors.js';
import type { ClusterCounts } from './cluster-counts.js';
import type { Qcow2Image } from './image.js';
import { MAX_REFTABLE_BYTES } from './limits.js';
import { loadRefcounts, writeRefcount } from './refcounts.js';

/** Writes new refcount structures holding `counts`, and switches the image to them. */
export async function rebuildRefcounts(img: Qcow2Image, counts: ClusterCounts): Promise<void> {
  const cs = img.clusterSize;
  const { bits, perBlock, max } = img.refcounts;

  // Place a block for every range with counts and a table for them all,
  // until placing them needs no further block or a larger table.
  const blocks = new Map<number, number>();
  let lastBlock = 0;
  let table = { at: -1, clusters: 0 };
  let end = counts.highest() + 1;
  // Each search for a block's cluster goes on from the last one found: from 0 each time, it would scan
  // every cluster in use once per block.
  let free = 0;
  const take = (n: number) => {
    const at = counts.take(free, n);
    if (n === 1) free = at + 1;
    return at;
  };
  for (let placed = true; placed; ) {
    placed = false;
    for (let bi = 0; bi * perBlock < end; bi++) {
      if (blocks.has(bi) || !counts.anyIn(bi * perBlock, (bi + 1) * perBlock)) continue;
      const at = take(1);
      blocks.set(bi, at);
      lastBlock = Math.max(lastBlock, bi);
      end = Math.max(end, at + 1);
      placed = true;
    }
    const need = Math.ceil(((lastBlock + 1) * 8) / cs);
    if (need * cs > MAX_REFTABLE_BYTES) {
      throw new BlockError('Unsupported', 'the rebuilt refcount table would be larger than 8 MiB');
    }
    if (need > table.clusters) {
      if (table.at >= 0) counts.release(table.at, table.clusters);
      table = { at: take(need), clusters: need };
      end = Math.max(end, table.at + need);
      placed = true;
    }
  }

  // Write the blocks, then the table pointing at them, then switch.
  const raw = new Uint8Array(table.clusters * cs);
  const rawView = new DataView(raw.buffer);
  for (const [bi, at] of blocks) {
    const b = new Uint8Array(cs);
    for (let i = 0; i < perBlock; i++) {
      const c = bi * perBlock + i;
      const v = counts.get(c);
      if (v > max) throw new BlockError('Unsupported', `cluster ${c} has ${v} references, more than ${bits}-bit refcounts hold`);
      if (v) writeRefcount(b, i, bits, v);
    }
    await img.proto.write(b, at * cs);
    rawView.setBigUint64(bi * 8, BigInt(at * cs));
  }
  await img.proto.write(raw, table.at * cs);
  await img.proto.flush();
  const h = img.header;
  const before = { offset: h.refcountTableOffset, clusters: h.refcountTableClusters };
  h.refcountTableOffset = table.at * cs;
  h.refcountTableClusters = table.clusters;
  try {
    await img.writeHeader();
    await img.proto.flush();
  } catch (err) {
    h.refcountTableOffset = before.offset;
    h.refcountTableClusters = before.clusters;
    throw err;
  }
  img.replaceRefcounts(await loadRefcounts(img.proto, h));
}
