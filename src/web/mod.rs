//! The wasm-bindgen API of the browser app (thin: everything real lives in the library).
//! Runs inside a dedicated Web Worker (www/worker.js); every readback is async.
//!
//! Values cross the boundary as plain JS objects (serde-wasm-bindgen, JSON-compatible) and
//! byte arrays (`Uint8Array`). Errors are `Error`s with a message meant for people. Long
//! operations take a progress callback; a callback returning `false` cancels.
use burn::tensor::Tensor;
use js_sys::{Function, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::backend::{self, AdapterInfo, read, tensor};
use crate::distribution::file::{DistFile, Precision};
use crate::distribution::{MixRule, PromptGaussian, PromptLayout, Template};
use crate::model::{MemPlan, ModelSpec, StableDiffusion};
use crate::pipeline::{SampleConfig, generate_batch};
use crate::rng::Rng;
use crate::schedule::SamplerKind;
use crate::tokenizer::{ClipTokenizer, MAX_LEN};
use crate::train::{Chunking, TrainConfig, Trainer, dist_file, restore_from_file, sigma_of};
use crate::weights::browser::{FetchTransport, OpfsCache, storage_estimate};
use crate::weights::loader::{Retry, load_shards};
use crate::weights::manifest::Manifest;
use crate::weights::{ManifestSource, sha256_hex};

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

fn to_js<T: Serialize>(v: &T) -> Result<JsValue, JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
}

fn from_js<T: for<'de> Deserialize<'de>>(v: JsValue) -> Result<T, JsValue> {
    serde_wasm_bindgen::from_value(v).map_err(|e| js_err(format!("invalid request: {e}")))
}

/// Calls a JS callback with a value; `false` from it means "cancel".
fn call(f: &Option<Function>, v: &JsValue) -> bool {
    match f {
        Some(f) => !matches!(f.call1(&JsValue::NULL, v).ok().and_then(|r| r.as_bool()), Some(false)),
        None => true,
    }
}

/// Where a model comes from.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Source {
    /// A converted model: `url` is the directory holding manifest.json.
    Manifest { url: String },
    /// A diffusers-layout repository read in ranges and converted in the browser.
    Diffusers {
        url: String,
        model: String,
        #[serde(default = "default_quant")]
        quant: String,
    },
}

fn default_quant() -> String {
    "q8".into()
}

/// Options of `Engine.create`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct CreateOptions {
    /// Plan memory as if a binding could hold at most this many bytes.
    max_binding: Option<u64>,
    /// Where to compute: `"webgpu"` (default) or `"cpu"` (burn's CPU backend in this worker).
    compute: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    id: String,
    spec: ModelSpec,
    identity: String,
    native_resolution: usize,
    size_multiple: usize,
    resident_bytes: Option<u64>,
    /// Per component (device bytes and the host-side token table).
    resident: crate::model::Resident,
    plan_block_bytes: usize,
    report: serde_json::Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DistInfo {
    handle: usize,
    name: String,
    k: usize,
    m: usize,
    template: String,
    mode: String,
    recipe: String,
    steps: u64,
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MixPart {
    handle: usize,
    #[serde(default = "one")]
    weight: f32,
}

fn one() -> f32 {
    1.0
}

/// A sampling request.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SampleRequest {
    dists: Vec<MixPart>,
    #[serde(default)]
    rule: MixRule,
    /// Template with `{}` (text-guided editing); default: the first distribution's.
    template: Option<String>,
    gamma: f32,
    seeds: Vec<u64>,
    steps: usize,
    guidance: f32,
    scheduler: SamplerKind,
    size: Option<usize>,
    /// Use prompt k's encoding itself (no sampling) instead of the Gaussian.
    prompt: Option<usize>,
    /// One prompt index per seed (image i shows prompt `prompts[i]`; no sampling).
    prompts: Option<Vec<usize>>,
    /// Draw condition i from its own generator `condSeeds[i]` and the starting noise from a
    /// fresh generator `seeds[i]`, so the condition and the noise vary apart (without it, as in
    /// the CLI, one generator per seed draws the condition and then the noise).
    cond_seeds: Option<Vec<u64>>,
}

#[derive(Serialize)]
struct Image {
    width: usize,
    height: usize,
    seed: u64,
    #[serde(with = "serde_bytes_compat")]
    rgb: Vec<u8>,
}

