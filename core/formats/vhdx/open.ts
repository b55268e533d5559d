/**
 * Opening a VHDX image: identifier, current header, log (replayed into the
 * file when writable, in memory when read-only), region table, metadata,
 * BAT; everything validated before it is used.
 */
import type { DriverOpenOptions } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { Bat, batGeometry, batProblems, checkBatSize } from './bat.js';
import { checkFileIdentifier, pickHeader, validateLogFields, type CurrentHeader } from './header.js';
import { HeaderWriter } from './headers-update.js';
import { VhdxImage } from './image.js';
import * as L from './limits.js';
import { LogReader } from './log-reader.js';
import { intoFile, replay, validateReplay } from './log-replay.js';
import { findActiveSequence } from './log-search.js';
import { readMetadata } from './metadata.js';
import { LogOverlay } from './overlay.js';
import { FileRegions, parseRegionTables } from './region.js';
import { isNullGuid } from './guid.js';

async function readSection(proto: Protocol): Promise<Uint8Array> {
  const section = new Uint8Array(L.HEADER_SECTION_SIZE);
  await proto.read(section, 0);
  return section;
}

function currentHeader(section: Uint8Array): CurrentHeader {
  const at = (o: number) => section.subarray(o, o + L.HEADER_SIZE);
  return pickHeader(at(L.HEADER1_OFFSET), at(L.HEADER2_OFFSET));
}

export async function openVhdx(file: Protocol, opts: DriverOpenOptions): Promise<VhdxImage> {
  const fileSize = await file.size();
  if (fileSize < L.HEADER_SECTION_SIZE) {
    const why = `Image not in VHDX format (${fileSize} bytes, shorter than the 1 MiB header section)`;
    throw new BlockError('InvalidFormat', why, { op: 'open' });
  }
  let section = await readSection(file);
  checkFileIdentifier(section);
  let current = currentHeader(section);
  validateLogFields(current.header, fileSize);

  // The log first: what it holds may change the region table, metadata and BAT.
  let proto = file;
  let logReplayed = false;
  let logPending = false;
  const h = current.header;
  if (!isNullGuid(h.logGuid) && h.logLength > 0) {
    const log = new LogReader(file, h.logOffset, h.logLength, h.logGuid);
    const seq = await findActiveSequence(log);
    if (seq) {
      await validateReplay(log, seq, fileSize);
      if (opts.readOnly) {
        proto = await LogOverlay.replayed(file, log, seq);
        logPending = true;
      } else {
        await replay(intoFile(file), log, seq);
        await file.flush();
        logReplayed = true;
      }
      section = await readSection(proto);
      current = currentHeader(section);
    }
  }
  const headers = new HeaderWriter(proto, current, opts.readOnly);
  // As QEMU: once replayed, the log is emptied (a null log GUID) and the visible data has changed.
  if (logReplayed) await headers.update({ newDataGuid: true, logGuid: new Uint8Array(16) });
  // A log GUID with no entry behind it (a crash before the entry was written) is cleared
  // too: QEMU refuses to write to an image whose header names a log.
  else if (!opts.readOnly && !isNullGuid(current.header.logGuid)) await headers.update({ logGuid: new Uint8Array(16) });

  const size = await proto.size();
  const regions = new FileRegions();
  regions.add(0, L.HEADER_SECTION_SIZE, 'header section');
  regions.add(current.header.logOffset, current.header.logLength, 'log');
  const { table, damagedFirst } = parseRegionTables(section, size, regions);
  const meta = await readMetadata(proto, table.metadata);
  if (meta.hasParent && !opts.readOnly) {
    throw new BlockError('Unsupported', 'VHDX differencing images can only be opened read-only', { op: 'open' });
  }
  const geometry = batGeometry(meta.diskSize, meta.blockSize, meta.logicalSectorSize, meta.hasParent);
  checkBatSize(geometry, table.bat.length);
  const batBytes = new Uint8Array(geometry.entries * 8);
  await proto.read(batBytes, table.bat.offset);
  const bat = new Bat(geometry, batBytes);
  const problems = batProblems(bat, size, meta.diskSize, regions);
  if (problems.length && !opts.forCheck) throw new BlockError('Corrupt', problems[0], { op: 'open' });
  return new VhdxImage({
    proto,
    headers,
    table,
    meta,
    bat,
    regions,
    readOnly: opts.readOnly,
    logReplayed,
    logPending,
    problems,
    damagedRegionTable: damagedFirst,
    fileSize: size,
  });
}
