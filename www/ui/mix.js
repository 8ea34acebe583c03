// The mixing panel: a weight per distribution (normalised to sum to 1, eq. 7), the σ rule, a
// generate button, and the mixing strip that moves the ratio from one distribution to another
// (the paper's Fig. 5b).
import { h, replace } from "./dom.js";
import { imageFigure } from "./images.js";
import { imageGrid } from "./sample.js";

const $ = (id) => document.getElementById(id);

/** Weights normalised to sum to 1 (all-zero weights give null). */
export function normalise(weights) {
  const total = weights.reduce((a, b) => a + (b > 0 ? b : 0), 0);
  return total > 0 ? weights.map((w) => (w > 0 ? w / total : 0)) : null;
}

export function mountMix(ctx) {
  const { actions } = ctx;
  let renderedDists = -1;
  let renderedGallery = -1;
  let renderedStrip = -1;

  $("mix-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    actions.mix();
  });
  $("mix-weights").addEventListener("input", (ev) => {
    if (ev.target.matches("input[data-id]")) actions.setMixWeight(ev.target.dataset.id, Number(ev.target.value));
  });
  $("strip-go").addEventListener("click", () => actions.mixStrip($("strip-a").value, $("strip-b").value, Number($("strip-cols").value)));

  function render(state) {
    const usable = state.dists.filter((d) => d.handle !== null);
    const job = state.job;
    const weights = usable.map((d) => state.mixWeights[d.id] ?? 0);
    const norm = normalise(weights);
    if (renderedDists !== state.v.dists) {
      renderedDists = state.v.dists;
      replace(
        $("mix-weights"),
        usable.length < 2
          ? h("p", { class: "muted" }, "Load at least two distributions to mix them.")
          : h(
              "table",
              { class: "results compact" },
              h("caption", { class: "visually-hidden" }, "Mixing weights"),
              h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Distribution"), h("th", { scope: "col" }, "Weight"), h("th", { scope: "col" }, "Normalised α"))),
              h(
                "tbody",
                {},
                usable.map((d, i) =>
                  h(
                    "tr",
                    {},
                    h("th", { scope: "row" }, d.name),
                    h("td", {}, h("input", { type: "number", min: 0, max: 100, step: 0.05, value: weights[i], "data-id": d.id, "aria-label": `Weight of ${d.name}` })),
                    h("td", { class: "num", "data-norm": d.id }, norm ? norm[i].toFixed(3) : "—"),
                  ),
                ),
              ),
            ),
      );
      const opts = (sel) => usable.map((d, i) => h("option", { value: d.id, selected: i === sel }, d.name));
      replace($("strip-a"), opts(0));
      replace($("strip-b"), opts(1));
    } else {
      usable.forEach((d, i) => {
        const cell = $("mix-weights").querySelector(`[data-norm="${CSS.escape(d.id)}"]`);
        if (cell) cell.textContent = norm ? norm[i].toFixed(3) : "—";
      });
    }
    const enough = state.model.status === "ready" && usable.length >= 2;
    $("mix-go").disabled = !enough || Boolean(job) || !norm;
    $("strip-go").disabled = !enough || Boolean(job);
    $("mix-status").textContent =
      job && ["mix", "strip"].includes(job.kind) ? `${job.what}: ${job.done} of ${job.total} images${job.steps ? `, step ${job.step} of ${job.steps}` : ""}…` : (state.notes.mix ?? "");
    const err = $("mix-error");
    err.hidden = !state.errors.mix;
    err.textContent = state.errors.mix ?? "";
    if (renderedGallery !== state.v.mixGallery) {
      renderedGallery = state.v.mixGallery;
      replace($("mix-gallery"), state.mixGallery.map((item) => imageFigure(item)));
    }
    if (renderedStrip !== state.v.strip) {
      renderedStrip = state.v.strip;
      imageGrid($("strip"), state.strip, "Mixing strip: columns move the weight from the first distribution to the second; rows are seeds.");
    }
  }

  return { render };
}
