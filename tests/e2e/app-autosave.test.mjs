// Autosave: a run is checkpointed to the browser's private storage (OPFS) every N ≤ 50 steps;
// after a reload mid-training the page offers to resume, continues from the saved step, and
// ends with the same distribution as an uninterrupted run (headless Chromium, same profile).
// Screenshot: $E2E_OUT/app/autosave-resume-offer.png.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { launch, log, pageErrors, requireBuilt, shot, startServer, until } from "./lib/browser.mjs";
import { demoReferences, testModel } from "./lib/fixtures.mjs";
import { floats, readSafetensors } from "./lib/safetensors.mjs";

// Checkpointing and resuming are the page's and the engine's, not WebGPU's: the run computes on
// the page's CPU engine (`?compute=cpu`; E2E_AUTOSAVE_COMPUTE=webgpu runs it on SwiftShader, where
// a tiny-model step takes ~20 s). A CPU step takes ~0.1 s, so the run is longer there and saves
// every 25 steps: the reload (well under a second after the checkpoint is seen) must land before
// the next checkpoint and before the end.
const COMPUTE = process.env.E2E_AUTOSAVE_COMPUTE || "cpu";
const STEPS = Number(process.env.E2E_AUTOSAVE_STEPS || (COMPUTE === "cpu" ? 100 : 4));
const EVERY = COMPUTE === "cpu" ? 25 : 2;

let server;
let tmp;
let model;
let refs;

before(async () => {
  requireBuilt();
  tmp = await mkdtemp(join(tmpdir(), "dreamdist-autosave-"));
  server = await startServer();
  // Resuming is model-independent: the tiny fixture model keeps this test short on either engine.
  model = await testModel("tiny");
  ({ refs } = await demoReferences(join(tmp, "refs"), { n: 4, seed: 8 }));
});

after(async () => {
  server?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** The learned prompt embeddings of the last finished run (from its .ddist bytes). */
async function prompts(page) {
  const bytes = await page.evaluate(() => Array.from(window.dreamdist.debug.lastTrained()));
  const st = readSafetensors(Buffer.from(bytes));
  const name = Object.keys(st.tensors).find((n) => n === "prompts") ?? Object.keys(st.tensors)[0];
  return floats(st.tensors[name]);
}

test("reload mid-training → resume is offered → same result as an uninterrupted run", { timeout: 3600000 }, async () => {
  const base = `${server.url}?model=${encodeURIComponent(model.url)}&selftest=0&compute=${COMPUTE}`;
  const { context, page, problems } = await launch("autosave", { tmpRoot: tmp });
  const ready = () => until(page, problems, () => window.dreamdist?.model?.status === "ready" && window.dreamdist.status === "ready", { what: "the model" });
  const setUp = async () => {
    await page.setInputFiles("#ref-input", refs.map((r) => r.path));
    await until(page, problems, () => window.dreamdist.refs.length === 4, { what: "thumbnails" });
    const s = { "#t-name": "autosave", "#t-k": "4", "#t-m": "2", "#t-samples": "2", "#t-steps": String(STEPS), "#t-seed": "4", "#t-template": "{}", "#t-preview-every": "0", "#t-autosave": String(EVERY) };
    await page.evaluate(() => (document.querySelector("details.advanced").open = true));
    for (const [sel, v] of Object.entries(s)) await page.fill(sel, v);
  };
  try {
    // Uninterrupted run.
    await page.goto(base, { waitUntil: "load" });
    await ready();
    assert.equal(await page.evaluate(() => window.dreamdist.adapter?.compute), COMPUTE, "the engine computes where the test asked");
    await setUp();
    let t0 = Date.now();
    await page.click("#train-start");
    await until(page, problems, () => (window.dreamdist.train.state === "done" && window.dreamdist.debug.lastTrained()) || window.dreamdist.train.error, { what: "the uninterrupted run", timeout: 1800000 });
    log(`uninterrupted run: ${STEPS} steps in ${Date.now() - t0} ms`);
    const whole = await prompts(page);

    // Interrupted run: reload once a checkpoint is saved (and the run has gone past it).
    await page.goto(base, { waitUntil: "load" });
    await ready();
    assert.equal(await page.isVisible("#resume-banner"), false, "a finished run leaves nothing to resume");
    await setUp();
    await page.click("#train-start");
    await until(page, problems, (e) => window.dreamdist.train.savedStep >= e && window.dreamdist.train.step > window.dreamdist.train.savedStep, { what: "a saved checkpoint", timeout: 1800000, arg: EVERY });
    const at = await page.evaluate(() => ({ step: window.dreamdist.train.step, saved: window.dreamdist.train.savedStep }));
    log(`reloading at step ${at.step} (checkpoint at step ${at.saved})`);
    assert.ok(at.saved < STEPS);
    assert.ok(at.step - at.saved <= 50, "at most 50 steps are lost");
    await page.reload({ waitUntil: "load" });
    await ready();
    await until(page, problems, () => window.dreamdist.resumeOffer, { what: "the resume offer" });
    const offer = await page.evaluate(() => window.dreamdist.resumeOffer);
    assert.equal(offer.step, at.saved);
    assert.equal(offer.steps, STEPS);
    assert.match(await page.textContent("#resume-text"), new RegExp(`step ${at.saved} of ${STEPS}`));
    await shot(page, "autosave-resume-offer");

    t0 = Date.now();
    await page.click("#resume-yes");
    await until(page, problems, () => (window.dreamdist.train.state === "done" && window.dreamdist.debug.lastTrained()) || window.dreamdist.train.error, { what: "the resumed run", timeout: 1800000 });
    log(`resumed run: ${STEPS - at.saved} steps in ${Date.now() - t0} ms`);
    const st = await page.evaluate(() => window.dreamdist.train);
    assert.equal(st.error, null);
    assert.equal(st.step, STEPS);
    assert.equal(await page.evaluate(() => window.dreamdist.refs.length), 4, "the reference images came back from storage");
    const resumed = await prompts(page);
    assert.equal(resumed.length, whole.length);
    let max = 0;
    for (let i = 0; i < whole.length; i++) max = Math.max(max, Math.abs(whole[i] - resumed[i]));
    log(`resumed vs uninterrupted: max |Δ| of the learned embeddings = ${max}`);
    assert.ok(max <= 1e-3, `the resumed run ends elsewhere (max |Δ| ${max})`);
    assert.equal(await page.isVisible("#resume-banner"), false);
    assert.deepEqual(pageErrors(problems), []);
  } finally {
    await context.close();
  }
});
