/** The shared handlers: valid calls reach core/ops, malformed ones are refused before anything is done. */
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeMixedRaw } from '../../core/test/images.js';
import { prng } from '../../core/test/prng.js';
import { CLEAN, problems, qemuCheck, qemuInfo, qemuIo } from '../../core/test/qemu.js';
import { hasTool, sh, shStatus, tempDir } from '../../core/test/tmp.js';
import { initialValues, optionTexts } from '../../renderer/options-model.js';
import { JobManager } from '../jobs.js';
import { contract, type Input, type JobInfo, type Output } from './contract.js';
import { createHandlers, noDialogs, type HandlerDeps, type Handlers, type Reply } from './handlers.js';
import { METHOD_NAMES } from './methods.js';

const MiB = 1 << 20;
const hasQemu = hasTool('qemu-img', 'apt-get install qemu-utils');

let t: ReturnType<typeof tempDir>;
beforeEach(() => (t = tempDir()));
afterEach(() => t.cleanup());

/** Handlers over a fake job manager that records what it was asked. */
function setup(dialogs: Pick<HandlerDeps, 'openDialog' | 'saveDialog'> = noDialogs) {
  const started: Input<'startConvert'>[] = [];
  const job: JobInfo = {
    id: 'j1',
    kind: 'convert',
    title: 'Convert a.raw to qcow2',
    target: '/tmp/b.qcow2',
    state: 'running',
    done: 1,
    total: 2,
    bytesPerSecond: 0,
    startedAt: 0,
  };
  const jobs: HandlerDeps['jobs'] = {
    startConvert: (input) => (started.push(input), 'j1'),
    cancel: (id) => id === 'j1',
    list: () => [job],
  };
  return { h: createHandlers({ jobs, ...dialogs }), started };
}

function expectOk(r: Reply): unknown {
  if (!r.ok) throw new Error(`expected ok, got ${r.error.kind}: ${r.error.message}`);
  return r.output;
}

function expectError(r: Reply, kind: string, message: RegExp | string): void {
  expect(r.ok).toBe(false);
  if (r.ok) return;
  expect(r.error.kind).toBe(kind);
  if (typeof message === 'string') expect(r.error.message).toBe(message);
  else expect(r.error.message).toMatch(message);
  expect(r.error.message).not.toContain('\n');
}

