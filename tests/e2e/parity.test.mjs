// Model-level computation in the browser checked against references (headless Chromium, WebGPU
// on SwiftShader):
// 1. The parity fixtures (text encoder, UNet, VAE outputs and gradients from diffusers and
//    transformers, tests/fixtures/tiny) on the tiny model loaded in the page, twice: every check
//    within 1e-4 relative error, the block-wise gradients included.
// 2. dreamdist's proof computation (prompt encoding, a guided UNet step, a VAE decode) in the page
//    equals the native CPU backend's run on the same shards (`dreamdist proof`).
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

test("the proof computation equals the native CPU backend", { timeout: 1800_000 }, async () => {
  const { stdout } = await run(BIN, ["proof", "--model", "tiny", "--manifest", MODEL, "--size", "32"], { cwd: ROOT });
  const native = JSON.parse(stdout);
  const web = await page.evaluate(() => window.call("proof", 32, 0));
  for (const part of ["text", "unet", "decode"]) {
    const n = native[part];
    const b = web[part];
    assert.deepEqual(b.shape, n.shape);
    assert.ok(b.finite, `${part} finite`);
    const scale = Math.max(...n.samples.map(Math.abs));
    const diff = Math.max(...b.samples.map((x, i) => Math.abs(x - n.samples[i])));
    console.log(`[proof] ${part}: max sampled difference ${(diff / scale).toExponential(2)} of the largest`);
    assert.ok(diff <= 1e-4 * scale, `${part}: ${diff} vs scale ${scale}`);
  }
});
