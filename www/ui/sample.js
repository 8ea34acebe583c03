// The sampling panel: distribution, template, γ (slider + number), seeds, scheduler, steps,
// guidance, size; the gallery (per-image PNG download), "download all" as a zip, the γ-sweep
// grid (the paper's Fig. 5a) and the synthetic-data-set mode.
import { h, replace } from "./dom.js";
import { imageFigure } from "./images.js";

const $ = (id) => document.getElementById(id);

/** A grid of images: rows × columns with headers (γ sweep, mixing strip). */
export function imageGrid(root, grid, caption) {
  if (!grid) {
    root.hidden = true;
    replace(root);
    return;
  }
  root.hidden = false;
  replace(
    root,
    h("p", { class: "grid-note", "aria-hidden": "true" }, caption),
    h(
      "table",
      { class: "grid-table" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, grid.corner ?? ""), grid.cols.map((c) => h("th", { scope: "col" }, c)))),
      h(
        "tbody",
        {},
        grid.rows.map((r, i) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, r),
            grid.cols.map((_, j) => {
              const cell = grid.cells[i]?.[j];
              return h("td", {}, cell ? imageFigure(cell, { download: true }) : h("span", { class: "pending", "aria-label": "not generated yet" }, "…"));
            }),
          ),
        ),
      ),
    ),
  );
}

export function mountSample(ctx) {
  const { actions } = ctx;
  let renderedGallery = -1;
  let renderedSweep = -1;
  let renderedDists = -1;

  const range = $("s-gamma-range");
  const num = $("s-gamma");
  range.addEventListener("input", () => (num.value = range.value));
  num.addEventListener("input", () => {
    if (num.value !== "" && Number(num.value) <= Number(range.max)) range.value = num.value;
  });
  $("sample-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    actions.generate();
  });
  $("sample-sweep").addEventListener("click", () => actions.gammaSweep());
  $("sample-cancel").addEventListener("click", () => actions.cancelJob());
  $("sample-zip").addEventListener("click", () => actions.downloadAll());
  $("sample-clear").addEventListener("click", () => actions.clearGallery());
  $("s-dist").addEventListener("change", () => actions.setActive($("s-dist").value));
  $("ds-go").addEventListener("click", () => {
    const ids = [...$("ds-dists").querySelectorAll("input:checked")].map((i) => i.value);
    actions.dataset(ids, Number($("ds-n").value));
  });

  /** The sampling settings in the form. Throws with a reason. */
  function read() {
    const num = (id, what, lo, hi, int = false) => {
      const v = Number($(id).value);
      if ($(id).value === "" || !Number.isFinite(v) || v < lo || v > hi || (int && !Number.isInteger(v))) {
        throw new Error(`${what} must be ${int ? "a whole number " : ""}between ${lo} and ${hi}`);
      }
      return v;
    };
    const template = $("s-template").value.trim();
    if (!template.includes("{}")) throw new Error("the prompt template must contain {} where the sampled prompt goes");
    return {
      template,
      gamma: num("s-gamma", "γ", 0, 10),
      seed: num("s-seed", "The first seed", 0, Number.MAX_SAFE_INTEGER, true),
      count: num("s-count", "The number of images", 1, 64, true),
      scheduler: $("s-scheduler").value,
      steps: num("s-steps", "Denoising steps", 1, 1000, true),
      guidance: num("s-guidance", "Guidance", 0, 50),
      size: num("s-size", "The size", 8, 4096, true),
    };
  }

  /** Sets form fields (model defaults, a distribution's template). */
  function write(values) {
    for (const [k, v] of Object.entries(values)) {
      const el = $(`s-${k}`);
      if (el && v !== undefined) el.value = v;
      if (k === "gamma") range.value = Math.min(Number(range.max), v);
    }
  }

  function render(state) {
    const job = state.job;
    const usable = state.dists.filter((d) => d.handle !== null);
    const ready = state.model.status === "ready" && usable.length > 0;
    $("sample-go").disabled = !ready || Boolean(job);
    $("sample-sweep").disabled = !ready || Boolean(job);
    $("ds-go").disabled = !ready || Boolean(job);
    $("sample-cancel").hidden = !job || !["sample", "sweep", "dataset"].includes(job.kind);
    $("sample-zip").disabled = state.gallery.length === 0 || Boolean(job);
    $("sample-clear").disabled = state.gallery.length === 0 || Boolean(job);
    $("sample-status").textContent =
      job && ["sample", "sweep", "dataset"].includes(job.kind)
        ? `${job.what}: ${job.done} of ${job.total} image${job.total === 1 ? "" : "s"}${job.steps ? `, denoising step ${job.step} of ${job.steps}` : ""}…`
        : state.notes.sample ?? (state.model.status === "ready" && usable.length === 0 ? "Train or import a distribution to sample from it." : "");
    const err = $("sample-error");
    err.hidden = !state.errors.sample;
    err.textContent = state.errors.sample ?? "";
    if (renderedDists !== state.v.dists) {
      renderedDists = state.v.dists;
      replace(
        $("s-dist"),
        usable.length ? usable.map((d) => h("option", { value: d.id, selected: d.id === state.activeId }, d.name)) : h("option", { value: "" }, "— none —"),
      );
      replace(
        $("ds-dists"),
        usable.map((d) => h("label", { class: "check" }, h("input", { type: "checkbox", value: d.id, checked: d.id === state.activeId }), d.name)),
      );
    }
    if ($("s-dist").value !== (state.activeId ?? "")) $("s-dist").value = state.activeId ?? "";
    if (renderedGallery !== state.v.gallery) {
      renderedGallery = state.v.gallery;
      replace($("gallery"), state.gallery.map((item) => imageFigure(item)));
    }
    if (renderedSweep !== state.v.sweep) {
      renderedSweep = state.v.sweep;
      imageGrid($("sweep"), state.sweep, "γ sweep: rows are γ, columns are seeds (the same seed keeps its starting noise and its random direction ω).");
    }
  }

  return { render, read, write };
}
