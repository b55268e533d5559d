/**
 * Progress for people (-p: a bar with speed and time left) and for programs
 * (--progress=json: one JSON object per line).
 */
import type { Progress } from '../ops/job.js';
import { formatSize } from '../options/size.js';

export type ProgressMode = 'none' | 'bar' | 'json';

export interface Writer {
  write(text: string): unknown;
  isTTY?: boolean;
}

export function progressReporter(mode: ProgressMode, out: Writer): ((p: Progress) => void) | undefined {
  if (mode === 'none') return undefined;
  const started = Date.now();
  let lastLine = '';
  return (p) => {
    const elapsed = (Date.now() - started) / 1000;
    const rate = elapsed > 0 ? p.done / elapsed : 0;
    const remaining = rate > 0 ? (p.total - p.done) / rate : undefined;
    const percent = p.total > 0 ? (100 * p.done) / p.total : 100;
    if (mode === 'json') {
      out.write(
        JSON.stringify({
          done: p.done,
          total: p.total,
          percent: Math.round(percent * 100) / 100,
          bytesPerSecond: Math.round(rate),
          secondsLeft: remaining === undefined ? null : Math.round(remaining * 10) / 10,
        }) + '\n',
      );
      return;
    }
    const width = 30;
    const filled = Math.round((width * percent) / 100);
    const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
    const eta = remaining === undefined ? '--:--' : clock(remaining);
    const line = `[${bar}] ${percent.toFixed(2).padStart(6)}%  ${formatSize(p.done)} of ${formatSize(p.total)}  ${formatSize(Math.round(rate))}/s  ${eta} left`;
    if (line === lastLine) return;
    lastLine = line;
    const done = p.done >= p.total;
    // On a terminal the bar redraws in place; elsewhere each update is a line.
    out.write(out.isTTY ? `\r${line}\x1b[K${done ? '\n' : ''}` : `${line}\n`);
  };
}

function clock(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}
