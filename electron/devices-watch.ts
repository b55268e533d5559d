/**
 * Tells the UI when a drive comes or goes: the device list, read again every
 * couple of seconds, pushed as a `devices` event when it changed. (Polling
 * /sys/block is a few small reads; there is no portable change notification.)
 */
import { listDevices, type DeviceList } from '../core/io/devices.js';

export function watchDevices(onChange: (list: DeviceList) => void, intervalMs = 2000): () => void {
  let last = '';
  let stopped = false;
  const poll = async () => {
    const list = await listDevices().catch(() => undefined);
    if (stopped || !list) return;
    const key = JSON.stringify(list);
    if (key !== last) {
      // The first reading is the baseline: the UI asks for it with `devices`.
      if (last) onChange(list);
      last = key;
    }
  };
  void poll();
  const timer = setInterval(() => void poll(), intervalMs);
  timer.unref();
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