mod serde_bytes_compat {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
}

/// A WebGPU device with burn's runtime on it, and the loaded model, training run and
/// distributions.
#[wasm_bindgen]
pub struct Engine {
    device: burn::tensor::Device,
    info: AdapterInfo,
    plan: MemPlan,
    tokenizer: ClipTokenizer,
    sd: Option<StableDiffusion>,
    uncond: Option<Tensor<3>>,
    trainer: Option<(Trainer, String)>,
    dists: Vec<Option<DistFile>>,
}

impl Engine {
    fn sd(&self) -> Result<&StableDiffusion, JsValue> {
        self.sd.as_ref().ok_or_else(|| js_err("no model is loaded"))
    }
    fn dist(&self, h: usize) -> Result<&DistFile, JsValue> {
        self.dists.get(h).and_then(|d| d.as_ref()).ok_or_else(|| js_err(format!("no distribution {h}")))
    }
    fn gaussian_of(&self, file: &DistFile, template: &Template) -> Result<(PromptGaussian, PromptLayout), JsValue> {
        let sd = self.sd()?;
        let v = tensor(file.prompts.clone(), [file.k, file.m, file.hidden], &self.device);
        let layout = PromptLayout::new(&self.tokenizer, template, file.m).map_err(js_err)?;
        let c = layout.encode(&sd.text, v).map_err(js_err)?;
        Ok((PromptGaussian::fit_with(c, sigma_of(file)), layout))
    }
    async fn set_model(&mut self, mut sd: StableDiffusion) -> Result<(), JsValue> {
        sd.plan = self.plan;
        let uncond = crate::pipeline::encode_text(&sd, &self.tokenizer, "").map_err(js_err)?;
        self.uncond = Some(uncond);
        self.trainer = None;
        self.sd = Some(sd);
        Ok(())
    }
}

#[wasm_bindgen]
impl Engine {
    /// Initialises WebGPU (asynchronously) and burn's runtime on it, or with
    /// `options.compute = "cpu"` burn's CPU backend in this worker (no GPU needed).
    /// `options.maxBinding` plans memory for a smaller binding limit than the adapter's (tests of
    /// the defaults).
    pub async fn create(options: JsValue) -> Result<Engine, JsValue> {
        let opts: CreateOptions =
            if options.is_undefined() || options.is_null() { Default::default() } else { from_js(options)? };
        let (device, info, plan) = match opts.compute.as_deref().unwrap_or("webgpu") {
            "webgpu" | "gpu" => {
                let (device, info) = backend::wgpu_device_async().await.map_err(js_err)?;
                let limit = opts.max_binding.unwrap_or(info.max_storage_buffer_binding_size.min(info.max_buffer_size));
                (device, info, MemPlan::for_binding_limit(limit))
            }
            // Blocks of 64 MiB: the module's linear memory only grows, so keep its peak small.
            "cpu" => (backend::cpu_device(), AdapterInfo::cpu(), MemPlan::blocks(64 << 20)),
            other => return Err(js_err(format!("unknown compute {other:?} (expected \"webgpu\" or \"cpu\")"))),
        };
        Ok(Engine {
            device,
            info,
            plan,
            tokenizer: ClipTokenizer::sd2().map_err(js_err)?,
            sd: None,
            uncond: None,
            trainer: None,
            dists: vec![],
        })
    }

    /// The adapter's name, features and limits.
    #[wasm_bindgen(js_name = adapterInfo)]
    pub fn adapter_info(&self) -> Result<JsValue, JsValue> {
        to_js(&self.info)
    }

    /// Runs the tensor self-test twice and returns the report.
    #[wasm_bindgen(js_name = selfTest)]
    pub async fn self_test(&self) -> Result<JsValue, JsValue> {
        let report = crate::selftest::run(&self.device, &self.info.backend, 2).await.map_err(js_err)?;
        to_js(&report)
    }

