#!/usr/bin/env node
// dreamdist's development server: a dependency-free static file server for the repository root.
//
//   node www/serve.mjs [PORT]        (or PORT=… node www/serve.mjs; default 8080, 0 = any free port)
//
// - binds 127.0.0.1 only (a secure context for WebGPU without TLS; nothing is exposed to the LAN);
// - GET and HEAD only; paths are resolved inside the root (no traversal, no dot-files);
// - serves `X.gz` with `Content-Encoding: gzip` when the client accepts gzip and `X.gz` exists
//   (the wasm module is ~40 MB raw, a few MB gzipped);
// - `Cache-Control: no-cache` (always revalidate: rebuilt files are picked up on reload);
// - cross-origin isolation headers (COOP/COEP) so SharedArrayBuffer can be used later.
// Prints `dreamdist: serving http://127.0.0.1:PORT/` once listening.
import { createServer } from "node:http";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const HOST = "127.0.0.1";
const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));

const MIME = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".webp": "image/webp",
  ".gif": "image/gif",
  ".svg": "image/svg+xml",
  ".ico": "image/x-icon",
  ".txt": "text/plain; charset=utf-8",
  ".md": "text/plain; charset=utf-8",
  ".toml": "text/plain; charset=utf-8",
  ".safetensors": "application/octet-stream",
  ".bin": "application/octet-stream",
};

const COMMON_HEADERS = {
  "Cache-Control": "no-cache",
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
  "X-Content-Type-Options": "nosniff",
};

function parsePort(value) {
  if (value === undefined || value === "") return undefined;
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`dreamdist: invalid port ${JSON.stringify(value)} (expected 0–65535)`);
    process.exit(2);
  }
  return port;
}

/** Maps a URL path to a file path inside ROOT, or null when it is not allowed. */
function resolvePath(urlPath) {
  let decoded;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded.includes("\0")) return null;
  const rel = normalize(decoded).replace(/^([/\\])+/, "");
  // No dot-files or dot-directories (.git, .ci, …) and no parent references.
  const parts = rel.split(/[/\\]+/).filter(Boolean);
  if (parts.some((p) => p === ".." || p.startsWith("."))) return null;
  const full = resolve(ROOT, rel);
  if (full !== ROOT && !full.startsWith(ROOT + sep)) return null;
  return full;
}

async function fileStat(path) {
  try {
    const s = await stat(path);
    return s.isFile() ? s : s.isDirectory() ? "dir" : null;
  } catch {
    return null;
  }
}

function acceptsGzip(req) {
  const ae = req.headers["accept-encoding"] || "";
  return ae.split(",").some((part) => {
    const [coding, ...params] = part.trim().split(";");
    if (coding.trim().toLowerCase() !== "gzip") return false;
    const q = params.map((p) => p.trim()).find((p) => p.startsWith("q="));
    return !q || Number(q.slice(2)) > 0;
  });
}

function sendError(req, res, status, message, extra = {}) {
  const body = `${status} ${message}\n`;
  res.writeHead(status, {
    ...COMMON_HEADERS,
    "Content-Type": "text/plain; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
    ...extra,
  });
  res.end(req.method === "HEAD" ? undefined : body);
}

async function handle(req, res) {
  if (req.method !== "GET" && req.method !== "HEAD") {
    return sendError(req, res, 405, "Method Not Allowed", { Allow: "GET, HEAD" });
  }
  let pathname;
  try {
    pathname = new URL(req.url, `http://${HOST}`).pathname;
  } catch {
    return sendError(req, res, 400, "Bad Request");
  }
  let path = resolvePath(pathname);
  if (!path) return sendError(req, res, 404, "Not Found");

  let st = await fileStat(path);
  if (st === "dir") {
    if (!pathname.endsWith("/")) {
      res.writeHead(301, { ...COMMON_HEADERS, Location: pathname + "/", "Content-Length": 0 });
      return res.end();
    }
    path = join(path, "index.html");
    st = await fileStat(path);
  }

  // Precompressed variant (pkg/dreamdist_bg.wasm.gz next to pkg/dreamdist_bg.wasm).
  let encoding = null;
  let sendPath = path;
  if (acceptsGzip(req)) {
    const gz = await fileStat(path + ".gz");
    if (gz && gz !== "dir") {
      encoding = "gzip";
      sendPath = path + ".gz";
      st = gz;
    }
  }
  if (!st || st === "dir") return sendError(req, res, 404, "Not Found");

  const headers = {
    ...COMMON_HEADERS,
    "Content-Type": MIME[extname(path).toLowerCase()] || "application/octet-stream",
    "Content-Length": st.size,
    "Last-Modified": st.mtime.toUTCString(),
    Vary: "Accept-Encoding",
  };
  if (encoding) headers["Content-Encoding"] = encoding;

  const ims = req.headers["if-modified-since"];
  if (ims && Math.floor(st.mtimeMs / 1000) <= Math.floor(Date.parse(ims) / 1000)) {
    delete headers["Content-Length"];
    res.writeHead(304, headers);
    return res.end();
  }

  res.writeHead(200, headers);
  if (req.method === "HEAD") return res.end();
  const stream = createReadStream(sendPath);
  stream.on("error", () => res.destroy());
  stream.pipe(res);
}

export function startServer(port = 8080) {
  const server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      console.error("dreamdist: server error:", err);
      if (!res.headersSent) sendError(req, res, 500, "Internal Server Error");
      else res.destroy();
    });
  });
  return new Promise((resolvePromise, reject) => {
    server.once("error", reject);
    server.listen(port, HOST, () => {
      server.off("error", reject);
      const url = `http://${HOST}:${server.address().port}/`;
      resolvePromise({ server, url });
    });
  });
}

const isMain = process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const port = parsePort(process.argv[2]) ?? parsePort(process.env.PORT) ?? 8080;
  try {
    const { server, url } = await startServer(port);
    console.log(`dreamdist: serving ${url}`);
    const stop = () => {
      server.close(() => process.exit(0));
      server.closeAllConnections();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  } catch (err) {
    console.error(
      err.code === "EADDRINUSE"
        ? `dreamdist: port ${port} is in use; pass another (e.g. \`node www/serve.mjs 0\` picks a free one)`
        : `dreamdist: cannot start server: ${err.message}`,
    );
    process.exit(1);
  }
}
