// Model-level computation in the browser checked against references (headless Chromium, WebGPU
// on SwiftShader):
// 1. The parity fixtures (text encoder, UNet, VAE outputs and gradients from diffusers and
//    transformers, tests/fixtures/tiny) on the tiny model loaded in the page, twice: every check
//    within 1e-4 relative error, the block-wise gradients included.
// 2. dreamdist's proof computation (prompt encoding, a guided UNet step, a VAE decode) in the page
//    equals the native CPU backend's run on the same shards (`dreamdist proof`).
// 3. So does one training step's loss and raw gradient ∂L/∂V (`dreamdist proof --train`: the
//    block-wise backward through the UNet and the text encoder, the σ/μ reparameterisation and
//    the orthogonality loss), the same function the full-size browser training proof runs.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";

import { BIN, ROOT, launch, startServer } from "./lib/browser.mjs";

const run = promisify(execFile);
const MODEL = "target/e2e-models/tiny-f32";
let server;
let context;
let page;

before(async () => {
  await rm(join(ROOT, MODEL), { recursive: true, force: true });
  await mkdir(join(ROOT, "target/e2e-models"), { recursive: true });
  // f32 conversion of the f16 fixtures is lossless: the page computes with the fixture weights.
  await run(BIN, ["convert", "--from", "tests/fixtures/tiny", "--model", "tiny", "--quant", "f32", "--out", MODEL], { cwd: ROOT });
  server = await startServer();
  ({ context, page } = await launch("parity"));
  await page.goto(`${server.url}tests/e2e/pages/engine.html`);
  await page.waitForFunction(() => window.ready === true);
  await page.evaluate(() => window.call("create"));
  await page.evaluate((url) => window.call("load", url), `/${MODEL}/`);
});

after(async () => {
  await context?.close();
  server?.stop();
});

test("parity fixtures in the browser, twice", { timeout: 1800_000 }, async () => {
  const rounds = await page.evaluate(() => window.call("parity", "/tests/fixtures/tiny/io.safetensors", 2));
  for (const [i, r] of rounds.entries()) {
    console.log(`[parity] round ${i + 1} in ${(r.ms / 1000).toFixed(1)} s`);
    for (const c of r.checks) console.log(`  ${c.name.padEnd(48)} max rel ${c.max_rel.toExponential(2)}`);
    const names = r.checks.map((c) => c.name);
    for (const want of ["text.last_hidden_state", "text.grad_token_embeds (block-wise)", "unet.out",
      "unet.grad_encoder_hidden_states (block-wise)", "vae.decoded"]) {
      assert.ok(names.includes(want), `${want} compared`);
    }
    for (const c of r.checks) assert.ok(c.max_rel <= 1e-4, `${c.name}: ${c.max_rel}`);
  }
});

/** The largest |page − native| over the sampled values, and the largest |native| sample. */
function sampledDiff(b, n) {
  return {
    diff: Math.max(...b.samples.map((x, i) => Math.abs(x - n.samples[i]))),
    scale: Math.max(...n.samples.map(Math.abs)),
  };
}

test("the proof computation equals the native CPU backend", { timeout: 1800_000 }, async () => {
  const { stdout } = await run(BIN, ["proof", "--model", "tiny", "--manifest", MODEL, "--size", "32"], { cwd: ROOT });
  const native = JSON.parse(stdout);
  const web = await page.evaluate(() => window.call("proof", 32, 0));
  for (const part of ["text", "unet", "decode"]) {
    const n = native[part];
    const b = web[part];
    assert.deepEqual(b.shape, n.shape);
    assert.ok(b.finite, `${part} finite`);
    const { diff, scale } = sampledDiff(b, n);
    console.log(`[proof] ${part}: max sampled difference ${(diff / scale).toExponential(2)} of the largest`);
    assert.ok(diff <= 1e-4 * scale, `${part}: ${diff} vs scale ${scale}`);
  }
});

test("one training step's loss and gradient equal the native CPU backend", { timeout: 1800_000 }, async () => {
  const args = ["--size", "32", "--k", "3", "--m", "2", "--samples", "2"];
  const { stdout } = await run(BIN, ["proof", "--train", "--model", "tiny", "--manifest", MODEL, ...args], { cwd: ROOT });
  const native = JSON.parse(stdout);
  const web = await page.evaluate(() => window.call("proofTrain", 32, 0, 3, 2, 2));
  // f32 values: the CLI prints them shortest-round-trip, the page passes them widened to f64.
  assert.deepEqual(web.v0.samples.map(Math.fround), native.v0.samples.map(Math.fround), "the same seeded prompts");
  for (const [i, name] of ["loss", "denoise", "ortho"].entries()) {
    const rel = Math.abs(web.loss[i] - native.loss[i]) / Math.abs(native.loss[i]);
    console.log(`[train proof] ${name}: page ${web.loss[i]}, native ${native.loss[i]} (relative ${rel.toExponential(2)})`);
    assert.ok(Number.isFinite(web.loss[i]) && rel <= 1e-5, `${name}: ${web.loss[i]} vs ${native.loss[i]}`);
  }
  const g = web.gradient;
  const n = native.gradient;
  assert.deepEqual(g.shape, [3, 2, n.shape[2]]);
  assert.ok(g.finite, "gradient finite");
  const { diff, scale } = sampledDiff(g, n);
  assert.ok(scale > 0, "the native gradient is not zero");
  const sumRel = Math.abs(g.sum_abs - n.sum_abs) / n.sum_abs;
  console.log(`[train proof] ∂L/∂V: max sampled difference ${(diff / scale).toExponential(2)} of the largest, Σ|g| ${sumRel.toExponential(2)}`);
  assert.ok(diff <= 1e-4 * scale, `gradient: ${diff} vs scale ${scale}`);
  assert.ok(sumRel <= 1e-4, `Σ|g|: ${sumRel}`);
});
