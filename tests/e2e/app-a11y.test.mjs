// Accessibility: with every panel populated (model, images, a distribution, a gallery, a γ
// sweep, the share box), axe-core finds no WCAG 2.1 A/AA violations, and every visible, enabled
// control can be reached with the Tab key and has an accessible name. Screenshot:
// $E2E_OUT/app/a11y.png (and a narrow, phone-sized one: a11y-narrow.png).
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { launch, log, pageErrors, requireBuilt, shot, startServer, until } from "./lib/browser.mjs";
import { cli, demoReferences, testModel } from "./lib/fixtures.mjs";

const require = createRequire(import.meta.url);

let server;
let tmp;
let model;
let refs;
let dists;

before(async () => {
  requireBuilt();
  tmp = await mkdtemp(join(tmpdir(), "dreamdist-a11y-"));
  server = await startServer();
  model = await testModel();
  ({ refs } = await demoReferences(join(tmp, "refs"), { n: 4, seed: 21 }));
  dists = [];
  for (const seed of [1, 2]) {
    const out = join(tmp, `a11y-${seed}.ddist`);
    await cli(["train", "--manifest", model.dir, "--model", model.id, "--images", join(tmp, "refs"), "--out", out, "--k", "3", "--m", "1", "--samples", "1", "--steps", "1", "--seed", String(seed), "--resolution", String(model.native)]);
    dists.push(out);
  }
});

after(async () => {
  server?.stop();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test("axe-core finds no WCAG A/AA violations and every control is reachable by keyboard", { timeout: 1800000 }, async () => {
  const { context, page, problems } = await launch("a11y", { tmpRoot: tmp });
  try {
    await page.goto(`${server.url}?model=${encodeURIComponent(model.url)}&selftest=0`, { waitUntil: "load" });
    await until(page, problems, () => window.dreamdist?.model?.status === "ready" && window.dreamdist.status === "ready", { what: "the model" });
    await page.setInputFiles("#ref-input", refs.map((r) => r.path));
    await page.setInputFiles("#dist-file", dists);
    await until(page, problems, () => window.dreamdist.refs.length === 4 && window.dreamdist.dists.length === 2, { what: "images and distributions" });
    for (const [sel, v] of Object.entries({ "#s-steps": "2", "#s-count": "2", "#s-guidance": "3" })) await page.fill(sel, v);
    // Keyboard only from here: focus the Generate button and press Enter.
    await page.focus("#sample-go");
    await page.keyboard.press("Enter");
    await until(page, problems, () => window.dreamdist.gallery.length === 2 && !window.dreamdist.job, { what: "samples", timeout: 600000 });
    await page.click("#share-link");
    await until(page, problems, () => window.dreamdist.shareLink || window.dreamdist.errors.dists, { what: "the share link" });
    for (const d of ["details.advanced", "#dataset-box", "details.python", "#diag-panel"]) await page.evaluate((s) => (document.querySelector(s).open = true), d);

    // axe-core.
    await page.addScriptTag({ path: require.resolve("axe-core/axe.min.js") });
    const result = await page.evaluate(() => window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] }, resultTypes: ["violations"] }));
    const violations = result.violations.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 5).map((n) => n.target.join(" ")).join(", ")}`);
    log(`axe-core: ${result.violations.length} violation(s); ${result.passes?.length ?? "?"} rules passed`);
    assert.deepEqual(violations, [], "axe-core violations");

    // Keyboard: Tab through the page and record what gets focus.
    const controls = await page.evaluate(() => {
      const sel = "a[href], button, input, select, textarea, summary, [tabindex]:not([tabindex='-1'])";
      const visible = (el) => {
        const r = el.getBoundingClientRect();
        const s = getComputedStyle(el);
        return (r.width > 0 || r.height > 0 || el.classList.contains("visually-hidden")) && s.visibility !== "hidden" && !el.closest("[hidden]") && !el.closest("details:not([open]) > :not(summary)");
      };
      let i = 0;
      const out = [];
      for (const el of document.querySelectorAll(sel)) {
        if (el.disabled || !visible(el) || el.tabIndex < 0) continue;
        if (el.type === "radio" && !el.checked && document.querySelector(`input[type=radio][name="${el.name}"]:checked`)) continue; // one stop per radio group
        el.dataset.a11y = String(i++);
        const name = el.getAttribute("aria-label") || (el.labels && [...el.labels].map((l) => l.textContent).join(" ")) || el.getAttribute("aria-labelledby") && document.getElementById(el.getAttribute("aria-labelledby"))?.textContent || el.textContent || el.getAttribute("title") || "";
        out.push({ id: el.dataset.a11y, tag: el.tagName.toLowerCase(), label: name.trim().replace(/\s+/g, " ").slice(0, 60) });
      }
      return out;
    });
    log(`${controls.length} keyboard-reachable controls expected`);
    const unnamed = controls.filter((c) => !c.label);
    assert.deepEqual(unnamed, [], "controls without an accessible name");
    await page.evaluate(() => document.activeElement?.blur());
    await page.focus("body");
    const seen = new Set();
    for (let i = 0; i < controls.length * 2 + 20; i++) {
      await page.keyboard.press("Tab");
      const id = await page.evaluate(() => document.activeElement?.dataset?.a11y ?? null);
      if (id !== null) seen.add(id);
      if (seen.size === controls.length) break;
    }
    const missed = controls.filter((c) => !seen.has(c.id));
    assert.deepEqual(missed, [], "controls the Tab key never reached");
    await shot(page, "a11y");
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, "a11y-narrow");
    const overflow = await page.evaluate(() => {
      const w = document.documentElement.clientWidth;
      const wide = [...document.querySelectorAll("body *")]
        .filter((el) => el.getBoundingClientRect().right > w + 1 && !el.closest(".table-scroll, .sweep, #model-progress, .mix-weights, pre, .visually-hidden"))
        .slice(0, 5)
        .map((el) => `${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ""}.${el.className}`);
      return { px: document.documentElement.scrollWidth - w, wide };
    });
    assert.ok(overflow.px <= 1, `the page scrolls sideways on a phone-sized screen (${overflow.px} px): ${overflow.wide.join(", ")}`);
    assert.deepEqual(pageErrors(problems), []);
  } finally {
    await context.close();
  }
});
