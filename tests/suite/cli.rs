//! The native CLI end to end on the tiny fixture model: train → .ddist → sample (PNG with
//! parameters, contact sheet, mixing, editing template), resume after an interruption equals an
//! uninterrupted run, and bad input gets clear errors.
use std::path::{Path, PathBuf};
use std::process::Command;

use dreamdist::distribution::file::DistFile;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dreamdist"))
}

fn weights() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dreamdist-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(64, 80, |x, y| image::Rgb([(x * 4) as u8, (y * 3) as u8, (i * 50) as u8]));
        img.save(dir.join(format!("ref{i}.png"))).unwrap();
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn train(images: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut c = bin();
    c.args(["train", "--model", "tiny", "--weights", weights(), "--images"]).arg(images).arg("--out").arg(out);
    c.args(["--k", "3", "--m", "2", "--samples", "2", "--steps", "4", "--checkpoint-every", "1", "--seed", "3"]);
    c.args(extra);
    run(&mut c)
}

#[test]
fn train_sample_mix_edit_and_resume() {
    let d = tmpdir("flow");
    write_images(&d.join("imgs"), 3);
    let a = d.join("a.ddist");
    let (ok, log) = train(&d.join("imgs"), &a, &[]);
    assert!(ok, "{log}");
    // The device line names the CPU backend with no empty graphics-API field after it.
    assert!(log.lines().any(|l| l.ends_with("tiny on burn flex (CPU)")), "{log}");
    assert!(!d.join("a.ddist.ckpt").exists(), "checkpoint removed after success");
    let fa = DistFile::from_bytes(&std::fs::read(&a).unwrap()).unwrap();
    assert_eq!((fa.k, fa.m, fa.hidden, fa.train.steps, fa.loss_curve.len()), (3, 2, 32, 4, 4));

    // Interrupted after 2 steps, then resumed: the same file as the uninterrupted run.
    let b = d.join("b.ddist");
    let (ok, log) = train(&d.join("imgs"), &b, &["--max-steps-this-run", "2"]);
    assert!(ok && !b.exists() && d.join("b.ddist.ckpt").exists(), "{log}");
    let (ok, log) = train(&d.join("imgs"), &b, &["--resume"]);
    assert!(ok, "{log}");
    let fb = DistFile::from_bytes(&std::fs::read(&b).unwrap()).unwrap();
    assert_eq!(fa.prompts, fb.prompts, "resumed run must equal the uninterrupted one");
    assert_eq!(fa.loss_curve, fb.loss_curve);

    // Sample: two images, a γ-sweep contact sheet, a text-edited template, PNG text chunks.
    let out = d.join("samples");
    let mut c = bin();
    c.args(["sample", "--model", "tiny", "--weights", weights(), "--dist"]).arg(&a);
    c.args([
        "--n",
        "2",
        "--steps",
        "3",
        "--size",
        "16",
        "--gamma",
        "0.5",
        "--prompt",
        "a watercolor of {} at night",
        "--sheet",
        "--out",
    ])
    .arg(&out);
    let (ok, log) = run(&mut c);
    assert!(ok, "{log}");
    for f in ["0000.png", "0001.png", "sheet.png"] {
        let bytes = std::fs::read(out.join(f)).unwrap_or_else(|_| panic!("{f} missing: {log}"));
        assert!(image::load_from_memory(&bytes).is_ok(), "{f} is a PNG");
    }
    let png = std::fs::read(out.join("0000.png")).unwrap();
    let text = String::from_utf8_lossy(&png);
    assert!(
        text.contains("tEXt") && text.contains("\"gamma\":0.5") && text.contains("a watercolor of {} at night"),
        "parameters in PNG text chunk"
    );
    let sheet = image::load_from_memory(&std::fs::read(out.join("sheet.png")).unwrap()).unwrap();
    assert_eq!((sheet.width(), sheet.height()), (2 * 16 + 3 * 4, 4 * 16 + 5 * 4));

    // Mixing two distributions (weights normalised), with a mixing strip.
    let c_dist = d.join("c.ddist");
    let (ok, log) = train(&d.join("imgs"), &c_dist, &["--lr", "0.05", "--lambda", "0.5"]);
    assert!(ok, "{log}");
    let sample = |dists: &[String], out: &Path| {
        let mut c = bin();
        c.args(["sample", "--model", "tiny", "--weights", weights()]);
        for dd in dists {
            c.arg("--dist").arg(dd);
        }
        c.args(["--n", "1", "--steps", "2", "--size", "16", "--seed", "4", "--sheet", "--out"]).arg(out);
        let (ok, log) = run(&mut c);
        assert!(ok && out.join("0000.png").exists() && out.join("sheet.png").exists(), "{log}");
        image::load_from_memory(&std::fs::read(out.join("0000.png")).unwrap()).unwrap().to_rgb8().into_raw()
    };
    let a_only = sample(&[a.display().to_string()], &d.join("a-only"));
    let c_only = sample(&[c_dist.display().to_string()], &d.join("c-only"));
    let mixed = sample(&[format!("{}:0.3", a.display()), format!("{}:0.7", c_dist.display())], &d.join("mix"));
    assert_ne!(a_only, c_only, "two distributions should give different images from the same seed");
    assert_ne!(mixed, a_only, "a 0.3/0.7 mixture differs from either part");
    // α = 1 for the first gives exactly the first distribution's image (and α = 0 the second's).
    let all_a = sample(&[format!("{}:1", a.display()), format!("{}:0", c_dist.display())], &d.join("mix-a"));
    let all_c = sample(&[format!("{}:0", a.display()), format!("{}:1", c_dist.display())], &d.join("mix-c"));
    assert_eq!(all_a, a_only, "α = 1 must equal the single distribution's image");
    assert_eq!(all_c, c_only, "α = 0 must equal the other distribution's image");
}

