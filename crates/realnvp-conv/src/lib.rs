//! The convolutions that Real NVP's coupling networks are made of (3x3 stride-1
//! same-padding, and the 1x1 projections of their skip connections), as a Burn backend
//! extension.
//!
//! [`ConvBackend`] has a forward and a backward operation per window size. Their default
//! bodies are Burn's own `conv2d` and its backward, so any backend can implement the trait
//! with an empty `impl` block; the Flex CPU backend (feature `flex`) overrides them with
//! im2col + GEMM kernels (a plain GEMM for 1x1) that run the backward pass as two more
//! GEMMs instead of Burn's transposed convolution, and with Winograd's F(2x2, 3x3) where
//! there are at least 8 channels in and out and 100 pixels per image.
//! [`Autodiff`](burn_autodiff::Autodiff) over a `ConvBackend` is a `ConvBackend` whose
//! backward step calls the inner backend's [`ConvBackend::conv3x3_backward`] (or
//! [`ConvBackend::conv1x1_backward`]), so training uses the fast kernels too. Model code
//! calls [`conv3x3`] and [`conv1x1`] and stays generic.

mod autodiff;
mod backends;
pub mod composed;
#[cfg(feature = "flex")]
pub mod flex;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorPrimitive};

/// The options of a 3x3 convolution with stride 1 and padding 1 (output size = input size).
pub fn same_3x3() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

/// The options of a 1x1 convolution with stride 1 and no padding.
pub fn pointwise() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [0, 0], [1, 1], 1)
}

/// A backend with 3x3 same-padding and 1x1 convolutions, forward and backward, and the
/// other kernels of the s/t networks ([`NormReluBackend`]).
///
/// Shapes: input `x` is `[batch, in, height, width]`, `weight` is `[out, in, 3, 3]` (or
/// `[out, in, 1, 1]`), `bias` is `[out]`, the output and its gradient are
/// `[batch, out, height, width]`.
pub trait ConvBackend: NormReluBackend {
    /// The convolution `y[n, o] = bias[o] + sum_c weight[o, c] * x[n, c]` (cross-correlation,
    /// zero padding of one pixel), `[batch, out, height, width]`.
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, bias, same_3x3())
    }

    /// The gradients `(d/dx, d/dweight)` of `sum(output_grad * conv3x3(x, weight))`, shaped
    /// like `x` and `weight`. The bias gradient is the sum of `output_grad` over batch and
    /// pixels and is not computed here.
    fn conv3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        burn_conv_backward::<Self>(x, weight, output_grad, same_3x3())
    }

    /// The 1x1 convolution, a linear map of the channels at every pixel:
    /// `y[n, o, p] = bias[o] + sum_c weight[o, c] * x[n, c, p]`, `[batch, out, height, width]`.
    fn conv1x1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, bias, pointwise())
    }

    /// The gradients `(d/dx, d/dweight)` of `sum(output_grad * conv1x1(x, weight))`, shaped
    /// like `x` and `weight` (the bias gradient is not computed here).
    fn conv1x1_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        burn_conv_backward::<Self>(x, weight, output_grad, pointwise())
    }

    /// The weight-normalised kernel `w[o] = length[o] * direction[o] / ||direction[o]||`,
    /// the norm over each output channel's `[in, kh, kw]`: shaped like `direction`
    /// (`[out, in, kh, kw]`), `length` is `[out]`. One operation where the composition
    /// ([`composed::weight_norm`]) is eight, each a node of the autodiff graph.
    fn weight_norm(direction: FloatTensor<Self>, length: FloatTensor<Self>) -> FloatTensor<Self> {
        on_primitives::weight_norm::<Self>(direction, length)
    }

    /// The gradients `(d/ddirection, d/dlength)` of `sum(output_grad * weight_norm(direction,
    /// length))`, shaped like `direction` and `length`.
    fn weight_norm_backward(
        direction: FloatTensor<Self>,
        length: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        on_primitives::weight_norm_backward::<Self>(direction, length, output_grad)
    }
}

