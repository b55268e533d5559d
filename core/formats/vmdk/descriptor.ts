/**
 * The VMDK text descriptor: what the disk is made of (extent lines), its
 * content IDs (CID, parentCID), its parent's name and the disk database
 * (ddb.*). Embedded in a monolithic sparse file or a file of its own.
 */
import { BlockError } from '../../image/errors.js';
import { MAX_DESCRIPTOR_BYTES } from './limits.js';

export const ACCESS_MODES = ['RW', 'RDONLY', 'NOACCESS'] as const;
export type ExtentAccess = (typeof ACCESS_MODES)[number];
export const EXTENT_TYPES = ['FLAT', 'SPARSE', 'ZERO', 'VMFS', 'VMFSSPARSE', 'SESPARSE'] as const;
export type ExtentType = (typeof EXTENT_TYPES)[number];

/** One extent line: `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`. */
export interface ExtentLine {
  access: ExtentAccess;
  sectors: number;
  type: ExtentType;
  /** The extent's file, relative to the descriptor's folder (absent for ZERO). */
  file?: string;
  /** FLAT only: where the extent starts in its file, in sectors. */
  offset?: number;
}

export interface Descriptor {
  version: number;
  encoding?: string;
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  extents: ExtentLine[];
  /** The disk database, `ddb.` keys without the prefix, in file order. */
  ddb: Map<string, string>;
}

/** Descriptor create types QEMU opens from a descriptor file of their own. */
export const DESCRIPTOR_FILE_TYPES = [
  'monolithicFlat',
  'vmfs',
  'vmfsSparse',
  'seSparse',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
];

const invalid = (what: string) => new BlockError('InvalidFormat', what);
/** Quoted lines in messages, cut so that a hostile line stays one readable line. */
const quote = (line: string) => JSON.stringify(line.length > 80 ? `${line.slice(0, 80)}...` : line);
const unquote = (v: string) => (v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v);

function parseCid(value: string | undefined, key: string): number {
  if (value === undefined) throw invalid(`the descriptor has no ${key}`);
  if (!/^[0-9a-fA-F]{1,8}$/.test(value)) throw invalid(`the descriptor's ${key} is not a 32-bit hex number: ${quote(value)}`);
  return parseInt(value, 16);
}

const EXTENT_RE = /^(RW|RDONLY|NOACCESS)\s+(\S+)\s+(\S+)(?:\s+"([^"]*)")?(?:\s+(\S+))?$/;

function parseExtentLine(line: string): ExtentLine {
  const m = EXTENT_RE.exec(line);
  const bad = () => invalid(`invalid extent line: ${quote(line)}`);
  if (!m) throw bad();
  const [, access, sectorsText, type, file, offsetText] = m;
  if (!/^\d+$/.test(sectorsText) || !(EXTENT_TYPES as readonly string[]).includes(type)) throw bad();
  const sectors = Number(sectorsText);
  if (!Number.isSafeInteger(sectors) || sectors <= 0) throw bad();
  const ext: ExtentLine = { access: access as ExtentAccess, sectors, type: type as ExtentType };
  if (type === 'ZERO') {
    if (file !== undefined || offsetText !== undefined) throw bad();
    return ext;
  }
  if (file === undefined || file === '') throw bad();
  ext.file = file;
  // Only FLAT extents say where they start (QEMU requires it); no other type takes an offset.
  if (type === 'FLAT') {
    if (offsetText === undefined || !/^\d+$/.test(offsetText) || !Number.isSafeInteger(Number(offsetText))) throw bad();
    ext.offset = Number(offsetText);
  } else if (offsetText !== undefined) {
    throw bad();
  }
  return ext;
}

/** Parses descriptor text (up to the first NUL, which ends an embedded one). */
export function parseDescriptor(text: string): Descriptor {
  if (text.length > MAX_DESCRIPTOR_BYTES) throw invalid(`the descriptor is larger than ${MAX_DESCRIPTOR_BYTES} bytes`);
  const nul = text.indexOf('\0');
  const body = nul >= 0 ? text.slice(0, nul) : text;
  const values = new Map<string, string>();
  const ddb = new Map<string, string>();
  const extents: ExtentLine[] = [];
  for (const raw of body.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (/^(RW|RDONLY|NOACCESS)\s/.test(line)) {
      extents.push(parseExtentLine(line));
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) throw invalid(`invalid descriptor line: ${quote(line)}`);
    const key = line.slice(0, eq).trim();
    const value = unquote(line.slice(eq + 1).trim());
    if (key.startsWith('ddb.')) ddb.set(key.slice(4), value);
    else values.set(key, value);
  }
  const version = Number(values.get('version') ?? 1);
  if (![1, 2, 3].includes(version)) {
    throw new BlockError('Unsupported', `unsupported descriptor version ${quote(values.get('version') ?? '')}`);
  }
  const createType = values.get('createType');
  if (createType === undefined) throw invalid('invalid VMDK image descriptor: it has no createType');
  if (extents.length === 0) throw invalid('the descriptor lists no extents');
  return {
    version,
    encoding: values.get('encoding'),
    cid: parseCid(values.get('CID'), 'CID'),
    parentCid: parseCid(values.get('parentCID'), 'parentCID'),
    createType,
    parentFileNameHint: values.get('parentFileNameHint'),
    extents,
    ddb,
  };
}

/** CIDs as QEMU prints them (%x): no leading zeros. */
const hex = (n: number) => (n >>> 0).toString(16);

export function formatExtentLine(e: ExtentLine): string {
  const file = e.file === undefined ? '' : ` "${e.file}"`;
  const offset = e.offset === undefined ? '' : ` ${e.offset}`;
  return `${e.access} ${e.sectors} ${e.type}${file}${offset}`;
}

/** The descriptor's text, laid out as qemu-img and VMware write it. */
export function formatDescriptor(d: Descriptor): string {
  const lines = ['# Disk DescriptorFile', `version=${d.version}`];
  if (d.encoding !== undefined) lines.push(`encoding="${d.encoding}"`);
  lines.push(`CID=${hex(d.cid)}`, `parentCID=${hex(d.parentCid)}`, `createType="${d.createType}"`);
  // As qemu-img writes it: the parent's name takes the place of the blank line.
  lines.push(d.parentFileNameHint !== undefined ? `parentFileNameHint="${d.parentFileNameHint}"` : '');
  lines.push('# Extent description', ...d.extents.map(formatExtentLine), '', '# The Disk Data Base', '#DDB', '');
  for (const [k, v] of d.ddb) lines.push(`ddb.${k} = "${v}"`);
  return lines.join('\n') + '\n';
}

/**
 * The same text with a new CID: only that line changes, so whatever else the
 * file holds (comments, keys Platter does not know) stays as it was.
 */
export function replaceCid(text: string, cid: number): string {
  const re = /^([ \t]*CID[ \t]*=[ \t]*)[0-9a-fA-F]+/m;
  if (!re.test(text)) throw invalid('the descriptor has no CID');
  return text.replace(re, `$1${hex(cid)}`);
}

