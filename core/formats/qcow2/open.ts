/** Opening a qcow2 image: header, L1 table, refcount table, all validated. */
import { BlockError } from '../../image/errors.js';
import type { DriverOpenOptions, SnapshotKey } from '../../image/driver.js';
import type { Protocol } from '../../io/protocol.js';
import { Qcow2Bitmaps } from './bitmaps.js';
import { parseHeader, peekClusterBits } from './header.js';
import { checkQcow2 } from './check.js';
import { loadZstd } from './compression.js';
import { Qcow2Image } from './image.js';
import * as L from './limits.js';
import { loadRefcounts } from './refcounts.js';
import { readSnapshotTable } from './snapshot-table.js';
import { findSnapshot } from './snapshots.js';
import { readTable } from './tables.js';

export async function openQcow2(
  proto: Protocol,
  readOnly: boolean,
  snapshot?: SnapshotKey,
  repair = false,
  openFile?: DriverOpenOptions['openFile'],
  /** Opened by check: damaged refcount table entries are left for check to report and repair. */
  forCheck = false,
): Promise<Qcow2Image> {
  const head = new Uint8Array(Math.min(await proto.size(), 4096));
  await proto.read(head, 0);
  const clusterSize = 2 ** peekClusterBits(head);
  const first = new Uint8Array(clusterSize);
  await proto.read(first, 0);
  const header = parseHeader(first, await proto.size());

  if (header.incompatible & L.INCOMPAT_CORRUPT && !readOnly && !repair) {
    throw new BlockError('Corrupt', 'the image is marked corrupt; it can only be opened read-only until repaired');
  }
  // Its decoder is WebAssembly, loaded once before the first cluster needs it.
  if (header.compressionType === 1) await loadZstd();
  const l1 = await readTable(proto, header.l1TableOffset, header.l1Size);
  const refcounts = await loadRefcounts(proto, header, forCheck);
  const snapshots = header.nbSnapshots
    ? (await readSnapshotTable((b, o) => proto.read(b, o), header.snapshotsOffset, header.nbSnapshots, clusterSize, await proto.size())).entries
    : [];
  const dataFile = header.incompatible & L.INCOMPAT_DATA_FILE ? await openDataFile(header.dataFile, readOnly, openFile) : undefined;
  const image = new Qcow2Image(proto, header, l1, refcounts, readOnly, snapshots, dataFile);
  image.repairing = repair;
  image.bitmaps = await Qcow2Bitmaps.load(image);
  if (header.staleBitmaps && !readOnly) {
    // QEMU drops an extension nothing vouches for; its clusters leak until check -r.
    await image.writeHeader();
    await proto.flush();
  }
  if (header.incompatible & L.INCOMPAT_DIRTY && !readOnly) {
    // Left dirty (lazy refcounts, then a crash): rebuild the refcounts before
    // anything is allocated from them, as QEMU does on open.
    const report = await checkQcow2(image, 'all', () => undefined);
    if (report.corruptions || report.checkErrors) {
      throw new BlockError('Corrupt', 'the image was left dirty and its refcounts could not be repaired; see check');
    }
    await image.markClean();
  }
  return snapshot === undefined ? image : snapshotView(image, snapshot);
}

/** A read-only image whose active view is the snapshot's L1 table and size. */
async function snapshotView(image: Qcow2Image, key: SnapshotKey): Promise<Qcow2Image> {
  const sn = findSnapshot(image, key);
  const header = { ...image.header, size: sn.diskSize ?? image.header.size, l1Size: sn.l1Size, l1TableOffset: sn.l1TableOffset };
  const need = Math.ceil(header.size / image.clusterSize / image.l2Entries);
  if (sn.l1Size < need) throw new BlockError('Corrupt', `snapshot '${sn.name}' (ID ${sn.id}) has an L1 table too small for its size`);
  const l1 = await readTable(image.proto, sn.l1TableOffset, sn.l1Size);
  return new Qcow2Image(image.proto, header, l1, image.refcounts, true, image.snapshots, image.externalData ? image.data : undefined);
}

/** The external data file the header names, opened under the same rules as backing files. */
async function openDataFile(name: string | undefined, readOnly: boolean, openFile: DriverOpenOptions['openFile']): Promise<Protocol> {
  if (name === undefined) throw new BlockError('InvalidFormat', 'the image uses an external data file but does not name it');
  if (!openFile) throw new BlockError('Unsupported', 'the image keeps its data in an external file, which cannot be opened here');
  return openFile(name, { readOnly, what: 'data file' });
}
