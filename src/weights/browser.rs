//! The browser's transport and cache for the shared loader (compiled for wasm32, used inside the
//! engine's Web Worker): `fetch` with `Range` read as a stream, and the Origin Private File
//! System (synchronous access handles, which workers have) as the shard cache.
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetDirectoryOptions, FileSystemGetFileOptions,
    FileSystemReadWriteOptions, FileSystemSyncAccessHandle, Headers, ReadableStreamDefaultReader, Request, RequestInit,
    Response, WorkerGlobalScope,
};

use super::convert::ShardSink;
use super::loader::{FetchError, ShardCache, Transport};
use crate::{Error, Result};

fn js_msg(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        let name: String = err.name().into();
        let msg: String = err.message().into();
        format!("{name}: {msg}")
    } else {
        e.as_string().unwrap_or_else(|| format!("{e:?}"))
    }
}

fn scope() -> Result<WorkerGlobalScope> {
    js_sys::global()
        .dyn_into::<WorkerGlobalScope>()
        .map_err(|_| Error::Device("the engine must run in a Web Worker".into()))
}

/// `fetch` in the worker, body read chunk by chunk from its stream.
#[derive(Default)]
pub struct FetchTransport {
    /// Requests made (for reports and tests).
    pub requests: usize,
}

impl Transport for FetchTransport {
    async fn get(
        &mut self,
        url: &str,
        start: u64,
        end: Option<u64>,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FetchError> {
        let net = |e: JsValue| FetchError::Network(js_msg(&e));
        let init = RequestInit::new();
        init.set_method("GET");
        let headers = Headers::new().map_err(net)?;
        match end {
            Some(e) => headers.set("Range", &format!("bytes={start}-{}", e.saturating_sub(1))).map_err(net)?,
            None if start > 0 => headers.set("Range", &format!("bytes={start}-")).map_err(net)?,
            None => {}
        }
        init.set_headers_headers(&headers);
        // Shards are content-addressed and verified: bypass the HTTP cache (OPFS is the cache).
        init.set_cache(web_sys::RequestCache::NoStore);
        let req = Request::new_with_str_and_init(url, &init).map_err(net)?;
        self.requests += 1;
        let scope = scope().map_err(|e| FetchError::Network(e.to_string()))?;
        let resp: Response = JsFuture::from(scope.fetch_with_request(&req)).await.map_err(net)?.unchecked_into();
        let status = resp.status();
        let mut skip = match status {
            206 => 0,
            200 => start,
            s => return Err(FetchError::Status(s)),
        };
        let mut left = end.map_or(limit, |e| e.saturating_sub(start).min(limit));
        let Some(body) = resp.body() else { return Ok(()) };
        let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        loop {
            let chunk = JsFuture::from(reader.read()).await.map_err(net)?;
            let done = Reflect::get(&chunk, &"done".into()).map_err(net)?.as_bool().unwrap_or(true);
            if done {
                return Ok(());
            }
            let value: Uint8Array = Reflect::get(&chunk, &"value".into()).map_err(net)?.unchecked_into();
            let mut bytes = value.to_vec();
            let mut slice = &bytes[..];
            if skip >= slice.len() as u64 {
                skip -= slice.len() as u64;
                continue;
            }
            slice = &slice[skip as usize..];
            skip = 0;
            let take = left.min(slice.len() as u64) as usize;
            slice = &slice[..take];
            left -= take as u64;
            sink(slice);
            if left == 0 {
                let _ = reader.cancel();
                return Ok(());
            }
            bytes.clear();
        }
    }

    async fn sleep_ms(&mut self, ms: u64) {
        let p = js_sys::Promise::new(&mut |resolve, _| {
            if let Ok(s) = scope() {
                let _ = s.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32);
            }
        });
        let _ = JsFuture::from(p).await;
    }
}

/// The OPFS directory `dreamdist/<name>`.
pub async fn opfs_dir(name: &str) -> Result<FileSystemDirectoryHandle> {
    let scope = scope()?;
    let root: FileSystemDirectoryHandle = JsFuture::from(scope.navigator().storage().get_directory())
        .await
        .map_err(|e| Error::Device(format!("this browser gives no private storage (OPFS): {}", js_msg(&e))))?
        .unchecked_into();
    let opts = FileSystemGetDirectoryOptions::new();
    opts.set_create(true);
    let top: FileSystemDirectoryHandle = JsFuture::from(root.get_directory_handle_with_options("dreamdist", &opts))
        .await
        .map_err(opfs_err)?
        .unchecked_into();
    Ok(JsFuture::from(top.get_directory_handle_with_options(name, &opts)).await.map_err(opfs_err)?.unchecked_into())
}

