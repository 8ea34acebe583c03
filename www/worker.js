// dreamdist's engine worker (a dedicated module Web Worker): everything heavy runs here, so the
// page stays responsive. It probes WebGPU, loads the WebAssembly module (../pkg/dreamdist.js,
// built by scripts/build-web.sh), creates the Engine (burn on WebGPU) and runs commands on it.
//
// Protocol (the page side is www/engine-client.js)
// ------------------------------------------------
// page → worker   {id, cmd, args: [...]}      a command; answered by {id, ok: true, result} or
//                                             {id, ok: false, error}. GPU commands run one at a
//                                             time, in order; "control" commands (marked ⚡) run
//                                             at once, between GPU steps.
//   selfTest()                       → SelfTestReport (also sent as the "selfTest" event)
//   loadModel(source)                → ModelInfo; events "modelProgress"
//                                      source: {kind: "manifest", url} | {kind: "diffusers", url, model, quant}
//   modelInfo() / limitsReport() / cacheInfo() / cacheClear() / memory()
//   addDistribution(bytes)           → DistInfo {handle, name, k, m, template, mode, recipe, steps, note}
//   removeDistribution(handle) / distributionBytes(handle) → Uint8Array
//   exportTextualInversion(handle, k) / exportDiffusers(handle, template?) → Uint8Array
//   pca(handle, gamma, n, seed)      → {prompts: [[x,y]], samples: [[x,y]], explained}
//   sample({job, request, params})   → [{width, height, seed, rgb, png}]; events "sampleProgress".
//                                      request: the Engine.sample request; params: the PNG
//                                      "dreamdist" text chunk (the CLI's keys) without gamma/seed.
//   trainEstimate({images, names, config, steps}) → {firstStepMs, msPerStep, memoryBytes, modelBytes}
//   trainStart({images, names, config, checkpoint?, autosaveEvery, preview, paused?}) → the full config;
//                                      training then runs step by step (events "train*") until
//                                      done, paused or cancelled; other commands interleave
//                                      between steps.
//   trainSnapshot()                  → Uint8Array: the distribution learned so far (f16 .ddist)
//   ⚡ trainPause() / ⚡ trainResume() / ⚡ trainCancel() / ⚡ cancel(job)
//   ⚡ probe(url)                    → whether the URL exists (HEAD)
//   debugCrash()                     a deliberate panic inside the engine (tests)
//   ⚡ debugLoseDevice()              destroys the GPU device (tests of "device lost")
//
// worker → page   {event, ...}
//   phase {phase, message}           start-up progress
//   ready {version, adapter}         engine created (adapter: Engine.adapterInfo() + what the
//                                    browser itself says: {browser: {vendor, architecture, features, …}}
//                                    (empty on the CPU) + compute: "webgpu" | "cpu")
//   fatal {error}                    start-up failed
//   selfTest {report, ms} | {error}
//   modelProgress {progress}         loader progress (component, phase, done_bytes, total_bytes,
//                                    component_done, component_total, rate, eta_s)
//   sampleProgress {job, step, steps}
//   train {state: "running"|"paused"|"done"|"cancelled"|"error", step, steps, error?}
//   trainStep {step, loss, denoise, ortho, ms}
//   trainCheckpoint {step, bytes}    at least every `autosaveEvery` steps, on pause and at the end
//   trainPreview {step, images}      every `preview.every` steps
//   trainDone {step, bytes, ms}      the finished distribution (f16 .ddist)
//   crashed {reason, message}        the WebAssembly instance aborted (a Rust panic) or the GPU
//                                    device was lost: this worker is unusable; the page replaces
//                                    it with a new one and restores its state.
// Errors are plain objects {kind, message, detail}; kind is one of
//   "no-webgpu" (navigator.gpu missing), "no-adapter" (requestAdapter() gave nothing),
//   "wasm" (module failed to load), "device" (Engine.create() failed), "command" (a command
//   threw), "cancelled" (a command was cancelled), "crashed" (see above).

// Must run before the WebAssembly module creates its device: it requests `subgroups` and relaxes
// Tint's subgroup-uniformity check for cubecl's tuned kernels (see the module's header).
import { shimReport } from "./webgpu-shim.js";

const WASM_MODULE = "../pkg/dreamdist.js";

