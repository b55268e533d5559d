/** Reading what probing needs, and small helpers drivers use to probe. */
import type { Protocol } from '../io/protocol.js';
import { PROBE_HEAD_BYTES, PROBE_TAIL_BYTES, type ProbeInput } from './driver.js';

export async function readProbeInput(proto: Protocol): Promise<ProbeInput> {
  const size = await proto.size();
  const head = new Uint8Array(Math.min(PROBE_HEAD_BYTES, size));
  await proto.read(head, 0);
  const tail = new Uint8Array(Math.min(PROBE_TAIL_BYTES, size));
  await proto.read(tail, size - tail.length);
  return { head, tail, size, filename: proto.name };
}

/** True if `bytes` holds `magic` (a latin1 string) at `offset`. */
export function hasMagic(bytes: Uint8Array, magic: string, offset = 0): boolean {
  if (bytes.length < offset + magic.length) return false;
  for (let i = 0; i < magic.length; i++) {
    if (bytes[offset + i] !== magic.charCodeAt(i)) return false;
  }
  return true;
}

/** Big-endian u32 at `offset`, or undefined past the end. */
export function be32(bytes: Uint8Array, offset: number): number | undefined {
  if (bytes.length < offset + 4) return undefined;
  return new DataView(bytes.buffer, bytes.byteOffset + offset, 4).getUint32(0, false);
}

/** Little-endian u32 at `offset`, or undefined past the end. */
export function le32(bytes: Uint8Array, offset: number): number | undefined {
  if (bytes.length < offset + 4) return undefined;
  return new DataView(bytes.buffer, bytes.byteOffset + offset, 4).getUint32(0, true);
}
