/** libyal's FUSE mount tools (vmdkmount, vhdimount): an independent reader of the guest bytes of an image. */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { hasTool, shStatus } from './tmp.js';

/** Whether `tool` can mount here: it is installed, and FUSE and root (to unmount: no fusermount) are there. */
export function hasFuseTool(tool: string, installHint: string): boolean {
  if (!hasTool(tool, installHint)) return false;
  if (existsSync('/dev/fuse') && process.getuid?.() === 0) return true;
  console.warn(`SKIPPED tests that need ${tool}: no /dev/fuse, or not root (needed to unmount)`);
  return false;
}

/**
 * Mounts `image` with `tool` at `mnt` (a folder made here), hands `use` the
 * path of the guest's bytes as the tool exposes them (`mnt/exposed`, e.g.
 * vhdi1), and unmounts, with `umount` as the tests' machines have no fusermount.
 * Throws with the tool's words if it ends before exposing the file.
 */
export async function withFuseMount<T>(
  tool: string,
  image: string,
  mnt: string,
  exposed: string,
  use: (file: string) => T | Promise<T>,
): Promise<T> {
  mkdirSync(mnt);
  const file = join(mnt, exposed);
  // -v keeps it in the foreground, its complaints on stderr; unmounting ends it.
  const child = spawn(tool, ['-v', image, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise((r) => child.once('exit', r));
  const running = () => child.exitCode === null && child.signalCode === null;
  try {
    for (let i = 0; i < 50 && !existsSync(file) && running(); i++) await sleep(100);
    if (!existsSync(file)) throw new Error(`${tool} exposed no ${exposed} for ${image}: ${stderr.trim()}`);
    return await use(file);
  } finally {
    shStatus('umount', [mnt]);
    await Promise.race([exited, sleep(5000)]);
    if (running()) child.kill();
  }
}

/** Where two byte strings first differ, for a failure message; undefined when they are equal. */
export function firstDifference(seen: Uint8Array, expected: Uint8Array): string | undefined {
  if (Buffer.compare(seen, expected) === 0) return undefined;
  const n = Math.min(seen.length, expected.length);
  let i = 0;
  while (i < n && seen[i] === expected[i]) i++;
  if (i === n) return `${seen.length} bytes where ${expected.length} were expected`;
  return `byte ${i} is ${seen[i]} where ${expected[i]} was expected (${seen.length} bytes seen)`;
}
