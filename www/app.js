// dreamdist's page: owns the state, talks to the engine worker, renders the panels.
//
// The engine (WebAssembly + WebGPU) lives in www/worker.js (its header documents the
// command/event protocol); this module keeps everything the user made (reference images,
// settings, distributions as .ddist bytes, images) so that a crashed engine can be replaced
// without losing any of it. Each panel is a www/ui/<panel>.js module with a render(state).
//
// URL parameters: ?model=<URL of a converted model directory> (pick a model, e.g. in tests),
// ?dist=<https URL of a .ddist> (load a hosted distribution), #d=<data> (a distribution inside
// the link), ?selftest=0|1 (skip / force the automatic GPU self-test), ?expected=<same-origin
// URL> (CPU reference for the self-test).
//
// For tests and debugging the state is published as `window.dreamdist` (see publish()).
import { MODELS, PAGE_FALLBACK, SAMPLE_DEFAULTS } from "./config.js";
import { EngineClient } from "./engine-client.js";
import { autosave } from "./lib/autosave.js";
import { checkImageFile, LIMITS, sniff } from "./lib/imageinfo.js";
import { library, sha256 } from "./lib/library.js";
import { checkDistUrl, decodeFragment, encodeFragment, fetchDist, MAX_DIST_BYTES, ShareError } from "./lib/share.js";
import { ZipWriter } from "./lib/zip.js";
import { renderAdapter } from "./ui/adapter.js";
import { mountDistributions } from "./ui/distributions.js";
import { h, replace } from "./ui/dom.js";
import { ms } from "./ui/format.js";
import { download, slug } from "./ui/images.js";
import { mountLearn } from "./ui/learn.js";
import { mountMix } from "./ui/mix.js";
import { mountModel } from "./ui/model.js";
import { mountReferences } from "./ui/references.js";
import { mountSample } from "./ui/sample.js";
import { checkReport, renderSelfTest } from "./ui/selftest.js";
import { StatusView } from "./ui/status.js";
import { mountTrain } from "./ui/train.js";

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);

// Where the engine computes: `?compute=cpu|webgpu` in the address, else the last choice made
// under Diagnostics → Compute on, else WebGPU.
const COMPUTE_KEY = "dreamdist.compute";
function initialCompute() {
  const p = params.get("compute");
  if (p === "cpu" || p === "webgpu") return p;
  try {
    return localStorage.getItem(COMPUTE_KEY) === "cpu" ? "cpu" : "webgpu";
  } catch {
    return "webgpu";
  }
}

const state = {
  status: "loading", // "loading" | "ready" | "error" (the engine)
  message: "Starting…",
  busy: true,
  since: performance.now(),
  version: null,
  adapter: null,
  warnings: [],
  selfTest: null,
  selfTestMs: undefined,
  expected: null,
  expectedSource: null,
  check: null,
  error: null,
  engineReady: false,
  restarts: [],
  restartNote: null,
  probes: { demo: undefined, fallback: undefined },
  model: { choice: null, label: "", source: null, status: "idle", components: {}, events: [], info: null, error: null, loadMs: null, fromCache: false, readyAt: null },
  storage: null,
  refs: [],
  refErrors: [],
  train: { state: "idle", step: 0, steps: 0, losses: [], stepMs: [], previews: [], error: null, estimate: null, estimating: false, savedStep: null },
  trainRequest: null,
  lastCheckpoint: null,
  resumeOffer: null,
  dists: [],
  activeId: null,
  shareLink: null,
  gallery: [],
  sweep: null,
  mixWeights: {},
  mixGallery: [],
  strip: null,
  pca: null,
  promptImages: [],
  job: null,
  lastDataset: null,
  notes: {},
  errors: {},
  network: [],
  v: { refs: 0, dists: 0, gallery: 0, sweep: 0, mixGallery: 0, strip: 0, losses: 0, previews: 0, pca: 0, prompts: 0 },
};

const bump = (...keys) => keys.forEach((k) => state.v[k]++);
let client = null;
let seq = 0;
const uid = (p) => `${p}${++seq}`;

// --- rendering -------------------------------------------------------------------------------

const view = {
  status: new StatusView($("#status")),
  adapter: $("#adapter-body"),
  selfTest: $("#selftest-body"),
  runButton: $("#selftest-run"),
  compute: $("#compute"),
  version: $("#version"),
};

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    renderNow();
  });
}

function renderNow() {
  view.status.render({
    state: state.status === "error" ? "error" : state.busy ? "busy" : state.status,
    message: state.message,
    since: state.busy ? state.since : undefined,
    error: state.error,
  });
  const warn = $("#status-warnings");
  warn.hidden = state.warnings.length === 0;
  // A software WebGPU adapter: offer the CPU engine in one click (much faster there).
  const emulated = state.adapter?.backend === "wgpu" && state.adapter?.deviceType === "Cpu" && state.engineReady;
  replace(
    warn,
    state.warnings.map((w) => h("li", {}, w)),
    emulated
      ? h("li", { class: "warning-action" }, h("button", { id: "use-cpu", type: "button", class: "button", onclick: () => switchCompute("cpu") }, "Compute on the CPU instead"))
      : null,
  );
  view.compute.value = client?.compute ?? initialCompute();
  view.compute.disabled = Boolean(state.job) || ["starting", "running", "pausing"].includes(state.train.state);
  if (state.adapter) renderAdapter(view.adapter, state.adapter);
  else if (state.status === "error") replace(view.adapter, h("p", { class: "muted" }, "No WebGPU adapter in use."));
  if (state.selfTest) {
    state.check = checkReport(state.selfTest, state.expected);
    renderSelfTest(view.selfTest, { report: state.selfTest, totalMs: state.selfTestMs, check: state.check, expectedSource: state.expectedSource });
    if (!state.check.ok) $("#diag-panel").open = true;
  } else if (state.status === "error") {
    const text = state.adapter ? "No results: the self-test failed (see above)." : "Not available: the engine did not start.";
    replace(view.selfTest, h("p", { class: "muted" }, text));
  }
  const selfTesting = state.job?.kind === "selftest";
  view.runButton.disabled = !client || !state.engineReady || Boolean(state.job);
  view.runButton.setAttribute("aria-busy", String(selfTesting));
  view.runButton.textContent = selfTesting ? "Running…" : "Run self-test";
  if (state.version) view.version.textContent = `dreamdist ${state.version}`;
  renderResume();
  for (const panel of Object.values(panels)) panel.render(state);
  publish();
}

