//! Loading converted models: each shard comes from the cache or the network, is verified
//! (size and SHA-256, hashed while it streams into the cache), then read back from the cache one
//! tensor at a time and turned into tensors: a shard is never held in memory as a whole (except
//! with [`NoCache`]), and weights go straight to device buffers.
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
use super::quant::{self, Storage, shape_text};
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
    /// A local file that cannot be read as one (a directory, a named pipe, a device, a link
    /// loop, a read error). Final: trying again cannot change it.
    Local(String),
    /// The user cancelled.
    Cancelled,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Status(s) => write!(f, "HTTP {s}"),
            FetchError::Network(m) => write!(f, "network error: {m}"),
            FetchError::Missing => write!(f, "no such file"),
            FetchError::Local(m) => write!(f, "{m}"),
            FetchError::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// Fetches bytes (HTTP, a directory, the browser's `fetch`).
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// GETs bytes `start..end` of `url` (`end = None`: to the end; a `Range` request unless the
    /// whole body is asked for) and passes them to `sink` chunk by chunk, never more than
    /// `limit` bytes in all: it stops reading there (callers ask for one byte more than they
    /// were promised, to notice a longer body without reading an endless one). When the server
    /// ignores the range and sends the whole body, the transport skips and trims it itself.
    async fn get(
        &mut self,
        url: &str,
        start: u64,
        end: Option<u64>,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FetchError>;
    /// Waits (retry backoff).
    async fn sleep_ms(&mut self, ms: u64);
    /// Whether the bytes are local files (a directory), not a network: then a file that is
    /// short, long or other than the manifest says is final (no retry), in words about files.
    fn is_local(&self) -> bool {
        false
    }
}

/// Stores verified shards by SHA-256, written as they stream in and read back in pieces, so a
/// load never needs a whole shard in memory: the bytes go to storage as they arrive, and the
/// tensors are built from ranges read back after the shard is verified.
#[allow(async_fn_in_trait)]
pub trait ShardCache {
    /// Opens a cached shard for [`read_at`](Self::read_at); its size, or `None` when absent.
    async fn open(&mut self, sha256: &str) -> Result<Option<u64>>;
    /// Fills `buf` from byte `offset` of the open shard (an error if the shard is shorter).
    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Closes the open shard.
    async fn close(&mut self);
    /// Starts writing shard `sha256` of `len` bytes (a partial earlier copy is replaced). It is
    /// not visible to [`open`](Self::open) until [`commit`](Self::commit).
    async fn begin(&mut self, sha256: &str, len: u64) -> Result<()>;
    /// Appends bytes to the shard being written. Synchronous: the transport calls it as bytes
    /// arrive.
    fn append(&mut self, bytes: &[u8]) -> Result<()>;
    /// Makes the shard being written (verified by the caller) a cached shard, and opens it.
    async fn commit(&mut self) -> Result<()>;
    /// Drops the shard being written.
    async fn abort(&mut self);
    /// Deletes a shard (corrupt, or clearing the cache).
    async fn remove(&mut self, sha256: &str) -> Result<()>;
    /// A write error in words (e.g. how much storage is missing for `needed` bytes).
    async fn explain_write_error(&mut self, _needed: u64, e: Error) -> Error {
        e
    }
    /// Stores a whole verified shard.
    async fn put(&mut self, sha256: &str, bytes: &[u8]) -> Result<()> {
        self.begin(sha256, bytes.len() as u64).await?;
        if let Err(e) = self.append(bytes) {
            self.abort().await;
            return Err(self.explain_write_error(bytes.len() as u64, e).await);
        }
        self.commit().await?;
        self.close().await;
        Ok(())
    }
}

/// A cache that keeps nothing: the shard being loaded is held in memory until it has been
/// turned into tensors (loads from a local directory, tests).
#[derive(Default)]
pub struct NoCache {
    shard: Vec<u8>,
}

