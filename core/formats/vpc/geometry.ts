/**
 * The CHS geometry of a VHD and the sizes it allows. Virtual PC (and QEMU
 * for images it marks "qemu") sizes a disk by cylinders x heads x sectors,
 * so a new image's size is rounded up to the next size a geometry can
 * express, as qemu-img does; past the largest geometry the exact size is used.
 */
import { BlockError } from '../../image/errors.js';
import * as L from './limits.js';

export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

const MAX_CHS: Geometry = { cylinders: L.CHS_MAX_C, heads: L.CHS_MAX_H, sectorsPerTrack: L.CHS_MAX_S };

export const chsSectors = (g: Geometry) => g.cylinders * g.heads * g.sectorsPerTrack;

/**
 * The VHD specification's geometry for `sectors` (which it may round down),
 * with QEMU's extension past ATA's 127 GiB: 255 sectors per track.
 */
export function geometryFor(sectors: number): Geometry {
  const total = Math.min(sectors, L.MAX_GEOMETRY);
  if (total >= L.ATA_GEOMETRY) {
    return { cylinders: Math.floor(Math.floor(total / 255) / 16), heads: 16, sectorsPerTrack: 255 };
  }
  let spt = 17;
  let cth = Math.floor(total / spt);
  let heads = Math.max(4, Math.ceil(cth / 1024));
  if (cth >= heads * 1024 || heads > 16) {
    spt = 31;
    heads = 16;
    cth = Math.floor(total / spt);
  }
  if (cth >= heads * 1024) {
    spt = 63;
    heads = 16;
    cth = Math.floor(total / spt);
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

/**
 * What a new image of `size` bytes becomes, as qemu-img 7.2 decides: the
 * size in whole sectors; without `forceSize`, rounded up to the first
 * geometry that holds it (no notice is printed, as in qemu-img) unless that
 * is the largest geometry, which marks an image sized by current_size.
 */
export function newImageSize(size: number, forceSize: boolean): { size: number; geometry: Geometry } {
  const sectors = Math.ceil(size / L.SECTOR_SIZE);
  let geometry = MAX_CHS;
  if (!forceSize) {
    const want = Math.min(L.MAX_GEOMETRY, sectors);
    geometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
    for (let i = 0; chsSectors(geometry) < want; i++) geometry = geometryFor(want + i);
  }
  const total = chsSectors(geometry) === L.MAX_GEOMETRY ? sectors : chsSectors(geometry);
  if (total > L.MAX_SECTORS) {
    throw new BlockError('InvalidArgument', "The image size is too large for file format 'vpc' (max 2040 GiB)");
  }
  return { size: total * L.SECTOR_SIZE, geometry };
}
