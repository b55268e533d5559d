/**
 * Header updates as the spec prescribes: the non-current header gets the
 * next sequence number and is written (and flushed) before it becomes
 * current; QEMU does it twice so that both headers end up valid and equal
 * but for their numbers, and so does Platter.
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { newGuid } from './guid.js';
import { headerOffset, serializeHeader, type CurrentHeader } from './header.js';

export class HeaderWriter {
  /** The spec wants a new file write GUID for this session, set by the first header write. */
  private readonly sessionGuid = newGuid();

  constructor(
    private readonly proto: Protocol,
    public current: CurrentHeader,
    private readonly readOnly: boolean,
  ) {}

  get header() {
    return this.current.header;
  }

  async update(change: { newDataGuid?: boolean; logGuid?: Uint8Array }): Promise<void> {
    if (this.readOnly) throw new BlockError('Io', 'the image is open read-only', { op: 'write' });
    const dataGuid = change.newDataGuid ? newGuid() : undefined;
    for (let i = 0; i < 2; i++) {
      const from = this.current.header;
      const index = this.current.index === 0 ? 1 : 0;
      const header = {
        ...from,
        sequence: from.sequence + 1n,
        fileWriteGuid: this.sessionGuid,
        dataWriteGuid: dataGuid ?? from.dataWriteGuid,
        logGuid: change.logGuid ?? from.logGuid,
      };
      await this.proto.write(serializeHeader(header), headerOffset(index));
      await this.proto.flush();
      this.current = { header, index };
    }
  }
}
