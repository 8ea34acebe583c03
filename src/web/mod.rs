//! The wasm-bindgen API of the browser app (thin: everything real lives in the library).
//! Runs inside a dedicated Web Worker; every readback is async.
use wasm_bindgen::prelude::*;

use crate::backend::{self, AdapterInfo};

/// Library version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn to_js<T: serde::Serialize>(v: &T) -> Result<JsValue, JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
}

/// A WebGPU device with burn's runtime on it.
#[wasm_bindgen]
pub struct Engine {
    device: burn::tensor::Device,
    info: AdapterInfo,
}

#[wasm_bindgen]
impl Engine {
    /// Initialises WebGPU (asynchronously) and burn's runtime on it.
    pub async fn create() -> Result<Engine, JsValue> {
        let (device, info) = backend::wgpu_device_async().await.map_err(js_err)?;
        Ok(Engine { device, info })
    }

    /// The adapter's name, features and limits.
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> Result<JsValue, JsValue> {
        to_js(&self.info)
    }

    /// Runs the tensor self-test twice and returns the report.
    #[wasm_bindgen(js_name = selfTest)]
    pub async fn self_test(&self) -> Result<JsValue, JsValue> {
        let report = crate::selftest::run(&self.device, "wgpu", 2).await.map_err(js_err)?;
        to_js(&report)
    }
}
