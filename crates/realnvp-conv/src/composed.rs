//! The plain Burn compositions that the fused kernels replace: the traits' default bodies,
//! and what the kernels are tested against.

use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `[C]` as `[1, C, 1, 1]`, to broadcast over batch and pixels.
fn per_channel<B: Backend>(v: Tensor<B, 1>) -> Tensor<B, 4> {
    let c = v.dims()[0];
    v.reshape([1, c, 1, 1])
}

/// Per-channel sums over batch and pixels: `[N, C, H, W] -> [C]`.
fn channel_sums<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 1> {
    let c = x.dims()[1];
    x.sum_dim(0).sum_dim(2).sum_dim(3).reshape([c])
}

/// Examples times pixels: the count behind each channel's statistics.
fn per_channel_count(dims: [usize; 4]) -> f64 {
    (dims[0] * dims[2] * dims[3]) as f64
}

/// `max(0, x * scale + shift)` per channel.
pub fn affine_relu<B: Backend>(
    x: Tensor<B, 4>,
    scale: Tensor<B, 1>,
    shift: Tensor<B, 1>,
) -> Tensor<B, 4> {
    relu(x * per_channel(scale) + per_channel(shift))
}

/// Batch norm with the batch's statistics, then ReLU: `(y, mean, var)` with `y =
/// max(0, gamma * (x - mean) / sqrt(var + epsilon) + beta)` and the biased variance.
pub fn batch_norm_relu<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let count = per_channel_count(x.dims());
    let mean = channel_sums(x.clone()).div_scalar(count);
    let centred = x - per_channel(mean.clone());
    let var = channel_sums(centred.clone().powi_scalar(2)).div_scalar(count);
    let scale = gamma / var.clone().add_scalar(epsilon).sqrt();
    let y = relu(centred * per_channel(scale) + per_channel(beta));
    (y, mean, var)
}

/// The gradients `(d/dx, d/dgamma, d/dbeta)` of `sum(output_grad * y)` for `y` of
/// [`batch_norm_relu`], from its inputs and the statistics it returned. With `g` the
/// output gradient where the ReLU passes, `x^ = (x - mean) / sigma` and `M` examples times
/// pixels: `dbeta = sum g`, `dgamma = sum g x^`, `dx = gamma / sigma (g - dbeta / M -
/// x^ dgamma / M)`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_relu_backward<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    var: Tensor<B, 1>,
    epsilon: f64,
    output_grad: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let count = per_channel_count(x.dims());
    let inv_sigma = var.add_scalar(epsilon).sqrt().recip();
    let normalised = (x - per_channel(mean)) * per_channel(inv_sigma.clone());
    let pre_activation = normalised.clone() * per_channel(gamma.clone()) + per_channel(beta);
    let passed = output_grad * pre_activation.greater_elem(0.0).float();
    let beta_grad = channel_sums(passed.clone());
    let gamma_grad = channel_sums(passed.clone() * normalised.clone());
    let x_grad = (passed
        - per_channel(beta_grad.clone().div_scalar(count))
        - normalised * per_channel(gamma_grad.clone().div_scalar(count)))
        * per_channel(gamma * inv_sigma);
    (x_grad, gamma_grad, beta_grad)
}

/// The length of each output channel's kernel, `||direction[o]||` over `[in, kh, kw]`:
/// `[out]`.
pub fn kernel_norms<B: Backend>(direction: Tensor<B, 4>) -> Tensor<B, 1> {
    let out = direction.dims()[0];
    direction
        .powi_scalar(2)
        .reshape([out as i32, -1])
        .sum_dim(1)
        .sqrt()
        .reshape([out])
}

/// The weight-normalised kernel `w[o] = length[o] * direction[o] / ||direction[o]||`
/// (Salimans and Kingma, 2016), shaped like `direction` (`[out, in, kh, kw]`).
pub fn weight_norm<B: Backend>(direction: Tensor<B, 4>, length: Tensor<B, 1>) -> Tensor<B, 4> {
    let out = direction.dims()[0];
    let scale = length / kernel_norms(direction.clone());
    direction * scale.reshape([out, 1, 1, 1])
}

/// The gradients `(d/ddirection, d/dlength)` of `sum(output_grad * w)` for `w` of
/// [`weight_norm`]. Per output channel, with `n = ||v||` and `s = sum(output_grad * v)`:
/// `dlength = s / n` and `ddirection = length / n * (output_grad - v * s / n^2)`.
pub fn weight_norm_backward<B: Backend>(
    direction: Tensor<B, 4>,
    length: Tensor<B, 1>,
    output_grad: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 1>) {
    let out = direction.dims()[0];
    let norms = kernel_norms(direction.clone());
    let dots = (output_grad.clone() * direction.clone())
        .reshape([out as i32, -1])
        .sum_dim(1)
        .reshape([out]);
    let length_grad = dots.clone() / norms.clone();
    let projection = (dots / norms.clone().powi_scalar(2)).reshape([out, 1, 1, 1]);
    let coefficient = (length / norms).reshape([out, 1, 1, 1]);
    let direction_grad = (output_grad - direction * projection) * coefficient;
    (direction_grad, length_grad)
}
