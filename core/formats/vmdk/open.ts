/**
 * Opening a VMDK: a monolithic sparse file (its descriptor embedded), a
 * descriptor file and the extents it lists, or a lone ESX sparse file.
 */
import type { DriverOpenOptions } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { hasMagic } from '../../image/probe.js';
import type { Protocol } from '../../io/protocol.js';
import { DESCRIPTOR_FILE_TYPES, parseDescriptor, type Descriptor } from './descriptor.js';
import { openExtentOfType, openHostedSparse } from './extents.js';
import { VmdkImage, type DescriptorPlace, type Placed } from './image.js';
import * as L from './limits.js';
import type { Below } from './sparse.js';

/** True when `head` starts like a descriptor file: comments and blank lines, then "version=". */
export function looksLikeDescriptor(head: Uint8Array): boolean {
  const text = new TextDecoder('latin1').decode(head.subarray(0, 2048));
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (line.startsWith('#') || line.trim() === '') continue;
    return /^version=[123]$/.test(line);
  }
  return false;
}

const decode = (bytes: Uint8Array) => new TextDecoder('latin1').decode(bytes);

/** Opens a VMDK: a monolithic sparse file, or a descriptor file and the extents it lists. */
export async function openVmdk(proto: Protocol, opts: DriverOpenOptions): Promise<VmdkImage> {
  const fileSize = await proto.size();
  const head = new Uint8Array(Math.min(fileSize, 2048));
  await proto.read(head, 0);
  const writable = !opts.readOnly;
  const extents: Placed[] = [];
  const ownFiles: Protocol[] = [];
  // The extents need the image (for their parent) before it exists: they get it once made.
  let image: VmdkImage | undefined;
  const belowAt = (base: number): Below => ({
    get present() {
      return image?.belowAt(base).present ?? false;
    },
    read: (buf, offset) => image!.belowAt(base).read(buf, offset),
  });
  try {
    let descriptor: Descriptor;
    let place: DescriptorPlace | undefined;
    if (hasMagic(head, L.SPARSE_MAGIC)) {
      const extent = await openHostedSparse(proto, writable, belowAt(0));
      extents.push({ extent, base: 0, type: '', name: proto.name, rw: true });
      const h = extent.header;
      if (h.descriptorSectors === 0) throw new BlockError('InvalidFormat', 'the sparse file has no embedded descriptor');
      const bytes = new Uint8Array(h.descriptorSectors * L.SECTOR);
      await proto.read(bytes, h.descriptorOffset * L.SECTOR);
      const text = decode(bytes.subarray(0, bytes.indexOf(0) >= 0 ? bytes.indexOf(0) : bytes.length));
      // The embedded descriptor's extent lines name this very file; only its IDs and parent matter.
      descriptor = parseDescriptor(text);
      descriptor.createType = extent.compressed ? 'streamOptimized' : 'monolithicSparse';
      place = { file: proto, offset: h.descriptorOffset * L.SECTOR, room: bytes.length, text };
    } else if (hasMagic(head, L.COWD_MAGIC)) {
      // A lone ESX sparse file (VMDK version 3) has no descriptor: it is its own disk, read-only.
      const extent = await openExtentOfType('VMFSSPARSE', proto, { start: 0, writable: false, below: belowAt(0) });
      extents.push({ extent, base: 0, type: '', name: proto.name, rw: false });
      descriptor = { version: 1, cid: 0, parentCid: L.NO_PARENT_CID, createType: 'vmfsSparse', extents: [], ddb: new Map() };
    } else if (looksLikeDescriptor(head)) {
      if (fileSize > L.MAX_DESCRIPTOR_BYTES) {
        throw new BlockError('InvalidFormat', `the descriptor file is larger than ${L.MAX_DESCRIPTOR_BYTES} bytes`);
      }
      const bytes = new Uint8Array(fileSize);
      await proto.read(bytes, 0);
      const text = decode(bytes);
      descriptor = parseDescriptor(text);
      if (!DESCRIPTOR_FILE_TYPES.includes(descriptor.createType)) {
        throw new BlockError('Unsupported', `Unsupported image type '${descriptor.createType}'`);
      }
      place = { file: proto, offset: 0, text };
      if (descriptor.extents.length > L.MAX_EXTENTS) {
        const n = descriptor.extents.length;
        throw new BlockError('Unsupported', `the descriptor lists ${n} extents; at most ${L.MAX_EXTENTS} are supported`);
      }
      const opened = new Map<string, Protocol>();
      let base = 0;
      for (const line of descriptor.extents) {
        const length = line.sectors * L.SECTOR;
        if (base + length > Number.MAX_SAFE_INTEGER) throw new BlockError('Corrupt', 'the extents add up to more than 8 PiB');
        const rw = line.access === 'RW';
        let file = proto;
        if (line.file !== undefined) {
          if (!opts.openFile) throw new BlockError('Unsupported', 'extent files cannot be opened here');
          // A file named by several lines is opened once.
          const key = `${!writable || !rw}:${line.file}`;
          let named = opened.get(key);
          if (!named) {
            named = await opts.openFile(line.file, { readOnly: !writable || !rw, what: 'extent file' });
            opened.set(key, named);
            ownFiles.push(named);
          }
          file = named;
        }
        if (line.access === 'NOACCESS') {
          throw new BlockError('Unsupported', `the extent ${line.file ?? 'ZERO'} is marked NOACCESS`);
        }
        const extent = await openExtentOfType(line.type, file, {
          length,
          start: (line.offset ?? 0) * L.SECTOR,
          writable: writable && rw,
          below: belowAt(base),
        });
        if (extent.length !== length) {
          throw new BlockError(
            'Corrupt',
            `the extent ${line.file} holds ${extent.length / L.SECTOR} sectors but the descriptor gives it ${line.sectors}`,
          );
        }
        extents.push({ extent, base, type: line.type, name: line.file ?? 'ZERO', rw });
        base += length;
      }
    } else {
      throw new BlockError('InvalidFormat', 'not a vmdk image');
    }
    image = new VmdkImage(proto, opts.readOnly, descriptor, place, extents, ownFiles);
    return image;
  } catch (err) {
    for (const p of extents) await p.extent.close().catch(() => undefined);
    for (const f of ownFiles) await f.close().catch(() => undefined);
    throw err;
  }
}
