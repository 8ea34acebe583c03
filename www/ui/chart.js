// A small SVG line chart (no library): the training loss per step, with a smoothed line.
const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/** Exponential moving average (the raw loss of a diffusion model is very noisy). */
export function smooth(values, alpha = 0.1) {
  let m = null;
  return values.map((v) => (m = m === null ? v : m + alpha * (v - m)));
}

const fmt = (x) => (Math.abs(x) >= 100 || x === 0 ? x.toFixed(0) : x.toPrecision(3));

/**
 * Draws points [{x, y}] into `svg` (replacing its content): raw values faint, smoothed bold.
 * @param {SVGSVGElement} svg
 */
export function lineChart(svg, points, { width = 640, height = 200, xLabel = "step", yLabel = "loss" } = {}) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const pad = { l: 52, r: 12, t: 10, b: 28 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  svg.append(el("rect", { x: pad.l, y: pad.t, width: w, height: h, class: "chart-bg" }));
  if (points.length === 0) {
    const t = el("text", { x: pad.l + w / 2, y: pad.t + h / 2, "text-anchor": "middle", class: "chart-empty" });
    t.textContent = "no steps yet";
    svg.append(t);
    return;
  }
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y).filter(Number.isFinite);
  const x0 = Math.min(...xs);
  const x1 = Math.max(x0 + 1, ...xs);
  let y0 = Math.min(...ys);
  let y1 = Math.max(...ys);
  if (y1 - y0 < 1e-9) {
    y0 -= 0.5 * Math.abs(y0 || 1);
    y1 += 0.5 * Math.abs(y1 || 1);
  }
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * w;
  const Y = (y) => pad.t + h - ((y - y0) / (y1 - y0)) * h;
  for (const [v, anchor] of [
    [y0, "end"],
    [(y0 + y1) / 2, "end"],
    [y1, "end"],
  ]) {
    svg.append(el("line", { x1: pad.l, x2: pad.l + w, y1: Y(v), y2: Y(v), class: "chart-grid" }));
    const t = el("text", { x: pad.l - 6, y: Y(v) + 4, "text-anchor": anchor, class: "chart-tick" });
    t.textContent = fmt(v);
    svg.append(t);
  }
  for (const v of [x0, x1]) {
    const t = el("text", { x: X(v), y: height - 8, "text-anchor": v === x0 ? "start" : "end", class: "chart-tick" });
    t.textContent = `${xLabel} ${v}`;
    svg.append(t);
  }
  const path = (pts) => pts.map((p, i) => `${i ? "L" : "M"}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join("");
  const finite = points.filter((p) => Number.isFinite(p.y));
  svg.append(el("path", { d: path(finite), class: "chart-raw" }));
  const sm = smooth(finite.map((p) => p.y));
  svg.append(el("path", { d: path(finite.map((p, i) => ({ x: p.x, y: sm[i] }))), class: "chart-smooth" }));
  const ylab = el("text", { x: 12, y: pad.t + h / 2, transform: `rotate(-90 12 ${pad.t + h / 2})`, "text-anchor": "middle", class: "chart-tick" });
  ylab.textContent = yLabel;
  svg.append(ylab);
}

/** A scatter plot: prompts (numbered rings) and samples (dots), for the PCA view. */
export function scatter(svg, { prompts, samples }, { width = 420, height = 320 } = {}) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const all = [...prompts, ...samples];
  if (!all.length) return;
  const pad = 24;
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (width - 2 * pad) / Math.max(1e-9, x1 - x0);
  const sy = (height - 2 * pad) / Math.max(1e-9, y1 - y0);
  const s = Math.min(sx, sy);
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const X = (x) => width / 2 + (x - cx) * s;
  const Y = (y) => height / 2 - (y - cy) * s;
  svg.append(el("rect", { x: 0, y: 0, width, height, class: "chart-bg" }));
  for (const p of samples) svg.append(el("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, class: "pca-sample" }));
  prompts.forEach((p, i) => {
    svg.append(el("circle", { cx: X(p[0]), cy: Y(p[1]), r: 7, class: "pca-prompt" }));
    const t = el("text", { x: X(p[0]), y: Y(p[1]) + 3.5, "text-anchor": "middle", class: "pca-label" });
    t.textContent = String(i + 1);
    svg.append(t);
  });
}
