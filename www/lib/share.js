// Sharing distributions by link: `?dist=<URL>` (a hosted .ddist file) and `#d=<data>` (a small
// distribution embedded in the link itself: deflate-raw via CompressionStream, then base64url).
// Everything decoded here is still validated by the engine before use (DistFile::from_bytes);
// these checks only refuse what is obviously wrong early, with a reason in words.

/** Largest `#d=` payload (characters after "d="): links over ~64 KB break in mail and chat. */
export const MAX_FRAGMENT_CHARS = 48 * 1024;
/** Largest decompressed distribution from a fragment. */
export const MAX_FRAGMENT_BYTES = 1024 * 1024;
/** Largest .ddist file fetched from `?dist=` or imported (the library's MAX_FILE_BYTES). */
export const MAX_DIST_BYTES = 64 * 1024 * 1024;

export class ShareError extends Error {}

export function toBase64Url(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function fromBase64Url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new ShareError("the link's data holds characters that base64url does not use (was it cut or changed?)");
  if (text.length % 4 === 1) throw new ShareError("the link's data has an impossible length (was it cut?)");
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function pipe(bytes, stream, limit) {
  const reader = new Blob([bytes]).stream().pipeThrough(stream).getReader();
  const chunks = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (limit && n > limit) {
      await reader.cancel();
      throw new ShareError(`the link's data unpacks to more than ${limit / 1024} KB, more than any distribution a link may carry`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/** `#d=` payload of a distribution's bytes, or a ShareError saying why it does not fit. */
export async function encodeFragment(bytes) {
  const packed = await pipe(bytes, new CompressionStream("deflate-raw"));
  const text = toBase64Url(packed);
  if (text.length > MAX_FRAGMENT_CHARS) {
    throw new ShareError(
      `this distribution is ${Math.round(bytes.length / 1024)} KB (${Math.round(text.length / 1024)} KB in a link), over the ${MAX_FRAGMENT_CHARS / 1024} KB a share link may carry. Export the .ddist file and share that (or host it and use ?dist=).`,
    );
  }
  return text;
}

/** The distribution bytes in a `#d=` payload, or a ShareError. */
export async function decodeFragment(text) {
  if (!text) throw new ShareError("the link's #d= part is empty");
  if (text.length > MAX_FRAGMENT_CHARS) {
    throw new ShareError(`the link carries ${Math.round(text.length / 1024)} KB of data, over the ${MAX_FRAGMENT_CHARS / 1024} KB limit for #d= links`);
  }
  const packed = fromBase64Url(text);
  try {
    return await pipe(packed, new DecompressionStream("deflate-raw"), MAX_FRAGMENT_BYTES);
  } catch (err) {
    if (err instanceof ShareError) throw err;
    throw new ShareError("the link's data is not a compressed distribution (it may be cut or damaged)");
  }
}

/** The URL of `?dist=`, checked: https, or this page's own origin. Throws ShareError. */
export function checkDistUrl(value, base = location.href) {
  let url;
  try {
    url = new URL(value, base);
  } catch {
    throw new ShareError(`“${value}” is not a web address`);
  }
  const own = url.origin === new URL(base).origin;
  if (!own && url.protocol !== "https:") throw new ShareError(`only https:// addresses (or this site's own files) are loaded, not ${url.protocol}//`);
  return url;
}

/** Fetches a hosted .ddist file (size-capped). Throws ShareError with a reason in words. */
export async function fetchDist(url) {
  let res;
  try {
    res = await fetch(url, { credentials: "omit", mode: "cors" });
  } catch (err) {
    throw new ShareError(`could not download ${url.href}: ${err.message} (the server may be down, or may not allow other sites to read it: CORS)`);
  }
  if (!res.ok) throw new ShareError(`${url.href} answered HTTP ${res.status}`);
  const len = Number(res.headers.get("content-length") || 0);
  if (len > MAX_DIST_BYTES) throw new ShareError(`${url.href} is ${Math.round(len / 1e6)} MB, larger than any distribution file`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (bytes.length > MAX_DIST_BYTES) throw new ShareError(`${url.href} is larger than any distribution file`);
  return bytes;
}
