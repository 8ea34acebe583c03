//! Converted models (manifest + shards): every storage scheme loads and computes within its
//! expected error of f32, on the CPU backend and on native wgpu (lavapipe here); hostile
//! manifests and shards are refused with clear errors.
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use dreamdist::backend::{self, BackendKind, block_on, read, tensor};
use dreamdist::model::{ModelSpec, StableDiffusion};
use dreamdist::weights::RandomSource;
use dreamdist::weights::convert::{Quant, convert};
use dreamdist::weights::loader::Retry;
use dreamdist::weights::manifest::Manifest;
use dreamdist::weights::native::{DirSink, load_uncached};

use crate::{convert_tiny, tiny_fixtures as fixtures};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dreamdist-weights-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn load(dir: &Path, device: &burn::tensor::Device) -> dreamdist::Result<StableDiffusion> {
    load_uncached(&dir.display().to_string(), device, Retry { attempts: 2, backoff_ms: 1, corrupt: 0 })
}

/// Text, UNet and VAE outputs on fixed inputs, flattened.
fn outputs(sd: &StableDiffusion) -> [Vec<f32>; 3] {
    let device = sd.device();
    let tok = dreamdist::tokenizer::ClipTokenizer::sd2().unwrap();
    let ids = vec![tok.encode("a small red circle on a blue background").unwrap()];
    let text = sd.text.forward(&ids, &device).unwrap();
    let x = tensor((0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect(), [1, 4, 8, 8], &device);
    let unet = sd.unet.forward_planned(x.clone(), &[321.0], &text, &sd.plan, &mut ());
    let img = sd.vae.decode(x);
    [block_on(read(text)).unwrap(), block_on(read(unet)).unwrap(), block_on(read(img)).unwrap()]
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let max_ref = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / max_ref
}

#[test]
fn every_scheme_loads_and_stays_within_its_error() {
    let device = backend::cpu_device();
    let reference = StableDiffusion::from_dir(ModelSpec::tiny(), fixtures(), &device).unwrap();
    let want = outputs(&reference);
    // Expected relative error of the outputs (text, unet, vae) per scheme.
    for (quant, tol) in [(Quant::F32, 0.0), (Quant::F16, 2e-3), (Quant::Q8, 3e-2), (Quant::Q4, 0.35)] {
        let dir = tmp(quant.name());
        let m = convert_tiny(&dir, quant);
        let sd = load(&dir, &device).unwrap();
        assert_eq!(sd.identity, reference.identity, "{}: identity must survive conversion", quant.name());
        assert_eq!(m.identity.text_encoder, reference.identity);
        let got = outputs(&sd);
        let errs: Vec<f32> = got.iter().zip(&want).map(|(g, w)| rel_err(g, w)).collect();
        eprintln!(
            "{}: {} bytes; relative error text {:.2e}, unet {:.2e}, vae {:.2e}",
            quant.name(),
            m.total_bytes,
            errs[0],
            errs[1],
            errs[2]
        );
        for e in &errs {
            assert!(*e <= tol, "{}: relative error {e:.3e} above {tol:e}", quant.name());
        }
        // The fixtures are stored in f16, so f32 and f16 conversions are lossless; q8/q4 are not.
        if matches!(quant, Quant::Q8 | Quant::Q4) {
            assert!(errs.iter().any(|&e| e > 0.0), "{}: a lossy scheme cannot be exact", quant.name());
        }
        let back = Manifest::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back, m);
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A q8 model computes the same on native wgpu (lavapipe) as on the CPU backend: the quantized
/// matmul, dequantized convolutions, host-side embedding and chunked attention on a GPU path.
#[test]
fn q8_model_on_wgpu_matches_cpu() {
    // The pool's growth is measured below: no other test may use the device meanwhile.
    let _gpu = crate::gpu_exclusive();
    let dir = tmp("q8-wgpu");
    let manifest = convert_tiny(&dir, Quant::Q8);
    let cpu = load(&dir, &backend::cpu_device()).unwrap();
    let (gpu_device, info) = backend::device(BackendKind::Wgpu).expect("native wgpu (lavapipe: scripts/setup.sh)");
    let in_use = || gpu_device.memory_pool_usage().expect("wgpu has a memory pool").bytes_in_use;
    // Work (and frees) queued by the tests that used the device before this one is done.
    gpu_device.sync().expect("the wgpu device syncs");
    let before = in_use();
    let gpu = load(&dir, &gpu_device).unwrap();
    let whole = in_use() - before;
    eprintln!("wgpu adapter: {} ({})", info.name, info.graphics_api);

    // Resident bytes per component: measured on the device's pool as the shards were ingested,
    // they add up to what the whole load kept there; the token table is the host's.
    let r = &gpu.resident;
    eprintln!("resident on wgpu: {r:?}; the whole load kept {whole} B");
    assert_eq!(cpu.resident.device_total(), None, "the CPU backend has no pool to measure");
    for (name, b) in [("text encoder", r.text_encoder), ("unet", r.unet), ("vae", r.vae)] {
        assert!(b.is_some_and(|b| b > 0), "{name}: {b:?}");
    }
    assert_eq!(r.device_total(), Some(whole));
    let table = manifest.tensors.iter().find(|t| t.name == "text_encoder/embeddings.token_embedding.weight").unwrap();
    assert_eq!(r.host_token_table, table.byte_len());
    assert_eq!(cpu.resident.host_token_table, table.byte_len());
    let (a, b) = (outputs(&cpu), outputs(&gpu));
    for round in 0..2 {
        let c = outputs(&gpu);
        for (i, name) in ["text", "unet", "vae"].iter().enumerate() {
            let e = rel_err(&c[i], &a[i]);
            eprintln!("round {round} {name}: wgpu vs cpu relative error {e:.2e}");
            assert!(e <= 1e-4, "{name}: wgpu differs from cpu by {e:.3e}");
            assert_eq!(c[i], b[i], "{name}: wgpu results must repeat exactly");
        }
    }
    // The f16 path (lavapipe has f16): the UNet in half precision with f32 statistics and
    // attention logits stays within 1% of f32.
    assert!(info.shader_f16, "lavapipe should offer f16");
    let mut gpu16 = gpu;
    gpu16.plan.precision = dreamdist::model::nn::Precision::F16;
    let h = outputs(&gpu16);
    let e = rel_err(&h[1], &a[1]);
    let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let diff: Vec<f32> = h[1].iter().zip(&a[1]).map(|(x, y)| x - y).collect();
    let rel_rms = rms(&diff) / rms(&a[1]);
    eprintln!("f16 UNet on wgpu vs f32 on cpu: relative RMS error {rel_rms:.2e}, max {e:.2e}");
    // Measured on lavapipe: relative RMS 1.00e-2, max 1.13e-2. That is more than random f16
    // rounding accumulated over the UNet's ~60 layers (~√60 · 4.9e-4 ≈ 4e-3) and the RMS is
    // close to the max, so part of the error is systematic; its source is not found yet (an
    // open item in docs/WEIGHTS.md). The bound catches what would break images — a wrong
    // scale, a dtype mix-up or an overflow are O(1) — without claiming more than measured.
    assert!(rel_rms <= 2e-2 && rel_rms > 0.0, "f16 UNet: relative RMS {rel_rms:.3e}");
    assert!(e <= 5e-2, "f16 UNet: max relative error {e:.3e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn random_weights_convert_like_the_in_memory_random_model() {
    let device = backend::cpu_device();
    let dir = tmp("random");
    let mut s = [RandomSource::new(5), RandomSource::new(6), RandomSource::new(7)];
    let [a, b, c] = &mut s;
    let mut sink = DirSink { dir: dir.clone() };
    let m = block_on(convert(
        &backend::cpu_device(),
        &ModelSpec::tiny(),
        Quant::F32,
        [a, b, c],
        &mut sink,
        "random",
        |_, _, _| {},
    ))
    .unwrap();
    std::fs::write(dir.join("manifest.json"), m.to_json().unwrap()).unwrap();
    let loaded = load(&dir, &device).unwrap();
    let mem = StableDiffusion::random(ModelSpec::tiny(), &device, 5);
    assert_eq!(outputs(&loaded), outputs(&mem));
    assert_eq!(loaded.identity, mem.identity);
    std::fs::remove_dir_all(&dir).ok();
}

/// Hostile or damaged manifests and shards give clear errors, never panics.
#[test]
fn hostile_manifests_and_shards_are_refused() {
    let device = backend::cpu_device();
    let dir = tmp("hostile");
    let m = convert_tiny(&dir, Quant::Q8);
    let json = m.to_json().unwrap();
    let expect = |bytes: &[u8], what: &str| {
        let e = Manifest::from_json(bytes).unwrap_err().to_string();
        assert!(e.contains(what), "expected {what:?} in: {e}");
    };
    expect(b"{not json", "not JSON");
    expect(&vec![b' '; 17 << 20], "over the");
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut w = v.clone();
        f(&mut w);
        serde_json::to_vec(&w).unwrap()
    };
    expect(&edit(&|w| w["format"] = "other".into()), "format");
    expect(&edit(&|w| w["version"] = 9.into()), "newer dreamdist");
    expect(&edit(&|w| w["shards"][0]["file"] = "../../etc/passwd".into()), "plain file name");
    expect(&edit(&|w| w["shards"][0]["file"] = "/abs/x.bin".into()), "plain file name");
    expect(&edit(&|w| w["shards"][0]["sha256"] = "xyz".into()), "sha256");
    expect(&edit(&|w| w["shards"][0]["bytes"] = (1u64 << 40).into()), "bytes");
    expect(&edit(&|w| w["tensors"][0]["name"] = "text_encoder/../../x".into()), "component/name");
    expect(&edit(&|w| w["tensors"][0]["parts"][0]["offset"] = (1u64 << 33).into()), "outside shard");
    expect(&edit(&|w| w["tensors"][0]["shape"] = serde_json::json!([1usize << 20, 1usize << 20])), "out of range");
    expect(&edit(&|w| w["model"]["unet"]["block_out_channels"] = serde_json::json!([4096, 4096])), "model spec");
    expect(&edit(&|w| w["total_bytes"] = 1.into()), "total_bytes");
    v["tensors"][1]["parts"] = v["tensors"][0]["parts"].clone();
    let overlap = serde_json::to_vec(&v).unwrap();
    assert!(Manifest::from_json(&overlap).is_err());

    // Damaged shards: a flipped byte, a truncated file, a missing file.
    let shard = dir.join(&m.shards[0].file);
    let good = std::fs::read(&shard).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    std::fs::write(&shard, &flipped).unwrap();
    let e = load(&dir, &device).unwrap_err().to_string();
    assert!(e.contains("does not match its manifest") && e.contains(&m.shards[0].file), "{e}");
    std::fs::write(&shard, &good[..good.len() - 10]).unwrap();
    let e = load(&dir, &device).unwrap_err().to_string();
    assert!(e.contains(&m.shards[0].file), "{e}");
    std::fs::remove_file(&shard).unwrap();
    let e = load(&dir, &device).unwrap_err().to_string();
    assert!(e.contains("no such file") && e.contains(&m.shards[0].file), "{e}");
    std::fs::write(&shard, &good).unwrap();
    load(&dir, &device).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn banded_vae_and_chunked_attention_equal_the_plain_computation() {
    use dreamdist::model::MemPlan;
    use dreamdist::model::nn::{attention, attention_chunked};
    let device = backend::cpu_device();
    let sd = StableDiffusion::from_dir(ModelSpec::tiny(), fixtures(), &device).unwrap();
    let mut rng = dreamdist::rng::Rng::new(4);
    let img: Tensor<4> = tensor(rng.uniform_vec(3 * 32 * 48, -1.0, 1.0), [1, 3, 32, 48], &device);
    let z: Tensor<4> = tensor(rng.normal_vec(4 * 16 * 24), [1, 4, 16, 24], &device);
    let big = MemPlan::blocks(1 << 30);
    let tiny = MemPlan::blocks(16 << 10);
    let e0 = sd.vae.encode_planned(img.clone(), &big);
    let e1 = sd.vae.encode_planned(img, &tiny);
    let d0 = block_on(read(sd.vae.decode_planned(z.clone(), &big))).unwrap();
    let d1 = block_on(read(sd.vae.decode_planned(z, &tiny))).unwrap();
    let (m0, m1) = (block_on(read(e0.mean)).unwrap(), block_on(read(e1.mean)).unwrap());
    eprintln!("banded vs whole: encode {:.2e}, decode {:.2e}", rel_err(&m1, &m0), rel_err(&d1, &d0));
    assert!(rel_err(&m1, &m0) < 1e-5 && rel_err(&d1, &d0) < 1e-5);
    // Attention in query blocks (causal too) equals one block.
    for causal in [false, true] {
        let q: Tensor<3> = tensor(rng.normal_vec(2 * 50 * 16), [2, 50, 16], &device);
        let k: Tensor<3> = tensor(rng.normal_vec(2 * 50 * 16), [2, 50, 16], &device);
        let v: Tensor<3> = tensor(rng.normal_vec(2 * 50 * 16), [2, 50, 16], &device);
        let whole = block_on(read(attention(q.clone(), k.clone(), v.clone(), 4, causal))).unwrap();
        let plan = MemPlan::blocks(2 * 4 * 50 * 4 * 7);
        let chunked = block_on(read(attention_chunked(q, k, v, 4, causal, &plan))).unwrap();
        assert!(rel_err(&chunked, &whole) < 1e-6, "causal {causal}: {}", rel_err(&chunked, &whole));
    }
}

/// A model directory is plain local files: a manifest or shard that is a named pipe, a device, a
/// directory or a link loop is refused by name at once (no hang: a pipe blocks an open until a
/// writer comes, a device never ends), and a shard that is short, empty, too long or another
/// file is refused in words about files, with no retries (the default policy would back off
/// ~24 s before giving up on a network).
#[cfg(unix)]
#[test]
fn hostile_directories_are_refused_at_once() {
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    let src = tmp("dir-src");
    let m = convert_tiny(&src, Quant::Q8);
    assert!(m.shards.len() >= 2, "the case of a swapped shard needs two shards");
    let shard = m.shards[0].file.as_str();
    let other = std::fs::read(src.join(&m.shards[1].file)).unwrap();
    let good = std::fs::read(src.join(shard)).unwrap();

    // Each case: a fresh copy of the directory, damaged by `damage`, loaded with the default
    // retry policy on a thread of its own so that a hang fails the test instead of blocking it.
    let case = |name: &str, damage: &dyn Fn(&Path)| -> (String, Duration) {
        let dir = tmp(&format!("dir-{name}"));
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        damage(&dir);
        let (tx, rx) = std::sync::mpsc::channel();
        let base = dir.clone();
        let t0 = Instant::now();
        std::thread::spawn(move || {
            let r = load_uncached(&base.display().to_string(), &backend::cpu_device(), Retry::default());
            let _ = tx.send(r.err().map(|e| e.to_string()));
        });
        let got = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{name}: the load hangs"));
        let e = got.unwrap_or_else(|| panic!("{name}: a damaged directory loaded"));
        eprintln!("{name}: refused in {:.2} s: {e}", t0.elapsed().as_secs_f64());
        (e, t0.elapsed())
    };
    let replace = |dir: &Path, file: &str, with: &dyn Fn(&Path)| {
        std::fs::remove_file(dir.join(file)).unwrap();
        with(&dir.join(file));
    };
    let edit_manifest = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let path = d.join("manifest.json");
        let mut w: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut w);
        std::fs::write(&path, serde_json::to_vec(&w).unwrap()).unwrap();
    };
    let mkfifo = |p: &Path| {
        let ok = std::process::Command::new("mkfifo").arg(p).status().expect("mkfifo (coreutils)").success();
        assert!(ok, "mkfifo {}", p.display());
    };
    // (name, what damages the copy, what the message must say)
    type Case<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "manifest-device",
            Box::new(|d: &Path| replace(d, "manifest.json", &|p| symlink("/dev/zero", p).unwrap())),
            vec!["manifest.json", "a character device, not a regular file"],
        ),
        (
            "manifest-pipe",
            Box::new(|d: &Path| replace(d, "manifest.json", &|p| mkfifo(p))),
            vec!["manifest.json", "a named pipe, not a regular file"],
        ),
        (
            "shard-pipe",
            Box::new(|d: &Path| replace(d, shard, &|p| mkfifo(p))),
            vec![shard, "a named pipe, not a regular file"],
        ),
        (
            "shard-device",
            Box::new(|d: &Path| replace(d, shard, &|p| symlink("/dev/urandom", p).unwrap())),
            vec![shard, "a character device"],
        ),
        (
            "shard-directory",
            Box::new(|d: &Path| replace(d, shard, &|p| std::fs::create_dir(p).unwrap())),
            vec![shard, "a directory, not a regular file"],
        ),
        (
            "shard-link-loop",
            Box::new(|d: &Path| replace(d, shard, &|p| symlink(p, p).unwrap())),
            vec![shard, "cannot be read", "symbolic links"],
        ),
        (
            "shard-short",
            Box::new(|d: &Path| std::fs::write(d.join(shard), &good[..good.len() - 10]).unwrap()),
            vec![shard, "the file has", "bytes; the manifest says"],
        ),
        (
            "shard-empty",
            Box::new(|d: &Path| std::fs::write(d.join(shard), b"").unwrap()),
            vec![shard, "the file has 0 bytes; the manifest says"],
        ),
        (
            "shard-long",
            Box::new(|d: &Path| std::fs::write(d.join(shard), [&good[..], &[0u8][..]].concat()).unwrap()),
            vec![shard, "the file is larger than the manifest's"],
        ),
        ("shard-swapped", Box::new(|d: &Path| std::fs::write(d.join(shard), &other).unwrap()), vec![shard]),
        // What the manifest says, not what the files are: a tensor the model never asked for
        // (refused before any shard is opened), and another model's identity.
        (
            "manifest-extra-tensor",
            Box::new(|d: &Path| {
                edit_manifest(d, &|w| {
                    let mut t = w["tensors"][0].clone();
                    t["name"] = "text_encoder/extra.weight".into();
                    w["tensors"].as_array_mut().unwrap().push(t);
                })
            }),
            vec!["manifest.json", "text_encoder/extra.weight is not a parameter of the model"],
        ),
        (
            "manifest-false-identity",
            Box::new(|d: &Path| edit_manifest(d, &|w| w["identity"]["text_encoder"] = "ef".repeat(32).into())),
            vec!["the manifest gives the model the identity efefef", &m.identity.text_encoder],
        ),
    ];
    for (name, damage, want) in &cases {
        let (e, took) = case(name, damage.as_ref());
        for w in want {
            assert!(e.contains(w), "{name}: expected {w:?} in: {e}");
        }
        assert_plain(&e);
        assert!(!e.contains("network") && !e.contains("connection") && !e.contains("server"), "{name}: {e}");
        assert!(took < Duration::from_secs(5), "{name}: took {took:?} (retried?)");
    }
    // The swapped shard says what is wrong with it, whichever its length.
    let (e, _) = case("shard-swapped-same-length", &|d: &Path| {
        let mut same = good.clone();
        same[0] ^= 1;
        std::fs::write(d.join(shard), &same).unwrap();
    });
    assert!(e.contains("does not match its manifest") && e.contains("was changed or replaced"), "{e}");
}

