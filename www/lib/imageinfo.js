// Reference-image checks before anything is decoded: the file type from its first bytes and
// the pixel size from its header (PNG, JPEG, WebP), against the same policy as the library
// (src/image.rs): at most 16384 px per side and 64 megapixels, at least 64 px on the shorter
// side. A 100-megapixel photo is refused here without ever being decoded.

export const LIMITS = {
  maxSide: 16384,
  maxPixels: 64 * 1024 * 1024,
  minSide: 64,
  maxFileBytes: 50e6,
  maxImages: 20,
  minImages: 4,
};

const u16be = (b, i) => (b[i] << 8) | b[i + 1];
const u32be = (b, i) => ((b[i] << 24) >>> 0) + (b[i + 1] << 16) + (b[i + 2] << 8) + b[i + 3];
const u16le = (b, i) => b[i] | (b[i + 1] << 8);
const u24le = (b, i) => b[i] | (b[i + 1] << 8) | (b[i + 2] << 16);

/** {type: "png"|"jpeg"|"webp", width, height} or {type: null} when not a supported image. */
export function sniff(bytes) {
  const b = bytes;
  if (b.length >= 24 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) {
    return { type: "png", width: u32be(b, 16), height: u32be(b, 20) };
  }
  if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8) {
    // Walk the markers to the first start-of-frame.
    let i = 2;
    while (i + 9 < b.length) {
      if (b[i] !== 0xff) return { type: "jpeg", width: 0, height: 0 };
      const marker = b[i + 1];
      if (marker === 0xff) {
        i++;
        continue;
      }
      const len = u16be(b, i + 2);
      if ((marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc)) {
        return { type: "jpeg", width: u16be(b, i + 7), height: u16be(b, i + 5) };
      }
      i += 2 + len;
    }
    return { type: "jpeg", width: 0, height: 0 };
  }
  if (b.length >= 30 && String.fromCharCode(...b.slice(0, 4)) === "RIFF" && String.fromCharCode(...b.slice(8, 12)) === "WEBP") {
    const chunk = String.fromCharCode(...b.slice(12, 16));
    if (chunk === "VP8X") return { type: "webp", width: u24le(b, 24) + 1, height: u24le(b, 27) + 1 };
    if (chunk === "VP8L") {
      const bits = b[21] | (b[22] << 8) | (b[23] << 16) | (b[24] << 24);
      return { type: "webp", width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1 };
    }
    if (chunk === "VP8 ") return { type: "webp", width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff };
    return { type: "webp", width: 0, height: 0 };
  }
  return { type: null };
}

/**
 * Checks a reference image file. Returns {ok: true, type, width, height} or {ok: false, reason}
 * with a reason meant for people.
 */
export async function checkImageFile(file) {
  if (file.size > LIMITS.maxFileBytes) {
    return { ok: false, reason: `${mb(file.size)} is larger than the ${mb(LIMITS.maxFileBytes)} allowed per image` };
  }
  if (file.size === 0) return { ok: false, reason: "the file is empty" };
  const head = new Uint8Array(await file.slice(0, 256 * 1024).arrayBuffer());
  const info = sniff(head);
  if (!info.type) return { ok: false, reason: "not an image this app can read (PNG, JPEG or WebP expected)" };
  const { width: w, height: h } = info;
  if (!w || !h) return { ok: false, reason: `a ${info.type.toUpperCase()} file whose size could not be read (damaged?)` };
  if (w > LIMITS.maxSide || h > LIMITS.maxSide || w * h > LIMITS.maxPixels) {
    return {
      ok: false,
      reason: `${w}×${h} (${(w * h / 1e6).toFixed(0)} megapixels) is too large: at most ${LIMITS.maxSide} px per side and ${LIMITS.maxPixels / 2 ** 20} megapixels. Scale it down first`,
    };
  }
  if (Math.min(w, h) < LIMITS.minSide) {
    return { ok: false, reason: `${w}×${h} is too small: the shorter side must be at least ${LIMITS.minSide} px` };
  }
  return { ok: true, ...info };
}

function mb(bytes) {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
}
