//! The native loader against a faulty HTTP server (tests/e2e/faultserver.mjs, run with `node`):
//! dropped connections resume with `Range`, truncated and corrupt downloads are detected and
//! fetched again, server errors are retried, a slow link and a server that ignores `Range` still
//! end with verified weights, a corrupt cache entry is deleted and re-fetched, and the final
//! errors (404, a server copy that stays corrupt or short, too many failures) name the file.
//! Every loaded model computes exactly what the model loaded from the directory computes, and a
//! second load from the same cache makes no shard request at all (the server's log says so).
//! Direct mode reads a diffusers-layout repository over HTTP in ranges and converts it to the
//! same shards as the CLI.
//!
//! Needs `node` (≥ 20) on PATH (or `NODE=/path/to/node`).
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use dreamdist::backend::{self, block_on, read, tensor};
use dreamdist::model::{ClipConfig, ModelSpec, StableDiffusion, VaeConfig};
use dreamdist::weights::convert::{Quant, convert};
use dreamdist::weights::loader::{LoadReport, NoCache, Progress, Retry, load_shards};
use dreamdist::weights::manifest::{COMPONENTS, Manifest};
use dreamdist::weights::native::{AnyTransport, DirCache, DirSink, HttpTransport, fetch_manifest};
use dreamdist::weights::remote::{FILES, RemoteSafetensors};
use dreamdist::weights::{ManifestSource, sha256_hex};
use serde_json::{Value, json};

