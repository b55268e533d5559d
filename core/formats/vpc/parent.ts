/**
 * Where a differencing VHD's parent is. The parent locators hold its path
 * for each platform; Platter prefers a relative Windows path (W2ru), then an
 * absolute one (W2ku: a drive-letter path means nothing here, so its file
 * name is looked for next to the child, as for a copied folder), then a Mac
 * OS X file URL (MacX), then the parent's name in the header.
 */
import { BlockError } from '../../image/errors.js';
import type { Protocol } from '../../io/protocol.js';
import { utf16, type DynamicHeader } from './dynamic-header.js';
import * as L from './limits.js';

const PREFERENCE = [L.PLATFORM_W2RU, L.PLATFORM_W2KU, L.PLATFORM_MACX];

/** The last part of a Windows or POSIX path. */
const baseName = (path: string) => path.split(/[\\/]/).pop() ?? '';

/** A Windows path as a name relative to the child's folder (or absolute, for a POSIX path). */
function fromWindows(path: string, relative: boolean): string {
  if (!relative && /^[A-Za-z]:[\\/]|^\\\\/.test(path)) return baseName(path);
  return path.replace(/\\/g, '/').replace(/^(\.\/)+/, '');
}

function decodeUrlPath(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    throw new BlockError('Corrupt', 'the MacX parent locator is not a valid file URL');
  }
}

export async function parentFileName(proto: Protocol, header: DynamicHeader): Promise<string> {
  for (const platform of PREFERENCE) {
    const loc = header.locators.find((l) => l.platform === platform && l.length > 0);
    if (!loc) continue;
    const bytes = new Uint8Array(loc.length);
    await proto.read(bytes, loc.offset);
    const name =
      platform === L.PLATFORM_MACX
        ? decodeUrlPath(Buffer.from(bytes).toString('utf8').replace(/\0.*$/s, '').replace(/^file:\/\/(localhost)?/, ''))
        : fromWindows(utf16(bytes, true), platform === L.PLATFORM_W2RU);
    if (name) return name;
  }
  const name = baseName(header.parentName);
  if (!name) throw new BlockError('Corrupt', 'this differencing VHD names no parent (no locator, no parent name)');
  return name;
}
