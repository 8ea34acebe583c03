// The distributions panel: the learned / imported distributions, import (file, URL), and for
// the selected one: .ddist download, a share link (#d=), textual-inversion and diffusers exports.
import { h, replace } from "./dom.js";

const $ = (id) => document.getElementById(id);

const SOURCES = { trained: "trained here", file: "from a file", url: "from a web address", link: "from a share link" };

export function mountDistributions(ctx) {
  const { actions } = ctx;
  let rendered = -1;

  $("dist-file").addEventListener("change", () => {
    actions.importFiles([...$("dist-file").files]);
    $("dist-file").value = "";
  });
  $("dist-url-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    actions.importUrl($("dist-url").value.trim());
  });
  $("export-ddist").addEventListener("click", () => actions.exportDdist());
  $("share-link").addEventListener("click", () => actions.makeShareLink());
  $("share-copy").addEventListener("click", async () => {
    const input = $("share-link-url");
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
      actions.note("dists", "Link copied.");
    } catch {
      actions.note("dists", "Select the link and copy it (the browser did not allow copying from here).");
    }
  });
  $("export-ti").addEventListener("click", () => actions.exportTextualInversion($("ti-index").value));
  $("export-diffusers").addEventListener("click", () => actions.exportDiffusers());

  function render(state) {
    const msg = $("dists-message");
    msg.hidden = !state.notes.dists;
    msg.textContent = state.notes.dists ?? "";
    const err = $("dists-error");
    err.hidden = !state.errors.dists;
    err.textContent = state.errors.dists ?? "";
    const modelReady = state.model.status === "ready";
    $("dist-file").disabled = !modelReady;
    for (const el of $("dist-url-form").elements) el.disabled = !modelReady;
    const active = state.dists.find((d) => d.id === state.activeId);
    $("share-box").hidden = !active;
    if (rendered !== state.v.dists) {
      rendered = state.v.dists;
      replace(
        $("dists-list"),
        state.dists.length === 0
          ? h("p", { class: "muted" }, "None yet: train one above, or import a .ddist file.")
          : h(
              "ul",
              { class: "dist-list", "aria-label": "Distributions" },
              state.dists.map((d) =>
                h(
                  "li",
                  { class: `dist${d.id === state.activeId ? " active" : ""}${d.handle === null ? " unusable" : ""}` },
                  h(
                    "label",
                    { class: "dist-pick" },
                    h("input", { type: "radio", name: "active-dist", value: d.id, checked: d.id === state.activeId, disabled: d.handle === null, onchange: () => actions.setActive(d.id) }),
                    h(
                      "span",
                      {},
                      h("strong", {}, d.name),
                      h(
                        "span",
                        { class: "muted" },
                        d.info
                          ? ` · K=${d.info.k}, M=${d.info.m} · ${d.info.mode === "textual-inversion" ? "textual inversion" : `${d.info.steps} steps`} · ${SOURCES[d.source] ?? d.source}`
                          : ` · ${d.problem ?? "not usable with this model"}`,
                      ),
                      d.info?.note ? h("span", { class: "note block" }, `Note: ${d.info.note}`) : null,
                    ),
                  ),
                  h("button", { type: "button", class: "button small secondary", "aria-label": `Remove ${d.name}`, onclick: () => actions.removeDistribution(d.id) }, "Remove"),
                ),
              ),
            ),
      );
      if (active) {
        $("share-name").textContent = `“${active.name}”`;
        const k = active.info?.k ?? 0;
        replace(
          $("ti-index"),
          Array.from({ length: k }, (_, i) => h("option", { value: String(i) }, k === 1 ? "the learned prompt" : `prompt ${i + 1} of ${k}`)),
          k > 1 ? h("option", { value: "all" }, `all ${k} prompts (zip)`) : null,
        );
        const link = state.shareLink?.id === active.id ? state.shareLink : null;
        $("share-link-box").hidden = !link?.url;
        $("share-link-url").value = link?.url ?? "";
      }
    }
    const link = active && state.shareLink?.id === active.id ? state.shareLink : null;
    $("share-link-box").hidden = !link?.url;
    if (link?.url && $("share-link-url").value !== link.url) $("share-link-url").value = link.url;
    for (const id of ["export-ddist", "share-link", "export-ti", "export-diffusers"]) $(id).disabled = !active || active.handle === null;
  }

  return { render };
}
