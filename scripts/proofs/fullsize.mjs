#!/usr/bin/env node
// Opt-in full-size proof in headless Chromium (WebGPU on SwiftShader): load a converted
// full-size model from the local server with the device clamped to WebGPU's default limits,
// run dreamdist's proof computation at SIZE², and compare with the native CPU backend's run of
// the same function on the same shards (`dreamdist proof`).
//
//   node scripts/proofs/fullsize.mjs MODEL_DIR_UNDER_REPO SIZE NATIVE_JSON OUT_JSON
//
// PROOF_TRAIN="K M S" runs one training step instead (`dreamdist proof --train --k K --m M
// --samples S` is the native reference) and compares its loss and raw gradient ∂L/∂V.
//
// PROOF_PROFILE=DIR uses (and keeps) that browser profile instead of a fresh one, and with a fixed
// PROOF_PORT=N (the same origin) a second run loads the model from its OPFS cache.
//
// PROOF_LOAD_ONLY=1 stops after the model load (timings, GPU residency and peak wasm memory;
// NATIVE_JSON is not read).
//
// MODEL_DIR_UNDER_REPO is a path relative to the repository root (served by www/serve.mjs).
import { spawn } from "node:child_process";
import { readFile, writeFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const { chromium } = await import(join(ROOT, "tests/e2e/node_modules/playwright-core/index.mjs"));
const [model, size, nativePath, outPath] = process.argv.slice(2);
const TIMEOUT_MS = Number(process.env.PROOF_TIMEOUT_S ?? 7200) * 1000;
const LOAD_ONLY = process.env.PROOF_LOAD_ONLY === "1";
const TRAIN = process.env.PROOF_TRAIN ? process.env.PROOF_TRAIN.trim().split(/\s+/).map(Number) : null;

// OPFS belongs to the origin: with PROOF_PROFILE, a fixed PROOF_PORT makes the next run's origin the same.
const server = spawn(process.execPath, [join(ROOT, "www/serve.mjs"), process.env.PROOF_PORT ?? "0"], { cwd: ROOT });
const url = await new Promise((res, rej) => {
  server.stdout.on("data", (d) => {
    const m = String(d).match(/(http:\/\/127\.0\.0\.1:\d+\/)/);
    if (m) res(m[1]);
  });
  server.on("exit", (c) => rej(new Error(`server exited ${c}`)));
});
// PROOF_PROFILE=DIR keeps the browser profile there (a second run then loads from its OPFS cache).
const profile = process.env.PROOF_PROFILE || (await mkdtemp(join(tmpdir(), "dreamdist-proof-")));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--enable-unsafe-webgpu"],
});
const page = await ctx.newPage();
page.on("console", (m) => {
  if (m.type() === "error") console.error("[page]", m.text().slice(0, 400));
});
const t0 = Date.now();
await page.goto(`${url}scripts/proofs/page/index.html?model=/${model.replace(/^\/+/, "")}/&size=${size}&seed=0${LOAD_ONLY ? "&proof=0" : ""}${
  TRAIN ? `&train=1&k=${TRAIN[0]}&m=${TRAIN[1]}&samples=${TRAIN[2]}` : ""}`);
let last = "";
const timer = setInterval(async () => {
  const text = await page.textContent("#log").catch(() => "");
  const lines = text.split("\n");
  const tail = lines[lines.length - 1];
  if (tail !== last) {
    last = tail;
    console.log(`[${((Date.now() - t0) / 1000).toFixed(0)} s] ${tail.slice(0, 200)}`);
  }
}, 5000);
await page.waitForFunction(() => window.proof !== null, null, { timeout: TIMEOUT_MS, polling: 2000 });
clearInterval(timer);
const browser = await page.evaluate(() => window.proof);
await page.screenshot({ path: outPath.replace(/\.json$/, ".png") });
await ctx.close();
server.kill();
// A fresh profile holds the model's OPFS copy (1.45 GB at full size): remove it.
if (!process.env.PROOF_PROFILE) await rm(profile, { recursive: true, force: true });

if (LOAD_ONLY) {
  const { ok, error, timings, wasm_memory_bytes, memory_in_use, model: m } = browser;
  await writeFile(outPath, JSON.stringify({ wall_s: (Date.now() - t0) / 1000, browser }, null, 1));
  console.log(JSON.stringify({ ok, error, timings, wasm_memory_bytes, memory_in_use, residentBytes: m?.residentBytes }, null, 1));
  process.exit(ok ? 0 : 1);
}
const native = JSON.parse(await readFile(nativePath, "utf8"));
const result = { size: Number(size), wall_s: (Date.now() - t0) / 1000, browser, native, comparison: {} };
const compare = (b, n) => {
  const scale = Math.max(...n.samples.map(Math.abs), 1e-30);
  const maxDiff = Math.max(...b.samples.map((x, i) => Math.abs(x - n.samples[i])));
  return {
    finite: b.finite,
    shape: b.shape,
    sample_max_rel: maxDiff / scale,
    sum_abs_rel: Math.abs(b.sum_abs - n.sum_abs) / Math.max(n.sum_abs, 1e-30),
  };
};
if (browser.ok && TRAIN) {
  const b = browser.train;
  result.comparison = {
    v0: compare(b.v0, native.v0),
    gradient: compare(b.gradient, native.gradient),
    loss: b.loss.map((x, i) => ({ browser: x, native: native.loss[i], rel: Math.abs(x - native.loss[i]) / Math.max(Math.abs(native.loss[i]), 1e-30) })),
  };
} else if (browser.ok) {
  for (const part of ["text", "unet", "decode"]) {
    result.comparison[part] = compare(browser.proof[part], native[part]);
  }
}
await writeFile(outPath, JSON.stringify(result, null, 1));
console.log(JSON.stringify({ ok: browser.ok, error: browser.error, comparison: result.comparison, timings: browser.timings }, null, 1));
process.exit(browser.ok ? 0 : 1);
