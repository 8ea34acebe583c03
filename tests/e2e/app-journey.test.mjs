// The full user journey through the app in headless Chromium (WebGPU on SwiftShader), on the
// bundled demo model when it exists, else on the tiny fixture model:
//
//   open (cold cache: time until the model is loaded) → upload reference images → estimate →
//   train a few dozen steps (loss chart updates; pause / resume on WebGPU, then Diagnostics →
//   Compute on → CPU mid-run: the paused run moves to the CPU engine and finishes there) →
//   sample at two γ values (different seeds give
//   different images; γ = 0 gives identical conditions) → γ-sweep grid → edit the template →
//   download a PNG (its text chunks carry the CLI's keys) → export .ddist → reload with
//   ?dist=<that file on the local server> → sample (same pixels as before) → import a .ddist the
//   CLI trained → mix and mixing strip → share link → exports (textual inversion, diffusers) →
//   synthetic data set → PCA and per-prompt images → back to WebGPU (the distributions survive
//   the switch) → the engine crashes and loses its GPU device, restarts, and the page keeps its
//   state; a sample on WebGPU equals the CPU engine's → the CLI samples the page's .ddist with the
//   same seed and settings and gets the same image.
//
// The app's features between training and the restarts (sampling, sweeps, editing, exports,
// mixing, sharing, data sets, PCA) run on the page's CPU engine: they are the page's and the
// engine's, not WebGPU's, and SwiftShader takes ~7 s per demo-model image where the CPU engine
// takes a fraction of that. WebGPU keeps the load, the estimate, training with pause/resume, the
// move of a paused run between engines, the restarts (device lost) and a sample compared with
// the CPU engine's; its numbers are proved op by op in selftest/parity/fullsize.test.mjs.
//
// The network log of the whole session must hold only GETs of this server's static files (no
// request carries reference images). Screenshots of every stage: $E2E_OUT/app/journey-*.png;
// timings: $E2E_OUT/app/journey-timings.json.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { foreignRequests, launch, log, OUT, pageErrors, requireBuilt, ROOT, shot, startServer, until } from "./lib/browser.mjs";
import { cli, demoReferences, testModel } from "./lib/fixtures.mjs";
import { decodePng, textChunks } from "./lib/png.mjs";
import { floats, readSafetensors } from "./lib/safetensors.mjs";

// SwiftShader (the only WebGPU here) takes ~45–75 s per training step of the demo model, so the
// run's first E2E_GPU_TRAIN_STEPS (4) steps are on WebGPU and the rest of its E2E_TRAIN_STEPS
// (36) on the page's CPU engine (~0.3 s per step); E2E_GPU_TRAIN_STEPS=36 keeps all of them on
// WebGPU (~45 min). Sampling uses 2 DDIM steps (E2E_SAMPLE_STEPS) for the same reason.
const STEPS = Number(process.env.E2E_TRAIN_STEPS || 36);
const GPU_STEPS = Math.min(STEPS, Number(process.env.E2E_GPU_TRAIN_STEPS || 4));
const SAMPLE_STEPS = String(process.env.E2E_SAMPLE_STEPS || 2);
const CLI_KEYS = ["model", "dists", "mix", "mix_rule", "template", "gamma", "seed", "steps", "guidance", "scheduler", "size"].sort();

let server;
let tmp;
let model;
const timings = {};

async function timed(name, fn) {
  const t0 = Date.now();
  try {
    return await fn();
  } finally {
    timings[name] = Date.now() - t0;
    log(`${name}: ${timings[name]} ms`);
  }
}

before(async () => {
  requireBuilt();
  tmp = await mkdtemp(join(tmpdir(), "dreamdist-journey-"));
  server = await startServer();
  model = await testModel();
  log(`server ${server.url}, model ${model.id} (${model.url})`);
});