    /// Loads a model (`{kind: "manifest", url}` or `{kind: "diffusers", url, model, quant}`),
    /// verified shards from the cache first. `onProgress(p)` gets loader progress; returning
    /// `false` cancels.
    #[wasm_bindgen(js_name = loadModel)]
    pub async fn load_model(&mut self, source: JsValue, on_progress: Option<Function>) -> Result<JsValue, JsValue> {
        let source: Source = from_js(source)?;
        let mut cache = OpfsCache::open().await.map_err(js_err)?;
        if let Source::Diffusers { model, .. } = &source
            && backend::is_host(&self.device)
        {
            return Err(js_err(format!(
                "{model} is too large to compute on the CPU in the browser: choose Compute on → GPU (WebGPU)"
            )));
        }
        let (manifest, base) = match &source {
            Source::Manifest { url } => (self.manifest_for(&mut cache, url).await?, url.clone()),
            Source::Diffusers { url, model, quant } => {
                (self.convert_direct(&mut cache, url, model, quant, &on_progress).await?, url.clone())
            }
        };
        if backend::is_host(&self.device) && manifest.total_bytes > backend::WASM_CPU_MAX_WEIGHT_BYTES {
            return Err(js_err(format!(
                "this model's weights are {:.0} MiB, more than the {} MiB the CPU (WebAssembly) mode can hold: \
                 choose Compute on → GPU (WebGPU) for it",
                manifest.total_bytes as f64 / (1u64 << 20) as f64,
                backend::WASM_CPU_MAX_WEIGHT_BYTES >> 20
            )));
        }
        self.sd = None;
        self.uncond = None;
        self.trainer = None;
        let before = backend::pool_bytes_in_use(&self.device);
        let mut src = ManifestSource::new(manifest, &self.device);
        let mut transport = FetchTransport::default();
        let cancelled = std::cell::Cell::new(false);
        let mut progress = |p: &crate::weights::loader::Progress| {
            if let Ok(v) = to_js(p)
                && !call(&on_progress, &v)
            {
                cancelled.set(true);
            }
        };
        let report = load_shards(
            &mut src,
            &base,
            &crate::weights::manifest::COMPONENTS,
            &mut transport,
            &mut cache,
            Retry::default(),
            &mut progress,
            &|| cancelled.get(),
        )
        .await
        .map_err(js_err)?;
        let sd = StableDiffusion::from_manifest_source(&mut src, &self.device).map_err(js_err)?;
        self.set_model(sd).await?;
        let after = backend::pool_bytes_in_use(&self.device);
        let mut report_json = serde_json::to_value(&report).map_err(js_err)?;
        report_json["fetchRequests"] = transport.requests.into();
        self.model_info_with(after.zip(before).map(|(a, b)| a.saturating_sub(b)), report_json)
    }

    async fn manifest_for(&self, cache: &mut OpfsCache, url: &str) -> Result<Manifest, JsValue> {
        let key = sha256_hex(url.as_bytes());
        let mut transport = FetchTransport::default();
        let murl = crate::weights::loader::join(url, "manifest.json");
        let mut bytes = vec![];
        // At most one byte more than a manifest may have: an endless body costs the tab nothing.
        let limit = crate::weights::manifest::MAX_MANIFEST_BYTES as u64 + 1;
        let fetched = crate::weights::loader::Transport::get(&mut transport, &murl, 0, None, limit, &mut |c| {
            bytes.extend_from_slice(c)
        })
        .await;
        match fetched {
            Ok(()) => {
                let m = Manifest::from_json(&bytes).map_err(|e| js_err(e.context(&murl)))?;
                cache.put_manifest(&key, &bytes).await.map_err(js_err)?;
                Ok(m)
            }
            Err(e) => match cache.manifest(&key).await.map_err(js_err)? {
                // Offline (or the server is gone): the manifest stored at the last load.
                Some(b) => Manifest::from_json(&b).map_err(js_err),
                None => Err(js_err(format!("{murl}: {e}"))),
            },
        }
    }

