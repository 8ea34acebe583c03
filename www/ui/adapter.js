// The WebGPU adapter card: name, API, device type, features and the limits that bound model size
// (or, when the engine computes on the CPU, what that means).
import { h, replace, yesNo } from "./dom.js";
import { int, kib, mib } from "./format.js";

const API_NAMES = { BrowserWebGpu: "WebGPU (browser)", Vulkan: "Vulkan", Metal: "Metal", Dx12: "Direct3D 12", Gl: "OpenGL" };

/** The best name available for the adapter. */
export function adapterName(a) {
  const b = a.browser ?? {};
  return (
    a.name ||
    b.description ||
    [b.vendor, b.architecture].filter(Boolean).join(" ") ||
    "Unnamed adapter"
  );
}

/** Whether the engine's device has a feature; notes when only the adapter offers it. */
function feature(enabled, browser, name) {
  if (enabled || !browser.features?.includes(name)) return yesNo(enabled);
  return h(
    "span",
    { title: `The adapter offers "${name}", but the engine's device does not use it` },
    yesNo(false, { no: "not enabled" }),
    " ",
    h("span", { class: "aside" }, "(adapter: yes)"),
  );
}

export function renderAdapter(root, adapter) {
  if (!adapter) {
    replace(root, h("p", { class: "muted" }, "No adapter."));
    return;
  }
  if (adapter.backend === "cpu") {
    replace(
      root,
      h("p", { class: "adapter-name" }, adapterName(adapter)),
      h(
        "p",
        { class: "note" },
        "The engine computes on the CPU, in this tab's background worker, with WebAssembly SIMD: no GPU is used. " +
          "The demo model trains and samples; the full models need the GPU (WebGPU).",
      ),
    );
    return;
  }
  const b = adapter.browser ?? {};
  const vendor = [b.vendor || adapter.vendor, b.architecture || adapter.architecture].filter(Boolean).join(" · ");
  const fallback = Boolean(b.isFallbackAdapter);
  const facts = [
    ["Vendor", vendor || "—"],
    ["Graphics API", API_NAMES[adapter.graphicsApi] ?? adapter.graphicsApi ?? "—"],
    ["Device type", adapter.deviceType || "—"],
    [
      "Fallback adapter",
      fallback
        ? h("span", { class: "badge warn", title: "A software adapter: it computes on the CPU" }, "yes (software)")
        : h("span", { class: "badge yes" }, "no"),
    ],
    ["Shader f16", feature(adapter.shaderF16, b, "shader-f16")],
    ["Subgroups", feature(adapter.subgroups, b, "subgroups")],
    ["Max buffer size", mib(adapter.maxBufferSize)],
    ["Max storage binding", mib(adapter.maxStorageBufferBindingSize)],
    ["Workgroup storage", kib(adapter.maxComputeWorkgroupStorageSize)],
    ["Invocations / workgroup", int(adapter.maxComputeInvocationsPerWorkgroup)],
    ["Storage buffers / stage", int(adapter.maxStorageBuffersPerShaderStage)],
  ];
  if (adapter.driver) facts.push(["Driver", adapter.driver]);
  replace(
    root,
    h("p", { class: "adapter-name" }, adapterName(adapter)),
    h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", { class: "fact" }, h("dt", {}, k), h("dd", {}, v)))),
    fallback
      ? h(
          "p",
          { class: "note" },
          "This is a software (CPU) fallback adapter: results are correct, but much slower than on a GPU.",
        )
      : null,
  );
}
