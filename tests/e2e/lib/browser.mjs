// Shared helpers of the app's e2e tests: the static server (www/serve.mjs), headless Chromium
// with WebGPU on SwiftShader (flags from /work/shared/notes/toolchain.md), a network log,
// waiting on the page's published state (window.dreamdist), and screenshots.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

export const ROOT = resolve(fileURLToPath(new URL("../../..", import.meta.url)));
export const OUT = resolve(ROOT, process.env.E2E_OUT || "target/e2e");
export const BIN = process.env.DREAMDIST_BIN || join(homedir(), ".cache/dreamdist/target/release/dreamdist");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const BASE_FLAGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
export const WEBGPU_FLAGS = [...BASE_FLAGS, "--enable-unsafe-webgpu"];
export const NO_WEBGPU_FLAGS = BASE_FLAGS;

export const log = (...args) => console.log("[e2e]", ...args);

/** Checks what every app test needs, with a clear message. */
export function requireBuilt() {
  for (const f of ["pkg/dreamdist.js", "pkg/dreamdist_bg.wasm"]) {
    assert.ok(existsSync(join(ROOT, f)), `${f} is missing: build the web app with scripts/build-web.sh`);
  }
  assert.ok(existsSync(BIN), `native CLI not found at ${BIN}: build it with cargo build --release (or set DREAMDIST_BIN)`);
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (scripts/setup.sh installs it; or set CHROMIUM)`);
}

/** Starts `node www/serve.mjs 0`; resolves with {child, url, stop()}. */
export function startServer() {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [join(ROOT, "www/serve.mjs"), "0"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${out}`)), 15000);
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d) => process.stderr.write(`[server] ${d}`));
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/dreamdist: serving (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (m) {
        clearTimeout(timer);
        resolvePromise({ child, url: m[1], stop: () => child.exitCode === null && child.kill("SIGTERM") });
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${out}`));
    });
  });
}

/**
 * Launches Chromium with a profile directory (fresh unless `profile` is given). Returns
 * {context, page, problems, requests, profile}: console errors and page errors in `problems`,
 * every request (page and workers) in `requests` as {url, method, type, postBytes, at}.
 */
export async function launch(name, { webgpu = true, profile = null, tmpRoot = tmpdir(), viewport = { width: 1280, height: 1000 } } = {}) {
  const dir = profile ?? (await mkdtemp(join(tmpRoot, `${name}-profile-`)));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: webgpu ? WEBGPU_FLAGS : NO_WEBGPU_FLAGS,
    viewport,
    acceptDownloads: true,
    timeout: 120000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  const requests = [];
  page.on("console", (msg) => {
    const type = msg.type();
    if (type !== "error" && type !== "warning") return;
    const text = `[console ${type}] ${msg.text()}`;
    console.error(text);
    if (type === "error") problems.push(text);
  });
  page.on("pageerror", (err) => {
    const text = `[browser page error] ${err.stack || err.message}`;
    console.error(text);
    problems.push(text);
  });
  page.on("crash", () => problems.push("[browser] page crashed"));
  const record = (req) =>
    requests.push({ url: req.url(), method: req.method(), type: req.resourceType(), postBytes: req.postDataBuffer()?.length ?? 0, at: Date.now() });
  context.on("request", record);
  page.on("worker", (w) => log(`worker started: ${w.url()}`));
  return { context, page, problems, requests, profile: dir };
}

/**
 * Polls `probe(window.dreamdist)` (a function evaluated in the page) until it returns a truthy
 * value, which is returned. Fails early on uncaught page errors.
 */
export async function until(page, problems, probe, { timeout = 300000, what = "the page", every = 250, arg } = {}) {
  const deadline = Date.now() + timeout;
  let lastLog = 0;
  let last = "";
  for (;;) {
    const r = await page.evaluate(probe, arg).catch((e) => ({ __evalError: String(e) }));
    if (r && !r.__evalError) return r;
    const pageErrors = problems.filter((p) => p.startsWith("[browser page error]") || p.includes("crashed"));
    if (pageErrors.length) assert.fail(`the page failed while waiting for ${what}:\n${pageErrors.join("\n")}`);
    const st = await page.evaluate(() => {
      const d = window.dreamdist;
      return d ? `${d.status} | model ${d.model?.status} | train ${d.train?.state} ${d.train?.step}/${d.train?.steps} | job ${JSON.stringify(d.job)} | ${d.message}` : "no window.dreamdist";
    }).catch(() => "(page not reachable)");
    if (st !== last || Date.now() - lastLog > 30000) {
      log(`waiting for ${what} — ${st}`);
      last = st;
      lastLog = Date.now();
    }
    if (Date.now() > deadline) assert.fail(`timed out after ${timeout / 1000} s waiting for ${what}; last: ${st}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Screenshot into $E2E_OUT/app/<name>.png; returns the path. */
export async function shot(page, name) {
  const dir = join(OUT, "app");
  await mkdir(dir, { recursive: true });
  const path = join(dir, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  log(`screenshot: ${path}`);
  return path;
}

/** Page errors (uncaught exceptions) so far. */
export function pageErrors(problems) {
  return problems.filter((p) => p.startsWith("[browser page error]"));
}

/** Requests that are not GET of a static file from `origin` (privacy check). */
export function foreignRequests(requests, origin) {
  return requests.filter((r) => {
    if (r.url.startsWith("blob:") || r.url.startsWith("data:")) return false;
    let u;
    try {
      u = new URL(r.url);
    } catch {
      return true;
    }
    return u.origin !== origin || !["GET", "HEAD"].includes(r.method) || r.postBytes > 0;
  });
}
