// Bad inputs get clear messages and the page keeps working (headless Chromium):
// a non-image, a 100-megapixel image, an oversized file, a corrupt .ddist, a distribution for
// another model, `#d=` fragments that are too large or malformed, `?dist=` addresses that are
// refused or missing, hostile model addresses (a manifest declaring tensors the model never
// asked for, one lacking a tensor, one claiming another model's identity), and a browser without
// WebGPU. Screenshots: $E2E_OUT/app/inputs-*.png.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deflateRawSync } from "node:zlib";
import { after, before, test } from "node:test";

import { foreignRequests, launch, log, pageErrors, requireBuilt, ROOT, shot, startServer, until } from "./lib/browser.mjs";
import { cli, demoReferences, hostileModels, testModel } from "./lib/fixtures.mjs";
import { hugePngHeader } from "./lib/png.mjs";

let server;
let tmp;
let model;
let refs;
let goodDist;
let otherModelDist;

before(async () => {
  requireBuilt();
  tmp = await mkdtemp(join(tmpdir(), "dreamdist-inputs-"));
  server = await startServer();
  model = await testModel();
  ({ refs } = await demoReferences(join(tmp, "refs"), { n: 4, seed: 3 }));
  goodDist = join(tmp, "good.ddist");
  await cli(["train", "--manifest", model.dir, "--model", model.id, "--images", join(tmp, "refs"), "--out", goodDist, "--k", "2", "--m", "1", "--samples", "1", "--steps", "1", "--resolution", String(model.native)]);
  // The same images learned on another model (the demo architecture with random weights).
  otherModelDist = join(tmp, "other-model.ddist");
  await cli(["train", "--model", model.id === "demo" ? "tiny" : "demo", "--random-weights", "7", "--images", join(tmp, "refs"), "--out", otherModelDist, "--k", "2", "--m", "1", "--samples", "1", "--steps", "1", "--resolution", model.id === "demo" ? "16" : "32"]);
});