after(async () => {
  server?.stop();
  await writeFile(join(OUT, "app", "journey-timings.json"), JSON.stringify({ model: model?.id, steps: STEPS, ms: timings }, null, 2)).catch(() => {});
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const diff = (a, b) => {
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
};

async function download(page, selector) {
  const [dl] = await Promise.all([page.waitForEvent("download", { timeout: 120000 }), page.click(selector)]);
  const path = join(tmp, dl.suggestedFilename());
  await dl.saveAs(path);
  return { path, name: dl.suggestedFilename(), bytes: await readFile(path) };
}

/** Diagnostics → Compute on → `compute`; resolves once the new engine is ready, the model
 * reloaded and the page idle again. */
async function switchCompute(page, problems, compute) {
  if (!(await page.evaluate(() => document.querySelector("#diag-panel").open))) await page.click("#diag-panel > summary");
  await page.selectOption("#compute", compute);
  await until(page, problems, (c) => window.dreamdist.adapter?.compute === c && window.dreamdist.engineReady && !window.dreamdist.busy && window.dreamdist.model.status === "ready", { what: `the switch to ${compute}`, timeout: 600000, arg: compute });
}

const galleryRgb = (page, i) => page.evaluate((k) => window.dreamdist.debug.galleryImage(k), i);
const jobDone = (what) => ({ what, timeout: 600000 });

test("the full journey: model → images → train → sample → edit → export → ?dist= → mix → share, as a user would", { timeout: 3600000 }, async () => {
  const refsDir = join(tmp, "refs");
  const { refs } = await demoReferences(refsDir, { n: 6, seed: 5, filter: (a) => a[0] === 0 });
  const origin = new URL(server.url).origin;
  const base = `${server.url}?model=${encodeURIComponent(model.url)}&selftest=0`;
  const { context, page, problems, requests } = await launch("journey", { tmpRoot: tmp });
  try {
    // 1. Open: the model loads from a cold cache (fresh profile).
    await timed("open → model loaded (cold cache)", async () => {
      await page.goto(base, { waitUntil: "load" });
      await until(page, problems, () => window.dreamdist?.model?.status === "ready" || window.dreamdist?.model?.status === "error", { what: "the model" });
    });
    const m = await page.evaluate(() => window.dreamdist.model);
    assert.equal(m.status, "ready", `model: ${m.error}`);
    assert.equal(m.info.id, model.id);
    timings["page: navigation → model ready (performance.now)"] = Math.round(m.readyAt);
    log(`cold load: model ready ${m.readyAt.toFixed(0)} ms after navigation (model load itself ${m.loadMs.toFixed(0)} ms)`);
    await shot(page, "journey-01-model-loaded");
    // The page lists what its weight cache holds: this model, whole.
    await until(page, problems, () => /^Cached models: /.test(document.querySelector("#storage-used").textContent) && window.dreamdist.storage?.models?.length > 0, { what: "the storage line" });
    const storage = await page.textContent("#storage-used");
    log(`storage: ${storage}`);
    assert.match(storage, new RegExp(`^Cached models: ${model.id} \\w+ \\(\\d+(\\.\\d)? MB\\)`));
    // And what the weights take on the GPU, per component.
    assert.match(await page.textContent("#model-status"), /On the GPU: [\d.]+ MB \(text encoder [\d.]+ MB, UNet [\d.]+ MB, VAE [\d.]+ MB\)\./);

    // 2. Reference images.
    await page.setInputFiles("#ref-input", refs.map((r) => r.path));
    await until(page, problems, () => window.dreamdist.refs.length === 6, { what: "the thumbnails" });
    assert.equal(await page.locator("#ref-list img").count(), 6);
    assert.match(await page.textContent("#ref-count"), /6 images ready/);
    // Remove one (keyboard-reachable button with a label), then put it back.
    await page.click(`button[aria-label="Remove ${refs[5].name}"]`);
    await until(page, problems, () => window.dreamdist.refs.length === 5, { what: "removal" });
    await page.setInputFiles("#ref-input", [refs[5].path]);
    await until(page, problems, () => window.dreamdist.refs.length === 6, { what: "re-adding" });
    await shot(page, "journey-02-references");

    // 3. Settings (small, for SwiftShader) and the estimate.
    const settings = { "#t-name": "journey", "#t-k": "4", "#t-m": "2", "#t-samples": "2", "#t-steps": String(STEPS), "#t-seed": "1", "#t-template": "{}" };
    for (const [sel, v] of Object.entries(settings)) await page.fill(sel, v);
    await page.click("summary:has-text('Previews and autosave')");
    await page.fill("#t-preview-every", String(Math.max(2, Math.floor(STEPS / 2))));
    await page.fill("#t-preview-steps", "4");
    await page.fill("#t-autosave", "10");
    await timed("estimate (2 measured steps)", async () => {
      await page.click("#train-estimate");
      await until(page, problems, () => window.dreamdist.train.estimate || window.dreamdist.train.error, { what: "the estimate", timeout: 600000 });
    });
    const est = await page.evaluate(() => window.dreamdist.train);
    assert.ok(est.estimate, `estimate failed: ${est.error}`);
    assert.ok(est.estimate.msPerStep > 0 && est.estimate.memoryBytes > 0, JSON.stringify(est.estimate));
    assert.match(await page.textContent("#train-estimate-text"), /per step/);
    await shot(page, "journey-03-estimate");

    // 4. Train, with a pause and a resume; the loss chart grows.
    const netStart = requests.length;
    await timed(`train ${GPU_STEPS} steps on WebGPU (with pause/resume)`, async () => {
      await page.click("#train-start");
      await until(page, problems, (n) => window.dreamdist.train.step >= n || window.dreamdist.train.error, { what: "training steps", timeout: 900000, arg: Math.min(2, GPU_STEPS) });
      const pathLen = await page.evaluate(() => document.querySelector("#loss-chart .chart-raw")?.getAttribute("d")?.length ?? 0);
      assert.ok(pathLen > 10, "the loss chart shows the steps");
      await page.click("#train-pause");
      await until(page, problems, () => window.dreamdist.train.state === "paused" || window.dreamdist.train.error, { what: "the pause" });
      const pausedAt = await page.evaluate(() => window.dreamdist.train.step);
      await shot(page, "journey-04-paused");
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(await page.evaluate(() => window.dreamdist.train.step), pausedAt, "no steps while paused");
      assert.ok(await page.isVisible("#train-resume"));
      await page.click("#train-resume");
      if (GPU_STEPS < STEPS) {
        await until(page, problems, (n) => window.dreamdist.train.step >= n || window.dreamdist.train.error, { what: "the WebGPU steps", timeout: Math.max(1800000, GPU_STEPS * 150000), arg: GPU_STEPS });
        await page.click("#train-pause");
        await until(page, problems, () => window.dreamdist.train.state === "paused" || window.dreamdist.train.error, { what: "the second pause" });
      } else {
        // SwiftShader takes ~45 s per step idle and ~70 s under load; the wait grows with STEPS.
        const timeout = Math.max(1800000, STEPS * 150000);
        await until(page, problems, () => window.dreamdist.dists.length === 1 || window.dreamdist.train.error, { what: "the end of training", timeout });
      }
    });
    if (GPU_STEPS < STEPS) {
      const pausedAt = await page.evaluate(() => window.dreamdist.train.step);
      const lossesBefore = await page.evaluate(() => window.dreamdist.train.losses);
      await timed("switch to the CPU engine (paused run restored)", () => switchCompute(page, problems, "cpu"));
      const moved = await page.evaluate(() => ({ train: window.dreamdist.train, adapter: window.dreamdist.adapter, message: window.dreamdist.message }));
      assert.equal(moved.adapter.backend, "cpu");
      assert.equal(moved.train.state, "paused", JSON.stringify(moved));
      assert.equal(moved.train.step, pausedAt, "the run continues from the step it was paused at");
      assert.equal(moved.train.losses, lossesBefore, "the loss chart keeps its points");
      assert.match(moved.message, /now computes on the CPU[\s\S]*paused at step/);
      // The model came back from the cache; the table lists every component of it, not only
      // the ones whose progress happened to be forwarded.
      assert.deepEqual(await page.locator("#model-progress tbody th").allTextContents(), ["text_encoder", "unet", "vae"]);
      assert.equal(await page.textContent("#train-estimate-text"), "", "an estimate measured on WebGPU is not shown for the CPU engine");
      await shot(page, "journey-04b-on-the-cpu");
      await timed(`train steps ${pausedAt + 1}–${STEPS} on the CPU engine`, async () => {
        await page.click("#train-resume");
        await until(page, problems, () => window.dreamdist.dists.length === 1 || window.dreamdist.train.error, { what: "the end of training", timeout: 1800000 });
      });
    }
    const tr = await page.evaluate(() => window.dreamdist.train);
    assert.equal(tr.error, null);
    assert.equal(tr.losses, STEPS, "one loss point per step");
    assert.ok(Number.isFinite(tr.lastLoss));
    assert.ok(tr.previews >= 1, "preview samples during training");
    assert.equal(await page.locator("#train-previews canvas").count() > 0, true);
    await shot(page, "journey-05-trained");

    // 5. Sample at two γ values; seeds differ → images differ.
    for (const [sel, v] of Object.entries({ "#s-steps": SAMPLE_STEPS, "#s-count": "4", "#s-seed": "0", "#s-guidance": "3", "#s-template": "{}" })) await page.fill(sel, v);
    await page.fill("#s-gamma", "1");
    await timed("sample 4 images (γ = 1)", async () => {
      await page.click("#sample-go");
      await until(page, problems, () => window.dreamdist.gallery.length === 4 && !window.dreamdist.job, jobDone("samples"));
    });
    const g1 = await Promise.all([0, 1, 2, 3].map((i) => galleryRgb(page, i)));
    const g1Compute = await page.evaluate(() => window.dreamdist.adapter.compute);
    assert.deepEqual(g1.map((x) => x.seed), [0, 1, 2, 3]);
    for (let i = 1; i < 4; i++) assert.ok(diff(g1[0].rgb, g1[i].rgb).max > 0, `seed 0 and seed ${i} gave the same image`);
    await page.fill("#s-gamma", "0");
    await page.fill("#s-count", "2");
    await timed("sample 2 images (γ = 0)", async () => {
      await page.click("#sample-go");
      await until(page, problems, () => window.dreamdist.gallery.length === 6 && !window.dreamdist.job, jobDone("γ = 0 samples"));
    });
    assert.equal((await galleryRgb(page, 0)).gamma, 0);
    await shot(page, "journey-06-samples");

    // γ = 0: every draw is the mean, so the condition does not depend on the random direction ω.
    // Same starting noise (seed 5), different ω (condSeeds 1, 2): identical at γ = 0, not at γ = 1.
    const handle = await page.evaluate(() => window.dreamdist.dists[0].handle);
    const cond = async (gamma) =>
      page.evaluate(
        async ([h, g]) => {
          const r = await window.dreamdist.debug.call("sample", {
            job: "test",
            request: { dists: [{ handle: h, weight: 1 }], gamma: g, seeds: [5, 5], condSeeds: [1, 2], steps: 2, guidance: 3, scheduler: "ddim", template: "{}" },
          });
          return r.images.map((im) => Array.from(im.rgb));
        },
        [handle, gamma],
      );
    const [a0, b0] = await cond(0);
    assert.equal(diff(a0, b0).max, 0, "γ = 0 must give identical conditions (identical images for the same noise)");
    const [a1, b1] = await cond(1);
    assert.ok(diff(a1, b1).max > 0, "γ = 1 must vary the condition");
    const pca0 = await page.evaluate((h) => window.dreamdist.debug.call("pca", h, 0, 16, 3), handle);
    const spread = (pts) => Math.max(...pts.map((p) => Math.hypot(p[0] - pts[0][0], p[1] - pts[0][1])));
    assert.ok(spread(pca0.samples) < 1e-4, `γ = 0 samples must coincide in the PCA view (spread ${spread(pca0.samples)})`);

    // γ-sweep grid (rows γ = 0 … 2, columns seeds).
    await page.fill("#s-gamma", "1");
    await page.fill("#s-count", "2");
    await timed("γ sweep (5 × 2)", async () => {
      await page.click("#sample-sweep");
      await until(page, problems, () => window.dreamdist.sweep?.done === 10 && !window.dreamdist.job, jobDone("the γ sweep"));
    });
    assert.equal(await page.locator("#sweep canvas").count(), 10);
    // Row γ = 0 of the sweep is the mean condition; row γ = 1 of the same seed differs.
    const s00 = await page.evaluate(() => window.dreamdist.debug.sweepImage(0, 0));
    const s20 = await page.evaluate(() => window.dreamdist.debug.sweepImage(2, 0));
    assert.equal(s00.gamma, 0);
    assert.ok(diff(s00.rgb, s20.rgb).max > 0, "γ changes the image for the same seed");
    await shot(page, "journey-07-gamma-sweep");

    // 6. Edit the template (text-guided editing): same seed, different image.
    await page.fill("#s-template", "a painting of {} at night");
    await page.fill("#s-count", "1");
    await page.click("#sample-go");
    await until(page, problems, () => window.dreamdist.gallery[0]?.template?.startsWith("a painting") && !window.dreamdist.job, jobDone("the edited sample"));
    const edited = await galleryRgb(page, 0);
    assert.equal(edited.seed, 0);
    assert.ok(diff(edited.rgb, g1[0].rgb).max > 0, "the edited template changes the image");
    await shot(page, "journey-08-edited");

    // 7. Download a PNG: its text chunks hold every parameter, with the CLI's keys.
    const png = await download(page, "#gallery figure:first-child a.shot-download");
    const text = textChunks(png.bytes);
    assert.match(text.Software, /^dreamdist /);
    const p = JSON.parse(text.dreamdist);
    assert.deepEqual(Object.keys(p).sort(), CLI_KEYS);
    assert.equal(p.template, "a painting of {} at night");
    assert.equal(p.seed, 0);
    assert.equal(p.model, model.id);
    assert.deepEqual(decodePng(png.bytes).rgb.equals(Buffer.from(edited.rgb)), true, "the PNG holds the shown pixels");

    // 8. Export the .ddist; put it on the local server.
    const ddist = await download(page, "#export-ddist");
    assert.match(ddist.name, /\.ddist$/);
    const served = join(ROOT, "target/e2e-served");
    await mkdir(served, { recursive: true });
    await writeFile(join(served, "journey.ddist"), ddist.bytes);
    const before0 = g1[0];

    // Privacy: everything so far (training and sampling included) was GETs of this server's files.
    const during = requests.slice(netStart);
    assert.deepEqual(foreignRequests(requests, origin), [], "only local static files may be requested");
    assert.ok(during.every((r) => r.postBytes === 0), "no request carries data");
    log(`network: ${requests.length} requests in all, ${during.length} during training and sampling: ${[...new Set(during.map((r) => new URL(r.url).pathname))].join(", ") || "none"}`);

    // 9. Reload with ?dist= pointing at the exported file; sample → the same pixels as before.
    // The page also keeps its distributions (OPFS): the trained one is back, and the file from
    // ?dist= is recognised as the same one.
    const nReq = requests.length;
    await timed("reload with ?dist= → distribution loaded", async () => {
      await page.goto(`${base}&dist=${encodeURIComponent("/target/e2e-served/journey.ddist")}`, { waitUntil: "load" });
      await until(page, problems, () => /Loaded/.test(window.dreamdist?.notes?.dists ?? "") || window.dreamdist?.errors?.dists || window.dreamdist?.model?.status === "error", { what: "?dist=" });
    });
    const fromUrl = await page.evaluate(() => ({ dists: window.dreamdist.dists, err: window.dreamdist.errors.dists, note: window.dreamdist.notes.dists, model: window.dreamdist.model }));
    assert.equal(fromUrl.err ?? null, null, `?dist= failed: ${fromUrl.err}`);
    assert.ok(requests.slice(nReq).some((r) => r.url.endsWith("/target/e2e-served/journey.ddist")), "the ?dist= file was downloaded");
    assert.match(fromUrl.note, /journey\.ddist: it is “journey”, already in the list/);
    assert.equal(fromUrl.dists.length, 1, "kept across the reload, and not duplicated");
    assert.ok(fromUrl.model.fromCache, "the second load comes from the browser's cache (OPFS)");
    // The same request as step 5's (four seeds in one batch): the same computation, so the same
    // pixels exactly. (A batch of one may differ from its place in a batch of four by a level
    // in a pixel or so: the batched matmuls sum in another order.)
    for (const [sel, v] of Object.entries({ "#s-steps": SAMPLE_STEPS, "#s-count": "4", "#s-seed": "0", "#s-guidance": "3", "#s-template": "{}", "#s-gamma": "1" })) await page.fill(sel, v);
    await page.click("#sample-go");
    await until(page, problems, () => window.dreamdist.gallery.length === 4 && !window.dreamdist.job, jobDone("the samples after ?dist="));
    const again = await Promise.all([0, 1, 2, 3].map((i) => galleryRgb(page, i)));
    assert.deepEqual(again.map((x) => x.seed), [0, 1, 2, 3]);
    for (let i = 0; i < 4; i++) assert.equal(diff(again[i].rgb, g1[i].rgb).max, 0, `the exported distribution gives the same image for seed ${i}`);
    await shot(page, "journey-09-from-url");

    // 10. A distribution the CLI trained (same model, same references) → import → mix.
    const cliDist = join(tmp, "cli.ddist");
    await timed("CLI: train a second distribution", () =>
      cli(["train", "--manifest", model.dir, "--model", model.id, "--images", refsDir, "--out", cliDist, "--k", "4", "--m", "2", "--samples", "2", "--steps", "4", "--resolution", String(model.native), "--seed", "9"]),
    );
    await page.setInputFiles("#dist-file", cliDist);
    await until(page, problems, () => window.dreamdist.dists.length === 2 || window.dreamdist.errors.dists, { what: "the CLI's .ddist" });
    assert.equal((await page.evaluate(() => window.dreamdist.errors.dists)) ?? null, null);
    await page.fill("#s-count", "2");
    await timed("mix 2 images", async () => {
      await page.click("#mix-go");
      await until(page, problems, () => window.dreamdist.mixGallery === 2 && !window.dreamdist.job, jobDone("the mix"));
    });
    await page.fill("#strip-cols", "3");
    await timed("mixing strip (3 × 2)", async () => {
      await page.click("#strip-go");
      await until(page, problems, () => window.dreamdist.strip?.done === 6 && !window.dreamdist.job, jobDone("the strip"));
    });
    // The strip's ends are the pure distributions: its first column (100 % of the first) at seed 0
    // equals that distribution sampled alone (α normalised to 1, 0).
    const end = await page.evaluate(() => window.dreamdist.debug.stripImage(0, 0));
    assert.equal(diff(end.rgb, before0.rgb).max, 0, "100 % of one distribution in the strip equals sampling it alone");
    await shot(page, "journey-10-mix");

    // 11. Share link (#d=): opens in a new tab with the distribution inside.
    await page.check(`input[name=active-dist][value="${(await page.evaluate(() => window.dreamdist.dists[0].id))}"]`);
    await page.click("#share-link");
    await until(page, problems, () => window.dreamdist.shareLink?.url || window.dreamdist.errors.dists, { what: "the share link" });
    const link = await page.inputValue("#share-link-url");
    assert.match(link, /#d=[A-Za-z0-9_-]+$/);
    const tab = await context.newPage();
    await tab.goto(link, { waitUntil: "load" });
    await until(tab, problems, () => /link/.test(window.dreamdist?.notes?.dists ?? "") || window.dreamdist?.errors?.dists, { what: "the #d= link" });
    assert.equal((await tab.evaluate(() => window.dreamdist.errors.dists)) ?? null, null);
    assert.match(await tab.evaluate(() => window.dreamdist.notes.dists), /link's distribution: it is “journey”/);
    // A fresh profile (nothing saved) gets it from the link alone.
    const other = await launch("journey-link", { tmpRoot: tmp });
    try {
      await other.page.goto(link, { waitUntil: "load" });
      await until(other.page, other.problems, () => window.dreamdist?.dists?.length === 1 || window.dreamdist?.errors?.dists, { what: "the #d= link in a fresh profile" });
      assert.equal(await other.page.evaluate(() => window.dreamdist.dists[0].source), "link");
      await shot(other.page, "journey-11-share-link");
    } finally {
      await other.context.close();
    }
    await tab.close();

    // 12. Exports: textual inversion (one prompt, and all K as a zip) and diffusers (μ, σ).
    const ti = readSafetensors((await download(page, "#export-ti")).bytes);
    assert.deepEqual(Object.keys(ti.tensors), ["emb_params"]);
    assert.equal(ti.tensors.emb_params.shape[0], 2, "M tokens");
    const dfs = readSafetensors((await download(page, "#export-diffusers")).bytes);
    assert.deepEqual(dfs.tensors.mu.shape.slice(0, 2), [1, 77]);
    assert.deepEqual(dfs.tensors.sigma.shape, dfs.tensors.mu.shape);
    assert.ok(floats(dfs.tensors.sigma).every((x) => x >= 0));

    // 13. Synthetic data set (2 per distribution, both) and "download all".
    await page.click("#dataset-box summary");
    await page.fill("#ds-n", "2");
    for (const box of await page.locator("#ds-dists input").all()) await box.check();
    const [dsZip] = await Promise.all([page.waitForEvent("download", { timeout: 600000 }), page.click("#ds-go")]);
    const dsPath = join(tmp, "dataset.zip");
    await dsZip.saveAs(dsPath);
    const zipBytes = await readFile(dsPath);
    const entries = zipBytes.toString("latin1").split("PK\x01\x02").length - 1;
    assert.equal(entries, 2 * 2 + 1, "4 PNGs and metadata.jsonl");
    const all = await download(page, "#sample-zip");
    assert.ok(all.bytes.length > 100 && all.bytes.subarray(0, 2).toString() === "PK");

    // 14. Understand: PCA of the K prompts and one image per prompt.
    await page.check(`input[name=active-dist][value="${(await page.evaluate(() => window.dreamdist.dists[0].id))}"]`);
    await page.click("#learn-pca");
    await until(page, problems, () => window.dreamdist.pca && !window.dreamdist.job, jobDone("the PCA"));
    const pc = await page.evaluate(() => window.dreamdist.pca);
    assert.equal(pc.prompts.length, 4);
    assert.ok(pc.samples.length > 10);
    await page.click("#learn-prompts");
    await until(page, problems, () => window.dreamdist.promptImages === 4 && !window.dreamdist.job, jobDone("per-prompt images"));
    await shot(page, "journey-12-understand");

    // 15. Back to WebGPU: the distributions survive the switch. Then the engine crashes (a Rust
    // panic), then loses its GPU device: each time a new engine starts, the model and the
    // distributions come back, and sampling works again — on WebGPU, with the CPU engine's image.
    await timed("switch back to WebGPU", () => switchCompute(page, problems, "webgpu"));
    {
      const back = await page.evaluate(() => ({ dists: window.dreamdist.dists, adapter: window.dreamdist.adapter }));
      assert.equal(back.adapter.compute, "webgpu");
      assert.equal(back.dists.length, 2, "the trained distributions survive the switch");
      assert.ok(back.dists.every((d) => d.handle !== null), "distributions re-registered on the GPU engine");
    }
    for (const [how, fn] of [
      ["panic", () => window.dreamdist.debug.crash()],
      ["device lost", () => window.dreamdist.debug.loseDevice()],
    ]) {
      const n0 = await page.evaluate(() => window.dreamdist.restarts);
      await timed(`restart after ${how}`, async () => {
        await page.evaluate(fn);
        await until(page, problems, (n) => window.dreamdist.restarts > n, { what: `the restart (${how})`, arg: n0 });
        await until(page, problems, () => window.dreamdist.engineReady && window.dreamdist.model.status === "ready" && !window.dreamdist.busy, { what: "the restored engine" });
      });
      const st = await page.evaluate(() => ({ dists: window.dreamdist.dists, restarts: window.dreamdist.restarts, msg: window.dreamdist.message }));
      assert.ok(st.restarts > n0, `restarted after ${how}`);
      assert.equal(st.dists.length, 2);
      assert.ok(st.dists.every((d) => d.handle !== null), "distributions re-registered");
      assert.match(st.msg, /restarted/);
      if (how !== "device lost") continue;
      await page.fill("#s-count", "1");
      await page.fill("#s-template", "{}");
      const g0 = await page.evaluate(() => window.dreamdist.gallery.length);
      await page.click("#sample-go");
      await until(page, problems, (n) => (window.dreamdist.gallery.length > n || window.dreamdist.errors.sample) && !window.dreamdist.job, { ...jobDone("a sample after the restart"), arg: g0 });
      assert.equal((await page.evaluate(() => window.dreamdist.errors.sample)) ?? null, null);
      assert.ok((await page.evaluate(() => window.dreamdist.gallery.length)) > g0);
      // The same distribution, seed and settings as the first sample (on the CPU engine unless
      // every training step ran on WebGPU): WebGPU (SwiftShader) and the CPU engine agree within
      // rounding, as the page and the CLI must.
      const onGpu = await galleryRgb(page, 0);
      assert.deepEqual([onGpu.seed, onGpu.gamma], [0, 1]);
      const dg = diff(onGpu.rgb, before0.rgb);
      log(`WebGPU vs the first sample (${g1Compute}), same .ddist, seed 0: max |Δ| ${dg.max}, mean |Δ| ${dg.mean.toFixed(3)} (0–255)`);
      assert.ok(dg.max <= 12 && dg.mean <= 1.5, `WebGPU and ${g1Compute} images differ: max ${dg.max}, mean ${dg.mean}`);
    }
    await shot(page, "journey-13-restarted");

    // 16. CLI and page agree: the page's .ddist sampled by the CLI gives the same image for the
    // same seed and settings (within rounding), with the same keys.
    const cliOut = join(tmp, "cli-samples");
    await timed("CLI: sample the page's .ddist", () =>
      cli(["sample", "--manifest", model.dir, "--model", model.id, "--dist", join(served, "journey.ddist"), "--gamma", "1", "--n", "1", "--seed", "0", "--steps", SAMPLE_STEPS, "--guidance", "3", "--scheduler", "ddim", "--size", String(model.native), "--prompt", "{}", "--out", cliOut]),
    );
    const cliPng = await readFile(join(cliOut, (await readdir(cliOut)).find((f) => f.endsWith(".png"))));
    const cliKeys = Object.keys(JSON.parse(textChunks(cliPng).dreamdist)).sort();
    assert.deepEqual(cliKeys, CLI_KEYS, "the CLI writes the keys the page writes");
    const d = diff(decodePng(cliPng).rgb, before0.rgb);
    log(`page (${g1Compute}) vs CLI (native CPU), same .ddist, seed 0: max |Δ| ${d.max}, mean |Δ| ${d.mean.toFixed(3)} (0–255)`);
    assert.ok(d.max <= 12 && d.mean <= 1.5, `page and CLI images differ: max ${d.max}, mean ${d.mean}`);

    assert.deepEqual(foreignRequests(requests, origin), [], "only local static files may be requested");
    assert.deepEqual(pageErrors(problems), [], "uncaught errors in the page");
  } finally {
    await context.close();
  }
});
