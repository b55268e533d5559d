/**
 * A property test of the qcow2 driver: seeded random writes, zero writes,
 * discards and resizes through the Image API, checked against an in-memory
 * model of the guest content; at checkpoints the image is closed, checked
 * with `qemu-img check` (no corruption, no leaks), compared with
 * `qemu-img compare` against the model written out as raw, and reopened.
 *
 * The semantics asserted (what Platter's qcow2 driver is specified to do):
 * - write: the bytes written, anywhere, at any alignment.
 * - writeZeroes (mayUnmap either way): the range reads as zeros.
 * - discard: only the clusters (with extended L2 entries: subclusters)
 *   wholly inside the range change; partial ones at either end keep their
 *   content. A discarded cluster reads as
 *   zeros, except in a version 2 (compat=0.10) image with a backing file,
 *   where it becomes unallocated and reads the backing file again (qemu does
 *   the same: v2 has no zero flag). Past the backing file's end, zeros.
 * - resize (grow): the new area reads as zeros, even when the backing file is
 *   longer than the old size (qemu zeroes it; it must not show backing data).
 *   Version 2 images cannot express that, so growing one over a longer
 *   backing file is refused (as qemu-img refuses it) and nothing changes.
 * - resize (shrink): what was past the new end is gone; grown again, it
 *   reads as zeros.
 *
 * Failures print the seed, the config and the last operations, so a run can
 * be replayed by putting that one config in CONFIGS.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isResizable } from '../../image/driver.js';
import type { Image } from '../../image/image.js';
import { openImage } from '../../image/open.js';
import { platter } from '../../test/cli.js';
import { prng, type Rng } from '../../test/prng.js';
import { CLEAN, problems, qemuCheck } from '../../test/qemu.js';
import { hasTool, shStatus, tempDir } from '../../test/tmp.js';

const HAS_QEMU = hasTool('qemu-img', 'apt-get install qemu-utils');


interface Config {
  seed: number;
  clusterSize: number;
  refcountBits: number;
  compat: '0.10' | '1.1';
  /** Backing file: its format, and its size relative to the image's. */
  backing?: { format: 'raw' | 'qcow2'; size: number };
  size: number;
  ops: number;
  /**
   * Who creates the empty image: Platter unless said otherwise. One config
   * starts from an image qemu-img created, so the random operations also run
   * on a layout Platter did not make.
   */
  creator?: 'qemu-img';
  /** Write the whole image first (in random pieces), so the file outgrows its first refcount table. */
  fill?: boolean;
  /** extended_l2=on: 32 subclusters per cluster. */
  extendedL2?: boolean;
}

const KiB = 1024;
const MiB = 1 << 20;

/*
 * Every cluster size (512, 4K, 64K), every refcount width (1, 16, 64), both
 * compat levels, no backing / raw backing / qcow2 backing, backing files
 * shorter, equal and longer than the image, and image sizes that are not a
 * whole number of clusters. Resizes grow the L1 table of the 512-byte-cluster
 * images; the `fill` ones outgrow their first refcount table (512-byte
 * clusters with 64-bit refcounts: one table cluster counts 2 MiB; with 16-bit
 * refcounts, 8 MiB).
 */