function renderResume() {
  const r = state.resumeOffer;
  $("#resume-banner").hidden = !r;
  if (!r) return;
  const ago = Math.max(0, Math.round((Date.now() - r.savedAt) / 60000));
  $("#resume-text").textContent =
    `“${r.settings?.config?.name ?? "A distribution"}” was being trained on ${r.images.length} images and stopped at step ${r.step} of ${r.steps} ` +
    `(saved ${ago < 1 ? "less than a minute" : `${ago} minute${ago === 1 ? "" : "s"}`} ago, with ${r.model?.label ?? "a model"}). Resume it from there?`;
}

function publish() {
  const d = window.dreamdist;
  Object.assign(d, {
    status: state.status,
    message: state.message,
    busy: state.busy,
    version: state.version,
    adapter: state.adapter,
    warnings: state.warnings,
    selfTest: state.selfTest,
    expected: state.expected,
    check: state.check && { mode: state.check.mode, ok: state.check.ok, problems: state.check.problems },
    error: state.error,
    engineReady: state.engineReady,
    restarts: state.restarts.length,
    restartNote: state.restartNote,
    model: { status: state.model.status, choice: state.model.choice, label: state.model.label, info: state.model.info, error: state.model.error, loadMs: state.model.loadMs, readyAt: state.model.readyAt, fromCache: state.model.fromCache, events: state.model.events, components: state.model.components },
    refs: state.refs.map((r) => ({ name: r.name, width: r.width, height: r.height, bytes: r.bytes.length })),
    refErrors: state.refErrors,
    train: { state: state.train.state, step: state.train.step, steps: state.train.steps, losses: state.train.losses.length, lastLoss: state.train.losses.at(-1)?.loss ?? null, error: state.train.error, estimate: state.train.estimate, savedStep: state.train.savedStep, previews: state.train.previews.length },
    resumeOffer: state.resumeOffer && { step: state.resumeOffer.step, steps: state.resumeOffer.steps },
    dists: state.dists.map((x) => ({ id: x.id, name: x.name, handle: x.handle, source: x.source, info: x.info, problem: x.problem ?? null, bytes: x.bytes.length })),
    activeId: state.activeId,
    gallery: state.gallery.map((g) => ({ seed: g.seed, gamma: g.gamma, width: g.width, height: g.height, template: g.template, dist: g.dist })),
    sweep: state.sweep && { rows: state.sweep.rows, cols: state.sweep.cols, done: state.sweep.cells.flat().filter(Boolean).length },
    mixGallery: state.mixGallery.length,
    strip: state.strip && { rows: state.strip.rows, cols: state.strip.cols, done: state.strip.cells.flat().filter(Boolean).length },
    pca: state.pca,
    promptImages: state.promptImages.length,
    job: state.job && { kind: state.job.kind, done: state.job.done, total: state.job.total },
    lastDataset: state.lastDataset,
    notes: state.notes,
    errors: state.errors,
    shareLink: state.shareLink,
    storage: state.storage,
  });
}

// --- small helpers ---------------------------------------------------------------------------

function note(panel, text) {
  state.notes = { ...state.notes, [panel]: text };
  render();
}

function setError(panel, text) {
  state.errors = { ...state.errors, [panel]: text };
  render();
}

function reason(err) {
  return String(err?.info?.message ?? err?.message ?? err).replace(/^Error: /, "");
}

function modelOptions() {
  const out = [];
  const fromUrl = params.get("model");
  if (fromUrl) out.push({ id: "url", label: "Model from the link", detail: fromUrl, source: { kind: "manifest", url: fromUrl } });
  for (const m of MODELS) {
    if (m.bundled) {
      if (state.probes.demo === false && state.probes.fallback) {
        out.push({ ...PAGE_FALLBACK, bundled: true });
        continue;
      }
      out.push({
        ...m,
        available: state.probes.demo !== false,
        unavailable: "Not bundled with this build of the page (assets/demo/ is missing).",
      });
    } else {
      out.push({ ...m, available: Boolean(m.source.url), unavailable: "Not offered by this site (its weights address is not configured); use “Another model”." });
    }
  }
  return out;
}

/** Whether a model directory exists (asked by the worker: see its `probe` command). */
async function probe(url) {
  try {
    return await client.call("probe", new URL("manifest.json", new URL(url, location.href)).href);
  } catch {
    return false;
  }
}

// --- engine events ---------------------------------------------------------------------------

let firstReady = true;
let wasTraining = null;

function onEvent(msg) {
  switch (msg.event) {
    case "phase":
      state.message = msg.message;
      break;
    case "ready":
      Object.assign(state, { version: msg.version, adapter: msg.adapter, warnings: msg.warnings ?? [], engineReady: true });
      if (firstReady) {
        firstReady = false;
        afterReady();
      } else {
        restoreAfterRestart();
      }
      break;
    case "selfTest":
      if (msg.error) {
        // The engine works well enough to report, but its GPU results cannot be trusted.
        $("#diag-panel").open = true;
        Object.assign(state, {
          status: "error",
          error: { ...msg.error, kind: msg.error.kind === "command" ? "selftest" : msg.error.kind, message: `The self-test failed: ${msg.error.message}` },
        });
        break;
      }
      Object.assign(state, { selfTest: msg.report, selfTestMs: msg.ms });
      break;
    case "modelProgress": {
      const p = msg.progress;
      if (state.model.events.length < 500) state.model.events.push({ t: Math.round(performance.now()), component: p.component, phase: p.phase, done: p.done_bytes, total: p.total_bytes });
      if (p.component) {
        state.model.components = {
          ...state.model.components,
          [p.component]: { component: p.component, done: p.component_done, total: p.component_total, rate: p.rate, eta: p.eta_s, phase: p.phase },
        };
      }
      break;
    }
    case "sampleProgress":
      if (state.job && state.job.id === msg.job) Object.assign(state.job, { step: msg.step, steps: msg.steps });
      break;
    case "train":
      onTrainState(msg);
      break;
    case "trainStep":
      state.train.step = msg.step;
      state.train.losses.push({ step: msg.step, loss: msg.loss, denoise: msg.denoise, ortho: msg.ortho });
      state.train.stepMs.push(msg.ms);
      bump("losses");
      break;
    case "trainCheckpoint":
      state.lastCheckpoint = { step: msg.step, bytes: msg.bytes };
      persist(async () => {
        await autosave.checkpoint(msg.step, msg.bytes);
        if (autosave.session) state.train.savedStep = msg.step;
        render();
      });
      break;
    case "trainPreview":
      if (msg.images) {
        state.train.previews.push({ step: msg.step, images: msg.images });
        bump("previews");
      }
      break;
    case "trainDone":
      onTrainDone(msg);
      break;
    case "restarting":
      onRestarting(msg);
      break;
    case "fatal":
      fail(msg.error);
      return;
    default:
      return;
  }
  render();
}