    async fn convert_direct(
        &self,
        cache: &mut OpfsCache,
        url: &str,
        model: &str,
        quant: &str,
        on_progress: &Option<Function>,
    ) -> Result<Manifest, JsValue> {
        use crate::weights::convert::{Quant, convert};
        use crate::weights::remote::{FILES, RemoteSafetensors};
        let quant: Quant = quant.parse().map_err(js_err)?;
        let spec = ModelSpec::from_id(model).map_err(js_err)?;
        let key = sha256_hex(format!("direct:{url}:{model}:{}", quant.name()).as_bytes());
        if let Some(b) = cache.manifest(&key).await.map_err(js_err)? {
            let m = Manifest::from_json(&b).map_err(js_err)?;
            // Reuse the conversion when every shard is still cached.
            let cached: std::collections::HashSet<String> =
                cache.entries().await.map_err(js_err)?.into_iter().map(|(s, _)| s).collect();
            if m.shards.iter().all(|s| cached.contains(&s.sha256)) {
                return Ok(m);
            }
        }
        let open = |f: &str| format!("{}/{f}", url.trim_end_matches('/'));
        let mut t = RemoteSafetensors::open(
            FetchTransport::default(),
            &open(FILES[0].1),
            crate::model::ClipConfig::key_rewrites(),
        )
        .await
        .map_err(js_err)?;
        let mut u = RemoteSafetensors::open(FetchTransport::default(), &open(FILES[1].1), &[]).await.map_err(js_err)?;
        let mut v = RemoteSafetensors::open(
            FetchTransport::default(),
            &open(FILES[2].1),
            crate::model::VaeConfig::key_rewrites(),
        )
        .await
        .map_err(js_err)?;
        let mut sink = crate::weights::browser::CacheSink { cache };
        let m = convert(&self.device, &spec, quant, [&mut t, &mut u, &mut v], &mut sink, url, |c, i, n| {
            let p = serde_json::json!({"phase": "convert", "component": c, "tensor": i, "tensors": n});
            if let Ok(v) = to_js(&p) {
                call(on_progress, &v);
            }
        })
        .await
        .map_err(js_err)?;
        let json = m.to_json().map_err(js_err)?;
        sink.cache.put_manifest(&key, &json).await.map_err(js_err)?;
        Ok(m)
    }

    fn model_info_with(&self, resident: Option<u64>, report: serde_json::Value) -> Result<JsValue, JsValue> {
        let sd = self.sd()?;
        to_js(&ModelInfo {
            id: sd.spec.id.clone(),
            spec: sd.spec.clone(),
            identity: sd.identity.clone(),
            native_resolution: sd.spec.native_resolution(),
            size_multiple: sd.spec.size_multiple(),
            resident_bytes: resident,
            resident: sd.resident.clone(),
            plan_block_bytes: self.plan.max_block_bytes,
            report,
        })
    }

    /// What is loaded.
    #[wasm_bindgen(js_name = modelInfo)]
    pub fn model_info(&self) -> Result<JsValue, JsValue> {
        self.model_info_with(None, serde_json::Value::Null)
    }

    /// What the weight cache holds: the models whose manifests are stored (`models: [{model,
    /// quant, source, bytes, totalBytes, complete}]`, `bytes` of them cached), the verified shards
    /// (`shards: [{sha256, bytes}]`, `bytes` in all), downloads that did not finish (`partial`,
    /// `partialBytes`: a load in progress, or one a closed tab interrupted) and the browser's
    /// storage estimate (`usage`, `quota`).
    #[wasm_bindgen(js_name = cacheInfo)]
    pub async fn cache_info(&self) -> Result<JsValue, JsValue> {
        let cache = OpfsCache::open().await.map_err(js_err)?;
        let entries = cache.entries().await.map_err(js_err)?;
        let partial = cache.partial().await.map_err(js_err)?;
        let cached: std::collections::HashMap<&str, u64> = entries.iter().map(|(s, b)| (s.as_str(), *b)).collect();
        let mut models = vec![];
        // The same shards can be named by manifests stored under several keys (other URLs).
        let mut seen = std::collections::HashSet::new();
        for key in cache.manifest_keys().await.map_err(js_err)? {
            // A stored manifest that no longer parses (written by another version) is not a model.
            let Some(m) = cache.manifest(&key).await.map_err(js_err)?.and_then(|b| Manifest::from_json(&b).ok()) else {
                continue;
            };
            if !seen.insert(m.shards.iter().map(|s| s.sha256.as_str()).collect::<Vec<_>>().join(",")) {
                continue;
            }
            let mut distinct = std::collections::HashSet::new();
            let bytes: u64 = m
                .shards
                .iter()
                .filter(|s| distinct.insert(s.sha256.as_str()))
                .filter_map(|s| cached.get(s.sha256.as_str()))
                .sum();
            models.push(serde_json::json!({
                "model": m.model.id, "quant": m.quant, "source": m.source, "bytes": bytes,
                "totalBytes": m.download_bytes(), "complete": m.shards.iter().all(|s| cached.contains_key(s.sha256.as_str())),
            }));
        }
        let est = storage_estimate().await;
        to_js(&serde_json::json!({
            "models": models,
            "shards": entries.iter().map(|(s, b)| serde_json::json!({"sha256": s, "bytes": b})).collect::<Vec<_>>(),
            "bytes": entries.iter().map(|e| e.1).sum::<u64>(),
            "partial": partial.iter().map(|(s, b)| serde_json::json!({"sha256": s, "bytes": b})).collect::<Vec<_>>(),
            "partialBytes": partial.iter().map(|e| e.1).sum::<u64>(),
            "usage": est.map(|e| e.0), "quota": est.map(|e| e.1),
        }))
    }

