/**
 * Internal snapshots: a snapshot is a copy of the L1 table plus one more
 * reference on every cluster it reaches; writes then copy shared clusters.
 * Each operation counts references before anything points at them and
 * releases only after nothing does, so a crash leaves leaks, not damage.
 */
import type { SnapshotInfo } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { decodeL1, hostOf } from './l2.js';
import type { Qcow2Image } from './image.js';
import { OFLAG_COPIED } from './limits.js';
import { MAX_SNAPSHOTS } from './limits.js';
import { serializeSnapshotTable, type SnapshotEntry } from './snapshot-table.js';
import { encodeTable, readTable } from './tables.js';

/** qemu-img finds a snapshot by ID first, then by name. */
export function findSnapshot(img: Qcow2Image, key: string): SnapshotEntry {
  const sn = img.snapshots.find((s) => s.id === key) ?? img.snapshots.find((s) => s.name === key);
  if (!sn) throw new BlockError('NotFound', `no snapshot named '${key}'`);
  return sn;
}

export function describeSnapshots(img: Qcow2Image): SnapshotInfo[] {
  return img.snapshots.map((s) => ({
    id: s.id,
    name: s.name,
    vmStateSize: s.vmStateSize,
    dateSec: s.dateSec,
    dateNsec: s.dateNsec,
    vmClockNsec: s.vmClockNsec,
    icount: s.extraRest.length >= 8 ? new DataView(s.extraRest.buffer, s.extraRest.byteOffset).getBigUint64(0) : undefined,
    diskSize: s.diskSize,
  }));
}

/** How many references `l1` holds on each host cluster (L2 tables and data). */
async function reachable(img: Qcow2Image, l1: BigUint64Array): Promise<Map<number, number>> {
  const cs = img.clusterSize;
  const refs = new Map<number, number>();
  const add = (c: number) => refs.set(c, (refs.get(c) ?? 0) + 1);
  for (let i = 0; i < l1.length; i++) {
    const { offset } = decodeL1(l1[i], cs, i);
    if (!offset) continue;
    add(offset / cs);
    const table = await img.readL2(offset);
    for (let j = 0; j < img.l2Entries; j++) {
      const m = img.entryAt(table, j, () => `L2 entry ${j} at ${offset}`);
      if (m.kind === 'compressed') {
        for (let c = Math.floor(m.host / cs); c <= Math.floor((m.host + m.length - 1) / cs); c++) add(c);
      } else if (hostOf(m)) {
        add(hostOf(m) / cs);
      }
    }
  }
  return refs;
}

/** Refuses (before anything changes) increments the refcount width cannot hold. */
async function checkRoom(img: Qcow2Image, refs: Map<number, number>): Promise<void> {
  for (const [c, n] of refs) {
    if ((await img.refcounts.get(c)) + n > img.refcounts.max) {
      throw new BlockError('Unsupported', `cluster ${c} would need a refcount above ${img.refcounts.max} (refcount_bits too small)`);
    }
  }
}

async function applyRefs(img: Qcow2Image, refs: Map<number, number>, sign: 1 | -1): Promise<void> {
  for (const [c, n] of refs) await img.refcounts.update(c, 1, sign * n);
}

/** Makes the active tables' COPIED flags say again whether each refcount is one. */
async function refreshCopiedFlags(img: Qcow2Image): Promise<void> {
  const cs = img.clusterSize;
  const rc = img.refcounts;
  const l1 = img.l1Table;
  for (let i = 0; i < l1.length; i++) {
    const { offset } = decodeL1(l1[i], cs, i);
    if (!offset) continue;
    const table = await img.readL2(offset);
    for (let j = 0; j < img.l2Entries; j++) {
      const host = hostOf(img.entryAt(table, j, () => `L2 entry ${j} at ${offset}`));
      if (!host) continue;
      const e = table[j * img.l2Stride];
      const one = (await rc.get(host / cs)) === 1;
      if (one !== (e & OFLAG_COPIED) > 0n) {
        await img.rewriteL2Entry(offset, j, one ? e | OFLAG_COPIED : e & ~OFLAG_COPIED);
      }
    }
    const one = (await rc.get(offset / cs)) === 1;
    const e = one ? l1[i] | OFLAG_COPIED : l1[i] & ~OFLAG_COPIED;
    if (e !== l1[i]) await img.rewriteL1Entry(i, e);
  }
}