const RETRY: Retry = Retry { attempts: 8, backoff_ms: 1, corrupt: 2 };

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Per-process scratch directory; directories of dead earlier runs are removed.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if Path::new("/proc/self").exists()
            && let Ok(rd) = std::fs::read_dir(&tmp)
        {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(pid) = name.strip_prefix("dreamdist-loader-")
                    && pid.parse::<u32>().is_ok()
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let d = tmp.join(format!("dreamdist-loader-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// A fresh directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = scratch().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tiny fixture model converted to q8, and what the directory-loaded model computes.
struct Fixture {
    dir: PathBuf,
    manifest: Manifest,
    outputs: [Vec<f32>; 3],
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tmp("model-q8");
        let device = backend::cpu_device();
        let manifest = crate::convert_tiny(&dir, Quant::Q8);
        // The reference: the same converted model read from the directory (no HTTP, no cache).
        let base = dir.display().to_string();
        let mut tr = AnyTransport::for_base(&base);
        let m = block_on(fetch_manifest(&mut tr, &base)).unwrap();
        let mut src = ManifestSource::new(m, &device);
        block_on(load_shards(
            &mut src,
            &base,
            &COMPONENTS,
            &mut tr,
            &mut NoCache::default(),
            RETRY,
            &mut |_| {},
            &|| false,
        ))
        .unwrap();
        let sd = StableDiffusion::from_manifest_source(&mut src, &device).unwrap();
        let outputs = outputs(&sd);
        eprintln!(
            "fixture: q8, {} bytes in {} shards: {}",
            manifest.total_bytes,
            manifest.shards.len(),
            manifest.shards.iter().map(|s| format!("{} ({} B)", s.file, s.bytes)).collect::<Vec<_>>().join(", ")
        );
        Fixture { dir, manifest, outputs }
    })
}

/// Text encoder, UNet and VAE outputs on fixed inputs.
fn outputs(sd: &StableDiffusion) -> [Vec<f32>; 3] {
    let device = sd.device();
    let tok = dreamdist::tokenizer::ClipTokenizer::sd2().unwrap();
    let ids = vec![tok.encode("a small red circle on a blue background").unwrap()];
    let text = sd.text.forward(&ids, &device).unwrap();
    let x = tensor((0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect(), [1, 4, 8, 8], &device);
    let unet = sd.unet.forward(x.clone(), &[321.0], &text);
    let img = sd.vae.decode(x);
    [block_on(read(text)).unwrap(), block_on(read(unet)).unwrap(), block_on(read(img)).unwrap()]
}

fn assert_same_model(sd: &StableDiffusion, what: &str) {
    let got = outputs(sd);
    for (i, name) in ["text encoder", "unet", "vae"].iter().enumerate() {
        assert_eq!(got[i], fixture().outputs[i], "{what}: the {name} output differs from the directory-loaded model");
    }
}

/// `node tests/e2e/faultserver.mjs DIR --plan JSON`, killed on drop (also when a test panics)
/// and exiting by itself when this process dies (its stdin closes).
struct FaultServer {
    child: Child,
    _stdin: ChildStdin,
    url: String,
}

impl FaultServer {
    fn start(dir: &Path, plan: Value) -> Self {
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(&node)
            .arg(root().join("tests/e2e/faultserver.mjs"))
            .arg(dir)
            .arg("--plan")
            .arg(plan.to_string())
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {node} (Node.js ≥ 20 is needed; set NODE): {e}"));
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let Some(url) = line.trim().strip_prefix("faultserver: serving ") else {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            let _ = child.kill();
            panic!("the fault server did not start: {line}{err}");
        };
        let url = url.to_string();
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(|l| l.ok()) {
                eprintln!("[faultserver] {l}");
            }
        });
        Self { child, _stdin: stdin, url }
    }

    /// The request log (shard and manifest requests).
    fn log(&self) -> Vec<Value> {
        let mut resp = ureq::get(&format!("{}__log", self.url)).call().unwrap();
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    fn reset(&self) {
        ureq::post(&format!("{}__reset", self.url)).send("").unwrap();
    }

    fn set_faults(&self, plan: Value) {
        ureq::post(&format!("{}__faults", self.url)).send(plan.to_string()).unwrap();
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs of `file` in the log, in order.
fn requests_for<'a>(log: &'a [Value], file: &str) -> Vec<&'a Value> {
    let path = format!("/{file}");
    log.iter().filter(|e| e["path"] == path.as_str() && e["method"] == "GET").collect()
}

fn shard_requests(log: &[Value]) -> usize {
    log.iter().filter(|e| e["path"].as_str().is_some_and(|p| p.ends_with(".bin"))).count()
}

fn range_start(e: &Value) -> Option<u64> {
    e["range"].as_str()?.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

/// Loads from `url` through the shard cache in `cache`; checks the progress reports on the way.
fn load(url: &str, cache: &Path, retry: Retry) -> dreamdist::Result<(StableDiffusion, LoadReport)> {
    let device = backend::cpu_device();
    let mut tr = AnyTransport::for_base(url);
    assert!(matches!(tr, AnyTransport::Http(_)));
    let m = block_on(fetch_manifest(&mut tr, url))?;
    let total = m.download_bytes();
    let mut src = ManifestSource::new(m, &device);
    let mut cache = DirCache::new(cache);
    let mut events: Vec<Progress> = vec![];
    let report = block_on(load_shards(
        &mut src,
        url,
        &COMPONENTS,
        &mut tr,
        &mut cache,
        retry,
        &mut |p| events.push(p.clone()),
        &|| false,
    ))?;
    for p in &events {
        assert!(p.done_bytes <= p.total_bytes, "progress beyond the total: {p:?}");
        assert_eq!(p.total_bytes, total);
        assert!(
            p.component_done <= p.component_total || p.phase == "done",
            "component progress beyond its total: {p:?}"
        );
    }
    let last = events.last().expect("progress events");
    assert_eq!((last.phase, last.done_bytes), ("done", total));
    let sd = StableDiffusion::from_manifest_source(&mut src, &device)?;
    Ok((sd, report))
}

fn show(name: &str, r: &LoadReport) {
    let mut short = r.clone();
    short.events.truncate(12);
    eprintln!("{name}: {}", serde_json::to_string(&short).unwrap());
}

/// Every cached file is a verified shard of the fixture.
fn assert_cache_verified(cache: &Path) {
    let m = &fixture().manifest;
    let listed = DirCache::new(cache).list().unwrap();
    assert_eq!(listed.len(), m.shards.len(), "cache entries: {listed:?}");
    for s in &m.shards {
        let bytes = std::fs::read(cache.join(format!("{}.bin", s.sha256))).unwrap();
        assert_eq!(sha256_hex(&bytes), s.sha256, "cached {} is not verified", s.file);
    }
    assert_no_partial_files(cache);
}

/// No `<sha>.part` (a shard still streaming in) is left in the cache directory.
fn assert_no_partial_files(cache: &Path) {
    let parts: Vec<String> = std::fs::read_dir(cache)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    assert!(!parts.iter().any(|n| n.ends_with(".part")), "partial files left in the cache: {parts:?}");
}

/// The largest shard (most room for mid-body faults).
fn big() -> &'static dreamdist::weights::manifest::ShardEntry {
    fixture().manifest.shards.iter().max_by_key(|s| s.bytes).unwrap()
}

#[test]
fn clean_load_equals_the_directory_and_a_second_load_makes_no_request() {
    let f = fixture();
    let n = f.manifest.shards.len();
    let server = FaultServer::start(&f.dir, json!([]));
    let cache = tmp("clean-cache");
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("clean", &r);
    assert_eq!((r.shards, r.downloaded, r.from_cache, r.requests), (n, n, 0, n));
    assert_eq!((r.retries, r.resumed, r.corrupt, r.cache_corrupt), (0, 0, 0, 0));
    assert_eq!(r.bytes_downloaded, f.manifest.total_bytes);
    assert_same_model(&sd, "HTTP load");
    assert_cache_verified(&cache);
    let log = server.log();
    for s in &f.manifest.shards {
        let reqs = requests_for(&log, &s.file);
        assert_eq!(reqs.len(), 1, "{}: {reqs:?}", s.file);
        assert_eq!((reqs[0]["status"].as_u64(), reqs[0]["bytes"].as_u64()), (Some(200), Some(s.bytes)));
        assert!(reqs[0]["range"].is_null());
    }

    // Second load, same cache: the manifest is fetched, no shard is.
    server.reset();
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("cached", &r);
    assert_eq!((r.from_cache, r.downloaded, r.requests, r.bytes_downloaded), (n, 0, 0, 0));
    let log = server.log();
    assert_eq!(shard_requests(&log), 0, "shard requests on a cached load: {log:?}");
    assert_eq!(log.len(), 1, "only manifest.json: {log:?}");
    assert_same_model(&sd, "cached load");
}

#[test]
fn a_dropped_connection_resumes_with_range() {
    let f = fixture();
    let n = f.manifest.shards.len();
    // Every shard's first GET dies half-way (socket destroyed).
    let server = FaultServer::start(&f.dir, json!([{"path": "*.bin", "type": "drop", "on": [1]}]));
    let cache = tmp("drop-cache");
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("drop", &r);
    assert_eq!(r.resumed, n, "one resume per shard");
    assert_eq!(r.retries, n);
    assert_eq!((r.downloaded, r.requests, r.corrupt), (n, 2 * n, 0));
    assert!(r.events.iter().any(|e| e.contains("resuming at byte")), "{:?}", r.events);
    assert_eq!(r.bytes_downloaded, f.manifest.total_bytes, "a resume must not download anything twice");
    let log = server.log();
    for s in &f.manifest.shards {
        let reqs = requests_for(&log, &s.file);
        assert_eq!(reqs.len(), 2, "{}: {reqs:?}", s.file);
        assert_eq!(reqs[0]["aborted"].as_bool(), Some(true));
        let sent = reqs[0]["bytes"].as_u64().unwrap();
        let from = range_start(reqs[1])
            .unwrap_or_else(|| panic!("{}: the second request has no `Range: bytes=N-`: {}", s.file, reqs[1]));
        assert!(from > 0 && from <= sent, "{}: resumed at {from}, the server had sent {sent}", s.file);
        assert_eq!(reqs[1]["status"], 206);
        assert_eq!(reqs[1]["bytes"].as_u64(), Some(s.bytes - from));
    }
    assert_same_model(&sd, "after dropped connections");
    assert_cache_verified(&cache);
}

#[test]
fn truncated_bodies_are_detected_and_resumed() {
    let f = fixture();
    let [a, b, ..] = &f.manifest.shards[..] else { panic!("at least two shards") };
    // a: the connection closes (FIN) early while Content-Length announced the whole body;
    // b: a well-formed but short response (Content-Length says the short length).
    let server = FaultServer::start(
        &f.dir,
        json!([
            {"path": format!("/{}", a.file), "type": "truncate", "after": a.bytes / 2, "on": [1]},
            {"path": format!("/{}", b.file), "type": "truncate", "after": b.bytes / 4, "honest": true, "on": [1, 2]},
        ]),
    );
    let cache = tmp("truncate-cache");
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("truncate", &r);
    assert_eq!(r.resumed, 3);
    assert_eq!(r.corrupt, 0);
    assert!(
        r.events.iter().any(|e| e.contains(&b.file) && e.contains("connection ended after")),
        "a short body must be reported: {:?}",
        r.events
    );
    let log = server.log();
    let ra = requests_for(&log, &a.file);
    assert_eq!(ra.len(), 2);
    assert_eq!(range_start(ra[1]), Some(a.bytes / 2));
    let rb = requests_for(&log, &b.file);
    assert_eq!(rb.len(), 3, "{rb:?}");
    // The second request resumes at a quarter and is cut after another quarter.
    let q = b.bytes / 4;
    assert_eq!(range_start(rb[1]), Some(q));
    assert_eq!(range_start(rb[2]), Some(2 * q));
    assert_same_model(&sd, "after truncated bodies");
    assert_cache_verified(&cache);
}

#[test]
fn a_flipped_byte_is_rejected_and_fetched_again() {
    let f = fixture();
    let n = f.manifest.shards.len();
    let server = FaultServer::start(&f.dir, json!([{"path": "*.bin", "type": "flip", "on": [1]}]));
    let cache = tmp("flip-cache");
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("flip", &r);
    assert_eq!((r.corrupt, r.downloaded, r.requests, r.resumed), (n, n, 2 * n, 0));
    assert_eq!(r.bytes_downloaded, 2 * f.manifest.total_bytes);
    assert_eq!(r.events.iter().filter(|e| e.contains("SHA-256 mismatch")).count(), n, "{:?}", r.events);
    let log = server.log();
    for s in &f.manifest.shards {
        let reqs = requests_for(&log, &s.file);
        assert_eq!(reqs.len(), 2);
        assert!(reqs[0]["faults"][0].as_str().unwrap().starts_with("flip@"));
        assert!(reqs[1]["range"].is_null(), "a rejected download starts over: {}", reqs[1]);
    }
    assert_same_model(&sd, "after flipped bytes");
    assert_cache_verified(&cache);
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let f = fixture();
    let n = f.manifest.shards.len();
    let [a, b, c, ..] = &f.manifest.shards[..] else { panic!("at least three shards") };
    let server = FaultServer::start(
        &f.dir,
        json!([
            {"path": format!("/{}", a.file), "type": "status", "code": 500, "on": [1]},
            {"path": format!("/{}", b.file), "type": "status", "code": 503, "on": [1, 2]},
            {"path": format!("/{}", c.file), "type": "status", "code": 429, "on": [1]},
        ]),
    );
    let cache = tmp("status-cache");
    let retry = Retry { attempts: 8, backoff_ms: 20, corrupt: 2 };
    let t0 = std::time::Instant::now();
    let (sd, r) = load(&server.url, &cache, retry).unwrap();
    show("status", &r);
    assert_eq!((r.retries, r.requests, r.downloaded, r.resumed, r.corrupt), (4, n + 4, n, 0, 0));
    for (file, code) in [(&a.file, 500), (&b.file, 503), (&c.file, 429)] {
        assert!(
            r.events.iter().any(|e| e.contains(file.as_str()) && e.contains(&format!("HTTP {code}"))),
            "{:?}",
            r.events
        );
    }
    // Backoff: 20 ms before a's retry, 20 + 40 ms before b's, 20 ms before c's.
    assert!(t0.elapsed().as_millis() >= 100, "{:?}", t0.elapsed());
    let log = server.log();
    let rb = requests_for(&log, &b.file);
    assert_eq!(rb.iter().map(|e| e["status"].as_u64().unwrap()).collect::<Vec<_>>(), [503, 503, 200]);
    assert!(rb[2]["t"].as_u64().unwrap() - rb[0]["t"].as_u64().unwrap() >= 60, "backoff between retries: {rb:?}");
    assert_same_model(&sd, "after server errors");
}

#[test]
fn a_slow_shard_still_completes() {
    let f = fixture();
    let n = f.manifest.shards.len();
    let s = big();
    // About 1.5 s for the largest shard.
    let rate = (s.bytes as f64 / 1.5) as u64;
    let server = FaultServer::start(
        &f.dir,
        json!([{"path": format!("/{}", s.file), "type": "slow", "rate": rate, "on": "all"}]),
    );
    let cache = tmp("slow-cache");
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("slow", &r);
    assert_eq!((r.downloaded, r.requests, r.retries, r.resumed, r.corrupt), (n, n, 0, 0, 0));
    assert!(r.ms >= 1300.0, "the slow shard took {} ms in all", r.ms);
    let log = server.log();
    let e = requests_for(&log, &s.file)[0];
    eprintln!("slow shard: {} bytes at {rate} B/s in {} ms", s.bytes, e["ms"]);
    assert!(e["ms"].as_u64().unwrap() >= 1300);
    assert_eq!(e["bytes"].as_u64(), Some(s.bytes));
    assert_same_model(&sd, "after a slow shard");
}

#[test]
fn a_server_ignoring_range_still_ends_verified() {
    let f = fixture();
    let n = f.manifest.shards.len();
    let s = big();
    // The first GET drops mid-body; the resume's `Range` is ignored (200 with the whole file),
    // so the loader must skip what it already has.
    let server = FaultServer::start(
        &f.dir,
        json!([
            {"path": format!("/{}", s.file), "type": "drop", "after": s.bytes * 2 / 3, "on": [1]},
            {"path": "*.bin", "type": "ignore-range", "on": "all"},
        ]),
    );
    let cache = tmp("norange-cache");
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("ignore-range", &r);
    assert_eq!((r.resumed, r.retries, r.downloaded, r.requests, r.corrupt), (1, 1, n, n + 1, 0));
    let log = server.log();
    let reqs = requests_for(&log, &s.file);
    assert_eq!(reqs.len(), 2);
    assert!(range_start(reqs[1]).is_some_and(|x| x > 0), "{}", reqs[1]);
    assert_eq!(reqs[1]["status"], 200, "the server answered the range with the whole file");
    assert_eq!(reqs[1]["faults"][0], "ignore-range");
    assert_same_model(&sd, "from a server ignoring Range");
    assert_cache_verified(&cache);
}

#[test]
fn a_corrupt_cached_shard_is_deleted_and_fetched_again() {
    let f = fixture();
    let n = f.manifest.shards.len();
    let [a, b, ..] = &f.manifest.shards[..] else { panic!("at least two shards") };
    let server = FaultServer::start(&f.dir, json!([]));
    let cache = tmp("cache-corrupt");
    load(&server.url, &cache, RETRY).unwrap();
    // A flipped byte in one cached shard, a truncated copy of another.
    let pa = cache.join(format!("{}.bin", a.sha256));
    let mut bytes = std::fs::read(&pa).unwrap();
    bytes[a.bytes as usize / 2] ^= 0x10;
    std::fs::write(&pa, &bytes).unwrap();
    let pb = cache.join(format!("{}.bin", b.sha256));
    let bytes = std::fs::read(&pb).unwrap();
    std::fs::write(&pb, &bytes[..bytes.len() - 7]).unwrap();
    server.reset();
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("cache-corrupt", &r);
    assert_eq!((r.cache_corrupt, r.from_cache, r.downloaded, r.requests, r.corrupt), (2, n - 2, 2, 2, 0));
    for s in [a, b] {
        assert!(
            r.events.iter().any(|e| e.contains(&s.file) && e.contains("cached copy failed verification")),
            "{:?}",
            r.events
        );
    }
    let log = server.log();
    assert_eq!(shard_requests(&log), 2);
    assert_eq!(requests_for(&log, &a.file).len(), 1);
    assert_eq!(requests_for(&log, &b.file).len(), 1);
    assert_cache_verified(&cache);
    assert_same_model(&sd, "after a corrupt cache");
}

#[test]
fn a_missing_shard_is_a_clear_final_error() {
    let f = fixture();
    let s = big();
    let server = FaultServer::start(
        &f.dir,
        json!([{"path": format!("/{}", s.file), "type": "status", "code": 404, "on": "all"}]),
    );
    let cache = tmp("404-cache");
    let e = load(&server.url, &cache, RETRY).unwrap_err().to_string();
    eprintln!("404: {e}");
    assert!(e.contains(&s.file) && e.contains("404") && e.contains("does not have"), "{e}");
    let log = server.log();
    assert_eq!(requests_for(&log, &s.file).len(), 1, "a 4xx is final: no retry");
}

#[test]
fn a_shard_that_stays_corrupt_blames_the_server_copy() {
    let f = fixture();
    let s = big();
    let server = FaultServer::start(
        &f.dir,
        json!([{"path": format!("/{}", s.file), "type": "flip", "offset": 12345 % s.bytes, "on": "all"}]),
    );
    let cache = tmp("corrupt-cache");
    let e = load(&server.url, &cache, RETRY).unwrap_err().to_string();
    eprintln!("stays corrupt: {e}");
    assert!(e.contains(&s.file) && e.contains("server's copy is corrupt"), "{e}");
    assert!(e.contains("after 3 downloads"), "{e}");
    let log = server.log();
    assert_eq!(requests_for(&log, &s.file).len(), RETRY.corrupt as usize + 1);
    assert!(!cache.join(format!("{}.bin", s.sha256)).exists(), "a corrupt download must never be cached");
    assert_no_partial_files(&cache);
}

#[test]
fn a_partial_file_left_by_an_interrupted_load_is_replaced() {
    let f = fixture();
    let s = big();
    let server = FaultServer::start(&f.dir, json!([]));
    let cache = tmp("stale-part-cache");
    std::fs::create_dir_all(&cache).unwrap();
    // What a load killed mid-shard leaves: the first bytes of the shard under `.part` (never
    // under `.bin`, so no later load can take it for a cached shard).
    let head = std::fs::read(f.dir.join(&s.file)).unwrap()[..(s.bytes / 3) as usize].to_vec();
    std::fs::write(cache.join(format!("{}.part", s.sha256)), head).unwrap();
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("stale .part", &r);
    assert_eq!((r.from_cache, r.cache_corrupt, r.downloaded), (0, 0, f.manifest.shards.len()));
    assert_same_model(&sd, "after a stale .part");
    assert_cache_verified(&cache);
}

#[test]
fn a_server_copy_shorter_than_the_manifest_is_a_final_error() {
    let s = big();
    // A copy of the model whose largest shard lost its last 100 bytes on the server.
    let dir = model_with_resized_shard("short-model", -100);
    let server = FaultServer::start(&dir, json!([]));
    let cache = tmp("short-cache");
    let e = load(&server.url, &cache, RETRY).unwrap_err().to_string();
    eprintln!("server copy short: {e}");
    assert!(e.contains(&s.file), "{e}");
    let log = server.log();
    let reqs = requests_for(&log, &s.file);
    eprintln!(
        "server copy short: {} requests: {}",
        reqs.len(),
        reqs.iter().map(|r| format!("{} {}", r["range"], r["status"])).collect::<Vec<_>>().join(", ")
    );
    assert!(reqs.len() <= RETRY.attempts as usize, "bounded: {} requests", reqs.len());
    assert!(!cache.join(format!("{}.bin", s.sha256)).exists());
    assert_no_partial_files(&cache);
}

/// A copy of the model whose largest shard is `delta` bytes longer (> 0) or shorter (< 0).
fn model_with_resized_shard(name: &str, delta: i64) -> PathBuf {
    let f = fixture();
    let dir = tmp(name);
    for e in std::fs::read_dir(&f.dir).unwrap().flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let p = dir.join(&big().file);
    let mut bytes = std::fs::read(&p).unwrap();
    if delta < 0 {
        bytes.truncate(bytes.len() - (-delta) as usize);
    } else {
        bytes.extend(std::iter::repeat_n(0x5a, delta as usize));
    }
    std::fs::write(&p, &bytes).unwrap();
    dir
}

#[test]
fn a_server_copy_longer_than_the_manifest_blames_the_server_copy() {
    let s = big();
    let dir = model_with_resized_shard("long-model", 100);
    let server = FaultServer::start(&dir, json!([]));
    let cache = tmp("long-cache");
    let e = load(&server.url, &cache, RETRY).unwrap_err().to_string();
    eprintln!("server copy long: {e}");
    assert!(e.contains(&s.file) && e.contains("server's copy is corrupt or was replaced"), "{e}");
    assert!(e.contains(&format!("more than the manifest's {} bytes", s.bytes)), "{e}");
    assert_eq!(requests_for(&server.log(), &s.file).len(), RETRY.corrupt as usize + 1);
    assert!(!cache.join(format!("{}.bin", s.sha256)).exists());
}

/// A server copy shorter than the manifest says: the resume at its end is answered 416, which
/// names both sizes, and after `corrupt + 1` downloads the loader blames the server's copy.
#[test]
fn a_short_server_copy_is_named_with_both_sizes() {
    let s = big();
    let dir = model_with_resized_shard("short-model-2", -100);
    let server = FaultServer::start(&dir, json!([]));
    let cache = tmp("short-cache-2");
    let e = load(&server.url, &cache, RETRY).unwrap_err().to_string();
    eprintln!("server copy short: {e}");
    assert!(e.contains(&s.file) && e.contains(&(s.bytes - 100).to_string()) && e.contains(&s.bytes.to_string()), "{e}");
    assert!(e.contains("server's copy"), "{e}");
    assert!(requests_for(&server.log(), &s.file).len() <= 2 * (RETRY.corrupt as usize + 1));
}

/// A connection that drops every few hundred kilobytes still completes a shard: only requests
/// that brought nothing count against `Retry::attempts`.
#[test]
fn a_connection_that_keeps_dropping_but_progresses_completes() {
    let f = fixture();
    let n = f.manifest.shards.len();
    let s = big();
    // Each of the first 9 GETs delivers a tenth of the shard, then the socket dies.
    let server = FaultServer::start(
        &f.dir,
        json!([{"path": format!("/{}", s.file), "type": "drop", "after": s.bytes / 10, "on": {"from": 1, "to": 9}}]),
    );
    let cache = tmp("progress-cache");
    let retry = Retry { attempts: 4, backoff_ms: 1, corrupt: 2 };
    let (sd, r) = load(&server.url, &cache, retry).unwrap();
    show("keeps dropping", &r);
    assert_eq!((r.resumed, r.downloaded), (9, n));
    assert_same_model(&sd, "after many drops");
}

#[test]
fn too_many_failures_give_up_with_the_count() {
    let f = fixture();
    let s = big();
    let server = FaultServer::start(
        &f.dir,
        json!([{"path": format!("/{}", s.file), "type": "status", "code": 500, "on": "all"}]),
    );
    let cache = tmp("giveup-cache");
    let retry = Retry { attempts: 4, backoff_ms: 1, corrupt: 2 };
    let e = load(&server.url, &cache, retry).unwrap_err().to_string();
    eprintln!("give up: {e}");
    assert!(e.contains(&s.file) && e.contains("gave up after 4 attempts") && e.contains("HTTP 500"), "{e}");
    assert_eq!(requests_for(&server.log(), &s.file).len(), 4);
}

/// Everything at once, as the issue asks: a dropped connection, a flipped byte, a 500, a slow
/// shard and a server ignoring `Range` in one load; then the same server with no faults and the
/// same cache: zero shard requests.
#[test]
fn all_faults_in_one_load_then_a_cached_reload() {
    let f = fixture();
    let n = f.manifest.shards.len();
    let shards = &f.manifest.shards;
    let [a, b, c, ..] = &shards[..] else { panic!("at least three shards") };
    let rate = (c.bytes as f64 / 0.8) as u64;
    let server = FaultServer::start(
        &f.dir,
        json!([
            {"path": format!("/{}", a.file), "type": "drop", "after": a.bytes / 2, "on": [1]},
            {"path": format!("/{}", a.file), "type": "ignore-range", "on": [2]},
            {"path": format!("/{}", b.file), "type": "status", "code": 500, "on": [1]},
            {"path": format!("/{}", b.file), "type": "flip", "on": [2]},
            {"path": format!("/{}", c.file), "type": "slow", "rate": rate, "on": [1]},
            {"path": format!("/{}", c.file), "type": "truncate", "after": c.bytes / 3, "on": [1]},
        ]),
    );
    let cache = tmp("all-cache");
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("all faults", &r);
    assert_eq!((r.downloaded, r.from_cache), (n, 0));
    assert_eq!(r.resumed, 2, "a after the drop, c after the truncation");
    assert_eq!(r.corrupt, 1, "b's flipped byte");
    assert_eq!(r.retries, 3, "a's drop, b's 500, c's truncation");
    assert_eq!(r.requests, n + 4);
    assert_same_model(&sd, "after all faults");
    assert_cache_verified(&cache);

    server.set_faults(json!([]));
    server.reset();
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("all faults, reload", &r);
    assert_eq!((r.from_cache, r.requests), (n, 0));
    assert_eq!(shard_requests(&server.log()), 0);
    assert_same_model(&sd, "cached reload");
}

/// The fixture's safetensors in a diffusers repository's layout (what direct mode reads).
fn diffusers_repo() -> PathBuf {
    let repo = tmp("diffusers-repo");
    let fx = root().join("tests/fixtures/tiny");
    for ((_, path), src) in FILES.iter().zip(["text_encoder.safetensors", "unet.safetensors", "vae.safetensors"]) {
        let dst = repo.join(path);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(fx.join(src), &dst).unwrap();
    }
    repo
}

#[test]
fn direct_mode_reads_a_diffusers_repository_in_ranges_and_converts_like_the_cli() {
    let f = fixture();
    let repo = diffusers_repo();
    let server = FaultServer::start(&repo, json!([]));
    let open = |file: &str, rewrites| {
        block_on(RemoteSafetensors::open(HttpTransport::default(), &format!("{}{file}", server.url), rewrites)).unwrap()
    };
    let mut t = open(FILES[0].1, ClipConfig::key_rewrites());
    let mut u = open(FILES[1].1, &[]);
    let mut v = open(FILES[2].1, VaeConfig::key_rewrites());
    let out = tmp("direct-out");
    let mut sink = DirSink { dir: out.clone() };
    let device = backend::cpu_device();
    let m = block_on(convert(
        &device,
        &ModelSpec::tiny(),
        Quant::Q8,
        [&mut t, &mut u, &mut v],
        &mut sink,
        &server.url,
        |_, _, _| {},
    ))
    .unwrap();
    // Byte-identical shards and the same model identity as converting the local files.
    let shards = |m: &Manifest| m.shards.iter().map(|s| (s.file.clone(), s.sha256.clone())).collect::<Vec<_>>();
    assert_eq!(shards(&m), shards(&f.manifest));
    assert_eq!(m.identity, f.manifest.identity);
    // Every request was a range: the header, then one range per tensor — never a whole file.
    let log = server.log();
    let gets: Vec<&Value> = log.iter().filter(|e| e["method"] == "GET").collect();
    let tensors: usize = m.tensors.len();
    eprintln!("direct mode: {} GETs for {tensors} tensors", gets.len());
    assert!(gets.iter().all(|e| e["range"].is_string() && e["status"] == 206), "{gets:?}");
    assert_eq!(gets.len(), 3 * 2 + tensors, "two header reads per file and one range per tensor");
    for ((_, path), fetched) in FILES.iter().zip([t.fetched, u.fetched, v.fetched]) {
        let size = std::fs::metadata(repo.join(path)).unwrap().len();
        assert!(fetched <= size, "{path}: fetched {fetched} of {size} bytes");
    }
    // And the model loads from the converted shards and computes what the fixture computes.
    std::fs::write(out.join("manifest.json"), m.to_json().unwrap()).unwrap();
    let base = out.display().to_string();
    let mut tr = AnyTransport::for_base(&base);
    let mut src = ManifestSource::new(m, &device);
    block_on(load_shards(&mut src, &base, &COMPONENTS, &mut tr, &mut NoCache::default(), RETRY, &mut |_| {}, &|| {
        false
    }))
    .unwrap();
    let sd = StableDiffusion::from_manifest_source(&mut src, &device).unwrap();
    assert_same_model(&sd, "direct mode");
}

/// The fixture with one tensor's bytes replaced by another's of the same size and storage
/// (two norm scales: their values become equal), laid out in one shard per component — or,
/// with `share`, with those two tensors alone in shards of their own, `dup-a.bin` and
/// `dup-b.bin`: two manifest entries, one SHA-256.
fn model_with_equal_tensors(share: bool) -> (PathBuf, Manifest) {
    use dreamdist::weights::manifest::{Part, ShardEntry};
    let f = fixture();
    let bytes_of = |t: &dreamdist::weights::manifest::TensorEntry| -> Vec<u8> {
        let mut out = vec![];
        for p in &t.parts {
            let shard = std::fs::read(f.dir.join(&f.manifest.shards[p.shard].file)).unwrap();
            out.extend_from_slice(&shard[p.offset as usize..(p.offset + p.length) as usize]);
        }
        out
    };
    let mut all: Vec<Vec<u8>> = f.manifest.tensors.iter().map(bytes_of).collect();
    let ts = &f.manifest.tensors;
    let (a, b) = (0..ts.len())
        .flat_map(|i| (i + 1..ts.len()).map(move |j| (i, j)))
        .find(|&(i, j)| {
            ts[i].name.ends_with("norm.weight")
                && ts[j].name.ends_with("norm.weight")
                && (ts[i].shape.clone(), ts[i].storage) == (ts[j].shape.clone(), ts[j].storage)
        })
        .expect("two norm scales of one size");
    all[b] = all[a].clone();
    let dir = tmp(if share { "equal-tensors-shared" } else { "equal-tensors" });
    let mut m = f.manifest.clone();
    let mut files: Vec<(String, String, Vec<u8>)> = vec![]; // (file, component, bytes)
    for (i, t) in m.tensors.iter_mut().enumerate() {
        let file = match i {
            _ if share && i == a => "dup-a.bin".to_string(),
            _ if share && i == b => "dup-b.bin".to_string(),
            _ => format!("{}-all.bin", t.component()),
        };
        let at = files.iter().position(|x| x.0 == file).unwrap_or_else(|| {
            files.push((file.clone(), t.component().to_string(), vec![]));
            files.len() - 1
        });
        let offset = files[at].2.len() as u64;
        files[at].2.extend_from_slice(&all[i]);
        t.parts = vec![Part { shard: at, offset, length: all[i].len() as u64 }];
    }
    m.shards = files
        .iter()
        .map(|(file, component, bytes)| {
            std::fs::write(dir.join(file), bytes).unwrap();
            ShardEntry {
                file: file.clone(),
                sha256: sha256_hex(bytes),
                bytes: bytes.len() as u64,
                component: component.clone(),
            }
        })
        .collect();
    m.total_bytes = m.shards.iter().map(|s| s.bytes).sum();
    std::fs::write(dir.join("manifest.json"), m.to_json().unwrap()).unwrap();
    eprintln!(
        "{} now equals {}; shards {:?}",
        ts[b].name,
        ts[a].name,
        m.shards.iter().map(|s| &s.file).collect::<Vec<_>>()
    );
    (dir, m)
}

/// Two manifest entries with one SHA-256 are one download, one cache entry and one count in
/// the progress and the report; both entries' tensors are built from it (the model computes
/// what the same weights laid out without a shared shard compute).
#[test]
fn a_shard_named_twice_is_fetched_stored_and_counted_once() {
    let device = backend::cpu_device();
    let (plain, _) = model_with_equal_tensors(false);
    let want =
        outputs(&dreamdist::weights::native::load_uncached(&plain.display().to_string(), &device, RETRY).unwrap());
    assert_ne!(want, fixture().outputs, "the edited model differs from the fixture");
    let (dir, m) = model_with_equal_tensors(true);
    let distinct = m.shards.len() - 1;
    let dup = |f: &str| m.shards.iter().find(|s| s.file == f).unwrap();
    assert_eq!(dup("dup-a.bin").sha256, dup("dup-b.bin").sha256);
    assert_eq!(m.download_bytes(), m.total_bytes - dup("dup-b.bin").bytes);
    let server = FaultServer::start(&dir, json!([]));
    let cache = tmp("named-twice-cache");
    let (sd, r) = load(&server.url, &cache, RETRY).unwrap();
    show("named twice", &r);
    assert_eq!((r.shards, r.downloaded, r.requests), (distinct, distinct, distinct));
    assert_eq!(r.bytes_downloaded, m.download_bytes());
    let log = server.log();
    assert_eq!((requests_for(&log, "dup-a.bin").len(), requests_for(&log, "dup-b.bin").len()), (1, 0), "{log:?}");
    assert_eq!(DirCache::new(&cache).list().unwrap().len(), distinct);
    assert_no_partial_files(&cache);
    assert_eq!(outputs(&sd), want, "over HTTP with a cache");
    // From the directory, with no cache: the one copy in memory serves both entries.
    let sd = dreamdist::weights::native::load_uncached(&dir.display().to_string(), &device, RETRY).unwrap();
    assert_eq!(outputs(&sd), want, "from the directory");
}

/// Hostile manifests on a server: one that declares a 2 GiB tensor the model never asked for
/// (its parts in 32 shards naming one real 64 MiB file's hash), one that lacks a tensor, one
/// that states another model's identity. The first two are refused before any shard request,
/// the third when the text encoder's token embedding arrives, before the UNet is requested;
/// none leaves a partial file, and each says what is wrong.
#[test]
fn hostile_manifests_are_refused_before_their_shards_are_fetched() {
    use dreamdist::weights::manifest::MAX_SHARD_BYTES;
    let f = fixture();
    let v: Value = serde_json::to_value(&f.manifest).unwrap();
    let serve = |name: &str, w: &Value, extra: &dyn Fn(&Path)| -> (String, Vec<Value>, std::time::Duration) {
        let dir = tmp(name);
        for s in &f.manifest.shards {
            std::fs::copy(f.dir.join(&s.file), dir.join(&s.file)).unwrap();
        }
        extra(&dir);
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec(w).unwrap()).unwrap();
        let server = FaultServer::start(&dir, json!([]));
        let cache = tmp(&format!("{name}-cache"));
        let t0 = std::time::Instant::now();
        let e = load(&server.url, &cache, Retry::default()).err().unwrap_or_else(|| panic!("{name}: loaded"));
        let took = t0.elapsed();
        let e = e.to_string();
        eprintln!("{name}: refused in {:.2} s: {e}", took.as_secs_f64());
        crate::weights::assert_plain(&e);
        assert_no_partial_files(&cache);
        (e, server.log(), took)
    };

    let huge = vec![0u8; MAX_SHARD_BYTES as usize];
    let sha = sha256_hex(&huge);
    let w = crate::with_huge_tensor(&f.manifest, &sha);
    // The one real file, and hard links to it for the other names (64 MiB on disk).
    let files = |d: &Path| {
        std::fs::write(d.join("unet-huge-00.bin"), &huge).unwrap();
        for i in 1..32 {
            std::fs::hard_link(d.join("unet-huge-00.bin"), d.join(format!("unet-huge-{i:02}.bin"))).unwrap();
        }
    };
    let (e, log, took) = serve("huge", &w, &files);
    assert!(e.contains("unet/huge is not a parameter of the model"), "{e}");
    assert_eq!(shard_requests(&log), 0, "{log:?}");
    assert!(took.as_secs_f64() < 5.0);

    let mut w = v.clone();
    let gone = w["tensors"].as_array_mut().unwrap().remove(7);
    let (e, log, _) = serve("missing", &w, &|_| {});
    assert!(e.contains(&format!("{} is missing", gone["name"].as_str().unwrap())), "{e}");
    assert_eq!(shard_requests(&log), 0, "{log:?}");

    let mut w = v.clone();
    w["identity"]["text_encoder"] = "cd".repeat(32).into();
    let (e, log, took) = serve("identity", &w, &|_| {});
    assert!(e.contains(&"cd".repeat(32)) && e.contains(&f.manifest.identity.text_encoder), "{e}");
    let te: Vec<&str> =
        f.manifest.shards.iter().filter(|s| s.component == "text_encoder").map(|s| s.file.as_str()).collect();
    let asked: Vec<&str> = log.iter().filter_map(|e| e["path"].as_str()).filter(|p| p.ends_with(".bin")).collect();
    assert!(asked.iter().all(|p| te.contains(&&p[1..])), "only text-encoder shards are fetched: {asked:?}");
    assert!(took.as_secs_f64() < 5.0);
}

