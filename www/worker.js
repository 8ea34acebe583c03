// dreamdist's engine worker (a dedicated module Web Worker): everything heavy runs here, so the
// page stays responsive. It probes WebGPU, loads the WebAssembly module (../pkg/dreamdist.js,
// built by scripts/build-web.sh), creates the Engine (burn on WebGPU) and runs the self-test.
//
// Protocol (see www/engine-client.js):
//   worker → page  {event: "phase", phase, message}          progress of start-up
//                  {event: "ready", version, adapter}         engine created
//                  {event: "selfTest", report, ms} | {event: "selfTest", error}
//                                                             a self-test finished (it runs once
//                                                             automatically after "ready", and on
//                                                             every "selfTest" command)
//                  {event: "fatal", error}                    start-up failed (error: see below)
//                  {id, ok: true, result} | {id, ok: false, error}   reply to a command
//   page → worker  {id, cmd, args}                            commands: "selfTest"
// Errors are plain objects {kind, message, detail}; kind is one of
//   "no-webgpu" (navigator.gpu missing), "no-adapter" (requestAdapter() gave nothing),
//   "wasm" (module failed to load), "device" (Engine.create() failed), "command" (a command threw).

const WASM_MODULE = "../pkg/dreamdist.js";

let engine = null;
let wasm = null;

function post(msg) {
  self.postMessage(msg);
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
  return { kind: "command", message, detail: err instanceof Error && err.stack ? err.stack : "" };
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
  phase("webgpu", "Looking for a WebGPU adapter…");
  const browser = await probeWebGpu();

  phase("wasm", "Loading the WebAssembly module…");
  try {
    wasm = await import(WASM_MODULE);
    await wasm.default();
  } catch (err) {
    throw new EngineError(
      "wasm",
      String(err?.message ?? err),
      err?.stack?.includes(err.message) ? err.stack : String(err?.message ?? err),
    );
  }

  phase("device", "Starting the GPU engine…");
  try {
    engine = await wasm.Engine.create();
  } catch (err) {
    throw new EngineError("device", String(err?.message ?? err), err?.stack ?? "");
  }
  const adapter = { ...engine.adapterInfo(), browser };
  post({ event: "ready", version: wasm.version(), adapter });
}

// Commands run one at a time, in order (the GPU queue is shared).
let queue = Promise.resolve();
function enqueue(fn) {
  const result = queue.then(fn);
  queue = result.catch(() => {});
  return result;
}

async function selfTest() {
  const t0 = performance.now();
  try {
    const report = await engine.selfTest();
    const ms = performance.now() - t0;
    post({ event: "selfTest", report, ms });
    return { report, ms };
  } catch (err) {
    post({ event: "selfTest", error: describe(err) });
    throw err;
  }
}

const commands = { selfTest };

const started = start();
started.then(
  () => enqueue(selfTest).catch(() => {}), // the automatic first run; its result goes out as an event
  (err) => post({ event: "fatal", error: describe(err) }),
);

self.onmessage = ({ data }) => {
  const { id, cmd, args = [] } = data ?? {};
  enqueue(async () => {
    await started;
    const fn = commands[cmd];
    if (!fn) throw new Error(`unknown command ${JSON.stringify(cmd)}`);
    return fn(...args);
  }).then(
    (result) => post({ id, ok: true, result }),
    (err) => post({ id, ok: false, error: describe(err) }),
  );
};
