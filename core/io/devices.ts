/**
 * The machine's block devices (disks, CD/DVD drives, loop devices), read-only
 * facts for the Devices view: the start of drive imaging. Linux reads
 * /sys/block; other systems are not supported yet and say so.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface BlockDevice {
  /** Kernel name: sda, nvme0n1, sr0, loop3. */
  name: string;
  /** Where to open it: /dev/NAME. */
  path: string;
  size: number;
  kind: 'disk' | 'cdrom' | 'loop';
  removable: boolean;
  readOnly: boolean;
  /** The drive's model, when it reports one. */
  model?: string;
  /** For a loop device: the file behind it. */
  backingFile?: string;
}

export interface DeviceList {
  supported: boolean;
  devices: BlockDevice[];
}

/** Compressed RAM and RAM disks are block devices too, but not drives anyone images. */
const NOT_DRIVES = /^(ram|zram|dm-|md)/;

const text = (path: string) =>
  readFile(path, 'utf8').then(
    (t) => t.trim(),
    () => undefined,
  );

export async function listDevices(sysBlock = '/sys/block', platform = process.platform): Promise<DeviceList> {
  if (platform !== 'linux') return { supported: false, devices: [] };
  const names = await readdir(sysBlock).catch(() => [] as string[]);
  const devices: BlockDevice[] = [];
  for (const name of names.sort()) {
    if (NOT_DRIVES.test(name)) continue;
    const dir = join(sysBlock, name);
    // The size file counts 512-byte sectors whatever the device's own sector size.
    const sectors = Number(await text(join(dir, 'size')));
    const kind = name.startsWith('loop') ? 'loop' : name.startsWith('sr') ? 'cdrom' : 'disk';
    // An unattached loop device has no size and nothing to image; an empty CD drive still counts.
    if (!Number.isSafeInteger(sectors) || (sectors === 0 && kind !== 'cdrom')) continue;
    const model = await text(join(dir, 'device', 'model'));
    const backingFile = kind === 'loop' ? await text(join(dir, 'loop', 'backing_file')) : undefined;
    devices.push({
      name,
      path: `/dev/${name}`,
      size: sectors * 512,
      kind,
      removable: (await text(join(dir, 'removable'))) === '1',
      readOnly: (await text(join(dir, 'ro'))) === '1',
      ...(model ? { model } : {}),
      ...(backingFile ? { backingFile } : {}),
    });
  }
  return { supported: true, devices };
}