    /// Deletes every cached shard, partial download and manifest; returns how many files.
    #[wasm_bindgen(js_name = cacheClear)]
    pub async fn cache_clear(&self) -> Result<u32, JsValue> {
        let cache = OpfsCache::open().await.map_err(js_err)?;
        Ok(cache.clear().await.map_err(js_err)? as u32)
    }

    /// Starts training on reference images (encoded files) with `config` (TrainConfig fields;
    /// missing ones take the recipe's defaults). Returns the full configuration.
    #[wasm_bindgen(js_name = trainStart)]
    pub async fn train_start(
        &mut self,
        images: js_sys::Array,
        names: js_sys::Array,
        config: JsValue,
    ) -> Result<JsValue, JsValue> {
        let sd = self.sd()?;
        let mut cfg_json: serde_json::Value = from_js(config)?;
        let recipe = cfg_json.get("recipe").and_then(|r| r.as_str()).unwrap_or("paper").to_string();
        let base = serde_json::to_value(TrainConfig::for_recipe(recipe.parse().map_err(js_err)?)).map_err(js_err)?;
        let mut merged = base;
        if let (Some(m), Some(o)) = (merged.as_object_mut(), cfg_json.as_object_mut()) {
            for (k, v) in o.iter() {
                m.insert(k.clone(), v.clone());
            }
        }
        let cfg: TrainConfig = serde_json::from_value(merged).map_err(|e| js_err(format!("invalid settings: {e}")))?;
        sd.spec.check_size(cfg.resolution).map_err(js_err)?;
        let mut tensors = vec![];
        for (i, img) in images.iter().enumerate() {
            let bytes = Uint8Array::new(&img).to_vec();
            let name = names.get(i as u32).as_string().unwrap_or_else(|| format!("image {}", i + 1));
            tensors.push(
                crate::image::load_for_training(&bytes, cfg.resolution, cfg.crop, &name, &self.device)
                    .map_err(js_err)?,
            );
        }
        let trainer = Trainer::new(cfg.clone(), sd, &self.tokenizer, &tensors).await.map_err(js_err)?;
        let name = cfg_json.get("name").and_then(|n| n.as_str()).unwrap_or("my distribution").to_string();
        let mut t = trainer;
        // Small models (demo, tiny) fit whole steps in memory, and every extra UNet pass costs
        // thousands of dispatches (slow on software adapters); full-size models go one
        // reparameterised sample at a time to bound memory (the gradient is the same).
        t.set_chunking(Chunking::for_model(&sd.spec));
        self.trainer = Some((t, name));
        to_js(&cfg)
    }

    /// Runs one training step; returns `{step, loss, denoise, ortho}`.
    #[wasm_bindgen(js_name = trainStep)]
    pub async fn train_step(&mut self) -> Result<JsValue, JsValue> {
        // On the CPU backend nothing inside a step awaits the browser: give the worker's event
        // loop a turn first, so pause and cancel messages arrive between steps.
        crate::pipeline::yield_now().await;
        let sd = self.sd.as_ref().ok_or_else(|| js_err("no model is loaded"))?;
        let (t, _) = self.trainer.as_mut().ok_or_else(|| js_err("no training run"))?;
        let s = t.step(sd).await.map_err(js_err)?;
        to_js(&s)
    }

