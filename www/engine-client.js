// The page's side of the engine worker (www/worker.js; its header documents the protocol):
// start-up events, progress events, and commands with promise replies.
//
// When the engine crashes (a Rust panic aborts the WebAssembly instance, or the GPU device is
// lost) the worker says "crashed"; this client then terminates it, rejects what was pending,
// starts a fresh worker (a new WebAssembly instance) and reports {event: "restarting"}. The page
// keeps its own state and restores the engine's (model, distributions, training) once the new
// worker is "ready".

export class EngineClient {
  /**
   * @param {{onEvent: (msg: object) => void, compute?: "webgpu"|"cpu"}} options  compute: where
   *   the engine computes (WebGPU, or burn's CPU backend inside the worker)
   */
  constructor({ onEvent, compute = "webgpu" }) {
    this.onEvent = onEvent;
    this.compute = compute === "cpu" ? "cpu" : "webgpu";
    this.pending = new Map();
    this.nextId = 1;
    this.restarts = 0;
    this.#spawn();
  }

  #spawn() {
    const url = new URL("./worker.js", import.meta.url);
    if (this.compute === "cpu") url.searchParams.set("compute", "cpu");
    const worker = new Worker(url, { type: "module", name: "dreamdist-engine" });
    this.worker = worker;
    worker.addEventListener("message", ({ data }) => {
      if (worker === this.worker) this.#receive(data);
    });
    // Fires when the worker script itself cannot load or throws outside a command.
    worker.addEventListener("error", (ev) => {
      ev.preventDefault();
      if (worker !== this.worker) return;
      if (this.ready) {
        this.restart("worker-error", ev.message || "the engine worker stopped");
        return;
      }
      this.#failAll({
        kind: "worker",
        message: "The engine worker stopped unexpectedly.",
        detail: ev.message || "(no details: the worker script may have failed to load)",
      });
    });
    worker.addEventListener("messageerror", () => {
      this.#failAll({ kind: "worker", message: "A message from the engine worker could not be read.", detail: "" });
    });
    this.ready = false;
  }

  /** Sends a command; resolves with its result or rejects with an Error carrying `.info`. */
  call(cmd, ...args) {
    const id = this.nextId++;
    const transfer = [];
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, cmd });
      this.worker.postMessage({ id, cmd, args }, transfer);
    });
  }

  /**
   * Moves the engine to `compute` ("webgpu" or "cpu"): a fresh worker, announced like a
   * restart (reason "compute") so the page restores the model, distributions and training.
   */
  switchCompute(compute) {
    this.compute = compute === "cpu" ? "cpu" : "webgpu";
    this.restart("compute", `switching to ${this.compute === "cpu" ? "the CPU" : "WebGPU"}`);
  }

  /** Replaces the worker with a fresh one (after a crash, or to change where it computes). */
  restart(reason, message) {
    const switching = reason === "compute";
    if (!switching) this.restarts++;
    try {
      this.worker.terminate();
    } catch {
      // Already gone.
    }
    const info = switching
      ? { kind: "cancelled", message: `Cancelled: the engine is ${message}.` }
      : { kind: "crashed", message: `The engine stopped (${message}); it is being restarted.` };
    for (const { reject } of this.pending.values()) reject(Object.assign(new Error(info.message), { info }));
    this.pending.clear();
    this.#spawn();
    this.onEvent({ event: "restarting", reason, message, restarts: this.restarts });
  }

  #receive(msg) {
    if (msg && msg.id !== undefined && this.pending.has(msg.id)) {
      const { resolve, reject } = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.ok) resolve(msg.result);
      else reject(Object.assign(new Error(msg.error?.message ?? "command failed"), { info: msg.error }));
      return;
    }
    if (!msg || !msg.event) return;
    if (msg.event === "ready") this.ready = true;
    if (msg.event === "crashed") {
      this.restart(msg.reason, msg.message);
      return;
    }
    this.onEvent(msg);
  }

  #failAll(error) {
    for (const { reject } of this.pending.values()) reject(Object.assign(new Error(error.message), { info: error }));
    this.pending.clear();
    this.onEvent({ event: "fatal", error });
  }
}
