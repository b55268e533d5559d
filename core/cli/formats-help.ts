/** The list of formats printed under `platter --help`. */
import { isStubDriver } from '../formats/stub.js';
import { DRIVERS } from '../image/registry.js';

export function formatsHelp(): string {
  const width = Math.max(...DRIVERS.map((d) => d.name.length)) + 2;
  const lines = DRIVERS.map((d) => {
    const status = isStubDriver(d) ? 'recognised, not supported yet' : d.create ? 'read/write' : 'read-only';
    return `  ${d.name.padEnd(width)}${d.description} (${status})`;
  });
  return ['Formats:', ...lines, ''].join('\n');
}
