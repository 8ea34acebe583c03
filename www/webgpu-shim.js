// WebGPU adjustments for burn/cubecl in the browser. Import this module in the engine's worker
// BEFORE the WebAssembly module creates its device (it patches the prototypes that wgpu calls).
//
// 1. `subgroups`: cubecl's autotuned matmul kernels use subgroup operations (`enable subgroups;`)
//    but wgpu's WebGPU backend never asks the browser for the feature, so Chrome rejects those
//    shader modules ("extension 'subgroups' is not allowed") and the device is poisoned. We add
//    the feature to every device request when the adapter has it.
// 2. Subgroup uniformity: with the feature enabled, Chrome's WGSL compiler (Tint) rejects some of
//    those kernels because `subgroupAdd` sits in control flow its analysis cannot prove
//    subgroup-uniform. The kernels are written for uniform use; we turn that diagnostic off in
//    shader modules that enable subgroups (`diagnostic(off, subgroup_uniformity);`). Every
//    browser result is checked against the native CPU backend in the e2e tests.
// 3. Limits (opt-in): `clampLimits()` makes every device request ask for WebGPU's DEFAULT
//    limits (128 MiB per storage binding, 256 MiB per buffer) whatever the adapter offers, so a
//    test on a generous adapter proves that the model fits a typical GPU.
//
// `shimReport()` says what was applied (for the page's adapter panel and the tests).

const report = { subgroupsRequested: false, adapterHasSubgroups: false, uniformityOff: 0, clamped: false };

export const WEBGPU_DEFAULT_LIMITS = Object.freeze({
  maxStorageBufferBindingSize: 134217728,
  maxBufferSize: 268435456,
});

let clamp = false;

/** From now on, devices get WebGPU's default binding and buffer limits. */
export function clampLimits() {
  clamp = true;
  report.clamped = true;
}

export function shimReport() {
  return { ...report };
}

if (typeof GPUAdapter !== "undefined") {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = function (descriptor = {}) {
    const features = new Set(descriptor.requiredFeatures ?? []);
    report.adapterHasSubgroups = this.features.has("subgroups");
    if (report.adapterHasSubgroups) {
      features.add("subgroups");
      report.subgroupsRequested = true;
    }
    let requiredLimits = descriptor.requiredLimits;
    if (clamp && requiredLimits) {
      requiredLimits = { ...requiredLimits };
      for (const [k, v] of Object.entries(WEBGPU_DEFAULT_LIMITS)) requiredLimits[k] = v;
    }
    return requestDevice.call(this, { ...descriptor, requiredFeatures: [...features], requiredLimits });
  };
}

if (typeof GPUDevice !== "undefined") {
  const createShaderModule = GPUDevice.prototype.createShaderModule;
  GPUDevice.prototype.createShaderModule = function (descriptor) {
    if (typeof descriptor?.code === "string" && descriptor.code.includes("enable subgroups;")) {
      report.uniformityOff += 1;
      descriptor = {
        ...descriptor,
        code: descriptor.code.replace("enable subgroups;", "enable subgroups;\ndiagnostic(off, subgroup_uniformity);"),
      };
    }
    return createShaderModule.call(this, descriptor);
  };
}