/// A server whose body never ends (zeros after the shard, no Content-Length) is read no further
/// than one byte past the shard each time: the load ends with the server's copy blamed, in
/// seconds, instead of reading forever.
#[test]
fn an_endless_body_is_read_no_further_than_the_shard() {
    let f = fixture();
    let s = big().clone();
    let server = FaultServer::start(&f.dir, json!([{"path": format!("/{}", s.file), "type": "endless", "on": "all"}]));
    let url = server.url.clone();
    let cache = tmp("endless-cache");
    let (tx, rx) = std::sync::mpsc::channel();
    let c = cache.clone();
    let t0 = std::time::Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(load(&url, &c, RETRY).err().map(|e| e.to_string()));
    });
    let e = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the load reads an endless body without end")
        .expect("a shard with an endless body loaded");
    eprintln!("endless: refused in {:.2} s: {e}", t0.elapsed().as_secs_f64());
    assert!(e.contains(&s.file) && e.contains("the server sent more than the manifest's"), "{e}");
    crate::weights::assert_plain(&e);
    assert_no_partial_files(&cache);
    // Each request was abandoned soon after the shard's bytes (what the server flushed into the
    // socket's buffers is all it could send past them).
    let log = server.log();
    let reqs = requests_for(&log, &s.file);
    assert_eq!(reqs.len(), RETRY.corrupt as usize + 1, "{reqs:?}");
    for r in reqs {
        let sent = r["bytes"].as_u64().unwrap_or(0);
        assert!(sent < s.bytes + (64 << 20), "the server sent {sent} bytes for a {}-byte shard", s.bytes);
    }
}
