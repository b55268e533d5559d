/**
 * Every contract method over core/ops, in plain Node (no Electron), so the
 * Electron main process and the web host serve the very same code. Each call
 * re-parses its input with the contract's schema (the caller is untrusted),
 * runs, checks its own output, and answers `{ ok, output }` or
 * `{ ok: false, error: { kind, message } }`; nothing thrown escapes.
 */
import { statfs } from 'node:fs/promises';
import path from 'node:path';
import { snapshotJson } from '../../core/cli/snapshot-list.js';
import { createOptionsOf, DRIVERS } from '../../core/image/registry.js';
import { listDevices } from '../../core/io/devices.js';
import { isCompactable } from '../../core/image/driver.js';
import { openImage } from '../../core/image/open.js';
import { check } from '../../core/ops/check.js';
import { compact } from '../../core/ops/compact.js';
import { create } from '../../core/ops/create.js';
import { info } from '../../core/ops/info.js';
import { map } from '../../core/ops/map.js';
import { measure } from '../../core/ops/measure.js';
import type { OptionDecl } from '../../core/options/schema.js';
import { contract, type ErrorShape, type Input, type JobInfo, type MethodName, type Output } from './contract.js';
import { errorShape, validationError } from './errors.js';
import { METHOD_NAMES } from './methods.js';

/** What the handlers need from the host: the job manager and (in Electron) native dialogs. */
export interface HandlerDeps {
  jobs: {
    startConvert(input: Input<'startConvert'>): string;
    cancel(jobId: string): boolean;
    list(): JobInfo[];
  };
  openDialog(input: Input<'openDialog'>): Promise<Output<'openDialog'>>;
  saveDialog(input: Input<'saveDialog'>): Promise<Output<'saveDialog'>>;
}

export type Reply = { ok: true; output: unknown } | { ok: false; error: ErrorShape };

export interface Handlers {
  /** Runs `method` on raw (untrusted) input; never throws. */
  call(method: string, input: unknown): Promise<Reply>;
}

type Impl = { [M in MethodName]: (input: Input<M>) => Promise<Output<M>> };

// METHOD_NAMES (the preload's zod-free list) must be exactly the contract's keys.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const namesMatch: Same<(typeof METHOD_NAMES)[number], MethodName> = true;
void namesMatch;

/** Dialogs for hosts without native ones (the web host): the UI asks for a typed path. */
export const noDialogs = {
  openDialog: async () => ({ path: null }),
  saveDialog: async () => ({ path: null }),
} satisfies Pick<HandlerDeps, 'openDialog' | 'saveDialog'>;

function optionDecl(o: OptionDecl) {
  const { name, type, help, requires } = o;
  return {
    name,
    type,
    help,
    ...(o.default !== undefined && { default: o.default }),
    ...('values' in o && { values: [...o.values] }),
    ...('min' in o && o.min !== undefined && { min: o.min }),
    ...('max' in o && o.max !== undefined && { max: o.max }),
    ...('powerOfTwo' in o && o.powerOfTwo !== undefined && { powerOfTwo: o.powerOfTwo }),
    ...(requires && { requires: requires.map((r) => ({ ...r })) }),
  };
}

/** Free bytes for an unprivileged user where `p` is, or would be created. */
async function freeBytes(p: string): Promise<number> {
  let s;
  try {
    s = await statfs(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    s = await statfs(path.dirname(p));
  }
  return s.bavail * s.bsize;
}

function implement(deps: HandlerDeps): Impl {
  return {
    formats: async () =>
      DRIVERS.map((d) => ({
        name: d.name,
        description: d.description,
        canCreate: d.create !== undefined,
        createOptions: d.create ? createOptionsOf(d).map(optionDecl) : [],
      })),
    info: async ({ path: filename, backingChain }) =>
      (await info({ filename, backingChain })).map((i) =>
        i.snapshots ? { ...i, snapshots: i.snapshots.map(snapshotJson) } : i,
      ) as Output<'info'>,
    map: async ({ path: filename }) =>
      (await map({ filename })).map(({ filename: _file, ...extent }) => extent),
    measure: async ({ format, options, size, source }) => {
      const m = await measure({ targetFormat: format, options, size, filename: source });
      const bitmaps = m.bitmaps !== undefined && { bitmaps: m.bitmaps };
      return { required: m.required, fullyAllocated: m['fully-allocated'], ...bitmaps };
    },
    freeSpace: async ({ path: p }) => ({ bytes: await freeBytes(p) }),
    create: async ({ path: filename, format, size, options }) => {
      await create({ filename, format, size, options });
      return { path: filename };
    },
    check: async ({ path: filename, repair }) => {
      const log: string[] = [];
      const report = await check({ filename, repair, log: (line) => log.push(line) });
      return { ...report, log };
    },
    actions: async ({ path: filename }) => {
      const image = await openImage(filename, { noBacking: true });
      try {
        return { compact: isCompactable(image.layer) };
      } finally {
        await image.close();
      }
    },
    compact: ({ path: filename }) => compact({ filename }),
    startConvert: async (input) => ({ jobId: deps.jobs.startConvert(input) }),
    cancelJob: async ({ jobId }) => ({ cancelled: deps.jobs.cancel(jobId) }),
    listJobs: async () => deps.jobs.list(),
    devices: () => listDevices(),
    openDialog: (input) => deps.openDialog(input),
    saveDialog: (input) => deps.saveDialog(input),
  };
}

const isMethod = (name: string): name is MethodName => Object.hasOwn(contract, name);

export function createHandlers(deps: HandlerDeps): Handlers {
  const impl = implement(deps);
  return {
    async call(method, input) {
      if (typeof method !== 'string' || !isMethod(method)) {
        const message = `method: unknown method '${String(method).slice(0, 64)}'`;
        return { ok: false, error: { kind: 'Validation', message } };
      }
      const schema = contract[method];
      const parsed = schema.input.safeParse(input);
      if (!parsed.success) return { ok: false, error: validationError('input', parsed.error) };
      let output: unknown;
      try {
        output = await (impl[method] as (i: unknown) => Promise<unknown>)(parsed.data);
      } catch (err) {
        return { ok: false, error: errorShape(err) };
      }
      const checked = schema.output.safeParse(output);
      if (!checked.success) return { ok: false, error: validationError('output', checked.error) };
      return { ok: true, output: checked.data };
    },
  };
}