#[test]
fn bad_input_gets_clear_errors() {
    let d = tmpdir("errors");
    write_images(&d.join("imgs"), 2);
    std::fs::write(d.join("imgs/notes.txt"), "not an image").unwrap();
    let (ok, log) = train(&d.join("imgs"), &d.join("x.ddist"), &[]);
    assert!(!ok && log.contains("notes.txt") && log.contains("not an image"), "{log}");

    let (ok, log) = train(&d.join("missing"), &d.join("x.ddist"), &[]);
    assert!(!ok && log.contains("cannot read image folder"), "{log}");

    std::fs::write(d.join("bad.ddist"), b"garbage, not a distribution").unwrap();
    let mut c = bin();
    c.args(["sample", "--model", "tiny", "--weights", weights(), "--dist"])
        .arg(d.join("bad.ddist"))
        .arg("--out")
        .arg(d.join("o"));
    let (ok, log) = run(&mut c);
    assert!(!ok && log.contains("not a valid distribution file"), "{log}");

    let (ok, log) = run(bin()
        .args(["train", "--model", "tiny", "--weights", "/nonexistent", "--images"])
        .arg(d.join("imgs"))
        .arg("--out")
        .arg(d.join("y.ddist")));
    assert!(!ok && log.contains("/nonexistent"), "{log}");

    let mut c = bin();
    c.args(["sample", "--model", "tiny", "--weights", weights(), "--dist", "x.ddist", "--scheduler", "nope"]);
    let (ok, log) = run(&mut c);
    assert!(!ok && log.contains("unknown scheduler"), "{log}");

    // An image size the architecture cannot take is refused up front, with the rule and a fix.
    let (ok, log) = train(&d.join("imgs"), &d.join("z.ddist"), &["--resolution", "18"]);
    assert!(!ok && log.contains("multiple of 4") && log.contains("try 16"), "{log}");
    let sd21 = dreamdist::model::ModelSpec::sd21();
    let e = sd21.check_size(520).unwrap_err().to_string();
    assert!(e.contains("multiple of 64") && e.contains("try 512"), "{e}");
    sd21.check_size(512).unwrap();
}