/// `(d/dx, d/dweight)` of Burn's own `conv2d` with `options`: the default backward bodies,
/// and what a backend's own kernel falls back on (Flex for dtypes other than `f32`).
pub(crate) fn burn_conv_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let x_grad = B::conv2d_x_backward(
        x.clone(),
        weight.clone(),
        output_grad.clone(),
        options.clone(),
    );
    let weight_grad = B::conv2d_weight_backward(x, weight, output_grad, options);
    (x_grad, weight_grad)
}

/// A backend with the s/t networks' normalisation followed by ReLU, as fused kernels: batch
/// norm with the batch's statistics in training (forward and backward), and in evaluation
/// the per-channel affine map the running averages fold into.
///
/// Shapes: `x` and the output are `[batch, channels, height, width]`; `scale`, `shift`,
/// `gamma`, `beta` and the statistics are `[channels]`. The default bodies are the plain
/// Burn compositions of [`composed`].
pub trait NormReluBackend: Backend {
    /// Whether `batch_norm_relu` and its backward are this backend's own kernels. When they
    /// are not, autodiff differentiates the composition itself, as it always did.
    const FUSED_BATCH_NORM: bool = false;

    /// `max(0, x[n, c] * scale[c] + shift[c])`.
    fn channel_affine_relu(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        on_primitives::affine_relu::<Self>(x, scale, shift)
    }

    /// Batch norm with the batch's statistics, then ReLU: `(y, mean, var)`, with `y =
    /// max(0, gamma * (x - mean) / sqrt(var + epsilon) + beta)` and the biased variance.
    fn batch_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        on_primitives::batch_norm_relu::<Self>(x, gamma, beta, epsilon)
    }

    /// `(d/dx, d/dgamma, d/dbeta)` of `sum(output_grad * y)` for `y` of `batch_norm_relu`,
    /// from its inputs and the statistics it returned.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_relu_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        on_primitives::batch_norm_relu_backward::<Self>(
            x,
            gamma,
            beta,
            mean,
            var,
            epsilon,
            output_grad,
        )
    }
}

/// A float primitive as a tensor of rank `D`.
fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The compositions of [`composed`] on float primitives: the traits' default bodies, and
/// what a backend's override falls back on (Flex for other dtypes, autodiff over a
/// backend without fused kernels).
pub(crate) mod on_primitives {
    use super::{composed, float, Backend, FloatTensor};

    type Three<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn three<B: Backend, const D: usize>(
        (a, b, c): (
            burn::tensor::Tensor<B, D>,
            burn::tensor::Tensor<B, 1>,
            burn::tensor::Tensor<B, 1>,
        ),
    ) -> Three<B> {
        (
            a.into_primitive().tensor(),
            b.into_primitive().tensor(),
            c.into_primitive().tensor(),
        )
    }

    /// [`composed::affine_relu`].
    pub fn affine_relu<B: Backend>(
        x: FloatTensor<B>,
        scale: FloatTensor<B>,
        shift: FloatTensor<B>,
    ) -> FloatTensor<B> {
        composed::affine_relu::<B>(float(x), float(scale), float(shift))
            .into_primitive()
            .tensor()
    }

    /// [`composed::weight_norm`].
    pub fn weight_norm<B: Backend>(
        direction: FloatTensor<B>,
        length: FloatTensor<B>,
    ) -> FloatTensor<B> {
        composed::weight_norm::<B>(float(direction), float(length))
            .into_primitive()
            .tensor()
    }

    /// [`composed::weight_norm_backward`].
    pub fn weight_norm_backward<B: Backend>(
        direction: FloatTensor<B>,
        length: FloatTensor<B>,
        output_grad: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let (direction_grad, length_grad) = composed::weight_norm_backward::<B>(
            float(direction),
            float(length),
            float(output_grad),
        );
        (
            direction_grad.into_primitive().tensor(),
            length_grad.into_primitive().tensor(),
        )
    }