// Autosave writes happen one after another, in the order they were asked for.
let saveChain = Promise.resolve();
function persist(fn) {
  saveChain = saveChain.then(fn).catch((err) => console.warn("dreamdist: autosave failed:", err));
  return saveChain;
}

function fail(error) {
  Object.assign(state, { status: "error", busy: false, error, message: error.message, engineReady: false });
  render();
}

async function afterReady() {
  state.message = "Engine ready.";
  render();
  // Which bundled model exists (skipped when the address names one: no needless requests).
  if (params.get("model")) state.probes = { demo: true, fallback: false };
  else {
    const demo = await probe(MODELS[0].source.url);
    state.probes = { demo, fallback: demo ? false : await probe(PAGE_FALLBACK.source.url) };
  }
  const options = modelOptions();
  const remembered = (() => {
    try {
      return JSON.parse(localStorage.getItem("dreamdist.model") ?? "null");
    } catch {
      return null;
    }
  })();
  let choice = options.find((o) => o.id === "url") ?? options.find((o) => o.bundled && o.available !== false);
  if (!params.get("model") && remembered) {
    const again = options.find((o) => o.id === remembered.id && o.available !== false);
    if (again) choice = again;
  }
  if (choice) await loadModel(choice, { initial: true });
  else {
    state.model.choice = null;
    state.model.error = "no model is bundled with this build of the page: choose “Another model” and give its address (a converted model or a diffusers repository).";
  }
  state.status = "ready";
  state.busy = false;
  state.message = state.model.status === "ready" ? "Ready." : "Ready (no model loaded).";
  render();
  if (state.model.status === "ready") {
    await restoreLibrary();
    await handleLinks();
  }
  await offerResume();
  const want = params.get("selftest");
  const key = `dreamdist.selftest.${state.version}.${state.adapter?.name}`;
  if (want === "1" || (want !== "0" && !localStorage.getItem(key))) {
    const report = await runSelfTest();
    if (report && checkReport(report, null).ok) localStorage.setItem(key, new Date().toISOString());
  }
}

let switching = null;

function onRestarting(msg) {
  if (msg.reason === "compute") {
    switching = msg.message;
    state.engineReady = false;
    // Measured on the other engine: no longer says anything about this one.
    state.train.estimate = null;
    state.adapter = null;
    state.warnings = [];
    state.selfTest = null;
    state.busy = true;
    state.since = performance.now();
    state.message = `The engine is ${msg.message}. Your images, settings and distributions are kept.`;
    return;
  }
  const now = Date.now();
  state.restarts = [...state.restarts.filter((t) => now - t < 120000), now];
  state.engineReady = false;
  state.job = null;
  const t = state.train;
  if (["starting", "running", "pausing", "paused"].includes(t.state)) {
    wasTraining = { step: t.step };
    t.state = "paused";
  }
  const what = msg.reason === "device-lost" ? "the GPU device was lost" : "the engine crashed";
  if (state.restarts.length > 3) {
    fail({ kind: "crashed", message: `The engine stopped ${state.restarts.length} times in two minutes (${what}: ${msg.message}). Reload the page to try again; your distributions are in the list, download them first.` });
    return;
  }
  state.restartNote = `${what}: ${msg.message}`;
  state.busy = true;
  state.since = performance.now();
  state.message = `The engine stopped (${what}) and is restarting. Your images, settings and distributions are kept.`;
}

async function restoreAfterRestart() {
  state.message = "Engine restarted. Reloading the model…";
  render();
  if (state.model.source) await loadModel({ id: state.model.choice, label: state.model.label, source: state.model.source }, { restore: true });
  let trainNote = "";
  if (wasTraining && state.trainRequest && state.model.status === "ready") {
    const cp = state.lastCheckpoint;
    try {
      await client.call("trainStart", { ...state.trainRequest, checkpoint: cp?.bytes ?? null, paused: true });
      trainNote = ` Training is paused at step ${cp?.step ?? 0}; press Resume to continue.`;
      state.train.step = cp?.step ?? 0;
    } catch (err) {
      state.train.state = "error";
      state.train.error = `Training could not be restored after the restart: ${reason(err)}`;
    }
  }
  wasTraining = null;
  state.busy = false;
  state.message = switching
    ? `The engine now computes on ${client.compute === "cpu" ? "the CPU (WebAssembly)" : "the GPU (WebGPU)"}.${state.model.status === "ready" ? " The model and your distributions were restored." : ""}${trainNote}`
    : `The engine was restarted after a failure (${state.restartNote}). Everything was restored.${trainNote}`;
  switching = null;
  render();
}

/** Diagnostics → Compute on: remembers the choice and moves the engine (or, when it never
 * started, e.g. without WebGPU, reloads the page with the choice in its address). */
function switchCompute(compute) {
  try {
    localStorage.setItem(COMPUTE_KEY, compute);
  } catch {
    // Private mode: the address below still carries it.
  }
  if (!client || !state.engineReady) {
    const url = new URL(location.href);
    url.searchParams.set("compute", compute);
    location.assign(url.href);
    return;
  }
  if (client.compute === compute) return;
  const t = state.train;
  if (["starting", "running", "pausing", "paused"].includes(t.state)) wasTraining = { step: t.step };
  if (wasTraining) t.state = "paused";
  state.job = null;
  client.switchCompute(compute);
}

// --- model -----------------------------------------------------------------------------------