    /// The training run as a checkpoint (`.ddist`, f32 with optimizer state).
    #[wasm_bindgen(js_name = trainCheckpoint)]
    pub async fn train_checkpoint(&self) -> Result<Uint8Array, JsValue> {
        let sd = self.sd()?;
        let (t, name) = self.trainer.as_ref().ok_or_else(|| js_err("no training run"))?;
        let f = dist_file(t, sd, name, Precision::F32, true).await.map_err(js_err)?;
        Ok(Uint8Array::from(&f.to_bytes().map_err(js_err)?[..]))
    }

    /// Continues a run from a checkpoint made with the same settings and images.
    #[wasm_bindgen(js_name = trainRestore)]
    pub fn train_restore(&mut self, bytes: &[u8]) -> Result<u32, JsValue> {
        let file = DistFile::from_bytes(bytes).map_err(js_err)?;
        let model = crate::train::model_id(self.sd()?);
        file.check_model(&model).map_err(js_err)?;
        let (t, _) = self.trainer.as_mut().ok_or_else(|| js_err("no training run"))?;
        restore_from_file(t, &file).map_err(js_err)?;
        Ok(t.step as u32)
    }

    /// The distribution learned so far, registered for sampling (shared precision, f16).
    #[wasm_bindgen(js_name = trainDistribution)]
    pub async fn train_distribution(&mut self) -> Result<JsValue, JsValue> {
        let sd = self.sd()?;
        let (t, name) = self.trainer.as_ref().ok_or_else(|| js_err("no training run"))?;
        let f = dist_file(t, sd, name, Precision::F16, false).await.map_err(js_err)?;
        let bytes = f.to_bytes().map_err(js_err)?;
        self.add_distribution(&bytes)
    }

    /// Validates a `.ddist` file for the loaded model and registers it.
    #[wasm_bindgen(js_name = addDistribution)]
    pub fn add_distribution(&mut self, bytes: &[u8]) -> Result<JsValue, JsValue> {
        let file = DistFile::from_bytes(bytes).map_err(|e| js_err(format!("not a usable distribution file: {e}")))?;
        let note = file.check_model(&crate::train::model_id(self.sd()?)).map_err(js_err)?;
        let info = DistInfo {
            handle: self.dists.len(),
            name: file.name.clone(),
            k: file.k,
            m: file.m,
            template: file.train.template.clone(),
            mode: file.train.mode.clone(),
            recipe: file.train.recipe.clone().unwrap_or_else(|| "paper".into()),
            steps: file.train.steps,
            note,
        };
        self.dists.push(Some(file));
        to_js(&info)
    }

    /// Forgets a registered distribution.
    #[wasm_bindgen(js_name = removeDistribution)]
    pub fn remove_distribution(&mut self, handle: usize) {
        if let Some(d) = self.dists.get_mut(handle) {
            *d = None;
        }
    }

    /// The `.ddist` bytes of a registered distribution (export).
    #[wasm_bindgen(js_name = distributionBytes)]
    pub fn distribution_bytes(&self, handle: usize) -> Result<Uint8Array, JsValue> {
        Ok(Uint8Array::from(&self.dist(handle)?.to_bytes().map_err(js_err)?[..]))
    }

    /// Prompt `index` as an AUTOMATIC1111 / ComfyUI textual-inversion embedding.
    #[wasm_bindgen(js_name = exportTextualInversion)]
    pub fn export_textual_inversion(&self, handle: usize, index: usize) -> Result<Uint8Array, JsValue> {
        let f = self.dist(handle)?;
        Ok(Uint8Array::from(&crate::distribution::export::textual_inversion_file(f, index).map_err(js_err)?[..]))
    }

    /// μ and σ shaped as diffusers' `prompt_embeds`, under `template` (default: the training one).
    #[wasm_bindgen(js_name = exportDiffusers)]
    pub async fn export_diffusers(&self, handle: usize, template: Option<String>) -> Result<Uint8Array, JsValue> {
        let f = self.dist(handle)?;
        let tpl = Template::parse(template.as_deref().unwrap_or(&f.train.template)).map_err(js_err)?;
        let (g, _) = self.gaussian_of(f, &tpl)?;
        let mu = read(g.mu).await.map_err(js_err)?;
        let sigma = read(g.sigma).await.map_err(js_err)?;
        let b = crate::distribution::export::diffusers_file(&mu, &sigma, f.hidden, &tpl.to_string(), &f.model.id)
            .map_err(js_err)?;
        Ok(Uint8Array::from(&b[..]))
    }

