//! Loading converted models: each shard comes from the cache or the network, is verified
//! (size and SHA-256, hashed while it streams), cached, and turned into tensors at once; no more
//! than about one shard is held in memory, and weights go straight to device buffers.
//!
//! The fetch logic is shared by the native loader and the browser's: [`Transport`] (HTTP with
//! `Range`, a directory, or the browser's `fetch`) and [`ShardCache`] (a directory, or the
//! browser's Origin Private File System) are the only platform parts.
//!
//! Failure handling, per shard: a cached copy that fails its hash is deleted and fetched again;
//! a connection that drops mid-shard resumes with `Range: bytes=N-` (a server that ignores the
//! range is skipped forward); network errors and 5xx retry with exponential backoff; a download
//! whose hash is wrong is discarded and fetched again (twice at most: then the server's copy is
//! called corrupt); a 4xx is final. Every retry, resume and rejection is recorded in the
//! [`LoadReport`].
use std::collections::{HashMap, HashSet};

use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::Serialize;
use sha2::Digest;

use super::manifest::{Layout, Manifest, ShardEntry, TensorEntry};
use super::quant::{self, Storage};
use super::{DeviceTensor, HostTable, ParamSource, Provided, Request};
use crate::{Error, Result};

/// Why a request failed.
#[derive(Clone, Debug, PartialEq)]
pub enum FetchError {
    /// An HTTP status other than 200/206.
    Status(u16),
    /// The connection failed or dropped.
    Network(String),
    /// A local file (a directory transport) does not exist.
    Missing,
    /// The user cancelled.
    Cancelled,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Status(s) => write!(f, "HTTP {s}"),
            FetchError::Network(m) => write!(f, "network error: {m}"),
            FetchError::Missing => write!(f, "no such file"),
            FetchError::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// Fetches bytes (HTTP, a directory, the browser's `fetch`).
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// GETs bytes `start..end` of `url` (`end = None`: to the end; a `Range` request unless the
    /// whole body is asked for) and passes them to `sink` chunk by chunk. When the server
    /// ignores the range and sends the whole body, the transport skips and trims it itself.
    async fn get(
        &mut self,
        url: &str,
        start: u64,
        end: Option<u64>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FetchError>;
    /// Waits (retry backoff).
    async fn sleep_ms(&mut self, ms: u64);
}

/// Stores verified shards by SHA-256.
#[allow(async_fn_in_trait)]
pub trait ShardCache {
    /// A cached shard, if present.
    async fn get(&mut self, sha256: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a verified shard (errors say how much space is missing).
    async fn put(&mut self, sha256: &str, bytes: &[u8]) -> Result<()>;
    /// Deletes a shard (corrupt, or clearing the cache).
    async fn remove(&mut self, sha256: &str) -> Result<()>;
}

/// A cache that stores nothing.
pub struct NoCache;

impl ShardCache for NoCache {
    async fn get(&mut self, _: &str) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    async fn put(&mut self, _: &str, _: &[u8]) -> Result<()> {
        Ok(())
    }
    async fn remove(&mut self, _: &str) -> Result<()> {
        Ok(())
    }
}

/// Progress of a load.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Progress {
    /// Component being loaded.
    pub component: String,
    /// Shard file.
    pub shard: String,
    /// `cache`, `download`, `tensors` (building tensors) or `done`.
    pub phase: &'static str,
    /// Bytes of all requested shards done (cached or downloaded).
    pub done_bytes: u64,
    /// Bytes of all requested shards.
    pub total_bytes: u64,
    /// Bytes of this component done.
    pub component_done: u64,
    /// Bytes of this component.
    pub component_total: u64,
    /// Download rate over this load, bytes per second.
    pub rate: f64,
    /// Estimated seconds left (downloads at the current rate).
    pub eta_s: Option<f64>,
}

/// What happened during a load.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LoadReport {
    /// Shards needed.
    pub shards: usize,
    /// Shards served by the cache.
    pub from_cache: usize,
    /// Shards downloaded.
    pub downloaded: usize,
    /// Bytes received from the network (including discarded ones).
    pub bytes_downloaded: u64,
    /// HTTP requests made for shards.
    pub requests: usize,
    /// Retries after errors.
    pub retries: usize,
    /// Requests that resumed a partial shard with `Range`.
    pub resumed: usize,
    /// Downloads rejected (wrong size or SHA-256).
    pub corrupt: usize,
    /// Cached shards that failed verification and were deleted.
    pub cache_corrupt: usize,
    /// Milliseconds.
    pub ms: f64,
    /// One line per notable event.
    pub events: Vec<String>,
}