async function loadModel(option, { initial = false, restore = false } = {}) {
  if (!option) return;
  if (!restore && ["starting", "running", "pausing"].includes(state.train.state)) {
    state.model.error = "a training run is in progress: pause or cancel it before switching models.";
    render();
    return;
  }
  let source = option.source;
  if (!source?.url) {
    state.model = { ...state.model, status: "error", error: option.id === "custom" ? "give the model's web address." : "this model's address is not configured on this site." };
    render();
    return;
  }
  try {
    const url = new URL(source.url, location.href);
    if (!["http:", "https:"].includes(url.protocol)) throw new Error(`${url.protocol} addresses are not supported`);
    source = { ...source, url: url.href };
  } catch (err) {
    state.model = { ...state.model, status: "error", error: `“${source.url}” is not a usable web address (${err.message}).` };
    render();
    return;
  }
  const previous = state.model.info;
  state.model = { ...state.model, choice: option.id, label: option.label, source: option.source, status: "loading", components: {}, events: [{ t: Math.round(performance.now()), phase: "start" }], error: null };
  if (!initial && !restore) {
    state.busy = true;
    state.since = performance.now();
  }
  render();
  const t0 = performance.now();
  try {
    const info = await client.call("loadModel", source);
    const loadMs = performance.now() - t0;
    const components = Object.fromEntries(Object.entries(state.model.components).map(([k, c]) => [k, { ...c, done: c.total, phase: "done" }]));
    state.model = {
      ...state.model,
      components,
      status: "ready",
      info,
      loadMs,
      readyAt: performance.now(),
      fromCache: Boolean(info.report && info.report.downloaded === 0 && info.report.shards > 0),
    };
    if (!restore) {
      try {
        localStorage.setItem("dreamdist.model", JSON.stringify({ id: option.id }));
      } catch {
        // Private mode.
      }
    }
    if (!restore && (!previous || previous.id !== info.id)) applyModelDefaults(info);
    await registerDistributions();
    refreshStorage();
  } catch (err) {
    state.model = { ...state.model, status: "error", info: null, error: reason(err) };
    // A failed or cancelled download can leave part of the model (and an unfinished shard) cached.
    refreshStorage();
  }
  if (!initial && !restore) {
    state.busy = false;
    state.message = state.model.status === "ready" ? "Ready." : "The model could not be loaded.";
  }
  render();
}

function applyModelDefaults(info) {
  const res = info.nativeResolution;
  document.getElementById("t-resolution").value = res;
  document.getElementById("t-resolution").step = info.sizeMultiple;
  const d = SAMPLE_DEFAULTS[info.id] ?? SAMPLE_DEFAULTS["sd21-base"];
  panels.sample.write({ size: res, steps: d.steps, guidance: d.guidance });
  document.getElementById("s-size").step = info.sizeMultiple;
}

async function refreshStorage() {
  try {
    state.storage = await client.call("cacheInfo");
  } catch {
    state.storage = null;
  }
  render();
}

/** (Re-)registers every distribution with the engine (after a model load or a restart). */
async function registerDistributions() {
  // Forget the old handles first (all of them: handles are indices into the engine's list).
  for (const d of state.dists) if (d.handle !== null) await client.call("removeDistribution", d.handle).catch(() => {});
  for (const d of state.dists) {
    try {
      const info = await client.call("addDistribution", d.bytes);
      Object.assign(d, { info, handle: info.handle, problem: null });
    } catch (err) {
      Object.assign(d, { handle: null, problem: reason(err) });
    }
  }
  if (!state.dists.some((d) => d.id === state.activeId && d.handle !== null)) state.activeId = state.dists.find((d) => d.handle !== null)?.id ?? null;
  bump("dists");
}

// --- reference images ------------------------------------------------------------------------

async function addImages(files) {
  const errors = [];
  for (const file of files) {
    if (state.refs.length >= LIMITS.maxImages) {
      errors.push({ name: file.name, reason: `at most ${LIMITS.maxImages} images can be used; remove some first` });
      continue;
    }
    const check = await checkImageFile(file);
    if (!check.ok) {
      errors.push({ name: file.name, reason: check.reason });
      continue;
    }
    if (state.refs.some((r) => r.name === file.name && r.bytes.length === file.size)) {
      errors.push({ name: file.name, reason: "already added" });
      continue;
    }
    if (check.width * check.height <= 24e6) {
      try {
        (await createImageBitmap(file)).close();
      } catch {
        errors.push({ name: file.name, reason: `a ${check.type.toUpperCase()} file that cannot be decoded (damaged?)` });
        continue;
      }
    }
    const bytes = new Uint8Array(await file.arrayBuffer());
    state.refs.push({ id: uid("r"), name: file.name, type: file.type || `image/${check.type}`, bytes, url: URL.createObjectURL(file), width: check.width, height: check.height });
  }
  state.refErrors = errors;
  state.train.estimate = null;
  bump("refs");
  render();
}

function removeImage(id) {
  const r = state.refs.find((x) => x.id === id);
  if (r) URL.revokeObjectURL(r.url);
  state.refs = state.refs.filter((x) => x.id !== id);
  state.train.estimate = null;
  bump("refs");
  render();
  document.getElementById("ref-input")?.focus();
}

function clearImages() {
  for (const r of state.refs) URL.revokeObjectURL(r.url);
  state.refs = [];
  state.refErrors = [];
  bump("refs");
  render();
}

// --- training --------------------------------------------------------------------------------

function trainRequest() {
  const s = panels.train.read();
  const info = state.model.info;
  if (s.config.resolution % info.sizeMultiple !== 0) throw new Error(`the resolution must be a multiple of ${info.sizeMultiple} px for this model`);
  if (s.config.mode === "textual-inversion") s.config.k = 1;
  const d = SAMPLE_DEFAULTS[info.id] ?? SAMPLE_DEFAULTS["sd21-base"];
  return {
    settings: s,
    request: {
      images: state.refs.map((r) => r.bytes),
      names: state.refs.map((r) => r.name),
      config: s.config,
      autosaveEvery: s.autosaveEvery,
      preview:
        s.previewEvery > 0
          ? { every: s.previewEvery, request: { gamma: 1, seeds: [1000, 1001], steps: s.previewSteps, guidance: d.guidance, scheduler: "ddim", size: info.nativeResolution, rule: "paper" } }
          : null,
    },
  };
}

async function estimate() {
  let req;
  try {
    req = trainRequest().request;
  } catch (err) {
    state.train.error = `Check the settings: ${err.message}.`;
    render();
    return;
  }
  Object.assign(state.train, { estimating: true, error: null, estimate: null });
  state.job = { kind: "estimate", what: "Estimating", done: 0, total: 1 };
  render();
  try {
    const e = await client.call("trainEstimate", { images: req.images, names: req.names, config: req.config, steps: 2 });
    state.train.estimate = { ...e, steps: req.config.steps };
  } catch (err) {
    state.train.error = `The estimate failed: ${reason(err)}`;
  }
  state.train.estimating = false;
  state.job = null;
  render();
}

