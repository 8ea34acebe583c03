//! Parity of every component with diffusers / transformers on the tiny random fixtures
//! (`tests/fixtures/tiny`, made by `scripts/fixtures/make_fixtures.py`), on the CPU backend;
//! plus the full-size SD 2.1 architectures built with random weights.
use std::path::Path;

use dreamdist::backend::{block_on, cpu_device, read, tensor};
use dreamdist::model::{ClipConfig, ClipTextEncoder, ModelSpec, StableDiffusion, UNet, UNetConfig, Vae, VaeConfig};
use dreamdist::parity::{self, Check, Io};
use dreamdist::weights::{RandomSource, Vb, load_from_file};

const TOL: f32 = 1e-4;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny"))
}

fn tiny() -> (StableDiffusion, Io) {
    let device = cpu_device();
    let sd = StableDiffusion::from_dir(ModelSpec::tiny(), fixtures(), &device).expect("tiny fixtures load");
    let io = Io::from_bytes(&std::fs::read(fixtures().join("io.safetensors")).unwrap()).unwrap();
    (sd, io)
}

fn assert_all(checks: &[Check], expected: &[&str]) {
    for c in checks {
        eprintln!("{:<40} max abs {:.3e}  max rel {:.3e}", c.name, c.max_abs, c.max_rel);
    }
    for name in expected {
        assert!(checks.iter().any(|c| c.name == *name), "{name} was not compared");
    }
    for c in checks {
        assert!(c.max_rel <= TOL, "{}: relative error {:.3e} > {TOL:e}", c.name, c.max_rel);
    }
}

#[test]
fn text_encoder_matches_transformers() {
    let (sd, io) = tiny();
    let checks = block_on(parity::text_encoder(&sd, &io)).unwrap();
    assert_all(
        &checks,
        &[
            "text.token_embeds",
            "text.last_hidden_state",
            "text.grad_token_embeds",
            "text.grad_token_embeds (block-wise)",
        ],
    );
}

#[test]
fn unet_matches_diffusers() {
    let (sd, io) = tiny();
    let checks = block_on(parity::unet(&sd, &io)).unwrap();
    assert_all(
        &checks,
        &[
            "unet.t_emb",
            "unet.emb",
            "unet.conv_in",
            "unet.down_blocks.0",
            "unet.down_blocks.1",
            "unet.mid_block",
            "unet.out",
            "unet.grad_encoder_hidden_states",
            "unet.grad_encoder_hidden_states (block-wise)",
        ],
    );
}

#[test]
fn vae_matches_diffusers() {
    let (sd, io) = tiny();
    let checks = block_on(parity::vae(&sd, &io)).unwrap();
    assert_all(&checks, &["vae.posterior_mean", "vae.posterior_logvar", "vae.decoded"]);
}

/// The same fixtures on native wgpu (lavapipe here): every component and both gradients (one
/// graph and block-wise) within the same tolerance, on two repeated calls.
#[test]
fn all_components_match_on_wgpu() {
    let _gpu = crate::gpu_shared();
    let (device, info) = dreamdist::backend::device(dreamdist::backend::BackendKind::Wgpu).expect("native wgpu");
    eprintln!("wgpu adapter: {} ({})", info.name, info.graphics_api);
    let sd = StableDiffusion::from_dir(ModelSpec::tiny(), fixtures(), &device).expect("tiny fixtures load");
    let io = Io::from_bytes(&std::fs::read(fixtures().join("io.safetensors")).unwrap()).unwrap();
    for round in 0..2 {
        let checks = block_on(parity::all(&sd, &io)).unwrap();
        eprintln!("round {round}:");
        assert_all(
            &checks,
            &["text.last_hidden_state", "unet.out", "unet.grad_encoder_hidden_states (block-wise)", "vae.decoded"],
        );
    }
}