    /// 2-D PCA of the K prompts' EOS features and `n` points sampled with spread `gamma`.
    pub async fn pca(&self, handle: usize, gamma: f32, n: usize, seed: u64) -> Result<JsValue, JsValue> {
        let f = self.dist(handle)?;
        let tpl = Template::parse(&f.train.template).map_err(js_err)?;
        let (g, layout) = self.gaussian_of(f, &tpl)?;
        let v = tensor(f.prompts.clone(), [f.k, f.m, f.hidden], &self.device);
        let c = layout.encode(&self.sd()?.text, v).map_err(js_err)?;
        let eos = layout.eos;
        let prompts = read(c.narrow(1, eos, 1)).await.map_err(js_err)?;
        let mut rng = Rng::new(seed);
        let omega =
            tensor(rng.normal_vec(n.min(512) * MAX_LEN * f.hidden), [n.min(512), MAX_LEN, f.hidden], &self.device);
        let samples = read(g.sample(omega, gamma).narrow(1, eos, 1)).await.map_err(js_err)?;
        let p = crate::distribution::export::pca(&prompts, &samples, f.hidden).map_err(js_err)?;
        to_js(&p)
    }

    /// Generates images (see the `SampleRequest` fields); `onStep({step, steps})` reports
    /// progress and cancels by returning `false`. Returns `[{width, height, seed, rgb}]`.
    pub async fn sample(&self, request: JsValue, on_step: Option<Function>) -> Result<JsValue, JsValue> {
        let req: SampleRequest = from_js(request)?;
        let sd = self.sd()?;
        if req.dists.is_empty() || req.seeds.is_empty() || req.seeds.len() > 64 {
            return Err(js_err("give 1 to 64 seeds and at least one distribution"));
        }
        let first = self.dist(req.dists[0].handle)?;
        let tpl = Template::parse(req.template.as_deref().unwrap_or(&first.train.template)).map_err(js_err)?;
        let cfg = SampleConfig {
            steps: req.steps,
            guidance: req.guidance,
            sampler: req.scheduler,
            gamma: req.gamma,
            size: req.size.unwrap_or(sd.spec.native_resolution()),
            seed: req.seeds[0],
        };
        cfg.check(sd).map_err(js_err)?;
        let mut rngs: Vec<Rng> = req.seeds.iter().map(|&s| Rng::new(s)).collect();
        let chosen = match (&req.prompts, req.prompt) {
            (Some(ks), _) if ks.len() != req.seeds.len() => return Err(js_err("give one prompt index per seed")),
            (Some(ks), _) => Some(ks.clone()),
            (None, Some(k)) => Some(vec![k; req.seeds.len()]),
            (None, None) => None,
        };
        let conds: Vec<Tensor<3>> = if let Some(ks) = chosen {
            // The prompts' own encodings (no sampling).
            if let Some(&k) = ks.iter().find(|&&k| k >= first.k) {
                return Err(js_err(format!("prompt {k} does not exist (K = {})", first.k)));
            }
            let layout = PromptLayout::new(&self.tokenizer, &tpl, first.m).map_err(js_err)?;
            let v = tensor(first.prompts.clone(), [first.k, first.m, first.hidden], &self.device);
            let c = layout.encode(&sd.text, v).map_err(js_err)?;
            ks.iter().map(|&k| c.clone().narrow(0, k, 1)).collect()
        } else {
            let mut parts = vec![];
            for p in &req.dists {
                let f = self.dist(p.handle)?;
                parts.push((self.gaussian_of(f, &tpl)?.0, p.weight));
            }
            let refs: Vec<(&PromptGaussian, f32)> = parts.iter().map(|(g, w)| (g, *w)).collect();
            let g = PromptGaussian::mix(&refs, req.rule).map_err(js_err)?;
            match &req.cond_seeds {
                Some(cs) if cs.len() != req.seeds.len() => {
                    return Err(js_err("give one condSeed per seed"));
                }
                Some(cs) => {
                    cs.iter().map(|&c| crate::pipeline::sample_condition(&g, req.gamma, &mut Rng::new(c))).collect()
                }
                None => rngs.iter_mut().map(|r| crate::pipeline::sample_condition(&g, req.gamma, r)).collect(),
            }
        };
        let uncond = self.uncond.clone().ok_or_else(|| js_err("no model is loaded"))?;
        let mut hook = |i: usize, n: usize| {
            let v = to_js(&serde_json::json!({"step": i, "steps": n})).unwrap_or(JsValue::NULL);
            call(&on_step, &v)
        };
        let images = generate_batch(sd, &conds, uncond, &cfg, &mut rngs, &mut hook).await.map_err(js_err)?;
        let out: Vec<Image> = images
            .into_iter()
            .zip(&req.seeds)
            .map(|(im, &seed)| Image { width: im.width, height: im.height, seed, rgb: im.pixels })
            .collect();
        to_js(&out)
    }

