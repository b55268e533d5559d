/** Opening a VDI image: the header validated, then the block map read. */
import type { Protocol } from '../../io/protocol.js';
import { parseHeader } from './header.js';
import { BlockMap } from './bmap.js';
import { VdiImage } from './image.js';
import { HEADER_BYTES } from './limits.js';

export async function openVdi(proto: Protocol, readOnly: boolean): Promise<VdiImage> {
  const fileSize = await proto.size();
  const sector = new Uint8Array(Math.min(HEADER_BYTES, fileSize));
  await proto.read(sector, 0);
  const header = parseHeader(sector, fileSize);
  const bmap = await BlockMap.read(proto, header.offsetBmap, header.blocksInImage);
  return new VdiImage(proto, header, bmap, readOnly, fileSize);
}
