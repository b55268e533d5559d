/** Backing chains built with qemu-img and qemu-io, for the tests of rebase and commit. */
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { qemuIo } from './qemu.js';
import { sh } from './tmp.js';

/** Names files in one folder. */
export type Folder = (file: string) => string;

/**
 * A new folder `dir` with base (3 MiB, shorter than the rest) <- mid
 * (compat=0.10, 4 KiB clusters) <- top, and an unrelated image `other`: data,
 * zero clusters, discards and partial clusters at every level.
 */
export function makeChain(dir: string): Folder {
  mkdirSync(dir);
  const p: Folder = (file) => join(dir, file);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', p('base.qcow2'), '3M']);
  qemuIo(p('base.qcow2'), ['write -P 1 0 1M', 'write -P 5 2M 512k', 'write -P 9 3000k 72k']);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4k', '-b', 'base.qcow2', '-F', 'qcow2', p('mid.qcow2'), '4M']);
  qemuIo(p('mid.qcow2'), ['write -P 2 512k 1M', 'write -z 2M 64k', 'write -P 6 2570k 3k', 'write -P 8 3500k 100k']);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', p('top.qcow2'), '4M']);
  qemuIo(p('top.qcow2'), ['write -P 3 100k 10k', 'write -z 1M 64k', 'discard 2M 128k', 'write -P 4 3520k 1k']);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', p('other.qcow2'), '4M']);
  qemuIo(p('other.qcow2'), ['write -P 7 256k 2M', 'write -P 1 0 64k']);
  return p;
}

/** A copy of a folder at `dir`, for qemu-img to do the same job in. */
export function twinFolder(p: Folder, dir: string): Folder {
  cpSync(p(''), dir, { recursive: true });
  return (file) => join(dir, file);
}

/** The guest content of `image` (backing files followed) as a raw file, taken now. */
export function guestRaw(image: string, raw: string): string {
  sh('qemu-img', ['convert', '-O', 'raw', image, raw]);
  return raw;
}

/** The SHA-256 of each named file: what must not change. */
export function fileHashes(p: Folder, names: string[]): Record<string, string> {
  return Object.fromEntries(names.map((n) => [n, createHash('sha256').update(readFileSync(p(n))).digest('hex')]));
}
