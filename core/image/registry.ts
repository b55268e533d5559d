/**
 * Every format Platter knows, in one list. Adding a format is one folder in
 * core/formats and one line here; nothing else branches on format names.
 */
import { bochs } from '../formats/bochs/index.js';
import { cloop } from '../formats/cloop/index.js';
import { dmg } from '../formats/dmg/index.js';
import { luks } from '../formats/luks/index.js';
import { parallels } from '../formats/parallels/index.js';
import { qcow } from '../formats/qcow/index.js';
import { qcow2 } from '../formats/qcow2/index.js';
import { qed } from '../formats/qed/index.js';
import { raw } from '../formats/raw/index.js';
import { vdi } from '../formats/vdi/index.js';
import { vhdx } from '../formats/vhdx/index.js';
import { vmdk } from '../formats/vmdk/index.js';
import { vpc } from '../formats/vpc/index.js';
import { vvfat } from '../formats/vvfat/index.js';
import { FILE_CREATE_OPTIONS } from '../options/common.js';
import type { OptionDecl } from '../options/schema.js';
import type { FormatDriver, ProbeInput } from './driver.js';
import { BlockError } from './errors.js';

export const DRIVERS: readonly FormatDriver[] = [
  raw,
  qcow2,
  qcow,
  qed,
  luks,
  vdi,
  vmdk,
  vpc,
  vhdx,
  bochs,
  cloop,
  dmg,
  parallels,
  vvfat,
];

export function findDriver(name: string): FormatDriver {
  const driver = DRIVERS.find((d) => d.name === name);
  if (!driver) {
    throw new BlockError(
      'InvalidArgument',
      `unknown format '${name}' (known: ${DRIVERS.map((d) => d.name).join(', ')})`,
    );
  }
  return driver;
}

/** A format's create options, with those of the file it is written to. */
export function createOptionsOf(driver: FormatDriver): readonly OptionDecl[] {
  return [...(driver.createOptions ?? []), ...FILE_CREATE_OPTIONS];
}

/** Formats that can be created (the targets of create and convert). */
export function creatableDrivers(): FormatDriver[] {
  return DRIVERS.filter((d) => d.create);
}

/** The driver that claims the file most strongly; raw claims everything weakly. */
export function probeDriver(input: ProbeInput): FormatDriver {
  let best = DRIVERS[0];
  let bestScore = -1;
  for (const d of DRIVERS) {
    const score = d.probe(input);
    if (score > bestScore) {
      best = d;
      bestScore = score;
    }
  }
  return best;
}
