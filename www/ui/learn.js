// The classroom panel: what is learned (K prompts → Gaussian → samples), a 2-D PCA of the K
// prompt features with sampled points, and one image per learned prompt.
import { scatter } from "./chart.js";
import { replace } from "./dom.js";
import { imageFigure } from "./images.js";

const $ = (id) => document.getElementById(id);

export function mountLearn(ctx) {
  const { actions } = ctx;
  let renderedPca = -1;
  let renderedPrompts = -1;

  $("learn-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    actions.pca(Number($("learn-gamma").value));
  });
  $("learn-prompts").addEventListener("click", () => actions.promptImages());

  function render(state) {
    const active = state.dists.find((d) => d.id === state.activeId && d.handle !== null);
    const job = state.job;
    $("learn-pca").disabled = !active || Boolean(job) || (active.info?.k ?? 0) < 2;
    $("learn-prompts").disabled = !active || Boolean(job);
    $("learn-status").textContent =
      job && ["pca", "prompts"].includes(job.kind)
        ? `${job.what}${job.total ? `: ${job.done} of ${job.total}` : ""}…`
        : !active
          ? "Select a distribution to see what it learned."
          : (active.info?.k ?? 0) < 2
            ? "A single prompt (textual inversion) has no spread to show; the image below is the prompt itself."
            : "";
    const err = $("learn-error");
    err.hidden = !state.errors.learn;
    err.textContent = state.errors.learn ?? "";
    if (renderedPca !== state.v.pca) {
      renderedPca = state.v.pca;
      const p = state.pca;
      $("pca-figure").hidden = !p;
      if (p) {
        scatter($("pca-chart"), p);
        $("pca-caption").textContent =
          `${p.prompts.length} learned prompts (numbered rings) and ${p.samples.length} samples at γ = ${p.gamma} (dots), on the two directions in which the prompts differ most ` +
          `(${(100 * p.explained[0]).toFixed(0)} % and ${(100 * p.explained[1]).toFixed(0)} % of their variance). The Gaussian is fitted to the prompts; samples fill the space between them.`;
        $("pca-chart").setAttribute("aria-label", `Scatter plot of ${p.prompts.length} prompts and ${p.samples.length} samples`);
      }
    }
    if (renderedPrompts !== state.v.prompts) {
      renderedPrompts = state.v.prompts;
      replace($("prompt-gallery"), state.promptImages.map((item) => imageFigure(item)));
    }
  }

  return { render };
}
