// The page's side of the engine worker (www/worker.js): start-up events, events such as
// self-test results, and commands with promise replies. New engine features (training,
// generation) become new commands and events here without touching the UI modules.

export class EngineClient {
  /** @param {{onEvent: (msg: object) => void}} handlers */
  constructor({ onEvent }) {
    this.onEvent = onEvent;
    this.pending = new Map();
    this.nextId = 1;
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: "dreamdist-engine" });
    this.worker.addEventListener("message", ({ data }) => this.#receive(data));
    // Fires when the worker script itself cannot load or throws outside a command.
    this.worker.addEventListener("error", (ev) => {
      ev.preventDefault();
      this.#failAll({
        kind: "worker",
        message: "The engine worker stopped unexpectedly.",
        detail: ev.message || "(no details: the worker script may have failed to load)",
      });
    });
    this.worker.addEventListener("messageerror", () => {
      this.#failAll({ kind: "worker", message: "A message from the engine worker could not be read.", detail: "" });
    });
  }

  /** Sends a command; resolves with its result or rejects with an Error carrying `.info`. */
  call(cmd, ...args) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, cmd, args });
    });
  }

  #receive(msg) {
    if (msg && msg.id !== undefined && this.pending.has(msg.id)) {
      const { resolve, reject } = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.ok) resolve(msg.result);
      else reject(Object.assign(new Error(msg.error?.message ?? "command failed"), { info: msg.error }));
      return;
    }
    if (msg && msg.event) this.onEvent(msg);
  }

  #failAll(error) {
    for (const { reject } of this.pending.values()) reject(Object.assign(new Error(error.message), { info: error }));
    this.pending.clear();
    this.onEvent({ event: "fatal", error });
  }
}
