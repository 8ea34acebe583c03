// Worker of tests/e2e/pages/engine.html: one Engine, commands for the model-level checks.
import "/www/webgpu-shim.js";

let engine = null;

const commands = {
  async create() {
    const wasm = await import("/pkg/dreamdist.js");
    await wasm.default();
    engine = await wasm.Engine.create();
    return engine.adapterInfo();
  },
  async load(url) {
    return engine.loadModel({ kind: "manifest", url }, () => true);
  },
  /** Runs the parity fixtures (fetched from the server) `rounds` times. */
  async parity(ioUrl, rounds) {
    const io = new Uint8Array(await (await fetch(ioUrl)).arrayBuffer());
    const out = [];
    for (let i = 0; i < rounds; i++) {
      const t0 = performance.now();
      out.push({ checks: await engine.parity(io), ms: performance.now() - t0 });
    }
    return out;
  },
  async proof(size, seed) {
    return engine.proof(size, seed);
  },
  async proofTrain(size, seed, k, m, samples) {
    return engine.proofTrain(size, seed, k, m, samples);
  },
};

self.onmessage = async ({ data }) => {
  const { id, cmd, args = [] } = data;
  try {
    self.postMessage({ id, ok: true, result: await commands[cmd](...args) });
  } catch (err) {
    self.postMessage({ id, ok: false, error: String(err?.stack ?? err?.message ?? err) });
  }
};
