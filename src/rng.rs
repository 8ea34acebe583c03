//! A small deterministic random generator (xoshiro256++ seeded by splitmix64).
//!
//! All randomness that must be reproducible across backends (CPU, wgpu, the browser) is drawn
//! on the host with this generator and uploaded, so the same seed gives the same numbers
//! everywhere, independently of any backend's own RNG.

/// Deterministic random number generator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    s: [u64; 4],
    /// A cached second Box–Muller sample.
    spare: Option<u32>,
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)];
        Self { s, spare: None }
    }

    /// An independent generator derived from this one's seed and a stream number.
    pub fn fork(&mut self, stream: u64) -> Self {
        Self::new(self.next_u64() ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The generator state as words (for checkpoints): `[s0, s1, s2, s3, spare]` where `spare`
    /// is `1 << 32 | bits` when a Box–Muller sample is cached, else 0.
    pub fn to_words(&self) -> Vec<u64> {
        let mut w = self.s.to_vec();
        w.push(self.spare.map_or(0, |b| (1 << 32) | b as u64));
        w
    }

    /// Restores a state from [`to_words`](Self::to_words); `None` if malformed.
    pub fn from_words(w: &[u64]) -> Option<Self> {
        if w.len() != 5 || w[..4].iter().all(|&x| x == 0) || w[4] >> 33 != 0 {
            return None;
        }
        let spare = (w[4] >> 32 == 1).then_some(w[4] as u32);
        Some(Self { s: [w[0], w[1], w[2], w[3]], spare })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        // Lemire's multiply-shift; the tiny bias is irrelevant for our uses.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        if let Some(bits) = self.spare.take() {
            return f32::from_bits(bits);
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(((r * theta.sin()) as f32).to_bits());
        (r * theta.cos()) as f32
    }

    /// `n` standard normal samples.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }

    /// `n` uniform samples in [lo, hi).
    pub fn uniform_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.uniform() as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_roughly_normal() {
        let a = Rng::new(7).normal_vec(20_000);
        let b = Rng::new(7).normal_vec(20_000);
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        assert_ne!(Rng::new(8).normal_vec(4), a[..4]);
        let mut r = Rng::new(3);
        r.normal();
        let mut copy = Rng::from_words(&r.to_words()).unwrap();
        assert_eq!(copy.normal_vec(9), r.normal_vec(9));
        assert!(Rng::from_words(&[0, 0, 0, 0, 0]).is_none());
    }
}
