// The training panel: settings (the paper's defaults; the recipe fills the rest), an estimate
// of time and GPU memory measured on the user's images, start / pause / resume / cancel, the
// live loss chart and preview samples.
import { lineChart } from "./chart.js";
import { h, replace } from "./dom.js";
import { imageFigure } from "./images.js";

const $ = (id) => document.getElementById(id);

/** The paper's settings (Algorithm 1) and the authors' script, for the form. */
export const RECIPES = {
  paper: { k: 32, m: 4, samples: 4, lambda: 0.005, lr: 0.001, steps: 1500 },
  authors: { k: 32, m: 4, samples: 4, lambda: 0.001, lr: 0.001, steps: 2000 },
};

const FIELDS = ["name", "recipe", "mode", "k", "m", "steps", "resolution", "samples", "lambda", "lr", "template", "seed"];
const NUMBER = new Set(["k", "m", "steps", "resolution", "samples", "lambda", "lr", "seed"]);

const dur = (ms) => {
  if (!Number.isFinite(ms)) return "—";
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
};
const mib = (b) => `${(b / 2 ** 20).toFixed(b < 10 * 2 ** 20 ? 1 : 0)} MiB`;

export function mountTrain(ctx) {
  const { actions } = ctx;
  let renderedLosses = -1;
  let renderedPreviews = -1;

  $("t-recipe").addEventListener("change", () => applyRecipe($("t-recipe").value));
  $("t-mode").addEventListener("change", () => {
    if ($("t-mode").value === "textual-inversion") $("t-k").value = 1;
    else if (Number($("t-k").value) === 1) $("t-k").value = RECIPES[$("t-recipe").value].k;
  });
  $("train-form").addEventListener("submit", (ev) => ev.preventDefault());
  $("train-form").addEventListener("change", () => actions.settingsChanged());
  $("train-estimate").addEventListener("click", () => actions.estimate());
  $("train-start").addEventListener("click", () => actions.startTraining());
  $("train-pause").addEventListener("click", () => actions.pauseTraining());
  $("train-resume").addEventListener("click", () => actions.resumeTraining());
  $("train-cancel").addEventListener("click", () => actions.cancelTraining());

  function applyRecipe(name) {
    const r = RECIPES[name];
    for (const [k, v] of Object.entries(r)) $(`t-${k}`).value = v;
    if ($("t-mode").value === "textual-inversion") $("t-k").value = 1;
  }

  /** The form as a TrainConfig (plus the page's own options). Throws with a reason. */
  function read() {
    const form = $("train-form");
    if (!form.checkValidity()) {
      const bad = [...form.elements].find((e) => e.validity && !e.validity.valid);
      const label = bad?.closest("label")?.querySelector("span")?.textContent ?? bad?.name ?? "a setting";
      throw new Error(`${label}: ${bad?.validationMessage || "invalid value"}`);
    }
    const cfg = {};
    for (const f of FIELDS) {
      const v = $(`t-${f}`).value;
      cfg[f] = NUMBER.has(f) ? Number(v) : v;
    }
    if (!cfg.template.includes("{}")) throw new Error("the template must contain {} where the learned tokens go");
    return {
      config: cfg,
      previewEvery: Number($("t-preview-every").value) || 0,
      previewSteps: Math.max(1, Number($("t-preview-steps").value) || 20),
      autosaveEvery: Math.min(50, Math.max(1, Number($("t-autosave").value) || 25)),
    };
  }

  /** Fills the form (settings saved with a run, or defaults for a model). */
  function write(settings) {
    const c = settings.config ?? settings;
    for (const f of FIELDS) if (c[f] !== undefined) $(`t-${f}`).value = c[f];
    if (settings.previewEvery !== undefined) $("t-preview-every").value = settings.previewEvery;
    if (settings.previewSteps !== undefined) $("t-preview-steps").value = settings.previewSteps;
    if (settings.autosaveEvery !== undefined) $("t-autosave").value = settings.autosaveEvery;
  }

  function render(state) {
    const t = state.train;
    const modelReady = state.model.status === "ready";
    const active = ["starting", "running", "pausing", "paused"].includes(t.state);
    const nRefs = state.refs.length;
    const refsOk = nRefs >= 4 && nRefs <= 20;
    const busy = t.estimating || t.state === "starting";
    for (const el of $("train-form").elements) el.disabled = active || busy;
    $("train-start").disabled = !modelReady || !refsOk || active || busy;
    $("train-start").title = !modelReady ? "Load a model first" : !refsOk ? "Add 4 to 20 reference images first" : "";
    $("train-estimate").disabled = !modelReady || !refsOk || active || busy;
    $("train-pause").hidden = !(t.state === "running" || t.state === "pausing");
    $("train-pause").disabled = t.state === "pausing";
    $("train-resume").hidden = t.state !== "paused";
    $("train-cancel").hidden = !active;
    if (modelReady) {
      const info = state.model.info;
      $("train-defaults").textContent = `Defaults are the paper's (K=32, M=4, S=4, λ=0.005, lr=0.001, 1500 steps). This model's images are ${info.nativeResolution} px; sizes must be multiples of ${info.sizeMultiple} px.`;
    }
    const e = t.estimate;
    $("train-estimate-text").textContent = t.estimating
      ? "Measuring two training steps on your images…"
      : e
        ? state.adapter?.backend === "cpu"
          ? `Estimate (measured on this CPU): about ${dur(e.msPerStep)} per step, so ${dur(e.msPerStep * e.steps)} for ${e.steps} steps (the first step took ${dur(e.firstStepMs)}). Memory: the engine's WebAssembly memory is ${mib(e.memoryBytes)} after a step.`
          : `Estimate (measured on this GPU): about ${dur(e.msPerStep)} per step, so ${dur(e.msPerStep * e.steps)} for ${e.steps} steps (the first step took ${dur(e.firstStepMs)}, compiling GPU programs). GPU memory: about ${mib(e.memoryBytes)} in use after a step (the model takes ${mib(state.model.info?.residentBytes ?? 0)}).`
        : "";
    const err = $("train-error");
    err.hidden = !t.error;
    err.textContent = t.error ?? "";

    $("train-progress").hidden = t.state === "idle" && !t.losses.length;
    $("train-bar").max = Math.max(1, t.steps);
    $("train-bar").value = t.step;
    const last = t.losses.at(-1);
    const recent = t.stepMs.slice(-10);
    const msPer = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : NaN;
    const left = (t.steps - t.step) * msPer;
    const words = {
      starting: "Preparing (encoding the reference images)…",
      running: `Step ${t.step} of ${t.steps}${Number.isFinite(left) ? `, about ${dur(left)} left` : ""}.`,
      pausing: `Pausing after step ${t.step}…`,
      paused: `Paused at step ${t.step} of ${t.steps}.`,
      done: `Done: ${t.steps} steps.`,
      cancelled: `Cancelled at step ${t.step}.`,
      error: `Stopped at step ${t.step}.`,
      idle: t.losses.length ? `Last run: ${t.step} steps.` : "",
    };
    $("train-step-text").textContent = `${words[t.state] ?? ""}${last ? ` Loss ${last.loss.toPrecision(4)}.` : ""}${t.savedStep ? ` Saved at step ${t.savedStep}.` : ""}`;
    if (renderedLosses !== state.v.losses) {
      renderedLosses = state.v.losses;
      lineChart($("loss-chart"), t.losses.map((l) => ({ x: l.step, y: l.loss })));
      $("loss-chart").setAttribute("aria-label", last ? `Loss chart: ${t.losses.length} steps, latest loss ${last.loss.toPrecision(4)}` : "Loss chart: no steps yet");
    }
    if (renderedPreviews !== state.v.previews) {
      renderedPreviews = state.v.previews;
      replace(
        $("train-previews"),
        t.previews.slice(-3).map((p) =>
          h(
            "div",
            { class: "preview-row" },
            h("span", { class: "muted" }, `step ${p.step}`),
            p.images.map((im) => imageFigure({ ...im, gamma: 1, label: `step ${p.step}, seed ${im.seed}` }, { download: false })),
          ),
        ),
      );
    }
  }

  return { render, read, write, applyRecipe };
}
