//! The one trait every layer of the flow implements, and its composition.

use burn::tensor::{backend::Backend, Tensor};

/// An invertible transform with a tractable log-determinant.
///
/// `forward` maps data towards the latent space and returns, per example, the log of the
/// absolute Jacobian determinant `log|det dy/dx|` in nats (shape `[batch]`); `inverse` maps
/// back. For every implementor `inverse(forward(x).0) == x` up to floating-point error.
pub trait Bijector<B: Backend, const D: usize> {
    /// `x -> (y, log|det dy/dx|)`; `y` has the shape of `x`, the log-det has shape `[batch]`.
    fn forward(&self, x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, 1>);

    /// `y -> x`, the exact inverse of [`Bijector::forward`].
    fn inverse(&self, y: Tensor<B, D>) -> Tensor<B, D>;
}

/// Applies `layers` in order, summing their log-determinants (nats, shape `[batch]`).
pub fn forward_chain<B: Backend, const D: usize, L: Bijector<B, D>>(
    layers: &[L],
    x: Tensor<B, D>,
) -> (Tensor<B, D>, Tensor<B, 1>) {
    let mut log_det = Tensor::zeros([x.dims()[0]], &x.device());
    let mut x = x;
    for layer in layers {
        let (y, layer_log_det) = layer.forward(x);
        x = y;
        log_det = log_det + layer_log_det;
    }
    (x, log_det)
}

/// Inverts [`forward_chain`]: applies the inverses of `layers` in reverse order.
pub fn inverse_chain<B: Backend, const D: usize, L: Bijector<B, D>>(
    layers: &[L],
    y: Tensor<B, D>,
) -> Tensor<B, D> {
    layers.iter().rev().fold(y, |y, layer| layer.inverse(y))
}

/// Sums every dimension but the batch one: `[batch, ...] -> [batch]`.
pub(crate) fn sum_per_example<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    let batch = x.dims()[0];
    x.reshape([batch as i32, -1]).sum_dim(1).reshape([batch])
}
