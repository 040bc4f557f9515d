//! The s/t network of the image couplings: a deep residual network of weight-normalised
//! 3x3 convolutions with batch normalization (paper, sections 3.7 and 4.1), optionally
//! with skip connections (section 4.1: "a deep convolutional residual network ... with
//! skip-connections").

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::{backend::Backend, Tensor};

use crate::channel_norm::ChannelNorm;
use crate::coupling::CouplingNet;
use crate::precision::ConvPrecision;
use crate::weight_norm::WeightNormConv2d;
use realnvp_conv::{conv3x3, ConvBackend};

/// A pre-activation residual block: `x + conv(relu(bn(conv(relu(bn(x))))))`.
#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    norm1: ChannelNorm<B>,
    conv1: WeightNormConv2d<B>,
    norm2: ChannelNorm<B>,
    conv2: WeightNormConv2d<B>,
}

impl<B: ConvBackend> ResidualBlock<B> {
    /// A block on `features` feature maps.
    pub fn new(features: usize, device: &B::Device) -> Self {
        Self {
            norm1: ChannelNorm::new(features, device),
            conv1: WeightNormConv2d::new(features, features, 3, device),
            norm2: ChannelNorm::new(features, device),
            conv2: WeightNormConv2d::new(features, features, 3, device),
        }
    }

    /// `[batch, features, h, w] -> [batch, features, h, w]`, the convolutions computed in
    /// `precision`.
    pub fn forward(&self, x: Tensor<B, 4>, precision: ConvPrecision) -> Tensor<B, 4> {
        let h = self
            .conv1
            .forward_in(self.norm1.forward_relu(x.clone()), precision);
        let h = self.conv2.forward_in(self.norm2.forward_relu(h), precision);
        x + h
    }
}

/// The residual network that computes the raw scale and the shift of a coupling layer from
/// its conditioning input (plus one mask channel).
///
/// `[batch, in + 1, h, w] -> (raw_s, t)`, each `[batch, out, h, w]`. The output convolution
/// starts at zero, so that `s = t = 0` and the coupling is the identity at initialisation.
///
/// With skip connections, as in the authors' code, the output layers read the sum of a
/// weight-normalised 1x1 projection of the input layer's and of every block's output,
/// rather than the last block's output alone.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    input: WeightNormConv2d<B>,
    blocks: Vec<ResidualBlock<B>>,
    /// The 1x1 skip projections: of the input layer, then of each block (empty: no skip
    /// connections).
    skips: Vec<WeightNormConv2d<B>>,
    norm: ChannelNorm<B>,
    output: Conv2d<B>,
    /// The float type the convolutions compute in (`f32` unless changed with
    /// [`Self::set_conv_precision`]); not saved with the weights.
    #[module(skip)]
    precision: ConvPrecision,
}

impl<B: ConvBackend> ResNet<B> {
    /// `channels_in` conditioning channels (the mask channel is added here), `channels_out`
    /// changed channels, `blocks` residual blocks of `features` feature maps, with or
    /// without `skip` connections.
    pub fn new(
        channels_in: usize,
        channels_out: usize,
        features: usize,
        blocks: usize,
        skip: bool,
        device: &B::Device,
    ) -> Self {
        let output = Conv2dConfig::new([features, 2 * channels_out], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .with_initializer(Initializer::Zeros)
            .init(device);
        Self {
            input: WeightNormConv2d::new(channels_in + 1, features, 3, device),
            blocks: (0..blocks)
                .map(|_| ResidualBlock::new(features, device))
                .collect(),
            skips: match skip {
                true => (0..=blocks)
                    .map(|_| WeightNormConv2d::new(features, features, 1, device))
                    .collect(),
                false => Vec::new(),
            },
            norm: ChannelNorm::new(features, device),
            output,
            precision: ConvPrecision::F32,
        }
    }

    /// Computes this network's convolutions in `precision` from now on.
    pub fn set_conv_precision(&mut self, precision: ConvPrecision) {
        self.precision = precision;
    }
}

impl<B: ConvBackend> CouplingNet<B, 4> for ResNet<B> {
    fn forward(&self, input: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let precision = self.precision;
        let mut h = self.input.forward_in(input, precision);
        let mut skip = self
            .skips
            .first()
            .map(|project| project.forward_in(h.clone(), precision));
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(h, precision);
            if let (Some(sum), Some(project)) = (skip.take(), self.skips.get(i + 1)) {
                skip = Some(sum + project.forward_in(h.clone(), precision));
            }
        }
        let h = skip.unwrap_or(h);
        let out = precision.apply(
            self.norm.forward_relu(h),
            self.output.weight.val(),
            self.output.bias.as_ref().map(burn::module::Param::val),
            conv3x3,
        );
        let changed = out.dims()[1] / 2;
        (
            out.clone().narrow(1, 0, changed),
            out.narrow(1, changed, changed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    /// The output layers read the sum of the projections of the input layer's and every
    /// block's output, each block fed by the one before it.
    #[test]
    fn skip_connections_sum_a_projection_of_every_block() {
        let device = Default::default();
        let net = perturb(ResNet::<Cpu>::new(2, 3, 6, 3, true, &device), 0.3, 7);
        assert_eq!(net.skips.len(), 4);
        let x = uniform::<Cpu, 4>([2, 3, 5, 5], -1.0, 1.0, 8);
        let (s, t) = net.forward(x.clone());

        let mut h = net.input.forward(x);
        let mut sum = net.skips[0].forward(h.clone());
        for (block, project) in net.blocks.iter().zip(&net.skips[1..]) {
            h = block.forward(h, ConvPrecision::F32);
            sum = sum + project.forward(h.clone());
        }
        let out = burn::tensor::module::conv2d(
            net.norm.forward_relu(sum),
            net.output.weight.val(),
            net.output.bias.as_ref().map(burn::module::Param::val),
            burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        let expected = Tensor::cat(vec![s, t], 1);
        assert!(max_abs_diff(out.clone(), expected) < 1e-5);

        // Without the skips, the same weights give the last block's output alone.
        let plain = ResNet {
            skips: Vec::new(),
            ..net.clone()
        };
        let (s, _) = plain.forward(uniform::<Cpu, 4>([2, 3, 5, 5], -1.0, 1.0, 8));
        assert!(max_abs_diff(s, out.narrow(1, 0, 3)) > 1e-3);
    }
}
