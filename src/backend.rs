//! Devices and the crate's single readback path.
//!
//! Rule of the crate: tensor data only leaves a device through [`read`] / [`read_scalar`]
//! (async). The browser has no synchronous readback (`into_data()` panics there), so every
//! code path shared with the web build awaits these; native callers use [`block_on`].
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::{Error, Result};

/// Which backend runs the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's `flex` CPU backend (natively with threads; in the browser on one core, WebAssembly
    /// SIMD).
    Cpu,
    /// wgpu: WebGPU in the browser; Vulkan/Metal/DX12 natively.
    Wgpu,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            _ => Err(Error::Invalid(format!("unknown backend {s:?} (expected cpu or wgpu)"))),
        }
    }
}

/// What the GPU adapter offers, as reported to the user and the UI.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdapterInfo {
    /// Backend kind ("cpu" or "wgpu").
    pub backend: String,
    /// Adapter name.
    pub name: String,
    /// Vendor string or id.
    pub vendor: String,
    /// Architecture (e.g. "swiftshader").
    pub architecture: String,
    /// Graphics API behind wgpu (BrowserWebGpu, Vulkan, Metal, ...).
    pub graphics_api: String,
    /// Device type (DiscreteGpu, Cpu, ...).
    pub device_type: String,
    /// Driver description.
    pub driver: String,
    /// Whether the adapter supports f16 in shaders (optional fast path).
    pub shader_f16: bool,
    /// Whether the adapter supports subgroup operations.
    pub subgroups: bool,
    /// Largest buffer the device accepts, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage-buffer binding, in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Workgroup shared memory, in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations per workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Storage buffers per shader stage.
    pub max_storage_buffers_per_shader_stage: u32,
}

impl AdapterInfo {
    fn from_setup(setup: &burn::tensor::wgpu::WgpuSetup) -> Self {
        use burn::tensor::wgpu::wgpu::Features;
        let info = setup.adapter.get_info();
        let limits = setup.device.limits();
        let features = setup.device.features();
        Self {
            backend: "wgpu".into(),
            name: info.name,
            vendor: if info.vendor == 0 { String::new() } else { format!("0x{:04x}", info.vendor) },
            architecture: String::new(),
            graphics_api: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: [info.driver, info.driver_info].join(" ").trim().to_string(),
            shader_f16: features.contains(Features::SHADER_F16),
            subgroups: features.contains(Features::SUBGROUP),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        }
    }

    /// The adapter in a few words: its name, and the graphics API behind it when there is one
    /// (`NVIDIA H100 (Vulkan)`; the CPU backend is just `burn flex (CPU)`).
    pub fn describe(&self) -> String {
        if self.graphics_api.is_empty() { self.name.clone() } else { format!("{} ({})", self.name, self.graphics_api) }
    }

    /// The description of the CPU backend.
    pub fn cpu() -> Self {
        if cfg!(target_arch = "wasm32") {
            Self {
                backend: "cpu".into(),
                name: "CPU (WebAssembly, one thread)".into(),
                graphics_api: "WebAssembly".into(),
                device_type: "Cpu".into(),
                ..Default::default()
            }
        } else {
            Self { backend: "cpu".into(), name: "burn flex (CPU)".into(), ..Default::default() }
        }
    }
}

/// The most weight bytes (the manifest's total) the browser loads onto the CPU backend: the
/// module's linear memory is at most 4 GiB and holds the weights, the activations and the
/// loader's buffers; the demo model (13.5 MB) fits many times, the full models (≥ 1.5 GB at q8,
/// and several GiB once a step runs) do not.
pub const WASM_CPU_MAX_WEIGHT_BYTES: u64 = 512 << 20;

