// Test data made with the native CLI: the model the app tests run on (the bundled demo model
// when assets/demo/ exists, else the tiny fixture model converted once into
// target/e2e-models/tiny-q8/), reference images from the demo world (`dreamdist demo-data`,
// written as PNGs), and the attribute reader (`dreamdist demo-read`).
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, link, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

import { BIN, log, ROOT } from "./browser.mjs";
import { encodePng } from "./png.mjs";
import { readSafetensors, writeSafetensors } from "./safetensors.mjs";

export const run = promisify(execFile);
export const cli = (args, opts = {}) => run(BIN, args, { maxBuffer: 256 << 20, timeout: 1200000, ...opts });

/**
 * The model under test: {id, url (relative to the server root), dir, native}. `want` "tiny"
 * picks the tiny fixture model even when the demo model is bundled (E2E_MODEL=tiny does it for
 * every test).
 */
export async function testModel(want = process.env.E2E_MODEL) {
  if (want !== "tiny" && existsSync(join(ROOT, "assets/demo/manifest.json"))) {
    return { id: "demo", url: "assets/demo/", dir: join(ROOT, "assets/demo"), native: 32 };
  }
  const rel = "target/e2e-models/tiny-q8";
  const dir = join(ROOT, rel);
  if (!existsSync(join(dir, "manifest.json"))) {
    // Converted beside it and renamed into place: test files run two at a time, and one may
    // find the other's conversion half-written otherwise.
    log(`converting the tiny fixture model into ${rel}`);
    const part = `${dir}.part-${process.pid}`;
    await rm(part, { recursive: true, force: true });
    await mkdir(part, { recursive: true });
    await cli(["convert", "--from", join(ROOT, "tests/fixtures/tiny"), "--model", "tiny", "--quant", "q8", "--out", part]);
    if (!existsSync(join(dir, "manifest.json"))) {
      await rm(dir, { recursive: true, force: true });
      await rename(part, dir);
    } else {
      await rm(part, { recursive: true, force: true });
    }
  }
  return { id: "tiny", url: `${rel}/`, dir, native: 16 };
}

/** Nearest-neighbour upscale of RGB bytes by an integer factor. */
export function upscale(rgb, side, factor) {
  const s = side * factor;
  const out = Buffer.alloc(s * s * 3);
  for (let y = 0; y < s; y++) {
    for (let x = 0; x < s; x++) {
      const src = ((Math.floor(y / factor) * side + Math.floor(x / factor)) * 3) | 0;
      rgb.copy(out, (y * s + x) * 3, src, src + 3);
    }
  }
  return out;
}

/**
 * Demo-world scenes as reference PNGs (upscaled ×2 to 64 px: the page refuses images under
 * 64 px). `filter(attrs)` picks scenes by their attribute ids [shape, color, size, position,
 * background]. Returns [{name, path, rgb32, attrs}].
 */
export async function demoReferences(dir, { n = 4, seed = 11, pool = 400, filter = () => true } = {}) {
  await mkdir(dir, { recursive: true });
  // The data set goes next to the folder: the folder holds only images (the CLI reads it whole).
  const file = join(dirname(dir), `demo-${seed}-${pool}.safetensors`);
  if (!existsSync(file)) await cli(["demo-data", "--n", String(pool), "--seed", String(seed), "--out", file]);
  const st = readSafetensors(await readFile(file));
  const images = st.tensors.images.data;
  const attrs = st.tensors.attrs.data;
  const out = [];
  for (let i = 0; i < pool && out.length < n; i++) {
    const a = [...attrs.subarray(i * 5, i * 5 + 5)];
    if (!filter(a)) continue;
    const rgb32 = Buffer.from(images.subarray(i * 32 * 32 * 3, (i + 1) * 32 * 32 * 3));
    const name = `ref-${seed}-${i}.png`;
    const path = join(dir, name);
    await writeFile(path, encodePng(upscale(rgb32, 32, 2), 64, 64));
    out.push({ name, path, rgb32, attrs: a });
  }
  if (out.length < n) throw new Error(`only ${out.length} demo scenes matched the filter in a pool of ${pool}`);
  return { refs: out, names: JSON.parse(st.metadata["dreamdist-demo"]).attributes };
}

/** Attribute readings of 32×32 RGB images (via `dreamdist demo-read`). */
export async function readAttributes(dir, images) {
  const data = Buffer.concat(images.map((im) => Buffer.from(im)));
  const file = join(dir, `read-${Date.now()}.safetensors`);
  await writeFile(file, writeSafetensors({ images: { dtype: "U8", shape: [images.length, 32, 32, 3], data } }));
  const { stdout } = await cli(["demo-read", "--images", file]);
  return JSON.parse(stdout);
}

/**
 * Hostile copies of `model` (from testModel) for the custom-address field, written under `root`
 * (served by the page server): {manifest, cases: [{name, expect (the refusal), allowed (shard
 * files the load may fetch before refusing)}]}.
 * - huge: a 2 GiB tensor the model never asked for, its 32 parts in 32 declared 64 MiB shards
 *   that all name one real file's hash (hard links: 64 MiB on disk);
 * - missing: one tensor left out;
 * - identity: the manifest claims another model's identity.
 */
export async function hostileModels(model, root) {
  const manifest = JSON.parse(await readFile(join(model.dir, "manifest.json"), "utf8"));
  const SHARD = 64 << 20;
  const cases = [];
  const write = async (name, m, extra = async () => {}) => {
    const dir = join(root, name);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    for (const s of manifest.shards) await copyFile(join(model.dir, s.file), join(dir, s.file));
    await extra(dir);
    await writeFile(join(dir, "manifest.json"), JSON.stringify(m));
    return dir;
  };
  const clone = () => JSON.parse(JSON.stringify(manifest));

  const huge = clone();
  const zeros = Buffer.alloc(SHARD);
  const sha = createHash("sha256").update(zeros).digest("hex");
  const first = huge.shards.length;
  for (let i = 0; i < 32; i++) huge.shards.push({ file: `unet-huge-${String(i).padStart(2, "0")}.bin`, sha256: sha, bytes: SHARD, component: "unet" });
  huge.tensors.push({ name: "unet/huge", shape: [1 << 14, 1 << 15], storage: "f32", layout: "plain", parts: Array.from({ length: 32 }, (_, i) => ({ shard: first + i, offset: 0, length: SHARD })) });
  huge.total_bytes += 32 * SHARD;
  await write("huge", huge, async (dir) => {
    await writeFile(join(dir, "unet-huge-00.bin"), zeros);
    for (let i = 1; i < 32; i++) await link(join(dir, "unet-huge-00.bin"), join(dir, `unet-huge-${String(i).padStart(2, "0")}.bin`));
  });
  cases.push({ name: "huge", expect: /unet\/huge is not a parameter of the model/, allowed: [] });

  const missing = clone();
  const [gone] = missing.tensors.splice(7, 1);
  await write("missing", missing);
  cases.push({ name: "missing", expect: new RegExp(`${gone.name.replace(/[.]/g, "\\.")} is missing`), allowed: [] });

  const identity = clone();
  const claimed = "cd".repeat(32);
  identity.identity.text_encoder = claimed;
  await write("identity", identity);
  cases.push({
    name: "identity",
    expect: new RegExp(`identity ${claimed}, but the token embedding it holds has the identity ${manifest.identity.text_encoder}`),
    allowed: manifest.shards.filter((s) => s.component === "text_encoder").map((s) => s.file),
  });
  return { manifest, cases };
}
