// One table component for every list in the UI (snapshots, jobs, devices):
// TanStack Table's model, rendered as a plain accessible <table>.
import { createColumnHelper, tableFeatures, useTable, type RowData } from '@tanstack/react-table';

export const features = tableFeatures({});

/** The column helper for rows of type T. */
export const columnsFor = <T extends RowData>() => createColumnHelper<typeof features, T>();

type Columns<T extends RowData> = ReturnType<ReturnType<typeof columnsFor<T>>['columns']>;

export function DataTable<T extends RowData>({ columns, data, caption, testId }: { columns: Columns<T>; data: T[]; caption?: string; testId?: string }) {
  const table = useTable({ features, columns, data });
  return (
    <table className="grid" data-testid={testId}>
      {caption ? <caption className="visually-hidden">{caption}</caption> : null}
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
  );
}
