// Comparison of self-test reports (pure functions; no DOM, so Node can import this too).
//
// A report is what `Engine.selfTest()` and `dreamdist selftest --json` return:
//   { backend, rounds: [ { ops: [ { name, shape, sum, sumAbs, samples[16], ms } ], ms } ] }
// Every round of the actual report is compared with the expected report (the native CPU
// backend), op by op: same names, order and shapes; sum and sumAbs within a relative 1e-3 (for
// the sum, of max(|sum|, 1e-3·sumAbs), as a sum that cancels keeps its terms' rounding error);
// each sample within 1e-4 + 1e-3·|expected|.

/** Default tolerances. */
export const TOLERANCE = Object.freeze({ rel: 1e-3, abs: 1e-4 });

/** `actual` is within `abs + rel·|expected|` of `expected` (and finite). */
export function close(actual, expected, { rel, abs } = TOLERANCE) {
  return Number.isFinite(actual) && Math.abs(actual - expected) <= abs + rel * Math.abs(expected);
}

/**
 * Tolerance for a sum: relative to its magnitude, but never tighter than relative to 1e-3 of
 * the sum of magnitudes (a sum that cancels to almost zero carries the rounding error of its
 * terms, not of its result).
 */
function sumClose(actual, expected, sumAbs, { rel }) {
  const scale = Math.max(Math.abs(expected), 1e-3 * Math.abs(sumAbs));
  return Number.isFinite(actual) && Math.abs(actual - expected) <= rel * scale;
}

function fmt(x) {
  return typeof x === "number" ? x.toPrecision(7) : String(x);
}

/** Compares one op; returns a list of human-readable problems (empty when it matches). */
export function compareOp(actual, expected, tol = TOLERANCE) {
  const problems = [];
  if (!actual) return [`missing (expected ${expected.name})`];
  if (actual.name !== expected.name) problems.push(`name ${actual.name} ≠ ${expected.name}`);
  if (JSON.stringify(actual.shape) !== JSON.stringify(expected.shape)) {
    problems.push(`shape [${actual.shape}] ≠ [${expected.shape}]`);
  }
  if (!sumClose(actual.sum, expected.sum, expected.sumAbs, tol)) {
    problems.push(`sum ${fmt(actual.sum)} ≠ ${fmt(expected.sum)}`);
  }
  if (!sumClose(actual.sumAbs, expected.sumAbs, expected.sumAbs, tol)) {
    problems.push(`sumAbs ${fmt(actual.sumAbs)} ≠ ${fmt(expected.sumAbs)}`);
  }
  const a = actual.samples || [];
  const e = expected.samples || [];
  if (a.length !== e.length) problems.push(`${a.length} samples ≠ ${e.length}`);
  for (let i = 0; i < Math.min(a.length, e.length); i++) {
    if (!close(a[i], e[i], tol)) problems.push(`sample ${i}: ${fmt(a[i])} ≠ ${fmt(e[i])}`);
  }
  return problems;
}

/**
 * Compares every round of `actual` with `expected` (round i with expected round i, or the
 * expected report's last round when it has fewer).
 * Returns { ok, problems: [string], ops: Map(name → { ok, problems: [string] }) }.
 */
export function compareReports(actual, expected, tol = TOLERANCE) {
  const problems = [];
  const ops = new Map();
  const note = (name, msg) => {
    const entry = ops.get(name) ?? { ok: true, problems: [] };
    entry.ok = false;
    entry.problems.push(msg);
    ops.set(name, entry);
    problems.push(`${name}: ${msg}`);
  };
  const expRounds = expected?.rounds ?? [];
  const actRounds = actual?.rounds ?? [];
  if (expRounds.length === 0) return { ok: false, problems: ["expected report has no rounds"], ops };
  if (actRounds.length === 0) return { ok: false, problems: ["report has no rounds"], ops };
  if (actRounds.length < expRounds.length) {
    problems.push(`${actRounds.length} round(s), expected ${expRounds.length}`);
  }
  for (const op of expRounds[0].ops) ops.set(op.name, { ok: true, problems: [] });
  actRounds.forEach((round, r) => {
    const exp = expRounds[Math.min(r, expRounds.length - 1)];
    if (round.ops.length !== exp.ops.length) {
      problems.push(`round ${r + 1}: ${round.ops.length} ops, expected ${exp.ops.length}`);
    }
    exp.ops.forEach((e, i) => {
      for (const p of compareOp(round.ops[i], e, tol)) note(e.name, `round ${r + 1}: ${p}`);
    });
  });
  return { ok: problems.length === 0, problems, ops };
}

/** Checks that every round of `report` agrees with its first round (no reference needed). */
export function compareRounds(report, tol = TOLERANCE) {
  const rounds = report?.rounds ?? [];
  if (rounds.length < 2) return { ok: true, problems: [], ops: new Map() };
  return compareReports({ rounds: rounds.slice(1) }, { rounds: [rounds[0]] }, tol);
}