fn opfs_err(e: JsValue) -> Error {
    Error::Device(format!("browser storage: {}", js_msg(&e)))
}

/// Storage use and quota of this origin (bytes), if the browser tells.
pub async fn storage_estimate() -> Option<(f64, f64)> {
    let scope = scope().ok()?;
    let est = JsFuture::from(scope.navigator().storage().estimate().ok()?).await.ok()?;
    let usage = Reflect::get(&est, &"usage".into()).ok()?.as_f64()?;
    let quota = Reflect::get(&est, &"quota".into()).ok()?.as_f64()?;
    Some((usage, quota))
}

async fn read_file(dir: &FileSystemDirectoryHandle, name: &str) -> Result<Option<Vec<u8>>> {
    let fh = match JsFuture::from(dir.get_file_handle(name)).await {
        Ok(f) => f.unchecked_into::<FileSystemFileHandle>(),
        Err(_) => return Ok(None),
    };
    let h: FileSystemSyncAccessHandle =
        JsFuture::from(fh.create_sync_access_handle()).await.map_err(opfs_err)?.unchecked_into();
    let result = (|| {
        let size = h.get_size().map_err(opfs_err)? as usize;
        let mut buf = vec![0u8; size];
        let opts = FileSystemReadWriteOptions::new();
        opts.set_at(0.0);
        let n = h.read_with_u8_array_and_options(&mut buf, &opts).map_err(opfs_err)? as usize;
        buf.truncate(n);
        Ok(buf)
    })();
    h.close();
    result.map(Some)
}

async fn write_file(dir: &FileSystemDirectoryHandle, name: &str, bytes: &[u8]) -> Result<()> {
    let opts = FileSystemGetFileOptions::new();
    opts.set_create(true);
    let fh: FileSystemFileHandle =
        JsFuture::from(dir.get_file_handle_with_options(name, &opts)).await.map_err(opfs_err)?.unchecked_into();
    let h: FileSystemSyncAccessHandle =
        JsFuture::from(fh.create_sync_access_handle()).await.map_err(opfs_err)?.unchecked_into();
    let result = (|| {
        h.truncate_with_f64(0.0).map_err(opfs_err)?;
        let wo = FileSystemReadWriteOptions::new();
        wo.set_at(0.0);
        let n = h.write_with_u8_array_and_options(bytes, &wo).map_err(storage_write_err)?;
        if n as usize != bytes.len() {
            return Err(Error::Device(format!("wrote {n} of {} bytes", bytes.len())));
        }
        h.flush().map_err(opfs_err)
    })();
    h.close();
    if result.is_err() {
        let _ = JsFuture::from(dir.remove_entry(name)).await;
    }
    result
}

/// Names in a directory.
async fn list(dir: &FileSystemDirectoryHandle) -> Result<Vec<String>> {
    let it = dir.keys();
    let mut out = vec![];
    loop {
        let next = JsFuture::from(it.next().map_err(opfs_err)?).await.map_err(opfs_err)?;
        if Reflect::get(&next, &"done".into()).ok().and_then(|v| v.as_bool()).unwrap_or(true) {
            return Ok(out);
        }
        if let Some(s) = Reflect::get(&next, &"value".into()).ok().and_then(|v| v.as_string()) {
            out.push(s);
        }
    }
}

/// Verified shards in OPFS (`dreamdist/weights/<sha256>.bin`; `<sha256>.part` while one
/// downloads, renamed once verified).
pub struct OpfsCache {
    dir: FileSystemDirectoryHandle,
    writing: Option<Writing>,
    reading: Option<FileSystemSyncAccessHandle>,
}

/// A shard being written: its `.part` file (renamed to `name` once verified), the open handle
/// and the write position.
struct Writing {
    part: String,
    name: String,
    file: FileSystemFileHandle,
    handle: FileSystemSyncAccessHandle,
    at: u64,
}

fn storage_write_err(e: JsValue) -> Error {
    let msg = js_msg(&e);
    if msg.contains("Quota") { Error::Device(format!("QuotaExceeded: {msg}")) } else { opfs_err(e) }
}

impl OpfsCache {
    /// Opens (creates) the cache.
    pub async fn open() -> Result<Self> {
        Ok(Self { dir: opfs_dir("weights").await?, writing: None, reading: None })
    }

