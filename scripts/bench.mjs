#!/usr/bin/env node
// `npm run bench`: Platter against qemu-img (and sha256sum), measured in the
// same run on the same machine, reported as ratios. Not a timed test: the
// absolute numbers depend on the machine, the ratios much less.
//
//   node scripts/bench.mjs [--rounds N] [--fresh] [--json] [--size 2G]
//                          [--dir PATH] [--ops convert,hash,...] [--only-qemu]
//                          [--poll-rss] [--timeout S]
//
// --ops runs some operations only (--ops x lists them all: convert, to-qcow2,
// to-vdi, to-vmdk, vmdk-to-qcow2, compare, map, hash...). --only-qemu runs the generator and the reference tools alone (to try the
// script while the Platter CLI is not built); --poll-rss forces the /proc
// fallback for peak memory even when GNU time is there.
//
// Exit code: 0 when every command ran and every output matched, 1 otherwise
// (also when qemu-img is missing). The speed/memory targets are informational.
import { spawn, spawnSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PLATTER_BIN = join(ROOT, 'bin', 'platter.cjs');
const PLATTER_BUNDLE = join(ROOT, 'dist', 'cli.cjs');
const GNU_TIME = '/usr/bin/time';
const MiB = 1 << 20;
/** Bump when the generator changes, so cached images are regenerated. */
const GENERATOR_VERSION = 1;
const SEED = 'platter-bench-1';

const TARGETS = {
  convertRatio: 1.0, // raw->raw convert <= 1.00x qemu-img
  hashRatio: 1.2, // hash <= 1.20x sha256sum
  peakMiB: 150, // every Platter process
};

// ---------------------------------------------------------------- options

function parseOptions(argv) {
  const o = {
    rounds: 3,
    fresh: false,
    json: false,
    onlyQemu: false,
    pollRss: false,
    size: 2048 * MiB,
    dir: join(process.env.TMPDIR || tmpdir(), 'platter-bench'),
    timeout: 600,
    ops: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) die(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--rounds') o.rounds = positiveInt(value(), a);
    else if (a === '--fresh') o.fresh = true;
    else if (a === '--json') o.json = true;
    else if (a === '--only-qemu') o.onlyQemu = true;
    else if (a === '--poll-rss') o.pollRss = true;
    else if (a === '--size') o.size = parseSize(value());
    else if (a === '--dir') o.dir = value();
    else if (a === '--timeout') o.timeout = positiveInt(value(), a);
    else if (a === '--ops') o.ops = opNames(value());
    else if (a === '-h' || a === '--help') {
      printHelp();
      process.exit(0);
    } else die(`unknown option ${a} (see --help)`);
  }
  return o;
}

/** Conversions measured three ways: each tool's default, and like for like both durable and not. */
const LIKE_FOR_LIKE = ['convert', 'to-qcow2', 'from-qcow2', 'to-vdi', 'to-vpc', 'to-vhdx', 'vhdx-to-qcow2'];
const OPERATIONS = [
  ...LIKE_FOR_LIKE.flatMap((n) => [n, `${n}-writeback`, `${n}-unsafe`]),
  'compress', 'to-vmdk', 'to-vmdk-stream', 'vmdk-to-qcow2',
  'compare', 'map', 'hash',
];

function opNames(v) {
  const names = v.split(',');
  const unknown = names.filter((n) => !OPERATIONS.includes(n));
  if (unknown.length) die(`unknown --ops ${unknown.join(',')}: choose from ${OPERATIONS.join(', ')}`);
  return names;
}

/** The help is the comment at the top of this file. */
function printHelp() {
  const lines = fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1);
  const head = lines.slice(0, lines.findIndex((l) => !l.startsWith('//')));
  process.stdout.write(head.map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
}

function positiveInt(v, name) {
  if (!/^\d+$/.test(v) || Number(v) < 1) die(`${name} must be a positive integer, not '${v}'`);
  return Number(v);
}

/** "2G", "512M", "1536" (MiB). Kept to whole MiB so pieces stay aligned. */
function parseSize(v) {
  const m = /^(\d+)([MG]?)i?B?$/i.exec(v);
  if (!m) die(`bad --size '${v}' (e.g. 2G, 512M)`);
  const mib = Number(m[1]) * (m[2].toUpperCase() === 'G' ? 1024 : 1);
  if (mib < 16) die('--size must be at least 16M');
  return mib * MiB;
}

function die(msg) {
  process.stderr.write(`bench: ${msg}\n`);
  process.exit(1);
}

/** Progress goes to stderr so that --json leaves stdout machine-readable. */
function log(msg) {
  process.stderr.write(msg + '\n');
}

// ---------------------------------------------------------------- tools

function haveCommand(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return !r.error && r.status === 0;
}

/**
 * GNU time gives the child's ru_maxrss exactly. BusyBox's `time` lacks -o,
 * so try the exact flags we use rather than trusting the path.
 */
function haveGnuTime() {
  if (!fs.existsSync(GNU_TIME)) return false;
  const out = join(tmpdir(), `platter-bench-time-${process.pid}`);
  const r = spawnSync(GNU_TIME, ['-f', '%e %M', '-o', out, 'true'], { stdio: 'ignore' });
  const ok = r.status === 0 && /^\d+\.\d+ \d+\s*$/.test(readIfExists(out));
  fs.rmSync(out, { force: true });
  return ok;
}

function readIfExists(path) {
  try {
    return fs.readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------- test image

/** mulberry32: tiny, fast, seedable; plenty for layout and word choice. */
function prng(seed) {
  let a = createHash('sha256').update(seed).digest().readUInt32LE(0);
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The layout: pieces of 64 KiB..8 MiB (log-uniform, so many small ones and
 * some big ones), each random (40%), text (20%) or hole (40%). Sizes are
 * multiples of 64 KiB so holes are whole file-system blocks and stay sparse.
 */
function* planPieces(size, seed) {
  const rand = prng(`${seed}/layout`);
  const unit = 64 * 1024;
  for (let offset = 0; offset < size; ) {
    const bytes = Math.round(Math.exp(Math.log(64 * 1024) + rand() * Math.log(128)) / unit) * unit;
    const length = Math.min(Math.max(bytes, unit), size - offset);
    const r = rand();
    const kind = r < 0.4 ? 'random' : r < 0.6 ? 'text' : 'hole';
    yield { offset, length, kind };
    offset += length;
  }
}

/** Incompressible, reproducible bytes: AES-128-CTR over zeros, keyed by the seed (GB/s). */
function randomSource(seed) {
  const key = createHash('sha256').update(`${seed}/random`).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  return (buf) => {
    const out = cipher.update(buf.fill(0));
    out.copy(buf);
  };
}

/**
 * Compressible text: lines of words from a small made-up vocabulary, picked
 * at random from a pool of lines (copying whole lines keeps it fast).
 */
function textSource(seed) {
  const rand = prng(`${seed}/text`);
  const letters = 'etaoinshrdlucmfwypvbgkjqxz';
  const words = Array.from({ length: 2000 }, () => {
    const n = 2 + Math.floor(rand() * 9);
    let w = '';
    for (let i = 0; i < n; i++) w += letters[Math.floor(Math.pow(rand(), 2) * letters.length)];
    return w;
  });
  const lines = Array.from({ length: 8192 }, () => {
    const n = 4 + Math.floor(rand() * 13);
    const ws = Array.from({ length: n }, () => words[Math.floor(Math.pow(rand(), 3) * words.length)]);
    return Buffer.from(ws.join(' ') + '\n');
  });
  return (buf) => {
    for (let at = 0; at < buf.length; ) {
      at += lines[Math.floor(rand() * lines.length)].copy(buf, at);
    }
  };
}

/**
 * Writes the image in 1 MiB chunks at their offsets and never touches the
 * holes; a final ftruncate sets the size. Written under a temporary name so
 * an interrupted run never leaves a half image that looks cached.
 */
function generateImage(path, size, seed) {
  const tmp = `${path}.partial`;
  const fd = fs.openSync(tmp, 'w');
  const fill = { random: randomSource(seed), text: textSource(seed) };
  const chunk = Buffer.alloc(MiB);
  const bytes = { random: 0, text: 0, hole: 0 };
  let pieces = 0;
  try {
    for (const p of planPieces(size, seed)) {
      pieces++;
      bytes[p.kind] += p.length;
      if (p.kind === 'hole') continue;
      for (let at = 0; at < p.length; at += MiB) {
        const buf = chunk.subarray(0, Math.min(MiB, p.length - at));
        fill[p.kind](buf);
        fs.writeSync(fd, buf, 0, buf.length, p.offset + at);
      }
    }
    fs.ftruncateSync(fd, size);
    // On disk before any timing starts, so write-back doesn't run during it.
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path);
  const pct = (k) => Math.round((1000 * bytes[k]) / size) / 10;
  return { version: GENERATOR_VERSION, seed, size, pieces, percent: { random: pct('random'), text: pct('text'), hole: pct('hole') } };
}

function allocatedBytes(path) {
  return fs.statSync(path).blocks * 512;
}

/**
 * The image and its identical copy, cached in `dir` across runs. The copy
 * feeds compare: identical images are its worst case (every data byte of
 * both is read and compared; nothing lets it stop early).
 */
function ensureImages(o) {
  fs.mkdirSync(o.dir, { recursive: true });
  const name = `mixed-${o.size / MiB}M`;
  const src = join(o.dir, `${name}.raw`);
  const copy = join(o.dir, `${name}-copy.raw`);
  const metaPath = join(o.dir, `${name}.json`);
  let meta = null;
  try {
    meta = JSON.parse(fs.readFileSync(metaPath, 'utf8'));
  } catch {}
  const fresh =
    o.fresh ||
    !meta ||
    meta.version !== GENERATOR_VERSION ||
    meta.seed !== SEED ||
    !fs.existsSync(src) ||
    fs.statSync(src).size !== o.size;
  if (fresh) {
    fs.rmSync(copy, { force: true });
    // The other formats' copies of the old image (qcow2, vmdk sources).
    for (const f of fs.readdirSync(o.dir)) if (f.startsWith('mixed-source.')) fs.rmSync(join(o.dir, f), { force: true });
    log(`generating ${src} (${o.size / MiB} MiB, seed '${SEED}')...`);
    const t = process.hrtime.bigint();
    meta = generateImage(src, o.size, SEED);
    fs.writeFileSync(metaPath, JSON.stringify(meta, null, 2) + '\n');
    log(`  done in ${seconds(t).toFixed(1)} s`);
  } else {
    log(`using cached ${src} (--fresh to regenerate)`);
  }
  if (!fs.existsSync(copy) || fs.statSync(copy).size !== o.size) {
    log(`copying to ${copy} (cp --sparse=always)...`);
    run('cp', ['--sparse=always', '--reflink=never', src, copy]);
    run('sync', ['-f', copy]);
  }
  meta.allocatedMiB = round1(allocatedBytes(src) / MiB);
  return { src, copy, meta };
}

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) die(`${cmd} ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

// ---------------------------------------------------------------- measuring

function seconds(start) {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function round1(x) {
  return Math.round(x * 10) / 10;
}

/** Keeps only the end of a stream: error messages are what we want from it. */
function tail(stream, limit = 4000) {
  let text = '';
  stream?.on('data', (d) => {
    text = (text + d).slice(-limit);
  });
  return () => text;
}

/**
 * The environment both tools run in: this one, less NODE_EXTRA_CA_CERTS.
 * Node parses that CA bundle at every start, before any of Platter's code
 * (about 60 ms per run on the 2-core CI VM, whose proxy set-up exports it),
 * and Platter makes no TLS connection; a user's shell rarely sets it.
 */
const RUN_ENV = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_EXTRA_CA_CERTS'));
const DROPPED_ENV = 'NODE_EXTRA_CA_CERTS' in process.env ? ['NODE_EXTRA_CA_CERTS'] : [];

/** virtio's device ID of a memory balloon, and its feature bit for reporting free pages to the host. */
const VIRTIO_BALLOON = 5;
const VIRTIO_BALLOON_F_REPORTING = 5;

/**
 * Whether this machine is a VM whose balloon hands free memory back to its
 * host (Linux reports free 2 MiB blocks about 2 s after they are freed).
 * Then the page cache of an output deleted before a run (each run starts
 * from a fresh target) may be gone from the host when the next run writes:
 * every page faults in from the host. Measured on the 2-core CI VM: the
 * same raw->raw convert took 0.5 s or 1.8-3.4 s depending on how long ago
 * that memory was freed, for qemu-img and Platter alike.
 */
function hostReclaimsFreeMemory() {
  const root = '/sys/bus/virtio/devices';
  let devices = [];
  try {
    devices = fs.readdirSync(root);
  } catch {
    return false;
  }
  return devices.some((d) => {
    const id = Number(readIfExists(join(root, d, 'device')).trim());
    const features = readIfExists(join(root, d, 'features')).trim();
    return id === VIRTIO_BALLOON && features[VIRTIO_BALLOON_F_REPORTING] === '1';
  });
}

/**
 * Runs one command and returns its wall time (measured here, the same way
 * for both tools), its peak RSS and its exit code. `stdout` is 'ignore',
 * 'capture' or a file path.
 */
async function measure(cmd, args, { stdout = 'ignore', rss, timeout }) {
  const timeFile = join(tmpdir(), `platter-bench-${process.pid}.time`);
  const [file, argv] = rss === 'gnu-time' ? [GNU_TIME, ['-f', '%e %M', '-o', timeFile, cmd, ...args]] : [cmd, args];
  const outFd = stdout !== 'ignore' && stdout !== 'capture' ? fs.openSync(stdout, 'w') : null;
  const start = process.hrtime.bigint();
  const child = spawn(file, argv, { env: RUN_ENV, stdio: ['ignore', outFd ?? (stdout === 'capture' ? 'pipe' : 'ignore'), 'pipe'] });
  if (outFd !== null) fs.closeSync(outFd);
  let out = '';
  child.stdout?.on('data', (d) => (out += d));
  const errTail = tail(child.stderr);
  const poller = rss === 'poll' ? pollPeak(child.pid) : null;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeout * 1000);
  const [code, signal, spawnError] = await new Promise((resolve) => {
    child.on('error', (err) => resolve([null, null, err]));
    child.on('close', (c, s) => resolve([c, s, null]));
  });
  const wall = seconds(start);
  clearTimeout(timer);
  let peakMiB = null;
  if (poller) peakMiB = poller.stop();
  else if (rss === 'gnu-time') {
    // On failure GNU time writes "Command exited with non-zero status N" first.
    const last = readIfExists(timeFile).trim().split('\n').pop() ?? '';
    const kib = Number(last.split(' ')[1]);
    if (Number.isFinite(kib)) peakMiB = kib / 1024;
    fs.rmSync(timeFile, { force: true });
  }
  let error = null;
  if (spawnError) error = spawnError.message;
  else if (timedOut) error = `killed after ${timeout} s (--timeout)`;
  else if (signal) error = `killed by ${signal}`;
  return { seconds: wall, peakMiB, code, error, stdout: out, stderr: errTail() };
}

/**
 * Fallback without GNU time: VmHWM (the kernel's high-water mark of RSS)
 * read every 5 ms. The last read before exit is the peak up to then, so a
 * spike in the final few ms can be missed.
 */
function pollPeak(pid) {
  let peak = 0;
  const read = () => {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readIfExists(`/proc/${pid}/status`));
    if (m) peak = Math.max(peak, Number(m[1]));
  };
  read();
  const timer = setInterval(read, 5);
  return {
    stop() {
      clearInterval(timer);
      return peak ? peak / 1024 : null;
    },
  };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

// ---------------------------------------------------------------- operations

/**
 * Each operation: the Platter command and the reference command, how their
 * stdout is handled, what to do before each run (prepare) and how to judge
 * one run's result (check: returns an error string or null).
 */
function operations(img, dir, qemuImg) {
  const platter = (...args) => [process.execPath, [PLATTER_BIN, ...args]];
  const dst = { platter: join(dir, 'convert-platter.raw'), reference: join(dir, 'convert-qemu.raw') };
  const mapOut = { platter: join(dir, 'map-platter.json'), reference: join(dir, 'map-qemu.json') };
  const qdst = { platter: join(dir, 'convert-platter.qcow2'), reference: join(dir, 'convert-qemu.qcow2') };
  const qsrc = join(dir, 'mixed-source.qcow2');
  const vsrc = join(dir, 'mixed-source.vmdk');
  const hsrc = join(dir, 'mixed-source.vhdx');
  /** A fresh output of `ext` per tool. */
  const out = (ext) => ({ platter: join(dir, `convert-platter.${ext}`), reference: join(dir, `convert-qemu.${ext}`) });
  const exitZero = (r) => (r.code === 0 ? null : `exit ${r.code}`);
  const hashDigest = (r) => /\b([0-9a-f]{64})\b/.exec(r.stdout)?.[1] ?? null;
  /** A convert row: both tools copy `src` into a fresh target each run. */
  const convertRow = (name, title, platterArgs, qemuArgs, src, out, prepare = () => {}) => ({
    name,
    title,
    refTool: 'qemu-img',
    platter: platter('convert', ...platterArgs, src, out.platter),
    reference: [qemuImg, ['convert', ...qemuArgs, src, out.reference]],
    // A fresh target each run: no tool gets to overwrite already-allocated blocks.
    prepare: (side) => {
      prepare();
      fs.rmSync(out[side], { force: true });
    },
    check: exitZero,
    src,
    dst: out,
  });
  const rawToRaw = ['-f', 'raw', '-O', 'raw'];
  const rawToQcow2 = ['-f', 'raw', '-O', 'qcow2'];
  const qcow2ToRaw = ['-f', 'qcow2', '-O', 'raw'];
  const makeQsrc = () => {
    if (!fs.existsSync(qsrc)) spawnSync(qemuImg, ['convert', ...rawToQcow2, img.src, qsrc]);
  };
  const makeVsrc = () => {
    if (!fs.existsSync(vsrc)) spawnSync(qemuImg, ['convert', '-f', 'raw', '-O', 'vmdk', img.src, vsrc]);
  };
  const makeHsrc = () => {
    if (!fs.existsSync(hsrc)) spawnSync(qemuImg, ['convert', '-f', 'raw', '-O', 'vhdx', img.src, hsrc]);
  };
  const rawTo = (fmt, ...o) => ['-f', 'raw', '-O', fmt, ...o];
  const vhdxToQcow2 = ['-f', 'vhdx', '-O', 'qcow2'];
  /**
   * A conversion's three rows. Each tool's default; then like for like:
   * both durable (qemu-img -t writeback flushes at the end, as Platter's
   * default does), and neither (Platter's -t unsafe is qemu-img's default:
   * no fsync; Platter still writes a temporary file and renames it).
   */
  const likeForLike = (name, title, args, src, out, prepare) => [
    convertRow(name, `${title} convert`, args, args, src, out, prepare),
    convertRow(`${name}-writeback`, `${title}, qemu -t writeback`, args, ['-t', 'writeback', ...args], src, out, prepare),
    convertRow(`${name}-unsafe`, `${title}, platter -t unsafe`, ['-t', 'unsafe', ...args], args, src, out, prepare),
  ];
  return [
    ...likeForLike('convert', 'raw->raw', rawToRaw, img.src, dst),
    ...likeForLike('to-qcow2', 'raw->qcow2', rawToQcow2, img.src, qdst),
    // The source is qemu-img's own qcow2 copy of the mixed image, made once.
    ...likeForLike('from-qcow2', 'qcow2->raw', qcow2ToRaw, qsrc, dst, makeQsrc),
    convertRow('compress', 'raw->qcow2 convert -c', ['-c', ...rawToQcow2], ['-c', ...rawToQcow2], img.src, qdst),
    ...likeForLike('to-vdi', 'raw->vdi', rawTo('vdi'), img.src, out('vdi')),
    convertRow('to-vmdk', 'raw->vmdk (monolithicSparse)', rawTo('vmdk'), rawTo('vmdk'), img.src, out('vmdk')),
    convertRow(
      'to-vmdk-stream',
      'raw->vmdk (streamOptimized)',
      rawTo('vmdk', '-o', 'subformat=streamOptimized'),
      rawTo('vmdk', '-o', 'subformat=streamOptimized'),
      img.src,
      out('stream.vmdk'),
    ),
    // The source is qemu-img's own monolithicSparse copy of the mixed image, made once.
    convertRow('vmdk-to-qcow2', 'vmdk->qcow2 convert', ['-f', 'vmdk', '-O', 'qcow2'], ['-f', 'vmdk', '-O', 'qcow2'], vsrc, qdst, makeVsrc),
    ...likeForLike('to-vpc', 'raw->vpc', rawTo('vpc'), img.src, out('vhd')),
    ...likeForLike('to-vhdx', 'raw->vhdx', rawTo('vhdx'), img.src, out('vhdx')),
    // The source is qemu-img's own vhdx copy of the mixed image, made once.
    ...likeForLike('vhdx-to-qcow2', 'vhdx->qcow2', vhdxToQcow2, hsrc, qdst, makeHsrc),
    {
      name: 'compare',
      title: 'compare (identical)',
      refTool: 'qemu-img',
      platter: platter('compare', '-f', 'raw', '-F', 'raw', img.src, img.copy),
      reference: [qemuImg, ['compare', '-f', 'raw', '-F', 'raw', img.src, img.copy]],
      // 0 = identical; 1 = "differ" would be a wrong answer here.
      check: (r) => (r.code === 0 ? null : r.code === 1 ? 'said the identical images differ (exit 1)' : `exit ${r.code}`),
    },
    {
      name: 'map',
      title: 'map --output=json',
      refTool: 'qemu-img',
      platter: platter('map', '--output=json', '-f', 'raw', img.src),
      reference: [qemuImg, ['map', '--output=json', '-f', 'raw', img.src]],
      stdout: mapOut,
      check: exitZero,
      mapOut,
    },
    {
      name: 'hash',
      title: 'hash sha256',
      refTool: 'sha256sum',
      platter: platter('hash', '-f', 'raw', img.src),
      reference: ['sha256sum', [img.src]],
      stdout: { platter: 'capture', reference: 'capture' },
      check: (r) => exitZero(r) ?? (hashDigest(r) ? null : `no sha256 digest in its output: ${JSON.stringify(r.stdout.slice(0, 200))}`),
      digest: hashDigest,
    },
  ];
}

function commandLine([cmd, args]) {
  const shown = cmd === process.execPath ? ['node', ...args.map((a) => (a === PLATTER_BIN ? 'bin/platter.cjs' : a))] : [cmd, ...args];
  return shown.join(' ');
}

/**
 * One untimed warm-up of each side first: both then find the source in the
 * page cache (24 GiB of RAM holds it), so neither pays for the disk reads
 * of the other. Then N rounds, alternating which side goes first, so any
 * drift (write-back, CPU clocks) hits both alike.
 */
async function runOperation(op, o, ctx) {
  const sides = o.onlyQemu ? ['reference'] : ['platter', 'reference'];
  const result = { name: op.name, title: op.title, refTool: op.refTool, platter: null, reference: null, failures: [], runs: {} };
  for (const side of sides) result.runs[side] = [];
  const once = async (side, label) => {
    op.prepare?.(side);
    // Start every run with no dirty pages: otherwise the write-back of the
    // previous convert's output (qemu-img does not fsync by default) lands
    // in the middle of whichever command runs next.
    run('sync', []);
    const [cmd, args] = op[side];
    const r = await measure(cmd, args, { stdout: op.stdout?.[side] ?? 'ignore', rss: ctx.rss, timeout: o.timeout });
    const problem = r.error ?? op.check(r);
    if (problem) {
      const who = side === 'platter' ? 'platter' : op.refTool;
      result.failures.push({ side, label, problem, command: commandLine(op[side]), stderr: r.stderr.trim() });
      log(`  FAIL ${op.name} ${label} ${who}: ${problem}\n    $ ${commandLine(op[side])}${r.stderr.trim() ? '\n    ' + r.stderr.trim().split('\n').slice(-5).join('\n    ') : ''}`);
    }
    return { ...r, ok: !problem };
  };

  log(`${op.title}:`);
  // Every side warms up even if one fails: if both fail, the inputs are to blame.
  let warm = true;
  for (const side of sides) {
    const r = await once(side, 'warm-up');
    warm &&= r.ok;
    if (op.digest) result.runs[side].digests = [op.digest(r)];
  }
  if (!warm) return finishOperation(result, sides); // no point timing a failing command
  for (let round = 0; round < o.rounds; round++) {
    const order = round % 2 === 0 ? sides : [...sides].reverse();
    const line = [];
    for (const side of order) {
      const r = await once(side, `round ${round + 1}`);
      if (!r.ok) return finishOperation(result, sides);
      result.runs[side].push({ seconds: r.seconds, peakMiB: r.peakMiB });
      if (op.digest) result.runs[side].digests.push(op.digest(r));
      line.push(`${side === 'platter' ? 'platter' : op.refTool} ${r.seconds.toFixed(2)} s`);
    }
    log(`  round ${round + 1}: ${line.join(', ')}`);
  }
  return finishOperation(result, sides);
}

function finishOperation(result, sides) {
  for (const side of sides) {
    const runs = result.runs[side];
    if (runs.length === 0) continue;
    const peaks = runs.map((r) => r.peakMiB).filter((x) => x !== null);
    result[side] = {
      medianSeconds: median(runs.map((r) => r.seconds)),
      seconds: runs.map((r) => r.seconds),
      peakMiB: peaks.length ? Math.max(...peaks) : null,
    };
  }
  result.ratio = result.platter && result.reference ? result.platter.medianSeconds / result.reference.medianSeconds : null;
  return result;
}

// ---------------------------------------------------------------- output checks

/** Map entries merged where adjacent and alike, keeping what both tools must agree on. */
function normalizeMap(entries) {
  const out = [];
  for (const e of entries) {
    const key = { data: !!e.data, zero: !!e.zero, present: e.present !== false };
    const last = out[out.length - 1];
    if (last && last.data === key.data && last.zero === key.zero && last.present === key.present && last.start + last.length === e.start) {
      last.length += e.length;
    } else out.push({ start: e.start, length: e.length, ...key });
  }
  return out;
}

function describeExtent(e) {
  return `{start ${e.start}, length ${e.length}, data ${e.data}, zero ${e.zero}, present ${e.present}}`;
}

/** Correctness checks, each { name, ok, detail }. Run once, after the timings. */
async function outputChecks(ops, results, img, o, ctx) {
  const checks = [];
  const byName = Object.fromEntries(results.map((r) => [r.name, r]));
  const opByName = Object.fromEntries(ops.map((op) => [op.name, op]));

  // hash: every digest, Platter's and sha256sum's, must be the same.
  const hash = byName.hash;
  if (hash?.runs.platter?.digests && hash.runs.reference?.digests) {
    const all = new Set([...hash.runs.platter.digests, ...hash.runs.reference.digests]);
    checks.push({
      name: 'hash digest equals sha256sum',
      ok: all.size === 1,
      detail: all.size === 1 ? [...all][0] : `platter ${[...new Set(hash.runs.platter.digests)].join(',')} vs sha256sum ${[...new Set(hash.runs.reference.digests)].join(',')}`,
    });
  }

  // convert: Platter's last output must read back as the source, and should be as sparse as qemu-img's.
  const conv = opByName.convert;
  if (!o.onlyQemu && byName.convert?.platter && fs.existsSync(conv.dst.platter)) {
    const r = await measure(ctx.qemuImg, ['compare', '-f', 'raw', '-F', 'raw', img.src, conv.dst.platter], { stdout: 'capture', rss: null, timeout: o.timeout });
    checks.push({
      name: 'converted output identical to source (qemu-img compare)',
      ok: r.code === 0,
      detail: r.code === 0 ? 'identical' : `${r.error ?? `exit ${r.code}`}: ${(r.stdout + r.stderr).trim()}`,
    });
    const mine = allocatedBytes(conv.dst.platter) / MiB;
    const theirs = fs.existsSync(conv.dst.reference) ? allocatedBytes(conv.dst.reference) / MiB : img.meta.allocatedMiB;
    checks.push({
      name: 'converted output as sparse as qemu-img\'s',
      ok: mine <= theirs * 1.01 + 1,
      detail: `allocated: platter ${round1(mine)} MiB, qemu-img ${round1(theirs)} MiB (source ${img.meta.allocatedMiB} MiB)`,
    });
  }

  // Every other convert: Platter's output reads back as its source.
  for (const op of ops) {
    if (op.name === 'convert' || !op.dst || !byName[op.name]?.platter || !fs.existsSync(op.dst.platter)) continue;
    const r = await measure(ctx.qemuImg, ['compare', op.src, op.dst.platter], { stdout: 'capture', rss: null, timeout: o.timeout });
    checks.push({
      name: `${op.title}: output identical to source (qemu-img compare)`,
      ok: r.code === 0,
      detail: r.code === 0 ? 'identical' : `${r.error ?? `exit ${r.code}`}: ${(r.stdout + r.stderr).trim()}`,
    });
  }

  // map: same extents once both are normalized (field order and splitting may differ).
  const map = opByName.map;
  if (!o.onlyQemu && byName.map?.platter && byName.map?.reference) {
    let detail;
    let ok = false;
    try {
      const a = normalizeMap(JSON.parse(fs.readFileSync(map.mapOut.platter, 'utf8')));
      const b = normalizeMap(JSON.parse(fs.readFileSync(map.mapOut.reference, 'utf8')));
      const i = a.findIndex((e, k) => !b[k] || JSON.stringify(e) !== JSON.stringify(b[k]));
      ok = i < 0 && a.length === b.length;
      detail = ok
        ? `${b.length} extents agree`
        : i >= 0
          ? `first difference at extent ${i}: platter ${describeExtent(a[i])} vs qemu-img ${b[i] ? describeExtent(b[i]) : 'nothing'}`
          : `platter has ${a.length} extents, qemu-img ${b.length}`;
    } catch (err) {
      detail = `could not read the JSON: ${err.message}`;
    }
    checks.push({ name: 'map extents equal qemu-img\'s', ok, detail });
  }
  return checks;
}

function targets(results) {
  const by = Object.fromEntries(results.map((r) => [r.name, r]));
  const fmt = (x, unit) => (x === null || x === undefined ? 'n/a' : `${x.toFixed(2)}${unit}`);
  const peaks = results.map((r) => r.platter?.peakMiB).filter((x) => x !== null && x !== undefined);
  const peak = peaks.length ? Math.max(...peaks) : null;
  const judge = (v, limit) => (v === null || v === undefined ? null : v <= limit);
  // Judged on the defaults; the like-for-like rows (same flushing) are shown beside.
  const convertTarget = (title, row, limit) => {
    const unsafe = by[`${row}-unsafe`];
    const writeback = by[`${row}-writeback`];
    const like = [unsafe && `${fmt(unsafe.ratio, 'x')} with -t unsafe`, writeback && `${fmt(writeback.ratio, 'x')} vs qemu -t writeback`].filter(Boolean);
    const value = fmt(by[row]?.ratio, 'x') + (like.length ? ` (like for like: ${like.join(', ')})` : '');
    return { name: `${title} <= ${limit.toFixed(2)}x qemu-img`, value, pass: judge(by[row]?.ratio, limit) };
  };
  return [
    convertTarget('raw->raw convert', 'convert', TARGETS.convertRatio),
    convertTarget('raw->qcow2 convert', 'to-qcow2', TARGETS.convertRatio),
    convertTarget('qcow2->raw convert', 'from-qcow2', TARGETS.convertRatio),
    convertTarget('raw->qcow2 convert -c', 'compress', TARGETS.convertRatio),
    convertTarget('raw->vdi convert', 'to-vdi', TARGETS.convertRatio),
    convertTarget('raw->vmdk convert', 'to-vmdk', TARGETS.convertRatio),
    convertTarget('raw->vmdk streamOptimized', 'to-vmdk-stream', TARGETS.convertRatio),
    convertTarget('vmdk->qcow2 convert', 'vmdk-to-qcow2', TARGETS.convertRatio),
    convertTarget('raw->vpc convert', 'to-vpc', TARGETS.convertRatio),
    convertTarget('raw->vhdx convert', 'to-vhdx', TARGETS.convertRatio),
    convertTarget('vhdx->qcow2 convert', 'vhdx-to-qcow2', TARGETS.convertRatio),
    { name: 'hash <= 1.20x sha256sum', value: fmt(by.hash?.ratio, 'x'), pass: judge(by.hash?.ratio, TARGETS.hashRatio) },
    { name: `peak memory <= ${TARGETS.peakMiB} MiB`, value: peak === null ? 'n/a' : `${peak.toFixed(0)} MiB`, pass: judge(peak, TARGETS.peakMiB) },
  ];
}

// ---------------------------------------------------------------- report

function table(rows) {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => String(r[c]).length)));
  return rows
    .map((r, i) => {
      const line = r.map((cell, c) => (c === 0 ? String(cell).padEnd(widths[c]) : String(cell).padStart(widths[c]))).join('  ');
      return i === 0 ? `${line}\n${widths.map((w) => '-'.repeat(w)).join('  ')}` : line;
    })
    .join('\n');
}

function printReport(summary) {
  const s = (x) => (x === null || x === undefined ? '-' : x.toFixed(2));
  const m = (x) => (x === null || x === undefined ? '-' : x.toFixed(0));
  const rows = [['operation', 'vs', 'platter s', 'ref s', 'ratio', 'platter MiB', 'ref MiB']];
  for (const r of summary.operations) {
    rows.push([r.title, r.refTool, s(r.platter?.medianSeconds), s(r.reference?.medianSeconds), r.ratio === null ? '-' : `${r.ratio.toFixed(2)}x`, m(r.platter?.peakMiB), m(r.reference?.peakMiB)]);
  }
  const img = summary.image;
  const out = [
    '',
    `Platter vs qemu-img ${summary.qemuVersion} on ${img.path}`,
    `  ${img.sizeMiB} MiB raw: ${img.percent.random}% random, ${img.percent.text}% text, ${img.percent.hole}% holes in ${img.pieces} pieces (${img.allocatedMiB} MiB allocated)`,
    `  median of ${summary.rounds} round${summary.rounds === 1 ? '' : 's'}, sides alternating; page cache warm: one untimed warm-up run of each command first`,
    `  peak memory = max RSS per process (${summary.rssMethod}); compare runs on two identical images (worst case: reads all data)`,
    `  \`sync\` before every run; qemu-img convert's default (cache=unsafe) never fsyncs, Platter's convert does: see the -t writeback and -t unsafe rows (like for like)`,
    ...DROPPED_ENV.map((v) => `  ${v} unset for every run (Node would parse that CA bundle at each start; Platter makes no TLS connection)`),
    ...(summary.hostReclaimsMemory
      ? ['  this VM hands freed memory back to its host (virtio-balloon free page reporting): a run may pay for faulting the page cache back in, whichever tool it is; single rounds can be up to 7x slower, so read medians of several rounds (--rounds)']
      : []),
    '',
    table(rows),
    '',
    'targets (informational):',
    ...summary.targets.map((t) => `  ${t.pass === null ? 'n/a ' : t.pass ? 'PASS' : 'MISS'}  ${t.name}: ${t.value}`),
    '',
    'checks:',
    ...summary.checks.map((c) => `  ${c.ok ? 'ok  ' : 'FAIL'}  ${c.name}: ${c.detail}`),
    ...summary.failures.map((f) => `  FAIL  ${f.operation} ${f.label} (${f.side}): ${f.problem}\n          $ ${f.command}${f.stderr ? '\n          ' + f.stderr.split('\n').slice(-5).join('\n          ') : ''}`),
    '',
    summary.ok ? 'result: all commands ran and all outputs matched' : 'result: FAILED (see FAIL lines above)',
  ];
  process.stdout.write(out.join('\n') + '\n');
}

// ---------------------------------------------------------------- main

async function main() {
  const o = parseOptions(process.argv.slice(2));
  if (!haveCommand('qemu-img')) die('qemu-img not found: apt-get install qemu-utils');
  if (!haveCommand('sha256sum')) die('sha256sum not found: apt-get install coreutils');
  if (!o.onlyQemu && !fs.existsSync(PLATTER_BUNDLE)) die(`Platter is not built (${PLATTER_BUNDLE} missing): run npm run build, or use --only-qemu`);

  let rss = 'gnu-time';
  if (o.pollRss) rss = 'poll';
  else if (!haveGnuTime()) {
    rss = 'poll';
    log(`GNU time not found at ${GNU_TIME} (install it: apt-get install time); falling back to polling /proc/<pid>/status VmHWM every 5 ms, which can miss a last-moment peak`);
  }
  const rssMethod = rss === 'gnu-time' ? 'GNU time %M' : '/proc VmHWM polled every 5 ms';
  const qemuVersion = /version (\S+)/.exec(spawnSync('qemu-img', ['--version'], { encoding: 'utf8' }).stdout)?.[1] ?? '?';

  const img = ensureImages(o);
  const ctx = { rss, qemuImg: 'qemu-img' };
  const ops = operations(img, o.dir, ctx.qemuImg).filter((op) => !o.ops || o.ops.includes(op.name));
  const results = [];
  for (const op of ops) results.push(await runOperation(op, o, ctx));

  const checks = await outputChecks(ops, results, img, o, ctx);
  // Leave only the cached inputs behind (and Platter's temp files if a convert was killed).
  for (const op of ops) for (const p of Object.values(op.dst ?? {}).concat(Object.values(op.mapOut ?? {}))) fs.rmSync(p, { force: true });
  for (const f of fs.readdirSync(o.dir)) if (/^\.convert-platter\..*\.tmp$/.test(f)) fs.rmSync(join(o.dir, f), { force: true });

  const failures = results.flatMap((r) => r.failures.map((f) => ({ operation: r.name, ...f })));
  const summary = {
    qemuVersion,
    rounds: o.rounds,
    onlyQemu: o.onlyQemu,
    warmUp: true,
    rssMethod,
    hostReclaimsMemory: hostReclaimsFreeMemory(),
    image: { path: img.src, copy: img.copy, sizeMiB: o.size / MiB, ...img.meta },
    operations: results.map(({ runs, failures: _f, ...r }) => ({ ...r, ...(runs.platter?.digests || runs.reference?.digests ? { digests: { platter: runs.platter?.digests?.[0], reference: runs.reference?.digests?.[0] } } : {}) })),
    targets: targets(results),
    checks,
    failures,
  };
  summary.ok = failures.length === 0 && checks.every((c) => c.ok);
  if (o.json) process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
  else printReport(summary);
  process.exitCode = summary.ok ? 0 : 1;
}

await main();