/** Writes the snapshot list to new clusters, points the header at it, frees the old one. */
export async function saveSnapshotTable(img: Qcow2Image, entries: SnapshotEntry[]): Promise<void> {
  const h = img.header;
  const cs = img.clusterSize;
  const oldSize = serializeSnapshotTable(img.snapshots, h.version).length;
  const old = { offset: h.snapshotsOffset, clusters: img.snapshots.length ? Math.ceil(oldSize / cs) : 0 };
  const raw = serializeSnapshotTable(entries, h.version);
  let offset = 0;
  if (entries.length) {
    const clusters = Math.ceil(raw.length / cs);
    offset = await img.refcounts.allocate(clusters);
    const padded = new Uint8Array(clusters * cs);
    padded.set(raw);
    await img.proto.write(padded, offset);
    await img.proto.flush();
  }
  h.snapshotsOffset = offset;
  h.nbSnapshots = entries.length;
  await img.writeHeader();
  await img.proto.flush();
  img.snapshots = entries;
  if (old.clusters) await img.refcounts.free(old.offset, old.clusters);
}

export async function createSnapshot(img: Qcow2Image, name: string, now = Date.now()): Promise<SnapshotEntry> {
  if (img.snapshots.length >= MAX_SNAPSHOTS) throw new BlockError('Unsupported', `an image holds at most ${MAX_SNAPSHOTS} snapshots`);
  // Checked before anything changes: a shared cluster needs a refcount of 2.
  if (img.refcounts.max < 2) throw new BlockError('Unsupported', 'an image with refcount_bits=1 cannot hold snapshots');
  return img.exclusive(async () => {
    const cs = img.clusterSize;
    const l1 = img.l1Table;
    const refs = await reachable(img, l1);
    await checkRoom(img, refs);
    // 1. The snapshot's own copy of the L1 table.
    const raw = encodeTable(l1, cs);
    const l1Offset = await img.refcounts.allocate(raw.length / cs);
    await img.proto.write(raw, l1Offset);
    // 2. One more reference on everything it reaches; shared clusters lose COPIED.
    await applyRefs(img, refs, +1);
    await refreshCopiedFlags(img);
    await img.proto.flush();
    // 3. List it.
    const id = String(img.snapshots.reduce((max, s) => Math.max(max, Number(s.id) || 0), 0) + 1);
    const entry: SnapshotEntry = {
      l1TableOffset: l1Offset,
      l1Size: l1.length,
      id,
      name,
      dateSec: Math.floor(now / 1000),
      dateNsec: (now % 1000) * 1e6,
      vmClockNsec: 0n,
      vmStateSize: 0,
      diskSize: img.size,
      // icount 0, as qemu-img records for snapshots taken with no guest running.
      extraRest: new Uint8Array(8),
    };
    await saveSnapshotTable(img, [...img.snapshots, entry]);
    return entry;
  });
}

export async function applySnapshot(img: Qcow2Image, key: string): Promise<void> {
  const sn = findSnapshot(img, key);
  await img.exclusive(async () => {
    const snapL1 = await readTable(img.proto, sn.l1TableOffset, sn.l1Size);
    if (sn.l1Size > img.l1Table.length) await img.growL1Locked(sn.l1Size);
    const old = BigUint64Array.from(img.l1Table);
    // Count the snapshot's clusters for the active view before it points at them...
    const refs = await reachable(img, snapL1);
    await checkRoom(img, refs);
    await applyRefs(img, refs, +1);
    const next = new BigUint64Array(img.l1Table.length);
    next.set(snapL1);
    await img.replaceL1(next);
    if (sn.diskSize !== undefined && sn.diskSize !== img.size) {
      img.header.size = sn.diskSize;
      await img.writeHeader();
    }
    // ...then release what the old active view held.
    await applyRefs(img, await reachable(img, old), -1);
    await refreshCopiedFlags(img);
    await img.proto.flush();
  });
}

export async function deleteSnapshot(img: Qcow2Image, key: string): Promise<void> {
  const sn = findSnapshot(img, key);
  await img.exclusive(async () => {
    const snapL1 = await readTable(img.proto, sn.l1TableOffset, sn.l1Size);
    // Unlist it first: a crash after this leaks its clusters, never frees a listed one.
    await saveSnapshotTable(
      img,
      img.snapshots.filter((s) => s !== sn),
    );
    await applyRefs(img, await reachable(img, snapL1), -1);
    const cs = img.clusterSize;
    await img.refcounts.free(sn.l1TableOffset, Math.max(1, Math.ceil((sn.l1Size * 8) / cs)));
    await refreshCopiedFlags(img);
    await img.proto.flush();
  });
}
