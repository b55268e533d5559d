// Every job the engine runs or ran, updated live from `job` events (App subscribes).
import { useMemo } from 'react';
import type { JobInfo } from '../electron/ipc/contract.js';
import { formatSize } from '../core/options/size.js';
import { api } from './api.js';
import { columnsFor, DataTable } from './DataTable.js';
import { useApp } from './store.js';

const col = columnsFor<JobInfo>();
const columns = col.columns([
  col.accessor('title', { header: 'Job' }),
  col.accessor('target', { header: 'Target' }),
  col.accessor('state', { header: 'State', cell: (c) => <span className={`state state-${c.getValue()}`}>{c.getValue()}</span> }),
  col.display({
    id: 'progress',
    header: 'Progress',
    cell: ({ row }) => {
      const j = row.original;
      const pct = j.total > 0 ? (j.done / j.total) * 100 : 0;
      return <progress max={100} value={pct} aria-label={`${j.title}: ${pct.toFixed(0)}%`} />;
    },
  }),
  col.accessor('bytesPerSecond', { header: 'Speed', cell: (c) => (c.row.original.state === 'running' ? `${formatSize(c.getValue())}/s` : '') }),
  col.accessor('startedAt', { header: 'Started', cell: (c) => new Date(c.getValue()).toLocaleTimeString() }),
  col.display({
    id: 'actions',
    header: 'Actions',
    cell: ({ row }) =>
      row.original.state === 'running' ? (
        <button type="button" onClick={() => void api().cancelJob({ jobId: row.original.id })}>Cancel</button>
      ) : (
        <span className="muted">{row.original.error?.message ?? ''}</span>
      ),
  }),
]);

export function JobsView() {
  const jobs = useApp((s) => s.jobs);
  const data = useMemo(() => Object.values(jobs).sort((a, b) => b.startedAt - a.startedAt), [jobs]);
  return (
    <section aria-labelledby="jobs-title">
      <h2 id="jobs-title">Jobs</h2>
      {data.length === 0 ? (
        <p className="muted">No jobs yet: a convert shows here while it runs.</p>
      ) : (
        <DataTable columns={columns} data={data} testId="jobs-table" />
      )}
    </section>
  );
}