// Where the engine computes, from the worker's address (`worker.js?compute=cpu`, set by
// www/engine-client.js): "webgpu" (default) or "cpu" (burn's CPU backend in this worker, for
// machines without a GPU; no WebGPU needed).
const COMPUTE = new URL(self.location.href).searchParams.get("compute") === "cpu" ? "cpu" : "webgpu";

let engine = null;
let wasm = null;
let wasmExports = null;
let crashed = false;
let lastConsoleError = "";

function post(msg, transfer = []) {
  self.postMessage(msg, transfer);
}

function phase(name, message) {
  post({ event: "phase", phase: name, message });
}

class EngineError extends Error {
  constructor(kind, message, detail) {
    super(message);
    this.kind = kind;
    this.detail = detail;
  }
}

function describe(err) {
  if (err instanceof EngineError) return { kind: err.kind, message: err.message, detail: err.detail ?? "" };
  const message = err instanceof Error ? err.message : String(err);
  const kind = /cancel/i.test(message) ? "cancelled" : "command";
  return { kind, message, detail: err instanceof Error && err.stack ? err.stack : "" };
}

// --- crash detection ------------------------------------------------------------------------
// A Rust panic prints through console_error_panic_hook (console.error) and then aborts the
// WebAssembly instance with `RuntimeError: unreachable`. Inside an async export the trap escapes
// as an uncaught error of the worker rather than a rejected promise, so both paths are watched.
const consoleError = console.error.bind(console);
console.error = (...args) => {
  lastConsoleError = args.map(String).join(" ");
  consoleError(...args);
};

function isTrap(err) {
  return (
    (typeof WebAssembly !== "undefined" && err instanceof WebAssembly.RuntimeError) ||
    /unreachable|recursive use of an object|null pointer passed to rust/i.test(String(err?.message ?? err))
  );
}

function crash(reason, message) {
  if (crashed) return;
  // The panic text without the JS stack that console_error_panic_hook appends.
  message = String(message).split(/\n\s*Stack:/)[0].trim().slice(0, 600);
  crashed = true;
  training = null;
  post({ event: "crashed", reason, message });
}

self.addEventListener("error", (ev) => {
  if (isTrap(ev.error ?? ev.message)) {
    ev.preventDefault();
    const panic = lastConsoleError.match(/panicked at[\s\S]*/)?.[0] ?? lastConsoleError;
    crash("panic", panic || String(ev.message));
  }
});
self.addEventListener("unhandledrejection", (ev) => {
  if (isTrap(ev.reason)) {
    ev.preventDefault();
    const panic = lastConsoleError.match(/panicked at[\s\S]*/)?.[0] ?? lastConsoleError;
    crash("panic", panic || String(ev.reason?.message ?? ev.reason));
  }
});

// The GPU device wgpu creates, captured to watch `device.lost` (a driver reset, a GPU process
// crash, or too much memory) and for the tests' debugLoseDevice.
let gpuDevice = null;
function watchDevices() {
  const proto = self.GPUAdapter?.prototype;
  if (!proto || proto.__dreamdistWrapped) return;
  const requestDevice = proto.requestDevice;
  proto.requestDevice = async function (descriptor = {}, ...rest) {
    // The `subgroups` feature and the uniformity diagnostic are added by webgpu-shim.js (which
    // wrapped requestDevice first and runs inside this call).
    const device = await requestDevice.call(this, descriptor, ...rest);
    gpuDevice = device;
    device.lost.then((info) => {
      if (!crashed) crash("device-lost", `the GPU device was lost (${info.reason || "unknown reason"}): ${info.message || "no details"}`);
    });
    return device;
  };
  proto.__dreamdistWrapped = true;
}

/** What the browser itself says about its adapter (wgpu does not report everything). */
async function probeWebGpu() {
  const gpu = self.navigator?.gpu;
  if (!gpu) {
    throw new EngineError(
      "no-webgpu",
      "navigator.gpu is missing in the engine's Web Worker: this browser does not offer WebGPU to workers.",
    );
  }
  let adapter = null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (err) {
    throw new EngineError("no-adapter", `navigator.gpu.requestAdapter() failed: ${err?.message ?? err}`);
  }
  if (!adapter) {
    throw new EngineError("no-adapter", "navigator.gpu.requestAdapter() returned no adapter.");
  }
  const info = adapter.info ?? {};
  return {
    vendor: info.vendor ?? "",
    architecture: info.architecture ?? "",
    device: info.device ?? "",
    description: info.description ?? "",
    isFallbackAdapter: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter),
    features: [...adapter.features].sort(),
  };
}

