// The model panel: which model (demo / SD 2.1-base / SD 2.1 / custom URL), its download
// progress per component (MB, rate, ETA), the storage it uses, and "clear cache".
import { h, replace } from "./dom.js";

const $ = (id) => document.getElementById(id);

const mb = (b) => `${(b / 1e6).toFixed(b < 1e7 ? 1 : 0)} MB`;
const rate = (r) => (r > 0 ? `${(r / 1e6).toFixed(1)} MB/s` : "—");
const eta = (s) => (s === null || s === undefined || !Number.isFinite(s) ? "—" : s < 1 ? "<1 s" : s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`);

export function mountModel(ctx) {
  const { actions } = ctx;
  const form = $("model-form");
  const choices = $("model-choices");
  let renderedChoices = "";

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    actions.loadModel(readChoice());
  });
  choices.addEventListener("change", () => {
    $("model-custom").hidden = readChoice().id !== "custom";
  });
  $("model-kind").addEventListener("change", () => syncCustom());
  $("model-cancel").addEventListener("click", () => actions.cancelModelLoad());
  $("cache-clear").addEventListener("click", () => actions.clearCache());

  function syncCustom() {
    const diffusers = $("model-kind").value === "diffusers";
    $("model-arch").disabled = !diffusers;
    $("model-quant").disabled = !diffusers;
  }
  syncCustom();

  function readChoice() {
    const checked = choices.querySelector("input[name=model]:checked");
    const id = checked?.value ?? "custom";
    if (id !== "custom") return ctx.modelOptions().find((m) => m.id === id);
    const url = $("model-url").value.trim();
    const kind = $("model-kind").value;
    return {
      id: "custom",
      label: url,
      source: kind === "diffusers" ? { kind, url, model: $("model-arch").value, quant: $("model-quant").value } : { kind, url },
    };
  }

  function renderChoices(state) {
    const options = ctx.modelOptions();
    const key = JSON.stringify(options.map((o) => [o.id, o.source.url, o.available])) + state.model.choice;
    if (key === renderedChoices) return;
    renderedChoices = key;
    replace(
      choices,
      options.map((o) =>
        h(
          "label",
          { class: "choice" },
          h("input", {
            type: "radio",
            name: "model",
            value: o.id,
            checked: state.model.choice === o.id,
            disabled: o.available === false,
          }),
          h("span", { class: "choice-text" }, h("strong", {}, o.label), h("span", { class: "muted" }, o.available === false ? o.unavailable : o.detail)),
        ),
      ),
      h(
        "label",
        { class: "choice" },
        h("input", { type: "radio", name: "model", value: "custom", checked: state.model.choice === "custom" }),
        h("span", { class: "choice-text" }, h("strong", {}, "Another model"), h("span", { class: "muted" }, "A web address: a converted model (manifest.json) or a diffusers mirror.")),
      ),
    );
    $("model-custom").hidden = state.model.choice !== "custom";
  }

  function render(state) {
    renderChoices(state);
    const m = state.model;
    const loading = m.status === "loading";
    $("model-load").disabled = !state.engineReady || loading;
    $("model-cancel").hidden = !loading;
    $("model-status").textContent =
      m.status === "loading"
        ? `Loading ${m.label}…`
        : m.status === "ready"
          ? `Loaded: ${m.label} (${m.info.id}, ${m.info.nativeResolution} px${m.loadMs ? `, ${(m.loadMs / 1000).toFixed(1)} s` : ""}${m.fromCache ? ", from this browser's cache" : ""}).${onGpu(m.info.resident)}`
          : m.status === "error"
            ? ""
            : state.engineReady
              ? "No model loaded."
              : "Waiting for the engine…";
    const err = $("model-error");
    err.hidden = !m.error;
    err.textContent = m.error ? `The model could not be loaded: ${m.error}` : "";
    const comps = Object.values(m.components ?? {});
    if (comps.length && (loading || m.status === "ready")) {
      replace(
        $("model-progress"),
        h(
          "table",
          { class: "results compact" },
          h("caption", { class: "visually-hidden" }, "Model download progress per component"),
          h("thead", {}, h("tr", {}, ["Component", "Done", "Size", "Rate", "Time left"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            comps.map((c) =>
              h(
                "tr",
                {},
                h("th", { scope: "row" }, c.component),
                h("td", {}, c.phase === "done" || c.done >= c.total ? "✓" : `${Math.round((100 * c.done) / Math.max(1, c.total))} %`),
                h("td", {}, mb(c.total)),
                h("td", {}, c.phase === "cache" ? "cache" : rate(c.rate)),
                h("td", {}, c.done >= c.total ? "—" : eta(c.eta)),
              ),
            ),
          ),
        ),
      );
    } else replace($("model-progress"));
    const s = state.storage;
    $("storage-used").textContent = s ? storageText(s) : "Cached models: —";
    $("cache-clear").disabled = !state.engineReady || loading || !s || !(s.bytes || s.partialBytes);
  }

  return { render };
}

/** What the weights take on the GPU, per component (nothing on the CPU engine, which has no pool to measure). */
function onGpu(r) {
  if (!r || r.text_encoder == null || r.unet == null || r.vae == null) return "";
  return ` On the GPU: ${mb(r.text_encoder + r.unet + r.vae)} (text encoder ${mb(r.text_encoder)}, UNet ${mb(r.unet)}, VAE ${mb(r.vae)}).`;
}

/** What the weight cache holds, in words: each model (and how much of it), unfinished downloads, the site's usage. */
function storageText(s) {
  const models = (s.models ?? []).map((m) => `${m.model} ${m.quant} (${m.complete ? mb(m.bytes) : `${mb(m.bytes)} of ${mb(m.totalBytes)}`})`);
  const parts = [models.length ? `Cached models: ${models.join(", ")}` : `Cached models: ${mb(s.bytes ?? 0)}`];
  // Shards no stored manifest names (e.g. left by an older version) still take space.
  const named = (s.models ?? []).reduce((a, m) => a + m.bytes, 0);
  if (models.length && (s.bytes ?? 0) > named) parts.push(`other files ${mb(s.bytes - named)}`);
  if (s.partialBytes) parts.push(`unfinished downloads ${mb(s.partialBytes)}`);
  if (s.usage != null && s.quota) parts.push(`this site uses ${mb(s.usage)} of ${mb(s.quota)} allowed`);
  return parts.join(" · ");
}