    /// Cached shards: (sha256, bytes).
    pub async fn entries(&self) -> Result<Vec<(String, u64)>> {
        self.files(".bin").await
    }

    /// Shards whose download did not finish (a load in progress, or one a closed tab or a crash
    /// interrupted): (sha256, bytes so far). The next load of that shard replaces its file;
    /// [`Self::clear`] deletes it.
    pub async fn partial(&self) -> Result<Vec<(String, u64)>> {
        self.files(".part").await
    }

    /// The keys of the stored manifests.
    pub async fn manifest_keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = list(&self.dir)
            .await?
            .iter()
            .filter_map(|n| n.strip_prefix("manifest-")?.strip_suffix(".json").map(str::to_string))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Files `<sha256><suffix>`: (sha256, bytes).
    async fn files(&self, suffix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = vec![];
        for name in list(&self.dir).await? {
            let Some(sha) = name.strip_suffix(suffix).filter(|s| super::manifest::is_sha256_hex(s)) else {
                continue;
            };
            let size = match JsFuture::from(self.dir.get_file_handle(&name)).await {
                Ok(f) => {
                    let f: FileSystemFileHandle = f.unchecked_into();
                    match JsFuture::from(f.get_file()).await {
                        Ok(file) => file.unchecked_into::<web_sys::Blob>().size() as u64,
                        Err(_) => 0,
                    }
                }
                Err(_) => 0,
            };
            out.push((sha.to_string(), size));
        }
        out.sort();
        Ok(out)
    }

    /// Deletes every cached shard, partial download and stored manifest.
    pub async fn clear(&self) -> Result<usize> {
        let names = list(&self.dir).await?;
        for n in &names {
            JsFuture::from(self.dir.remove_entry(n)).await.map_err(opfs_err)?;
        }
        Ok(names.len())
    }

    /// A stored manifest (by key), for loads without a network.
    pub async fn manifest(&self, key: &str) -> Result<Option<Vec<u8>>> {
        read_file(&self.dir, &format!("manifest-{key}.json")).await
    }

    /// Stores a manifest (by key).
    pub async fn put_manifest(&self, key: &str, json: &[u8]) -> Result<()> {
        write_file(&self.dir, &format!("manifest-{key}.json"), json).await
    }

    fn name(sha: &str) -> Result<String> {
        if !super::manifest::is_sha256_hex(sha) {
            return Err(Error::Weights(format!("{sha:?} is not a SHA-256")));
        }
        Ok(format!("{sha}.bin"))
    }

    /// The file a shard is written to until it is verified.
    fn part_name(sha: &str) -> Result<String> {
        Ok(Self::name(sha)?.replace(".bin", ".part"))
    }
}

async fn quota_message(needed: usize, e: Error) -> Error {
    let Error::Device(m) = &e else { return e };
    if !m.contains("Quota") {
        return e;
    }
    let mb = |b: f64| b / 1e6;
    Error::Storage(match storage_estimate().await {
        Some((usage, quota)) if quota - usage >= needed as f64 => format!(
            "the browser refused to store {:.1} MB of model data although it reports {:.0} MB free ({:.0} MB used \
             of {:.0} MB allowed): the real limit for this page is lower than it says. Free space (clear other \
             sites' data, or this page's cached models) or pick a smaller model",
            mb(needed as f64),
            mb(quota - usage),
            mb(usage),
            mb(quota)
        ),
        Some((usage, quota)) => format!(
            "the browser's storage for this page is full: {:.0} MB used of {:.0} MB allowed, and the next part of \
             the model needs {:.1} MB. Free space (clear other sites' data, or this page's cached models) or pick a \
             smaller model",
            mb(usage),
            mb(quota),
            mb(needed as f64)
        ),
        None => {
            format!("the browser's storage for this page is full ({:.1} MB could not be stored)", mb(needed as f64))
        }
    })
}

