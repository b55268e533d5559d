import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockError } from '../image/errors.js';
import { openImage } from '../image/open.js';
import { DRIVERS, findDriver } from '../image/registry.js';
import { headerFixtures, randomBytes, seededRandom } from '../test/headers.js';
import { tempDir } from '../test/tmp.js';
import { isStubDriver } from './stub.js';

const fixtures = headerFixtures();
const stubs = DRIVERS.filter(isStubDriver);

let t: ReturnType<typeof tempDir>;
beforeEach(() => (t = tempDir('platter-stub-')));
afterEach(() => t.cleanup());

/** The BlockError `promise` rejects with (fails the test if it resolves or throws something else). */
async function rejection(promise: Promise<unknown>): Promise<BlockError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BlockError);
  return err as BlockError;
}

/** Bytes no driver claims (checked below): seeded garbage. */
function garbage(): Uint8Array {
  return randomBytes(seededRandom(42), 4096);
}

describe('stub drivers', () => {
  /** Formats with a real driver; every other one must still be recognised by a stub. */
  const IMPLEMENTED = ['raw', 'qcow2', 'vdi', 'vmdk', 'vpc', 'vhdx'];

  it('are every driver not yet implemented', () => {
    for (const name of IMPLEMENTED) expect(isStubDriver(findDriver(name))).toBe(false);
    expect(stubs.map((d) => d.name).sort()).toEqual(
      DRIVERS.map((d) => d.name)
        .filter((n) => !IMPLEMENTED.includes(n))
        .sort(),
    );
  });

  it('declare no create options and cannot create', () => {
    for (const d of stubs) {
      expect(d.create, d.name).toBeUndefined();
      expect(d.createOptions, d.name).toBeUndefined();
    }
  });

  for (const d of stubs) {
    // vvfat is not a file format ("fat:DIR"), so no file is ever probed as vvfat.
    if (d.name === 'vvfat') continue;
    it(`${d.name}: opening a probed image says it is recognised but not supported`, async () => {
      const mine = fixtures.filter((f) => f.driver === d.name);
      expect(mine.length, `fixtures for ${d.name}`).toBeGreaterThan(0);
      for (const f of mine) {
        const path = t.path(f.filename);
        writeFileSync(path, f.bytes);
        const err = await rejection(openImage(path));
        expect(err.kind, f.label).toBe('Unsupported');
        expect(err.message, f.label).toBe(`recognised as ${d.name}; not supported yet`);
        expect(err.context).toMatchObject({ path, op: 'open' });
        // The same with the format named explicitly.
        const explicit = await rejection(openImage(path, { format: d.name }));
        expect(explicit.kind, f.label).toBe('Unsupported');
        expect(explicit.message, f.label).toBe(`recognised as ${d.name}; not supported yet`);
      }
    });
  }

  it('the garbage used below probes as raw and opens as raw', async () => {
    const path = t.path('garbage.img');
    writeFileSync(path, garbage());
    const img = await openImage(path);
    try {
      expect(img.driver.name).toBe('raw');
    } finally {
      await img.close();
    }
  });

  for (const d of stubs) {
    it(`${d.name}: an explicit format on a file that is not one is InvalidFormat`, async () => {
      const path = t.path('garbage.img');
      writeFileSync(path, garbage());
      const err = await rejection(openImage(path, { format: d.name }));
      expect(err.kind).toBe('InvalidFormat');
      expect(err.message).toBe(`not a ${d.name} image`);
      expect(err.context).toMatchObject({ path, op: 'open' });
    });
  }

  it('an explicit format on another format\'s image is InvalidFormat, not "recognised"', async () => {
    const qcow2 = fixtures.find((f) => f.label === 'qcow2 v3')!;
    const path = t.path('a.qcow2');
    writeFileSync(path, qcow2.bytes);
    const err = await rejection(openImage(path, { format: 'vmdk' }));
    expect(err.kind).toBe('InvalidFormat');
    expect(err.message).toBe('not a vmdk image');
    // qcow shares qcow2's magic but not its version.
    const qcow = await rejection(openImage(path, { format: 'qcow' }));
    expect(qcow.message).toBe('not a qcow image');
  });

  it('uses displayName in messages and context', async () => {
    const f = fixtures.find((x) => x.label === 'bochs')!;
    const path = t.path('tmp-123');
    writeFileSync(path, f.bytes);
    const err = await rejection(openImage(path, { displayName: 'disk.bochs' }));
    expect(err.message).toBe('recognised as bochs; not supported yet');
    expect(err.context).toMatchObject({ path: 'disk.bochs', op: 'open' });
  });

  it.skipIf(!existsSync('/proc/self/fd'))('closes the file when opening fails', async () => {
    const f = fixtures.find((x) => x.label === 'qed')!;
    const path = t.path('a.qed');
    writeFileSync(path, f.bytes);
    const before = readdirSync('/proc/self/fd').length;
    for (let i = 0; i < 20; i++) await rejection(openImage(path));
    expect(readdirSync('/proc/self/fd').length).toBeLessThan(before + 20);
    expect(readdirSync('/proc/self/fd').length).toBeLessThanOrEqual(before);
  });
});

describe('findDriver', () => {
  it('finds every registered driver by name', () => {
    for (const d of DRIVERS) expect(findDriver(d.name)).toBe(d);
  });

  it('refuses an unknown name with InvalidArgument, listing the known formats', () => {
    let err: unknown;
    try {
      findDriver('nope');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).kind).toBe('InvalidArgument');
    expect((err as BlockError).message).toBe(`unknown format 'nope' (known: ${DRIVERS.map((d) => d.name).join(', ')})`);
    for (const d of DRIVERS) expect((err as BlockError).message).toContain(d.name);
  });

  it('is exact: no case folding, no prefixes', () => {
    expect(() => findDriver('QCOW2')).toThrow(BlockError);
    expect(() => findDriver('qcow2 ')).toThrow(BlockError);
    expect(() => findDriver('')).toThrow(BlockError);
  });

  it('openImage with an unknown format fails with the same error, before touching the file', async () => {
    const err = await rejection(openImage(t.path('does-not-exist'), { format: 'nope' }));
    expect(err.kind).toBe('InvalidArgument');
    expect(err.message).toMatch(/^unknown format 'nope' \(known: raw, /);
  });
});
