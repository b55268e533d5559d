/**
 * A driver for a format Platter recognises but cannot open yet: probing works
 * (so `info` names the format instead of calling it raw), and opening says
 * plainly what is missing.
 */
import type { FormatDriver, ProbeInput } from '../image/driver.js';
import { BlockError } from '../image/errors.js';
import { readProbeInput } from '../image/probe.js';

const stubs = new WeakSet<FormatDriver>();

/** True for drivers that only recognise their format. */
export function isStubDriver(d: FormatDriver): boolean {
  return stubs.has(d);
}

export function stubDriver(spec: { name: string; description: string; probe: (input: ProbeInput) => number }): FormatDriver {
  const driver: FormatDriver = {
    name: spec.name,
    description: spec.description,
    probe: spec.probe,
    async open(proto) {
      const recognised = spec.probe(await readProbeInput(proto)) > 0;
      throw new BlockError(
        recognised ? 'Unsupported' : 'InvalidFormat',
        recognised ? `recognised as ${spec.name}; not supported yet` : `not a ${spec.name} image`,
        { path: proto.name, op: 'open' },
      );
    },
  };
  stubs.add(driver);
  return driver;
}