describe('handlers', () => {
  it('the zod-free method list is the contract', () => {
    expect([...METHOD_NAMES].sort()).toEqual(Object.keys(contract).sort());
  });

  it('formats lists every format with its create options', async () => {
    const { h } = setup();
    const formats = expectOk(await h.call('formats', {})) as { name: string; canCreate: boolean; createOptions: { name: string }[] }[];
    const qcow2 = formats.find((f) => f.name === 'qcow2')!;
    expect(qcow2.canCreate).toBe(true);
    expect(qcow2.createOptions.map((o) => o.name)).toEqual(expect.arrayContaining(['cluster_size', 'compat', 'preallocation']));
    const dmg = formats.find((f) => f.name === 'dmg')!;
    expect(dmg).toMatchObject({ canCreate: false, createOptions: [] });
  });

  it.skipIf(!hasQemu)('create makes an image qemu-img finds clean; info, check and measure describe it', async () => {
    const { h } = setup();
    const p = t.path('new.qcow2');
    expect(expectOk(await h.call('create', { path: p, format: 'qcow2', size: 64 * MiB, options: { cluster_size: '128k' } }))).toEqual({ path: p });
    expect(problems(qemuCheck(p))).toEqual(CLEAN);
    expect(qemuInfo(p)).toMatchObject({ 'virtual-size': 64 * MiB, 'cluster-size': 128 * 1024 });

    const [info] = expectOk(await h.call('info', { path: p })) as Record<string, unknown>[];
    expect(info).toMatchObject({ filename: p, format: 'qcow2', 'virtual-size': 64 * MiB, 'cluster-size': 128 * 1024 });

    const check = expectOk(await h.call('check', { path: p, repair: 'none' }));
    expect(check).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0, log: [] });

    const measured = expectOk(await h.call('measure', { format: 'qcow2', options: {}, size: 64 * MiB }));
    const qemu = JSON.parse(sh('qemu-img', ['measure', '--output=json', '-O', 'qcow2', '--size', String(64 * MiB)]));
    expect(measured).toEqual({ required: qemu.required, fullyAllocated: qemu['fully-allocated'] });
  });

  it.skipIf(!hasQemu)('info lists snapshots in qemu-img\'s JSON shape', async () => {
    const { h } = setup();
    const p = t.path('snap.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, '1M']);
    sh('qemu-img', ['snapshot', '-c', 'first', p]);
    const [info] = expectOk(await h.call('info', { path: p })) as { snapshots: Record<string, unknown>[] }[];
    const qemu = qemuInfo(p) as { snapshots: Record<string, unknown>[] };
    expect(info!.snapshots).toEqual(qemu.snapshots);
  });

  it.skipIf(!hasQemu)('map marks compressed extents', async () => {
    const { h } = setup();
    const plain = t.path('plain.qcow2');
    const packed = t.path('packed.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', plain, '4M']);
    qemuIo(plain, ['write -P 7 0 1M']);
    sh('qemu-img', ['convert', '-c', '-O', 'qcow2', plain, packed]);
    const extents = expectOk(await h.call('map', { path: packed })) as { start: number; length: number; data: boolean; compressed: boolean }[];
    expect(extents[0]).toMatchObject({ start: 0, length: MiB, data: true, compressed: true });
    expect(extents.filter((e) => e.data && !e.compressed)).toEqual([]);
    const uncompressed = expectOk(await h.call('map', { path: plain })) as { data: boolean; compressed: boolean }[];
    expect(uncompressed[0]).toMatchObject({ data: true, compressed: false });
  });

  it('malformed input is refused with a Validation error naming the field, and nothing is created', async () => {
    const { h } = setup();
    const p = t.path('never.img');
    const cases: [unknown, string][] = [
      [{ path: p, format: 'BAD!', size: MiB, options: {} }, 'input.format'],
      [{ path: p, format: 'raw', size: -1, options: {} }, 'input.size'],
      [{ path: p, format: 'raw', size: 1.5, options: {} }, 'input.size'],
      [{ path: p, format: 'raw', options: {} }, 'input.size'],
      [{ path: `${p}\0x`, format: 'raw', size: MiB, options: {} }, 'input.path'],
      [{ path: 'relative.img', format: 'raw', size: MiB, options: {} }, 'input.path'],
      [{ path: p, format: 'raw', size: MiB, options: { 'Bad Key': 'x' } }, 'input.options.Bad Key'],
      [{ path: p, format: 'raw', size: MiB, options: { preallocation: 3 } }, 'input.options.preallocation'],
      ['not an object', 'input'],
      [null, 'input'],
    ];
    for (const [input, field] of cases) {
      expectError(await h.call('create', input), 'Validation', new RegExp(`^${field.replace(/\./g, '\\.')}: `));
    }
    expect(readdirSync(t.dir)).toEqual([]);
  });

  it('engine errors come back as one-line { kind, message } like the CLI\'s, and nothing is left behind', async () => {
    const { h } = setup();
    const p = t.path('x.img');
    expectError(await h.call('create', { path: p, format: 'nosuch', size: MiB, options: {} }), 'InvalidArgument', /unknown format 'nosuch'/);
    expectError(
      await h.call('create', { path: p, format: 'raw', size: MiB, options: { preallocation: 'bad' } }),
      'InvalidArgument',
      `${p}: invalid value 'bad' for option preallocation: allowed values are off, falloc, full`,
    );
    expect(readdirSync(t.dir)).toEqual([]);
    expectError(await h.call('info', { path: t.path('missing.img') }), 'NotFound', `${t.path('missing.img')}: no such file or directory`);
    writeFileSync(t.path('empty.img'), '');
    expectError(await h.call('check', { path: t.path('empty.img'), repair: 'none' }), 'Unsupported', `${t.path('empty.img')}: raw images have no metadata to check`);
  });

  it.skipIf(!hasQemu)('actions says which images compact, and compact packs a VDI that qemu-img then finds clean', async () => {
    const { h } = setup();
    const vdi = t.path('disk.vdi');
    sh('qemu-img', ['create', '-q', '-f', 'vdi', vdi, '8M']);
    // Stored blocks: data, then zeros written as data (what compact drops), then data.
    qemuIo(vdi, ['write -P 1 0 1M', 'write -P 0 1M 2M', 'write -P 2 3M 1M'], 'vdi');
    const qcow2 = t.path('disk.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', qcow2, '8M']);
    expect(expectOk(await h.call('actions', { path: vdi }))).toEqual({ compact: true });
    expect(expectOk(await h.call('actions', { path: qcow2 }))).toEqual({ compact: false });
    const r = expectOk(await h.call('compact', { path: vdi })) as { before: number; after: number };
    expect(r.before - r.after).toBe(2 * MiB);
    expect(problems(qemuCheck(vdi, 'vdi'))).toEqual(CLEAN);
    qemuIo(vdi, ['read -P 1 0 1M', 'read -P 0 1M 2M', 'read -P 2 3M 1M'], 'vdi');
    expectError(await h.call('compact', { path: qcow2 }), 'Unsupported', `${qcow2}: qcow2 images cannot be compacted`);
  });

  it('unknown methods are refused', async () => {
    const { h } = setup();
    expectError(await h.call('constructor', {}), 'Validation', /^method: unknown method/);
    expectError(await h.call('__proto__', {}), 'Validation', /^method: unknown method/);
  });

  it('freeSpace answers for a file that does not exist yet, and refuses a missing folder', async () => {
    const { h } = setup();
    const { bytes } = expectOk(await h.call('freeSpace', { path: t.path('future.img') })) as { bytes: number };
    expect(bytes).toBeGreaterThan(0);
    expectError(await h.call('freeSpace', { path: t.path('no/such/dir/x.img') }), 'NotFound', /no such file or directory/);
  });

  it('jobs and dialogs go to the host', async () => {
    const { h, started } = setup({
      openDialog: async ({ title }) => ({ path: `/picked/${title}` }),
      saveDialog: async () => ({ path: null }),
    });
    const input = { sources: ['/a.raw'], target: '/b.qcow2', targetFormat: 'qcow2', options: {}, compress: false };
    expect(expectOk(await h.call('startConvert', input))).toEqual({ jobId: 'j1' });
    expect(started).toEqual([input]);
    expectError(await h.call('startConvert', { ...input, sources: [] }), 'Validation', /^input\.sources: /);
    expect(started).toHaveLength(1);
    expect(expectOk(await h.call('cancelJob', { jobId: 'j1' }))).toEqual({ cancelled: true });
    expect(expectOk(await h.call('cancelJob', { jobId: 'nope' }))).toEqual({ cancelled: false });
    expect(expectOk(await h.call('listJobs', {}))).toMatchObject([{ id: 'j1', state: 'running' }]);
    expect(expectOk(await h.call('openDialog', { title: 'x' }))).toEqual({ path: '/picked/x' });
    expect(expectOk(await h.call('saveDialog', {}))).toEqual({ path: null });
  });

  it('an answer that breaks the contract is an error, not passed on', async () => {
    const jobs = { startConvert: () => 'j', cancel: () => true, list: () => [{ id: 1 } as unknown as JobInfo] };
    const h = createHandlers({ jobs, ...noDialogs });
    expectError(await h.call('listJobs', {}), 'Validation', /^output\.0\./);
  });
});