    /// [`composed::batch_norm_relu`].
    pub fn batch_norm_relu<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: FloatTensor<B>,
        epsilon: f64,
    ) -> Three<B> {
        three(composed::batch_norm_relu::<B>(
            float(x),
            float(gamma),
            float(beta),
            epsilon,
        ))
    }

    /// [`composed::batch_norm_relu_backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_relu_backward<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: FloatTensor<B>,
        mean: FloatTensor<B>,
        var: FloatTensor<B>,
        epsilon: f64,
        output_grad: FloatTensor<B>,
    ) -> Three<B> {
        three(composed::batch_norm_relu_backward::<B>(
            float(x),
            float(gamma),
            float(beta),
            float(mean),
            float(var),
            epsilon,
            float(output_grad),
        ))
    }
}

/// Batch norm with the batch's statistics followed by ReLU, on the backend's own kernel:
/// `(y, mean, var)` for `x` `[batch, channels, h, w]` and `gamma`, `beta` `[channels]`;
/// `mean` and the biased `var` (`[channels]`) are detached, for running averages.
///
/// # Panics
/// If `gamma` or `beta` is not `[channels]`.
pub fn batch_norm_relu<B: NormReluBackend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let channels = x.dims()[1];
    assert!(
        gamma.dims() == [channels] && beta.dims() == [channels],
        "batch_norm_relu: gamma and beta must be [{channels}], got {:?} and {:?}",
        gamma.dims(),
        beta.dims()
    );
    let (y, mean, var) = B::batch_norm_relu(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
        epsilon,
    );
    (
        float(y),
        float::<B, 1>(mean).detach(),
        float::<B, 1>(var).detach(),
    )
}

