/** Runs the `platter` CLI in-process (fast) or as a real process (signals, exit codes). */
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { run } from '../cli/main.js';

export const PLATTER_BIN = fileURLToPath(new URL('../../bin/platter.cjs', import.meta.url));

export async function platter(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await run(args, {
    stdout: { write: (t: string) => (stdout += t) },
    stderr: { write: (t: string) => (stderr += t) },
    signal: new AbortController().signal,
  });
  return { code, stdout, stderr };
}

/** The built CLI in a child process (needs `npm run build`, which `npm test` does). */
export function platterProcess(args: string[], opts: { cwd?: string; user?: string; env?: Record<string, string> } = {}) {
  const cmd = opts.user ? 'runuser' : process.execPath;
  const argv = opts.user ? ['-u', opts.user, '--', process.execPath, PLATTER_BIN, ...args] : [PLATTER_BIN, ...args];
  const r = spawnSync(cmd, argv, { encoding: 'utf8', cwd: opts.cwd, env: { ...process.env, ...opts.env } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function spawnPlatter(args: string[]) {
  return spawn(process.execPath, [PLATTER_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}