#[test]
fn vae_loads_legacy_attention_key_names() {
    let device = cpu_device();
    let cfg = VaeConfig::tiny();
    let legacy =
        load_from_file(&fixtures().join("vae_legacy_keys.safetensors"), VaeConfig::key_rewrites(), &device, |vb| {
            Vae::new(vb, &cfg)
        })
        .unwrap();
    let current = load_from_file(&fixtures().join("vae.safetensors"), VaeConfig::key_rewrites(), &device, |vb| {
        Vae::new(vb, &cfg)
    })
    .unwrap();
    let x = tensor((0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect(), [1, 4, 8, 8], &device);
    let a = block_on(read(legacy.decode(x.clone()))).unwrap();
    let b = block_on(read(current.decode(x))).unwrap();
    assert_eq!(a, b);
}

#[test]
fn loading_reports_every_problem_by_name() {
    let device = cpu_device();
    // The UNet file is not a text encoder: everything is missing or unexpected.
    let err = load_from_file(&fixtures().join("unet.safetensors"), ClipConfig::key_rewrites(), &device, |vb| {
        ClipTextEncoder::new(vb, &ClipConfig::tiny())
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing") && err.contains("embeddings.token_embedding.weight"), "{err}");
    assert!(err.contains("unexpected") && err.contains("conv_in.weight"), "{err}");
    // A config that does not match the file: mis-shaped tensors are named with both shapes.
    let wide = UNetConfig { cross_attention_dim: 48, ..UNetConfig::tiny() };
    let err = load_from_file(&fixtures().join("unet.safetensors"), &[], &device, |vb| UNet::new(vb, &wide))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mis-shaped") && err.contains("attn2.to_k.weight has shape [32, 32], expected [32, 48]"),
        "{err}"
    );
    // Truncated and garbage files.
    let bytes = std::fs::read(fixtures().join("vae.safetensors")).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = dreamdist::weights::load_from_bytes(bytes[..cut].to_vec(), &[], &device, |vb| {
            Vae::new(vb, &VaeConfig::tiny())
        })
        .unwrap_err();
        assert!(err.to_string().contains("not a valid safetensors file"), "cut {cut}: {err}");
    }
}

#[test]
fn tiny_configs_match_the_reference_configs() {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("configs.json")).unwrap()).unwrap();
    let (t, u, a) = (&v["text_encoder"], &v["unet"], &v["vae"]);
    let c = ClipConfig::tiny();
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_heads, c.num_layers, c.vocab_size),
        (
            t["hidden_size"].as_u64().unwrap() as usize,
            t["intermediate_size"].as_u64().unwrap() as usize,
            t["num_attention_heads"].as_u64().unwrap() as usize,
            t["num_hidden_layers"].as_u64().unwrap() as usize,
            t["vocab_size"].as_u64().unwrap() as usize,
        )
    );
    let n =
        |x: &serde_json::Value| x.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect::<Vec<_>>();
    let uc = UNetConfig::tiny();
    assert_eq!(uc.block_out_channels, n(&u["block_out_channels"]));
    assert_eq!(uc.heads, n(&u["attention_head_dim"]));
    assert_eq!(uc.cross_attention_dim, u["cross_attention_dim"].as_u64().unwrap() as usize);
    assert_eq!(uc.layers_per_block, u["layers_per_block"].as_u64().unwrap() as usize);
    assert_eq!(uc.upcast_attention, u["upcast_attention"].as_bool().unwrap());
    let vc = VaeConfig::tiny();
    assert_eq!(vc.block_out_channels, n(&a["block_out_channels"]));
    assert_eq!(vc.layers_per_block, a["layers_per_block"].as_u64().unwrap() as usize);
}

fn count<M>(build: impl FnOnce(&Vb) -> M) -> usize {
    dreamdist::weights::inventory(build).iter().map(|(_, shape, _, _)| shape.iter().product::<usize>()).sum()
}

/// Parameter counts of the full-size architectures, as diffusers / transformers count them
/// for the SD 2.1 configs (see scripts/fixtures/README.md).
#[test]
fn full_size_parameter_counts() {
    for spec in [ModelSpec::sd21(), ModelSpec::sd21_base()] {
        let unet = count(|vb| UNet::new(vb, &spec.unet));
        let text = count(|vb| ClipTextEncoder::new(vb, &spec.clip));
        let vae = count(|vb| Vae::new(vb, &spec.vae));
        eprintln!("{}: unet {unet}, text encoder {text}, vae {vae}", spec.id);
        assert_eq!(unet, 865_910_724, "{} UNet", spec.id);
        assert_eq!(text, 340_387_840, "{} text encoder", spec.id);
        assert_eq!(vae, 83_653_863, "{} VAE", spec.id);
    }
}

/// The full-size SD 2.1 UNet with random weights runs a forward pass at a small latent size.
#[test]
fn full_size_unet_forward_at_small_latent() {
    let device = cpu_device();
    let spec = ModelSpec::sd21();
    let unet = UNet::new(&Vb::new(RandomSource::new(0), &device), &spec.unet);
    let x = tensor((0..4 * 16 * 16).map(|i| (i as f32 * 0.1).sin()).collect(), [1, 4, 16, 16], &device);
    let ctx = tensor((0..77 * 1024).map(|i| (i as f32 * 0.01).cos()).collect(), [1, 77, 1024], &device);
    let out = unet.forward(x, &[500.0], &ctx);
    assert_eq!(out.dims(), [1, 4, 16, 16]);
    let v = block_on(read(out)).unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    assert!(v.iter().map(|x| x.abs()).sum::<f32>() > 0.0);
}