async function startTraining({ checkpoint = null, resumeOf = null } = {}) {
  let built;
  try {
    built = trainRequest();
  } catch (err) {
    state.train.error = `Check the settings: ${err.message}.`;
    render();
    return;
  }
  const { settings, request } = built;
  state.train = { ...state.train, state: "starting", step: 0, steps: settings.config.steps, losses: resumeOf ? state.train.losses : [], stepMs: [], previews: [], error: null, savedStep: resumeOf?.step ?? null };
  bump("losses", "previews");
  state.lastCheckpoint = checkpoint ? { step: resumeOf?.step ?? 0, bytes: checkpoint } : null;
  state.trainRequest = request;
  render();
  if (!resumeOf && autosave.available()) {
    await persist(() =>
      autosave.begin({
        settings,
        model: { id: state.model.choice, label: state.model.label, source: state.model.source, modelId: state.model.info.id },
        images: state.refs.map((r) => ({ name: r.name, type: r.type, bytes: r.bytes })),
      }),
    );
  }
  try {
    await client.call("trainStart", { ...request, checkpoint });
  } catch (err) {
    state.train.state = "error";
    state.train.error = `Training could not start: ${reason(err)}`;
    if (!resumeOf) persist(() => autosave.clear());
    render();
  }
}

function onTrainState(msg) {
  const t = state.train;
  t.state = msg.state;
  t.step = msg.step;
  t.steps = msg.steps;
  if (msg.error) t.error = `Training stopped: ${msg.error.message}`;
  if (msg.state === "running") t.error = null;
}

async function onTrainDone(msg) {
  const name = state.trainRequest?.config?.name ?? "distribution";
  state.lastTrained = new Uint8Array(msg.bytes);
  await addDistributionBytes(state.lastTrained, "trained", name);
  state.lastCheckpoint = null;
  await persist(() => autosave.clear());
  note("sample", `“${name}” is ready: generate images from it below.`);
}

async function pauseTraining() {
  await client.call("trainPause").catch(() => {});
}

async function resumeTraining() {
  const st = await client.call("trainResume").catch(() => null);
  if (st === null && state.trainRequest) {
    // The worker has no run (it was restarted): start from the last checkpoint.
    await client.call("trainStart", { ...state.trainRequest, checkpoint: state.lastCheckpoint?.bytes ?? null }).catch((err) => {
      state.train.error = `Training could not be resumed: ${reason(err)}`;
      render();
    });
  }
}

async function cancelTraining() {
  await client.call("trainCancel").catch(() => {});
  state.lastCheckpoint = null;
  await persist(() => autosave.clear());
  render();
}

async function offerResume() {
  if (!autosave.available()) return;
  const s = await autosave.peek();
  if (!s || !s.checkpoint || s.step >= s.steps || ["starting", "running", "pausing", "paused"].includes(state.train.state)) return;
  state.resumeOffer = s;
  render();
}

async function acceptResume() {
  const offer = state.resumeOffer;
  state.resumeOffer = null;
  render();
  const saved = await autosave.load();
  if (!saved) {
    state.train.error = "The saved training run could not be read back from this browser's storage.";
    render();
    return;
  }
  clearImages();
  for (const im of saved.images) {
    const info = sniff(im.bytes.subarray(0, 256 * 1024));
    const blob = new Blob([im.bytes], { type: im.type || `image/${info.type}` });
    state.refs.push({ id: uid("r"), name: im.name, type: im.type, bytes: im.bytes, url: URL.createObjectURL(blob), width: info.width, height: info.height });
  }
  bump("refs");
  panels.train.write(saved.settings);
  if (saved.model?.source && (state.model.status !== "ready" || state.model.info?.id !== saved.model.modelId || state.model.source?.url !== saved.model.source.url)) {
    await loadModel({ id: saved.model.id, label: saved.model.label, source: saved.model.source });
  }
  if (state.model.status !== "ready") {
    state.train.error = "The model of the saved run could not be loaded, so it cannot be resumed yet.";
    render();
    return;
  }
  await startTraining({ checkpoint: saved.checkpointBytes, resumeOf: offer });
}

async function discardResume() {
  state.resumeOffer = null;
  await persist(() => autosave.clear());
  render();
}

// --- distributions ---------------------------------------------------------------------------

/**
 * Validates and registers a distribution; returns it (`.existing` when the same file was
 * already in the list: that one is selected instead of adding a copy).
 */
async function addDistributionBytes(bytes, source, fallbackName) {
  if (bytes.length > MAX_DIST_BYTES) throw new Error(`the file is ${Math.round(bytes.length / 1e6)} MB, larger than any distribution file`);
  const sha = await sha256(bytes);
  const same = state.dists.find((x) => x.sha256 === sha);
  if (same && same.handle !== null) {
    setActive(same.id);
    return { ...same, existing: true };
  }
  const info = await client.call("addDistribution", bytes);
  if (same) state.dists = state.dists.filter((x) => x !== same);
  const d = { id: uid("d"), name: info.name || fallbackName, bytes, sha256: sha, info, handle: info.handle, source, problem: null };
  state.dists.push(d);
  state.mixWeights[d.id] = state.dists.filter((x) => x.handle !== null).length <= 2 ? 1 : 0;
  setActive(d.id);
  bump("dists");
  render();
  saveLibrary();
  return d;
}

let saving = Promise.resolve();
function saveLibrary() {
  if (!library.available()) return;
  const entries = state.dists.map((d) => ({ id: d.id, name: d.name, source: d.source, sha256: d.sha256, bytes: d.bytes }));
  saving = saving.then(() => library.save(entries)).catch((err) => console.warn("dreamdist: could not save the distributions:", err));
}

/** The distributions saved on an earlier visit (validated against the loaded model). */
async function restoreLibrary() {
  if (!library.available()) return;
  const saved = await library.load();
  for (const e of saved) {
    if (state.dists.some((d) => d.sha256 === e.sha256)) continue;
    state.dists.push({ id: uid("d"), name: e.name, bytes: e.bytes, sha256: e.sha256, info: null, handle: null, source: e.source, problem: null });
  }
  if (saved.length) {
    await registerDistributions();
    for (const d of state.dists) if (d.handle !== null && state.mixWeights[d.id] === undefined) state.mixWeights[d.id] = Object.keys(state.mixWeights).length < 2 ? 1 : 0;
    render();
  }
}

function setActive(id) {
  const d = state.dists.find((x) => x.id === id);
  if (!d || d.handle === null) return;
  state.activeId = id;
  state.shareLink = null;
  if (d.info?.template) panels.sample.write({ template: d.info.template });
  bump("dists");
  render();
}

async function removeDistribution(id) {
  const d = state.dists.find((x) => x.id === id);
  if (!d) return;
  if (d.handle !== null) client.call("removeDistribution", d.handle).catch(() => {});
  state.dists = state.dists.filter((x) => x.id !== id);
  if (state.activeId === id) state.activeId = state.dists.find((x) => x.handle !== null)?.id ?? null;
  bump("dists");
  render();
  saveLibrary();
}

