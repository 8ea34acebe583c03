//! Native transports and cache for the shared loader: HTTP(S) with `Range` (ureq), a local
//! directory, and a shard cache directory keyed by SHA-256.
use std::io::Read;
use std::path::{Path, PathBuf};

use super::loader::{FetchError, ShardCache, Transport};
use crate::{Error, Result};

/// HTTP(S) via ureq; `Range: bytes=N-` for resumes; a server that answers a range request with
/// the whole body (200) is skipped forward.
pub struct HttpTransport {
    agent: ureq::Agent,
}

impl Default for HttpTransport {
    fn default() -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(std::time::Duration::from_secs(15)))
            // Per read, not for the whole body: a 64 MiB shard on a slow link takes minutes.
            .timeout_per_read(Some(std::time::Duration::from_secs(60)))
            .timeout_recv_body(None)
            .timeout_global(None)
            .http_status_as_error(false)
            .build();
        Self { agent: config.into() }
    }
}

impl Transport for HttpTransport {
    async fn get(
        &mut self,
        url: &str,
        start: u64,
        end: Option<u64>,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FetchError> {
        let mut req = self.agent.get(url);
        match end {
            Some(e) => req = req.header("Range", &format!("bytes={start}-{}", e.saturating_sub(1))),
            None if start > 0 => req = req.header("Range", &format!("bytes={start}-")),
            None => {}
        }
        let resp = req.call().map_err(|e| FetchError::Network(e.to_string()))?;
        let status = resp.status().as_u16();
        let mut skip = match status {
            206 => 0,
            200 => start,
            s => return Err(FetchError::Status(s)),
        };
        let mut left = end.map_or(limit, |e| e.saturating_sub(start).min(limit));
        let mut body = resp.into_body();
        let mut reader = body.with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            if left == 0 {
                return Ok(());
            }
            let n = reader.read(&mut buf).map_err(|e| FetchError::Network(e.to_string()))?;
            if n == 0 {
                return Ok(());
            }
            let mut chunk = &buf[..n];
            if skip >= n as u64 {
                skip -= n as u64;
                continue;
            }
            chunk = &chunk[skip as usize..];
            skip = 0;
            let take = left.min(chunk.len() as u64) as usize;
            chunk = &chunk[..take];
            left -= take as u64;
            sink(chunk);
        }
    }

    async fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Files of a local directory (the "URL" is a path). Only regular files are read, and never
/// past the length they had when opened (+1 byte, to notice one that grows): a named pipe would
/// block the open until a writer came, and a device (or a link to one) has no end. Every error
/// is final ([`FetchError::Local`]) and the loader does not retry a directory.
#[derive(Default)]
pub struct FileTransport;

/// A local file that exists but cannot be read.
fn cannot_read(e: std::io::Error) -> FetchError {
    FetchError::Local(format!("cannot be read: {e}"))
}

/// Opens `path` for reading if it is a regular file (links followed); with its length.
fn open_regular(path: &str) -> Result<(std::fs::File, u64), FetchError> {
    let unusable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => FetchError::Missing,
        _ => cannot_read(e),
    };
    // `metadata` does not open the file, so it cannot block on a pipe.
    let kind = std::fs::metadata(path).map_err(unusable)?.file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    let f = std::fs::File::open(path).map_err(unusable)?;
    // The path may have been replaced between the check and the open.
    let meta = f.metadata().map_err(unusable)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(meta.file_type()));
    }
    Ok((f, meta.len()))
}

fn not_regular(kind: std::fs::FileType) -> FetchError {
    let what = if kind.is_dir() {
        "a directory"
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if kind.is_fifo() {
                "a named pipe"
            } else if kind.is_char_device() {
                "a character device"
            } else if kind.is_block_device() {
                "a block device"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "not a file"
            }
        }
        #[cfg(not(unix))]
        {
            "not a file"
        }
    };
    FetchError::Local(format!("{what}, not a regular file (a model directory holds plain files only)"))
}

impl Transport for FileTransport {
    async fn get(
        &mut self,
        url: &str,
        start: u64,
        end: Option<u64>,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FetchError> {
        use std::io::{Seek, SeekFrom};
        let (mut f, len) = open_regular(url)?;
        f.seek(SeekFrom::Start(start)).map_err(cannot_read)?;
        let mut left = end.map(|e| e.saturating_sub(start)).unwrap_or(len.saturating_sub(start) + 1).min(limit);
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            let n = f.read(&mut buf[..want]).map_err(cannot_read)?;
            if n == 0 {
                break;
            }
            sink(&buf[..n]);
            left -= n as u64;
        }
        Ok(())
    }

