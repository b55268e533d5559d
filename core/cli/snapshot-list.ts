/** The snapshot table as qemu-img prints it (snapshot -l, info). */
import type { SnapshotInfo } from '../image/driver.js';
import { formatSize } from '../options/size.js';

const pad2 = (n: number) => String(n).padStart(2, '0');

function date(sec: number): string {
  const d = new Date(sec * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function clock(nsec: bigint): string {
  const ms = Number(nsec / 1_000_000n);
  const s = Math.floor(ms / 1000);
  return `${pad2(Math.floor(s / 3600))}:${pad2(Math.floor((s / 60) % 60))}:${pad2(s % 60)}.${String(ms % 1000).padStart(3, '0')}`;
}

export function snapshotTable(list: SnapshotInfo[]): string {
  const head = `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}`;
  const rows = list.map(
    (s) =>
      `${s.id.padEnd(9)} ${s.name.padEnd(16)} ${formatSize(s.vmStateSize).padStart(8)}${date(s.dateSec).padStart(20)}${clock(s.vmClockNsec).padStart(13)}${(s.icount === undefined ? '' : String(s.icount)).padStart(11)}`,
  );
  return ['Snapshot list:', head, ...rows].join('\n') + '\n';
}

/** `info --output=json`'s "snapshots" entries, key for key. */
export function snapshotJson(s: SnapshotInfo): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  if (s.icount !== undefined) o.icount = Number(s.icount);
  o['vm-clock-nsec'] = Number(s.vmClockNsec % 1_000_000_000n);
  o.name = s.name;
  o['date-sec'] = s.dateSec;
  o['date-nsec'] = s.dateNsec;
  o['vm-clock-sec'] = Number(s.vmClockNsec / 1_000_000_000n);
  o.id = s.id;
  o['vm-state-size'] = s.vmStateSize;
  return o;
}
