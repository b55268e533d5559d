// Draws Platter's icon and writes assets/icon.svg, icon.png (512x512, Linux),
// icon.ico (Windows) and icon.icns (macOS). Run it after changing the design:
//
//   node scripts/make-icons.mjs
//
// The design is a short list of shapes (below). The same list is written out as
// SVG and rasterised here in plain JS (signed distance per pixel for
// anti-aliasing) and encoded with node:zlib, so no image library, native
// module or system tool is needed, and every size is drawn from the geometry
// rather than scaled from a bitmap. The outputs are committed; packaging
// (electron-builder.yml) only reads them.
import { writeFileSync, mkdirSync } from 'node:fs';
import { deflateSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const ASSETS = fileURLToPath(new URL('../assets/', import.meta.url));
const VIEW = 512; // design units; the SVG viewBox is 0 0 512 512

// ---- the design: painted in order, later shapes on top -------------------
// A disk platter (silver, with tracks and a hub) on a blue rounded tile, with
// an amber read/write arm reaching in from the lower right.
const BG_TOP = '#3b7fe8';
const BG_BOTTOM = '#1d4fb0';
const shapes = [
  { kind: 'roundRect', x: 24, y: 24, w: 464, h: 464, r: 104, fill: { from: BG_TOP, to: BG_BOTTOM } },
  { kind: 'circle', cx: 240, cy: 240, r: 180, fill: '#153a82', opacity: 0.45 }, // shadow
  { kind: 'circle', cx: 236, cy: 232, r: 176, fill: '#eef1f6' },
  { kind: 'ring', cx: 236, cy: 232, r: 146, width: 5, fill: '#c9d1de' },
  { kind: 'ring', cx: 236, cy: 232, r: 114, width: 5, fill: '#c9d1de' },
  { kind: 'ring', cx: 236, cy: 232, r: 82, width: 5, fill: '#c9d1de' },
  { kind: 'circle', cx: 236, cy: 232, r: 46, fill: '#98a3b5' },
  { kind: 'circle', cx: 236, cy: 232, r: 16, fill: '#34415a' },
  { kind: 'capsule', x1: 408, y1: 404, x2: 318, y2: 262, r: 13, fill: '#f4b23a' },
  { kind: 'capsule', x1: 322, y1: 268, x2: 300, y2: 240, r: 16, fill: '#e0961b' },
  { kind: 'circle', cx: 408, cy: 404, r: 34, fill: '#f4b23a' },
  { kind: 'circle', cx: 408, cy: 404, r: 12, fill: '#b86f0a' },
];

// ---- SVG -----------------------------------------------------------------
function svg() {
  const defs = [];
  const body = [];
  shapes.forEach((s, i) => {
    let fill = s.fill;
    if (typeof fill === 'object') {
      const id = `g${i}`;
      defs.push(
        `<linearGradient id="${id}" x1="0" y1="${s.y}" x2="0" y2="${s.y + s.h}" gradientUnits="userSpaceOnUse">` +
          `<stop offset="0" stop-color="${fill.from}"/><stop offset="1" stop-color="${fill.to}"/></linearGradient>`,
      );
      fill = `url(#${id})`;
    }
    const op = s.opacity !== undefined ? ` opacity="${s.opacity}"` : '';
    switch (s.kind) {
      case 'roundRect':
        body.push(`<rect x="${s.x}" y="${s.y}" width="${s.w}" height="${s.h}" rx="${s.r}" fill="${fill}"${op}/>`);
        break;
      case 'circle':
        body.push(`<circle cx="${s.cx}" cy="${s.cy}" r="${s.r}" fill="${fill}"${op}/>`);
        break;
      case 'ring':
        body.push(`<circle cx="${s.cx}" cy="${s.cy}" r="${s.r}" fill="none" stroke="${fill}" stroke-width="${s.width}"${op}/>`);
        break;
      case 'capsule':
        body.push(
          `<line x1="${s.x1}" y1="${s.y1}" x2="${s.x2}" y2="${s.y2}" stroke="${fill}" stroke-width="${2 * s.r}" stroke-linecap="round"${op}/>`,
        );
        break;
      default:
        throw new Error(`unknown shape ${s.kind}`);
    }
  });
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${VIEW}" height="${VIEW}" viewBox="0 0 ${VIEW} ${VIEW}">\n` +
    `  <title>Platter</title>\n` +
    (defs.length ? `  <defs>${defs.join('')}</defs>\n` : '') +
    body.map((line) => `  ${line}\n`).join('') +
    `</svg>\n`
  );
}

