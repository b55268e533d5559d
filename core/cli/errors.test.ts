/**
 * Every bad input reaches the user as one line, `platter: FILE: what is
 * wrong`, with no stack trace, and leaves nothing half-written behind.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { platter, platterProcess, spawnPlatter } from '../test/cli.js';
import { tempDir, withSmallDisk } from '../test/tmp.js';

let t: ReturnType<typeof tempDir>;
beforeAll(() => {
  t = tempDir();
  writeFileSync(t.path('empty.img'), '');
  // Text that matches no format's magic.
  writeFileSync(t.path('garbage.img'), Buffer.from('this is not a disk image\n'.repeat(100)));
  writeFileSync(t.path('ok.raw'), Buffer.alloc(1 << 20, 0x5a));
});
afterAll(() => t.cleanup());

/** One line, naming the file, no stack trace. */
function expectOneLine(stderr: string, line: string) {
  expect(stderr).toBe(line + '\n');
}

describe('bad inputs', () => {
  it('a missing file', async () => {
    const r = await platter(['info', t.path('nope.img')]);
    expect(r.code).toBe(1);
    expectOneLine(r.stderr, `platter: ${t.path('nope.img')}: no such file or directory`);
  });

  it('a directory', async () => {
    const r = await platter(['info', t.dir]);
    expect(r.code).toBe(1);
    expectOneLine(r.stderr, `platter: ${t.dir}: is a directory, not an image file`);
  });

  it('a 0-byte file is an empty raw image, as qemu-img says; as qcow2 it is refused', async () => {
    const asRaw = await platter(['info', '--output=json', t.path('empty.img')]);
    expect(asRaw.code).toBe(0);
    expect(JSON.parse(asRaw.stdout)).toMatchObject({ format: 'raw', 'virtual-size': 0 });
    const r = await platter(['info', '-f', 'qcow2', t.path('empty.img')]);
    expect(r.code).toBe(1);
    expectOneLine(r.stderr, `platter: ${t.path('empty.img')}: not a qcow2 image`);
  });

  it('garbage probes as raw, and is refused under any other format', async () => {
    const asRaw = await platter(['info', '--output=json', t.path('garbage.img')]);
    expect(JSON.parse(asRaw.stdout).format).toBe('raw');
    const r = await platter(['convert', '-f', 'vmdk', t.path('garbage.img'), t.path('out.raw')]);
    expect(r.code).toBe(1);
    expectOneLine(r.stderr, `platter: ${t.path('garbage.img')}: not a vmdk image`);
    expect(existsSync(t.path('out.raw'))).toBe(false);
  });

  it('an unknown format or option names what is allowed', async () => {
    const f = await platter(['info', '-f', 'qcow3', t.path('ok.raw')]);
    expect(f.stderr).toMatch(/^platter: unknown format 'qcow3' \(known: raw, qcow2, .*\)\n$/);
    const o = await platter(['create', '-f', 'raw', '-o', 'preallocation=bad', t.path('new.raw'), '1M']);
    expectOneLine(o.stderr, `platter: ${t.path('new.raw')}: invalid value 'bad' for option preallocation: allowed values are off, falloc, full`);
    expect(existsSync(t.path('new.raw'))).toBe(false);
    const s = await platter(['create', t.path('new.raw'), '12Q']);
    expect(s.code).toBe(1);
    expect(s.stderr.split('\n')).toHaveLength(2);
  });

  it('no permission (run as an unprivileged user)', () => {
    const id = spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' });
    if (id.status !== 0 || process.getuid?.() !== 0) {
      console.warn('SKIPPED permission test: needs root and a "nobody" user to drop privileges');
      return;
    }
    const secret = t.path('secret.raw');
    writeFileSync(secret, Buffer.alloc(4096));
    chmodSync(secret, 0o600);
    chmodSync(t.dir, 0o755);
    const r = platterProcess(['info', secret], { user: 'nobody' });
    expect(r.code).toBe(1);
    expectOneLine(r.stderr, `platter: ${secret}: permission denied`);
  });

  it('a full disk mid-convert: a clear error and no target left', () => {
    const mnt = t.path('small');
    withSmallDisk(mnt, '2m', 'full-disk test', () => {
      const src = t.path('big.raw');
      writeFileSync(src, Buffer.alloc(8 << 20, 0x33));
      const r = platterProcess(['convert', '-f', 'raw', '-O', 'raw', src, `${mnt}/out.raw`]);
      expect(r.code).toBe(1);
      expectOneLine(r.stderr, `platter: ${mnt}/out.raw: no space left on device`);
      expect(readdirSync(mnt)).toEqual([]);
    });
  });

  it('stack traces only with PLATTER_DEBUG=1', () => {
    const quiet = platterProcess(['info', t.path('nope.img')]);
    expect(quiet.stderr).not.toMatch(/\n\s+at /);
    const debug = platterProcess(['info', t.path('nope.img')], { env: { PLATTER_DEBUG: '1' } });
    expect(debug.stderr).toMatch(/\n\s+at /);
  });

  it('an unknown command or flag', async () => {
    const c = await platter(['frobnicate']);
    expect(c.code).toBe(1);
    expectOneLine(c.stderr, "platter: unknown command 'frobnicate' (see platter --help)");
    const f = await platter(['info', '--bogus', t.path('ok.raw')]);
    expect(f.code).toBe(1);
    expect(f.stderr).toMatch(/^platter: unknown option '--bogus'\n$/);
  });
});

describe('cancel', () => {
  it('Ctrl-C ends a convert with exit 130 and leaves no target', async () => {
    const src = t.path('slow.raw');
    writeFileSync(src, Buffer.alloc(32 << 20, 0x77));
    const out = t.path('cancelled.raw');
    // -r keeps the copy slow (1 MiB/s), so the signal surely lands mid-copy.
    const child = spawnPlatter(['convert', '--progress=json', '-r', '1M', '-O', 'raw', src, out]);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    let stdout = '';
    await new Promise<void>((resolve) =>
      child.stdout.on('data', (d) => {
        stdout += d;
        // Wait until some bytes were really written, then interrupt.
        const lines = stdout.trim().split('\n').map((l) => JSON.parse(l));
        if (lines.some((p) => p.done > 0)) resolve();
      }),
    );
    child.kill('SIGINT');
    const code = await new Promise((resolve) => child.on('exit', (c) => resolve(c)));
    expect(code).toBe(130);
    expect(stderr).toBe('platter: cancelled\n');
    expect(readdirSync(t.dir).filter((n) => n.includes('cancelled'))).toEqual([]);
  });
});
