// Worker of tests/e2e/pages/loader.html: owns a dreamdist Engine (WebGPU + OPFS, as the app's
// worker does) and answers {id, cmd, args} with {id, ok, result | error}. Progress of a load is
// summarised (not streamed) so the test can check it: count per phase, the largest done_bytes,
// whether done_bytes ever exceeded total_bytes, and the last event.
// Before the wasm creates its device: request `subgroups` and relax Tint's subgroup-uniformity
// check for cubecl's kernels (see www/webgpu-shim.js).
import "/www/webgpu-shim.js";

const WASM_MODULE = "/pkg/dreamdist.js";

let wasm = null;
let engine = null;

const commands = {
  /** Loads the WebAssembly module and creates the Engine. */
  async create() {
    const t0 = performance.now();
    wasm = await import(WASM_MODULE);
    await wasm.default();
    engine = await wasm.Engine.create();
    return { version: wasm.version(), adapter: engine.adapterInfo(), ms: performance.now() - t0 };
  },

  /** engine.loadModel({kind: "manifest", url}) with a progress summary. */
  async load(url) {
    return loadWith({ kind: "manifest", url });
  },

  /** Direct mode: engine.loadModel({kind: "diffusers", url, model, quant}). */
  async loadDirect(url, model, quant) {
    return loadWith({ kind: "diffusers", url, model, quant });
  },

  async cacheInfo() {
    return engine.cacheInfo();
  },

  async cacheClear() {
    return engine.cacheClear();
  },

  /** navigator.storage.estimate() as the worker sees it. */
  async estimate() {
    const e = await navigator.storage.estimate();
    return { usage: e.usage, quota: e.quota };
  },
};

let queue = Promise.resolve();
self.onmessage = ({ data }) => {
  const { id, cmd, args = [] } = data ?? {};
  const run = queue.then(async () => {
    const fn = commands[cmd];
    if (!fn) throw new Error(`unknown command ${JSON.stringify(cmd)}`);
    if (cmd !== "create" && cmd !== "estimate" && !engine) throw new Error("no engine: call create first");
    return fn(...args);
  });
  queue = run.catch(() => {});
  run.then(
    (result) => self.postMessage({ id, ok: true, result }),
    (err) => self.postMessage({ id, ok: false, error: String(err?.stack ?? err?.message ?? err) }),
  );
};

/** engine.loadModel(source) with a progress summary. */
async function loadWith(source) {
  const t0 = performance.now();
  const progress = { count: 0, phases: {}, maxDone: 0, overTotal: 0, backwards: 0, last: null };
  let prev = 0;
  try {
    const info = await engine.loadModel(source, (p) => {
      progress.count += 1;
      progress.phases[p.phase] = (progress.phases[p.phase] ?? 0) + 1;
      if (p.phase === "convert") return true; // direct mode: {component, tensor, tensors}
      progress.maxDone = Math.max(progress.maxDone, p.done_bytes);
      if (p.done_bytes > p.total_bytes) progress.overTotal += 1;
      if (p.done_bytes < prev) progress.backwards += 1; // a rejected download starts over
      prev = p.done_bytes;
      progress.last = p;
      return true;
    });
    return { ok: true, info, progress, ms: performance.now() - t0 };
  } catch (err) {
    return { ok: false, error: String(err?.message ?? err), progress, ms: performance.now() - t0 };
  }
}