    async fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// HTTP for `http(s)://` bases, files otherwise.
pub enum AnyTransport {
    /// HTTP(S).
    Http(HttpTransport),
    /// Local files.
    File(FileTransport),
}

impl AnyTransport {
    /// The transport for a base URL or directory.
    pub fn for_base(base: &str) -> Self {
        if base.starts_with("http://") || base.starts_with("https://") {
            AnyTransport::Http(HttpTransport::default())
        } else {
            AnyTransport::File(FileTransport)
        }
    }
}

impl Transport for AnyTransport {
    async fn get(
        &mut self,
        url: &str,
        start: u64,
        end: Option<u64>,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FetchError> {
        match self {
            AnyTransport::Http(t) => t.get(url, start, end, limit, sink).await,
            AnyTransport::File(t) => t.get(url, start, end, limit, sink).await,
        }
    }
    async fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    fn is_local(&self) -> bool {
        matches!(self, AnyTransport::File(_))
    }
}

/// Verified shards in a directory, one file `<sha256>.bin` each (written as `<sha256>.part` while
/// it downloads, renamed once verified).
pub struct DirCache {
    dir: PathBuf,
    writing: Option<(PathBuf, std::fs::File)>,
    reading: Option<std::fs::File>,
}

impl DirCache {
    /// A cache in `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), writing: None, reading: None }
    }
    /// The default cache: `$DREAMDIST_CACHE/weights` or `~/.cache/dreamdist/weights`.
    pub fn default_dir() -> PathBuf {
        if let Ok(d) = std::env::var("DREAMDIST_CACHE") {
            return Path::new(&d).join("weights");
        }
        let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
        Path::new(&home).join(".cache/dreamdist/weights")
    }
    fn path(&self, sha: &str) -> Result<PathBuf> {
        if !super::manifest::is_sha256_hex(sha) {
            return Err(Error::Weights(format!("{sha:?} is not a SHA-256")));
        }
        Ok(self.dir.join(format!("{sha}.bin")))
    }
    /// Cached shards: (sha256, bytes).
    pub fn list(&self) -> Result<Vec<(String, u64)>> {
        let mut out = vec![];
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Ok(out) };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(sha) = name.strip_suffix(".bin")
                && super::manifest::is_sha256_hex(sha)
            {
                out.push((sha.to_string(), e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
        out.sort();
        Ok(out)
    }
}

impl ShardCache for DirCache {
    async fn open(&mut self, sha256: &str) -> Result<Option<u64>> {
        let path = self.path(sha256)?;
        match std::fs::File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
                self.reading = Some(f);
                Ok(Some(len))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading the shard cache {}", self.dir.display()), e)),
        }
    }
    async fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let f = self.reading.as_mut().ok_or_else(|| Error::Weights("no cached shard is open".into()))?;
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(buf))
            .map_err(|e| Error::io(format!("reading {} bytes at {offset} of a cached shard", buf.len()), e))
    }
    async fn close(&mut self) {
        self.reading = None;
    }
    async fn begin(&mut self, sha256: &str, _len: u64) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let tmp = self.path(sha256)?.with_extension("part");
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        self.writing = Some((tmp, f));
        Ok(())
    }
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let (tmp, f) = self.writing.as_mut().ok_or_else(|| Error::Weights("no shard is being written".into()))?;
        f.write_all(bytes)
            .map_err(|e| Error::io(format!("writing {} bytes to the shard cache ({})", bytes.len(), tmp.display()), e))
    }
    async fn commit(&mut self) -> Result<()> {
        use std::io::Write;
        let (tmp, mut f) = self.writing.take().ok_or_else(|| Error::Weights("no shard is being written".into()))?;
        let path = tmp.with_extension("bin");
        let done = f.flush().map_err(|e| Error::io(format!("writing {}", tmp.display()), e)).and_then(|_| {
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
        });
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        drop(f);
        self.reading =
            Some(std::fs::File::open(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?);
        Ok(())
    }
    async fn abort(&mut self) {
        if let Some((tmp, f)) = self.writing.take() {
            drop(f);
            let _ = std::fs::remove_file(tmp);
        }
    }
    async fn remove(&mut self, sha256: &str) -> Result<()> {
        match std::fs::remove_file(self.path(sha256)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("deleting a cached shard", e)),
        }
    }
}

/// Writes shards into a directory (the converter's sink).
pub struct DirSink {
    /// Output directory.
    pub dir: PathBuf,
}

impl super::convert::ShardSink for DirSink {
    async fn write(&mut self, file: &str, bytes: &[u8]) -> Result<()> {
        let p = self.dir.join(file);
        std::fs::write(&p, bytes).map_err(|e| Error::io(format!("writing {}", p.display()), e))
    }
}

/// Reads a manifest from a base URL or directory.
pub async fn fetch_manifest(transport: &mut AnyTransport, base: &str) -> Result<super::manifest::Manifest> {
    let url = super::loader::join(base, "manifest.json");
    let mut bytes = vec![];
    let max = super::manifest::MAX_MANIFEST_BYTES;
    transport
        .get(&url, 0, None, max as u64 + 1, &mut |c| bytes.extend_from_slice(c))
        .await
        .map_err(|e| Error::Weights(format!("{url}: {e}")))?;
    if bytes.len() > max {
        return Err(Error::Weights(format!("{url}: larger than a manifest can be ({max} bytes)")));
    }
    super::manifest::Manifest::from_json(&bytes).map_err(|e| e.context(&url))
}

