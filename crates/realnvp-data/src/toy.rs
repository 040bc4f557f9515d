//! Seeded 2-D toy data sets; the Gaussian mixture's exact density is exposed so that a
//! model's KL divergence to the truth can be measured.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use std::f64::consts::{PI, TAU};

/// The 2-D toy distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Toy {
    /// Two interleaved half circles with Gaussian noise (std 0.1).
    TwoMoons,
    /// Two concentric circles (radii 1 and 0.5) with Gaussian noise (std 0.05).
    Circles,
    /// Eight Gaussians (std 0.1) evenly spaced on a circle of radius 2; exact density in
    /// [`eight_gaussians_log_density`].
    EightGaussians,
    /// Uniform on the dark squares of a 4x4 checkerboard over `[-2, 2]^2`.
    Checkerboard,
    /// Two interleaved spirals with Gaussian noise.
    Spirals,
    /// Five elongated arms rotating with their distance from the centre.
    Pinwheel,
}

/// Standard deviation of each component of [`Toy::EightGaussians`].
pub const EIGHT_GAUSSIANS_STD: f64 = 0.1;
/// Radius of the circle of the components' means.
pub const EIGHT_GAUSSIANS_RADIUS: f64 = 2.0;

fn normal(rng: &mut impl Rng) -> f64 {
    // Box-Muller.
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
}

impl Toy {
    /// `n` points `[x, y]`, the same for the same seed.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<[f64; 2]> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| self.point(&mut rng)).collect()
    }

    fn point(&self, rng: &mut impl Rng) -> [f64; 2] {
        match self {
            Toy::TwoMoons => {
                let t = PI * rng.random::<f64>();
                let [x, y] = if rng.random::<bool>() {
                    [t.cos(), t.sin()]
                } else {
                    [1.0 - t.cos(), 0.5 - t.sin()]
                };
                [x - 0.5 + 0.1 * normal(rng), y - 0.25 + 0.1 * normal(rng)]
            }
            Toy::Circles => {
                let t = TAU * rng.random::<f64>();
                let r = if rng.random::<bool>() { 1.0 } else { 0.5 };
                [
                    r * t.cos() + 0.05 * normal(rng),
                    r * t.sin() + 0.05 * normal(rng),
                ]
            }
            Toy::EightGaussians => {
                let k = rng.random_range(0..8) as f64;
                let angle = TAU * k / 8.0;
                [
                    EIGHT_GAUSSIANS_RADIUS * angle.cos() + EIGHT_GAUSSIANS_STD * normal(rng),
                    EIGHT_GAUSSIANS_RADIUS * angle.sin() + EIGHT_GAUSSIANS_STD * normal(rng),
                ]
            }
            Toy::Checkerboard => loop {
                let x = rng.random_range(-2.0..2.0f64);
                let y = rng.random_range(-2.0..2.0f64);
                if ((x + 2.0).floor() as i64 + (y + 2.0).floor() as i64) % 2 == 0 {
                    break [x, y];
                }
            },
            Toy::Spirals => {
                let t = 3.0 * PI * rng.random::<f64>().sqrt();
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                let r = t / (3.0 * PI) * 2.0;
                [
                    sign * r * t.cos() + 0.05 * normal(rng),
                    sign * r * t.sin() + 0.05 * normal(rng),
                ]
            }
            Toy::Pinwheel => {
                let arm = rng.random_range(0..5) as f64;
                let (rx, ry) = (1.0 + 0.3 * normal(rng), 0.1 * normal(rng));
                let angle = TAU * arm / 5.0 + 0.25 * rx.exp();
                let (s, c) = angle.sin_cos();
                [c * rx - s * ry, s * rx + c * ry]
            }
        }
    }
}

/// Exact log-density (nats) of [`Toy::EightGaussians`] at `p`.
pub fn eight_gaussians_log_density(p: [f64; 2]) -> f64 {
    let var = EIGHT_GAUSSIANS_STD * EIGHT_GAUSSIANS_STD;
    let terms: Vec<f64> = (0..8)
        .map(|k| {
            let angle = TAU * k as f64 / 8.0;
            let dx = p[0] - EIGHT_GAUSSIANS_RADIUS * angle.cos();
            let dy = p[1] - EIGHT_GAUSSIANS_RADIUS * angle.sin();
            -(dx * dx + dy * dy) / (2.0 * var) - (TAU * var).ln() - 8f64.ln()
        })
        .collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Toy; 6] = [
        Toy::TwoMoons,
        Toy::Circles,
        Toy::EightGaussians,
        Toy::Checkerboard,
        Toy::Spirals,
        Toy::Pinwheel,
    ];

    #[test]
    fn samples_are_reproducible_and_seed_dependent() {
        for toy in ALL {
            assert_eq!(toy.sample(50, 1), toy.sample(50, 1), "{toy:?}");
            assert_ne!(toy.sample(50, 1), toy.sample(50, 2), "{toy:?}");
            assert!(toy
                .sample(500, 3)
                .iter()
                .all(|p| p[0].is_finite() && p[1].abs() < 10.0));
        }
    }

    #[test]
    fn eight_gaussians_density_integrates_to_one_and_matches_samples() {
        let step = 0.01;
        let total: f64 = (0..700 * 700)
            .map(|k| {
                let p = [
                    -3.5 + (k / 700) as f64 * step,
                    -3.5 + (k % 700) as f64 * step,
                ];
                eight_gaussians_log_density(p).exp()
            })
            .sum::<f64>()
            * step
            * step;
        assert!((total - 1.0).abs() < 1e-3, "integral {total}");
        // Samples sit where the density is high: the mean log-density of samples is the
        // negative entropy, about -(ln 8 + ln(2 pi e 0.01)) = -0.337.
        let samples = Toy::EightGaussians.sample(20_000, 4);
        let mean: f64 = samples
            .iter()
            .map(|&p| eight_gaussians_log_density(p))
            .sum::<f64>()
            / 20_000.0;
        let entropy = 8f64.ln() + (TAU * std::f64::consts::E * 0.01).ln();
        assert!(
            (mean + entropy).abs() < 0.03,
            "mean log-density {mean}, expected {}",
            -entropy
        );
    }

    #[test]
    fn checkerboard_points_lie_on_dark_squares() {
        for p in Toy::Checkerboard.sample(1000, 5) {
            assert_eq!(
                ((p[0] + 2.0).floor() as i64 + (p[1] + 2.0).floor() as i64) % 2,
                0
            );
        }
    }
}
