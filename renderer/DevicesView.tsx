// The machine's drives, kept current by `devices` events: the start of drive
// imaging (reading a drive into an image comes with its own issue).
import { useEffect, useState } from 'react';
import type { DeviceList } from '../electron/ipc/contract.js';
import { formatSize } from '../core/options/size.js';
import { api, errorText } from './api.js';
import { columnsFor, DataTable } from './DataTable.js';

type Device = DeviceList['devices'][number];
const KIND: Record<Device['kind'], string> = { disk: 'Disk', cdrom: 'CD/DVD drive', loop: 'Loop device' };

const col = columnsFor<Device>();
const columns = col.columns([
  col.accessor('path', { header: 'Device' }),
  col.accessor('kind', { header: 'Kind', cell: (c) => KIND[c.getValue()] }),
  col.accessor('size', { header: 'Size', cell: (c) => (c.getValue() ? formatSize(c.getValue()) : 'no media') }),
  col.accessor('model', { header: 'Model', cell: (c) => c.getValue() ?? '' }),
  col.display({
    id: 'flags',
    header: 'Notes',
    cell: ({ row }) => {
      const d = row.original;
      return [d.removable && 'removable', d.readOnly && 'read-only', d.backingFile && `file ${d.backingFile}`].filter(Boolean).join(', ');
    },
  }),
]);

export function DevicesView() {
  const [list, setList] = useState<DeviceList | undefined>();
  const [error, setError] = useState<string | undefined>();
  useEffect(() => {
    api().devices({}).then(setList, (e: unknown) => setError(errorText(e)));
    return api().on('devices', setList);
  }, []);
  return (
    <section aria-labelledby="devices-title">
      <h2 id="devices-title">Devices</h2>
      {error ? <p className="error" role="alert">{error}</p> : null}
      {list && !list.supported ? <p className="muted">Listing drives is not supported on this system yet.</p> : null}
      {list?.supported && list.devices.length === 0 ? <p className="muted">No drives found.</p> : null}
      {list?.devices.length ? (
        <DataTable columns={columns} data={list.devices} testId="devices-table" />
      ) : null}
    </section>
  );
}
