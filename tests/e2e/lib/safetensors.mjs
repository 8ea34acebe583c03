// safetensors read/write for the tests (the .ddist container, the demo data set, and image
// batches for `dreamdist demo-read`).

const DTYPE_BYTES = { F32: 4, F16: 2, U8: 1, I64: 8, BF16: 2 };

/** {metadata, tensors: {name: {dtype, shape, data: Buffer}}} */
export function readSafetensors(bytes) {
  const b = Buffer.from(bytes);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.toString("utf8", 8, 8 + n));
  const base = 8 + n;
  const tensors = {};
  let metadata = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = t;
      continue;
    }
    tensors[name] = { dtype: t.dtype, shape: t.shape, data: b.subarray(base + t.data_offsets[0], base + t.data_offsets[1]) };
  }
  return { metadata, tensors };
}

/** Float values of an F32 / F16 tensor. */
export function floats(t) {
  if (t.dtype === "F32") return Array.from({ length: t.data.length / 4 }, (_, i) => t.data.readFloatLE(i * 4));
  if (t.dtype === "F16") {
    return Array.from({ length: t.data.length / 2 }, (_, i) => {
      const h = t.data.readUInt16LE(i * 2);
      const s = h & 0x8000 ? -1 : 1;
      const e = (h >> 10) & 0x1f;
      const f = h & 0x3ff;
      if (e === 0) return s * 2 ** -14 * (f / 1024);
      if (e === 31) return f ? NaN : s * Infinity;
      return s * 2 ** (e - 15) * (1 + f / 1024);
    });
  }
  throw new Error(`not a float tensor: ${t.dtype}`);
}

/** Writes tensors {name: {dtype, shape, data: Buffer}} (+ string metadata). */
export function writeSafetensors(tensors, metadata) {
  const header = {};
  let off = 0;
  const parts = [];
  for (const [name, t] of Object.entries(tensors)) {
    const len = t.data.length;
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (len !== expected) throw new Error(`${name}: ${len} bytes for shape ${t.shape}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + len] };
    parts.push(Buffer.from(t.data));
    off += len;
  }
  if (metadata) header.__metadata__ = metadata;
  let json = Buffer.from(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([n, json, ...parts]);
}
