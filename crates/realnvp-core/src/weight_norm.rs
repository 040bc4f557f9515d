//! Weight-normalised convolution (Salimans & Kingma, 2016), which burn-nn does not have.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{backend::Backend, module::conv2d, ops::ConvOptions, Tensor};
use realnvp_conv::{conv1x1, conv3x3, weight_norm, ConvBackend};

use crate::precision::ConvPrecision;

/// A 3x3 (or any odd `k x k`) stride-1 "same" convolution whose weight is
/// `w = g * v / ||v||`, the norm taken per output channel over `[in, k, k]`.
#[derive(Module, Debug)]
pub struct WeightNormConv2d<B: Backend> {
    /// Direction `v`, shape `[out, in, k, k]`.
    pub direction: Param<Tensor<B, 4>>,
    /// Per-output-channel length `g`, shape `[out]`.
    pub length: Param<Tensor<B, 1>>,
    /// Bias, shape `[out]`.
    pub bias: Param<Tensor<B, 1>>,
    kernel: usize,
}

impl<B: ConvBackend> WeightNormConv2d<B> {
    /// A `channels_in -> channels_out` convolution with a `kernel x kernel` window,
    /// initialised so that `w = v` (Kaiming-uniform `v`, `g = ||v||`) and zero bias.
    pub fn new(channels_in: usize, channels_out: usize, kernel: usize, device: &B::Device) -> Self {
        let fan_in = channels_in * kernel * kernel;
        let direction: Param<Tensor<B, 4>> = Initializer::KaimingUniform {
            gain: 1.0 / 3f64.sqrt(),
            fan_out_only: false,
        }
        .init_with(
            [channels_out, channels_in, kernel, kernel],
            Some(fan_in),
            Some(channels_out * kernel * kernel),
            device,
        );
        let length = Self::norm(direction.val()).detach();
        Self {
            direction,
            length: Param::from_tensor(length),
            bias: Initializer::Zeros.init([channels_out], device),
            kernel,
        }
    }

    /// The effective weight `g * v / ||v||`, shape `[out, in, k, k]`: one operation of the
    /// backend ([`realnvp_conv::weight_norm`]).
    pub fn weight(&self) -> Tensor<B, 4> {
        weight_norm(self.direction.val(), self.length.val())
    }

    /// `[batch, in, h, w] -> [batch, out, h, w]`. 3x3 and 1x1 windows run on the
    /// backend's [`conv3x3`] and [`conv1x1`] kernels, other sizes on Burn's `conv2d`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_in(x, ConvPrecision::F32)
    }

    /// [`Self::forward`] with the convolution computed in `precision` (the weight is
    /// normalised in `f32` first); the output has `x`'s float type.
    pub fn forward_in(&self, x: Tensor<B, 4>, precision: ConvPrecision) -> Tensor<B, 4> {
        let pad = self.kernel / 2;
        let conv =
            |x: Tensor<B, 4>, weight: Tensor<B, 4>, bias: Option<Tensor<B, 1>>| match self.kernel {
                3 => conv3x3(x, weight, bias),
                1 => conv1x1(x, weight, bias),
                _ => conv2d(
                    x,
                    weight,
                    bias,
                    ConvOptions::new([1, 1], [pad, pad], [1, 1], 1),
                ),
            };
        precision.apply(x, self.weight(), Some(self.bias.val()), conv)
    }

    fn norm(v: Tensor<B, 4>) -> Tensor<B, 1> {
        realnvp_conv::composed::kernel_norms(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn weight_has_the_learned_length_per_output_channel() {
        let conv = perturb(
            WeightNormConv2d::<Cpu>::new(3, 5, 3, &Default::default()),
            0.5,
            1,
        );
        let norms = values(WeightNormConv2d::norm(conv.weight()));
        let lengths: Vec<f64> = values(conv.length.val()).iter().map(|g| g.abs()).collect();
        assert_close(&norms, &lengths, 1e-5, "per-channel norm");
    }

    #[test]
    fn starts_as_the_plain_convolution_of_its_direction() {
        let conv = WeightNormConv2d::<Cpu>::new(2, 4, 3, &Default::default());
        assert!(max_abs_diff(conv.weight(), conv.direction.val()) < 1e-6);
        let x = uniform::<Cpu, 4>([1, 2, 5, 5], -1.0, 1.0, 1);
        assert_eq!(conv.forward(x).dims(), [1, 4, 5, 5]);
    }
}
