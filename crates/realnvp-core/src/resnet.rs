//! The s/t network of the image couplings: a deep residual network of weight-normalised
//! 3x3 convolutions with batch normalization (paper, sections 3.7 and 4.1).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::{backend::Backend, Tensor};

use crate::channel_norm::ChannelNorm;
use crate::coupling::CouplingNet;
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

    /// `[batch, features, h, w] -> [batch, features, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(self.norm1.forward_relu(x.clone()));
        let h = self.conv2.forward(self.norm2.forward_relu(h));
        x + h
    }
}

/// The residual network that computes the raw scale and the shift of a coupling layer from
/// its conditioning input (plus one mask channel).
///
/// `[batch, in + 1, h, w] -> (raw_s, t)`, each `[batch, out, h, w]`. The output convolution
/// starts at zero, so that `s = t = 0` and the coupling is the identity at initialisation.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    input: WeightNormConv2d<B>,
    blocks: Vec<ResidualBlock<B>>,
    norm: ChannelNorm<B>,
    output: Conv2d<B>,
}

impl<B: ConvBackend> ResNet<B> {
    /// `channels_in` conditioning channels (the mask channel is added here), `channels_out`
    /// changed channels, `blocks` residual blocks of `features` feature maps.
    pub fn new(
        channels_in: usize,
        channels_out: usize,
        features: usize,
        blocks: usize,
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
            norm: ChannelNorm::new(features, device),
            output,
        }
    }
}

impl<B: ConvBackend> CouplingNet<B, 4> for ResNet<B> {
    fn forward(&self, input: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let h = self
            .blocks
            .iter()
            .fold(self.input.forward(input), |h, block| block.forward(h));
        let out = conv3x3(
            self.norm.forward_relu(h),
            self.output.weight.val(),
            self.output.bias.as_ref().map(|bias| bias.val()),
        );
        let changed = out.dims()[1] / 2;
        (
            out.clone().narrow(1, 0, changed),
            out.narrow(1, changed, changed),
        )
    }
}
