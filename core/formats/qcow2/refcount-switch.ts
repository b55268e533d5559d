/**
 * Moving an image to new refcount structures in one header write, in the
 * crash-safe order QEMU uses for a change of refcount width: the new
 * refcount blocks and table are allocated through the old structures (so the
 * copied counts include them), written, then one header write switches to
 * them, and only then are the old structures freed through the new ones. A
 * crash at any point leaves a consistent image that at most leaks clusters.
 *
 * Two users: amend's change of refcount width, and snapshot operations,
 * whose new counts (and new active L1 table and snapshot list, switched by
 * the same header write) must take effect at the same moment, because the
 * COPIED flags of the active tables must agree with the counts at every
 * point a crash can stop at.
 */
import { BlockError } from '../../image/errors.js';
import type { Qcow2Header } from './header.js';
import type { Qcow2Image } from './image.js';
import { MAX_REFTABLE_BYTES } from './limits.js';
import { isZero } from '../../io/zero.js';
import { loadRefcounts, readRefcount, writeRefcount, type RefcountTableLocation } from './refcounts.js';

export interface RefcountSwitch {
  /** log2 of the new refcount width (default: the current one). */
  order?: number;
  /** Changes to the counts, by cluster index, that the new structures hold. */
  delta?: ReadonlyMap<number, number>;
  /** Other header fields the same header write changes. */
  header?: Partial<Qcow2Header>;
  /** Structures no longer used once the header points elsewhere: freed through the new counts. */
  freeAfter?: { offset: number; clusters: number }[];
  progress?: (done: number, total: number) => void;
}

