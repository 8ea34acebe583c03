// End-to-end test of the browser's weight loader (run with `node --test` in tests/e2e).
//
// A converted model (the tiny fixtures, q8, made with `$DREAMDIST_BIN convert`) is served by the
// fault server (tests/e2e/faultserver.mjs, in this process) on its own origin; the test page
// (tests/e2e/pages/loader.html, served by www/serve.mjs from the repository root, cross-origin
// isolated) runs a dreamdist Engine in a module worker, in headless Chromium with WebGPU.
//
// 1. A load through a dropped connection, a server ignoring Range, a 500, a flipped byte, a
//    truncated body and a slow link ends verified; the report, the fault server's log and the
//    browser's network log agree on what happened.
// 2. A second page load (new page, same profile) makes zero shard requests: asserted from the
//    browser's network log (playwright `request` events, which include the worker's fetches)
//    and from the server's log.
// 3. cacheInfo() lists the shards; cacheClear() empties the cache; the next load fetches again.
// 4. A cached shard corrupted in OPFS (a flipped byte, a truncated file) is deleted and fetched
//    again.
// 5. Storage quota exceeded (quota lowered with the DevTools protocol's
//    Storage.overrideQuotaForOrigin): the load fails with the message that gives the numbers.
// 6. A shard whose body never ends is read no further than the shard (+1 byte), and blamed.
// Artifacts in $E2E_OUT (default <repo>/target/e2e): loader.json (reports, server and browser
// logs), loader-faults.png, loader-cache.png.
//
// Environment: DREAMDIST_BIN (default ~/.cache/dreamdist/target/release/dreamdist), CHROMIUM
// (default /usr/bin/chromium), E2E_OUT, E2E_TIMEOUT_S (per step, default 600).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { chromium } from "playwright-core";

import { startFaultServer } from "./faultserver.mjs";
import { startServer } from "./lib/browser.mjs";

const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const OUT = resolve(ROOT, process.env.E2E_OUT || "target/e2e");
const BIN = process.env.DREAMDIST_BIN || join(homedir(), ".cache/dreamdist/target/release/dreamdist");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_MS = Number(process.env.E2E_TIMEOUT_S || 600) * 1000;

// Flags from /work/shared/notes/toolchain.md (playwright adds --headless and the profile).
const FLAGS = [
  "--no-sandbox",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--enable-unsafe-webgpu",
];

const log = (...args) => console.log("[loader-e2e]", ...args);

let tmpRoot = null;
let pageServer = null; // child process: www/serve.mjs
let pageUrl = null; // http://127.0.0.1:P/tests/e2e/pages/loader.html
let fault = null; // {server, url, state}
let manifest = null;
let modelUrl = null; // the fault server's root (the model directory)
let context = null; // one browser profile for every step
let cachedPage = null; // the page of steps 2–5
const artifact = { steps: {} };

// The fault server's control endpoints (over HTTP, as any client would use them).
async function control(path, body) {
  const r = await fetch(`${modelUrl}${path}`, body === undefined ? {} : { method: "POST", body: JSON.stringify(body) });
  assert.equal(r.status, 200, `${path}: HTTP ${r.status}`);
  return r.json();
}
const setFaults = (faults) => control("__faults", { faults });
const resetLog = () => control("__reset", {});
const serverLog = () => control("__log");

const shardGets = (entries) => entries.filter((e) => e.method === "GET" && e.path.endsWith(".bin"));
const getsOf = (entries, file) => entries.filter((e) => e.method === "GET" && e.path === `/${file}`);
const rangeStart = (e) => {
  const m = /^bytes=(\d+)-$/.exec(e.range ?? "");
  return m ? Number(m[1]) : null;
};

