// The bare app shell; the real UI (image list, wizards, jobs) comes later.
export function App() {
  // Present under Electron (set by the preload); absent in a plain browser.
  const version = window.platter?.version;
  return (
    <main className="app">
      <h1 className="app-name">Platter</h1>
      <p className="app-tagline">
        Create, inspect, convert, check and resize virtual disk images.
      </p>
      {version ? <p className="app-version">Version {version}</p> : null}
    </main>
  );
}
