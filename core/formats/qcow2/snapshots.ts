/**
 * Internal snapshots: a snapshot is an L1 table of its own plus one more
 * reference on every cluster it reaches; writes then copy shared clusters.
 * Every operation builds the new state beside the old one and switches to
 * it with one header write (switchView), so a crash leaves leaks, not damage.
 */
import type { SnapshotInfo, SnapshotKey } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { Qcow2Header } from './header.js';
import { decodeL1, hostOf } from './l2.js';
import type { Qcow2Image } from './image.js';
import { MAX_SNAPSHOTS, OFLAG_COPIED } from './limits.js';
import { switchRefcounts } from './refcount-switch.js';
import { readSnapshotTable, serializeSnapshotTable, type SnapshotEntry } from './snapshot-table.js';
import { encodeTable, readTable } from './tables.js';

/** The snapshot to apply or read (see SnapshotKey): a text is tried as an ID first, then as a name, as qemu-img does. */
export function findSnapshot(img: Qcow2Image, key: SnapshotKey): SnapshotEntry {
  if (typeof key === 'string') {
    const sn = img.snapshots.find((s) => s.id === key) ?? img.snapshots.find((s) => s.name === key);
    if (!sn) throw new BlockError('NotFound', `no snapshot named '${key}'`);
    return sn;
  }
  const { id, name } = key;
  const sn = img.snapshots.find((s) => (id === undefined || s.id === id) && (name === undefined || s.name === name));
  if (!sn) {
    const wanted = [id !== undefined ? `ID ${id}` : '', name !== undefined ? `name '${name}'` : ''].filter(Boolean).join(' and ');
    throw new BlockError('NotFound', `no snapshot with ${wanted}`);
  }
  return sn;
}

/**
 * qemu-img deletes a snapshot by name only, the first of that name: an ID
 * that is also another snapshot's name must not delete the wrong one.
 */