async function start() {
  let browser = {};
  if (COMPUTE === "webgpu") {
    phase("webgpu", "Looking for a WebGPU adapter…");
    browser = await probeWebGpu();
    watchDevices();
  }

  phase("wasm", "Loading the WebAssembly module…");
  try {
    wasm = await import(WASM_MODULE);
    wasmExports = await wasm.default();
  } catch (err) {
    throw new EngineError(
      "wasm",
      String(err?.message ?? err),
      err?.stack?.includes(err.message) ? err.stack : String(err?.message ?? err),
    );
  }

  phase("device", COMPUTE === "cpu" ? "Starting the CPU engine…" : "Starting the GPU engine…");
  try {
    engine = await wasm.Engine.create({ compute: COMPUTE });
  } catch (err) {
    throw new EngineError("device", String(err?.message ?? err), err?.stack ?? "");
  }
  const adapter = { ...engine.adapterInfo(), browser, shim: shimReport(), compute: COMPUTE };
  let warnings = [];
  try {
    warnings = engine.limitsReport();
  } catch {
    // Older engines.
  }
  post({ event: "ready", version: wasm.version(), adapter, warnings });
}

// GPU work runs one task at a time, in order (the GPU queue and the engine are shared).
let queue = Promise.resolve();
function enqueue(fn) {
  const result = queue.then(() => {
    if (crashed) throw new EngineError("crashed", "the engine stopped (it is being restarted)");
    return fn();
  });
  queue = result.catch(() => {});
  return result;
}

/** Runs an engine call; a trap becomes a "crashed" event as well as an error. */
async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
    if (isTrap(err)) {
      const panic = lastConsoleError.match(/panicked at[\s\S]*/)?.[0] ?? lastConsoleError;
      crash("panic", panic || String(err?.message ?? err));
      throw new EngineError("crashed", "the engine stopped unexpectedly and is being restarted", panic);
    }
    throw err;
  }
}

// --- commands -----------------------------------------------------------------------------

async function selfTest() {
  const t0 = performance.now();
  try {
    const report = await guarded(() => engine.selfTest());
    const ms = performance.now() - t0;
    post({ event: "selfTest", report, ms });
    return { report, ms };
  } catch (err) {
    post({ event: "selfTest", error: describe(err) });
    throw err;
  }
}

let loadCancelled = false;
async function loadModel(source) {
  training = null;
  loadCancelled = false;
  let last = 0;
  let lastComponent = null;
  const info = await guarded(() =>
    engine.loadModel(source, (progress) => {
      const now = performance.now();
      // At most ten a second, but every component's first event passes (a load from the cache
      // takes a fraction of a second, and the page's table lists the components it heard of).
      if (now - last > 100 || progress.phase === "done" || progress.component !== lastComponent) {
        last = now;
        lastComponent = progress.component;
        post({ event: "modelProgress", progress });
      }
      return !loadCancelled;
    }),
  );
  return info;
}

const cancelledJobs = new Set();

function pngParams(params, image, gamma) {
  return { ...params, gamma, seed: image.seed };
}

async function sample({ job, request, params }) {
  const t0 = performance.now();
  const images = await guarded(() =>
    engine.sample(request, (p) => {
      post({ event: "sampleProgress", job, step: p.step, steps: p.steps });
      return !cancelledJobs.has(job);
    }),
  );
  cancelledJobs.delete(job);
  const out = [];
  for (const im of images) {
    const rgb = im.rgb instanceof Uint8Array ? im.rgb : new Uint8Array(im.rgb);
    const png = params ? engine.encodePng(rgb, im.width, im.height, pngParams(params, im, request.gamma)) : null;
    out.push({ width: im.width, height: im.height, seed: im.seed, rgb, png });
  }
  return { images: out, ms: performance.now() - t0 };
}

function bytesArgs(images) {
  return images.map((b) => (b instanceof Uint8Array ? b : new Uint8Array(b)));
}

/** Bytes the engine holds: the GPU memory pool's use, or on the CPU the module's linear memory
 * (which only grows, so it is the peak so far). */
function memoryInUse() {
  return COMPUTE === "cpu" ? (wasmExports?.memory?.buffer.byteLength ?? null) : engine.memoryInUse();
}