describe.skipIf(!hasQemu)('handlers: a VHD for Azure (fixed, exact size in whole MiB), as the wizards ask', () => {
  // Converts run as jobs in the built worker, as in the Electron main process and the web host.
  const WORKER = fileURLToPath(new URL('../../dist/electron/job-worker.cjs', import.meta.url));

  /** The option texts the create and convert wizards send for vpc with subformat fixed and force_size ticked. */
  async function azureOptions(h: Handlers): Promise<Record<string, string>> {
    const formats = expectOk(await h.call('formats', {})) as Output<'formats'>;
    const decls = formats.find((f) => f.name === 'vpc')!.createOptions;
    return optionTexts(decls, { ...initialValues(decls), subformat: 'fixed', force_size: true });
  }

  /** Exactly `size` guest bytes in qemu-img, then one footer sector saying "fixed disk" (type 2). */
  function expectAzureVhd(p: string, size: number): void {
    const info = JSON.parse(sh('qemu-img', ['info', '--output=json', '-f', 'vpc', p]));
    expect(info['virtual-size']).toBe(size);
    expect(statSync(p).size).toBe(size + 512);
    const footer = readFileSync(p).subarray(size);
    expect(footer.subarray(0, 8).toString('latin1')).toBe('conectix');
    expect(footer.readUInt32BE(60)).toBe(2);
  }

  it('create with subformat=fixed,force_size=on makes a 30 MiB fixed VHD', async () => {
    const { h } = setup();
    const options = await azureOptions(h);
    expect(options).toEqual({ subformat: 'fixed', force_size: 'on' });
    const p = t.path('azure.vhd');
    expect(expectOk(await h.call('create', { path: p, format: 'vpc', size: 30 * MiB, options }))).toEqual({ path: p });
    expectAzureVhd(p, 30 * MiB);
  });

  it('startConvert of a raw file of a whole number of MiB makes a fixed VHD of exactly its size', async () => {
    expect(existsSync(WORKER), `${WORKER} is missing: run \`npm run build\``).toBe(true);
    const jobs = new JobManager({ workerPath: WORKER, onEvent: () => undefined });
    const h = createHandlers({ jobs, ...noDialogs });
    const source = t.path('disk.raw');
    makeMixedRaw(source, 12 * MiB, prng(7));
    const target = t.path('azure.vhd');
    const options = await azureOptions(h);
    const input = { sources: [source], target, targetFormat: 'vpc', options, compress: false };
    const { jobId } = expectOk(await h.call('startConvert', input)) as Output<'startConvert'>;
    expect(await jobs.settled(jobId)).toMatchObject({ state: 'done' });
    expectAzureVhd(target, 12 * MiB);
    const same = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', source, target]);
    expect(same.stdout + same.stderr).toBe('Images are identical.\n');
  });
});
