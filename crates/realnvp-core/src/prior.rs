//! The isotropic unit Gaussian prior on the latent variables.

use burn::tensor::{backend::Backend, Distribution, Tensor};

use crate::bijector::sum_per_example;

/// `0.5 ln(2 pi)`.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// Log-density of `z` under `N(0, I)`, summed per example: `[batch, ...] -> [batch]`, nats.
pub fn standard_normal_log_prob<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, 1> {
    sum_per_example(z.powi_scalar(2).mul_scalar(-0.5).sub_scalar(HALF_LN_2PI))
}

/// Draws from `N(0, temperature^2 I)` with the given shape.
pub fn standard_normal_sample<B: Backend, const D: usize>(
    shape: [usize; D],
    temperature: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    if temperature == 0.0 {
        return Tensor::zeros(shape, device);
    }
    Tensor::random(shape, Distribution::Normal(0.0, temperature), device)
}