/// `max(0, x * scale + shift)` with `scale` and `shift` `[channels]` applied per channel of
/// `x` (`[batch, channels, height, width]`), on the backend's own kernel.
///
/// # Panics
/// If `scale` or `shift` is not `[channels]`.
pub fn channel_affine_relu<B: NormReluBackend>(
    x: Tensor<B, 4>,
    scale: Tensor<B, 1>,
    shift: Tensor<B, 1>,
) -> Tensor<B, 4> {
    let channels = x.dims()[1];
    assert!(
        scale.dims() == [channels] && shift.dims() == [channels],
        "channel_affine_relu: scale and shift must be [{channels}], got {:?} and {:?}",
        scale.dims(),
        shift.dims()
    );
    let output = B::channel_affine_relu(
        x.into_primitive().tensor(),
        scale.into_primitive().tensor(),
        shift.into_primitive().tensor(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// The weight-normalised kernel `length[o] * direction[o] / ||direction[o]||` of a
/// `direction` `[out, in, kh, kw]` and a `length` `[out]`, the norm over each output
/// channel's `[in, kh, kw]`, as one operation of the backend ([`ConvBackend::weight_norm`]).
///
/// # Panics
/// If `length` is not `[out]`.
pub fn weight_norm<B: ConvBackend>(direction: Tensor<B, 4>, length: Tensor<B, 1>) -> Tensor<B, 4> {
    let out = direction.dims()[0];
    assert!(
        length.dims() == [out],
        "weight_norm: length must be [{out}], got {:?}",
        length.dims()
    );
    float(B::weight_norm(
        direction.into_primitive().tensor(),
        length.into_primitive().tensor(),
    ))
}

/// An autodiff backend whose inner backend has the convolution too: what training needs
/// (the model runs on the autodiff backend, evaluation on its inner backend).
pub trait AutodiffConvBackend: AutodiffBackend<InnerBackend: ConvBackend> + ConvBackend {}

impl<B> AutodiffConvBackend for B
where
    B: AutodiffBackend + ConvBackend,
    B::InnerBackend: ConvBackend,
{
}

/// 3x3 same-padding convolution of `x` (`[batch, in, h, w]`) with `weight` (`[out, in, 3, 3]`)
/// and an optional `bias` (`[out]`): `[batch, out, h, w]`, the same values as
/// `burn::tensor::module::conv2d` with stride 1 and padding 1, on the backend's own kernel.
///
/// # Panics
/// If `weight` is not `[out, in, 3, 3]` with `in` the channels of `x`, or `bias` is not `[out]`.
pub fn conv3x3<B: ConvBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    check_shapes("conv3x3", 3, &x, &weight, bias.as_ref());
    let output = B::conv3x3(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// 1x1 convolution of `x` (`[batch, in, h, w]`) with `weight` (`[out, in, 1, 1]`) and an
/// optional `bias` (`[out]`): `[batch, out, h, w]`, the same values as
/// `burn::tensor::module::conv2d` with stride 1 and no padding, on the backend's own kernel.
///
/// # Panics
/// If `weight` is not `[out, in, 1, 1]` with `in` the channels of `x`, or `bias` is not `[out]`.
pub fn conv1x1<B: ConvBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    check_shapes("conv1x1", 1, &x, &weight, bias.as_ref());
    let output = B::conv1x1(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// Panics with a message naming `op` unless `weight` is `[out, in, window, window]` with
/// `in` the channels of `x` and `bias` (if any) is `[out]`.
fn check_shapes<B: Backend>(
    op: &str,
    window: usize,
    x: &Tensor<B, 4>,
    weight: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
) {
    let [_, channels, _, _] = x.dims();
    let [out, channels_w, kh, kw] = weight.dims();
    assert!(
        channels_w == channels && kh == window && kw == window,
        "{op}: weight must be [out, {channels}, {window}, {window}], got {:?}",
        weight.dims()
    );
    if let Some(bias) = bias {
        assert_eq!(
            bias.dims(),
            [out],
            "{op}: bias must be [{out}], got {:?}",
            bias.dims()
        );
    }
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::{Distribution, ElementConversion};

    /// Checks `conv3x3` on `B` against Burn's `conv2d` on the same backend: values and both
    /// gradients (through `Autodiff<B>`), within 1e-4 relative to each tensor's scale.
    pub fn matches_burn_conv<B: ConvBackend>(shape: [usize; 4], out: usize, bias: bool) {
        matches_burn_conv_window::<B>(3, shape, out, bias);
    }

    /// [`matches_burn_conv`] for `conv1x1`.
    pub fn matches_burn_conv_1x1<B: ConvBackend>(shape: [usize; 4], out: usize, bias: bool) {
        matches_burn_conv_window::<B>(1, shape, out, bias);
    }

    fn matches_burn_conv_window<B: ConvBackend>(
        window: usize,
        shape: [usize; 4],
        out: usize,
        bias: bool,
    ) {
        use burn::tensor::module::conv2d;
        use burn_autodiff::Autodiff;
        type A<B> = Autodiff<B>;
        let device = Default::default();
        let [n, c, h, w] = shape;
        let x = Tensor::<A<B>, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let weight = Tensor::<A<B>, 4>::random(
            [out, c, window, window],
            Distribution::Normal(0.0, 0.3),
            &device,
        )
        .require_grad();
        let b = bias.then(|| {
            Tensor::<A<B>, 1>::random([out], Distribution::Normal(0.0, 1.0), &device).require_grad()
        });
        // A fixed, non-constant upstream gradient.
        let probe =
            Tensor::<A<B>, 4>::random([n, out, h, w], Distribution::Normal(0.0, 1.0), &device);

        let (ours, options) = match window {
            3 => (conv3x3(x.clone(), weight.clone(), b.clone()), same_3x3()),
            _ => (conv1x1(x.clone(), weight.clone(), b.clone()), pointwise()),
        };
        let theirs = conv2d(x.clone(), weight.clone(), b.clone(), options);
        assert_close(ours.clone().inner(), theirs.clone().inner(), "output");

        let grads_ours = (ours * probe.clone()).sum().backward();
        let grads_theirs = (theirs * probe).sum().backward();
        assert_close(
            x.grad(&grads_ours).unwrap(),
            x.grad(&grads_theirs).unwrap(),
            "input gradient",
        );
        assert_close(
            weight.grad(&grads_ours).unwrap(),
            weight.grad(&grads_theirs).unwrap(),
            "weight gradient",
        );
        if let Some(b) = b {
            assert_close(
                b.grad(&grads_ours).unwrap(),
                b.grad(&grads_theirs).unwrap(),
                "bias gradient",
            );
        }
    }

    /// Checks `batch_norm_relu` on `Autodiff<B>` (the backend's kernels, forward and
    /// backward) against autodiff through [`composed::batch_norm_relu`]: the output, the
    /// statistics and the gradients of `x`, `gamma` and `beta`. `view` turns the random
    /// `shape` tensor into the input (e.g. a strided view).
    pub fn matches_composed_batch_norm<B: NormReluBackend>(
        view: impl Fn(Tensor<burn_autodiff::Autodiff<B>, 4>) -> Tensor<burn_autodiff::Autodiff<B>, 4>,
        shape: [usize; 4],
    ) {
        type A<B> = burn_autodiff::Autodiff<B>;
        let device = Default::default();
        let x = view(Tensor::<A<B>, 4>::random(
            shape,
            Distribution::Normal(0.5, 2.0),
            &device,
        ))
        .require_grad();
        let c = x.dims()[1];
        let gamma =
            Tensor::<A<B>, 1>::random([c], Distribution::Normal(1.0, 0.5), &device).require_grad();
        let beta =
            Tensor::<A<B>, 1>::random([c], Distribution::Normal(0.0, 0.5), &device).require_grad();
        let probe = Tensor::<A<B>, 4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);

        let (ours, mean, var) = batch_norm_relu(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        let (theirs, their_mean, their_var) =
            composed::batch_norm_relu(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        assert_close(ours.clone().inner(), theirs.clone().inner(), "output");
        assert_close(mean.inner(), their_mean.inner(), "mean");
        assert_close(var.inner(), their_var.inner(), "variance");
        let clipped = ours.clone().inner().lower_equal_elem(0.0).int().sum();
        assert!(
            clipped.into_scalar().elem::<i64>() > 0,
            "the ReLU never clipped"
        );

        let grads_ours = (ours * probe.clone()).sum().backward();
        let grads_theirs = (theirs * probe).sum().backward();
        for (what, ours, theirs) in [
            (
                "gamma gradient",
                gamma.grad(&grads_ours),
                gamma.grad(&grads_theirs),
            ),
            (
                "beta gradient",
                beta.grad(&grads_ours),
                beta.grad(&grads_theirs),
            ),
        ] {
            assert_close(ours.unwrap(), theirs.unwrap(), what);
        }
        assert_close(
            x.grad(&grads_ours).unwrap(),
            x.grad(&grads_theirs).unwrap(),
            "input gradient",
        );
    }

    /// Checks `weight_norm` on `B` (forward, and the backward step of `Autodiff<B>`) against
    /// autodiff through [`composed::weight_norm`]: the weight, and the gradients of the
    /// direction and the length under a random probe. `view` turns the random direction
    /// into the input (e.g. a strided view).
    pub fn matches_composed_weight_norm<B: ConvBackend>(
        view: impl Fn(Tensor<burn_autodiff::Autodiff<B>, 4>) -> Tensor<burn_autodiff::Autodiff<B>, 4>,
        shape: [usize; 4],
    ) {
        type A<B> = burn_autodiff::Autodiff<B>;
        let device = Default::default();
        let direction = view(Tensor::<A<B>, 4>::random(
            shape,
            Distribution::Normal(0.0, 1.0),
            &device,
        ))
        .require_grad();
        let out = direction.dims()[0];
        let length = Tensor::<A<B>, 1>::random([out], Distribution::Normal(1.0, 0.5), &device)
            .require_grad();
        let probe =
            Tensor::<A<B>, 4>::random(direction.dims(), Distribution::Normal(0.0, 1.0), &device);

        let ours = weight_norm(direction.clone(), length.clone());
        let theirs = composed::weight_norm(direction.clone(), length.clone());
        assert_close(ours.clone().inner(), theirs.clone().inner(), "weight");
        let grads_ours = (ours * probe.clone()).sum().backward();
        let grads_theirs = (theirs * probe).sum().backward();
        assert_close(
            direction.grad(&grads_ours).unwrap(),
            direction.grad(&grads_theirs).unwrap(),
            "direction gradient",
        );
        assert_close(
            length.grad(&grads_ours).unwrap(),
            length.grad(&grads_theirs).unwrap(),
            "length gradient",
        );
    }

    fn assert_close<B: Backend, const D: usize>(
        ours: Tensor<B, D>,
        theirs: Tensor<B, D>,
        what: &str,
    ) {
        let scale = theirs
            .clone()
            .abs()
            .max()
            .into_scalar()
            .elem::<f32>()
            .max(1.0);
        let worst = (ours - theirs).abs().max().into_scalar().elem::<f32>();
        assert!(
            worst <= 1e-4 * scale,
            "{what}: largest difference {worst} exceeds 1e-4 x {scale}"
        );
    }

    /// The trait's default bodies (Burn's conv2d and its backward) behind the autodiff
    /// wrapper's own backward step.
    #[cfg(feature = "ndarray")]
    #[test]
    fn default_bodies_match_burn_conv_on_ndarray() {
        use burn_ndarray::NdArray;
        matches_burn_conv::<NdArray>([3, 2, 5, 4], 3, true);
        matches_burn_conv::<NdArray<f64>>([2, 3, 4, 4], 2, false);
        matches_burn_conv_1x1::<NdArray>([3, 2, 5, 4], 3, true);
        matches_burn_conv_1x1::<NdArray<f64>>([2, 3, 4, 4], 2, false);
    }

    /// The weight norm's default bodies (the composition and its hand-derived backward)
    /// behind the autodiff wrapper's own backward step, on NdArray in f32 and f64.
    #[cfg(feature = "ndarray")]
    #[test]
    fn default_weight_norm_matches_autodiff_on_ndarray() {
        use burn_ndarray::NdArray;
        matches_composed_weight_norm::<NdArray>(|v| v, [5, 3, 3, 3]);
        matches_composed_weight_norm::<NdArray<f64>>(|v| v, [2, 7, 1, 1]);
        matches_composed_weight_norm::<NdArray>(|v| v.swap_dims(0, 1), [4, 6, 3, 3]);
    }

    /// The hand-derived backward of the composition (the trait's default body, which a
    /// backend may call from its own kernels) against autodiff through the composition.
    #[cfg(feature = "ndarray")]
    #[test]
    fn composed_batch_norm_backward_matches_autodiff() {
        use burn_autodiff::Autodiff;
        use burn_ndarray::NdArray;
        type A = Autodiff<NdArray>;
        let device = Default::default();
        let x = Tensor::<A, 4>::random([5, 3, 4, 6], Distribution::Normal(0.5, 2.0), &device)
            .require_grad();
        let gamma =
            Tensor::<A, 1>::random([3], Distribution::Normal(1.0, 0.5), &device).require_grad();
        let beta =
            Tensor::<A, 1>::random([3], Distribution::Normal(0.0, 0.5), &device).require_grad();
        let probe = Tensor::<A, 4>::random([5, 3, 4, 6], Distribution::Normal(0.0, 1.0), &device);
        let (y, mean, var) =
            composed::batch_norm_relu(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        let grads = (y * probe.clone()).sum().backward();
        let (x_grad, gamma_grad, beta_grad) = composed::batch_norm_relu_backward(
            x.clone().inner(),
            gamma.clone().inner(),
            beta.clone().inner(),
            mean.inner(),
            var.inner(),
            1e-5,
            probe.inner(),
        );
        assert_close(x_grad, x.grad(&grads).unwrap(), "input gradient");
        assert_close(gamma_grad, gamma.grad(&grads).unwrap(), "gamma gradient");
        assert_close(beta_grad, beta.grad(&grads).unwrap(), "beta gradient");
    }
}
