/** The app's state: which screen shows, the images opened, and every job the engine reported. */
import { create } from 'zustand';
import type { JobInfo } from '../electron/ipc/contract.js';

export type View = 'images' | 'devices' | 'jobs' | 'create' | 'convert';

interface AppState {
  view: View;
  /** Images opened this session, most recent first; the first is in the inspector. */
  images: string[];
  jobs: Record<string, JobInfo>;
  show: (view: View) => void;
  openImage: (path: string) => void;
  setJobs: (jobs: JobInfo[]) => void;
  upsertJob: (job: JobInfo) => void;
}

export const useApp = create<AppState>()((set) => ({
  view: 'images',
  images: [],
  jobs: {},
  show: (view) => set({ view }),
  openImage: (path) => set((s) => ({ view: 'images', images: [path, ...s.images.filter((p) => p !== path)] })),
  setJobs: (list) => set((s) => ({ jobs: { ...Object.fromEntries(list.map((j) => [j.id, j])), ...s.jobs } })),
  upsertJob: (job) => set((s) => ({ jobs: { ...s.jobs, [job.id]: job } })),
}));