function findSnapshotNamed(img: Qcow2Image, name: string): SnapshotEntry {
  const sn = img.snapshots.find((s) => s.name === name);
  if (!sn) {
    const withId = img.snapshots.find((s) => s.id === name);
    const hint = withId ? ` (snapshots are deleted by name: ID ${name} is '${withId.name}')` : '';
    throw new BlockError('NotFound', `no snapshot named '${name}'${hint}`);
  }
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

/**
 * The references `l1` holds, by host cluster: each L2 table it names adds one
 * to every cluster the table maps (a table shared by two L1 tables is counted
 * from each, as QEMU counts), and, with `tables`, one to the table itself.
 */
async function reachable(img: Qcow2Image, l1: BigUint64Array, tables: boolean): Promise<Map<number, number>> {
  const cs = img.clusterSize;
  const refs = new Map<number, number>();
  const add = (c: number) => refs.set(c, (refs.get(c) ?? 0) + 1);
  for (let i = 0; i < l1.length; i++) {
    const { offset } = decodeL1(l1[i], cs, i);
    if (!offset) continue;
    if (tables) add(offset / cs);
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

/** Table copies held in memory at once by a snapshot operation. */
const COPY_BATCH_BYTES = 8 << 20;

/** The clusters an L1 table of `entries` takes: none for an empty one (a disk of size 0), as in QEMU. */
function l1Clusters(img: Qcow2Image, offset: number, entries: number): { offset: number; clusters: number } {
  return { offset, clusters: Math.ceil((entries * 8) / img.clusterSize) };
}

function addTo(delta: Map<number, number>, refs: Map<number, number>, sign: 1 | -1): void {
  for (const [c, n] of refs) delta.set(c, (delta.get(c) ?? 0) + sign * n);
}

/** Refuses (before anything changes) counts the refcount width cannot hold. */
async function checkRoom(img: Qcow2Image, delta: Map<number, number>): Promise<void> {
  for (const [c, n] of delta) {
    if (n > 0 && (await img.refcounts.get(c)) + n > img.refcounts.max) {
      const max = img.refcounts.max;
      throw new BlockError('Unsupported', `cluster ${c} would need a refcount above ${max} (refcount_bits too small)`);
    }
  }
}

/** Writes the snapshot list to new clusters (none for an empty list). */
async function writeSnapshotTable(
  img: Qcow2Image,
  entries: SnapshotEntry[],
): Promise<{ offset: number; clusters: number }> {
  if (!entries.length) return { offset: 0, clusters: 0 };
  const cs = img.clusterSize;
  const raw = serializeSnapshotTable(entries, img.header.version);
  const clusters = Math.ceil(raw.length / cs);
  const offset = await img.refcounts.allocate(clusters);
  const padded = new Uint8Array(clusters * cs);
  padded.set(raw);
  await img.proto.write(padded, offset);
  return { offset, clusters };
}

/** Where the current snapshot list lies, as long as the file holds it (not as Platter would write it). */
async function snapshotTableNow(img: Qcow2Image): Promise<{ offset: number; clusters: number }> {
  if (!img.snapshots.length) return { offset: 0, clusters: 0 };
  const { size } = await storedSnapshotTable(img);
  return { offset: img.header.snapshotsOffset, clusters: Math.ceil(size / img.clusterSize) };
}

/** The snapshot table as the file holds it, and its length there. */
export async function storedSnapshotTable(img: Qcow2Image): Promise<{ entries: SnapshotEntry[]; size: number }> {
  const h = img.header;
  if (!h.nbSnapshots) return { entries: [], size: 0 };
  const read = (buf: Uint8Array, offset: number) => img.proto.read(buf, offset);
  return readSnapshotTable(read, h.snapshotsOffset, h.nbSnapshots, img.clusterSize, await img.proto.size());
}

/** Writes the snapshot list to new clusters, points the header at it, frees the old one. */
export async function saveSnapshotTable(img: Qcow2Image, entries: SnapshotEntry[]): Promise<void> {
  const h = img.header;
  const old = await snapshotTableNow(img);
  const { offset } = await writeSnapshotTable(img, entries);
  await img.proto.flush();
  h.snapshotsOffset = offset;
  h.nbSnapshots = entries.length;
  await img.writeHeader();
  await img.proto.flush();
  img.snapshots = entries;
  if (old.clusters) await img.refcounts.free(old.offset, old.clusters);
}

/**
 * The one way snapshot operations change an image. The active view gets its
 * own new copies of the L2 tables `activeFrom` names, their COPIED flags
 * saying what the counts will be (old counts plus `delta`); a new L1 table
 * names them, a new snapshot list is written when it changes, and one header
 * write switches to all of it together with new refcount structures (see
 * refcount-switch.ts). Until that write the image is the old one, after it
 * the new one: a crash anywhere leaves at most leaks, and the active tables'
 * COPIED flags agree with the counts at every point, which updating tables
 * and counts in place (QEMU's way) cannot promise.
 */
async function switchView(
  img: Qcow2Image,
  v: {
    activeFrom: BigUint64Array;
    delta: Map<number, number>;
    snapshots?: SnapshotEntry[];
    size?: number;
    /** Clusters no longer used once switched, besides the old active L1 table and snapshot list. */
    freeAfter?: { offset: number; clusters: number }[];
    /** The old active L1 table stays in use (a new snapshot's). */
    keepL1?: boolean;
  },
): Promise<void> {
  const cs = img.clusterSize;
  const w = img.l2Stride;
  const counted = async (c: number) => (await img.refcounts.get(c)) + (v.delta.get(c) ?? 0);
  const l1 = new BigUint64Array(v.activeFrom.length);
  // The copies go out in batches of contiguous clusters: one allocation and one write each.
  const batch: { index: number; raw: Uint8Array }[] = [];
  const writeBatch = async () => {
    if (!batch.length) return;
    const at = await img.refcounts.allocate(batch.length);
    const raw = new Uint8Array(batch.length * cs);
    batch.forEach((t, k) => {
      raw.set(t.raw, k * cs);
      // A fresh copy has one reference: the new L1 table's.
      l1[t.index] = BigInt(at + k * cs) | OFLAG_COPIED;
    });
    await img.proto.write(raw, at);
    batch.length = 0;
  };
  for (let i = 0; i < l1.length; i++) {
    const { offset } = decodeL1(v.activeFrom[i], cs, i);
    if (!offset) continue;
    const table = BigUint64Array.from(await img.readL2(offset));
    for (let j = 0; j < img.l2Entries; j++) {
      const host = hostOf(img.entryAt(table, j, () => `L2 entry ${j} at ${offset}`));
      if (!host) continue;
      const e = table[j * w];
      table[j * w] = (await counted(host / cs)) === 1 ? e | OFLAG_COPIED : e & ~OFLAG_COPIED;
    }
    batch.push({ index: i, raw: encodeTable(table, cs) });
    if (batch.length * cs >= COPY_BATCH_BYTES) await writeBatch();
  }
  await writeBatch();
  // An empty table (a disk of size 0) takes no cluster and has no offset.
  let l1Offset = 0;
  if (l1.length) {
    const rawL1 = encodeTable(l1, cs);
    l1Offset = await img.refcounts.allocate(rawL1.length / cs);
    await img.proto.write(rawL1, l1Offset);
  }
  const freeAfter = [...(v.freeAfter ?? [])];
  if (!v.keepL1) freeAfter.push(l1Clusters(img, img.header.l1TableOffset, img.l1Table.length));
  const header: Partial<Qcow2Header> = { l1TableOffset: l1Offset, l1Size: l1.length, size: v.size ?? img.size };
  if (v.snapshots) {
    const table = await writeSnapshotTable(img, v.snapshots);
    Object.assign(header, { snapshotsOffset: table.offset, nbSnapshots: v.snapshots.length });
    const old = await snapshotTableNow(img);
    if (old.clusters) freeAfter.push(old);
  }
  await img.proto.flush();
  await switchRefcounts(img, { delta: v.delta, header, freeAfter });
  img.adoptL1(l1);
  if (v.snapshots) img.snapshots = v.snapshots;
}

export async function createSnapshot(img: Qcow2Image, name: string, now = Date.now()): Promise<SnapshotEntry> {
  if (img.snapshots.length >= MAX_SNAPSHOTS) {
    throw new BlockError('Unsupported', `an image holds at most ${MAX_SNAPSHOTS} snapshots`);
  }
  // Checked before anything changes: a shared cluster needs a refcount of 2.
  if (img.refcounts.max < 2) throw new BlockError('Unsupported', 'an image with refcount_bits=1 cannot hold snapshots');
  return img.exclusive(async () => {
    const l1 = img.l1Table;
    // The snapshot keeps the active L1 table and its L2 tables as they are;
    // the active view's new copies of those tables reach every data cluster once more.
    const delta = await reachable(img, l1, false);
    await checkRoom(img, delta);
    const id = String(img.snapshots.reduce((max, s) => Math.max(max, Number(s.id) || 0), 0) + 1);
    const entry: SnapshotEntry = {
      l1TableOffset: img.header.l1TableOffset,
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
    await switchView(img, { activeFrom: l1, delta, snapshots: [...img.snapshots, entry], keepL1: true });
    return entry;
  });
}

export async function applySnapshot(img: Qcow2Image, key: string): Promise<void> {
  const sn = findSnapshot(img, key);
  await img.exclusive(async () => {
    const snapL1 = await readTable(img.proto, sn.l1TableOffset, sn.l1Size);
    // The active view's copies of the snapshot's tables reach its data once
    // more; the old active view's tables (and, through them, their data) lose a reference.
    const delta = await reachable(img, snapL1, false);
    addTo(delta, await reachable(img, img.l1Table, true), -1);
    await checkRoom(img, delta);
    const activeFrom = new BigUint64Array(Math.max(sn.l1Size, img.l1Table.length));
    activeFrom.set(snapL1);
    await switchView(img, { activeFrom, delta, size: sn.diskSize });
  });
}

export async function deleteSnapshot(img: Qcow2Image, name: string): Promise<void> {
  const sn = findSnapshotNamed(img, name);
  await img.exclusive(async () => {
    const snapL1 = await readTable(img.proto, sn.l1TableOffset, sn.l1Size);
    // Its tables and what they reach lose its references; the active view
    // moves to copies of its tables (whose COPIED flags may now be set), so
    // those tables lose the active view's reference, and its data keeps its count.
    const delta = await reachable(img, snapL1, true);
    for (const [c, n] of delta) delta.set(c, -n);
    addTo(delta, await tablesOf(img, img.l1Table), -1);
    await switchView(img, {
      activeFrom: img.l1Table,
      delta,
      snapshots: img.snapshots.filter((s) => s !== sn),
      freeAfter: [l1Clusters(img, sn.l1TableOffset, sn.l1Size)],
    });
  });
}

/** The L2 tables `l1` names, one reference each. */
function tablesOf(img: Qcow2Image, l1: BigUint64Array): Map<number, number> {
  const refs = new Map<number, number>();
  l1.forEach((e, i) => {
    const { offset } = decodeL1(e, img.clusterSize, i);
    if (offset) refs.set(offset / img.clusterSize, (refs.get(offset / img.clusterSize) ?? 0) + 1);
  });
  return refs;
}
