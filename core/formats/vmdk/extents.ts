/**
 * Opening one extent by its type: the single place that knows which code
 * reads which kind (flat, hosted sparse, ESX sparse, space-efficient sparse).
 */
import { BlockError } from '../../image/errors.js';
import { hasMagic } from '../../image/probe.js';
import type { Protocol } from '../../io/protocol.js';
import type { ExtentType } from './descriptor.js';
import { openCowdExtent } from './cowd.js';
import type { VmdkExtent } from './extent.js';
import { FlatExtent, ZeroExtent } from './flat.js';
import * as L from './limits.js';
import { openSeSparseExtent } from './sesparse.js';
import { readSparseParts, SparseExtent, type Below } from './sparse.js';
import { StreamExtent } from './stream-extent.js';

export interface ExtentOpenOptions {
  /** Guest bytes the descriptor gives the extent; undefined for a lone sparse file, whose header says. */
  length?: number;
  /** FLAT extents: where the extent starts in its file, in bytes. */
  start: number;
  writable: boolean;
  below: Below;
}

/** Opens a hosted sparse ("KDMV") extent: compressed ones (streams) can only be appended to. */
export async function openHostedSparse(file: Protocol, writable: boolean, below: Below): Promise<SparseExtent> {
  const parts = await readSparseParts(file, writable, below);
  return parts.header.compressAlgorithm === L.COMPRESSION_DEFLATE ? new StreamExtent(parts) : new SparseExtent(parts);
}

function refuseWriting(o: ExtentOpenOptions, kind: string, file: Protocol): void {
  if (o.writable) throw new BlockError('Unsupported', `${kind} extents can only be read; open ${file.name} read-only`);
}

/** Opens `file` as an extent of `type`. */
export async function openExtentOfType(type: ExtentType, file: Protocol, o: ExtentOpenOptions): Promise<VmdkExtent> {
  switch (type) {
    case 'FLAT':
    case 'VMFS':
      return new FlatExtent(file, o.length ?? 0, o.start, o.writable);
    case 'ZERO':
      return new ZeroExtent(file, o.length ?? 0);
    case 'SPARSE': {
      const head = new Uint8Array(4);
      await file.read(head, 0);
      if (hasMagic(head, L.COWD_MAGIC)) return openExtentOfType('VMFSSPARSE', file, o);
      if (!hasMagic(head, L.SPARSE_MAGIC)) throw new BlockError('InvalidFormat', `${file.name} is not a sparse VMDK extent`);
      return openHostedSparse(file, o.writable, o.below);
    }
    // Read-only, as in QEMU.
    case 'VMFSSPARSE':
      refuseWriting(o, 'ESX sparse (COWD, VMDK version 3)', file);
      return openCowdExtent(file, o.length);
    case 'SESPARSE':
      refuseWriting(o, 'space-efficient sparse (SESPARSE)', file);
      if (o.length === undefined) throw new BlockError('InvalidFormat', `${file.name} is a SESPARSE extent without a descriptor`);
      return openSeSparseExtent(file, o.length);
  }
}
