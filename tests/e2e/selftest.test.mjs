// End-to-end tests of the browser app (run with `node --test` in tests/e2e; scripts/test.sh does).
//
// 1. The page, in headless Chromium with WebGPU on SwiftShader, runs the self-test in its worker;
//    every op of every round must match the native CPU backend
//    (`$DREAMDIST_BIN selftest --backend cpu --json`). Screenshot: $E2E_OUT/selftest.png.
// 2. The same with the page's CPU engine (`?compute=cpu`: burn's CPU backend in WebAssembly), in
//    a Chromium without WebGPU. Screenshot: $E2E_OUT/selftest-cpu-engine.png.
// 3. Without WebGPU (Chromium without --enable-unsafe-webgpu: requestAdapter() returns null) the
//    page must say so clearly and report status "error". Screenshot: $E2E_OUT/no-webgpu.png.
//
// Environment: DREAMDIST_BIN (default ~/.cache/dreamdist/target/release/dreamdist),
// CHROMIUM (default /usr/bin/chromium), E2E_OUT (default <repo>/target/e2e),
// E2E_TIMEOUT_S (page wait, default 900: SwiftShader is slow and round 1 compiles shaders).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { chromium } from "playwright-core";

import { startServer } from "./lib/browser.mjs";

const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const OUT = resolve(ROOT, process.env.E2E_OUT || "target/e2e");
const BIN = process.env.DREAMDIST_BIN || join(homedir(), ".cache/dreamdist/target/release/dreamdist");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const PAGE_TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_S || 900) * 1000;

// Tolerances (independent of www/compare.js on purpose: the test must not trust the page's code).
const SUM_REL = 1e-3;
const SAMPLE_ABS = 1e-4;
const SAMPLE_REL = 1e-3;

