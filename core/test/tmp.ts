/** Test helpers: temporary folders and external tools that may be missing. */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh folder, removed by the returned cleanup. */
export function tempDir(prefix = 'platter-test-'): {
  dir: string;
  path: (name: string) => string;
  /** Writes file `name` and returns its path. */
  write: (name: string, bytes: Uint8Array | string) => string;
  cleanup: () => void;
} {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const path = (name: string) => join(dir, name);
  const write = (name: string, bytes: Uint8Array | string) => {
    writeFileSync(path(name), bytes);
    return path(name);
  };
  return { dir, path, write, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Whether a command exists. Tests that need it use `it.skipIf(!has)` and this
 * prints why, so a missing tool never passes silently.
 */
export function hasTool(name: string, installHint: string): boolean {
  const found = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).status === 0;
  if (!found) console.warn(`SKIPPED tests that need ${name}: not installed (${installHint})`);
  return found;
}

/** Runs a command, returning stdout; throws with stderr on failure. */
export function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs a command and returns its exit status and output, never throwing. */
export function shStatus(cmd: string, args: string[], opts: { cwd?: string } = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Mounts a tmpfs of `size` at new folder `dir`; false (reported as `what` skipped) where that needs root. */
function mountSmallDisk(dir: string, size: string, what: string): boolean {
  mkdirSync(dir);
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]).status === 0) return true;
  console.warn(`SKIPPED ${what}: cannot mount a small tmpfs here (needs root)`);
  return false;
}

/**
 * Runs `fn` with a tmpfs of `size` (e.g. '2m') mounted at `dir`, for tests of
 * a full disk; unmounts after. Without root there is no such mount: `what`
 * is reported as skipped and `fn` does not run.
 */
export function withSmallDisk(dir: string, size: string, what: string, fn: () => void): void {
  if (!mountSmallDisk(dir, size, what)) return;
  try {
    fn();
  } finally {
    execFileSync('umount', [dir]);
  }
}

/** withSmallDisk for an async `fn`. */
export async function withSmallDiskAsync(dir: string, size: string, what: string, fn: () => Promise<void>): Promise<void> {
  if (!mountSmallDisk(dir, size, what)) return;
  try {
    await fn();
  } finally {
    execFileSync('umount', [dir]);
  }
}