/// Retry policy.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts per shard (requests, including resumes).
    pub attempts: u32,
    /// First backoff in milliseconds (doubles, capped at 8 s).
    pub backoff_ms: u64,
    /// Downloads with a wrong hash tolerated before giving up.
    pub corrupt: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 8, backoff_ms: 250, corrupt: 2 }
    }
}

/// Joins a base (URL prefix or directory) and a file name.
pub fn join(base: &str, file: &str) -> String {
    if base.is_empty() {
        file.to_string()
    } else if base.ends_with('/') {
        format!("{base}{file}")
    } else {
        format!("{base}/{file}")
    }
}

struct Meter {
    started_ms: f64,
    downloaded: u64,
    done: u64,
    total: u64,
}

impl Meter {
    fn rate(&self) -> f64 {
        let s = (crate::backend::now_ms() - self.started_ms) / 1000.0;
        if s > 0.0 { self.downloaded as f64 / s } else { 0.0 }
    }
}

/// Fetches one shard: cache first, then the network with resume, retries and verification.
#[allow(clippy::too_many_arguments)]
async fn fetch_shard<T: Transport, C: ShardCache>(
    transport: &mut T,
    cache: &mut C,
    base: &str,
    shard: &ShardEntry,
    retry: Retry,
    report: &mut LoadReport,
    meter: &mut Meter,
    progress: &mut dyn FnMut(&Progress),
    comp: (u64, u64),
) -> Result<Vec<u8>> {
    let mk = |phase, meter: &Meter, comp_done: u64| Progress {
        component: shard.component.clone(),
        shard: shard.file.clone(),
        phase,
        done_bytes: meter.done,
        total_bytes: meter.total,
        component_done: comp_done,
        component_total: comp.1,
        rate: meter.rate(),
        eta_s: {
            let r = meter.rate();
            (r > 0.0).then(|| (meter.total - meter.done) as f64 / r)
        },
    };
    if let Some(bytes) = cache.get(&shard.sha256).await? {
        if bytes.len() as u64 == shard.bytes && super::sha256_hex(&bytes) == shard.sha256 {
            report.from_cache += 1;
            meter.done += shard.bytes;
            progress(&mk("cache", meter, comp.0 + shard.bytes));
            return Ok(bytes);
        }
        report.cache_corrupt += 1;
        report.events.push(format!("{}: cached copy failed verification; deleted, fetching again", shard.file));
        cache.remove(&shard.sha256).await?;
    }
    let url = join(base, &shard.file);
    let mut buf: Vec<u8> = Vec::with_capacity(shard.bytes as usize);
    let mut hasher = sha2::Sha256::new();
    let mut attempts = 0u32;
    let mut corrupt = 0u32;
    let mut last_err = String::new();
    loop {
        // Attempts that made progress (a resumable drop) do not count against the limit, so a
        // large shard on a flaky link still completes; attempts that brought nothing do.
        if attempts >= retry.attempts {
            return Err(Error::Weights(format!(
                "{}: gave up after {attempts} attempts ({last_err}); {} of {} bytes arrived",
                url,
                buf.len(),
                shard.bytes
            )));
        }
        if attempts > 0 {
            let wait = (retry.backoff_ms << (attempts - 1).min(5)).min(8000);
            transport.sleep_ms(wait).await;
        }
        attempts += 1;
        let start = buf.len() as u64;
        if start > 0 {
            report.resumed += 1;
            report.events.push(format!("{}: resuming at byte {start} (Range)", shard.file));
        }
        report.requests += 1;
        let mut overflow = false;
        let before = meter.done;
        let res = {
            let mut last_tick = 0u64;
            let mut sink = |chunk: &[u8]| {
                let room = (shard.bytes as usize).saturating_sub(buf.len());
                let take = chunk.len().min(room);
                if take < chunk.len() {
                    overflow = true;
                }
                buf.extend_from_slice(&chunk[..take]);
                hasher.update(&chunk[..take]);
                report.bytes_downloaded += chunk.len() as u64;
                meter.downloaded += chunk.len() as u64;
                meter.done = before + buf.len() as u64 - start;
                if buf.len() as u64 - last_tick >= 1 << 20 || buf.len() as u64 == shard.bytes {
                    last_tick = buf.len() as u64;
                    progress(&mk("download", meter, comp.0 + buf.len() as u64));
                }
            };
            transport.get(&url, start, None, &mut sink).await
        };
        let progressed = buf.len() as u64 > start;
        match res {
            Ok(()) if !overflow && buf.len() as u64 == shard.bytes => {
                let digest = super::hex(&std::mem::replace(&mut hasher, sha2::Sha256::new()).finalize());
                if digest == shard.sha256 {
                    cache.put(&shard.sha256, &buf).await?;
                    report.downloaded += 1;
                    return Ok(buf);
                }
                report.corrupt += 1;
                report.events.push(format!("{}: SHA-256 mismatch ({digest}); discarded, fetching again", shard.file));
                last_err = "SHA-256 mismatch".into();
                corrupt += 1;
            }
            Ok(()) if !overflow => {
                // The body ended early: resume from what arrived.
                report.retries += 1;
                last_err = format!("connection ended after {} of {} bytes", buf.len(), shard.bytes);
                report.events.push(format!("{}: {last_err}", shard.file));
                if progressed {
                    attempts = 0;
                }
                continue;
            }
            Ok(()) => {
                report.corrupt += 1;
                last_err = format!("the server sent more than the manifest's {} bytes", shard.bytes);
                report.events.push(format!("{}: {last_err}; discarded", shard.file));
                corrupt += 1;
            }
            Err(FetchError::Cancelled) => return Err(Error::Cancelled),
            Err(FetchError::Missing) => {
                return Err(Error::Weights(format!("{url}: no such file (the directory does not have this shard)")));
            }
            Err(FetchError::Status(s)) if (400..500).contains(&s) && s != 408 && s != 429 && s != 416 => {
                return Err(Error::Weights(format!("{url}: HTTP {s} (the server does not have this shard)")));
            }
            Err(FetchError::Status(416)) if start > 0 => {
                // Nothing at byte `start`: the server's file is shorter than the manifest says.
                report.corrupt += 1;
                last_err =
                    format!("the server's copy ends before byte {start}; the manifest says {} bytes", shard.bytes);
                report.events.push(format!("{}: {last_err}; discarded", shard.file));
                corrupt += 1;
            }
            Err(e) => {
                report.retries += 1;
                last_err = e.to_string();
                report.events.push(format!("{}: {last_err}; retrying", shard.file));
                if progressed {
                    attempts = 0;
                }
                meter.done = before + buf.len() as u64 - start;
                continue;
            }
        }
        // A rejected download: start the shard over.
        meter.done = before - start;
        buf.clear();
        hasher = sha2::Sha256::new();
        if corrupt > retry.corrupt {
            return Err(Error::Weights(format!(
                "{url}: the downloaded shard does not match its manifest ({last_err}) after {corrupt} downloads; \
                 the server's copy is corrupt or was replaced"
            )));
        }
    }
}

