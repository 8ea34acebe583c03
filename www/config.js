// Where the models come from: the one place a deployer edits.
//
// - The demo model ships with the page (assets/demo/: manifest.json + shards, made by
//   `dreamdist convert`); it is the default and loads offline once cached.
// - Until the demo model is bundled, the tiny test model is used when present (PAGE_FALLBACK;
//   scripts/build-web.sh converts tests/fixtures/tiny there when the native CLI is built).
// - The full Stable Diffusion 2.1 models are converted once by the deployer
//   (`dreamdist convert --model sd21-base --quant q8 --out …`) and hosted anywhere that serves
//   files with HTTP Range and CORS: set their URLs below ("" hides the option). A diffusers
//   mirror (a Hugging Face-style repository URL) also works: the browser converts it while
//   downloading.
// - Tests (and curious users) can pick any model with `?model=<URL of a directory holding
//   manifest.json>`.

export const MODELS = [
  {
    id: "demo",
    label: "Demo model (bundled)",
    detail: "A small model of simple coloured shapes, 32 px. Loads in about a second; trains in minutes.",
    source: { kind: "manifest", url: "assets/demo/" },
    bundled: true,
  },
  {
    id: "sd21-base",
    label: "Stable Diffusion 2.1-base (512 px)",
    detail: "The paper's model family. About 1.3 GB download (q8), needs a recent GPU.",
    source: { kind: "manifest", url: "" },
  },
  {
    id: "sd21",
    label: "Stable Diffusion 2.1 (768 px)",
    detail: "Larger images, v-prediction. About 1.3 GB download (q8), needs a GPU with 8 GB or more.",
    source: { kind: "manifest", url: "" },
  },
];

/** Used when the demo model is not bundled: the tiny fixture model (random weights, 16 px). */
export const PAGE_FALLBACK = {
  id: "tiny",
  label: "Tiny test model",
  detail: "Random weights (the project's test fixture): everything works, nothing is learned. The demo model replaces it once bundled.",
  source: { kind: "manifest", url: "pkg/models/tiny/" },
};

/** Sampling defaults per model id (steps, guidance, batch size per call). */
export const SAMPLE_DEFAULTS = {
  demo: { steps: 25, guidance: 3, batch: 16 },
  tiny: { steps: 10, guidance: 3, batch: 16 },
  "sd21-base": { steps: 50, guidance: 7.5, batch: 2 },
  sd21: { steps: 50, guidance: 7.5, batch: 1 },
};
