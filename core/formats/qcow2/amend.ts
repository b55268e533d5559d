/**
 * qemu-img amend for qcow2: the version (compat), lazy refcounts, the
 * refcount width, the size, and the name and rawness of an external data
 * file. The steps run in QEMU's order: upgrade first (the others may need
 * version 3), then the refcount width, the data file, lazy refcounts and
 * size, and the downgrade last (once the others have removed what version
 * 2 cannot hold). What would be refused is refused before the first step
 * changes anything.
 */
import type { AmendProgress } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { OptionValues } from '../../options/schema.js';
import { expandZeroClusters } from './expand-zero.js';
import { featureTableFor, serializeHeader } from './header.js';
import type { Qcow2Image } from './image.js';
import * as L from './limits.js';
import { switchRefcounts } from './refcount-switch.js';
import { saveSnapshotTable } from './snapshots.js';

const invalid = (msg: string) => new BlockError('InvalidArgument', msg);
const unsupported = (msg: string) => new BlockError('Unsupported', msg);

export async function amendQcow2(img: Qcow2Image, o: OptionValues, progress: AmendProgress = () => undefined): Promise<void> {
  const h = img.header;
  const version = o.compat === undefined ? h.version : o.compat === '0.10' ? 2 : 3;
  const order = o.refcount_bits === undefined ? h.refcountOrder : Math.log2(o.refcount_bits as number);
  const lazy = (h.compatible & L.COMPAT_LAZY_REFCOUNTS) !== 0n;
  const size = o.size === undefined ? img.size : (o.size as number);

  if (order !== h.refcountOrder && version < 3 && order !== 4) {
    throw invalid('refcount_bits other than 16 needs compat=1.1');
  }
  if (o.lazy_refcounts === true && version < 3) throw invalid('lazy_refcounts needs compat=1.1');
  for (const [option, current] of [
    ['backing_file', h.backingFile],
    ['backing_fmt', h.backingFormat],
  ] as const) {
    if (o[option] !== undefined && o[option] !== current) {
      throw unsupported(`the backing file cannot be amended (${option} differs from the image's)`);
    }
  }
  if (size !== img.size) img.checkResize(size);
  if (version < h.version) checkDowngrade(img, order, size);
  const dataFile = dataFileChange(img, o);

  // Progress: the version and refcount width changes are the long steps.
  const steps = Number(version !== h.version) + Number(order !== h.refcountOrder) || 1;
  let step = 0;
  const stepProgress = (done: number, total: number) => progress(step + (total ? done / total : 1), steps);

  if (version > h.version) {
    await img.exclusive(() => upgrade(img));
    step++;
  }
  if (order !== h.refcountOrder) {
    await img.exclusive(() => switchRefcounts(img, { order, progress: stepProgress }));
    step++;
  }
  if (dataFile) {
    Object.assign(h, dataFile);
    await img.writeHeader();
    await img.proto.flush();
  }
  if (o.lazy_refcounts !== undefined && o.lazy_refcounts !== lazy) {
    if (!o.lazy_refcounts) await img.markClean();
    h.compatible = o.lazy_refcounts ? h.compatible | L.COMPAT_LAZY_REFCOUNTS : h.compatible & ~L.COMPAT_LAZY_REFCOUNTS;
    await img.writeHeader();
    await img.proto.flush();
  }
  if (size !== img.size) await img.resize(size, { prealloc: 'off', shrink: true });
  if (version < h.version) await downgrade(img, stepProgress);
  progress(steps, steps);
}

/**
 * The header fields a change of data_file or data_file_raw sets, checked as
 * QEMU checks them; undefined when nothing changes. A data file can be
 * renamed (the file itself is not touched: moving it is the user's part),
 * and stop being kept raw, but an image cannot gain one or become raw.
 */
function dataFileChange(img: Qcow2Image, o: OptionValues): { dataFile: string; autoclear: bigint } | undefined {
  const h = img.header;
  if (o.data_file === undefined && o.data_file_raw === undefined) return undefined;
  if (o.data_file !== undefined && !img.externalData) throw invalid('data_file can only be set for images that use an external data file');
  if (o.data_file === '') throw invalid('data_file cannot be emptied: the image could not be opened without it');
  if (o.data_file_raw === true && !img.rawData) throw invalid('data_file_raw cannot be set on existing images');
  const dataFile = (o.data_file as string | undefined) ?? h.dataFile!;
  const autoclear = o.data_file_raw === false ? h.autoclear & ~L.AUTOCLEAR_DATA_FILE_RAW : h.autoclear;
  if (dataFile === h.dataFile && autoclear === h.autoclear) return undefined;
  // Refused here, before any step, when the name does not fit in the header.
  serializeHeader({ ...h, dataFile, autoclear });
  return { dataFile, autoclear };
}

/** What QEMU refuses to downgrade to version 2, refused before any step runs. */
function checkDowngrade(img: Qcow2Image, order: number, size: number): void {
  const h = img.header;
  if (order !== 4) throw unsupported('compat=0.10 requires refcount_bits=16');
  // A dirty image is cleaned first; any other incompatible feature has no version 2 form.
  const features = h.incompatible & ~L.INCOMPAT_DIRTY;
  if (features) throw unsupported(`cannot downgrade an image with incompatible features 0x${features.toString(16)} set`);
  // Version 2 readers would not know these snapshots' sizes.
  if (img.snapshots.some((s) => s.vmStateSize > 0xffffffff || (s.diskSize !== undefined && s.diskSize !== size))) {
    throw unsupported('internal snapshots prevent downgrade of image (one has another disk size or a VM state over 4 GiB)');
  }
}

async function upgrade(img: Qcow2Image): Promise<void> {
  // Version 3 snapshot entries carry the VM state and disk sizes: QEMU rewrites the table in that form.
  if (img.snapshots.some((s) => s.diskSize === undefined)) {
    await saveSnapshotTable(
      img,
      img.snapshots.map((s) => ({ ...s, diskSize: s.diskSize ?? img.size })),
    );
  }
  Object.assign(img.header, {
    version: 3,
    headerLength: L.V3_HEADER_LENGTH,
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    compressionType: 0,
    featureNames: featureTableFor(img.clusterSize),
  });
  await img.writeHeader();
  await img.proto.flush();
}

async function downgrade(img: Qcow2Image, progress: (done: number, total: number) => void): Promise<void> {
  const h = img.header;
  await img.markClean();
  // Version 2 has no feature bits; dropping lazy refcounts first also keeps the expansion from marking the image dirty.
  h.compatible = 0n;
  h.autoclear = 0n;
  await img.exclusive(() => expandZeroClusters(img, progress));
  Object.assign(h, { version: 2, headerLength: L.V2_HEADER_LENGTH, incompatible: 0n, compressionType: 0, featureNames: [] });
  await img.writeHeader();
  await img.proto.flush();
}