/// Tensors of a converted model, filled shard by shard ([`ingest`](Self::ingest)); then one
/// [`ParamSource`] per component ([`component`](Self::component)).
pub struct ManifestSource {
    manifest: Manifest,
    device: Device,
    ready: HashMap<String, Stored>,
    assembling: HashMap<usize, Vec<u8>>,
}

enum Stored {
    Device(Box<DeviceTensor>),
    Host(HostTable),
}

impl ManifestSource {
    /// An empty source for `manifest`, uploading to `device`.
    pub fn new(manifest: Manifest, device: &Device) -> Self {
        Self { manifest, device: device.clone(), ready: HashMap::new(), assembling: HashMap::new() }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Turns the tensors of shard `index` into device tensors (host tables stay on the host).
    ///
    /// Awaits the device after each tensor of 1 MiB or more: the host copy a tensor is built
    /// from stays allocated until its upload has run, and in the browser that waited for the
    /// next readback — the full-size load's wasm memory peaked at 359 MiB without these waits
    /// and at 213 MiB with them (docs/WEB.md).
    pub async fn ingest(&mut self, index: usize, bytes: &[u8]) -> Result<()> {
        let entries: Vec<(usize, TensorEntry)> = self
            .manifest
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.parts.iter().any(|p| p.shard == index))
            .map(|(i, t)| (i, t.clone()))
            .collect();
        for (i, t) in entries {
            let single = t.parts.len() == 1;
            for p in t.parts.iter().filter(|p| p.shard == index) {
                let (a, b) = (p.offset as usize, (p.offset + p.length) as usize);
                if b > bytes.len() {
                    return Err(Error::Weights(format!("shard {index} is shorter than tensor {} needs", t.name)));
                }
                if single {
                    let stored = build(&t, bytes[a..b].to_vec(), &self.device)?;
                    self.ready.insert(t.name.clone(), stored);
                    if b - a >= 1 << 20 {
                        self.settle().await?;
                    }
                } else {
                    // Sized once: growing by doubling would copy the tensor and leave up to
                    // twice its size allocated (the host token table is tens of MiB).
                    let cap = t.byte_len() as usize;
                    self.assembling.entry(i).or_insert_with(|| Vec::with_capacity(cap)).extend_from_slice(&bytes[a..b]);
                }
            }
            if !single && self.assembling.get(&i).is_some_and(|v| v.len() as u64 == t.byte_len()) {
                let data = self.assembling.remove(&i).expect("present");
                let stored = build(&t, data, &self.device)?;
                self.ready.insert(t.name.clone(), stored);
                self.settle().await?;
            }
        }
        Ok(())
    }

