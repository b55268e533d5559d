/**
 * Long work as jobs: each convert runs in its own worker thread
 * (electron/job-worker.ts), so the host's event loop (Electron main, the web
 * host) never blocks on it. The manager keeps each job's JobInfo, reports it
 * as `job` events at most every `throttleMs` (and always at the end), and
 * computes the speed over a sliding window.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { ErrorShape, Input, JobInfo } from './ipc/contract.js';

export type ConvertJob = Input<'startConvert'>;

/** What a job's worker posts. */
export type WorkerMessage =
  | { type: 'progress'; done: number; total: number }
  | { type: 'done' }
  | { type: 'error'; error: ErrorShape };

export interface JobManagerOptions {
  /** The bundled worker, dist/electron/job-worker.cjs. */
  workerPath: string;
  /** Receives every `job` event. */
  onEvent: (info: JobInfo) => void;
  /** Least time between two progress events of one job: 250 ms is 4 a second. */
  throttleMs?: number;
  /** The speed is the progress over this much recent time. */
  speedWindowMs?: number;
}

/** Finished jobs kept for listJobs; older ones are forgotten. */
const KEEP_FINISHED = 100;

interface Job {
  info: JobInfo;
  worker: Worker;
  samples: { t: number; done: number }[];
  lastEmit: number;
  trailing?: NodeJS.Timeout;
  ended: Promise<JobInfo>;
}

export class JobManager {
  private readonly jobs = new Map<string, Job>();
  private readonly throttleMs: number;
  private readonly speedWindowMs: number;

  constructor(private readonly opts: JobManagerOptions) {
    this.throttleMs = opts.throttleMs ?? 250;
    this.speedWindowMs = opts.speedWindowMs ?? 3000;
  }

  /** Starts a convert (its input already validated); returns the job's id. */
  startConvert(input: ConvertJob): string {
    const id = randomUUID();
    const worker = new Worker(this.opts.workerPath, { workerData: input });
    const info: JobInfo = {
      id,
      kind: 'convert',
      title: `Convert ${input.sources.map((s) => path.basename(s)).join(' + ')} to ${input.targetFormat}`,
      target: input.target,
      state: 'running',
      done: 0,
      total: 0,
      bytesPerSecond: 0,
      startedAt: Date.now(),
    };
    let end!: (info: JobInfo) => void;
    const job: Job = { info, worker, samples: [], lastEmit: 0, ended: new Promise((resolve) => (end = resolve)) };
    const finish = (state: JobInfo['state'], error?: ErrorShape) => {
      if (info.state !== 'running') return;
      clearTimeout(job.trailing);
      info.state = state;
      if (state === 'done') info.done = info.total;
      if (error) info.error = error;
      this.opts.onEvent({ ...info });
      this.forgetOldJobs();
      end({ ...info });
    };
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'progress') this.progress(job, m.done, m.total);
      else if (m.type === 'done') finish('done');
      else finish(m.error.kind === 'Cancelled' ? 'cancelled' : 'failed', m.error);
    });
    worker.on('error', (err) => finish('failed', { kind: 'Io', message: `the job stopped: ${err.message}` }));
    worker.on('exit', () => finish('failed', { kind: 'Io', message: 'the job stopped unexpectedly' }));
    this.jobs.set(id, job);
    this.opts.onEvent({ ...info });
    return id;
  }

  /** Asks a running job to stop; false if there is no such running job. */
  cancel(jobId: string): boolean {
    const job = this.jobs.get(jobId);
    if (!job || job.info.state !== 'running') return false;
    job.worker.postMessage('cancel');
    return true;
  }

  list(): JobInfo[] {
    return [...this.jobs.values()].map((j) => ({ ...j.info }));
  }

  /** The job's final state, once it has ended. */
  async settled(jobId: string): Promise<JobInfo> {
    const job = this.jobs.get(jobId);
    if (!job) throw new Error(`no job ${jobId}`);
    return job.ended;
  }

  /** Cancels every running job and waits for all to end (on quit). */
  async shutdown(): Promise<void> {
    for (const id of this.jobs.keys()) this.cancel(id);
    await Promise.all([...this.jobs.values()].map((j) => j.ended));
  }

  private progress(job: Job, done: number, total: number): void {
    const now = Date.now();
    job.info.done = done;
    job.info.total = total;
    job.samples.push({ t: now, done });
    // Keep one sample at or just before the window's start as the baseline.
    while (job.samples.length > 2 && job.samples[1]!.t <= now - this.speedWindowMs) job.samples.shift();
    const first = job.samples[0]!;
    const seconds = (now - first.t) / 1000;
    job.info.bytesPerSecond = seconds > 0 ? Math.max(0, (done - first.done) / seconds) : 0;
    this.emitThrottled(job, now);
  }

  /** At most one event per throttleMs; the latest state is sent when the interval ends. */
  private emitThrottled(job: Job, now: number): void {
    if (job.trailing) return;
    const wait = job.lastEmit + this.throttleMs - now;
    const emit = () => {
      job.trailing = undefined;
      if (job.info.state !== 'running') return;
      job.lastEmit = Date.now();
      this.opts.onEvent({ ...job.info });
    };
    if (wait <= 0) emit();
    else job.trailing = setTimeout(emit, wait);
  }

  private forgetOldJobs(): void {
    const finished = [...this.jobs.entries()].filter(([, j]) => j.info.state !== 'running');
    for (const [id] of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) this.jobs.delete(id);
  }
}