after(async () => {
  server?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const b64url = (buf) => Buffer.from(buf).toString("base64").replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

test("bad inputs are refused with a reason, and the page keeps working", { timeout: 1800000 }, async () => {
  // The checks are the page's and the engine's, not WebGPU's: the page computes on its CPU engine
  // (it starts in a fraction of the GPU engine's time, and the page is reopened eight times here).
  const base = `${server.url}?model=${encodeURIComponent(model.url)}&selftest=0&compute=cpu`;
  const { context, page, problems, requests } = await launch("inputs", { tmpRoot: tmp });
  const open = async (url) => {
    await page.goto("about:blank");
    await page.goto(url, { waitUntil: "load" });
    await until(page, problems, () => window.dreamdist?.model?.status === "ready" && window.dreamdist.status === "ready", { what: "the model" });
  };
  try {
    await open(base);
    assert.equal(await page.evaluate(() => window.dreamdist.adapter?.compute), "cpu", "the engine computes on the CPU as asked");

    // Reference images: a text file, a file with an image name but no image inside, a 100-megapixel
    // PNG (refused from its header, never decoded), a file over the size limit — and good images.
    const txt = join(tmp, "notes.txt");
    await writeFile(txt, "these are my notes, not an image\n");
    const fake = join(tmp, "holiday.png");
    await writeFile(fake, Buffer.from("GIF89a this is not really a png at all".repeat(10)));
    const huge = join(tmp, "huge-100mp.png");
    await writeFile(huge, hugePngHeader(10000, 10000));
    const heavy = join(tmp, "heavy.jpg");
    await writeFile(heavy, Buffer.concat([Buffer.from([0xff, 0xd8, 0xff]), Buffer.alloc(51 * 1024 * 1024)]));
    await page.setInputFiles("#ref-input", [txt, fake, huge, heavy, ...refs.map((r) => r.path)]);
    await until(page, problems, () => window.dreamdist.refErrors.length === 4 && window.dreamdist.refs.length === 4, { what: "the image checks" });
    const errs = Object.fromEntries((await page.evaluate(() => window.dreamdist.refErrors)).map((e) => [e.name, e.reason]));
    log(`reference refusals: ${JSON.stringify(errs)}`);
    assert.match(errs["notes.txt"], /not an image/);
    assert.match(errs["holiday.png"], /not an image/);
    assert.match(errs["huge-100mp.png"], /10000×10000.*too large.*megapixels/);
    assert.match(errs["heavy.jpg"], /larger than the 50 MB allowed/);
    const shown = await page.textContent("#ref-errors");
    for (const name of Object.keys(errs)) assert.ok(shown.includes(name), `the refusal of ${name} is shown`);
    assert.match(await page.textContent("#ref-count"), /4 images ready/);
    assert.ok(await page.isEnabled("#train-start"), "training can start with the 4 good images");
    await shot(page, "inputs-01-images");

    // A corrupt .ddist (truncated, then junk), and a distribution for another model.
    const good = await readFile(goodDist);
    const truncated = join(tmp, "truncated.ddist");
    await writeFile(truncated, good.subarray(0, Math.floor(good.length / 2)));
    const junk = join(tmp, "junk.ddist");
    await writeFile(junk, Buffer.from("definitely not a distribution"));
    for (const [file, pattern] of [
      [truncated, /truncated\.ddist: .*(not a usable distribution file|not a \.ddist)/],
      [junk, /junk\.ddist: .*(not a usable distribution file|not a \.ddist)/],
      [otherModelDist, /other-model\.ddist: .*wrong model/],
    ]) {
      await page.setInputFiles("#dist-file", file);
      await until(page, problems, () => window.dreamdist.errors.dists, { what: `the refusal of ${file}` });
      const err = await page.evaluate(() => window.dreamdist.errors.dists);
      log(`refused: ${err}`);
      assert.match(err, pattern);
      assert.ok(await page.isVisible("#dists-error"));
      assert.equal(await page.evaluate(() => window.dreamdist.dists.length), 0);
    }
    await shot(page, "inputs-02-ddist");

    // #d= fragments: too large, not base64url, base64url but not deflate, deflate but not a .ddist.
    const cases = [
      ["too large", `#d=${"A".repeat(60 * 1024)}`, /over the 48 KB limit/],
      ["not base64url", "#d=%%%not*base64%%%", /characters that base64url does not use/],
      ["not deflate", `#d=${b64url(Buffer.from("hello, this is not compressed data at all"))}`, /not a compressed distribution/],
      ["not a .ddist", `#d=${b64url(deflateRawSync(Buffer.from("x".repeat(5000))))}`, /not a usable distribution file|not a \.ddist/],
      ["empty", "#d=", /empty/],
    ];
    for (const [what, hash, pattern] of cases) {
      await open(`${base}${hash}`);
      await until(page, problems, () => window.dreamdist.errors.dists, { what: `the #d= refusal (${what})` });
      const err = await page.evaluate(() => window.dreamdist.errors.dists);
      log(`#d= ${what}: ${err}`);
      assert.match(err, /The distribution in this link could not be used/);
      assert.match(err, pattern);
    }
    await shot(page, "inputs-03-fragment");

    // ?dist=: a plain-http address elsewhere is refused without a request; a missing file says so.
    const before = requests.length;
    await open(`${base}&dist=${encodeURIComponent("http://example.com/style.ddist")}`);
    await until(page, problems, () => window.dreamdist.errors.dists, { what: "the ?dist= refusal" });
    assert.match(await page.evaluate(() => window.dreamdist.errors.dists), /only https:\/\//);
    assert.ok(!requests.slice(before).some((r) => new URL(r.url).hostname === "example.com"), "no request to the refused address");
    await open(`${base}&dist=${encodeURIComponent("/no/such/file.ddist")}`);
    await until(page, problems, () => window.dreamdist.errors.dists, { what: "the ?dist= 404" });
    assert.match(await page.evaluate(() => window.dreamdist.errors.dists), /HTTP 404/);

    // The page still works: a good file loads and samples.
    await page.setInputFiles("#dist-file", goodDist);
    await until(page, problems, () => window.dreamdist.dists.length === 1, { what: "the good .ddist" });
    for (const [sel, v] of Object.entries({ "#s-steps": "2", "#s-count": "1", "#s-guidance": "3" })) await page.fill(sel, v);
    await page.click("#sample-go");
    await until(page, problems, () => window.dreamdist.gallery.length === 1 && !window.dreamdist.job, { what: "a sample", timeout: 600000 });
    await shot(page, "inputs-04-still-working");

    assert.deepEqual(foreignRequests(requests, new URL(server.url).origin), []);
    assert.deepEqual(pageErrors(problems), []);
  } finally {
    await context.close();
  }
});

test("hostile model addresses are refused before their shards are fetched, at no cost in memory", { timeout: 600000 }, async () => {
  // Served by the page's own server (same origin, as a mirror would be): target/e2e-hostile/<case>/.
  const { manifest, cases } = await hostileModels(model, join(ROOT, "target/e2e-hostile"));
  const base = `${server.url}?model=${encodeURIComponent(model.url)}&selftest=0&compute=cpu`;
  const { context, page, problems, requests } = await launch("inputs-hostile", { tmpRoot: tmp });
  try {
    await page.goto(base, { waitUntil: "load" });
    await until(page, problems, () => window.dreamdist?.model?.status === "ready" && window.dreamdist.status === "ready", { what: "the model" });
    // The CPU engine's WebAssembly memory (it only grows): what a load made the tab allocate.
    const memory = () => page.evaluate(async () => (await window.dreamdist.debug.call("memory")).inUse);
    const before = await memory();
    for (const c of cases) {
      const mark = requests.length;
      const t0 = Date.now();
      await page.check("input[name=model][value=custom]");
      await page.fill("#model-url", `${server.url}target/e2e-hostile/${c.name}/`);
      await page.selectOption("#model-kind", "manifest");
      await page.click("#model-load");
      await until(page, problems, () => window.dreamdist.model.status === "error", { what: `the refusal of ${c.name}`, timeout: 60000 });
      const err = await page.evaluate(() => window.dreamdist.model.error);
      const grown = (await memory()) - before;
      log(`hostile ${c.name}: refused in ${Date.now() - t0} ms, memory +${(grown / 2 ** 20).toFixed(1)} MiB: ${err}`);
      assert.match(err, c.expect);
      assert.ok((err.match(/weights:/g) ?? []).length <= 1 && !/Some\(|None/.test(err), `a plain message: ${err}`);
      assert.match(await page.textContent("#model-error"), /The model could not be loaded: /);
      const fetched = requests
        .slice(mark)
        .map((r) => new URL(r.url).pathname)
        .filter((p) => p.startsWith(`/target/e2e-hostile/${c.name}/`) && p.endsWith(".bin"))
        .map((p) => p.split("/").pop());
      assert.deepEqual(fetched.filter((f) => !c.allowed.includes(f)), [], `${c.name}: shards fetched before the refusal`);
      assert.ok(grown <= manifest.total_bytes, `${c.name}: the tab's memory grew ${grown} B, more than the model's own ${manifest.total_bytes} B`);
    }
    await shot(page, "inputs-05-hostile-model");
    const names = await page.evaluate(async () => {
      const root = await navigator.storage.getDirectory();
      const dir = await (await root.getDirectoryHandle("dreamdist")).getDirectoryHandle("weights");
      const out = [];
      for await (const name of dir.keys()) out.push(name);
      return out;
    });
    assert.ok(!names.some((n) => n.endsWith(".part")), `no partial shard is left: ${names}`);
    // The page still loads its own model.
    await page.check(`input[name=model][value=${model.id}]`);
    await page.click("#model-load");
    await until(page, problems, () => window.dreamdist.model.status === "ready", { what: "the model again" });
    assert.deepEqual(pageErrors(problems), []);
  } finally {
    await context.close();
  }
});

test("without WebGPU the page explains what to do, keeps working, and computes on the CPU when asked", { timeout: 600000 }, async () => {
  const { context, page, problems } = await launch("inputs-no-webgpu", { webgpu: false, tmpRoot: tmp });
  try {
    await page.goto(`${server.url}?model=${encodeURIComponent(model.url)}`, { waitUntil: "load" });
    await until(page, problems, () => window.dreamdist?.status === "error", { what: "the WebGPU error", timeout: 120000 });
    const st = await page.evaluate(() => window.dreamdist.error);
    assert.ok(["no-adapter", "no-webgpu"].includes(st.kind), JSON.stringify(st));
    const text = await page.innerText("#status-error");
    assert.match(text, /WebGPU/);
    assert.match(text, /Chrome or Edge/);
    assert.match(text, /chrome:\/\/flags/);
    // No engine, but the page still responds: images can be chosen and are checked.
    await page.setInputFiles("#ref-input", refs.map((r) => r.path));
    await until(page, problems, () => window.dreamdist.refs.length === 4, { what: "thumbnails without an engine" });
    assert.ok(await page.isDisabled("#train-start"), "no training without an engine");
    assert.ok(await page.isDisabled("#model-load"));
    await shot(page, "inputs-06-no-webgpu");
    assert.deepEqual(pageErrors(problems), []);

    // The advice offers the CPU: following it, the page works without WebGPU (demo model).
    assert.match(text, /compute on the CPU instead/);
    await Promise.all([page.waitForURL(/compute=cpu/), page.click("#status-error a:has-text('compute on the CPU instead')")]);
    await until(page, problems, () => window.dreamdist?.model?.status === "ready" || window.dreamdist?.model?.status === "error" || window.dreamdist?.status === "error", { what: "the model on the CPU", timeout: 300000 });
    const cpu = await page.evaluate(() => ({ error: window.dreamdist.error, adapter: window.dreamdist.adapter, model: window.dreamdist.model }));
    assert.equal(cpu.model.status, "ready", JSON.stringify({ error: cpu.error, model: cpu.model.error }));
    assert.equal(cpu.adapter.backend, "cpu");
    assert.equal(cpu.adapter.compute, "cpu");
    await page.setInputFiles("#ref-input", refs.map((r) => r.path));
    await until(page, problems, () => window.dreamdist.refs.length === 4, { what: "thumbnails on the CPU engine" });
    assert.ok(!(await page.isDisabled("#train-start")), "training is offered on the CPU engine");
    await shot(page, "inputs-07-no-webgpu-cpu");
    assert.deepEqual(pageErrors(problems), []);
  } finally {
    await context.close();
  }
});
