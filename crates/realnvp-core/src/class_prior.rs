//! The class-conditional prior: a diagonal Gaussian over the flattened latents whose mean
//! and log standard deviation are learned per class and per latent dimension, so that
//! `log p(x | k) = log N(f(x); mu_k, diag(sigma_k^2)) + log |det df/dx|`.
//!
//! Classes are equally likely a priori (`p(k) = 1 / K`), so Bayes' rule gives
//! `log p(x) = logsumexp_k log p(x | k) - ln K` and the most likely class is the argmax of
//! `log p(x | k)`.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Distribution, Int, Tensor};

/// `0.5 ln(2 pi)`.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// Per-class Gaussian prior on `dims` latent dimensions. Starts at `N(0, I)` for every
/// class, i.e. equal to the unconditional model.
#[derive(Module, Debug)]
pub struct ClassPrior<B: Backend> {
    /// Means `[classes, dims]`.
    pub mean: Param<Tensor<B, 2>>,
    /// Log standard deviations `[classes, dims]`.
    pub log_std: Param<Tensor<B, 2>>,
}

impl<B: Backend> ClassPrior<B> {
    /// A prior over `classes` classes and `dims` latent dimensions, every class `N(0, I)`.
    pub fn new(classes: usize, dims: usize, device: &B::Device) -> Self {
        Self {
            mean: Param::from_tensor(Tensor::zeros([classes, dims], device)),
            log_std: Param::from_tensor(Tensor::zeros([classes, dims], device)),
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.mean.dims()[0]
    }

    /// Latent dimensions per example.
    pub fn dims(&self) -> usize {
        self.mean.dims()[1]
    }

    /// `log N(z_i; mu_{k_i}, sigma_{k_i}^2)` for flattened latents `z` `[batch, dims]` and
    /// labels `[batch]`; nats, `[batch]`.
    pub fn log_prob_given(&self, z: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let mean = self.mean.val().select(0, labels.clone());
        let log_std = self.log_std.val().select(0, labels);
        gaussian_log_prob(z, mean, log_std).squeeze_dim(1)
    }

    /// `log N(z_i; mu_k, sigma_k^2)` for every class `k`: `[batch, dims] -> [batch, classes]`,
    /// nats.
    pub fn log_prob_per_class(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let [batch, dims] = z.dims();
        let classes = self.classes();
        let z = z.reshape([batch, 1, dims]);
        let mean = self.mean.val().reshape([1, classes, dims]);
        let log_std = self.log_std.val().reshape([1, classes, dims]);
        gaussian_log_prob(z, mean, log_std).squeeze_dim(2)
    }

    /// Draws flattened latents `[labels.len(), dims]`: `mu_k + temperature * sigma_k * eps`.
    pub fn sample(&self, labels: Tensor<B, 1, Int>, temperature: f64) -> Tensor<B, 2> {
        let shape = [labels.dims()[0], self.dims()];
        let noise = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &labels.device());
        self.from_noise(labels, noise, temperature)
    }

    /// `mu_k + temperature * sigma_k * noise` for unit-Gaussian `noise` `[n, dims]` and
    /// labels `[n]`: the same noise at several temperatures gives one sample, sharpened.
    pub fn from_noise(
        &self,
        labels: Tensor<B, 1, Int>,
        noise: Tensor<B, 2>,
        temperature: f64,
    ) -> Tensor<B, 2> {
        let mean = self.mean.val().select(0, labels.clone());
        if temperature == 0.0 {
            return mean;
        }
        let std = self.log_std.val().select(0, labels).exp();
        mean + std * noise.mul_scalar(temperature)
    }
}

/// Diagonal Gaussian log-density summed over the last dimension (kept, as size 1), nats;
/// `mean` and `log_std` broadcast against `z`.
fn gaussian_log_prob<B: Backend, const D: usize>(
    z: Tensor<B, D>,
    mean: Tensor<B, D>,
    log_std: Tensor<B, D>,
) -> Tensor<B, D> {
    let standardised = (z - mean) * log_std.clone().neg().exp();
    (standardised.powi_scalar(2).mul_scalar(-0.5) - log_std)
        .sub_scalar(HALF_LN_2PI)
        .sum_dim(D - 1)
}
