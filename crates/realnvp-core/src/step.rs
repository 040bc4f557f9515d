//! One step of the flow: an affine coupling, optionally followed by flow-path batch norm.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::batchnorm::FlowBatchNorm;
use crate::bijector::Bijector;
use crate::coupling::{AffineCoupling, CouplingNet};
use crate::mask::Mask;

/// An affine coupling followed, when enabled, by [`FlowBatchNorm`] on its whole output.
#[derive(Module, Debug)]
pub struct FlowStep<B: Backend, N> {
    /// The coupling layer.
    pub coupling: AffineCoupling<B, N>,
    /// Batch norm on the coupling's output, if enabled.
    pub batch_norm: Option<FlowBatchNorm<B>>,
}

impl<B: Backend, N> FlowStep<B, N> {
    /// A step on `channels` channels; `batch_norm_momentum` is `None` to switch batch
    /// norm off.
    pub fn new(
        net: N,
        mask: Mask,
        channels: usize,
        batch_norm_momentum: Option<f64>,
        device: &B::Device,
    ) -> Self {
        Self {
            coupling: AffineCoupling::new(net, mask, channels, device),
            batch_norm: batch_norm_momentum.map(|m| FlowBatchNorm::new(channels, m, device)),
        }
    }
}

impl<B: Backend, N: CouplingNet<B, D>, const D: usize> Bijector<B, D> for FlowStep<B, N> {
    fn forward(&self, x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, 1>) {
        let (y, log_det) = self.coupling.forward(x);
        match &self.batch_norm {
            Some(norm) => {
                let (y, norm_log_det) = norm.forward(y);
                (y, log_det + norm_log_det)
            }
            None => (y, log_det),
        }
    }

    fn inverse(&self, y: Tensor<B, D>) -> Tensor<B, D> {
        let y = match &self.batch_norm {
            Some(norm) => norm.inverse(y),
            None => y,
        };
        self.coupling.inverse(y)
    }
}
