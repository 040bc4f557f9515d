//! Pixel preprocessing as a transform with its own log-determinant (paper, section 4.1).
//!
//! Integer pixels `x` in `0..levels` are dequantised to `y = (x + u) / levels` in `[0, 1)`
//! with `u ~ U[0, 1)`, then mapped to the unbounded space the flow models by
//! `z = logit(alpha + (1 - 2 alpha) y)`. The logit's Jacobian is part of the density, so
//! bits/dim computed here are comparable with the paper's:
//!
//! `bits/dim = (-log p(y) + D ln(levels)) / (D ln 2)`,
//!
//! where `p(y)` is the continuous density on `[0, 1]^D` (prior, flow and logit Jacobians).

use burn::tensor::{activation::sigmoid, backend::Backend, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::bijector::{sum_per_example, Bijector};
use crate::error::ConfigError;

/// How integer pixels become continuous values before the logit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dequantization {
    /// Add `u ~ U[0, 1)` to every pixel: the training objective and an unbiased
    /// bits/dim estimate (an upper bound on the discrete model's bits/dim).
    Uniform,
    /// Add `0.5`: deterministic, used for exact encode/decode of integer images.
    Centre,
    /// Add `u ~ U[0, 1)` drawn on the host from a ChaCha8 stream seeded with this value:
    /// the same noise on every backend, and independent of the backend's global random
    /// state, so that several workers in one process (data-parallel training) each draw
    /// exactly their own noise.
    Seeded(u64),
    /// The noise of examples `first_example..` of a larger set whose noise is one ChaCha8
    /// stream seeded with `seed`: a set scored in chunks of any size gets the noise it
    /// would get in one batch, so scores do not depend on the batch size.
    /// `SeededAt { seed, first_example: 0 }` is `Seeded(seed)`.
    SeededAt {
        /// The seed of the whole set's stream.
        seed: u64,
        /// The index, within the set, of the batch's first example.
        first_example: u64,
    },
}

/// Settings of the preprocessing transform.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Number of grey levels of the input data: 256 for 8-bit images, 17 for the embedded
    /// digits data set.
    pub levels: u32,
    /// Model only the `n_bits` most significant bits of each pixel (2^n_bits levels);
    /// `None` keeps all `levels`.
    pub n_bits: Option<u32>,
    /// Boundary margin of the logit transform, `logit(alpha + (1 - 2 alpha) y)`; the paper
    /// uses 0.05.
    pub alpha: f64,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            levels: 256,
            n_bits: None,
            alpha: 0.05,
        }
    }
}

impl PreprocessConfig {
    /// Checks the settings and builds the transform.
    pub fn init(&self) -> Result<Preprocess, ConfigError> {
        if self.levels < 2 {
            return Err(ConfigError::invalid(
                "preprocess.levels",
                self.levels,
                "at least 2 grey levels",
            ));
        }
        if !(self.alpha >= 0.0 && self.alpha < 0.5) {
            return Err(ConfigError::invalid(
                "preprocess.alpha",
                self.alpha,
                "a number in [0, 0.5)",
            ));
        }
        let model_levels = match self.n_bits {
            None => self.levels,
            Some(bits) if (1..=16).contains(&bits) && (1u32 << bits) <= self.levels => 1 << bits,
            Some(bits) => {
                return Err(ConfigError::invalid(
                    "preprocess.n_bits",
                    bits,
                    format!(
                        "between 1 and 16, with 2^n_bits at most `levels` ({})",
                        self.levels
                    ),
                ))
            }
        };
        Ok(Preprocess {
            data_levels: self.levels,
            levels: model_levels,
            alpha: self.alpha,
        })
    }
}

/// The preprocessing transform between integer pixels and the flow's input space.
///
/// As a [`Bijector`] it maps dequantised pixels `y` in `[0, 1)` to logit space and back; its
/// log-det is that of the logit map, in nats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    data_levels: u32,
    levels: u32,
    alpha: f64,
}