async function trainEstimate({ images, names, config, steps = 2 }) {
  if (training && training.state === "running") throw new Error("a training run is in progress; pause or cancel it first");
  training = null;
  const before = memoryInUse() ?? 0;
  await guarded(() => engine.trainStart(bytesArgs(images), names, config));
  const times = [];
  for (let i = 0; i < Math.max(1, steps); i++) {
    const t0 = performance.now();
    await guarded(() => engine.trainStep());
    times.push(performance.now() - t0);
  }
  const memoryBytes = memoryInUse() ?? 0;
  const later = times.slice(1);
  const msPerStep = later.length ? later.reduce((a, b) => a + b, 0) / later.length : times[0];
  return { firstStepMs: times[0], msPerStep, memoryBytes, memoryIncreaseBytes: Math.max(0, memoryBytes - before), steps: times.length };
}

// --- training -----------------------------------------------------------------------------
// One run at a time. `training` is {state, step, steps, autosaveEvery, preview, since, lastSaved}.
let training = null;

function trainEvent(extra = {}) {
  if (!training) return;
  post({ event: "train", state: training.state, step: training.step, steps: training.steps, ...extra });
}

async function trainStart({ images, names, config, checkpoint, autosaveEvery = 25, preview = null, paused = false }) {
  training = null;
  const cfg = await guarded(() => engine.trainStart(bytesArgs(images), names, config));
  let step = 0;
  if (checkpoint) step = await guarded(() => engine.trainRestore(checkpoint instanceof Uint8Array ? checkpoint : new Uint8Array(checkpoint)));
  training = {
    state: paused ? "paused" : "running",
    step,
    steps: Number(cfg.steps),
    autosaveEvery: Math.max(1, Math.min(50, autosaveEvery | 0 || 25)),
    preview,
    lastSaved: step,
    run: Symbol("run"),
  };
  trainEvent();
  if (!paused) drive(training.run);
  return cfg;
}

async function saveCheckpoint() {
  const bytes = await enqueue(() => guarded(() => engine.trainCheckpoint()));
  training.lastSaved = training.step;
  post({ event: "trainCheckpoint", step: training.step, bytes }, [bytes.buffer]);
}

async function runPreview(step) {
  const p = training.preview;
  const info = await enqueue(() => guarded(() => engine.trainDistribution()));
  try {
    const request = { ...p.request, dists: [{ handle: info.handle, weight: 1 }] };
    // A pause lets the preview finish; a cancel stops it.
    const images = await enqueue(() => guarded(() => engine.sample(request, () => Boolean(training) && training.state !== "cancelled")));
    post({ event: "trainPreview", step, images: images.map((im) => ({ width: im.width, height: im.height, seed: im.seed, rgb: new Uint8Array(im.rgb) })) });
  } finally {
    await enqueue(() => engine.removeDistribution(info.handle));
  }
}

/** Steps the run until it is done, paused or cancelled; other commands interleave. */
async function drive(run) {
  try {
    while (training && training.run === run && training.state === "running") {
      if (training.step >= training.steps) break;
      const t0 = performance.now();
      const s = await enqueue(() => guarded(() => engine.trainStep()));
      if (!training || training.run !== run) return;
      training.step = Number(s.step);
      post({ event: "trainStep", step: training.step, loss: s.loss, denoise: s.denoise, ortho: s.ortho, ms: performance.now() - t0 });
      if (training.step - training.lastSaved >= training.autosaveEvery && training.step < training.steps) await saveCheckpoint();
      const p = training.preview;
      if (p && p.every > 0 && training.step % p.every === 0 && training.step < training.steps) {
        try {
          await runPreview(training.step);
        } catch (err) {
          if (crashed) throw err;
          post({ event: "trainPreview", step: training.step, error: describe(err) });
        }
      }
    }
    if (!training || training.run !== run) return;
    if (training.state === "running" && training.step >= training.steps) {
      await saveCheckpoint();
      const t0 = performance.now();
      const info = await enqueue(() => guarded(() => engine.trainDistribution()));
      const bytes = await enqueue(() => guarded(() => engine.distributionBytes(info.handle)));
      await enqueue(() => engine.removeDistribution(info.handle));
      training.state = "done";
      post({ event: "trainDone", step: training.step, bytes, ms: performance.now() - t0 }, [bytes.buffer]);
      trainEvent();
    } else if (training.state === "pausing") {
      if (training.lastSaved !== training.step) await saveCheckpoint();
      if (training?.run !== run) return;
      if (training.state === "pausing") {
        training.state = "paused";
        trainEvent();
      } else if (training.state === "running") {
        drive(run); // resumed while the checkpoint was being written
      }
    }
  } catch (err) {
    if (!training || training.run !== run) return;
    training.state = "error";
    trainEvent({ error: describe(err) });
  }
}

