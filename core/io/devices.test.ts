/** The device list: a real loop device appears with its backing file and size, and goes away. */
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../test/tmp.js';
import { listDevices } from './devices.js';

const t = tempDir();
afterAll(() => t.cleanup());

const canLoop = process.getuid?.() === 0 && spawnSync('losetup', ['-f']).status === 0;
if (!canLoop) console.warn('SKIPPED loop-device listing: needs root and losetup');

describe('listDevices', () => {
  it.skipIf(!canLoop)('lists an attached loop device with its size and backing file, and not once detached', async () => {
    const img = t.path('disk.img');
    const fd = openSync(img, 'w');
    ftruncateSync(fd, 8 << 20);
    closeSync(fd);
    const dev = execFileSync('losetup', ['-f', '--show', '-r', img], { encoding: 'utf8' }).trim();
    try {
      const found = (await listDevices()).devices.find((d) => d.path === dev);
      expect(found).toMatchObject({ kind: 'loop', size: 8 << 20, readOnly: true, backingFile: img });
    } finally {
      execFileSync('losetup', ['-d', dev]);
    }
    expect((await listDevices()).devices.some((d) => d.path === dev && d.backingFile === img)).toBe(false);
  });

  it('reads the facts from sysfs: disks, an empty CD drive, no RAM disks or idle loops', async () => {
    const sys = t.path('sys-block');
    const dev = (name: string, files: Record<string, string>) => {
      for (const [f, v] of Object.entries(files)) {
        mkdirSync(`${sys}/${name}/${f.split('/').slice(0, -1).join('/')}`, { recursive: true });
        writeFileSync(`${sys}/${name}/${f}`, `${v}\n`);
      }
    };
    dev('sda', { size: '1000', removable: '0', ro: '0', 'device/model': 'Some SSD  ' });
    dev('sr0', { size: '0', removable: '1', ro: '1' });
    dev('zram0', { size: '8', removable: '0', ro: '0' });
    dev('loop7', { size: '0', removable: '0', ro: '0' });
    expect(await listDevices(sys, 'linux')).toEqual({
      supported: true,
      devices: [
        { name: 'sda', path: '/dev/sda', size: 512000, kind: 'disk', removable: false, readOnly: false, model: 'Some SSD' },
        { name: 'sr0', path: '/dev/sr0', size: 0, kind: 'cdrom', removable: true, readOnly: true },
      ],
    });
    expect(await listDevices(sys, 'darwin')).toEqual({ supported: false, devices: [] });
  });
});
