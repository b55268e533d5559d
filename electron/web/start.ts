/**
 * `npm run start:web`: the engine for a browser on this machine. Prints the
 * URL (with its token) to open; Ctrl-C cancels running jobs and stops.
 * Bundled to dist/electron/web-host.cjs, next to job-worker.cjs.
 */
import path from 'node:path';
import { createHandlers, noDialogs } from '../ipc/handlers.js';
import { watchDevices } from '../devices-watch.js';
import { JobManager } from '../jobs.js';
import { startWebHost, type WebHost } from './server.js';

async function main(): Promise<void> {
  let host: WebHost | undefined;
  const jobs = new JobManager({
    workerPath: path.join(__dirname, 'job-worker.cjs'),
    onEvent: (info) => host?.publish('job', info),
  });
  const port = Number(process.env.PLATTER_WEB_PORT ?? 0);
  host = await startWebHost({
    handlers: createHandlers({ jobs, ...noDialogs }),
    rendererDir: path.join(__dirname, '..', 'renderer'),
    port: Number.isInteger(port) && port >= 0 && port < 65536 ? port : 0,
  });
  watchDevices((list) => host?.publish('devices', list));
  process.stdout.write(`Platter is at ${host.url}\n(Ctrl-C stops it)\n`);
  let stopping = false;
  const stop = async () => {
    if (stopping) process.exit(130); // a second Ctrl-C: don't wait for jobs
    stopping = true;
    await jobs.shutdown();
    await host.close();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
}

main().catch((err: unknown) => {
  process.stderr.write(`platter web host: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
