/**
 * Opening a VHD as QEMU does: the footer copy at the start makes a dynamic
 * (or differencing) image, a footer only at the end a fixed one; the footer's
 * checksum must match; dynamic images then need their header and BAT.
 * Beyond QEMU: a dynamic image whose copy at the start is gone opens by its
 * footer, and a differencing image reads through its parent.
 */
import type { FormatImage } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { parseDynamicHeader } from './dynamic-header.js';
import { FixedVpcImage } from './fixed.js';
import { hasFooterCookie, parseFooter, type Footer } from './footer.js';
import { DynamicVpcImage } from './image.js';
import * as L from './limits.js';
import { parentFileName } from './parent.js';

const hex = (n: number | bigint) => '0x' + n.toString(16);

async function readAt(proto: Protocol, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await proto.read(buf, offset);
  return buf;
}

export async function openVpc(proto: Protocol, readOnly: boolean): Promise<FormatImage> {
  const fileSize = await proto.size();
  if (fileSize < L.FOOTER_BYTES) throw new BlockError('InvalidFormat', 'File too small for a VHD header');
  const head = await readAt(proto, 0, L.FOOTER_BYTES);
  let footer: Footer | undefined;
  if (hasFooterCookie(head)) footer = parseFooter(head);
  // A fixed image's guest data may itself start with a footer: the one at the end decides.
  if (!footer || footer.diskType === L.TYPE_FIXED) {
    const tail = await readAt(proto, fileSize - L.FOOTER_BYTES, L.FOOTER_BYTES);
    if (!hasFooterCookie(tail)) throw new BlockError('InvalidFormat', 'invalid VPC image (no "conectix" footer)');
    footer = parseFooter(tail);
  }
  if (footer.diskType === L.TYPE_FIXED) {
    const data = fileSize - L.FOOTER_BYTES;
    if (footer.size > data) {
      const says = `the footer says the disk has ${footer.size} bytes`;
      throw new BlockError('Corrupt', `${says}, but the file holds only ${data} before the footer`);
    }
    return new FixedVpcImage(proto, footer, readOnly);
  }
  return openDynamic(proto, footer, fileSize, readOnly);
}

async function openDynamic(proto: Protocol, footer: Footer, fileSize: number, readOnly: boolean): Promise<FormatImage> {
  const at = footer.dataOffset;
  if (at < BigInt(L.FOOTER_BYTES) || at + BigInt(L.DYN_HEADER_BYTES) > BigInt(fileSize)) {
    throw new BlockError('Corrupt', `the dynamic disk header offset ${hex(at)} is outside the file (${fileSize} B)`);
  }
  const headerAt = Number(at);
  const differencing = footer.diskType === L.TYPE_DIFFERENCING;
  const headerBytes = await readAt(proto, headerAt, L.DYN_HEADER_BYTES);
  const header = parseDynamicHeader(headerBytes, footer.size, fileSize, differencing);
  // The BAT lies within the file (checked above), so its size is bounded by the file's.
  const raw = await readAt(proto, header.tableOffset, header.maxTableEntries * 4);
  const v = new DataView(raw.buffer);
  const bat = new Uint32Array(header.maxTableEntries);
  const bitmap = L.bitmapBytes(header.blockSize);
  const tableEnd = header.tableOffset + raw.length;
  const metadata = [
    [0, L.FOOTER_BYTES],
    [headerAt, headerAt + L.DYN_HEADER_BYTES],
    [header.tableOffset, tableEnd],
  ];
  for (let i = 0; i < bat.length; i++) {
    const e = v.getUint32(i * 4);
    bat[i] = e;
    if (e === L.UNALLOCATED) continue;
    const start = e * L.SECTOR_SIZE;
    const end = start + bitmap + header.blockSize;
    if (end > fileSize) {
      const where = `block at ${hex(start)}, file of ${fileSize} bytes`;
      throw new BlockError('Corrupt', `BAT entry ${i} points past the end of the file (${where}): it is truncated`);
    }
    if (metadata.some(([from, to]) => start < to && end > from)) {
      throw new BlockError('Corrupt', `BAT entry ${i} points into the image's metadata (block at ${hex(start)})`);
    }
  }
  const layout = { tableOffset: header.tableOffset, blockSize: header.blockSize, bat, fileSize };
  if (!differencing) return new DynamicVpcImage(proto, footer, layout, readOnly);
  if (!readOnly) throw new BlockError('Unsupported', 'differencing VHDs can only be opened read-only');
  return new DynamicVpcImage(proto, footer, layout, readOnly, { filename: await parentFileName(proto, header) });
}
