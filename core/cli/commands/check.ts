import { REPAIR_MODES, type RepairMode } from '../../image/driver.js';
import { BlockError } from '../../image/errors.js';
import { check, type CheckResult } from '../../ops/check.js';
import { printfFixed } from '../../options/size.js';
import { expectPositionals, flag, outputFormat, sourceCacheArg, str } from '../args.js';
import { FORMAT_OPTION, OPEN_OPTIONS, QUIET_OPTION, SOURCE_CACHE_OPTION, type Command } from '../command.js';

/** qemu-img check's exit codes. */
const EXIT = { clean: 0, failed: 1, corrupt: 2, leaks: 3, unsupported: 63 };

export const checkCommand: Command = {
  name: 'check',
  summary: 'check an image for errors and leaks, optionally repair (exit 0 clean, 2 corrupt, 3 leaks)',
  usage: '[-q] [-f FMT] [-T SRC_CACHE] [--output=human|json] [-r leaks|all] FILE',
  options: {
    ...FORMAT_OPTION,
    ...QUIET_OPTION,
    ...OPEN_OPTIONS,
    // A repair flushes whatever the mode: unsafe allows skipping flushes, it does not ask for it.
    ...SOURCE_CACHE_OPTION,
    output: { type: 'string' },
    repair: { type: 'string', short: 'r' },
  },
  async run(args, io) {
    const out = outputFormat(args);
    const [filename] = expectPositionals(args, 1, 1, 'one image file');
    sourceCacheArg(args);
    const given = str(args, 'repair');
    if (given !== undefined && (given === 'none' || !(REPAIR_MODES as readonly string[]).includes(given))) {
      throw new BlockError('InvalidArgument', `-r must be leaks or all, not '${given}'`);
    }
    const repair = given ?? 'none';
    let r: CheckResult;
    try {
      r = await check({
        filename,
        format: str(args, 'format'),
        repair: repair as RepairMode,
        allowExternalFiles: flag(args, 'allow-external-files'),
        log: (line) => io.stderr.write(line + '\n'),
      });
    } catch (err) {
      if (err instanceof BlockError && err.kind === 'Unsupported' && err.context.op === 'check') {
        io.stderr.write(`platter: ${filename}: ${err.message}\n`);
        return EXIT.unsupported;
      }
      throw err;
    }
    if (out === 'json') io.stdout.write(JSON.stringify(jsonReport(r), null, 4) + '\n');
    else if (!flag(args, 'quiet')) io.stdout.write(humanReport(r));
    if (r.checkErrors) {
      io.stderr.write(`platter: ${filename}: check failed\n`);
      return EXIT.failed;
    }
    if (r.corruptions) return EXIT.corrupt;
    if (r.leaks) return EXIT.leaks;
    return EXIT.clean;
  },
};

/** qemu-img check --output=json's keys, in the order it prints them. */
function jsonReport(r: CheckResult): Record<string, unknown> {
  // Like qemu-img, counts a format does not keep (vdi keeps none) are left out.
  const o: Record<string, unknown> = {};
  if (r.imageEndOffset) o['image-end-offset'] = r.imageEndOffset;
  if (r.compressedClusters) o['compressed-clusters'] = r.compressedClusters;
  if (r.totalClusters) o['total-clusters'] = r.totalClusters;
  if (r.corruptions) o.corruptions = r.corruptions;
  o['check-errors'] = r.checkErrors;
  if (r.leaks) o.leaks = r.leaks;
  if (r.leaksFixed) o['leaks-fixed'] = r.leaksFixed;
  if (r.corruptionsFixed) o['corruptions-fixed'] = r.corruptionsFixed;
  if (r.allocatedClusters) o['allocated-clusters'] = r.allocatedClusters;
  o.filename = r.filename;
  o.format = r.format;
  if (r.fragmentedClusters) o['fragmented-clusters'] = r.fragmentedClusters;
  return o;
}

function humanReport(r: CheckResult): string {
  let s = '';
  if (r.leaksFixed || r.corruptionsFixed) {
    s +=
      'The following inconsistencies were found and repaired:\n\n' +
      `    ${r.leaksFixed} leaked clusters\n    ${r.corruptionsFixed} corruptions\n\n` +
      'Double checking the fixed image now...\n';
  }
  if (!r.corruptions && !r.leaks && !r.checkErrors) s += 'No errors were found on the image.\n';
  if (r.corruptions) {
    s += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
  }
  if (r.leaks) s += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
  if (r.checkErrors) s += `\n${r.checkErrors} internal errors have occurred during the check.\n`;
  if (r.totalClusters && r.allocatedClusters) {
    const pct = (n: number, d: number) => printfFixed((100 * n) / d, 2);
    s += `${r.allocatedClusters}/${r.totalClusters} = ${pct(r.allocatedClusters, r.totalClusters)}% allocated, ${pct(r.fragmentedClusters, r.allocatedClusters)}% fragmented, ${pct(r.compressedClusters, r.allocatedClusters)}% compressed clusters\n`;
  }
  if (r.imageEndOffset > 0) s += `Image end offset: ${r.imageEndOffset}\n`;
  return s;
}