impl Preprocess {
    /// Number of levels the model assigns probability to (after `n_bits` reduction).
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// The logit margin `alpha`.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Dequantises integer pixels `x` (`0..levels` of the data, shape `[batch, ...]`) to `y`
    /// in `[0, 1)`, first dropping the least significant bits when `n_bits` is set.
    pub fn dequantize<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        dequantization: Dequantization,
    ) -> Tensor<B, D> {
        let x = if self.levels == self.data_levels {
            x
        } else {
            x.mul_scalar(self.levels as f64 / self.data_levels as f64)
                .floor()
        };
        let offset = match dequantization {
            Dequantization::Uniform => x.random_like(Distribution::Uniform(0.0, 1.0)),
            Dequantization::Centre => x.zeros_like().add_scalar(0.5),
            Dequantization::Seeded(seed) => seeded_uniform(x.shape(), seed, 0, &x.device()),
            Dequantization::SeededAt {
                seed,
                first_example,
            } => {
                let per_example = x.shape().num_elements() / x.dims()[0].max(1);
                let skip = u128::from(first_example) * per_example as u128;
                seeded_uniform(x.shape(), seed, skip, &x.device())
            }
        };
        (x + offset).div_scalar(self.levels as f64)
    }

    /// Maps continuous values `y` (as produced by [`Preprocess::dequantize`] or the
    /// model's inverse) back to integer pixel levels `0..levels` (as floats).
    pub fn quantize<B: Backend, const D: usize>(&self, y: Tensor<B, D>) -> Tensor<B, D> {
        y.mul_scalar(self.levels as f64)
            .floor()
            .clamp(0.0, (self.levels - 1) as f64)
    }

    /// `D ln(levels)`: the nats that turn a density on `[0, 1]^D` into one on
    /// `[0, levels]^D`, for `dims` dimensions.
    pub fn discretisation_nats(&self, dims: usize) -> f64 {
        dims as f64 * (self.levels as f64).ln()
    }

    /// Bits/dim of integer data from the continuous log-density `log p(y)` on `[0, 1]^D`
    /// (nats, shape `[batch]`), for `dims` dimensions per example.
    pub fn bits_per_dim<B: Backend>(&self, log_density: Tensor<B, 1>, dims: usize) -> Tensor<B, 1> {
        log_density
            .neg()
            .add_scalar(self.discretisation_nats(dims))
            .div_scalar(dims as f64 * std::f64::consts::LN_2)
    }
}

impl<B: Backend, const D: usize> Bijector<B, D> for Preprocess {
    /// `y -> logit(alpha + (1 - 2 alpha) y)`; log-det `sum ln(1 - 2 alpha) - ln p - ln(1 - p)`.
    fn forward(&self, y: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, 1>) {
        let p = y.mul_scalar(1.0 - 2.0 * self.alpha).add_scalar(self.alpha);
        let log_p = p.clone().log();
        let log_1mp = p.neg().log1p();
        let z = log_p.clone() - log_1mp.clone();
        let per_dim = (log_p + log_1mp)
            .neg()
            .add_scalar((1.0 - 2.0 * self.alpha).ln());
        (z, sum_per_example(per_dim))
    }

    /// `z -> (sigmoid(z) - alpha) / (1 - 2 alpha)`.
    fn inverse(&self, z: Tensor<B, D>) -> Tensor<B, D> {
        sigmoid(z)
            .sub_scalar(self.alpha)
            .div_scalar(1.0 - 2.0 * self.alpha)
    }
}

