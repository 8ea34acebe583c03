//! Noise schedule and samplers against diffusers (`tests/fixtures/schedulers.safetensors`):
//! the SD 2.1 schedule, add_noise / velocity, and full 7- and 10-step loops of DDIM, Euler,
//! Euler ancestral (replaying diffusers' noise) and DPM-Solver++ 2M, for ε and v prediction.
use std::collections::HashMap;

use dreamdist::backend::{block_on, cpu_device, read, tensor};
use dreamdist::model::Prediction;
use dreamdist::schedule::{NoiseSchedule, Sampler, SamplerKind};
use safetensors::SafeTensors;

struct Fixture(HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Fixture {
    fn load() -> Self {
        let bytes =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut map = HashMap::new();
        for (name, v) in st.tensors() {
            let vals: Vec<f32> = match v.dtype() {
                safetensors::Dtype::F32 => {
                    v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::F64 => {
                    v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
                }
                safetensors::Dtype::I64 => {
                    v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
                }
                d => panic!("{name}: dtype {d:?}"),
            };
            map.insert(name, (v.shape().to_vec(), vals));
        }
        Self(map)
    }
    fn get(&self, k: &str) -> &(Vec<usize>, Vec<f32>) {
        self.0.get(k).unwrap_or_else(|| panic!("fixture has no {k}"))
    }
    fn vals(&self, k: &str) -> &[f32] {
        &self.get(k).1
    }
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn schedule_matches_diffusers() {
    let f = Fixture::load();
    let s = NoiseSchedule::sd21();
    let ours: Vec<f32> = s.alphas_cumprod.iter().map(|&a| a as f32).collect();
    let err = max_rel(&ours, f.vals("alphas_cumprod"));
    assert!(err < 1e-5, "alphas_cumprod rel err {err}");

    let d = cpu_device();
    let (shape, x0) = f.get("train.x0");
    let shape: [usize; 4] = shape.clone().try_into().unwrap();
    let noise = f.vals("train.noise").to_vec();
    let ts: Vec<usize> = f.vals("train.timesteps").iter().map(|&t| t as usize).collect();
    let noisy =
        block_on(read(s.add_noise(tensor(x0.clone(), shape, &d), tensor(noise.clone(), shape, &d), &ts))).unwrap();
    let vel = block_on(read(s.velocity(tensor(x0.clone(), shape, &d), tensor(noise, shape, &d), &ts))).unwrap();
    let (e1, e2) = (max_rel(&noisy, f.vals("train.noisy")), max_rel(&vel, f.vals("train.velocity")));
    eprintln!("add_noise rel err {e1:.2e}, velocity rel err {e2:.2e}");
    assert!(e1 < 1e-5 && e2 < 1e-5);
}

#[test]
fn samplers_match_diffusers() {
    let f = Fixture::load();
    let d = cpu_device();
    let mut runs = 0;
    for (name, kind) in [
        ("ddim", SamplerKind::Ddim),
        ("euler", SamplerKind::Euler),
        ("euler_a", SamplerKind::EulerAncestral),
        ("dpmpp2m", SamplerKind::DpmSolverPp2m),
    ] {
        for (pname, pred) in [("epsilon", Prediction::Epsilon), ("v_prediction", Prediction::VPrediction)] {
            for steps in [7usize, 10] {
                let key = |s: &str| format!("{name}.{pname}.{steps}.{s}");
                let mut sampler = Sampler::new(kind, pred, NoiseSchedule::sd21(), steps);
                let want_ts = f.vals(&key("timesteps"));
                assert!(
                    max_rel(sampler.timesteps(), want_ts) < 1e-6,
                    "{}: timesteps {:?} vs {want_ts:?}",
                    key(""),
                    sampler.timesteps()
                );
                let sigma0 = f.vals(&key("init_noise_sigma"))[0];
                assert!(
                    (sampler.init_noise_sigma() - sigma0).abs() <= 1e-5 * sigma0,
                    "{}: init sigma {} vs {sigma0}",
                    key(""),
                    sampler.init_noise_sigma()
                );
                let (xs, x_t) = f.get(&key("x_T"));
                let shape: [usize; 4] = xs.clone().try_into().unwrap();
                let n: usize = shape.iter().product();
                let mut x = tensor(x_t.clone(), shape, &d);
                let mut worst = 0f32;
                for i in 0..steps {
                    let input = sampler.scale_model_input(x.clone(), i);
                    let want_in = &f.vals(&key("model_input"))[i * n..(i + 1) * n];
                    worst = worst.max(max_rel(&block_on(read(input)).unwrap(), want_in));
                    let out = tensor(f.vals(&key("model_output"))[i * n..(i + 1) * n].to_vec(), shape, &d);
                    let noise = sampler
                        .needs_noise()
                        .then(|| tensor(f.vals(&key("step_noise"))[i * n..(i + 1) * n].to_vec(), shape, &d));
                    x = sampler.step(out, i, x, noise);
                    let got = block_on(read(x.clone())).unwrap();
                    worst = worst.max(max_rel(&got, &f.vals(&key("prev_sample"))[i * n..(i + 1) * n]));
                }
                eprintln!("{:<26} max rel err over the loop {worst:.2e}", key(""));
                assert!(worst < 1e-4, "{}: rel err {worst}", key(""));
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 16);
}
