// The full-size proof in the browser: clamp the device to WebGPU's default limits (128 MiB per
// binding, 256 MiB per buffer), load a converted model from the local server, and run
// dreamdist's proof computation (prompt encoding, one guided UNet step, a VAE decode), or with
// train=1 one training step's loss and gradient.
import { clampLimits, shimReport } from "/www/webgpu-shim.js";

const post = (line) => self.postMessage({ event: "log", line });

self.onmessage = async ({ data: p }) => {
  const out = { ok: false, timings: {} };
  const t = () => performance.now();
  try {
    if (p.clamp !== "0") clampLimits();
    let t0 = t();
    const wasm = await import("/pkg/dreamdist.js");
    const exports = await wasm.default();
    // Linear memory only grows, so its size after a phase is the peak of wasm memory up to there.
    const wasmBytes = () => exports.memory.buffer.byteLength;
    out.wasm_memory_bytes = { start: wasmBytes() };
    const engine = await wasm.Engine.create({ maxBinding: p.clamp !== "0" ? 134217728 : undefined });
    out.timings.engine_ms = t() - t0;
    out.wasm_memory_bytes.engine = wasmBytes();
    out.adapter = engine.adapterInfo();
    out.shim = shimReport();
    out.limits = engine.limitsReport();
    post(`engine ready in ${out.timings.engine_ms.toFixed(0)} ms; binding limit ${out.adapter.maxStorageBufferBindingSize}`);
    t0 = t();
    let last = 0;
    // Where during the load linear memory grows (shard and phase of the progress event that saw it).
    out.wasm_growth = [];
    const info = await engine.loadModel({ kind: "manifest", url: p.model }, (e) => {
      const bytes = wasmBytes();
      const prev = out.wasm_growth.length ? out.wasm_growth[out.wasm_growth.length - 1].bytes : out.wasm_memory_bytes.engine;
      if (bytes > prev) out.wasm_growth.push({ shard: e.shard, phase: e.phase, done_bytes: e.done_bytes, bytes });
      if (t() - last > 5000) {
        last = t();
        post(`loading ${e.component ?? ""} ${e.phase}: ${(e.done_bytes / 1e6).toFixed(0)}/${(e.total_bytes / 1e6).toFixed(0)} MB`);
      }
      return true;
    });
    out.timings.load_ms = t() - t0;
    out.wasm_memory_bytes.loaded = wasmBytes();
    out.model = { id: info.id, identity: info.identity, residentBytes: info.residentBytes, resident: info.resident, report: info.report };
    post(`model loaded in ${out.timings.load_ms.toFixed(0)} ms; resident ${(info.residentBytes / 2 ** 30).toFixed(2)} GiB`);
    if (p.proof !== "0") {
      t0 = t();
      if (p.train === "1") {
        // One training step's loss and raw gradient (dreamdist proof --train).
        post(`training step at ${p.size}² (K=${p.k}, M=${p.m}, S=${p.samples})…`);
        out.train = await engine.proofTrain(Number(p.size ?? 256), Number(p.seed ?? 0), Number(p.k ?? 2), Number(p.m ?? 4), Number(p.samples ?? 1));
      } else {
        out.proof = await engine.proof(Number(p.size ?? 512), Number(p.seed ?? 0));
      }
      out.timings.proof_ms = t() - t0;
      out.wasm_memory_bytes.proof = wasmBytes();
    }
    out.memory_in_use = engine.memoryInUse();
    out.ok = true;
  } catch (err) {
    out.error = String(err?.stack ?? err?.message ?? err);
  }
  self.postMessage(out);
};
