// The app frame: sidebar (Images, the images opened, Jobs), a toolbar (open a
// path, Create, Convert) and the current screen.
import { useEffect, useState, type DragEvent, type FormEvent } from 'react';
import { api, errorText, hasNativeDialogs } from './api.js';
import { ConvertWizard } from './ConvertWizard.js';
import { CreateWizard } from './CreateWizard.js';
import { DevicesView } from './DevicesView.js';
import { Inspector } from './Inspector.js';
import { JobsView } from './JobsView.js';
import { useApp, type View } from './store.js';

const baseName = (p: string) => p.split(/[\\/]/).pop() || p;

/** Keeps the job list in the store: the current list once, then every `job` event. */
function useJobFeed(): string | undefined {
  const setJobs = useApp((s) => s.setJobs);
  const upsertJob = useApp((s) => s.upsertJob);
  const [error, setError] = useState<string>();
  useEffect(() => {
    const off = api().on('job', upsertJob);
    api().listJobs({}).then(setJobs, (e) => setError(errorText(e)));
    return off;
  }, [setJobs, upsertJob]);
  return error;
}

function Toolbar() {
  const { show, openImage } = useApp();
  const [path, setPath] = useState('');
  const [error, setError] = useState<string>();
  const open = (e: FormEvent) => {
    e.preventDefault();
    if (path.trim()) openImage(path.trim());
  };
  const browse = async () => {
    try {
      const r = await api().openDialog({ title: 'Open an image' });
      if (r.path) openImage(r.path);
    } catch (err) {
      setError(errorText(err));
    }
  };
  return (
    <header className="toolbar">
      <form className="open-form" onSubmit={open} aria-label="Open an image">
        <label htmlFor="open-path" className="visually-hidden">Image path</label>
        <input id="open-path" type="text" value={path} placeholder="/path/to/image.qcow2" spellCheck={false} autoComplete="off"
          onChange={(e) => setPath(e.target.value)} />
        <button type="submit">Open</button>
        {hasNativeDialogs() ? <button type="button" onClick={() => void browse()}>Open…</button> : null}
      </form>
      <div className="toolbar-actions">
        <button type="button" onClick={() => show('create')}>Create</button>
        <button type="button" onClick={() => show('convert')}>Convert</button>
      </div>
      {error ? <p className="error" role="alert">{error}</p> : null}
    </header>
  );
}

function Sidebar() {
  const { view, show, images, openImage, jobs } = useApp();
  const running = Object.values(jobs).filter((j) => j.state === 'running').length;
  const item = (v: View, label: string, extra?: string) => (
    <button type="button" className="nav-item" aria-current={view === v ? 'page' : undefined} onClick={() => show(v)}>
      {label}
      {extra ? <span className="badge">{extra}</span> : null}
    </button>
  );
  return (
    <nav className="sidebar" aria-label="Sections">
      <h1 className="app-name">Platter</h1>
      <ul>
        <li>
          {item('images', 'Images')}
          {images.length ? (
            <ul className="image-list" aria-label="Opened images">
              {images.map((p, i) => (
                <li key={p}>
                  <button type="button" className="nav-sub" title={p} aria-current={view === 'images' && i === 0 ? 'true' : undefined}
                    onClick={() => openImage(p)}>
                    {baseName(p)}
                  </button>
                </li>
              ))}
            </ul>
          ) : null}
        </li>
        <li>{item('devices', 'Devices')}</li>
        <li>{item('jobs', 'Jobs', running ? `${running} running` : undefined)}</li>
      </ul>
    </nav>
  );
}

/**
 * Image files dropped on the window open in the inspector. Only the desktop
 * app can tell where a dropped file lives; a browser is told to type the path.
 */
function useDropToOpen(openImage: (path: string) => void): { onDragOver: (e: DragEvent) => void; onDrop: (e: DragEvent) => void; notice: string | null } {
  const [notice, setNotice] = useState<string | null>(null);
  return {
    notice,
    onDragOver: (e) => {
      if (e.dataTransfer.types.includes('Files')) e.preventDefault();
    },
    onDrop: (e) => {
      e.preventDefault();
      const files = Array.from({ length: e.dataTransfer.files.length }, (_, i) => e.dataTransfer.files[i]!);
      const toPath = window.platter?.pathForFile;
      if (!toPath) {
        setNotice('Dropping files works in the desktop app; here, type the path in the toolbar.');
        return;
      }
      setNotice(null);
      for (const f of files.reverse()) {
        const p = toPath(f);
        if (p) openImage(p);
      }
    },
  };
}

export function App() {
  const { view, images, openImage } = useApp();
  const feedError = useJobFeed();
  const drop = useDropToOpen(openImage);
  return (
    <div className="frame" onDragOver={drop.onDragOver} onDrop={drop.onDrop}>
      <Sidebar />
      <div className="workspace">
        <Toolbar />
        <main className="content" id="main">
          {feedError ? <p className="error" role="alert">{feedError}</p> : null}
          {drop.notice ? <p className="muted" role="status">{drop.notice}</p> : null}
          {view === 'images' ? (
            images[0] ? <Inspector key={images[0]} path={images[0]} /> : (
              <section className="empty" aria-labelledby="empty-title">
                <h2 id="empty-title">No image open</h2>
                <p className="muted">Type a path in the toolbar and press Open, or create or convert an image.</p>
              </section>
            )
          ) : null}
          {view === 'devices' ? <DevicesView /> : null}
          {view === 'jobs' ? <JobsView /> : null}
          {view === 'create' ? <CreateWizard /> : null}
          {view === 'convert' ? <ConvertWizard /> : null}
        </main>
      </div>
    </div>
  );
}