/// Loads a converted model (a directory or URL holding `manifest.json` and its shards) with no
/// shard cache and no progress: every shard is fetched and verified, then the model is built
/// on `device`. For tests and tools; the CLI's loader adds the cache and progress.
pub fn load_uncached(
    base: &str,
    device: &burn::tensor::Device,
    retry: super::loader::Retry,
) -> Result<crate::model::StableDiffusion> {
    let mut transport = AnyTransport::for_base(base);
    let manifest = crate::backend::block_on(fetch_manifest(&mut transport, base))?;
    let mut src = super::ManifestSource::new(manifest, device);
    crate::backend::block_on(super::loader::load_shards(
        &mut src,
        base,
        &super::manifest::COMPONENTS,
        &mut transport,
        &mut super::loader::NoCache::default(),
        retry,
        &mut |_| {},
        &|| false,
    ))?;
    crate::model::StableDiffusion::from_manifest_source(&mut src, device)
}

/// A converted model directory as a conversion source: every tensor decoded back to f32 in its
/// checkpoint layout. Each shard is read once, through [`FileTransport`] (regular files only,
/// never past their declared size + 1), and checked (size, SHA-256) before a tensor is cut from
/// it; one shard is held at a time (tensors come in file order). For reconversion: to another
/// scheme, or a model written by an older dreamdist (a q8 token embedding is accepted here; its
/// identity becomes that of the decoded table).
pub struct ConvertedDirSource {
    dir: PathBuf,
    manifest: std::rc::Rc<super::manifest::Manifest>,
    component: String,
    /// The shard read last: (index, verified bytes).
    shard: Option<(usize, Vec<u8>)>,
    used: usize,
}

impl ConvertedDirSource {
    /// The three components' sources (in `manifest::COMPONENTS` order) of the model in `dir`,
    /// and its manifest.
    pub fn open(dir: &Path) -> Result<([Self; 3], super::manifest::Manifest)> {
        let path = dir.join("manifest.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let m = super::manifest::Manifest::from_json_for_reconversion(&bytes).map_err(|e| e.context(path.display()))?;
        let shared = std::rc::Rc::new(m.clone());
        let one = |c: &str| Self {
            dir: dir.to_path_buf(),
            manifest: shared.clone(),
            component: c.to_string(),
            shard: None,
            used: 0,
        };
        let [a, b, c] = super::manifest::COMPONENTS;
        Ok(([one(a), one(b), one(c)], m))
    }

    /// Shard `i`'s bytes, read and verified on first use.
    async fn shard(&mut self, i: usize) -> Result<&[u8]> {
        if self.shard.as_ref().is_none_or(|(at, _)| *at != i) {
            self.shard = None;
            let s = &self.manifest.shards[i];
            let path = self.dir.join(&s.file).display().to_string();
            let mut bytes = Vec::with_capacity(s.bytes as usize);
            FileTransport
                .get(&path, 0, None, s.bytes + 1, &mut |c| bytes.extend_from_slice(c))
                .await
                .map_err(|e| Error::Weights(format!("{path}: {e}")))?;
            if bytes.len() as u64 > s.bytes {
                return Err(Error::Weights(format!(
                    "{path}: the file is larger than the manifest's {} bytes",
                    s.bytes
                )));
            }
            if (bytes.len() as u64) < s.bytes {
                return Err(Error::Weights(format!(
                    "{path}: the file has {} bytes; the manifest says {}",
                    bytes.len(),
                    s.bytes
                )));
            }
            let digest = super::sha256_hex(&bytes);
            if digest != s.sha256 {
                return Err(Error::Weights(format!(
                    "{path}: the file does not match its manifest (its SHA-256 is {digest}, the manifest says {})",
                    s.sha256
                )));
            }
            self.shard = Some((i, bytes));
        }
        Ok(&self.shard.as_ref().expect("just read").1)
    }
}

impl super::convert::TensorSource for ConvertedDirSource {
    async fn tensor(&mut self, name: &str, shape: &[usize], _init: super::Init) -> Result<Vec<f32>> {
        let full = format!("{}/{name}", self.component);
        let m = self.manifest.clone();
        let t =
            m.tensors.iter().find(|t| t.name == full).ok_or_else(|| Error::Weights(format!("{full} is missing")))?;
        self.used += 1;
        let mut bytes = Vec::with_capacity(t.byte_len() as usize);
        for p in &t.parts {
            // The manifest was validated: every part lies inside its shard.
            bytes.extend_from_slice(&self.shard(p.shard).await?[p.offset as usize..(p.offset + p.length) as usize]);
        }
        let values = super::quant::decode(&bytes, &t.shape, t.storage)?;
        Ok(match t.layout {
            // Stored [in, out]; the checkpoint's [out, in].
            super::manifest::Layout::LinearT if shape.len() == 2 => super::transpose(&values, shape[1], shape[0]),
            _ => values,
        })
    }

    fn finish(&mut self) -> Result<()> {
        let n = self.manifest.tensors.iter().filter(|t| t.component() == self.component).count();
        if n != self.used {
            return Err(Error::Weights(format!(
                "{}: the converted model has {n} tensors, the conversion used {}",
                self.component, self.used
            )));
        }
        Ok(())
    }
}