/** Opens a page of the shared profile, recording the browser's network log and problems. */
async function openPage() {
  const page = await context.newPage();
  const net = [];
  const problems = [];
  page.on("request", (r) => net.push({ url: r.url(), method: r.method(), range: r.headers().range ?? null, status: null, failure: null }));
  page.on("response", (r) => {
    const e = net.findLast((x) => x.url === r.url() && x.status === null);
    if (e) e.status = r.status();
  });
  page.on("requestfailed", (r) => {
    const e = net.findLast((x) => x.url === r.url() && x.failure === null);
    if (e) e.failure = r.failure()?.errorText ?? "failed";
  });
  let printed = 0;
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      const text = `[browser ${msg.worker() ? "worker" : "page"} error] ${msg.text()}`;
      problems.push(text);
      // The first few in full; the rest are counted (a poisoned GPU device repeats itself).
      if (printed++ < 3) console.error(text.slice(0, 2000));
      else if (printed === 4) console.error("[browser] more console errors follow; counted in loader.json");
    }
  });
  page.on("pageerror", (err) => {
    problems.push(`[page error] ${err.message}`);
    console.error(`[page error] ${err.stack || err.message}`);
  });
  page.on("crash", () => problems.push("[browser] page crashed"));
  await page.goto(pageUrl, { waitUntil: "load" });
  await page.waitForFunction(() => window.loaderTest, null, { timeout: 60000 });
  const t0 = Date.now();
  const created = await call(page, "create");
  const a = created.adapter ?? {};
  log(`engine ${created.version} created in ${Date.now() - t0} ms (${a.graphicsApi} ${a.deviceType}, shaderF16 ${a.shaderF16})`);
  artifact.consoleErrors ??= [];
  artifact.consoleErrors.push(problems);
  return { page, net, problems };
}

/** A worker command through the page. */
function call(page, cmd, ...args) {
  return page.evaluate(([c, a]) => window.loaderTest.call(c, ...a), [cmd, args]);
}

/** Browser-side GETs of shards from the fault server's origin, since index `from`. */
function netShardGets(net, from = 0) {
  return net.slice(from).filter((e) => e.url.startsWith(modelUrl) && e.method === "GET" && e.url.endsWith(".bin"));
}

/** Uncaught errors the worker reported so far (not the loader's: see the report). */
async function workerErrors(page, what) {
  const errors = await page.evaluate(() => window.loaderTest.workerErrors.slice());
  if (errors.length) {
    log(`${what}: ${errors.length} uncaught error(s) in the worker so far, first: ${errors[0].slice(0, 300)}`);
    (artifact.workerErrors ??= []).push({ what, errors });
  }
  return errors;
}

async function load(page, what) {
  const r = await call(page, "load", modelUrl);
  await workerErrors(page, what);
  if (r.ok) {
    const rep = r.info.report;
    log(`${what}: ${r.ms.toFixed(0)} ms, report ${JSON.stringify({ ...rep, events: rep.events.slice(0, 10) })}`);
  } else {
    log(`${what}: failed after ${r.ms.toFixed(0)} ms: ${r.error}`);
  }
  return r;
}

function show(page, title, ok, rows) {
  return page.evaluate(([t, o, r]) => window.loaderTest.show(t, o, r), [title, ok, rows]);
}

// Names in the page's OPFS shard cache (verified `<sha>.bin`; `<sha>.part` only while a shard
// streams in).
function opfsNames(page) {
  return page.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    const dir = await (await root.getDirectoryHandle("dreamdist")).getDirectoryHandle("weights");
    const names = [];
    for await (const name of dir.keys()) names.push(name);
    return names.sort();
  });
}

function checkProgress(r) {
  const p = r.progress;
  assert.ok(p.count > 0, "progress events");
  assert.equal(p.overTotal, 0, "done_bytes never exceeds total_bytes");
  assert.equal(p.last.phase, "done");
  assert.equal(p.last.done_bytes, manifest.total_bytes);
}