    /// Waits until the device has taken every upload queued so far (a one-element readback
    /// after them), so the host copies the tensors were built from are released.
    pub async fn settle(&self) -> Result<()> {
        crate::backend::read(Tensor::<1>::zeros([1], &self.device)).await.map(drop)
    }

    /// The tensors of `component` as a parameter source (moved out of this source).
    pub fn component(&mut self, component: &str) -> ComponentSource {
        let prefix = format!("{component}/");
        let names: Vec<String> = self.ready.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
        let mut tensors = HashMap::new();
        for n in names {
            let v = self.ready.remove(&n).expect("listed");
            tensors.insert(n[prefix.len()..].to_string(), v);
        }
        let entries = self
            .manifest
            .tensors
            .iter()
            .filter(|t| t.component() == component)
            .map(|t| (t.name[prefix.len()..].to_string(), t.clone()))
            .collect();
        ComponentSource { component: component.to_string(), tensors, entries, used: HashSet::new(), problems: vec![] }
    }
}

fn build(t: &TensorEntry, bytes: Vec<u8>, device: &Device) -> Result<Stored> {
    if t.layout == Layout::HostTable {
        let shape: [usize; 2] =
            t.shape.clone().try_into().map_err(|_| Error::Weights(format!("{}: not 2-D", t.name)))?;
        return Ok(Stored::Host(HostTable { shape, storage: t.storage, bytes: std::sync::Arc::new(bytes) }));
    }
    let data = match t.storage {
        // The f32 compute path: f16 weights are widened (on the device when it has f16).
        Storage::F16 if !device.supports_dtype(DType::F16) => {
            TensorData::new(quant::decode(&bytes, &t.shape, Storage::F16)?, t.shape.clone())
        }
        s => quant::tensor_data(bytes, &t.shape, s)?,
    };
    let widen = t.storage == Storage::F16 && device.supports_dtype(DType::F16);
    Ok(Stored::Device(Box::new(match t.shape.len() {
        1 => {
            let x = Tensor::<1>::from_data(data, device);
            DeviceTensor::R1(if widen { x.cast(burn::tensor::FloatDType::F32) } else { x })
        }
        2 => {
            let x = Tensor::<2>::from_data(data, device);
            DeviceTensor::R2(if widen { x.cast(burn::tensor::FloatDType::F32) } else { x })
        }
        r => return Err(Error::Weights(format!("{}: rank {r} tensors are not stored", t.name))),
    })))
}