function trainPause() {
  if (training?.state === "running") {
    training.state = "pausing";
    trainEvent();
  }
  return training?.state ?? null;
}

function trainResume() {
  if (training && (training.state === "paused" || training.state === "pausing")) {
    const wasPausing = training.state === "pausing";
    training.state = "running";
    trainEvent();
    if (!wasPausing) drive(training.run);
  }
  return training?.state ?? null;
}

function trainCancel() {
  if (training && training.state !== "done") {
    training.state = "cancelled";
    trainEvent();
    training.run = Symbol("cancelled");
  }
  return training?.state ?? null;
}

async function trainSnapshot() {
  const info = await guarded(() => engine.trainDistribution());
  try {
    return engine.distributionBytes(info.handle);
  } finally {
    engine.removeDistribution(info.handle);
  }
}

function cancel(job) {
  cancelledJobs.add(job);
  if (job === "load") loadCancelled = true;
  return true;
}

const gpuCommands = {
  selfTest,
  loadModel,
  modelInfo: () => engine.modelInfo(),
  limitsReport: () => engine.limitsReport(),
  cacheInfo: () => guarded(() => engine.cacheInfo()),
  cacheClear: () => guarded(() => engine.cacheClear()),
  memory: () => ({ inUse: memoryInUse() }),
  addDistribution: (bytes) => guarded(() => engine.addDistribution(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes))),
  removeDistribution: (handle) => engine.removeDistribution(handle),
  distributionBytes: (handle) => engine.distributionBytes(handle),
  exportTextualInversion: (handle, k) => guarded(() => engine.exportTextualInversion(handle, k)),
  exportDiffusers: (handle, template) => guarded(() => engine.exportDiffusers(handle, template ?? undefined)),
  pca: (handle, gamma, n, seed) => guarded(() => engine.pca(handle, gamma, n, BigInt(seed))),
  sample,
  trainEstimate,
  trainStart,
  trainSnapshot,
  debugCrash: () => guarded(() => engine.debugPanic()),
};

const controlCommands = {
  // Whether a URL exists (a HEAD request from here, so that a missing optional file, such as a
  // model that is not bundled, is logged as the worker's and not as a page error).
  probe: async (url) => {
    try {
      return (await fetch(url, { method: "HEAD", cache: "no-store" })).ok;
    } catch {
      return false;
    }
  },
  trainPause,
  trainResume,
  trainCancel,
  cancel,
  debugLoseDevice: () => {
    if (!gpuDevice) throw new Error(COMPUTE === "cpu" ? "the engine computes on the CPU: there is no GPU device to lose" : "no GPU device captured");
    gpuDevice.destroy();
    return true;
  },
};

const started = start();
started.then(
  () => {},
  (err) => post({ event: "fatal", error: describe(err) }),
);

function transferables(result) {
  const out = [];
  const visit = (v, depth) => {
    if (depth > 4 || !v) return;
    if (v instanceof Uint8Array) {
      if (v.byteOffset === 0 && v.byteLength === v.buffer.byteLength && !out.includes(v.buffer)) out.push(v.buffer);
    } else if (Array.isArray(v)) v.forEach((x) => visit(x, depth + 1));
    else if (typeof v === "object") Object.values(v).forEach((x) => visit(x, depth + 1));
  };
  visit(result, 0);
  return out;
}

self.onmessage = ({ data }) => {
  const { id, cmd, args = [] } = data ?? {};
  let done;
  if (controlCommands[cmd]) {
    done = started.then(() => controlCommands[cmd](...args));
  } else {
    done = enqueue(async () => {
      await started;
      const fn = gpuCommands[cmd];
      if (!fn) throw new Error(`unknown command ${JSON.stringify(cmd)}`);
      return fn(...args);
    });
  }
  done.then(
    (result) => post({ id, ok: true, result }, transferables(result)),
    (err) => post({ id, ok: false, error: describe(err) }),
  );
};