before(async () => {
  await mkdir(OUT, { recursive: true });
  tmpRoot = await mkdtemp(join(tmpdir(), "dreamdist-loader-e2e-"));
  for (const f of ["pkg/dreamdist.js", "pkg/dreamdist_bg.wasm"]) {
    assert.ok(existsSync(join(ROOT, f)), `${f} is missing: build the web app with scripts/build-web.sh`);
  }
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}`);
  assert.ok(existsSync(BIN), `native CLI not found at ${BIN} (cargo build --release, or set DREAMDIST_BIN)`);
  const modelDir = join(tmpRoot, "model");
  await promisify(execFile)(BIN, ["convert", "--from", join(ROOT, "tests/fixtures/tiny"), "--model", "tiny", "--quant", "q8", "--out", modelDir], {
    timeout: 120000,
  });
  manifest = JSON.parse(await readFile(join(modelDir, "manifest.json"), "utf8"));
  assert.ok(manifest.shards.length >= 3, "the tiny model has a shard per component");
  log(`model: ${manifest.total_bytes} bytes in ${manifest.shards.map((s) => `${s.file} (${s.bytes})`).join(", ")}`);
  fault = await startFaultServer(modelDir, { faults: [] });
  modelUrl = fault.url;
  const served = await startServer();
  pageServer = served.child;
  pageUrl = `${served.url}tests/e2e/pages/loader.html`;
  log(`page ${pageUrl}, model ${modelUrl}`);
  context = await chromium.launchPersistentContext(await mkdtemp(join(tmpRoot, "profile-")), {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1100, height: 900 },
    timeout: 120000,
  });
});

after(async () => {
  await writeFile(join(OUT, "loader.json"), JSON.stringify(artifact, null, 2)).catch(() => {});
  if (context) await context.close().catch(() => {});
  if (fault) {
    fault.server.closeAllConnections();
    fault.server.close();
  }
  if (pageServer && pageServer.exitCode === null) pageServer.kill("SIGTERM");
  if (tmpRoot) await rm(tmpRoot, { recursive: true, force: true });
});

test("a load through drop, ignored Range, 500, flipped byte, truncation and a slow link ends verified", { timeout: STEP_MS }, async () => {
  const [te, unet, vae] = manifest.shards;
  // The bodies cut short trickle in first (slow): when a fetch body errors, the stream discards
  // the chunks that JS has not read yet, so on localhost a fast body that drops would reach the
  // loader as nothing at all (and the "resume" would start at 0).
  await setFaults([
    { path: `/${te.file}`, type: "slow", rate: te.bytes, on: [1] },
    { path: `/${te.file}`, type: "drop", on: [1] }, // half-way, after ~0.5 s
    { path: `/${te.file}`, type: "ignore-range", on: [2] },
    { path: `/${unet.file}`, type: "status", code: 500, on: [1] },
    { path: `/${unet.file}`, type: "flip", on: [2] },
    { path: `/${vae.file}`, type: "slow", rate: Math.round(vae.bytes / 1.5), on: [1, 2] }, // ~1.5 s in all
    { path: `/${vae.file}`, type: "truncate", after: Math.floor(vae.bytes / 3), on: [1] },
  ]);
  await resetLog();
  const { page, net, problems } = await openPage();
  try {
    assert.equal((await call(page, "cacheInfo")).shards.length, 0, "a fresh profile has an empty cache");
    const r = await load(page, "faults");
    const slog = await serverLog();
    artifact.steps.faults = { result: r, serverLog: slog, browserNet: net };
    await show(page, "load through faults", r.ok, r.ok ? { ...r.info.report, loadModelMs: r.ms.toFixed(0) } : { error: r.error });
    await page.screenshot({ path: join(OUT, "loader-faults.png"), fullPage: true });
    assert.ok(r.ok, `the load failed: ${r.error}`);
    const rep = r.info.report;
    const n = manifest.shards.length;
    assert.equal(r.info.identity, manifest.identity.text_encoder, "the loaded model is the converted one");
    assert.equal(r.info.id, "tiny");
    assert.deepEqual(
      { shards: rep.shards, downloaded: rep.downloaded, from_cache: rep.from_cache, cache_corrupt: rep.cache_corrupt },
      { shards: n, downloaded: n, from_cache: 0, cache_corrupt: 0 },
    );
    assert.equal(rep.resumed, 2, "text_encoder after the drop, vae after the truncation");
    assert.equal(rep.retries, 3, "the drop, the 500 and the truncation");
    assert.equal(rep.corrupt, 1, "the flipped byte");
    assert.equal(rep.requests, n + 4);
    assert.equal(rep.fetchRequests, rep.requests);
    assert.equal(rep.bytes_downloaded, manifest.total_bytes + unet.bytes, "resumes fetch nothing twice; the corrupt unet came twice");
    assert.ok(rep.events.some((e) => e.includes(unet.file) && e.includes("HTTP 500")), JSON.stringify(rep.events));
    assert.ok(rep.events.some((e) => e.includes(unet.file) && e.includes("SHA-256 mismatch")), JSON.stringify(rep.events));
    assert.ok(r.info.report.ms >= 1500, `the slow parts took ${r.info.report.ms} ms`);
    checkProgress(r);
    assert.ok(r.progress.backwards >= 1, "progress went back when the corrupt download was discarded");

    // The fault server's log.
    const t = getsOf(slog, te.file);
    assert.equal(t.length, 2, JSON.stringify(t));
    assert.ok(t[0].aborted && t[0].faults.some((f) => f.startsWith("drop@")));
    const from = rangeStart(t[1]);
    assert.ok(from > 0 && from <= t[0].bytes, `text_encoder resumed at ${from} after ${t[0].bytes} bytes`);
    assert.equal(t[1].status, 200, "the resume was answered with the whole file (Range ignored)");
    const u = getsOf(slog, unet.file);
    assert.deepEqual(u.map((e) => e.status), [500, 200, 200]);
    assert.ok(u.every((e) => e.range === null), "a rejected download starts over without Range");
    const v = getsOf(slog, vae.file);
    assert.equal(v.length, 2);
    assert.ok(rangeStart(v[1]) > 0 && rangeStart(v[1]) <= Math.floor(vae.bytes / 3));
    assert.equal(v[1].status, 206);
    assert.ok(v[1].ms >= 700, `the slow resume took ${v[1].ms} ms`);

    // The browser's network log agrees: the same shard GETs, and the failed ones.
    const b = netShardGets(net);
    assert.equal(b.length, rep.requests, JSON.stringify(b, null, 1));
    assert.equal(shardGets(slog).length, rep.requests);
    const failed = b.filter((e) => e.failure);
    log(`browser: ${b.length} shard requests, failed: ${failed.map((e) => `${e.url.split("/").pop()} ${e.failure}`).join(", ")}`);
    assert.ok(failed.length >= 2, "the dropped and the truncated responses fail in the browser");
    assert.ok(b.some((e) => e.range && e.url.endsWith(te.file)), "the browser sent Range for the resume");

    // Cached: every shard, verified sizes.
    const info = await call(page, "cacheInfo");
    assert.deepEqual(
      info.shards.map((s) => [s.sha256, s.bytes]).sort(),
      manifest.shards.map((s) => [s.sha256, s.bytes]).sort(),
    );
    // Shards stream into `.part` files and are renamed once verified: none is left behind, not
    // even by the discarded (flipped) download.
    assert.deepEqual((await opfsNames(page)).filter((n) => !n.startsWith("manifest-")), manifest.shards.map((s) => `${s.sha256}.bin`).sort());
    assert.deepEqual(problems.filter((p) => p.startsWith("[page error]") || p.includes("crashed")), []);
  } finally {
    await page.close();
  }
});

test("a second page load makes zero shard requests (browser network log)", { timeout: STEP_MS }, async () => {
  await setFaults([]);
  await resetLog();
  cachedPage = await openPage();
  const { page, net } = cachedPage;
  const r = await load(page, "second page load");
  const slog = await serverLog();
  artifact.steps.secondLoad = { result: r, serverLog: slog, browserNet: net };
  await show(page, "second page load (cache)", r.ok, r.ok ? { ...r.info.report, loadModelMs: r.ms.toFixed(0) } : { error: r.error });
  assert.ok(r.ok, r.error);
  const rep = r.info.report;
  const n = manifest.shards.length;
  assert.deepEqual(
    { from_cache: rep.from_cache, downloaded: rep.downloaded, requests: rep.requests, fetchRequests: rep.fetchRequests, bytes: rep.bytes_downloaded },
    { from_cache: n, downloaded: 0, requests: 0, fetchRequests: 0, bytes: 0 },
  );
  checkProgress(r);
  const weightRequests = net.filter((e) => e.url.endsWith(".bin"));
  assert.deepEqual(weightRequests, [], "the browser made weight requests on the cached load");
  assert.equal(shardGets(slog).length, 0, JSON.stringify(slog));
  log(`second load: browser requests to the model server: ${net.filter((e) => e.url.startsWith(modelUrl)).map((e) => e.url.slice(modelUrl.length)).join(", ")}`);
});

test("cacheInfo lists the shards, cacheClear empties the cache and the next load fetches again", { timeout: STEP_MS }, async () => {
  assert.ok(cachedPage, "needs the page of the previous step");
  const { page, net } = cachedPage;
  const info = await call(page, "cacheInfo");
  log(`cacheInfo: ${info.shards.length} shards, ${info.bytes} bytes, usage ${info.usage}, quota ${info.quota}`);
  assert.deepEqual(info.shards.map((s) => s.sha256).sort(), manifest.shards.map((s) => s.sha256).sort());
  assert.equal(info.bytes, manifest.total_bytes);
  assert.ok(info.usage >= manifest.total_bytes, `storage usage ${info.usage}`);
  // Per model: the stored manifest names this model, whole.
  assert.deepEqual(
    info.models.map(({ model, quant, bytes, totalBytes, complete }) => ({ model, quant, bytes, totalBytes, complete })),
    [{ model: "tiny", quant: "q8", bytes: manifest.total_bytes, totalBytes: manifest.total_bytes, complete: true }],
  );
  assert.deepEqual([info.partial, info.partialBytes], [[], 0]);
  // An unfinished download (as a closed tab leaves one) is listed, and cleared with the rest.
  const stale = "ab".repeat(32);
  await page.evaluate(async (name) => {
    const root = await navigator.storage.getDirectory();
    const dir = await (await root.getDirectoryHandle("dreamdist")).getDirectoryHandle("weights");
    const w = await (await dir.getFileHandle(name, { create: true })).createWritable();
    await w.write(new Uint8Array(1000));
    await w.close();
  }, `${stale}.part`);
  const withPart = await call(page, "cacheInfo");
  assert.deepEqual([withPart.partial, withPart.partialBytes, withPart.bytes], [[{ sha256: stale, bytes: 1000 }], 1000, manifest.total_bytes]);
  const removed = await call(page, "cacheClear");
  assert.ok(removed >= manifest.shards.length + 1, `cacheClear removed ${removed} entries`);
  const empty = await call(page, "cacheInfo");
  assert.deepEqual([empty.shards, empty.bytes, empty.partial, empty.partialBytes], [[], 0, [], 0]);
  assert.deepEqual(empty.models, [], "the stored manifests are cleared too");
  await resetLog();
  const mark = net.length;
  const r = await load(page, "after cacheClear");
  artifact.steps.afterClear = { removed, before: info, after: empty, result: r, serverLog: await serverLog() };
  await show(page, "cacheInfo / cacheClear / reload", r.ok, { listed: info.shards.length, removed, afterClear: empty.shards.length, reload: r.ok ? r.info.report : r.error });
  assert.ok(r.ok, r.error);
  const n = manifest.shards.length;
  assert.deepEqual([r.info.report.downloaded, r.info.report.requests, r.info.report.from_cache], [n, n, 0]);
  assert.equal(netShardGets(net, mark).length, n);
  assert.equal(shardGets(artifact.steps.afterClear.serverLog).length, n);
  assert.equal((await call(page, "cacheInfo")).shards.length, n);
});

test("a corrupt or truncated shard in the OPFS cache is deleted and fetched again", { timeout: STEP_MS }, async () => {
  assert.ok(cachedPage, "needs the page of the previous step");
  const { page, net } = cachedPage;
  const [te, unet] = manifest.shards;
  // Damage the cache from the page (main thread, async OPFS API): flip a byte of one shard,
  // cut the end off another.
  const damaged = await page.evaluate(
    async ([flipSha, cutSha]) => {
      const root = await navigator.storage.getDirectory();
      const dir = await (await root.getDirectoryHandle("dreamdist")).getDirectoryHandle("weights");
      const edit = async (sha, f) => {
        const h = await dir.getFileHandle(`${sha}.bin`);
        const bytes = new Uint8Array(await (await h.getFile()).arrayBuffer());
        const out = f(bytes);
        const w = await h.createWritable();
        await w.write(out);
        await w.close();
        return [bytes.length, out.length];
      };
      return {
        flipped: await edit(flipSha, (b) => {
          b[b.length >> 1] ^= 0x20;
          return b;
        }),
        cut: await edit(cutSha, (b) => b.subarray(0, b.length - 11)),
      };
    },
    [unet.sha256, te.sha256],
  );
  log(`damaged the cache: ${JSON.stringify(damaged)}`);
  await resetLog();
  const mark = net.length;
  const r = await load(page, "corrupt cache");
  const slog = await serverLog();
  artifact.steps.corruptCache = { damaged, result: r, serverLog: slog };
  await show(page, "corrupt OPFS entries", r.ok, r.ok ? r.info.report : { error: r.error });
  assert.ok(r.ok, r.error);
  const rep = r.info.report;
  assert.deepEqual(
    { cache_corrupt: rep.cache_corrupt, from_cache: rep.from_cache, downloaded: rep.downloaded, requests: rep.requests, corrupt: rep.corrupt },
    { cache_corrupt: 2, from_cache: manifest.shards.length - 2, downloaded: 2, requests: 2, corrupt: 0 },
  );
  for (const s of [te, unet]) {
    assert.ok(rep.events.some((e) => e.includes(s.file) && e.includes("cached copy failed verification")), JSON.stringify(rep.events));
    assert.equal(getsOf(slog, s.file).length, 1);
  }
  assert.equal(netShardGets(net, mark).length, 2);
  const info = await call(page, "cacheInfo");
  assert.deepEqual(
    info.shards.map((s) => [s.sha256, s.bytes]).sort(),
    manifest.shards.map((s) => [s.sha256, s.bytes]).sort(),
    "the damaged entries were replaced by verified shards",
  );
});

test("storage quota exceeded: a clear message with the numbers", { timeout: STEP_MS }, async () => {
  assert.ok(cachedPage, "needs the page of the previous step");
  const { page } = cachedPage;
  await call(page, "cacheClear");
  const origin = new URL(pageUrl).origin;
  const cdp = await context.newCDPSession(page);
  // Room for the first shard and the manifest, not for the second shard.
  const [te, unet] = manifest.shards;
  const quota = te.bytes + Math.floor(unet.bytes / 2);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: quota });
  try {
    // Chromium applies the override to writes at once but sometimes reports the old quota from
    // navigator.storage.estimate() for a while: wait (≤ 10 s) for the estimate to follow.
    let est = await call(page, "estimate");
    for (let i = 0; i < 20 && est?.quota !== quota; i++) {
      await new Promise((r) => setTimeout(r, 500));
      est = await call(page, "estimate");
    }
    log(`quota override ${quota} bytes; navigator.storage.estimate() in the worker: ${JSON.stringify(est)}`);
    const r = await load(page, "quota");
    artifact.steps.quota = { quota, estimate: est, result: r };
    await show(page, "storage quota exceeded", !r.ok, { quota, error: r.error ?? "(loaded!)" });
    await page.screenshot({ path: join(OUT, "loader-cache.png"), fullPage: true });
    assert.ok(!r.ok, "the load must fail when the cache cannot store a shard");
    const names = await opfsNames(page);
    assert.ok(!names.some((n) => n.endsWith(".part")), `the refused shard's partial file is deleted: ${names}`);
    assert.ok(!names.includes(`${unet.sha256}.bin`), "the shard that did not fit is not cached");
    if (est?.quota === quota) {
      // The page knows the quota: it says how full storage is and what the next part needs.
      const m = /storage for this page is full: (\d+) MB used of (\d+) MB allowed, and the next part of the model needs ([\d.]+) MB/.exec(r.error);
      assert.ok(m, `expected the quota message with numbers, got: ${r.error}`);
      assert.equal(Number(m[3]), Number((unet.bytes / 1e6).toFixed(1)), "the size of the shard that did not fit");
      assert.equal(Number(m[2]), Math.round(quota / 1e6), "the quota the browser reported");
    } else {
      // The browser refused the write while estimate() still claims room: the page says so,
      // with the size refused and the numbers the browser reported.
      const m = /the browser refused to store ([\d.]+) MB of model data although it reports (\d+) MB free \((\d+) MB used of (\d+) MB allowed\)/.exec(r.error);
      assert.ok(m, `expected the refused-write message with numbers, got: ${r.error}`);
      assert.equal(Number(m[1]), Number((unet.bytes / 1e6).toFixed(1)), "the size of the shard that did not fit");
      assert.ok(Math.abs(Number(m[4]) - Number(m[2]) - Number(m[3])) <= 1, `free + used = allowed: ${m[0]}`);
    }
  } finally {
    await cdp.send("Storage.overrideQuotaForOrigin", { origin }).catch(() => {});
    await call(page, "cacheClear").catch(() => {});
    await cdp.detach().catch(() => {});
  }
});