async function importFiles(files) {
  setError("dists", null);
  const problems = [];
  for (const f of files) {
    try {
      if (f.size > MAX_DIST_BYTES) throw new Error(`${Math.round(f.size / 1e6)} MB is larger than any distribution file (${MAX_DIST_BYTES / 2 ** 20} MiB at most)`);
      const d = await addDistributionBytes(new Uint8Array(await f.arrayBuffer()), "file", f.name.replace(/\.ddist$/i, ""));
      note("dists", d.existing ? `${f.name} is “${d.name}”, already in the list (selected).` : `Loaded “${d.name}” from ${f.name}.${d.info.note ? ` Note: ${d.info.note}` : ""}`);
    } catch (err) {
      problems.push(`${f.name}: ${reason(err)}`);
    }
  }
  if (problems.length) setError("dists", `Not loaded — ${problems.join("; ")}`);
}

async function importUrl(value, { fromLink = false } = {}) {
  setError("dists", null);
  try {
    if (!value) throw new ShareError("give the address of a .ddist file");
    const url = checkDistUrl(value);
    note("dists", `Downloading ${url.href}…`);
    const bytes = await fetchDist(url);
    const d = await addDistributionBytes(bytes, "url", decodeURIComponent(url.pathname.split("/").pop() || "distribution").replace(/\.ddist$/i, ""));
    note("dists", d.existing ? `Loaded ${url.href}: it is “${d.name}”, already in the list (selected).` : `Loaded “${d.name}” from ${url.href}.`);
  } catch (err) {
    note("dists", null);
    setError("dists", `${fromLink ? "The distribution in this page's address (?dist=) could not be used" : "Not loaded"}: ${reason(err)}`);
  }
}

async function handleLinks() {
  const distParam = params.get("dist");
  if (distParam) await importUrl(distParam, { fromLink: true });
  const hash = location.hash.startsWith("#") ? new URLSearchParams(location.hash.slice(1)) : null;
  if (hash?.has("d")) {
    try {
      const bytes = await decodeFragment(hash.get("d"));
      const d = await addDistributionBytes(bytes, "link", "shared distribution");
      note("dists", d.existing ? `Loaded the link's distribution: it is “${d.name}”, already in the list (selected).` : `Loaded “${d.name}” from the link.`);
    } catch (err) {
      setError("dists", `The distribution in this link could not be used: ${reason(err)}`);
    }
  }
}

function active() {
  return state.dists.find((d) => d.id === state.activeId && d.handle !== null) ?? null;
}

function exportDdist() {
  const d = active();
  if (d) download(d.bytes, `${slug(d.name)}.ddist`);
}

async function makeShareLink() {
  const d = active();
  if (!d) return;
  setError("dists", null);
  try {
    const text = await encodeFragment(d.bytes);
    const base = new URL(location.href);
    base.hash = "";
    base.searchParams.delete("dist");
    state.shareLink = { id: d.id, url: `${base.href}#d=${text}` };
    note("dists", `Share link made (${Math.round(text.length / 1024)} KB). Anyone who opens it gets this distribution; it works with the same model.`);
  } catch (err) {
    state.shareLink = null;
    setError("dists", `No share link: ${reason(err)}`);
  }
  render();
}

async function exportTextualInversion(which) {
  const d = active();
  if (!d) return;
  try {
    if (which === "all") {
      const zip = new ZipWriter();
      for (let k = 0; k < d.info.k; k++) zip.add(`${slug(d.name)}-${k + 1}.safetensors`, await client.call("exportTextualInversion", d.handle, k));
      download(zip.finish(), `${slug(d.name)}-embeddings.zip`);
    } else {
      const k = Number(which);
      const bytes = await client.call("exportTextualInversion", d.handle, k);
      download(bytes, `${slug(d.name)}${d.info.k > 1 ? `-${k + 1}` : ""}.safetensors`);
    }
  } catch (err) {
    setError("dists", `Export failed: ${reason(err)}`);
  }
}

async function exportDiffusers() {
  const d = active();
  if (!d) return;
  try {
    const template = document.getElementById("s-template").value.trim() || undefined;
    download(await client.call("exportDiffusers", d.handle, template), `${slug(d.name)}.diffusers.safetensors`);
  } catch (err) {
    setError("dists", `Export failed: ${reason(err)}`);
  }
}

// --- sampling --------------------------------------------------------------------------------

let jobSeq = 0;

/** The PNG "dreamdist" chunk (the CLI's keys; the worker adds gamma and seed). */
function pngParams(parts, rule, s) {
  const named = parts.map((p) => `${slug(p.dist.name)}.ddist${parts.length > 1 ? `:${p.weight}` : ""}`);
  return {
    model: state.model.info.id,
    dists: named,
    mix: parts.length > 1 ? named.join(",") : "",
    mix_rule: rule,
    template: s.template,
    steps: s.steps,
    guidance: s.guidance,
    scheduler: s.scheduler,
    size: s.size,
  };
}

/**
 * Generates images for `seeds` (in batches), calling onImages(batch) as they come.
 * parts: [{dist, weight}]; extra: {prompt, condSeeds}.
 */
async function generateImages(job, parts, s, seeds, { rule = "paper", prompt, prompts, condSeeds, gamma = s.gamma, onImages }) {
  const batch = (SAMPLE_DEFAULTS[state.model.info.id] ?? SAMPLE_DEFAULTS["sd21-base"]).batch;
  const params = pngParams(parts, rule, s);
  for (let i = 0; i < seeds.length; i += batch) {
    const chunk = seeds.slice(i, i + batch);
    const request = {
      dists: parts.map((p) => ({ handle: p.dist.handle, weight: p.weight })),
      rule,
      template: s.template,
      gamma,
      seeds: chunk,
      steps: s.steps,
      guidance: s.guidance,
      scheduler: s.scheduler,
      size: s.size,
    };
    if (prompt !== undefined) request.prompt = prompt;
    if (prompts) request.prompts = prompts.slice(i, i + batch);
    if (condSeeds) request.condSeeds = condSeeds.slice(i, i + batch);
    const { images } = await client.call("sample", { job: job.id, request, params });
    job.done += images.length;
    onImages(images.map((im) => ({ ...im, gamma, template: s.template })));
    render();
  }
}

async function runJob(kind, what, total, panel, fn) {
  if (state.job) return;
  const job = { id: `job${++jobSeq}`, kind, what, done: 0, total, step: 0, steps: 0 };
  state.job = job;
  setError(panel, null);
  note(panel, null);
  const t0 = performance.now();
  try {
    await fn(job);
    note(panel, `${what}: ${job.done} image${job.done === 1 ? "" : "s"} in ${ms(performance.now() - t0)}.`);
  } catch (err) {
    if (err?.info?.kind === "cancelled" || /cancel/i.test(reason(err))) note(panel, `${what}: cancelled after ${job.done} image${job.done === 1 ? "" : "s"}.`);
    else setError(panel, `${what} failed: ${reason(err)}`);
  } finally {
    state.job = null;
    render();
  }
}

