// Number formatting for the UI.

const nf = (digits) => new Intl.NumberFormat("en-US", { maximumFractionDigits: digits });

/** Bytes as MiB ("1,024 MiB", "0.25 MiB"). */
export function mib(bytes) {
  if (!Number.isFinite(bytes)) return "—";
  const m = bytes / 2 ** 20;
  return `${nf(m < 10 ? 2 : 0).format(m)} MiB`;
}

/** Bytes as KiB. */
export function kib(bytes) {
  return Number.isFinite(bytes) ? `${nf(1).format(bytes / 1024)} KiB` : "—";
}

/** Integer with thousands separators. */
export function int(n) {
  return Number.isFinite(n) ? nf(0).format(n) : "—";
}

/** A float with 7 significant digits (scientific for very small or large magnitudes). */
export function float(x) {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e7)) return x.toExponential(5);
  return Number(x.toPrecision(7)).toString();
}

/** Milliseconds ("12.3 ms", "2.41 s"). */
export function ms(t) {
  if (!Number.isFinite(t)) return "—";
  return t < 1000 ? `${t.toFixed(1)} ms` : `${(t / 1000).toFixed(2)} s`;
}

/** Elapsed seconds for a running task ("3.2 s"). */
export function elapsed(t) {
  return `${(t / 1000).toFixed(1)} s`;
}

/** A tensor shape ("[2, 16, 64]"). */
export function shape(s) {
  return Array.isArray(s) ? `[${s.join(", ")}]` : "—";
}
