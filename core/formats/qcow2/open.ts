/** Opening a qcow2 image: header, L1 table, refcount table, all validated. */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { parseHeader, peekClusterBits, serializeHeader } from './header.js';
import { Qcow2Image } from './image.js';
import * as L from './limits.js';
import { Refcounts } from './refcounts.js';
import { readSnapshotTable } from './snapshot-table.js';
import { findSnapshot } from './snapshots.js';

export async function openQcow2(proto: Protocol, readOnly: boolean, snapshot?: string): Promise<Qcow2Image> {
  const head = new Uint8Array(Math.min(await proto.size(), 4096));
  await proto.read(head, 0);
  const clusterSize = 2 ** peekClusterBits(head);
  const first = new Uint8Array(clusterSize);
  await proto.read(first, 0);
  const header = parseHeader(first, await proto.size());

  if (header.incompatible & L.INCOMPAT_CORRUPT && !readOnly) {
    throw new BlockError('Corrupt', 'the image is marked corrupt; it can only be opened read-only until repaired');
  }
  if (header.incompatible & L.INCOMPAT_DIRTY && !readOnly) {
    throw new BlockError('Unsupported', 'the image is dirty (lazy refcounts); repairing it on open is not supported yet');
  }
  // One buffer (up to 32 MiB), converted in place; the part past the end of
  // the file is left as the zeros it would read as, so it is never touched.
  const l1 = new BigUint64Array(header.l1Size);
  const inFile = Math.max(0, Math.min(header.l1Size * 8, (await proto.size()) - header.l1TableOffset));
  if (inFile > 0) {
    await proto.read(new Uint8Array(l1.buffer, 0, inFile), header.l1TableOffset);
    const dv = new DataView(l1.buffer);
    for (let i = 0; i < inFile / 8; i++) l1[i] = dv.getBigUint64(i * 8);
  }
  const refcounts = await Refcounts.load(
    proto,
    header.clusterBits,
    header.refcountOrder,
    { offset: header.refcountTableOffset, clusters: header.refcountTableClusters },
    async (loc) => {
      header.refcountTableOffset = loc.offset;
      header.refcountTableClusters = loc.clusters;
      await proto.write(serializeHeader(header), 0);
    },
  );
  const snapshots = header.nbSnapshots
    ? (await readSnapshotTable((b, o) => proto.read(b, o), header.snapshotsOffset, header.nbSnapshots, clusterSize, await proto.size())).entries
    : [];
  const image = new Qcow2Image(proto, header, l1, refcounts, readOnly, snapshots);
  return snapshot === undefined ? image : snapshotView(image, snapshot);
}

/** A read-only image whose active view is the snapshot's L1 table and size. */
async function snapshotView(image: Qcow2Image, key: string): Promise<Qcow2Image> {
  const sn = findSnapshot(image, key);
  const header = { ...image.header, size: sn.diskSize ?? image.header.size, l1Size: sn.l1Size, l1TableOffset: sn.l1TableOffset };
  const need = Math.ceil(header.size / image.clusterSize / image.l2Entries);
  if (sn.l1Size < need) throw new BlockError('Corrupt', `snapshot '${key}' has an L1 table too small for its size`);
  const raw = new Uint8Array(sn.l1Size * 8);
  await image.proto.read(raw, sn.l1TableOffset);
  const dv = new DataView(raw.buffer);
  const l1 = BigUint64Array.from({ length: sn.l1Size }, (_, i) => dv.getBigUint64(i * 8));
  return new Qcow2Image(image.proto, header, l1, image.refcounts, true, image.snapshots);
}