impl ShardCache for OpfsCache {
    async fn open(&mut self, sha256: &str) -> Result<Option<u64>> {
        self.close().await;
        let fh = match JsFuture::from(self.dir.get_file_handle(&Self::name(sha256)?)).await {
            Ok(f) => f.unchecked_into::<FileSystemFileHandle>(),
            Err(_) => return Ok(None),
        };
        let h: FileSystemSyncAccessHandle =
            JsFuture::from(fh.create_sync_access_handle()).await.map_err(opfs_err)?.unchecked_into();
        match h.get_size() {
            Ok(size) => {
                self.reading = Some(h);
                Ok(Some(size as u64))
            }
            Err(e) => {
                h.close();
                Err(opfs_err(e))
            }
        }
    }
    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let h = self.reading.as_ref().ok_or_else(|| Error::Weights("no cached shard is open".into()))?;
        let opts = FileSystemReadWriteOptions::new();
        opts.set_at(offset as f64);
        let n = h.read_with_u8_array_and_options(buf, &opts).map_err(opfs_err)? as usize;
        if n != buf.len() {
            return Err(Error::Weights(format!("a cached shard ended at byte {}", offset + n as u64)));
        }
        Ok(())
    }
    async fn close(&mut self) {
        if let Some(h) = self.reading.take() {
            h.close();
        }
    }
    async fn begin(&mut self, sha256: &str, _len: u64) -> Result<()> {
        self.abort().await;
        let (part, name) = (Self::part_name(sha256)?, Self::name(sha256)?);
        let opts = FileSystemGetFileOptions::new();
        opts.set_create(true);
        let file: FileSystemFileHandle = JsFuture::from(self.dir.get_file_handle_with_options(&part, &opts))
            .await
            .map_err(opfs_err)?
            .unchecked_into();
        let handle: FileSystemSyncAccessHandle =
            JsFuture::from(file.create_sync_access_handle()).await.map_err(opfs_err)?.unchecked_into();
        if let Err(e) = handle.truncate_with_f64(0.0) {
            handle.close();
            return Err(opfs_err(e));
        }
        self.writing = Some(Writing { part, name, file, handle, at: 0 });
        Ok(())
    }
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.writing.as_mut().ok_or_else(|| Error::Weights("no shard is being written".into()))?;
        let opts = FileSystemReadWriteOptions::new();
        opts.set_at(w.at as f64);
        let n = w.handle.write_with_u8_array_and_options(bytes, &opts).map_err(storage_write_err)? as usize;
        if n != bytes.len() {
            return Err(Error::Device(format!("wrote {n} of {} bytes", bytes.len())));
        }
        w.at += n as u64;
        Ok(())
    }
    async fn commit(&mut self) -> Result<()> {
        let w = self.writing.take().ok_or_else(|| Error::Weights("no shard is being written".into()))?;
        let flushed = w.handle.flush().map_err(storage_write_err);
        w.handle.close();
        let renamed = match flushed {
            Ok(()) => {
                // A stale copy under the final name (a corrupt one was already deleted) would
                // block the rename.
                let _ = JsFuture::from(self.dir.remove_entry(&w.name)).await;
                rename(&w.file, &w.name).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = renamed {
            let _ = JsFuture::from(self.dir.remove_entry(&w.part)).await;
            return Err(e);
        }
        let h: FileSystemSyncAccessHandle =
            JsFuture::from(w.file.create_sync_access_handle()).await.map_err(opfs_err)?.unchecked_into();
        self.reading = Some(h);
        Ok(())
    }
    async fn abort(&mut self) {
        if let Some(w) = self.writing.take() {
            w.handle.close();
            let _ = JsFuture::from(self.dir.remove_entry(&w.part)).await;
        }
    }
    async fn remove(&mut self, sha256: &str) -> Result<()> {
        self.close().await;
        let _ = JsFuture::from(self.dir.remove_entry(&Self::name(sha256)?)).await;
        Ok(())
    }
    async fn explain_write_error(&mut self, needed: u64, e: Error) -> Error {
        quota_message(needed as usize, e).await
    }
}

/// Renames an OPFS file in its directory (`FileSystemHandle.move(name)`, Chrome/Edge 110+).
async fn rename(file: &FileSystemFileHandle, name: &str) -> Result<()> {
    let f: js_sys::Function = Reflect::get(file, &"move".into())
        .ok()
        .and_then(|f| f.dyn_into().ok())
        .ok_or_else(|| Error::Device("this browser cannot rename files in its private storage (OPFS)".into()))?;
    let p: js_sys::Promise = f.call1(file, &name.into()).map_err(opfs_err)?.unchecked_into();
    JsFuture::from(p).await.map_err(opfs_err)?;
    Ok(())
}

/// The converter's sink in direct mode: shards go straight into the cache by their SHA-256.
pub struct CacheSink<'a> {
    /// The cache.
    pub cache: &'a mut OpfsCache,
}

impl ShardSink for CacheSink<'_> {
    async fn write(&mut self, _file: &str, bytes: &[u8]) -> Result<()> {
        let sha = super::sha256_hex(bytes);
        self.cache.put(&sha, bytes).await
    }
}
