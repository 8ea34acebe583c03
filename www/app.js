// dreamdist's page: owns the state, talks to the engine worker, renders the panels.
//
// The engine (WebAssembly + WebGPU) lives in www/worker.js; this module only reacts to its
// events, so the page never blocks. Each panel has a render function in www/ui/; new panels
// (reference images, training, generation, mixing) follow the same pattern: state fields here,
// a command/event pair in the worker, a www/ui/<panel>.js module.
//
// For tests and debugging the latest state is published as `window.dreamdist`:
//   {status: "loading"|"ready"|"error", adapter, selfTest, error, version, busy, expected, check,
//    runSelfTest(), setExpected(report)}
// A CPU reference for the self-test check can be given as `?expected=<same-origin URL of the
// JSON from "dreamdist selftest --backend cpu --json">`, or with `window.dreamdist.setExpected`.
import { EngineClient } from "./engine-client.js";
import { renderAdapter } from "./ui/adapter.js";
import { h, replace } from "./ui/dom.js";
import { ms } from "./ui/format.js";
import { checkReport, renderSelfTest } from "./ui/selftest.js";
import { StatusView } from "./ui/status.js";

const $ = (sel) => document.querySelector(sel);

const state = {
  status: "loading", // "loading" | "ready" | "error"
  message: "Starting…",
  busy: true, // a task is running in the worker
  since: performance.now(), // start of the running task (for the elapsed-time display)
  version: null,
  adapter: null,
  selfTest: null, // the latest SelfTestReport
  selfTestMs: undefined,
  expected: null, // CPU reference report, when loaded
  expectedSource: null,
  check: null, // result of checking selfTest (see ui/selftest.js)
  error: null, // {kind, message, detail}
};

const view = {
  status: new StatusView($("#status")),
  adapter: $("#adapter-body"),
  selfTest: $("#selftest-body"),
  runButton: $("#selftest-run"),
  version: $("#version"),
};

let client = null;

function render() {
  view.status.render({
    state: state.status === "error" ? "error" : state.busy ? "busy" : state.status,
    message: state.message,
    since: state.busy ? state.since : undefined,
    error: state.error,
  });
  if (state.adapter) renderAdapter(view.adapter, state.adapter);
  else if (state.status === "error") replace(view.adapter, h("p", { class: "muted" }, "No WebGPU adapter in use."));
  if (state.selfTest) {
    state.check = checkReport(state.selfTest, state.expected);
    renderSelfTest(view.selfTest, {
      report: state.selfTest,
      totalMs: state.selfTestMs,
      check: state.check,
      expectedSource: state.expectedSource,
    });
  } else if (state.status === "error") {
    const text = state.adapter ? "No results: the self-test failed (see above)." : "Not available: the engine did not start.";
    replace(view.selfTest, h("p", { class: "muted" }, text));
  }
  view.runButton.disabled = !client || !state.adapter || state.busy;
  view.runButton.setAttribute("aria-busy", String(state.busy && Boolean(state.adapter)));
  view.runButton.textContent = state.busy && state.adapter ? "Running…" : "Run self-test";
  if (state.version) view.version.textContent = `dreamdist ${state.version}`;
  publish();
}

function publish() {
  Object.assign(window.dreamdist, {
    status: state.status,
    message: state.message,
    busy: state.busy,
    version: state.version,
    adapter: state.adapter,
    selfTest: state.selfTest,
    expected: state.expected,
    check: state.check && { mode: state.check.mode, ok: state.check.ok, problems: state.check.problems },
    error: state.error,
  });
}

function fail(error) {
  Object.assign(state, { status: "error", busy: false, error, message: error.message });
  render();
}

function onEvent(msg) {
  switch (msg.event) {
    case "phase":
      state.message = msg.message;
      break;
    case "ready":
      Object.assign(state, {
        version: msg.version,
        adapter: msg.adapter,
        message: "Running the self-test (the first run compiles the GPU shaders)…",
      });
      break;
    case "selfTest":
      if (msg.error) {
        fail({ ...msg.error, kind: msg.error.kind === "command" ? "selftest" : msg.error.kind, message: `The self-test failed: ${msg.error.message}` });
        return;
      }
      Object.assign(state, {
        status: "ready",
        busy: false,
        error: null,
        selfTest: msg.report,
        selfTestMs: msg.ms,
        message: `Ready. Self-test finished in ${ms(msg.ms)}.`,
      });
      break;
    case "fatal":
      fail(msg.error);
      return;
    default:
      return;
  }
  render();
}

async function runSelfTest() {
  if (!client || state.busy) return;
  Object.assign(state, { busy: true, since: performance.now(), message: "Running the self-test…" });
  render();
  try {
    await client.call("selfTest");
  } catch {
    // Reported through the "selfTest" event.
  }
}

function setExpected(report, source = "provided by script") {
  state.expected = report;
  state.expectedSource = source;
  render();
}

async function loadExpectedFromUrl() {
  const param = new URLSearchParams(location.search).get("expected");
  if (!param) return;
  const url = new URL(param, location.href);
  if (url.origin !== location.origin) {
    console.warn("dreamdist: ignoring ?expected= from another origin:", url.href);
    return;
  }
  try {
    const res = await fetch(url);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    setExpected(await res.json(), url.pathname);
  } catch (err) {
    console.warn(`dreamdist: could not load the self-test reference ${url.href}: ${err.message}`);
  }
}

function main() {
  window.dreamdist = { runSelfTest, setExpected };
  view.runButton.addEventListener("click", runSelfTest);
  loadExpectedFromUrl();

  if (!window.isSecureContext) {
    fail({
      kind: "insecure-context",
      message: `This page was opened from ${location.origin || location.protocol}, which browsers do not trust with WebGPU.`,
    });
    return;
  }
  if (!("gpu" in navigator) || !navigator.gpu) {
    fail({ kind: "no-webgpu", message: "navigator.gpu is missing: this browser has no WebGPU support (or it is turned off)." });
    return;
  }
  try {
    client = new EngineClient({ onEvent });
  } catch (err) {
    fail({ kind: "worker", message: "The engine worker could not be started.", detail: String(err?.message ?? err) });
    return;
  }
  render();
}

main();