// Flags from /work/shared/notes/toolchain.md. playwright adds --headless and --no-sandbox
// itself and takes the fresh profile directory as launchPersistentContext's argument.
const BASE_FLAGS = [
  "--no-sandbox",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const WEBGPU_FLAGS = [...BASE_FLAGS, "--enable-unsafe-webgpu"];

const log = (...args) => console.log("[e2e]", ...args);

let server = null;
let baseUrl = null;
let tmpRoot = null;

/** Launches Chromium with a fresh profile; forwards console errors and page errors. */
async function openPage(name, flags) {
  const profile = await mkdtemp(join(tmpRoot, `${name}-profile-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: flags,
    viewport: { width: 1280, height: 900 },
    timeout: 120000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on("console", (msg) => {
    const type = msg.type();
    if (type !== "error" && type !== "warning") return;
    const where = msg.worker() ? "worker" : "page";
    const text = `[browser ${where} ${type}] ${msg.text()}`;
    console.error(text);
    if (type === "error") problems.push(text);
  });
  page.on("pageerror", (err) => {
    const text = `[browser page error] ${err.stack || err.message}`;
    console.error(text);
    problems.push(text);
  });
  page.on("crash", () => {
    console.error("[browser] page crashed");
    problems.push("[browser] page crashed");
  });
  return { context, page, problems };
}

/** Polls window.dreamdist until `done(state)`; fails early on page errors or a crash. */
async function waitForState(page, problems, done, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  let lastLog = 0;
  for (;;) {
    const state = await page.evaluate(() => {
      const d = window.dreamdist;
      if (!d) return null;
      return { status: d.status, message: d.message, busy: d.busy, error: d.error, hasSelfTest: Boolean(d.selfTest) };
    });
    if (state && done(state)) return state;
    const pageErrors = problems.filter((p) => p.startsWith("[browser page error]") || p.includes("crashed"));
    if (pageErrors.length) assert.fail(`the page failed while waiting for ${what}:\n${pageErrors.join("\n")}`);
    const msg = state ? `${state.status}: ${state.message}` : "window.dreamdist not set yet";
    if (msg !== last || Date.now() - lastLog > 30000) {
      log(`waiting for ${what} — ${msg}`);
      last = msg;
      lastLog = Date.now();
    }
    if (Date.now() > deadline) {
      assert.fail(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last state: ${JSON.stringify(state)}`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

const fmt = (x) => (typeof x === "number" ? x.toPrecision(8) : JSON.stringify(x));

/** Every op of every round of `actual` against the CPU report; returns a list of mismatches. */
function mismatches(actual, expected) {
  const out = [];
  const exp = expected.rounds;
  if (actual.rounds.length !== exp.length) out.push(`rounds: ${actual.rounds.length} ≠ ${exp.length}`);
  actual.rounds.forEach((round, r) => {
    const er = exp[Math.min(r, exp.length - 1)];
    const at = `round ${r + 1}`;
    if (round.ops.length !== er.ops.length) out.push(`${at}: ${round.ops.length} ops ≠ ${er.ops.length}`);
    er.ops.forEach((e, i) => {
      const a = round.ops[i];
      if (!a) return out.push(`${at}: op ${e.name} missing`);
      const where = `${at} ${e.name}`;
      if (a.name !== e.name) out.push(`${at} op ${i}: name ${a.name} ≠ ${e.name}`);
      if (JSON.stringify(a.shape) !== JSON.stringify(e.shape)) out.push(`${where}: shape [${a.shape}] ≠ [${e.shape}]`);
      // Relative 1e-3 of the sum's magnitude, floored at 1e-3·Σ|x| (a sum that cancels to near
      // zero, like group norm's, carries the rounding error of its terms, not of its value).
      const sumScale = Math.max(Math.abs(e.sum), 1e-3 * Math.abs(e.sumAbs));
      if (!(Math.abs(a.sum - e.sum) <= SUM_REL * sumScale)) out.push(`${where}: sum ${fmt(a.sum)} ≠ ${fmt(e.sum)}`);
      if (!(Math.abs(a.sumAbs - e.sumAbs) <= SUM_REL * Math.abs(e.sumAbs))) {
        out.push(`${where}: sumAbs ${fmt(a.sumAbs)} ≠ ${fmt(e.sumAbs)}`);
      }
      if (a.samples.length !== e.samples.length) out.push(`${where}: ${a.samples.length} samples ≠ ${e.samples.length}`);
      e.samples.forEach((ev, k) => {
        const av = a.samples[k];
        if (!(Math.abs(av - ev) <= SAMPLE_ABS + SAMPLE_REL * Math.abs(ev))) {
          out.push(`${where}: sample ${k} ${fmt(av)} ≠ ${fmt(ev)} (|Δ| ${fmt(Math.abs(av - ev))})`);
        }
      });
      if (!(typeof a.ms === "number" && a.ms >= 0)) out.push(`${where}: bad time ${fmt(a.ms)}`);
    });
  });
  return out;
}

before(async () => {
  await mkdir(OUT, { recursive: true });
  tmpRoot = await mkdtemp(join(tmpdir(), "dreamdist-e2e-"));
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (scripts/setup.sh installs it; or set CHROMIUM)`);
  ({ child: server, url: baseUrl } = await startServer());
  log(`server at ${baseUrl}`);
});

after(async () => {
  if (server && server.exitCode === null) server.kill("SIGTERM");
  if (tmpRoot) await rm(tmpRoot, { recursive: true, force: true });
});

/** The page's self-test on `compute` ("webgpu": its GPU engine; "cpu": its WebAssembly CPU
 * engine, in a browser without WebGPU) against the native CPU backend, every op of every round. */
async function selfTestMatchesNative(compute) {
  for (const f of ["pkg/dreamdist.js", "pkg/dreamdist_bg.wasm"]) {
    assert.ok(existsSync(join(ROOT, f)), `${f} is missing: build the web app with scripts/build-web.sh`);
  }
  assert.ok(existsSync(BIN), `native CLI not found at ${BIN}: build it with cargo build --release (or set DREAMDIST_BIN)`);

  let t0 = Date.now();
  const { stdout } = await promisify(execFile)(BIN, ["selftest", "--backend", "cpu", "--json"], {
    maxBuffer: 16 << 20,
    timeout: 600000,
  });
  const expected = JSON.parse(stdout);
  log(`native CPU self-test: ${expected.rounds.length} rounds in ${Date.now() - t0} ms`);
  assert.equal(expected.backend, "cpu");
  assert.ok(expected.rounds.length >= 2, "the native self-test must run at least 2 rounds");
  await writeFile(join(OUT, "selftest-cpu.json"), JSON.stringify(expected, null, 2));

  const gpu = compute === "webgpu";
  const shotPath = join(OUT, gpu ? "selftest.png" : "selftest-cpu-engine.png");
  const { context, page, problems } = await openPage(compute, gpu ? WEBGPU_FLAGS : BASE_FLAGS);
  try {
    t0 = Date.now();
    await page.goto(gpu ? baseUrl : `${baseUrl}?compute=cpu`, { waitUntil: "load" });
    const state = await waitForState(
      page,
      problems,
      (s) => s.status === "error" || (s.status === "ready" && s.hasSelfTest),
      PAGE_TIMEOUT_MS,
      "the self-test",
    );
    log(`page ready after ${Date.now() - t0} ms`);
    const result = await page.evaluate(() => ({
      status: window.dreamdist.status,
      error: window.dreamdist.error,
      adapter: window.dreamdist.adapter,
      selfTest: window.dreamdist.selfTest,
      version: window.dreamdist.version,
    }));
    if (result.selfTest) await writeFile(join(OUT, gpu ? "selftest-webgpu.json" : "selftest-cpu-engine.json"), JSON.stringify(result.selfTest, null, 2));
    if (state.status === "error") {
      await page.screenshot({ path: shotPath, fullPage: true });
      assert.fail(`the page reports an error: ${JSON.stringify(result.error, null, 2)}\nconsole errors:\n${problems.join("\n")}`);
    }

    // Hand the CPU reference to the page (its table then shows pass/fail per op) and take the
    // screenshot before asserting, so a failure leaves a picture behind.
    await page.evaluate((exp) => window.dreamdist.setExpected(exp, "native CPU backend (dreamdist selftest --backend cpu --json)"), expected);
    await page.screenshot({ path: shotPath, fullPage: true });
    log(`screenshot: ${shotPath}`);

    // Adapter.
    const a = result.adapter;
    assert.ok(a && typeof a === "object", "window.dreamdist.adapter is missing");
    log(`adapter: ${JSON.stringify(a)}`);
    assert.equal(a.compute, compute);
    assert.equal(a.backend, gpu ? "wgpu" : "cpu");
    if (gpu) {
      for (const k of ["maxBufferSize", "maxStorageBufferBindingSize", "maxComputeWorkgroupStorageSize", "maxComputeInvocationsPerWorkgroup"]) {
        assert.ok(Number.isFinite(a[k]) && a[k] > 0, `adapter.${k} = ${a[k]}`);
      }
      assert.equal(typeof a.shaderF16, "boolean");
    }

    // Self-test: every op of every round against the CPU.
    const report = result.selfTest;
    assert.equal(report.backend, gpu ? "wgpu" : "cpu");
    assert.ok(report.rounds.length >= 2, `the browser ran ${report.rounds.length} round(s), expected at least 2`);
    report.rounds.forEach((r, i) => log(`round ${i + 1}: ${r.ms.toFixed(1)} ms (${r.ops.map((o) => `${o.name} ${o.ms.toFixed(1)}`).join(", ")})`));
    const bad = mismatches(report, expected);
    assert.deepEqual(bad, [], `${compute} results in the browser differ from the native CPU backend:\n${bad.join("\n")}`);

    // The page's own check must agree.
    const check = await page.evaluate(() => window.dreamdist.check);
    assert.equal(check?.mode, "reference");
    assert.ok(check.ok, `the page's own check failed: ${JSON.stringify(check.problems)}`);
    const rows = await page.locator("#selftest-body tbody tr").count();
    assert.equal(rows, expected.rounds[0].ops.length, "one table row per op");
    assert.equal(await page.locator("#selftest-body .badge.fail").count(), 0, "no failed badge on the page");
    assert.equal(await page.locator("#selftest-body .badge.pass").count(), rows + 1, "a pass badge per op and overall");

    const consoleErrors = problems.filter((p) => p.startsWith("[browser page error]"));
    assert.deepEqual(consoleErrors, [], "uncaught errors in the page");
  } finally {
    await context.close();
  }
}

test("WebGPU self-test in Chromium matches the native CPU backend in every round", { timeout: PAGE_TIMEOUT_MS + 600000 }, () => selfTestMatchesNative("webgpu"));

test("the CPU engine's self-test (WebAssembly, a browser without WebGPU) matches the native CPU backend in every round", { timeout: PAGE_TIMEOUT_MS + 600000 }, () =>
  selfTestMatchesNative("cpu"),
);

test("without WebGPU the page shows a clear error", { timeout: 300000 }, async () => {
  const { context, page, problems } = await openPage("no-webgpu", BASE_FLAGS);
  try {
    await page.goto(baseUrl, { waitUntil: "load" });
    const state = await waitForState(page, problems, (s) => s.status !== "loading", 120000, "the WebGPU error");
    await page.screenshot({ path: join(OUT, "no-webgpu.png"), fullPage: true });
    assert.equal(state.status, "error", `expected status "error", got ${JSON.stringify(state)}`);
    assert.ok(["no-adapter", "no-webgpu"].includes(state.error?.kind), `error kind: ${JSON.stringify(state.error)}`);
    const box = page.locator("#status-error");
    assert.ok(await box.isVisible(), "the error box is visible");
    const text = await box.innerText();
    log(`error shown: ${text.replace(/\s+/g, " ").slice(0, 300)}`);
    assert.match(text, /WebGPU/);
    assert.match(text, /Chrome or Edge/);
    assert.match(text, /chrome:\/\/flags/);
    assert.equal(await page.getAttribute("#status", "data-state"), "error");
    assert.ok(await page.locator("#selftest-run").isDisabled(), "no self-test button without an engine");
    const pageErrors = problems.filter((p) => p.startsWith("[browser page error]"));
    assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  } finally {
    await context.close();
  }
});