test("a server whose body never ends is read no further than the shard, and blamed", { timeout: STEP_MS }, async () => {
  assert.ok(cachedPage, "needs the page of the earlier steps");
  const { page } = cachedPage;
  await call(page, "cacheClear");
  const [te] = manifest.shards;
  await setFaults([{ path: `/${te.file}`, type: "endless", on: "all" }]);
  await resetLog();
  try {
    const t0 = Date.now();
    const r = await load(page, "endless body");
    const slog = getsOf(await serverLog(), te.file);
    artifact.steps.endless = { result: r, serverLog: slog };
    assert.ok(!r.ok, "a shard with an endless body must not load");
    assert.match(r.error, new RegExp(`${te.file}.*the server sent more than the manifest's ${te.bytes} bytes`));
    log(`endless body: refused in ${Date.now() - t0} ms after ${slog.length} requests, server sent ${slog.map((e) => e.bytes).join(", ")} bytes`);
    // Each request abandoned right after the shard's bytes: what the server got into the
    // socket's buffers is all it sent past them.
    for (const e of slog) assert.ok(e.bytes < te.bytes + 64 * 2 ** 20, `the server sent ${e.bytes} bytes for a ${te.bytes}-byte shard`);
    assert.ok(!(await opfsNames(page)).some((x) => x.endsWith(".part")));
  } finally {
    await setFaults([]);
  }
});

