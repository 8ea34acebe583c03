// The trained distribution's samples match the references' attributes better than the
// untrained one's, judged by the demo world's attribute reader (`dreamdist demo-read`), after a
// training run of the length in the page: 150 steps, the loss chart updating. Needs the
// bundled demo model (assets/demo/); E2E_MODEL=tiny (random weights, learns nothing) skips it.
//
// Where it computes: E2E_QUALITY_COMPUTE=cpu (default, what CI runs) opens the page on WebGPU,
// then switches Diagnostics → Compute on to the CPU (WebAssembly) — the page's choice for
// machines without a usable GPU — and trains and samples there. SwiftShader, the only WebGPU
// here, takes ~70 s per demo training step (docs/WEB.md), so 150 steps on it are hours:
// E2E_QUALITY_COMPUTE=webgpu runs the same test on WebGPU (opt-in; meant for a real GPU). The
// WebGPU training path itself is checked against the native CPU in app-autosave, the journey
// and tests/e2e/parity. Screenshot: $E2E_OUT/app/quality.png.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { launch, log, pageErrors, requireBuilt, ROOT, shot, startServer, until } from "./lib/browser.mjs";
import { demoReferences, readAttributes, testModel } from "./lib/fixtures.mjs";

const HAVE_DEMO = existsSync(join(ROOT, "assets/demo/manifest.json")) && process.env.E2E_MODEL !== "tiny";
const COMPUTE = process.env.E2E_QUALITY_COMPUTE || "cpu";
const SKIP = HAVE_DEMO ? false : "E2E_MODEL=tiny or no bundled demo model (assets/demo/): the tiny fixture model learns nothing";
const STEPS = Number(process.env.E2E_QUALITY_STEPS || 150);
const N = 16;

let server;
let tmp;
let model;

before(async () => {
  if (SKIP) return;
  requireBuilt();
  tmp = await mkdtemp(join(tmpdir(), "dreamdist-quality-"));
  server = await startServer();
  model = await testModel();
});

