//! One scale of the multi-scale architecture (paper, section 3.6): checkerboard couplings,
//! squeeze, channel-wise couplings, then half of the channels are factored out.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::bijector::{forward_chain, inverse_chain};
use crate::mask::Mask;
use crate::resnet::ResNet;
use crate::squeeze::{squeeze, unsqueeze};
use crate::step::FlowStep;
use realnvp_conv::ConvBackend;

/// A flow step of the image model.
pub type ImageStep<B> = FlowStep<B, ResNet<B>>;

/// Shape and size settings of one scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleSpec {
    /// Channels of the scale's input.
    pub channels: usize,
    /// Feature maps of the checkerboard couplings' networks (doubled after the squeeze).
    pub features: usize,
    /// Residual blocks per coupling network.
    pub res_blocks: usize,
    /// Skip connections in the coupling networks.
    pub skip_connections: bool,
    /// Momentum of the flow-path batch norm, `None` when it is off.
    pub batch_norm_momentum: Option<f64>,
    /// Whether this is the coarsest scale (four checkerboard couplings, no squeeze).
    pub last: bool,
}

/// One scale: `[batch, c, h, w]` in; for every scale but the last, the factored-out latent
/// `[batch, 2c, h/2, w/2]` and the rest `[batch, 2c, h/2, w/2]` out.
#[derive(Module, Debug)]
pub struct Scale<B: Backend> {
    /// Couplings with alternating checkerboard masks, before the squeeze.
    pub checkerboard: Vec<ImageStep<B>>,
    /// Couplings with alternating channel-wise masks, after the squeeze (empty for the
    /// last scale).
    pub channelwise: Vec<ImageStep<B>>,
}

/// What a scale's forward pass produces.
pub struct ScaleOutput<B: Backend> {
    /// Latent variables factored out at this scale (the whole output for the last scale).
    pub latent: Tensor<B, 4>,
    /// What goes on to the next scale; `None` for the last scale.
    pub rest: Option<Tensor<B, 4>>,
    /// Log-det of this scale, nats, shape `[batch]`.
    pub log_det: Tensor<B, 1>,
}

impl<B: ConvBackend> Scale<B> {
    /// Builds a scale from its settings.
    pub fn new(spec: ScaleSpec, device: &B::Device) -> Self {
        let c = spec.channels;
        let step = |mask: Mask, channels: usize, features: usize| {
            let net = ResNet::new(
                mask.conditioning_channels(channels),
                mask.changed_channels(channels),
                features,
                spec.res_blocks,
                spec.skip_connections,
                device,
            );
            FlowStep::new(net, mask, channels, spec.batch_norm_momentum, device)
        };
        let n_checkerboard = if spec.last { 4 } else { 3 };
        let checkerboard = (0..n_checkerboard)
            .map(|i| {
                step(
                    Mask::Checkerboard {
                        parity: (i + 1) % 2,
                    },
                    c,
                    spec.features,
                )
            })
            .collect();
        let channelwise = if spec.last {
            Vec::new()
        } else {
            (0..3)
                .map(|i| step(Mask::Channel { parity: i % 2 }, 4 * c, 2 * spec.features))
                .collect()
        };
        Self {
            checkerboard,
            channelwise,
        }
    }

    /// Whether this is the coarsest scale.
    pub fn is_last(&self) -> bool {
        self.channelwise.is_empty()
    }

    /// Transforms `x` and factors out half of the channels.
    pub fn forward(&self, x: Tensor<B, 4>) -> ScaleOutput<B> {
        let (h, log_det) = forward_chain(&self.checkerboard, x);
        if self.is_last() {
            return ScaleOutput {
                latent: h,
                rest: None,
                log_det,
            };
        }
        let (h, channel_log_det) = forward_chain(&self.channelwise, squeeze(h));
        let half = h.dims()[1] / 2;
        ScaleOutput {
            latent: h.clone().narrow(1, 0, half),
            rest: Some(h.narrow(1, half, half)),
            log_det: log_det + channel_log_det,
        }
    }

    /// Inverts [`Scale::forward`] from this scale's latent and the next scale's input.
    pub fn inverse(&self, latent: Tensor<B, 4>, rest: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        let h = match rest {
            Some(rest) => unsqueeze(inverse_chain(
                &self.channelwise,
                Tensor::cat(vec![latent, rest], 1),
            )),
            None => latent,
        };
        inverse_chain(&self.checkerboard, h)
    }

    /// Sum of the squared coupling scales of this scale.
    pub fn scale_penalty(&self) -> Tensor<B, 1> {
        self.checkerboard
            .iter()
            .chain(&self.channelwise)
            .map(|step| step.coupling.scale_penalty())
            .reduce(|a, b| a + b)
            .expect("every scale has couplings")
    }
}