/// What a GPU cannot do for dreamdist, in words (empty when nothing is missing): checked at
/// start-up so the page can warn early and say what to do.
pub fn limits_report(info: &AdapterInfo) -> Vec<String> {
    let mut out = vec![];
    if info.backend == "cpu" {
        if cfg!(target_arch = "wasm32") {
            out.push(format!(
                "Computing on the CPU (WebAssembly, one thread), not on a GPU: the demo model trains and samples \
                 (slowly for larger images); the full Stable Diffusion models need WebGPU (their weights alone are \
                 more than the {} MiB this mode loads). Switch back under Diagnostics → Compute on.",
                WASM_CPU_MAX_WEIGHT_BYTES >> 20
            ));
        }
        return out;
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let binding = info.max_storage_buffer_binding_size.min(info.max_buffer_size);
    if binding < (128 << 20) {
        out.push(format!(
            "This GPU allows only {:.0} MiB per buffer binding (WebGPU's default is 128 MiB): the full Stable \
             Diffusion 2.1 models cannot load their largest weights (a 1280×2560×3×3 convolution is 118 MB in f32). \
             The demo model works.",
            mib(binding)
        ));
    }
    if !info.shader_f16 {
        out.push(
            "No 16-bit float support in shaders (WebGPU `shader-f16`): everything is computed in 32-bit floats, \
             which is exact but slower and uses more memory. Chrome or Edge on a recent GPU driver usually has it."
                .into(),
        );
    }
    if info.graphics_api == "BrowserWebGpu" {
        // wgpu's WebGPU backend maps no `subgroups` feature (wgpu 30, `FEATURES_MAPPING`), so the
        // kernels never use subgroups in a browser, whatever the adapter offers: say so, without
        // suggesting the user's browser or GPU is missing something.
        out.push(
            "Subgroup operations are not used in the browser yet (the WebGPU layer dreamdist is built on does not \
             expose WebGPU `subgroups`): the matrix kernels run without them; results are the same, only slower."
                .into(),
        );
    } else if !info.subgroups {
        out.push(
            "No subgroup operations (WebGPU `subgroups`): the fastest matrix kernels are not used; results are the \
             same, only slower."
                .into(),
        );
    }
    if info.max_compute_workgroup_storage_size < 16 << 10 {
        out.push(format!(
            "Only {} bytes of workgroup memory: some kernels fall back to slower versions.",
            info.max_compute_workgroup_storage_size
        ));
    }
    if info.device_type == "Cpu" {
        out.push(
            "The WebGPU adapter is a CPU emulation (no hardware GPU in use): the demo model works, the full \
             models are very slow. Enable hardware acceleration in the browser settings, or chrome://flags \
             #enable-unsafe-webgpu on Linux. Without a GPU, Diagnostics → Compute on → CPU (WebAssembly) \
             trains and samples the demo model much faster than this emulation."
                .into(),
        );
    }
    out
}

/// Initialises burn's wgpu runtime asynchronously (the only way in a browser) and reports the
/// adapter. The device requests the adapter's own limits and features.
///
/// The runtime can be registered once per process: later calls return the same device.
pub async fn wgpu_device_async() -> Result<(Device, AdapterInfo)> {
    static DEVICE: std::sync::Mutex<Option<(Device, AdapterInfo)>> = std::sync::Mutex::new(None);
    if let Some(d) = DEVICE.lock().map_err(|_| Error::Device("device lock poisoned".into()))?.clone() {
        return Ok(d);
    }
    let (device, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map_err(|e| Error::Device(format!("WebGPU/wgpu initialisation failed: {e}")))?;
    let d = (device, AdapterInfo::from_setup(&setup));
    *DEVICE.lock().map_err(|_| Error::Device("device lock poisoned".into()))? = Some(d.clone());
    Ok(d)
}

/// Bytes in use in `device`'s memory pool (`None` on backends without a pool report, such as
/// the CPU).
pub fn pool_bytes_in_use(device: &Device) -> Option<u64> {
    device.memory_pool_usage().map(|u| u.bytes_in_use)
}

/// The CPU device (burn's `flex` backend; in the browser it runs in the engine's worker).
pub fn cpu_device() -> Device {
    Device::flex()
}

/// Whether `device` computes on the host CPU (burn's `flex` backend, with or without autodiff):
/// some operations pick a formulation that is faster there (see `model::nn::Conv2d`).
pub fn is_host(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

/// Memory the host could still give this process (`MemAvailable`), where the platform says.
pub fn host_available_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Native: a device of the given kind, with a description of it.
#[cfg(not(target_arch = "wasm32"))]
pub fn device(kind: BackendKind) -> Result<(Device, AdapterInfo)> {
    match kind {
        BackendKind::Cpu => Ok((cpu_device(), AdapterInfo::cpu())),
        BackendKind::Wgpu => {
            // Threads (parallel tests) may ask at once, and burn's runtime can be registered
            // only once per process: the first initialises, the others then get its device.
            static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
            block_on(wgpu_device_async())
        }
    }
}

/// Native: runs a future to completion on this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// Reads a float tensor back to the host as `f32` values (row-major).
pub async fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    let data: TensorData = t.into_data_async().await.map_err(|e| Error::Readback(format!("{e:?}")))?;
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::Readback(format!("{e:?}")))
}

/// Native, for the host kernels of the CPU backend (`model::host_attention`, `host_resnet`,
/// `nn::host_pointwise`): the values of a float tensor as dense row-major `f32`, taken off any
/// autodiff graph and dequantized or widened where needed. Synchronous, so the one exception
/// to [`read`]: only for tensors already on the host (burn's `flex`), never in the browser.
#[cfg(not(target_arch = "wasm32"))]
pub fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    use burn::tensor::{DType, FloatDType};
    let t = t.without_autodiff();
    let t = if matches!(t.dtype(), DType::QFloat(_)) { t.dequantize() } else { t };
    let t = if t.dtype() == DType::F32 { t } else { t.cast(FloatDType::F32) };
    t.into_data().try_into_vec::<f32>().expect("f32 values")
}

