// The status area: one line (announced politely) and, on failure, an explanation with advice.
import { h, replace } from "./dom.js";
import { elapsed } from "./format.js";

const FLAG = "chrome://flags/#enable-unsafe-webgpu";

/** A link to this page computing on the CPU (the engine needs no WebGPU then). */
function cpuLink() {
  const url = new URL(location.href);
  url.searchParams.set("compute", "cpu");
  return h("a", { href: url.href }, "compute on the CPU instead");
}

/** Advice per error kind: a title and a list of steps (strings or nodes). */
function advice(error) {
  const code = (text) => h("code", {}, text);
  const noGpu = ["No GPU at hand? The demo model also runs without WebGPU: ", cpuLink(), " (WebAssembly; slower, the full models need a GPU)."];
  switch (error.kind) {
    case "insecure-context":
      return {
        title: "WebGPU needs a secure context",
        steps: [
          ["Open this page from ", code("http://localhost"), " or ", code("http://127.0.0.1"), " (", code("scripts/dev.sh"), " prints the address) or over ", code("https://"), "."],
          ["Opening ", code("index.html"), " as a file (", code("file://"), ") or from a LAN address does not work."],
        ],
      };
    case "no-webgpu":
      return {
        title: "WebGPU is not available in this browser",
        steps: [
          "dreamdist runs on your GPU through WebGPU. Use a recent Chrome or Edge (version 113 or newer) on Windows, macOS or ChromeOS, or Chrome on Android.",
          ["On Linux, WebGPU is behind a flag: enable ", code(FLAG), " (and ", code("chrome://flags/#enable-vulkan"), "), then restart the browser."],
          ["Check ", code("chrome://gpu"), " for WebGPU's status."],
          noGpu,
        ],
      };
    case "no-adapter":
      return {
        title: "No WebGPU adapter is available",
        steps: [
          "In Chrome or Edge, make sure hardware acceleration is on (Settings → System), then restart the browser.",
          ["On Linux, WebGPU must be enabled at ", code(FLAG), " (and ", code("chrome://flags/#enable-vulkan"), "); see ", code("chrome://gpu"), " for WebGPU's status."],
          "A blocklisted GPU or driver also hides the adapter: updating the graphics driver can help.",
          noGpu,
        ],
      };
    case "wasm":
      return {
        title: "The app's WebAssembly module could not be loaded",
        steps: [
          ["Working from a checkout? Build it first with ", code("scripts/build-web.sh"), " (or run ", code("scripts/dev.sh"), ", which builds and serves it)."],
          "Otherwise reload the page; the module is large, and a browser low on memory may refuse it.",
        ],
      };
    case "device":
      return {
        title: "The GPU engine could not be started",
        steps: [
          "The WebGPU adapter was found, but creating a device on it failed (see the details).",
          ["Check ", code("chrome://gpu"), "; restarting the browser or updating the graphics driver can help."],
          noGpu,
        ],
      };
    case "selftest":
      return {
        title: "The self-test could not run",
        steps: [
          "The GPU engine started, but running the self-test failed (see the details).",
          "Press “Run self-test” or reload the page to try again.",
        ],
      };
    case "worker":
      return {
        title: "The engine stopped",
        steps: ["The background worker that runs the engine failed. Reload the page to start again."],
      };
    default:
      return { title: "Something went wrong", steps: ["Reload the page to try again."] };
  }
}

export class StatusView {
  constructor(root) {
    this.root = root;
    this.text = root.querySelector("#status-text");
    this.elapsed = root.querySelector("#status-elapsed");
    this.errorBox = root.querySelector("#status-error");
    this.timer = null;
  }

  /**
   * @param {{state: "loading"|"busy"|"ready"|"error", message: string, since?: number, error?: object}} s
   */
  render({ state, message, since, error }) {
    this.root.dataset.state = state;
    // On failure the line names the problem; the box below explains it and what to do.
    const help = error ? advice(error) : null;
    this.text.textContent = help ? help.title : message;
    clearInterval(this.timer);
    this.timer = null;
    this.elapsed.textContent = "";
    if (since !== undefined && (state === "loading" || state === "busy")) {
      // Ticks on the main thread while the worker computes: the page stays responsive.
      const tick = () => (this.elapsed.textContent = elapsed(performance.now() - since));
      tick();
      this.timer = setInterval(tick, 100);
    }
    if (help) {
      replace(
        this.errorBox,
        h("p", {}, error.message),
        h("ul", {}, help.steps.map((s) => h("li", {}, s))),
        error.detail ? h("details", {}, h("summary", {}, "Details"), h("pre", {}, error.detail)) : null,
      );
      this.errorBox.hidden = false;
    } else {
      this.errorBox.hidden = true;
      this.errorBox.replaceChildren();
    }
  }
}