impl ShardCache for NoCache {
    async fn open(&mut self, _: &str) -> Result<Option<u64>> {
        Ok(None)
    }
    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let a = offset as usize;
        let src = self.shard.get(a..a + buf.len()).ok_or_else(|| {
            Error::Weights(format!("reading {} bytes at {offset}: the shard has {}", buf.len(), self.shard.len()))
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    async fn close(&mut self) {
        self.shard = Vec::new();
    }
    async fn begin(&mut self, _: &str, len: u64) -> Result<()> {
        self.shard = Vec::with_capacity(len as usize);
        Ok(())
    }
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.shard.extend_from_slice(bytes);
        Ok(())
    }
    async fn commit(&mut self) -> Result<()> {
        Ok(())
    }
    async fn abort(&mut self) {
        self.shard = Vec::new();
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
    /// `cache` (a verified cached shard), `download` or `done`.
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

/// Reads the open cached shard in pieces and checks its SHA-256.
async fn cached_copy_is_valid<C: ShardCache>(cache: &mut C, shard: &ShardEntry) -> Result<bool> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; (VERIFY_PIECE as u64).min(shard.bytes) as usize];
    let mut at = 0u64;
    while at < shard.bytes {
        let n = ((shard.bytes - at) as usize).min(buf.len());
        cache.read_at(at, &mut buf[..n]).await?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(super::hex(&hasher.finalize()) == shard.sha256)
}

/// Bytes read at a time when checking a cached shard.
const VERIFY_PIECE: usize = 4 << 20;

/// Makes one shard available in the cache (open for reading): the cached copy if it verifies,
/// else the network with resume, retries and verification, the bytes written to the cache as
/// they arrive (never the whole shard in memory, except with [`NoCache`]).
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
) -> Result<()> {
    if let Some(len) = cache.open(&shard.sha256).await? {
        if len == shard.bytes && cached_copy_is_valid(cache, shard).await? {
            report.from_cache += 1;
            meter.done += shard.bytes;
            progress(&progress_event(shard, "cache", meter, comp.0 + shard.bytes, comp.1));
            return Ok(());
        }
        cache.close().await;
        report.cache_corrupt += 1;
        report.events.push(format!("{}: cached copy failed verification; deleted, fetching again", shard.file));
        cache.remove(&shard.sha256).await?;
    }
    if let Err(e) = cache.begin(&shard.sha256, shard.bytes).await {
        return Err(cache.explain_write_error(shard.bytes, e).await);
    }
    // The network, writing into the cache's open shard; whatever ends it early drops that shard.
    let downloaded: Result<()> = async {
        let url = join(base, &shard.file);
        let mut got = 0u64;
        let mut hasher = sha2::Sha256::new();
        let mut attempts = 0u32;
        let mut corrupt = 0u32;
        let mut last_err = String::new();
        loop {
            // Attempts that made progress (a resumable drop) do not count against the limit, so a
            // large shard on a flaky link still completes; attempts that brought nothing do.
            if attempts >= retry.attempts {
                return Err(Error::Weights(format!(
                    "{}: gave up after {attempts} attempts ({last_err}); {got} of {} bytes arrived",
                    url, shard.bytes
                )));
            }
            if attempts > 0 {
                let wait = (retry.backoff_ms << (attempts - 1).min(5)).min(8000);
                transport.sleep_ms(wait).await;
            }
            attempts += 1;
            let start = got;
            if start > 0 {
                report.resumed += 1;
                report.events.push(format!("{}: resuming at byte {start} (Range)", shard.file));
            }
            report.requests += 1;
            let mut overflow = false;
            let mut write_err = None;
            let before = meter.done;
            let res = {
                let mut last_tick = 0u64;
                let mut sink = |chunk: &[u8]| {
                    let room = shard.bytes.saturating_sub(got) as usize;
                    let take = chunk.len().min(room);
                    if take < chunk.len() {
                        overflow = true;
                    }
                    if write_err.is_none()
                        && let Err(e) = cache.append(&chunk[..take])
                    {
                        write_err = Some(e);
                    }
                    got += take as u64;
                    hasher.update(&chunk[..take]);
                    report.bytes_downloaded += chunk.len() as u64;
                    meter.downloaded += chunk.len() as u64;
                    meter.done = before + got - start;
                    if got - last_tick >= 1 << 20 || got == shard.bytes {
                        last_tick = got;
                        progress(&progress_event(shard, "download", meter, comp.0 + got, comp.1));
                    }
                };
                // One byte more than the shard has left: enough to see that a body is too long.
                transport.get(&url, start, None, shard.bytes - start + 1, &mut sink).await
            };
            if let Some(e) = write_err {
                return Err(cache.explain_write_error(shard.bytes, e).await);
            }
            let progressed = got > start;
            match res {
                Ok(()) if !overflow && got == shard.bytes => {
                    let digest = super::hex(&std::mem::replace(&mut hasher, sha2::Sha256::new()).finalize());
                    if digest == shard.sha256 {
                        if let Err(e) = cache.commit().await {
                            return Err(cache.explain_write_error(shard.bytes, e).await);
                        }
                        report.downloaded += 1;
                        return Ok(());
                    }
                    if transport.is_local() {
                        return Err(Error::Weights(format!(
                            "{url}: the file does not match its manifest: its SHA-256 is {digest}, the manifest \
                             says {} (the file was changed or replaced)",
                            shard.sha256
                        )));
                    }
                    report.corrupt += 1;
                    report
                        .events
                        .push(format!("{}: SHA-256 mismatch ({digest}); discarded, fetching again", shard.file));
                    last_err = "SHA-256 mismatch".into();
                    corrupt += 1;
                }
                Ok(()) if !overflow && transport.is_local() => {
                    return Err(Error::Weights(format!(
                        "{url}: the file has {got} bytes; the manifest says {}",
                        shard.bytes
                    )));
                }
                Ok(()) if transport.is_local() => {
                    return Err(Error::Weights(format!(
                        "{url}: the file is larger than the manifest's {} bytes",
                        shard.bytes
                    )));
                }
                Ok(()) if !overflow => {
                    // The body ended early: resume from what arrived.
                    report.retries += 1;
                    last_err = format!("connection ended after {got} of {} bytes", shard.bytes);
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
                Err(FetchError::Local(m)) => return Err(Error::Weights(format!("{url}: {m}"))),
                Err(FetchError::Missing) => {
                    return Err(Error::Weights(format!(
                        "{url}: no such file (the directory does not have this shard)"
                    )));
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
                    meter.done = before + got - start;
                    continue;
                }
            }
            // A rejected download: start the shard over.
            meter.done = before - start;
            got = 0;
            hasher = sha2::Sha256::new();
            if corrupt > retry.corrupt {
                return Err(Error::Weights(format!(
                    "{url}: the downloaded shard does not match its manifest ({last_err}) after {corrupt} downloads; \
                     the server's copy is corrupt or was replaced"
                )));
            }
            cache.abort().await;
            if let Err(e) = cache.begin(&shard.sha256, shard.bytes).await {
                return Err(cache.explain_write_error(shard.bytes, e).await);
            }
        }
    }
    .await;
    if downloaded.is_err() {
        cache.abort().await;
    }
    downloaded
}

fn progress_event(shard: &ShardEntry, phase: &'static str, meter: &Meter, comp_done: u64, comp_total: u64) -> Progress {
    let r = meter.rate();
    Progress {
        component: shard.component.clone(),
        shard: shard.file.clone(),
        phase,
        done_bytes: meter.done,
        total_bytes: meter.total,
        component_done: comp_done,
        component_total: comp_total,
        rate: r,
        eta_s: (r > 0.0).then(|| (meter.total - meter.done) as f64 / r),
    }
}

/// Tensors of a converted model, filled shard by shard ([`ingest`](Self::ingest)); then one
/// [`ParamSource`] per component ([`component`](Self::component)).
pub struct ManifestSource {
    manifest: Manifest,
    device: Device,
    ready: HashMap<String, Stored>,
    assembling: HashMap<usize, Vec<u8>>,
    /// Growth of the device's memory pool while each component's shards were ingested (absent
    /// on backends without a pool).
    device_bytes: HashMap<String, u64>,
}

enum Stored {
    Device(Box<DeviceTensor>),
    Host(HostTable),
}

impl ManifestSource {
    /// An empty source for `manifest`, uploading to `device`.
    pub fn new(manifest: Manifest, device: &Device) -> Self {
        Self {
            manifest,
            device: device.clone(),
            ready: HashMap::new(),
            assembling: HashMap::new(),
            device_bytes: HashMap::new(),
        }
    }

    /// What ingesting `component`'s shards added to the device's memory pool (`None` when the
    /// backend has no pool, or before any of its shards was ingested).
    pub fn device_bytes(&self, component: &str) -> Option<u64> {
        self.device_bytes.get(component).copied()
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Turns the tensors of shard `index`, open in `cache`, into device tensors (host tables
    /// stay on the host), reading one tensor's bytes at a time: the shard itself is never in
    /// memory as a whole.
    ///
    /// Awaits the device after each tensor of 1 MiB or more: the host copy a tensor is built
    /// from stays allocated until its upload has run, and in the browser that waited for the
    /// next readback — the full-size load's wasm memory peaked at 359 MiB without these waits
    /// and at 213 MiB with them, when whole shards were held (docs/WEB.md).
    pub async fn ingest<C: ShardCache>(&mut self, index: usize, cache: &mut C) -> Result<()> {
        let in_use = crate::backend::pool_bytes_in_use;
        let before = in_use(&self.device);
        self.ingest_tensors(index, cache).await?;
        if let (Some(before), Some(after), Some(shard)) =
            (before, in_use(&self.device), self.manifest.shards.get(index))
        {
            *self.device_bytes.entry(shard.component.clone()).or_default() += after.saturating_sub(before);
        }
        Ok(())
    }

    /// Keeps a built tensor; the token embedding first proves the manifest's identity.
    fn keep(&mut self, t: &TensorEntry, stored: Stored) -> Result<()> {
        if let Stored::Host(table) = &stored
            && t.component() == "text_encoder"
        {
            let claimed = &self.manifest.identity.text_encoder;
            let actual = super::identity::of_table(&self.manifest.model.clip, table)?;
            if &actual != claimed {
                return Err(Error::Weights(format!(
                    "{}: the manifest gives the model the identity {claimed}, but the token embedding it holds \
                     has the identity {actual}: a manifest that names another model than its weights would let \
                     files learned on one pass for the other; refusing it",
                    t.name
                )));
            }
        }
        self.ready.insert(t.name.clone(), stored);
        Ok(())
    }

    async fn ingest_tensors<C: ShardCache>(&mut self, index: usize, cache: &mut C) -> Result<()> {
        let shard_len = self.manifest.shards.get(index).map_or(0, |s| s.bytes);
        let mut parts: Vec<(u64, u64, usize)> = vec![];
        for (i, t) in self.manifest.tensors.iter().enumerate() {
            for p in t.parts.iter().filter(|p| p.shard == index) {
                parts.push((p.offset, p.length, i));
            }
        }
        // In file order, so the reads go forward through the shard.
        parts.sort_unstable();
        for (offset, length, i) in parts {
            let t = self.manifest.tensors[i].clone();
            if offset + length > shard_len {
                return Err(Error::Weights(format!("shard {index} is shorter than tensor {} needs", t.name)));
            }
            if t.parts.len() == 1 {
                let mut bytes = vec![0u8; length as usize];
                cache.read_at(offset, &mut bytes).await?;
                let stored = build(&t, bytes, &self.device)?;
                self.keep(&t, stored)?;
                if length >= 1 << 20 {
                    self.settle().await?;
                }
                continue;
            }
            // Sized once: growing by doubling would copy the tensor and leave up to twice its
            // size allocated (the host token table is tens of MiB).
            let cap = t.byte_len() as usize;
            let buf = self.assembling.entry(i).or_insert_with(|| Vec::with_capacity(cap));
            let at = buf.len();
            buf.resize(at + length as usize, 0);
            cache.read_at(offset, &mut buf[at..]).await?;
            if buf.len() as u64 == t.byte_len() {
                let data = self.assembling.remove(&i).expect("present");
                let stored = build(&t, data, &self.device)?;
                self.keep(&t, stored)?;
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
            self.problems.push(format!("{} ({}) is missing", req.name, shape_text(req.shape)));
            return placeholder();
        };
        self.used.insert(req.name.to_string());
        if entry.shape != stored_shape || entry.layout != req.role.layout(req.shape) {
            self.problems.push(format!(
                "{} is {} {}, the model needs {} {}",
                req.name,
                entry.layout,
                shape_text(&entry.shape),
                req.role.layout(req.shape),
                shape_text(&stored_shape)
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
    // One entry per distinct file contents (SHA-256), with every shard index that names it:
    // shards with the same hash are fetched, stored and counted once.
    let mut shards: Vec<(ShardEntry, Vec<usize>)> = vec![];
    for (i, s) in source.manifest.shards.iter().enumerate() {
        if !components.contains(&s.component.as_str()) {
            continue;
        }
        match shards.iter_mut().find(|(e, _)| e.sha256 == s.sha256) {
            Some((_, at)) => at.push(i),
            None => shards.push((s.clone(), vec![i])),
        }
    }
    let mut comp_total: HashMap<String, u64> = HashMap::new();
    for (s, _) in &shards {
        *comp_total.entry(s.component.clone()).or_default() += s.bytes;
    }
    let mut report = LoadReport { shards: shards.len(), ..Default::default() };
    let mut meter = Meter { started_ms: t0, downloaded: 0, done: 0, total: shards.iter().map(|s| s.0.bytes).sum() };
    let mut comp_done: HashMap<String, u64> = HashMap::new();
    for (shard, indices) in shards {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let total = comp_total[&shard.component];
        let done = *comp_done.get(&shard.component).unwrap_or(&0);
        fetch_shard(transport, cache, base, &shard, retry, &mut report, &mut meter, progress, (done, total)).await?;
        let mut ingested = Ok(());
        for i in indices {
            ingested = source.ingest(i, cache).await;
            if ingested.is_err() {
                break;
            }
        }
        cache.close().await;
        ingested?;
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
