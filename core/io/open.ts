/**
 * Turns what the user typed into a protocol. Only local files for now; URL
 * schemes (nbd://, ssh://, ...) will be recognised here.
 */
import { BlockError } from '../image/errors.js';
import { FileProtocol, type FileOpenOptions } from './file.js';
import type { Protocol } from './protocol.js';

const URL_SCHEME = /^([a-z][a-z0-9+.-]*):\/\//i;

export async function openProtocol(name: string, opts: FileOpenOptions): Promise<Protocol> {
  const scheme = URL_SCHEME.exec(name)?.[1];
  if (scheme && scheme.toLowerCase() !== 'file') {
    throw new BlockError('Unsupported', `the ${scheme} protocol is not supported yet`, { path: name, op: 'open' });
  }
  const path = scheme ? decodeURIComponent(new URL(name).pathname) : name;
  return FileProtocol.open(path, opts);
}
