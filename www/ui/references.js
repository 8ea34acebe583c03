// The reference-images panel: a drop zone / file picker, thumbnails with a remove button, the
// count, and the reasons files were refused. Thumbnails are <img> elements on object URLs, so
// the browser applies EXIF orientation as photo viewers do (the engine applies it for training).
import { h, replace } from "./dom.js";

const $ = (id) => document.getElementById(id);

export function mountReferences(ctx) {
  const { actions } = ctx;
  const input = $("ref-input");
  const zone = $("dropzone");
  let rendered = -1;

  input.addEventListener("change", () => {
    actions.addImages([...input.files]);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (ev) => {
      ev.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    actions.addImages([...(ev.dataTransfer?.files ?? [])]);
  });
  // Dropping anywhere else on the page must not navigate away from it.
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());
  $("refs-clear").addEventListener("click", () => actions.clearImages());

  function render(state) {
    const n = state.refs.length;
    const training = ["starting", "running", "pausing"].includes(state.train.state);
    $("ref-count").textContent =
      n === 0
        ? "No images yet (4–20 needed)."
        : `${n} image${n === 1 ? "" : "s"}${n < 4 ? ` — add ${4 - n} more (at least 4)` : n > 20 ? " — at most 20" : " ready"}.`;
    const errs = $("ref-errors");
    errs.hidden = state.refErrors.length === 0;
    replace(
      errs,
      state.refErrors.length ? h("p", {}, `Not added (${state.refErrors.length}):`) : null,
      state.refErrors.length ? h("ul", {}, state.refErrors.map((e) => h("li", {}, h("strong", {}, e.name), `: ${e.reason}`))) : null,
    );
    input.disabled = training;
    $("refs-clear").disabled = n === 0 || training;
    for (const b of $("ref-list").querySelectorAll("button")) b.disabled = training;
    if (rendered === state.v.refs) return;
    rendered = state.v.refs;
    replace(
      $("ref-list"),
      state.refs.map((r) =>
        h(
          "li",
          { class: "thumb" },
          h("img", { src: r.url, alt: r.name, width: 96, height: 96, loading: "lazy", decoding: "async" }),
          h("span", { class: "thumb-name", title: r.name }, r.name),
          h("span", { class: "thumb-size muted" }, `${r.width}×${r.height}`),
          h("button", { type: "button", class: "thumb-remove", "aria-label": `Remove ${r.name}`, onclick: () => actions.removeImage(r.id), disabled: training }, "×"),
        ),
      ),
    );
  }

  return { render };
}
