// Generated images on the page: RGB bytes → <canvas>, figures with a caption and a PNG
// download, and file downloads.
import { h } from "./dom.js";

/** A canvas showing RGB bytes (width × height × 3), scaled up crisply by CSS for tiny models. */
export function rgbCanvas(rgb, width, height, label) {
  const canvas = h("canvas", { width, height, role: "img", "aria-label": label, class: "pixel" });
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(width, height);
  for (let i = 0, j = 0; i < width * height; i++, j += 3) {
    data.data[i * 4] = rgb[j];
    data.data[i * 4 + 1] = rgb[j + 1];
    data.data[i * 4 + 2] = rgb[j + 2];
    data.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  return canvas;
}

const urls = new WeakMap();

/** An object URL for bytes (kept alive as long as the key object lives on the page). */
export function blobUrl(key, bytes, type) {
  let url = urls.get(key);
  if (!url) {
    url = URL.createObjectURL(new Blob([bytes], { type }));
    urls.set(key, url);
  }
  return url;
}

/** Saves bytes as a file via a temporary link. */
export function download(bytes, filename, type = "application/octet-stream") {
  const blob = bytes instanceof Blob ? bytes : new Blob([bytes], { type });
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** A filename-safe form of a name. */
export function slug(name) {
  return (name || "distribution").normalize("NFKD").replace(/[^\w.-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60) || "distribution";
}

/** A gallery figure for an image item {rgb, width, height, png, seed, gamma, label, filename}. */
export function imageFigure(item, { download: withDownload = true } = {}) {
  const caption = item.label ?? `seed ${item.seed} · γ ${item.gamma}`;
  return h(
    "figure",
    { class: "shot" },
    rgbCanvas(item.rgb, item.width, item.height, `Generated image: ${caption}`),
    h(
      "figcaption",
      {},
      h("span", {}, caption),
      withDownload && item.png
        ? h(
            "a",
            {
              class: "shot-download",
              href: blobUrl(item, item.png, "image/png"),
              download: item.filename ?? `dreamdist-${item.seed}.png`,
              "aria-label": `Download PNG (${caption})`,
            },
            "PNG",
          )
        : null,
    ),
  );
}
