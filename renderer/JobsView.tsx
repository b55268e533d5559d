// Every job the engine runs or ran, updated live from `job` events (App subscribes).
import { useMemo } from 'react';
import { createColumnHelper, tableFeatures, useTable } from '@tanstack/react-table';
import type { JobInfo } from '../electron/ipc/contract.js';
import { formatSize } from '../core/options/size.js';
import { api } from './api.js';
import { useApp } from './store.js';

const features = tableFeatures({});
const col = createColumnHelper<typeof features, JobInfo>();
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
  const table = useTable({ features, columns, data });
  return (
    <section aria-labelledby="jobs-title">
      <h2 id="jobs-title">Jobs</h2>
      {data.length === 0 ? (
        <p className="muted">No jobs yet: a convert shows here while it runs.</p>
      ) : (
        <table className="grid" data-testid="jobs-table">
          <thead>
            {table.getHeaderGroups().map((g) => (
              <tr key={g.id}>
                {g.headers.map((h) => (
                  <th key={h.id} scope="col">{h.isPlaceholder ? null : <table.FlexRender header={h} />}</th>
                ))}
              </tr>
            ))}
          </thead>
          <tbody>
            {table.getRowModel().rows.map((r) => (
              <tr key={r.id}>
                {r.getAllCells().map((c) => (
                  <td key={c.id}><table.FlexRender cell={c} /></td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