/// A message meant for people: one `weights:` prefix, no Rust debug text.
pub fn assert_plain(e: &str) {
    assert!(e.matches("weights:").count() <= 1, "a doubled prefix: {e}");
    for debug in ["Some(", "None", "Q8", "LinearT", "HostTable", "Conv2d {"] {
        assert!(!e.contains(debug), "debug text {debug:?} in: {e}");
    }
}

/// A manifest holds exactly the model's own tensors — the parameter inventory `convert` walks,
/// in its stored shapes, layouts and storage — and shards hold exactly those tensors: whatever
/// else it declares is refused when it is parsed, before any shard is fetched (the loader parses
/// the manifest first), each refusal naming what is wrong.
#[test]
fn manifests_hold_exactly_the_models_tensors() {
    use dreamdist::weights::manifest::Layout;
    use serde_json::{Value, json};
    let dir = tmp("inventory");
    let m = convert_tiny(&dir, Quant::Q8);
    let v: Value = serde_json::to_value(&m).unwrap();
    let refuse = |w: &Value, what: &[&str]| {
        let e = Manifest::from_json(&serde_json::to_vec(w).unwrap()).unwrap_err().to_string();
        for x in what {
            assert!(e.contains(x), "expected {x:?} in: {e}");
        }
        assert_plain(&e);
        eprintln!("refused: {e}");
    };
    let lin = m.tensors.iter().position(|t| t.layout == Layout::LinearT && t.shape[0] != t.shape[1]).unwrap();
    let name = m.tensors[lin].name.clone();
    let component = m.tensors[lin].component().to_string();
    let (rows, cols) = (m.tensors[lin].shape[0], m.tensors[lin].shape[1]);

    let mut w = v.clone();
    w["tensors"].as_array_mut().unwrap().remove(lin);
    refuse(&w, &[&format!("{name} is missing"), "does not hold the tensors of dreamdist's \"tiny\" model"]);
    let mut w = v.clone();
    let extra = format!("{component}/extra.weight");
    w["tensors"][lin]["name"] = extra.clone().into();
    refuse(&w, &[&format!("{extra} is not a parameter of the model"), &format!("{name} is missing")]);
    let mut w = v.clone();
    w["tensors"][lin]["shape"] = json!([cols, rows]);
    refuse(
        &w,
        &[&format!(
            "{name} is a transposed linear weight {cols}×{rows}, the model needs a transposed linear weight {rows}×{cols}"
        )],
    );
    let mut w = v.clone();
    w["tensors"][lin]["layout"] = "plain".into();
    refuse(&w, &[&format!("{name} is plain {rows}×{cols}")]);
    // Bytes the tensors do not need: a padded shard.
    let mut w = v.clone();
    w["shards"][0]["bytes"] = (m.shards[0].bytes + 8).into();
    w["total_bytes"] = (m.total_bytes + 8).into();
    refuse(
        &w,
        &[&format!(
            "shard {} is declared as {} bytes, but its tensors take {}",
            m.shards[0].file,
            m.shards[0].bytes + 8,
            m.shards[0].bytes
        )],
    );
    // One hash naming two files of different sizes.
    let mut w = v.clone();
    w["shards"][1]["sha256"] = m.shards[0].sha256.clone().into();
    refuse(&w, &["have the same SHA-256 but different sizes"]);
    // The allocation attack: a 2 GiB tensor the model never asked for, its 32 parts in 32
    // declared 64 MiB shards that all name one hash (one 64 MiB download through a hash-keyed
    // cache). It passes the format's generic caps; the inventory refuses it.
    refuse(&crate::with_huge_tensor(&m, &"ab".repeat(32)), &["unet/huge is not a parameter of the model"]);
    // A model converted before the token embedding became lossless (the demo model as shipped
    // until 2026-12-08): refused with what to do, and readable for that reconversion.
    let legacy =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy-q8-table-manifest.json"))
            .unwrap();
    let e = Manifest::from_json(&legacy).unwrap_err().to_string();
    assert!(
        e.contains("text_encoder/embeddings.token_embedding.weight is stored as q8, a q8 conversion stores it as f16"),
        "{e}"
    );
    assert!(e.contains("dreamdist convert --from"), "{e}");
    assert_plain(&e);
    let old = Manifest::from_json_for_reconversion(&legacy).unwrap();
    assert_eq!(old.model.id, "demo");
    // The header's own messages are plain too.
    let mut w = v.clone();
    w.as_object_mut().unwrap().remove("format");
    refuse(&w, &["it has no \"format\""]);
    let mut w = v.clone();
    w["version"] = 0.into();
    refuse(&w, &["version 0 is not a version of the format"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// The identity a manifest states is recomputed from the token embedding it holds: a manifest
/// that claims another model's identity is refused at load, with both values.
#[test]
fn a_manifest_claiming_another_identity_is_refused_at_load() {
    let device = backend::cpu_device();
    let dir = tmp("identity");
    let m = convert_tiny(&dir, Quant::Q8);
    let claimed = "ab".repeat(32);
    let mut w: serde_json::Value = serde_json::to_value(&m).unwrap();
    w["identity"]["text_encoder"] = claimed.clone().into();
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&w).unwrap()).unwrap();
    let Err(e) = load(&dir, &device) else { panic!("a manifest with a false identity loaded") };
    let e = e.to_string();
    eprintln!("{e}");
    assert!(e.contains(&claimed) && e.contains(&m.identity.text_encoder), "both identities in: {e}");
    assert_plain(&e);
    std::fs::remove_dir_all(&dir).ok();
}

/// `convert --from <converted model>`: a converted model is a conversion source. Reconverting
/// to the same scheme reproduces the UNet and VAE shards byte for byte; to f32 it stores the
/// very values the q8 model computes with, so both compute the same.
#[test]
fn a_converted_model_reconverts() {
    use dreamdist::weights::native::ConvertedDirSource;
    let device = backend::cpu_device();
    let (a, b, c) = (tmp("reconvert-q8"), tmp("reconvert-again"), tmp("reconvert-f32"));
    let m = convert_tiny(&a, Quant::Q8);
    let again = |out: &Path, quant: Quant| {
        let ([mut t, mut u, mut v], _) = ConvertedDirSource::open(&a).unwrap();
        let mut sink = DirSink { dir: out.to_path_buf() };
        let r = block_on(convert(
            &device,
            &ModelSpec::tiny(),
            quant,
            [&mut t, &mut u, &mut v],
            &mut sink,
            "again",
            |_, _, _| {},
        ))
        .unwrap();
        std::fs::write(out.join("manifest.json"), r.to_json().unwrap()).unwrap();
        r
    };
    let same = again(&b, Quant::Q8);
    assert_eq!(same.shards, m.shards, "a q8 model reconverted to q8 is the same files");
    assert_eq!(same.identity, m.identity);
    let wide = again(&c, Quant::F32);
    assert_eq!(wide.identity, m.identity, "the token table is f16 in both: the identity stays");
    let (x, y) = (outputs(&load(&a, &device).unwrap()), outputs(&load(&c, &device).unwrap()));
    for (p, q) in x.iter().zip(&y) {
        assert!(rel_err(p, q) < 1e-5, "q8 and its f32 reconversion: {}", rel_err(p, q));
    }
    // A damaged source is refused, not reconverted.
    let shard = a.join(&m.shards[1].file);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let ([mut t, mut u, mut v], _) = ConvertedDirSource::open(&a).unwrap();
    let e = block_on(convert(
        &device,
        &ModelSpec::tiny(),
        Quant::Q8,
        [&mut t, &mut u, &mut v],
        &mut DirSink { dir: b.clone() },
        "x",
        |_, _, _| {},
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not match its manifest") && e.contains(&m.shards[1].file), "{e}");
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).ok();
    }
}