after(async () => {
  server?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test(`trained samples match the references' attributes better than untrained ones (demo model, ${COMPUTE})`, { timeout: 4 * 3600000, skip: SKIP }, async () => {
  assert.ok(["cpu", "webgpu"].includes(COMPUTE), `E2E_QUALITY_COMPUTE=${COMPUTE}: expected cpu or webgpu`);
  // Eight references sharing a shape and a colour (the first pair that has eight scenes).
  const { refs, names } = await demoReferences(join(tmp, "refs"), { n: 8, seed: 31, pool: 1500, filter: (a) => a[0] === 1 && a[1] === 2 });
  const want = { shape: names.shape[refs[0].attrs[0]], color: names.color[refs[0].attrs[1]] };
  log(`references: ${want.color} ${want.shape} (${refs.length} scenes)`);
  const { context, page, problems } = await launch("quality", { tmpRoot: tmp });
  try {
    await page.goto(`${server.url}?model=${encodeURIComponent(model.url)}&selftest=0`, { waitUntil: "load" });
    await until(page, problems, () => window.dreamdist?.model?.status === "ready" && window.dreamdist.status === "ready", { what: "the model" });
    assert.equal(await page.evaluate(() => window.dreamdist.adapter.compute), "webgpu", "a fresh profile computes on WebGPU");
    if (COMPUTE === "cpu") {
      // The warnings offer the CPU engine (SwiftShader is a software adapter): a fresh engine,
      // the model restored on it. (The journey switches through Diagnostics → Compute on.)
      await page.click("#use-cpu");
      await until(page, problems, () => window.dreamdist.adapter?.compute === "cpu" && window.dreamdist.engineReady && !window.dreamdist.busy && window.dreamdist.model.status === "ready", { what: "the switch to the CPU" });
      const d = await page.evaluate(() => ({ adapter: window.dreamdist.adapter, warnings: window.dreamdist.warnings, message: window.dreamdist.message }));
      assert.equal(d.adapter.backend, "cpu");
      assert.match(d.message, /now computes on the CPU/);
      assert.ok(d.warnings.some((w) => /Computing on the CPU/.test(w)), JSON.stringify(d.warnings));
      assert.match(await page.textContent("#adapter-body"), /computes on the CPU/);
      await shot(page, "quality-compute-cpu");
    }
    await page.setInputFiles("#ref-input", refs.map((r) => r.path));
    await until(page, problems, () => window.dreamdist.refs.length === 8, { what: "thumbnails" });
    const settings = { "#t-name": "quality", "#t-k": "8", "#t-m": "4", "#t-samples": "2", "#t-steps": String(STEPS), "#t-seed": "0", "#t-template": "{}", "#t-preview-every": "0" };
    await page.evaluate(() => (document.querySelector("details.advanced").open = true));
    for (const [sel, v] of Object.entries(settings)) await page.fill(sel, v);
    const request = { dists: [], gamma: 1, seeds: Array.from({ length: N }, (_, i) => 100 + i), steps: 25, guidance: 3, scheduler: "ddim", template: "{}" };

    // Untrained: the distribution of the initial prompts (step 0 of the same run).
    const untrained = await page.evaluate(async (req) => {
      const d = window.dreamdist.debug;
      const st = d.state;
      const images = st.refs.map((r) => r.bytes);
      await d.call("trainStart", { images, names: st.refs.map((r) => r.name), config: { name: "untrained", k: 8, m: 4, samples: 2, steps: 1, resolution: 32, seed: 0, template: "{}" }, paused: true });
      const bytes = await d.call("trainSnapshot");
      await d.call("trainCancel");
      const info = await d.call("addDistribution", bytes);
      const r = await d.call("sample", { job: "untrained", request: { ...req, dists: [{ handle: info.handle, weight: 1 }] } });
      await d.call("removeDistribution", info.handle);
      return r.images.map((im) => Array.from(im.rgb));
    }, request);

    const t0 = Date.now();
    await page.click("#train-start");
    await until(page, problems, () => window.dreamdist.dists.length === 1 || window.dreamdist.train.error, { what: "training", timeout: 3000000 });
    const trainMs = Date.now() - t0;
    log(`trained ${STEPS} steps in ${trainMs} ms (${(trainMs / STEPS).toFixed(0)} ms per step, ${COMPUTE})`);
    const tr = await page.evaluate(() => window.dreamdist.train);
    assert.equal(tr.error, null);
    assert.equal(tr.step, STEPS);
    assert.equal(tr.losses, STEPS, "one loss per step reached the page");
    // The loss chart drew every step (one path vertex per step at least).
    const path = await page.evaluate(() => document.querySelector("#loss-chart .chart-raw")?.getAttribute("d") ?? "");
    assert.ok((path.match(/[ML]/g) ?? []).length >= STEPS, `the loss chart has ${(path.match(/[ML]/g) ?? []).length} points for ${STEPS} steps`);
    const trained = await page.evaluate(async (req) => {
      const d = window.dreamdist.debug;
      const h = window.dreamdist.dists[0].handle;
      const r = await d.call("sample", { job: "trained", request: { ...req, dists: [{ handle: h, weight: 1 }] } });
      return r.images.map((im) => Array.from(im.rgb));
    }, request);

    const score = async (images) => {
      const readings = await readAttributes(tmp, images);
      const hits = readings.filter((r) => r.shape === want.shape && r.color === want.color).length;
      return { hits, readings: readings.map((r) => `${r.color ?? "?"} ${r.shape ?? "?"}`) };
    };
    const u = await score(untrained);
    const t = await score(trained);
    log(`attribute matches (${want.color} ${want.shape}): untrained ${u.hits}/${N} [${u.readings.join(", ")}], trained ${t.hits}/${N} [${t.readings.join(", ")}]`);
    await page.fill("#s-count", "8");
    await page.click("#sample-go");
    await until(page, problems, () => window.dreamdist.gallery.length === 8 && !window.dreamdist.job, { what: "gallery", timeout: 600000 });
    await shot(page, "quality");
    assert.ok(t.hits > u.hits, `trained ${t.hits}/${N} must beat untrained ${u.hits}/${N}`);
    assert.ok(t.hits >= N / 2, `trained samples match the references in only ${t.hits}/${N}`);
    assert.deepEqual(pageErrors(problems), []);
  } finally {
    await context.close();
  }
});
