/**
 * The process the qcow2 crash test kills (bundled and run by
 * core/formats/qcow2/crash.test.ts). It opens a qcow2 image read-write and
 * runs the seeded operations of crash-ops.ts forever, flushing after each and
 * only then printing its number (and how many writes to the image file it
 * made), so every number printed is a finished operation. With
 * killAt = {op, write} it SIGKILLs itself just before the write-th write of
 * operation number op (or right after that operation, if it writes less): a
 * kill at an exact moment, the same on every run, as the engine makes the
 * same writes for the same operations.
 *
 * argv: IMAGE JSON where JSON is {seed, variant, killAt?, format?} (format:
 * qcow2 unless given; the vhdx crash test runs the same operations).
 */
import { writeSync } from 'node:fs';
import { hasSnapshots, isResizable } from '../image/driver.js';
import type { Image } from '../image/image.js';
import { openImage } from '../image/open.js';
import { crashOps, type CrashOp, type CrashVariant } from './crash-ops.js';

const [path, json] = process.argv.slice(2);
const { seed, variant, killAt, format = 'qcow2' } = JSON.parse(json) as {
  seed: number;
  variant: CrashVariant;
  killAt?: { op: number; write: number };
  format?: string;
};

async function run(img: Image, op: CrashOp): Promise<void> {
  const layer = img.layer;
  switch (op.kind) {
    case 'write':
      return img.write(op.data, op.offset);
    case 'zero':
      return img.writeZeroes(op.offset, op.length, op.mayUnmap);
    case 'discard':
      return img.discard(op.offset, op.length);
    case 'compress':
      return (await img.compressClusters(op.data, op.offset))();
    case 'snapshot-create':
      if (!hasSnapshots(layer)) throw new Error('no snapshots');
      return layer.createSnapshot(op.name);
    case 'snapshot-delete':
      if (!hasSnapshots(layer)) throw new Error('no snapshots');
      return layer.deleteSnapshot(op.name);
    case 'snapshot-apply':
      if (!hasSnapshots(layer)) throw new Error('no snapshots');
      return layer.applySnapshot(op.name);
    case 'grow':
    case 'shrink':
      if (!isResizable(layer)) throw new Error('not resizable');
      return layer.resize(op.size, { prealloc: 'off', shrink: op.kind === 'shrink' });
  }
}

const img = await openImage(path, { format, readOnly: false });
/*
 * Reports go straight to fd 1 with writeSync: process.stdout may hold them in
 * memory while the worker runs on, and a kill would then lose them (the test
 * would think fewer operations had finished than had).
 */
const report = (line: string) => writeSync(1, `${line}\n`);
const die = () => process.kill(process.pid, 'SIGKILL');
let current = -1;
let writes = 0;
const proto = img.protocol;
const write = proto.write.bind(proto);
proto.write = (buf, offset) => {
  if (current === killAt?.op && writes + 1 === killAt.write) die();
  writes++;
  return write(buf, offset);
};
report('ready');
for (const op of crashOps(seed, variant)) {
  current++;
  writes = 0;
  await run(img, op);
  await img.flush();
  // An operation with fewer writes dies once it is done, before saying so.
  if (current === killAt?.op) die();
  report(`${current} ${writes}`);
}