/// Reads a one-element tensor back as `f32`.
pub async fn read_scalar<const D: usize>(t: Tensor<D>) -> Result<f32> {
    let v = read(t.reshape([1])).await?;
    Ok(v[0])
}

/// Uploads host values as a float tensor of the given shape.
pub fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    debug_assert_eq!(values.len(), shape.iter().product::<usize>());
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Milliseconds from an arbitrary origin (`std::time::Instant` does not exist in the browser).
pub fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        use wasm_bindgen::JsCast;
        // `performance.now()` (sub-millisecond, monotonic) in a worker or a page; `Date.now()`
        // where there is none.
        thread_local! {
            static PERF: Option<web_sys::Performance> =
                js_sys::Reflect::get(&js_sys::global(), &"performance".into()).ok().and_then(|p| p.dyn_into().ok());
        }
        PERF.with(|p| p.as_ref().map_or_else(js_sys::Date::now, |p| p.now()))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(api: &str, subgroups: bool) -> AdapterInfo {
        AdapterInfo {
            backend: "wgpu".into(),
            graphics_api: api.into(),
            device_type: "DiscreteGpu".into(),
            shader_f16: true,
            subgroups,
            max_buffer_size: 256 << 20,
            max_storage_buffer_binding_size: 128 << 20,
            max_compute_workgroup_storage_size: 16 << 10,
            ..Default::default()
        }
    }

    #[test]
    fn limits_report_names_what_is_missing() {
        assert!(limits_report(&gpu("Vulkan", true)).is_empty());
        let native = limits_report(&gpu("Vulkan", false));
        assert_eq!(native.len(), 1);
        assert!(native[0].starts_with("No subgroup operations"), "{native:?}");
        // In a browser wgpu never reports subgroups: the note must not blame the user's GPU.
        let browser = limits_report(&gpu("BrowserWebGpu", false));
        assert_eq!(browser.len(), 1);
        assert!(browser[0].contains("not used in the browser yet"), "{browser:?}");
        let small = AdapterInfo { max_storage_buffer_binding_size: 64 << 20, ..gpu("Vulkan", true) };
        assert!(limits_report(&small)[0].contains("only 64 MiB per buffer binding"));
        let cpu = AdapterInfo { device_type: "Cpu".into(), shader_f16: false, ..gpu("Vulkan", true) };
        assert_eq!(limits_report(&cpu).len(), 2);
    }
}