/// `u ~ U[0, 1)` of `shape`, drawn on the host from ChaCha8 seeded with `seed`, after the
/// first `skip` values of its stream (one 32-bit word per value).
fn seeded_uniform<B: Backend, const D: usize>(
    shape: burn::tensor::Shape,
    seed: u64,
    skip: u128,
    device: &B::Device,
) -> Tensor<B, D> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_word_pos(skip);
    let values: Vec<f32> = (0..shape.num_elements())
        .map(|_| rng.random::<f32>())
        .collect();
    Tensor::from_data(burn::tensor::TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn preprocess(levels: u32, n_bits: Option<u32>) -> Preprocess {
        PreprocessConfig {
            levels,
            n_bits,
            alpha: 0.05,
        }
        .init()
        .expect("valid config")
    }

    #[test]
    fn logit_round_trip_and_log_det() {
        let p = preprocess(256, None);
        let y = uniform::<Cpu, 4>([3, 2, 4, 4], 0.0, 1.0, 1);
        assert_round_trip(&p, y, 1e-5, "logit");
        let y = uniform::<Exact, 4>([2, 2, 3, 3], 0.0, 1.0, 2);
        assert_log_det(&p, y, 1e-6, "logit");
    }

    #[test]
    fn centre_dequantisation_quantizes_back_to_the_pixels() {
        for (levels, bits) in [(256, None), (17, None), (256, Some(5))] {
            let p = preprocess(levels, bits);
            let x = uniform::<Cpu, 4>([2, 3, 5, 5], 0.0, levels as f64, 3).floor();
            let expected = match bits {
                None => x.clone(),
                Some(b) => x.clone().div_scalar(2f64.powi(8 - b as i32)).floor(),
            };
            let y = p.dequantize(x, Dequantization::Centre);
            assert_eq!(
                values(p.quantize(y)),
                values(expected),
                "{levels} levels, {bits:?} bits"
            );
        }
    }

    #[test]
    fn uniform_dequantisation_stays_inside_each_pixel_bin() {
        let p = preprocess(17, None);
        let x = uniform::<Cpu, 4>([4, 1, 8, 8], 0.0, 17.0, 4).floor();
        let y = p.dequantize(x.clone(), Dequantization::Uniform);
        let xs = values(x);
        let ys = values(y);
        assert!(xs
            .iter()
            .zip(&ys)
            .all(|(x, y)| *y >= x / 17.0 && *y < (x + 1.0) / 17.0));
        assert!(
            xs.iter()
                .zip(&ys)
                .any(|(x, y)| (y - (x + 0.5) / 17.0).abs() > 1e-3),
            "no noise added"
        );
    }

    #[test]
    fn seeded_dequantisation_is_reproducible_inside_each_bin_and_seed_dependent() {
        let p = preprocess(17, None);
        let x = uniform::<Cpu, 4>([3, 1, 5, 5], 0.0, 17.0, 5).floor();
        let a = values(p.dequantize(x.clone(), Dequantization::Seeded(7)));
        // The backend's global generator is reseeded in between: seeded noise ignores it.
        Cpu::seed(&Default::default(), 123);
        let b = values(p.dequantize(x.clone(), Dequantization::Seeded(7)));
        let c = values(p.dequantize(x.clone(), Dequantization::Seeded(8)));
        assert_eq!(a, b, "same seed, same noise");
        assert_ne!(a, c, "another seed, other noise");
        let xs = values(x);
        assert!(xs
            .iter()
            .zip(&a)
            .all(|(x, y)| *y >= x / 17.0 && *y < (x + 1.0) / 17.0));
    }

    #[test]
    fn seeded_noise_of_a_chunk_is_its_slice_of_the_whole_set() {
        let p = preprocess(256, None);
        let x = uniform::<Cpu, 4>([7, 2, 3, 3], 0.0, 256.0, 6).floor();
        let whole = values(p.dequantize(x.clone(), Dequantization::Seeded(11)));
        let per_example = 2 * 3 * 3;
        let mut chunked = Vec::new();
        for (start, len) in [(0, 3), (3, 1), (4, 3)] {
            let chunk = x.clone().narrow(0, start, len);
            let dequantization = Dequantization::SeededAt {
                seed: 11,
                first_example: start as u64,
            };
            chunked.extend(values(p.dequantize(chunk, dequantization)));
        }
        assert_eq!(whole, chunked, "chunks of 3, 1 and 3 examples");
        let shifted = values(p.dequantize(
            x.narrow(0, 1, 1),
            Dequantization::SeededAt {
                seed: 11,
                first_example: 0,
            },
        ));
        assert_ne!(
            shifted,
            whole[per_example..2 * per_example],
            "the position in the stream matters"
        );
    }

    #[test]
    fn bits_per_dim_formula() {
        // A uniform density on [0, 1]^D (log p = 0) is log2(levels) bits/dim.
        let p = preprocess(256, None);
        let bpd = p.bits_per_dim(Tensor::<Cpu, 1>::zeros([1], &Default::default()), 100);
        assert_close(&values(bpd), &[8.0], 1e-6, "uniform density");
    }

    #[test]
    fn invalid_settings_name_their_key() {
        let bad = [
            (
                PreprocessConfig {
                    levels: 1,
                    ..Default::default()
                },
                "preprocess.levels",
            ),
            (
                PreprocessConfig {
                    alpha: 0.5,
                    ..Default::default()
                },
                "preprocess.alpha",
            ),
            (
                PreprocessConfig {
                    alpha: f64::NAN,
                    ..Default::default()
                },
                "preprocess.alpha",
            ),
            (
                PreprocessConfig {
                    levels: 17,
                    n_bits: Some(5),
                    ..Default::default()
                },
                "preprocess.n_bits",
            ),
        ];
        for (config, key) in bad {
            let err = config.init().expect_err("invalid config accepted");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