const CONFIGS: Config[] = [
  { seed: 1, clusterSize: 512, refcountBits: 1, compat: '1.1', size: MiB, ops: 1000 },
  { seed: 2, clusterSize: 4 * KiB, refcountBits: 64, compat: '1.1', backing: { format: 'raw', size: 6 * MiB }, size: 4 * MiB - 1536, ops: 1000 },
  { seed: 3, clusterSize: 64 * KiB, refcountBits: 16, compat: '0.10', backing: { format: 'qcow2', size: 9 * MiB }, size: 8 * MiB, ops: 1000 },
  { seed: 4, clusterSize: 512, refcountBits: 16, compat: '0.10', size: MiB + 512, ops: 1000 },
  { seed: 5, clusterSize: 4 * KiB, refcountBits: 16, compat: '1.1', backing: { format: 'qcow2', size: 3 * MiB }, size: 4 * MiB, ops: 1000 },
  { seed: 6, clusterSize: 64 * KiB, refcountBits: 1, compat: '1.1', backing: { format: 'raw', size: 5 * MiB + 512 }, size: 8 * MiB - 512, ops: 1000 },
  { seed: 7, clusterSize: 512, refcountBits: 64, compat: '1.1', backing: { format: 'qcow2', size: 3 * MiB + 4096 }, size: 3 * MiB, ops: 1000, creator: 'qemu-img', fill: true },
  { seed: 8, clusterSize: 4 * KiB, refcountBits: 16, compat: '0.10', backing: { format: 'raw', size: 3 * MiB }, size: 3 * MiB, ops: 1000 },
  { seed: 9, clusterSize: 512, refcountBits: 64, compat: '1.1', size: 5 * MiB / 2, ops: 1000, fill: true },
  { seed: 10, clusterSize: 512, refcountBits: 16, compat: '0.10', size: 9 * MiB, ops: 1000, fill: true },
  // Extended L2 entries (clusters of at least 16 KiB): subcluster writes, zeros and discards over a backing file.
  { seed: 11, clusterSize: 16 * KiB, refcountBits: 16, compat: '1.1', backing: { format: 'qcow2', size: 5 * MiB }, size: 4 * MiB, ops: 1000, extendedL2: true },
  { seed: 12, clusterSize: 64 * KiB, refcountBits: 64, compat: '1.1', backing: { format: 'raw', size: 5 * MiB + 512 }, size: 8 * MiB - 512, ops: 1000, extendedL2: true },
  { seed: 13, clusterSize: 32 * KiB, refcountBits: 1, compat: '1.1', size: 3 * MiB, ops: 1000, extendedL2: true, fill: true },
  ];

/** Operations between checkpoints (close, qemu-img check and compare, reopen). */
const CHECK_EVERY = 125;

let t: ReturnType<typeof tempDir>;
beforeAll(() => (t = tempDir('platter-qcow2-model-')));
afterAll(() => t?.cleanup());

