/** Opening a qcow2 image: header, L1 table, refcount table, all validated. */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { parseHeader, peekClusterBits, serializeHeader } from './header.js';
import { Qcow2Image } from './image.js';
import * as L from './limits.js';
import { Refcounts } from './refcounts.js';
import { readSnapshotTable } from './snapshot-table.js';

export async function openQcow2(proto: Protocol, readOnly: boolean): Promise<Qcow2Image> {
  const head = new Uint8Array(Math.min(await proto.size(), 4096));
  await proto.read(head, 0);
  const clusterSize = 2 ** peekClusterBits(head);
  const first = new Uint8Array(clusterSize);
  await proto.read(first, 0);
  const header = parseHeader(first);

  if (header.incompatible & L.INCOMPAT_CORRUPT && !readOnly) {
    throw new BlockError('Corrupt', 'the image is marked corrupt; it can only be opened read-only until repaired');
  }
  if (header.incompatible & L.INCOMPAT_DIRTY && !readOnly) {
    throw new BlockError('Unsupported', 'the image is dirty (lazy refcounts); repairing it on open is not supported yet');
  }
  const l1 = new BigUint64Array(header.l1Size);
  if (header.l1Size > 0) {
    const raw = new Uint8Array(header.l1Size * 8);
    await proto.read(raw, header.l1TableOffset);
    const dv = new DataView(raw.buffer);
    for (let i = 0; i < header.l1Size; i++) l1[i] = dv.getBigUint64(i * 8);
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
    ? (await readSnapshotTable((b, o) => proto.read(b, o), header.snapshotsOffset, header.nbSnapshots, clusterSize)).entries
    : [];
  return new Qcow2Image(proto, header, l1, refcounts, readOnly, snapshots);
}