test("direct mode: a diffusers repository read in ranges, converted in the page, cached, then reused", { timeout: STEP_MS }, async () => {
  // The tiny fixtures in a diffusers repository's layout, on a server of their own.
  const repo = join(tmpRoot, "diffusers-repo");
  const files = [
    ["text_encoder/model.safetensors", "text_encoder.safetensors"],
    ["unet/diffusion_pytorch_model.safetensors", "unet.safetensors"],
    ["vae/diffusion_pytorch_model.safetensors", "vae.safetensors"],
  ];
  for (const [to, from] of files) {
    await mkdir(join(repo, to, ".."), { recursive: true });
    await copyFile(join(ROOT, "tests/fixtures/tiny", from), join(repo, to));
  }
  const rs = await startFaultServer(repo, { faults: [] });
  const repoGets = async () => (await (await fetch(`${rs.url}__log`)).json()).filter((e) => e.method === "GET");
  const { page, problems } = await openPage();
  try {
    await call(page, "cacheClear");
    const r = await call(page, "loadDirect", rs.url, "tiny", "q8");
    await workerErrors(page, "direct mode");
    await show(page, "direct mode (diffusers repository)", r.ok, r.ok ? r.info.report : { error: r.error });
    assert.ok(r.ok, r.error);
    log(`direct mode: ${r.ms.toFixed(0)} ms, progress ${JSON.stringify(r.progress.phases)}`);
    // The same model as the CLI's conversion of the same files, its shards read from the cache
    // the conversion wrote them to.
    assert.equal(r.info.identity, manifest.identity.text_encoder);
    const rep = r.info.report;
    const n = manifest.shards.length;
    assert.deepEqual([rep.from_cache, rep.downloaded, rep.requests], [n, 0, 0]);
    assert.ok(r.progress.phases.convert > 0, "conversion progress");
    const info = await call(page, "cacheInfo");
    assert.deepEqual(
      info.shards.map((s) => [s.sha256, s.bytes]).sort(),
      manifest.shards.map((s) => [s.sha256, s.bytes]).sort(),
      "the page's conversion wrote byte-identical shards",
    );
    assert.ok(!(await opfsNames(page)).some((x) => x.endsWith(".part")));
    // Read in ranges only: two header reads per file, then one range per tensor.
    const gets = await repoGets();
    log(`direct mode: ${gets.length} range requests to the repository for ${manifest.tensors.length} tensors`);
    assert.ok(gets.every((e) => e.range && e.status === 206), JSON.stringify(gets.filter((e) => !e.range || e.status !== 206)));
    assert.equal(gets.length, 3 * 2 + manifest.tensors.length);
    // Again: the conversion is reused, nothing is asked of the repository.
    await fetch(`${rs.url}__reset`, { method: "POST", body: "{}" });
    const again = await call(page, "loadDirect", rs.url, "tiny", "q8");
    assert.ok(again.ok, again.error);
    assert.equal(again.info.identity, manifest.identity.text_encoder);
    assert.deepEqual((await repoGets()).length, 0, "a second direct load makes no request to the repository");
    assert.deepEqual(problems.filter((p) => p.startsWith("[page error]") || p.includes("crashed")), []);
  } finally {
    await call(page, "cacheClear").catch(() => {});
    await page.close();
    rs.server.closeAllConnections();
    rs.server.close();
  }
});