export async function switchRefcounts(img: Qcow2Image, opts: RefcountSwitch): Promise<void> {
  const order = opts.order ?? img.header.refcountOrder;
  const delta = opts.delta ?? new Map<number, number>();
  const progress = opts.progress ?? (() => undefined);
  const cs = img.clusterSize;
  const old = img.refcounts;
  const bits = 2 ** order;
  const perBlock = (cs * 8) / bits;
  // Wider than 53 bits holds anything a refcount read here can be.
  const max = bits >= 53 ? Infinity : 2 ** bits - 1;

  /** The deltas by the new block holding their counts: [index in the block, delta]. */
  const changes = new Map<number, [number, number][]>();
  for (const [c, d] of delta) {
    const nb = Math.floor(c / perBlock);
    let list = changes.get(nb);
    if (!list) changes.set(nb, (list = []));
    list.push([c % perBlock, d]);
  }
  const checked = (c: number, v: number): number => {
    if (v < 0) throw new BlockError('Corrupt', `refcount of cluster ${c} would drop below zero`);
    if (v > max) {
      const at = `cluster at offset 0x${(c * cs).toString(16)}`;
      const why = `${at} has a refcount of ${v}`;
      throw new BlockError('Unsupported', `cannot decrease refcount entry width to ${bits} bits: ${why}`);
    }
    return v;
  };
  const scratch = new Uint8Array(cs);

  /**
   * Whether any cluster new block `nb` covers is in use, reading the counts
   * through the old structures; with `into`, also stores them there in the new width.
   */
  const countsOf = async (nb: number, into?: Uint8Array): Promise<boolean> => {
    if (bits === old.bits) {
      // Same width: the old block's bytes with the deltas applied (snapshot
      // operations), without a look-up per cluster.
      const b = await old.blockBytes(nb);
      const mine = changes.get(nb);
      if (!b && !mine) return false;
      const out = into ?? scratch;
      if (b) out.set(b);
      else out.fill(0);
      for (const [i, d] of mine ?? []) {
        writeRefcount(out, i, bits, checked(nb * perBlock + i, readRefcount(out, i, bits) + d));
      }
      return !isZero(out);
    }
    let used = false;
    for (let i = 0; i < perBlock; i++) {
      const c = nb * perBlock + i;
      const oldBlock = Math.floor(c / old.perBlock);
      if (oldBlock >= old.blocks.length) break;
      // No old block: all its clusters are free, skip to the next one.
      if (!old.blocks[oldBlock]) {
        i = (oldBlock + 1) * old.perBlock - nb * perBlock - 1;
        continue;
      }
      const v = checked(c, (await old.get(c)) + (delta.get(c) ?? 0));
      if (!v) continue;
      used = true;
      if (into) writeRefcount(into, i, bits, v);
    }
    return used;
  };
  const newBlockCount = () => Math.ceil((old.blocks.length * old.perBlock) / perBlock);

  // 1. Every count must fit the new width: checked before anything changes.
  for (let nb = 0, n = newBlockCount(); nb < n; nb++) {
    await countsOf(nb);
    progress(nb, 3 * n);
  }

  // 2. Allocate the new blocks and table until no allocation needs another.
  const blocks = new Map<number, number>();
  let lastBlock = 0;
  let table: RefcountTableLocation | undefined;
  try {
    for (let allocated = true; allocated; ) {
      allocated = false;
      for (let nb = 0; nb < newBlockCount(); nb++) {
        if (blocks.has(nb) || !(await countsOf(nb))) continue;
        blocks.set(nb, await old.allocate(1));
        lastBlock = Math.max(lastBlock, nb);
        allocated = true;
      }
      const clusters = Math.ceil(((lastBlock + 1) * 8) / cs);
      if (clusters * cs > MAX_REFTABLE_BYTES) {
        throw new BlockError('Unsupported', 'the refcount table would grow beyond its maximum size (8 MiB)');
      }
      if (!table || table.clusters < clusters) {
        if (table) await old.free(table.offset, table.clusters);
        table = { offset: await old.allocate(clusters), clusters };
        allocated = true;
      }
    }
  } catch (err) {
    // Give back what was taken: the image stays as it was (the file may have grown).
    for (const offset of blocks.values()) await old.free(offset, 1);
    if (table) await old.free(table.offset, table.clusters);
    throw err;
  }
  const n = newBlockCount();
  progress(n, 3 * n);

  // 3. Write the new blocks, then the table that points at them.
  const raw = new Uint8Array(table!.clusters * cs);
  const rawView = new DataView(raw.buffer);
  for (const [nb, offset] of blocks) {
    const b = new Uint8Array(cs);
    await countsOf(nb, b);
    await img.proto.write(b, offset);
    rawView.setBigUint64(nb * 8, BigInt(offset));
    progress(n + nb, 3 * n);
  }
  await img.proto.write(raw, table!.offset);
  await img.proto.flush();

  // 4. Switch the header to them (and to whatever else changes with them) in one write.
  const h = img.header;
  const next: Partial<Qcow2Header> = {
    ...opts.header,
    refcountOrder: order,
    refcountTableOffset: table!.offset,
    refcountTableClusters: table!.clusters,
  };
  const before = Object.fromEntries(Object.keys(next).map((k) => [k, h[k as keyof Qcow2Header]]));
  Object.assign(h, next);
  try {
    await img.writeHeader();
    await img.proto.flush();
  } catch (err) {
    Object.assign(h, before);
    throw err;
  }
  img.replaceRefcounts(await loadRefcounts(img.proto, h));
  // Clusters the deltas took to zero are free from now on: their user is told, as of any other free.
  const freed: number[] = [];
  for (const [c, d] of delta) if (d < 0 && (await img.refcounts.get(c)) === 0) freed.push(c);
  for (const c of freed.sort((x, y) => x - y)) img.refcounts.onFreed?.(c);

  // 5. The old structures are counted by the new blocks: release them.
  const oldTable = old.tableLocation;
  for (const offset of old.blocks) if (offset) await img.refcounts.free(offset, 1);
  await img.refcounts.free(oldTable.offset, oldTable.clusters);
  for (const s of opts.freeAfter ?? []) await img.refcounts.free(s.offset, s.clusters);
  await img.proto.flush();
  progress(3 * n, 3 * n);
}