    /// Encodes RGB bytes as PNG with `tEXt` chunks: `Software` and `dreamdist` (the parameters
    /// as JSON, the same keys the CLI writes).
    #[wasm_bindgen(js_name = encodePng)]
    pub fn encode_png(&self, rgb: &[u8], width: usize, height: usize, params: JsValue) -> Result<Uint8Array, JsValue> {
        let params: serde_json::Value = from_js(params)?;
        let img = crate::pipeline::RgbImage { width, height, pixels: rgb.to_vec() };
        let text = crate::image::png_text(&params);
        Ok(Uint8Array::from(&crate::image::encode_png(&img, &text).map_err(js_err)?[..]))
    }

    /// Bytes in use on the device's memory pool.
    #[wasm_bindgen(js_name = memoryInUse)]
    pub fn memory_in_use(&self) -> Option<f64> {
        backend::pool_bytes_in_use(&self.device).map(|b| b as f64)
    }

    /// Frees unused device memory (between phases).
    #[wasm_bindgen(js_name = memoryCleanup)]
    pub fn memory_cleanup(&self) {
        self.device.memory_cleanup();
    }

    /// Test hook: panics on purpose. The page must restart the engine (a panic aborts the
    /// WebAssembly instance) and keep its own state.
    #[wasm_bindgen(js_name = debugPanic)]
    pub fn debug_panic(&self) {
        panic!("debugPanic: a deliberate panic (test hook)");
    }

    /// What this GPU cannot do, in words (empty when nothing is missing).
    #[wasm_bindgen(js_name = limitsReport)]
    pub fn limits_report(&self) -> Result<JsValue, JsValue> {
        to_js(&crate::backend::limits_report(&self.info))
    }

    /// The parity fixtures (`tests/fixtures/tiny/io.safetensors`, made with diffusers and
    /// transformers) on the loaded model: every component's outputs and gradients, compared.
    pub async fn parity(&self, io: &[u8]) -> Result<JsValue, JsValue> {
        let io = crate::parity::Io::from_bytes(io).map_err(js_err)?;
        let checks = crate::parity::all(self.sd()?, &io).await.map_err(js_err)?;
        to_js(&checks)
    }

    /// The full-size proof's computation on the loaded model (prompt encoding, one guided UNet
    /// step, a VAE decode at `size`²; see `pipeline::proof`), to compare with `dreamdist proof`.
    pub async fn proof(&self, size: usize, seed: u32) -> Result<JsValue, JsValue> {
        let r = crate::pipeline::proof(self.sd()?, &self.tokenizer, size, seed as u64).await.map_err(js_err)?;
        to_js(&r)
    }

    /// The training proof on the loaded model: one step's loss and raw gradient ∂L/∂V with `k`
    /// prompts of `m` tokens and `samples` samples at `size`² (see `train::proof_step`), to
    /// compare with `dreamdist proof --train`.
    #[wasm_bindgen(js_name = proofTrain)]
    pub async fn proof_train(
        &self,
        size: usize,
        seed: u32,
        k: usize,
        m: usize,
        samples: usize,
    ) -> Result<JsValue, JsValue> {
        let r = crate::train::proof_step(self.sd()?, &self.tokenizer, size, seed as u64, k, m, samples)
            .await
            .map_err(js_err)?;
        to_js(&r)
    }
}

/// A cache clear without an engine (the page's "clear storage" when the GPU is unusable).
#[wasm_bindgen(js_name = clearWeightCache)]
pub async fn clear_weight_cache() -> Result<u32, JsValue> {
    let cache = OpfsCache::open().await.map_err(js_err)?;
    Ok(cache.clear().await.map_err(js_err)? as u32)
}