function sampleSettings(panel) {
  try {
    const s = panels.sample.read();
    const m = state.model.info;
    if (s.size % m.sizeMultiple !== 0) throw new Error(`the size must be a multiple of ${m.sizeMultiple} px for this model (${m.nativeResolution} px is its native size)`);
    return s;
  } catch (err) {
    setError(panel, `Check the settings: ${err.message}.`);
    return null;
  }
}

function seedsFrom(s, n = s.count) {
  return Array.from({ length: n }, (_, i) => s.seed + i);
}

function galleryItem(im, dist, extra = {}) {
  return {
    ...im,
    dist: dist?.name ?? extra.dist,
    filename: `${slug(dist?.name ?? extra.dist ?? "mix")}-seed${im.seed}-g${im.gamma}.png`,
    label: extra.label ?? `seed ${im.seed} · γ ${im.gamma}`,
  };
}

async function generate() {
  const d = active();
  const s = sampleSettings("sample");
  if (!d || !s) return;
  await runJob("sample", "Generating", s.count, "sample", (job) =>
    generateImages(job, [{ dist: d, weight: 1 }], s, seedsFrom(s), {
      onImages: (ims) => {
        state.gallery = [...ims.map((im) => galleryItem(im, d)), ...state.gallery].slice(0, 256);
        bump("gallery");
      },
    }),
  );
}

const SWEEP_GAMMAS = [0, 0.5, 1, 1.5, 2];

async function gammaSweep() {
  const d = active();
  const s = sampleSettings("sample");
  if (!d || !s) return;
  const seeds = seedsFrom(s, Math.min(4, s.count));
  state.sweep = { corner: "γ \\ seed", rows: SWEEP_GAMMAS.map((g) => `γ = ${g}`), cols: seeds.map((x) => `seed ${x}`), cells: SWEEP_GAMMAS.map(() => []) };
  bump("sweep");
  await runJob("sweep", "γ sweep", SWEEP_GAMMAS.length * seeds.length, "sample", async (job) => {
    for (const [row, gamma] of SWEEP_GAMMAS.entries()) {
      await generateImages(job, [{ dist: d, weight: 1 }], s, seeds, {
        gamma,
        onImages: (ims) => {
          state.sweep.cells[row] = ims.map((im) => galleryItem(im, d));
          bump("sweep");
        },
      });
    }
  });
}

async function dataset(ids, n) {
  const s = sampleSettings("sample");
  if (!s) return;
  const dists = state.dists.filter((d) => ids.includes(d.id) && d.handle !== null);
  if (!dists.length) return setError("sample", "Choose at least one distribution for the data set.");
  if (!Number.isInteger(n) || n < 1 || n > 10000) return setError("sample", "Images per distribution must be a whole number between 1 and 10000.");
  const zip = new ZipWriter();
  const meta = [];
  await runJob("dataset", "Data set", n * dists.length, "sample", async (job) => {
    for (const d of dists) {
      await generateImages(job, [{ dist: d, weight: 1 }], s, seedsFrom(s, n), {
        onImages: (ims) => {
          for (const im of ims) {
            const file = zip.add(`${slug(d.name)}/${String(im.seed).padStart(6, "0")}.png`, im.png);
            meta.push(JSON.stringify({ file_name: file, distribution: d.name, seed: im.seed, gamma: s.gamma, template: s.template, steps: s.steps, guidance: s.guidance, scheduler: s.scheduler, size: s.size, model: state.model.info.id }));
          }
        },
      });
    }
    zip.add("metadata.jsonl", `${meta.join("\n")}\n`);
    const blob = zip.finish();
    state.lastDataset = { files: meta.length, bytes: blob.size };
    download(blob, "dreamdist-dataset.zip");
  });
}

async function downloadAll() {
  const zip = new ZipWriter();
  const meta = [];
  for (const g of state.gallery) {
    const file = zip.add(g.filename, g.png);
    meta.push(JSON.stringify({ file_name: file, distribution: g.dist, seed: g.seed, gamma: g.gamma, template: g.template }));
  }
  zip.add("metadata.jsonl", `${meta.join("\n")}\n`);
  download(zip.finish(), "dreamdist-images.zip");
}

function clearGallery() {
  state.gallery = [];
  state.sweep = null;
  bump("gallery", "sweep");
  render();
}

function cancelJob() {
  if (state.job) client.call("cancel", state.job.id).catch(() => {});
}

// --- mixing ----------------------------------------------------------------------------------

async function mix() {
  const s = sampleSettings("mix");
  if (!s) return;
  const parts = state.dists.filter((d) => d.handle !== null && (state.mixWeights[d.id] ?? 0) > 0).map((d) => ({ dist: d, weight: state.mixWeights[d.id] }));
  if (!parts.length) return setError("mix", "Give at least one distribution a weight above 0.");
  const rule = document.getElementById("mix-rule").value;
  await runJob("mix", "Mixing", s.count, "mix", (job) =>
    generateImages(job, parts, s, seedsFrom(s), {
      rule,
      onImages: (ims) => {
        const name = parts.map((p) => p.dist.name).join(" + ");
        state.mixGallery = [...ims.map((im) => galleryItem(im, null, { dist: name, label: `mix · seed ${im.seed} · γ ${im.gamma}` })), ...state.mixGallery].slice(0, 128);
        bump("mixGallery");
      },
    }),
  );
}

async function mixStrip(idA, idB, cols) {
  const s = sampleSettings("mix");
  if (!s) return;
  const a = state.dists.find((d) => d.id === idA && d.handle !== null);
  const b = state.dists.find((d) => d.id === idB && d.handle !== null);
  if (!a || !b || a === b) return setError("mix", "Choose two different distributions for the strip.");
  const n = Math.max(3, Math.min(11, Number.isInteger(cols) ? cols : 5));
  const alphas = Array.from({ length: n }, (_, i) => 1 - i / (n - 1));
  const seeds = seedsFrom(s, Math.min(3, s.count));
  const rule = document.getElementById("mix-rule").value;
  state.strip = {
    corner: "seed \\ weight",
    rows: seeds.map((x) => `seed ${x}`),
    cols: alphas.map((al) => `${(100 * al).toFixed(0)} % ${a.name}`),
    cells: seeds.map(() => []),
  };
  bump("strip");
  await runJob("strip", "Mixing strip", n * seeds.length, "mix", async (job) => {
    for (const [col, al] of alphas.entries()) {
      const parts = [
        { dist: a, weight: Number(al.toFixed(4)) },
        { dist: b, weight: Number((1 - al).toFixed(4)) },
      ];
      await generateImages(job, parts, s, seeds, {
        rule,
        onImages: (ims) => {
          ims.forEach((im, row) => (state.strip.cells[row][col] = galleryItem(im, null, { dist: `${a.name}-${b.name}`, label: `${(100 * al).toFixed(0)} % ${a.name}, seed ${im.seed}` })));
          bump("strip");
        },
      });
    }
  });
}