/// The tensors of one component of a converted model.
pub struct ComponentSource {
    component: String,
    tensors: HashMap<String, Stored>,
    entries: HashMap<String, TensorEntry>,
    used: HashSet<String>,
    problems: Vec<String>,
}

impl ParamSource for ComponentSource {
    fn take(&mut self, req: &Request) -> Provided {
        let stored_shape = req.role.stored_shape(req.shape);
        let placeholder = || Provided::Values(vec![0.0; req.shape.iter().product()]);
        let Some(entry) = self.entries.get(req.name) else {
            self.problems.push(format!("missing {} {:?}", req.name, req.shape));
            return placeholder();
        };
        self.used.insert(req.name.to_string());
        if entry.shape != stored_shape || entry.layout != req.role.layout(req.shape) {
            self.problems.push(format!(
                "{} is stored as {:?} {:?}, expected {stored_shape:?} {:?}",
                req.name,
                entry.layout,
                entry.shape,
                req.role.layout(req.shape)
            ));
            return placeholder();
        }
        match self.tensors.remove(req.name) {
            Some(Stored::Device(t)) => Provided::Device(t),
            Some(Stored::Host(h)) => Provided::Host(h),
            None => {
                self.problems.push(format!("{} never arrived (its shard was not loaded)", req.name));
                placeholder()
            }
        }
    }

    fn finish(&mut self) -> Result<()> {
        let mut unexpected: Vec<&String> = self.entries.keys().filter(|k| !self.used.contains(*k)).collect();
        unexpected.sort();
        let mut p = std::mem::take(&mut self.problems);
        p.extend(unexpected.iter().map(|k| format!("unexpected {k}")));
        if p.is_empty() {
            Ok(())
        } else {
            let n = p.len();
            p.truncate(20);
            Err(Error::Weights(format!("{}: {n} problems: {}", self.component, p.join("; "))))
        }
    }
}

/// Fetches (cache first) and ingests every shard of `components`, in manifest order.
#[allow(clippy::too_many_arguments)]
pub async fn load_shards<T: Transport, C: ShardCache>(
    source: &mut ManifestSource,
    base: &str,
    components: &[&str],
    transport: &mut T,
    cache: &mut C,
    retry: Retry,
    progress: &mut dyn FnMut(&Progress),
    cancelled: &dyn Fn() -> bool,
) -> Result<LoadReport> {
    let t0 = crate::backend::now_ms();
    let shards: Vec<(usize, ShardEntry)> = source
        .manifest
        .shards
        .iter()
        .enumerate()
        .filter(|(_, s)| components.contains(&s.component.as_str()))
        .map(|(i, s)| (i, s.clone()))
        .collect();
    let mut report = LoadReport { shards: shards.len(), ..Default::default() };
    let mut meter = Meter { started_ms: t0, downloaded: 0, done: 0, total: shards.iter().map(|s| s.1.bytes).sum() };
    let mut comp_done: HashMap<String, u64> = HashMap::new();
    for (i, shard) in shards {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let total = source.manifest.component_bytes(&shard.component);
        let done = *comp_done.get(&shard.component).unwrap_or(&0);
        let bytes =
            fetch_shard(transport, cache, base, &shard, retry, &mut report, &mut meter, progress, (done, total))
                .await?;
        source.ingest(i, &bytes).await?;
        drop(bytes);
        source.settle().await?;
        *comp_done.entry(shard.component.clone()).or_default() += shard.bytes;
    }
    report.ms = crate::backend::now_ms() - t0;
    progress(&Progress {
        component: String::new(),
        shard: String::new(),
        phase: "done",
        done_bytes: meter.total,
        total_bytes: meter.total,
        component_done: 0,
        component_total: 0,
        rate: meter.rate(),
        eta_s: Some(0.0),
    });
    Ok(report)
}
