// One image: its info, backing chain, snapshots, allocation map and what can be done to it.
import { useEffect, useMemo, useState } from 'react';
import type { ImageInfo, MapExtent } from '../electron/ipc/contract.js';
import { formatSize } from '../core/options/size.js';
import { api, errorText } from './api.js';
import { useRequest } from './use-request.js';
import { columnsFor, DataTable } from './DataTable.js';
import { formatBytes, MapCanvas } from './MapCanvas.js';

type Loaded<T> = { value?: T; error?: string };

function useLoad<T>(load: () => Promise<T>, key: string): Loaded<T> {
  const [state, setState] = useState<Loaded<T>>({});
  useEffect(() => {
    let live = true;
    setState({});
    load().then(
      (value) => live && setState({ value }),
      (e) => live && setState({ error: errorText(e) }),
    );
    return () => {
      live = false;
    };
    // `key` names what load() reads.
  }, [key]);
  return state;
}

const show = (v: unknown) => (typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v));

type Snapshot = NonNullable<ImageInfo['snapshots']>[number];
const snap = columnsFor<Snapshot>();
const snapshotColumns = snap.columns([
  snap.accessor('id', { header: 'ID' }),
  snap.accessor('name', { header: 'Tag' }),
  snap.accessor('vm-state-size', { header: 'VM state', cell: (c) => formatSize(c.getValue()) }),
  snap.accessor('date-sec', { header: 'Date', cell: (c) => new Date(c.getValue() * 1000).toISOString().replace('T', ' ').slice(0, 19) }),
  snap.accessor('vm-clock-nsec', { header: 'VM clock', cell: (c) => `${(c.getValue() / 1e9).toFixed(3)} s` }),
]);

function SnapshotTable({ snapshots }: { snapshots: Snapshot[] }) {
  if (snapshots.length === 0) return <p className="muted">No internal snapshots.</p>;
  return (
    <DataTable columns={snapshotColumns} data={snapshots} caption="Snapshots" />
  );
}

/** What can be done to the image: compact (VDI), for now. */
function Actions({ path, onChanged }: { path: string; onChanged: () => void }) {
  const actions = useLoad(() => api().actions({ path }), path);
  const compacting = useRequest();
  const [result, setResult] = useState<string>();
  if (!actions.value?.compact) return null;
  const compact = () =>
    compacting.run(async () => {
      setResult(undefined);
      const { before, after } = await api().compact({ path });
      setResult(`The file went from ${formatBytes(before)} to ${formatBytes(after)}.`);
      onChanged();
    });
  return (
    <section aria-labelledby="actions-title">
      <h3 id="actions-title">Actions</h3>
      <p className="muted">Compact drops the blocks that hold only zeros and packs the file, as VBoxManage does.</p>
      <button type="button" onClick={() => void compact()} disabled={compacting.busy}>Compact</button>
      {compacting.busy ? <p className="muted" role="status">Compacting…</p> : null}
      {result ? <p role="status" data-testid="compact-result">{result}</p> : null}
      {compacting.error ? <p className="error" role="alert">{compacting.error}</p> : null}
    </section>
  );
}

export function Inspector({ path }: { path: string }) {
  // Bumped after an action changes the file, so what is shown is read again.
  const [version, setVersion] = useState(0);
  const key = `${path}#${version}`;
  // The image alone, then its chain: a backing file that cannot be opened
  // leaves the image described, and says so where the chain would be.
  const info = useLoad(() => api().info({ path }), key);
  const chain = useLoad(() => api().info({ path, backingChain: true }), key);
  const map = useLoad<MapExtent[]>(() => api().map({ path }), key);
  const top = info.value?.[0];
  const snapshots = useMemo(() => top?.snapshots ?? [], [top]);

  return (
    <article className="inspector" aria-labelledby="inspector-title">
      <h2 id="inspector-title" className="path">{path}</h2>
      {info.error ? <p className="error" role="alert">{info.error}</p> : null}
      {!top && !info.error ? <p className="muted" role="status">Reading the image…</p> : null}
      {top ? (
        <>
          <section aria-labelledby="info-title">
            <h3 id="info-title">Image</h3>
            <dl className="facts">
              <dt>Virtual size</dt><dd data-testid="virtual-size">{formatBytes(top['virtual-size'])}</dd>
              <dt>Format</dt><dd>{top.format}</dd>
              <dt>Disk size</dt><dd>{top['actual-size'] !== undefined ? formatBytes(top['actual-size']) : '—'}</dd>
              <dt>Cluster size</dt><dd>{top['cluster-size'] !== undefined ? formatBytes(top['cluster-size']) : '—'}</dd>
              <dt>Dirty</dt><dd>{top['dirty-flag'] ? 'yes' : 'no'}</dd>
              {top['backing-filename'] ? (<><dt>Backing file</dt><dd>{top['backing-filename']}</dd></>) : null}
            </dl>
            {top['format-specific'] ? (
              <table className="grid kv">
                <caption>Format-specific ({top['format-specific'].type})</caption>
                <tbody>
                  {Object.entries(top['format-specific'].data).map(([k, v]) => (
                    <tr key={k}><th scope="row">{k}</th><td>{show(v)}</td></tr>
                  ))}
                </tbody>
              </table>
            ) : null}
          </section>
          <section aria-labelledby="chain-title">
            <h3 id="chain-title">Backing chain</h3>
            {chain.error ? (
              <p className="error" role="alert" data-testid="chain-error">{chain.error}</p>
            ) : !chain.value ? (
              <p className="muted">Reading the chain…</p>
            ) : chain.value.length > 1 ? (
              <ol className="chain">
                {chain.value.map((img, i) => (
                  <li key={i}>{img.filename} <span className="muted">({img.format}, {formatSize(img['virtual-size'])})</span></li>
                ))}
              </ol>
            ) : (
              <p className="muted">No backing file.</p>
            )}
          </section>
          <section aria-labelledby="snap-title">
            <h3 id="snap-title">Snapshots</h3>
            <SnapshotTable snapshots={snapshots} />
          </section>
          <section aria-labelledby="map-title">
            <h3 id="map-title">Allocation map</h3>
            {map.error ? <p className="error" role="alert">{map.error}</p> : null}
            {map.value ? <MapCanvas extents={map.value} size={top['virtual-size']} /> : map.error ? null : <p className="muted">Mapping…</p>}
          </section>
        </>
      ) : null}
      {/* Outside the part that reloads, so its result stays in view. */}
      <Actions path={path} onChanged={() => setVersion((v) => v + 1)} />
    </article>
  );
}
