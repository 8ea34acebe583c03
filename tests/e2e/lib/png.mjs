// Minimal PNG encoder/decoder for the tests (8-bit RGB/RGBA/grey, non-interlaced), and the tEXt
// chunk reader used to check the parameters the page and the CLI write into their PNGs.
import { deflateSync, inflateSync, crc32 } from "node:zlib";

const SIG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function crc(buf) {
  if (crc32) return crc32(buf) >>> 0;
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return ~c >>> 0;
}

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const c = Buffer.alloc(4);
  c.writeUInt32BE(crc(td));
  return Buffer.concat([len, td, c]);
}

/** RGB bytes (w × h × 3) → PNG; `text` = {key: value} tEXt chunks. */
export function encodePng(rgb, width, height, text = {}) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2; // RGB
  const raw = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    raw[y * (1 + width * 3)] = 0;
    Buffer.from(rgb.buffer, rgb.byteOffset + y * width * 3, width * 3).copy(raw, y * (1 + width * 3) + 1);
  }
  const texts = Object.entries(text).map(([k, v]) => chunk("tEXt", Buffer.concat([Buffer.from(k, "latin1"), Buffer.from([0]), Buffer.from(v, "latin1")])));
  return Buffer.concat([SIG, chunk("IHDR", ihdr), ...texts, chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

/** A PNG whose header claims width × height (a cheap "huge image": its data is one black row). */
export function hugePngHeader(width, height) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  return Buffer.concat([SIG, chunk("IHDR", ihdr), chunk("IDAT", deflateSync(Buffer.alloc(1 + width * 3))), chunk("IEND", Buffer.alloc(0))]);
}

/** The chunks of a PNG: [{type, data}]. */
export function chunks(png) {
  const b = Buffer.from(png);
  if (!b.subarray(0, 8).equals(SIG)) throw new Error("not a PNG");
  const out = [];
  for (let i = 8; i < b.length; ) {
    const len = b.readUInt32BE(i);
    out.push({ type: b.toString("ascii", i + 4, i + 8), data: b.subarray(i + 8, i + 8 + len) });
    i += 12 + len;
  }
  return out;
}

/** tEXt chunks as {key: value}. */
export function textChunks(png) {
  const out = {};
  for (const c of chunks(png)) {
    if (c.type !== "tEXt") continue;
    const z = c.data.indexOf(0);
    out[c.data.toString("latin1", 0, z)] = c.data.toString("latin1", z + 1);
  }
  return out;
}

/** Decodes an 8-bit non-interlaced PNG to {width, height, rgb}. */
export function decodePng(png) {
  const cs = chunks(png);
  const ihdr = cs.find((c) => c.type === "IHDR").data;
  const width = ihdr.readUInt32BE(0);
  const height = ihdr.readUInt32BE(4);
  const depth = ihdr[8];
  const color = ihdr[9];
  if (depth !== 8 || ihdr[12] !== 0) throw new Error(`unsupported PNG (depth ${depth}, interlace ${ihdr[12]})`);
  const channels = { 0: 1, 2: 3, 4: 2, 6: 4 }[color];
  if (!channels) throw new Error(`unsupported PNG colour type ${color}`);
  const data = inflateSync(Buffer.concat(cs.filter((c) => c.type === "IDAT").map((c) => c.data)));
  const stride = width * channels;
  const out = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const f = data[y * (stride + 1)];
    const line = data.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[y * stride + x - channels] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels] : 0;
      let v = line[x];
      if (f === 1) v += a;
      else if (f === 2) v += b;
      else if (f === 3) v += (a + b) >> 1;
      else if (f === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[y * stride + x] = v & 0xff;
    }
  }
  const rgb = Buffer.alloc(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    for (let k = 0; k < 3; k++) rgb[i * 3 + k] = channels >= 3 ? out[i * channels + k] : out[i * channels];
  }
  return { width, height, rgb };
}