/** The guest content the image must show, growing with resizes. */
class Model {
  bytes: Uint8Array;
  constructor(
    size: number,
    readonly backing: Uint8Array | undefined,
  ) {
    this.bytes = new Uint8Array(size);
    if (backing) this.bytes.set(backing.subarray(0, Math.min(size, backing.length)));
  }
  get size() {
    return this.bytes.length;
  }
  /** What an unallocated range reads: the backing file, zeros past its end. */
  fillFromBacking(offset: number, length: number) {
    const dst = this.bytes.subarray(offset, offset + length);
    dst.fill(0);
    if (this.backing && offset < this.backing.length) dst.set(this.backing.subarray(offset, Math.min(offset + length, this.backing.length)));
  }
  resize(size: number) {
    const grown = new Uint8Array(size);
    grown.set(this.bytes.subarray(0, Math.min(size, this.size)));
    this.bytes = grown;
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

async function makeBacking(cfg: Config, rng: Rng, dir: string): Promise<Uint8Array | undefined> {
  if (!cfg.backing) return undefined;
  // Random data with holes: a few runs of data, zeros elsewhere.
  const data = new Uint8Array(cfg.backing.size);
  for (let i = 0; i < 24; i++) {
    const len = rng.int(1, 96 * KiB);
    const off = rng.int(0, Math.max(1, data.length - len));
    data.set(rng.bytes(Math.min(len, data.length - off)), off);
  }
  writeFileSync(`${dir}/base.raw`, data);
  if (cfg.backing.format === 'qcow2') {
    // Converted by Platter, with a cluster size unlike the overlay's.
    const r = await platter(['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=32K', `${dir}/base.raw`, `${dir}/base.qcow2`]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  }
  return data;
}

describe.skipIf(!HAS_QEMU)('qcow2 driver against a model of the guest content', () => {
  it.each(CONFIGS.map((c) => [`seed ${c.seed}: cluster ${c.clusterSize}${c.extendedL2 ? ' (extended L2)' : ''}, refcount ${c.refcountBits}, compat ${c.compat}, backing ${c.backing ? `${c.backing.format} ${c.backing.size}` : 'none'}`, c] as const))(
    '%s',
    async (_name, cfg) => {
      const rng = prng(cfg.seed);
      const dir = t.path(`seed-${cfg.seed}`);
      mkdirSync(dir);
      const backing = await makeBacking(cfg, rng, dir);
      const backingFile = cfg.backing ? `${dir}/base.${cfg.backing.format}` : undefined;
      const backingBefore = backingFile ? readFileSync(backingFile) : undefined;
      const img = `${dir}/img.qcow2`;
      const opts = [`compat=${cfg.compat}`, `cluster_size=${cfg.clusterSize}`, `refcount_bits=${cfg.refcountBits}`];
      if (cfg.backing) opts.push(`backing_file=base.${cfg.backing.format}`, `backing_fmt=${cfg.backing.format}`);
      if (cfg.extendedL2) opts.push('extended_l2=on');
      if (cfg.creator === 'qemu-img') {
        const created = shStatus('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', opts.join(','), img, String(cfg.size)]);
        expect(created.stderr).toBe('');
        expect(created.status).toBe(0);
      } else {
        const created = await platter(['create', '-q', '-f', 'qcow2', '-o', opts.join(','), img, String(cfg.size)]);
        expect(created.stderr).toBe('');
        expect(created.code).toBe(0);
      }

      const model = new Model(cfg.size, backing);
      const cs = cfg.clusterSize;
      /** What discard works in: clusters, or subclusters with extended L2 entries. */
      const unit = cfg.extendedL2 ? cs / 32 : cs;
      const v2WithBacking = cfg.compat === '0.10' && backing !== undefined;
      const log: string[] = [];
      const where = () => `seed ${cfg.seed}, after: ${log.slice(-6).join('; ')}`;
      let image: Image = await openImage(img, { format: 'qcow2', readOnly: false });

      /** Offsets: often on or next to a cluster boundary, otherwise anywhere. */
      const randomRange = (maxLen: number): [number, number] => {
        const size = model.size;
        let off: number;
        const r = rng.next();
        // On or next to (sub)cluster boundaries.
        if (r < 0.3) off = rng.int(0, Math.ceil(size / unit)) * unit;
        else if (r < 0.4) off = Math.max(0, rng.int(0, Math.ceil(size / unit)) * unit - rng.int(1, 16));
        else off = rng.int(0, size);
        off = Math.min(off, size - 1);
        let len = rng.next() < 0.1 ? rng.int(1, 64 * cs) : rng.int(1, maxLen);
        if (rng.next() < 0.2) len = Math.max(1, Math.round(len / unit) * unit);
        return [off, Math.min(len, size - off)];
      };

      const verifyAll = async () => {
        // Not zeros: a driver that leaves bytes alone instead of zeroing them must show.
        const buf = new Uint8Array(model.size).fill(0xa5);
        await image.read(buf, 0);
        const d = firstDifference(buf, model.bytes);
        expect(d, `full read differs from the model at offset ${d} (${where()})`).toBe(-1);
      };

      const checkpoint = async () => {
        await verifyAll();
        await image.close();
        const c = qemuCheck(img);
        expect(problems(c), `${c.text} (${where()})`).toEqual(CLEAN);
        // qemu reads what the model says, too.
        writeFileSync(`${dir}/model.raw`, model.bytes);
        const cmp = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', `${dir}/model.raw`, img]);
        expect(cmp.stdout + cmp.stderr, where()).toBe('Images are identical.\n');
        expect(cmp.status).toBe(0);
        image = await openImage(img, { format: 'qcow2', readOnly: false });
      };

      try {
        if (cfg.fill) {
          for (let at = 0; at < model.size; ) {
            const len = Math.min(model.size - at, rng.int(1, 40 * cs));
            const data = rng.bytes(len);
            await image.write(data, at);
            model.bytes.set(data, at);
            at += len;
          }
          log.push(`fill 0+${model.size}`);
          await checkpoint();
        }
        /**
         * One write, zero write or discard: starts it and returns what it
         * does to the model, applied once it has completed.
         */
        const mutation = (): { promise: Promise<void>; apply: () => void } => {
          const kind = rng.next();
          if (kind < 0.55) {
            const [off, len] = randomRange(3 * cs + 700);
            const data = rng.bytes(len);
            log.push(`write ${off}+${len}`);
            return { promise: image.write(data, off), apply: () => model.bytes.set(data, off) };
          }
          if (kind < 0.77) {
            const [off, len] = randomRange(4 * cs);
            const mayUnmap = rng.next() < 0.5;
            log.push(`writeZeroes ${off}+${len} unmap=${mayUnmap}`);
            return { promise: image.writeZeroes(off, len, mayUnmap), apply: () => model.bytes.fill(0, off, off + len) };
          }
          const [off, len] = randomRange(6 * cs);
          log.push(`discard ${off}+${len}`);
          return {
            promise: image.discard(off, len),
            apply: () => {
              const first = Math.ceil(off / unit);
              const last = Math.floor((off + len) / unit);
              for (let c = first; c < last; c++) {
                if (v2WithBacking) model.fillFromBacking(c * unit, unit);
                else model.bytes.fill(0, c * unit, (c + 1) * unit);
              }
            },
          };
        };

        for (let op = 1; op <= cfg.ops; op++) {
          const kind = rng.next();
          if (kind < 0.62) {
            const m = mutation();
            await m.promise;
            m.apply();
          } else if (kind < 0.67) {
            // Several at once, as convert issues them: they take effect in call order.
            const batch = Array.from({ length: rng.int(2, 6) }, mutation);
            log.push(`(the last ${batch.length} at once)`);
            await Promise.all(batch.map((m) => m.promise));
            for (const m of batch) m.apply();
          } else if (kind < 0.69) {
            // Grow by up to a quarter, in whole sectors, at most to 3x the
            // start; or, one time in three, shrink by up to a quarter.
            const old = model.size;
            const step = 512 * rng.int(1, Math.max(2, old / 2048));
            const shrink = rng.next() < 1 / 3 && old - step >= 512;
            const size = shrink ? old - step : Math.min(3 * cfg.size, old + step);
            log.push(`resize ${old} -> ${size}`);
            const layer = image.layer;
            if (!isResizable(layer)) throw new Error('the qcow2 layer must be resizable');
            if (shrink) {
              await layer.resize(size, { prealloc: 'off', shrink: true });
              model.resize(size);
              expect(image.size).toBe(size);
            } else if (v2WithBacking && backing!.length > old) {
              await expect(layer.resize(size, { prealloc: 'off', shrink: false })).rejects.toThrow(/backing file/);
              expect(image.size).toBe(old);
            } else {
              await layer.resize(size, { prealloc: 'off', shrink: false });
              model.resize(size);
              expect(image.size).toBe(size);
            }
          } else if (kind < 0.72) {
            log.push('flush');
            await image.flush();
          } else {
            const [off, len] = randomRange(4 * cs);
            log.push(`read ${off}+${len}`);
            const buf = new Uint8Array(len).fill(0xa5);
            await image.read(buf, off);
            const d = firstDifference(buf, model.bytes.subarray(off, off + len));
            expect(d, `read ${off}+${len} differs from the model at guest offset ${off + d} (${where()})`).toBe(-1);
          }
          if (op % CHECK_EVERY === 0) await checkpoint();
        }
        await checkpoint();
      } finally {
        await image.close();
      }
      // The backing file is never written.
      if (backingFile) expect(firstDifference(readFileSync(backingFile), backingBefore!), 'the backing file changed').toBe(-1);
    },
  );
});