function setMixWeight(id, w) {
  state.mixWeights[id] = Number.isFinite(w) && w >= 0 ? w : 0;
  render();
}

// --- understanding ---------------------------------------------------------------------------

async function pca(gamma) {
  const d = active();
  if (!d || state.job) return;
  state.job = { id: "pca", kind: "pca", what: "Projecting the prompts", done: 0, total: 0 };
  setError("learn", null);
  try {
    const g = Number.isFinite(gamma) && gamma >= 0 ? gamma : 1;
    const p = await client.call("pca", d.handle, g, 256, 0);
    state.pca = { ...p, gamma: g, dist: d.name };
    bump("pca");
  } catch (err) {
    setError("learn", `The projection failed: ${reason(err)}`);
  }
  state.job = null;
  render();
}

async function promptImages() {
  const d = active();
  const s = sampleSettings("learn");
  if (!d || !s) return;
  const k = Math.min(d.info.k, 8);
  state.promptImages = [];
  bump("prompts");
  const ks = Array.from({ length: k }, (_, i) => i);
  let next = 0;
  await runJob("prompts", "One image per prompt", k, "learn", (job) =>
    // The same seed (starting noise) for every prompt, so only the prompt differs.
    generateImages(job, [{ dist: d, weight: 1 }], s, ks.map(() => s.seed), {
      prompts: ks,
      gamma: 0,
      onImages: (ims) => {
        state.promptImages.push(...ims.map((im) => galleryItem(im, d, { label: `prompt ${++next} of ${d.info.k}` })));
        bump("prompts");
      },
    }),
  );
}

// --- self-test (diagnostics) -----------------------------------------------------------------

async function runSelfTest() {
  if (!client || state.job) return null;
  state.job = { id: "selftest", kind: "selftest", what: "Self-test", done: 0, total: 1 };
  render();
  try {
    return (await client.call("selfTest")).report;
  } catch {
    return null; // reported through the "selfTest" event
  } finally {
    state.job = null;
    render();
  }
}

function setExpected(report, source = "provided by script") {
  state.expected = report;
  state.expectedSource = source;
  $("#diag-panel").open = true;
  render();
}

async function loadExpectedFromUrl() {
  const param = params.get("expected");
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

// --- wiring ----------------------------------------------------------------------------------

const actions = {
  loadModel,
  cancelModelLoad: () => client?.call("cancel", "load").catch(() => {}),
  clearCache: async () => {
    try {
      const n = await client.call("cacheClear");
      state.notes = { ...state.notes, model: `Removed ${n} cached file(s).` };
    } catch (err) {
      state.model.error = `Clearing the cache failed: ${reason(err)}`;
    }
    refreshStorage();
  },
  addImages,
  removeImage,
  clearImages,
  settingsChanged: () => {
    state.train.estimate = null;
    render();
  },
  estimate,
  startTraining: () => startTraining(),
  pauseTraining,
  resumeTraining,
  cancelTraining,
  importFiles,
  importUrl: (v) => importUrl(v),
  setActive,
  removeDistribution,
  exportDdist,
  makeShareLink,
  exportTextualInversion,
  exportDiffusers,
  note,
  generate,
  gammaSweep,
  dataset,
  downloadAll,
  clearGallery,
  cancelJob,
  mix,
  mixStrip,
  setMixWeight,
  pca,
  promptImages,
};

const ctx = { actions, modelOptions };
const panels = {
  model: mountModel(ctx),
  refs: mountReferences(ctx),
  train: mountTrain(ctx),
  dists: mountDistributions(ctx),
  sample: mountSample(ctx),
  mix: mountMix(ctx),
  learn: mountLearn(ctx),
};

/** Everything the tests (and a curious developer) may need beyond the DOM. */
const debug = {
  call: (cmd, ...args) => client.call(cmd, ...args),
  crash: () => client.call("debugCrash").catch((err) => reason(err)),
  loseDevice: () => client.call("debugLoseDevice").catch((err) => reason(err)),
  /** RGB bytes of gallery image i (0 = newest), or of a sweep / strip cell. */
  galleryImage: (i) => pick(state.gallery[i]),
  sweepImage: (row, col) => pick(state.sweep?.cells[row]?.[col]),
  stripImage: (row, col) => pick(state.strip?.cells[row]?.[col]),
  mixImage: (i) => pick(state.mixGallery[i]),
  previewImage: (p, i) => pick(state.train.previews[p]?.images[i]),
  distBytes: (i) => state.dists[i]?.bytes ?? null,
  lastTrained: () => state.lastTrained ?? null,
  checkpoint: () => state.lastCheckpoint,
  state,
};

function pick(im) {
  return im ? { width: im.width, height: im.height, seed: im.seed, gamma: im.gamma, rgb: Array.from(im.rgb), png: im.png ? Array.from(im.png) : null } : null;
}

function main() {
  window.dreamdist = { runSelfTest, setExpected, debug };
  view.runButton.addEventListener("click", runSelfTest);
  view.compute.addEventListener("change", () => switchCompute(view.compute.value));
  $("#resume-yes").addEventListener("click", acceptResume);
  $("#resume-no").addEventListener("click", discardResume);
  loadExpectedFromUrl();
  panels.train.applyRecipe("paper");

  if (!window.isSecureContext) {
    fail({
      kind: "insecure-context",
      message: `This page was opened from ${location.origin || location.protocol}, which browsers do not trust with WebGPU.`,
    });
    return;
  }
  const compute = initialCompute();
  if (compute === "webgpu" && (!("gpu" in navigator) || !navigator.gpu)) {
    fail({ kind: "no-webgpu", message: "navigator.gpu is missing: this browser has no WebGPU support (or it is turned off)." });
    return;
  }
  try {
    client = new EngineClient({ onEvent, compute });
  } catch (err) {
    fail({ kind: "worker", message: "The engine worker could not be started.", detail: String(err?.message ?? err) });
    return;
  }
  render();
}

main();
