// The self-test table: one row per op, one time column per round, and a check column
// (against the native CPU reference when one is loaded, else across rounds).
import { compareReports, compareRounds } from "../compare.js";
import { h, replace } from "./dom.js";
import { float, ms, shape } from "./format.js";

/**
 * Checks a report: against `expected` when given, else that all rounds agree.
 * Returns {mode: "reference"|"rounds", ok, problems, ops: Map(name → {ok, problems})}.
 */
export function checkReport(report, expected) {
  return expected
    ? { mode: "reference", ...compareReports(report, expected) }
    : { mode: "rounds", ...compareRounds(report) };
}

/**
 * @param {HTMLElement} root
 * @param {{report: object, totalMs?: number, check: object, expectedSource?: string}} s
 */
export function renderSelfTest(root, { report, totalMs, check, expectedSource }) {
  const rounds = report.rounds ?? [];
  const first = rounds[0]?.ops ?? [];
  const n = first.length;
  const roundsText = rounds.length === 1 ? "the round" : rounds.length === 2 ? "both rounds" : `all ${rounds.length} rounds`;

  let badge;
  let summary;
  if (check.mode === "reference") {
    badge = h("span", { class: `badge ${check.ok ? "pass" : "fail"}` }, check.ok ? "pass" : "fail");
    summary = check.ok
      ? `All ${n} ops match the CPU reference in ${roundsText}.`
      : `${check.problems.length} mismatch(es) against the CPU reference.`;
  } else {
    badge = h("span", { class: `badge ${check.ok ? "" : "fail"}` }, check.ok ? "no reference" : "fail");
    summary = check.ok
      ? `All ${rounds.length} rounds agree. No CPU reference loaded, so values are not checked against it.`
      : "The rounds disagree with each other.";
  }

  const checkCell = (name) => {
    const c = check.ops.get(name);
    if (check.mode === "rounds" && c?.ok !== false) return h("td", { class: "check" }, h("span", { class: "badge" }, "—"));
    const ok = c?.ok !== false;
    return h(
      "td",
      { class: "check", title: ok ? null : c.problems.join("\n") },
      h("span", { class: `badge ${ok ? "pass" : "fail"}` }, ok ? "pass" : "fail"),
    );
  };

  const table = h(
    "table",
    { class: "results" },
    h("caption", { class: "visually-hidden" }, "Self-test results: one row per operation, one time column per round"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Op"),
        h("th", { scope: "col", class: "shape" }, "Shape"),
        h("th", { scope: "col" }, "Sum"),
        h("th", { scope: "col" }, "Σ|x|"),
        rounds.map((_, r) => h("th", { scope: "col" }, `Round ${r + 1}`)),
        h("th", { scope: "col", class: "check" }, check.mode === "reference" ? "vs CPU" : "Check"),
      ),
    ),
    h(
      "tbody",
      {},
      first.map((op, i) =>
        h(
          "tr",
          { class: check.ops.get(op.name)?.ok === false ? "failed" : null },
          h("th", { scope: "row" }, op.name),
          h("td", { class: "shape" }, shape(op.shape)),
          h("td", { class: "num" }, float(op.sum)),
          h("td", { class: "num" }, float(op.sumAbs)),
          rounds.map((round) => h("td", {}, ms(round.ops[i]?.ms))),
          checkCell(op.name),
        ),
      ),
    ),
    h(
      "tfoot",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "row", colspan: 4 }, "Round total"),
        rounds.map((round) => h("td", {}, ms(round.ms))),
        h("td", {}),
      ),
    ),
  );

  replace(
    root,
    h(
      "p",
      { class: "summary" },
      badge,
      h("span", {}, summary),
      totalMs !== undefined ? h("span", { class: "muted" }, ` ${ms(totalMs)} in total on ${report.backend}.`) : null,
    ),
    h("div", { class: "table-scroll", tabindex: 0, role: "region", "aria-label": "Self-test results" }, table),
    h(
      "p",
      { class: "note" },
      "Sum and Σ|x| are from round 1. Times run from the start of a round until that op's result was read back; " +
        "round 1 includes compiling the GPU shaders.",
    ),
    !check.ok ? h("ul", { class: "failures" }, check.problems.slice(0, 20).map((p) => h("li", {}, p))) : null,
    check.mode === "reference" && expectedSource
      ? h("p", { class: "note" }, `Reference: ${expectedSource}.`)
      : null,
  );
}