// ---- rasteriser ------------------------------------------------------------
function hex(color) {
  const n = Number.parseInt(color.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// Signed distance in design units from point (x, y) to the shape's edge
// (negative inside).
function distance(s, x, y) {
  switch (s.kind) {
    case 'circle':
      return Math.hypot(x - s.cx, y - s.cy) - s.r;
    case 'ring':
      return Math.abs(Math.hypot(x - s.cx, y - s.cy) - s.r) - s.width / 2;
    case 'roundRect': {
      const hx = s.w / 2 - s.r;
      const hy = s.h / 2 - s.r;
      const qx = Math.abs(x - (s.x + s.w / 2)) - hx;
      const qy = Math.abs(y - (s.y + s.h / 2)) - hy;
      return Math.hypot(Math.max(qx, 0), Math.max(qy, 0)) + Math.min(Math.max(qx, qy), 0) - s.r;
    }
    case 'capsule': {
      const dx = s.x2 - s.x1;
      const dy = s.y2 - s.y1;
      const t = Math.min(1, Math.max(0, ((x - s.x1) * dx + (y - s.y1) * dy) / (dx * dx + dy * dy)));
      return Math.hypot(x - (s.x1 + t * dx), y - (s.y1 + t * dy)) - s.r;
    }
    default:
      throw new Error(`unknown shape ${s.kind}`);
  }
}

function colorAt(s, y) {
  if (typeof s.fill === 'string') return hex(s.fill);
  const a = hex(s.fill.from);
  const b = hex(s.fill.to);
  const t = Math.min(1, Math.max(0, (y - s.y) / s.h));
  return a.map((v, i) => v + (b[i] - v) * t);
}

/** RGBA pixels (straight alpha) of the icon at size x size. */
function render(size) {
  const scale = size / VIEW; // pixels per design unit
  const px = new Float64Array(size * size * 4); // premultiplied while painting
  for (let j = 0; j < size; j++) {
    for (let i = 0; i < size; i++) {
      const x = (i + 0.5) / scale;
      const y = (j + 0.5) / scale;
      const o = (j * size + i) * 4;
      for (const s of shapes) {
        // Coverage from the distance to the edge, in pixels: a one-pixel ramp.
        const cover = Math.min(1, Math.max(0, 0.5 - distance(s, x, y) * scale));
        if (cover === 0) continue;
        const a = cover * (s.opacity ?? 1);
        const [r, g, b] = colorAt(s, y);
        px[o] = r * a + px[o] * (1 - a);
        px[o + 1] = g * a + px[o + 1] * (1 - a);
        px[o + 2] = b * a + px[o + 2] * (1 - a);
        px[o + 3] = a + px[o + 3] * (1 - a);
      }
    }
  }
  const out = Buffer.alloc(size * size * 4);
  for (let p = 0; p < size * size * 4; p += 4) {
    const a = px[p + 3];
    for (let c = 0; c < 3; c++) out[p + c] = a > 0 ? Math.round(Math.min(255, px[p + c] / a)) : 0;
    out[p + 3] = Math.round(a * 255);
  }
  return out;
}

// ---- PNG -------------------------------------------------------------------
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf) {
  let c = 0xffffffff;
  for (const byte of buf) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

function png(size) {
  const rgba = render(size);
  const stride = size * 4;
  const raw = Buffer.alloc((stride + 1) * size);
  for (let y = 0; y < size; y++) {
    // Filter 1 (Sub): flat colour areas become runs of zeros and deflate well.
    const row = y * (stride + 1);
    raw[row] = 1;
    for (let x = 0; x < stride; x++) {
      const left = x >= 4 ? rgba[y * stride + x - 4] : 0;
      raw[row + 1 + x] = (rgba[y * stride + x] - left) & 0xff;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 6; // colour type: RGBA
  ihdr[10] = 0; // compression: deflate
  ihdr[11] = 0; // filter method 0
  ihdr[12] = 0; // no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---- ICO: PNG-compressed entries (Windows Vista and later) ---------------
function ico(images) {
  const header = Buffer.alloc(6 + 16 * images.length);
  header.writeUInt16LE(0, 0); // reserved
  header.writeUInt16LE(1, 2); // type: icon
  header.writeUInt16LE(images.length, 4);
  let offset = header.length;
  images.forEach(({ size, data }, i) => {
    const e = 6 + 16 * i;
    header[e] = size >= 256 ? 0 : size; // 0 means 256
    header[e + 1] = size >= 256 ? 0 : size;
    header[e + 2] = 0; // no palette
    header[e + 3] = 0; // reserved
    header.writeUInt16LE(1, e + 4); // colour planes
    header.writeUInt16LE(32, e + 6); // bits per pixel
    header.writeUInt32LE(data.length, e + 8);
    header.writeUInt32LE(offset, e + 12);
    offset += data.length;
  });
  return Buffer.concat([header, ...images.map((im) => im.data)]);
}

// ---- ICNS: PNG payloads under the OSTypes macOS 10.7+ reads ---------------
function icns(entries) {
  const parts = entries.map(({ type, data }) => {
    const head = Buffer.alloc(8);
    head.write(type, 0, 'latin1');
    head.writeUInt32BE(data.length + 8, 4);
    return Buffer.concat([head, data]);
  });
  const head = Buffer.alloc(8);
  head.write('icns', 0, 'latin1');
  head.writeUInt32BE(8 + parts.reduce((n, p) => n + p.length, 0), 4);
  return Buffer.concat([head, ...parts]);
}

// ---- write -----------------------------------------------------------------
const cache = new Map();
const pngOf = (size) => {
  if (!cache.has(size)) cache.set(size, png(size));
  return cache.get(size);
};

mkdirSync(ASSETS, { recursive: true });
const outputs = {
  'icon.svg': Buffer.from(svg()),
  'icon.png': pngOf(512),
  'icon.ico': ico([16, 24, 32, 48, 64, 128, 256].map((size) => ({ size, data: pngOf(size) }))),
  'icon.icns': icns([
    { type: 'icp4', data: pngOf(16) },
    { type: 'icp5', data: pngOf(32) },
    { type: 'ic11', data: pngOf(32) }, // 16@2x
    { type: 'ic12', data: pngOf(64) }, // 32@2x
    { type: 'ic07', data: pngOf(128) },
    { type: 'ic13', data: pngOf(256) }, // 128@2x
    { type: 'ic08', data: pngOf(256) },
    { type: 'ic14', data: pngOf(512) }, // 256@2x
    { type: 'ic09', data: pngOf(512) },
    { type: 'ic10', data: pngOf(1024) }, // 512@2x
  ]),
};
for (const [name, data] of Object.entries(outputs)) {
  writeFileSync(ASSETS + name, data);
  console.log(`assets/${name}: ${data.length} bytes`);
}
