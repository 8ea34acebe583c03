#!/usr/bin/env node
// A test server for converted models: serves a directory over HTTP on 127.0.0.1 with correct
// `Range` support and injects faults per file and per request, so the native and browser loaders
// can be driven through truncated bodies, flipped bytes, dropped connections, server errors, slow
// links and servers that ignore `Range`. Dependency-free (Node ≥ 20).
//
//   node tests/e2e/faultserver.mjs DIR [--port N] [--plan JSON | --plan-file FILE] [--exit-with-stdin]
//
// Prints `faultserver: serving http://127.0.0.1:PORT/` once listening (port 0 = any free port,
// the default). `--exit-with-stdin`: exit when stdin closes (a parent that dies takes it along).
//
// Files: GET/HEAD; `Range: bytes=a-b | a- | -n` → 206 + Content-Range, unsatisfiable → 416 with
// `Content-Range: bytes */SIZE`, several ranges → 200 with the whole file. Paths stay inside DIR.
// Cross-origin use: `Access-Control-Allow-Origin: *`, preflights allow `Range` (and whatever is
// asked), `Access-Control-Expose-Headers: Content-Range, Content-Length, Accept-Ranges`,
// `Cross-Origin-Resource-Policy: cross-origin` (pages with COEP require-corp may load it).
// `Cache-Control: no-store` so the browser's HTTP cache never hides a request.
//
// Control endpoints (CORS-enabled too):
//   GET  /__log     [{i, t, method, path, range, status, bytes, size, faults, aborted, ms}] —
//                   `bytes` = body bytes flushed to the socket, `faults` = faults that fired,
//                   `aborted` = the connection ended before the response completed.
//   GET  /__faults  the plan; POST /__faults {faults:[…]} (or a bare array) replaces it and
//                   resets the per-file request counters.
//   POST /__reset   clears the log and the counters (the plan stays).
//
// A plan is {"faults": [FAULT, …]} (or a bare array). A FAULT:
//   {"path": "/unet-000.bin" | "*.bin" | "*",   which files (`*` matches any characters)
//    "on": [1, 3] | "all" | {"from": 2, "to": 4},  which GETs of that file, counted from 1 per
//                                                  file since start/reset (default [1])
//    "type": one of
//      "truncate"      close the connection (FIN) after `after` body bytes (default: half the
//                      body), Content-Length still announcing the full body; with
//                      "honest": true the headers announce the short length instead (a
//                      well-formed, short response)
//      "flip"          XOR the byte at file offset `offset` (default: the middle of the file)
//                      with `xor` (default 0xff), when it lies in the requested range
//      "drop"          destroy the socket after `after` body bytes (default: half the body)
//      "status"        answer `code` (default 500) with a short text body, nothing else
//      "slow"          throttle the body to `rate` bytes/s (default 65536)
//      "ignore-range"  answer 200 with the whole file even when a range was asked for
//      "delay"         wait `ms` (default 1000) before sending the headers
//      "endless"       after the requested bytes, keep sending zeros (no Content-Length) until
//                      the client stops reading (at most `max` bytes, default 16 GiB)
//   }
// Several faults may fire on one request (e.g. slow + drop); `status` wins over the others.
import { createServer } from "node:http";
import { open, readFile, stat } from "node:fs/promises";
import { normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const HOST = "127.0.0.1";
const CHUNK = 64 << 10;
const TYPES = new Set(["truncate", "flip", "drop", "status", "slow", "ignore-range", "delay", "endless"]);

function fail(msg) {
  console.error(`faultserver: ${msg}`);
  process.exit(2);
}

/** Validates a plan; returns the fault list. */
export function parsePlan(plan) {
  const faults = Array.isArray(plan) ? plan : plan?.faults;
  if (!Array.isArray(faults)) throw new Error("a plan is {faults: [...]} or an array of faults");
  for (const f of faults) {
    if (!f || typeof f !== "object") throw new Error(`not a fault: ${JSON.stringify(f)}`);
    if (!TYPES.has(f.type)) throw new Error(`unknown fault type ${JSON.stringify(f.type)} (one of ${[...TYPES].join(", ")})`);
    if (typeof (f.path ?? "*") !== "string") throw new Error(`fault path must be a string: ${JSON.stringify(f)}`);
    const on = f.on ?? [1];
    const okOn =
      on === "all" ||
      (Array.isArray(on) && on.every((n) => Number.isInteger(n) && n >= 1)) ||
      (typeof on === "object" && on !== null && !Array.isArray(on));
    if (!okOn) throw new Error(`fault "on" must be "all", [n, …] or {from, to}: ${JSON.stringify(f)}`);
  }
  return faults.map((f) => ({ ...f, path: f.path ?? "*", on: f.on ?? [1] }));
}

function globToRegExp(glob) {
  const esc = glob.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*");
  return new RegExp(`^${esc}$`);
}

function pathMatches(pattern, path) {
  const p = pattern.startsWith("/") || pattern.startsWith("*") ? pattern : `/${pattern}`;
  return globToRegExp(p).test(path);
}

function occurrenceMatches(on, n) {
  if (on === "all") return true;
  if (Array.isArray(on)) return on.includes(n);
  const from = on.from ?? 1;
  const to = on.to ?? Infinity;
  return n >= from && n <= to;
}

/** Parses a Range header against `size`: {start, end} (end exclusive), "unsatisfiable", or null (ignore). */
export function parseRange(header, size) {
  if (!header) return null;
  const m = /^\s*bytes\s*=\s*(.+)$/i.exec(header);
  if (!m) return null;
  const specs = m[1].split(",").map((s) => s.trim());
  if (specs.length !== 1) return null; // several ranges: serve the whole file (allowed by RFC 9110)
  const r = /^(\d*)-(\d*)$/.exec(specs[0]);
  if (!r || (r[1] === "" && r[2] === "")) return null;
  if (r[1] === "") {
    const n = Number(r[2]);
    if (n === 0) return "unsatisfiable";
    return { start: Math.max(0, size - n), end: size };
  }
  const start = Number(r[1]);
  let end = r[2] === "" ? size : Number(r[2]) + 1;
  if (r[2] !== "" && end - 1 < start) return null; // invalid: ignore the header
  if (start >= size) return "unsatisfiable";
  end = Math.min(end, size);
  return { start, end };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts the server on `port` serving `root` with the fault list `faults`.
 * Resolves with {server, url, state} (state: {log, counters, faults}).
 */
export function startFaultServer(root, { port = 0, faults = [] } = {}) {
  const ROOT = resolve(root);
  const state = { log: [], counters: new Map(), faults: parsePlan(faults), seq: 0 };
  const t0 = Date.now();

  const corsHeaders = (req) => ({
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, Accept-Ranges, Content-Type",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Timing-Allow-Origin": "*",
    Vary: "Origin",
  });

  function resolvePath(urlPath) {
    let decoded;
    try {
      decoded = decodeURIComponent(urlPath);
    } catch {
      return null;
    }
    if (decoded.includes("\0")) return null;
    const rel = normalize(decoded).replace(/^([/\\])+/, "");
    const parts = rel.split(/[/\\]+/).filter(Boolean);
    if (parts.some((p) => p === ".." || p.startsWith("."))) return null;
    const full = resolve(ROOT, rel);
    if (full !== ROOT && !full.startsWith(ROOT + sep)) return null;
    return full;
  }

  function sendText(req, res, status, text, extra = {}) {
    const body = Buffer.from(text);
    res.writeHead(status, {
      ...corsHeaders(req),
      "Content-Type": "text/plain; charset=utf-8",
      "Content-Length": body.length,
      "Cache-Control": "no-store",
      ...extra,
    });
    res.end(req.method === "HEAD" ? undefined : body);
    return body.length;
  }

  function sendJson(req, res, value) {
    const body = Buffer.from(JSON.stringify(value));
    res.writeHead(200, {
      ...corsHeaders(req),
      "Content-Type": "application/json; charset=utf-8",
      "Content-Length": body.length,
      "Cache-Control": "no-store",
    });
    res.end(body);
  }

  async function readBody(req) {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    return Buffer.concat(chunks).toString("utf8");
  }

  /** Writes `buf`; resolves once it is flushed to the socket (false if the connection is gone). */
  function write(res, buf) {
    return new Promise((resolveWrite) => {
      if (res.destroyed || res.writableEnded) return resolveWrite(false);
      res.write(buf, (err) => resolveWrite(!err));
    });
  }

  async function handleControl(req, res, pathname) {
    if (pathname === "/__log" && req.method === "GET") return sendJson(req, res, state.log);
    if (pathname === "/__faults" && req.method === "GET") return sendJson(req, res, { faults: state.faults });
    if (pathname === "/__faults" && req.method === "POST") {
      let faults;
      try {
        faults = parsePlan(JSON.parse(await readBody(req)));
      } catch (err) {
        return sendText(req, res, 400, `bad plan: ${err.message}\n`);
      }
      state.faults = faults;
      state.counters.clear();
      return sendJson(req, res, { faults: state.faults });
    }
    if (pathname === "/__reset" && req.method === "POST") {
      await readBody(req);
      state.log = [];
      state.counters.clear();
      state.seq = 0;
      return sendJson(req, res, { ok: true });
    }
    return sendText(req, res, 404, "no such control endpoint\n");
  }

  async function handle(req, res) {
    const started = Date.now();
    let pathname;
    try {
      pathname = new URL(req.url, `http://${HOST}`).pathname;
    } catch {
      return sendText(req, res, 400, "bad request\n");
    }
    if (req.method === "OPTIONS") {
      // CORS preflight: allow what is asked (Range, in practice). Logged, never faulted.
      state.log.push({
        i: ++state.seq,
        t: Date.now() - t0,
        method: "OPTIONS",
        path: pathname,
        range: null,
        status: 204,
        bytes: 0,
        size: null,
        faults: [],
        aborted: false,
        ms: 0,
      });
      res.writeHead(204, {
        ...corsHeaders(req),
        "Access-Control-Allow-Methods": "GET, HEAD, POST, OPTIONS",
        "Access-Control-Allow-Headers": req.headers["access-control-request-headers"] || "Range",
        "Access-Control-Max-Age": "600",
        "Content-Length": 0,
      });
      return res.end();
    }
    if (pathname.startsWith("/__")) return handleControl(req, res, pathname);

    const entry = {
      i: ++state.seq,
      t: Date.now() - t0,
      method: req.method,
      path: pathname,
      range: req.headers.range ?? null,
      status: 0,
      bytes: 0,
      size: null,
      faults: [],
      aborted: false,
      ms: 0,
    };
    state.log.push(entry);
    let finished = false;
    res.on("close", () => {
      if (!finished) entry.aborted = true;
      entry.ms = Date.now() - started;
    });
    const done = (status, bytes = 0) => {
      entry.status = status;
      entry.bytes = bytes;
      finished = true;
    };

    if (req.method !== "GET" && req.method !== "HEAD") {
      return done(405, sendText(req, res, 405, "method not allowed\n", { Allow: "GET, HEAD, OPTIONS" }));
    }
    const file = resolvePath(pathname);
    let st = null;
    if (file) {
      try {
        st = await stat(file);
      } catch {
        st = null;
      }
    }

    // Faults of this request (GETs are counted per path).
    let n = 0;
    if (req.method === "GET") {
      n = (state.counters.get(pathname) ?? 0) + 1;
      state.counters.set(pathname, n);
    }
    const active = req.method === "GET" ? state.faults.filter((f) => pathMatches(f.path, pathname) && occurrenceMatches(f.on, n)) : [];
    const fault = (type) => active.find((f) => f.type === type);

    const delay = fault("delay");
    if (delay) {
      entry.faults.push("delay");
      await sleep(delay.ms ?? 1000);
    }
    const status = fault("status");
    if (status) {
      entry.faults.push(`status ${status.code ?? 500}`);
      const code = status.code ?? 500;
      return done(code, sendText(req, res, code, `${code} injected by faultserver\n`));
    }
    if (!st || !st.isFile()) return done(404, sendText(req, res, 404, "not found\n"));

    const size = st.size;
    entry.size = size;
    let range = parseRange(req.headers.range, size);
    if (range === "unsatisfiable") {
      return done(416, sendText(req, res, 416, "range not satisfiable\n", { "Content-Range": `bytes */${size}` }));
    }
    if (range && fault("ignore-range")) {
      entry.faults.push("ignore-range");
      range = null;
    }
    const start = range ? range.start : 0;
    const end = range ? range.end : size;
    const bodyLen = end - start;

    const truncate = fault("truncate");
    const drop = fault("drop");
    const flip = fault("flip");
    const slow = fault("slow");
    let limit = bodyLen; // bytes to send before the fault ends the response
    let cut = null; // "fin" | "destroy"
    if (truncate) {
      limit = Math.min(limit, truncate.after ?? Math.floor(bodyLen / 2));
      cut = "fin";
      entry.faults.push(`truncate@${limit}${truncate.honest ? " honest" : ""}`);
    }
    if (drop) {
      const at = Math.min(bodyLen, drop.after ?? Math.floor(bodyLen / 2));
      if (at <= limit) {
        limit = at;
        cut = "destroy";
      }
      entry.faults.push(`drop@${at}`);
    }
    const flipAt = flip ? (flip.offset ?? Math.floor(size / 2)) : -1;
    if (flip && flipAt >= start && flipAt < start + limit) entry.faults.push(`flip@${flipAt}`);
    const endless = fault("endless");
    if (endless) entry.faults.push("endless");
    const rate = slow ? Math.max(1, slow.rate ?? 65536) : 0;
    if (slow) entry.faults.push(`slow ${rate} B/s`);

    const headers = {
      ...corsHeaders(req),
      "Content-Type": "application/octet-stream",
      "Accept-Ranges": "bytes",
      "Cache-Control": "no-store",
      "Last-Modified": st.mtime.toUTCString(),
      "Content-Length": truncate?.honest ? limit : bodyLen,
    };
    if (endless) delete headers["Content-Length"];
    if (range) headers["Content-Range"] = `bytes ${start}-${end - 1}/${size}`;
    const code = range ? 206 : 200;
    entry.status = code;
    res.writeHead(code, headers);
    if (req.method === "HEAD") {
      res.end();
      return done(code, 0);
    }

    const fh = await open(file, "r");
    let sent = 0;
    // "aborted": the connection closed before the whole body was flushed.
    const slowStart = Date.now();
    try {
      while (sent < limit) {
        if (res.destroyed) break;
        const want = Math.min(rate ? Math.max(1, Math.min(CHUNK, Math.floor(rate / 20))) : CHUNK, limit - sent);
        const buf = Buffer.alloc(want);
        const { bytesRead } = await fh.read(buf, 0, want, start + sent);
        if (bytesRead === 0) break; // the file shrank underneath us
        const chunk = buf.subarray(0, bytesRead);
        if (flipAt >= start + sent && flipAt < start + sent + bytesRead) chunk[flipAt - start - sent] ^= flip.xor ?? 0xff;
        if (!(await write(res, chunk))) {
          entry.bytes = sent;
          return; // the client went away ("aborted" is set by the close handler)
        }
        sent += bytesRead;
        entry.bytes = sent;
        if (sent >= limit) finished = true;
        if (rate) {
          const due = slowStart + (sent / rate) * 1000;
          const wait = due - Date.now();
          if (wait > 0) await sleep(wait);
        }
      }
      if (endless && cut === null) {
        // A body with no end: zeros, for as long as the client reads them.
        const zeros = Buffer.alloc(CHUNK);
        const max = endless.max ?? 16 * 2 ** 30;
        while (sent < max && !res.destroyed) {
          if (!(await write(res, zeros))) {
            entry.bytes = sent;
            return;
          }
          sent += zeros.length;
          entry.bytes = sent;
        }
      }
    } finally {
      await fh.close();
    }
    if (cut === "destroy") {
      done(code, sent);
      res.destroy();
      entry.aborted = true;
    } else if (cut === "fin" && !truncate.honest) {
      // End the TCP stream after the short body while Content-Length announced more.
      done(code, sent);
      res.socket?.end();
      entry.aborted = true;
    } else {
      res.end();
      done(code, sent);
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      console.error("faultserver: error:", err);
      if (!res.headersSent) sendText(req, res, 500, "internal error\n");
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5000;
  return new Promise((resolvePromise, reject) => {
    server.once("error", reject);
    server.listen(port, HOST, () => {
      server.off("error", reject);
      resolvePromise({ server, url: `http://${HOST}:${server.address().port}/`, state });
    });
  });
}

const isMain = process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const args = process.argv.slice(2);
  let dir = null;
  let port = 0;
  let plan = [];
  let exitWithStdin = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--port") port = Number(args[++i]);
    else if (a === "--plan") {
      try {
        plan = JSON.parse(args[++i]);
      } catch (err) {
        fail(`--plan is not JSON: ${err.message}`);
      }
    } else if (a === "--plan-file") {
      try {
        plan = JSON.parse(await readFile(args[++i], "utf8"));
      } catch (err) {
        fail(`--plan-file: ${err.message}`);
      }
    } else if (a === "--exit-with-stdin") exitWithStdin = true;
    else if (a === "-h" || a === "--help") {
      console.log("usage: node faultserver.mjs DIR [--port N] [--plan JSON | --plan-file FILE] [--exit-with-stdin]");
      process.exit(0);
    } else if (!dir) dir = a;
    else fail(`unexpected argument ${JSON.stringify(a)}`);
  }
  if (!dir) fail("give the directory to serve");
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`invalid port ${port}`);
  try {
    const st = await stat(dir);
    if (!st.isDirectory()) fail(`${dir} is not a directory`);
  } catch (err) {
    fail(`${dir}: ${err.message}`);
  }
  let faults;
  try {
    faults = parsePlan(plan);
  } catch (err) {
    fail(`bad plan: ${err.message}`);
  }
  const { server, url } = await startFaultServer(dir, { port, faults });
  console.log(`faultserver: serving ${url}`);
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  if (exitWithStdin) {
    process.stdin.on("end", stop);
    process.stdin.on("error", stop);
    process.stdin.resume();
  }
}
