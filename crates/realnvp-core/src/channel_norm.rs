//! Batch normalization for the s/t networks, equivalent to burn's `nn::BatchNorm` but
//! written with [`crate::channels`] arithmetic, which Burn's CPU backends run an order of
//! magnitude faster (the s/t networks hold one of these per convolution).

use burn::module::{Module, Param, RunningState};
use burn::tensor::{backend::Backend, Tensor};

use realnvp_conv::{batch_norm_relu, channel_affine_relu, NormReluBackend};

use crate::channels::{add_channels, mul_channels, sum_channels};

/// Batch norm over dimension 1 with learned scale and shift; batch statistics in training
/// (autodiff backends), running averages (momentum 0.1) in evaluation.
#[derive(Module, Debug)]
pub struct ChannelNorm<B: Backend> {
    /// Learned scale, shape `[channels]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// Learned shift, shape `[channels]`.
    pub beta: Param<Tensor<B, 1>>,
    /// Running mean, shape `[channels]`.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (biased) variance, shape `[channels]`.
    pub running_var: RunningState<Tensor<B, 1>>,
    momentum: f64,
    epsilon: f64,
}

impl<B: Backend> ChannelNorm<B> {
    /// A layer on `channels` channels.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// `[batch, channels, ...] -> [batch, channels, ...]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let device = x.device();
        let dims = x.dims();
        let count = (dims.iter().product::<usize>() / dims[1]) as f64;
        let (centred, var) = if B::ad_enabled(&device) {
            let mean = sum_channels(x.clone()).div_scalar(count);
            let centred = add_channels(x, mean.clone().neg());
            let var = sum_channels(centred.clone().powi_scalar(2)).div_scalar(count);
            self.blend_into_running_averages(mean, var.clone());
            (centred, var)
        } else {
            let mean = self.running_mean.value().to_device(&device);
            let var = self.running_var.value().to_device(&device);
            (add_channels(x, mean.neg()), var)
        };
        let scale = self.gamma.val() / var.add_scalar(self.epsilon).sqrt();
        add_channels(mul_channels(centred, scale), self.beta.val())
    }
    /// Blends one batch's statistics (`[channels]` each) into the running averages.
    fn blend_into_running_averages(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>) {
        let blend = |state: &RunningState<Tensor<B, 1>>, batch: Tensor<B, 1>| {
            let running = state.value_sync().to_device(&batch.device());
            state.update(
                (running.mul_scalar(1.0 - self.momentum)
                    + batch.detach().mul_scalar(self.momentum))
                .detach(),
            );
        };
        blend(&self.running_mean, mean);
        blend(&self.running_var, var);
    }
}

impl<B: NormReluBackend> ChannelNorm<B> {
    /// `relu(self.forward(x))` on `[batch, channels, h, w]`, on the backend's fused
    /// kernels: in training [`batch_norm_relu`] (batch statistics, then blended into the
    /// running averages); in evaluation the running averages fold into one scale and one
    /// shift per channel, applied with the ReLU in one pass ([`channel_affine_relu`]).
    pub fn forward_relu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        if B::ad_enabled(&device) {
            let (y, mean, var) =
                batch_norm_relu(x, self.gamma.val(), self.beta.val(), self.epsilon);
            self.blend_into_running_averages(mean, var);
            return y;
        }
        let mean = self.running_mean.value().to_device(&device);
        let var = self.running_var.value().to_device(&device);
        let scale = self.gamma.val() / var.add_scalar(self.epsilon).sqrt();
        let shift = self.beta.val() - mean * scale.clone();
        channel_affine_relu(x, scale, shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::nn::BatchNormConfig;

    #[test]
    fn matches_burns_batch_norm_in_training_and_evaluation() {
        let device = Default::default();
        let ours = perturb(ChannelNorm::<CpuTrain>::new(3, &device), 0.3, 1);
        let theirs = BatchNormConfig::new(3).init::<CpuTrain>(&device);
        let theirs = theirs.load_record(burn::nn::BatchNormRecord {
            gamma: Param::from_tensor(ours.gamma.val().detach()),
            beta: Param::from_tensor(ours.beta.val().detach()),
            running_mean: Param::from_tensor(ours.running_mean.value()),
            running_var: Param::from_tensor(ours.running_var.value()),
            momentum: burn::module::EmptyRecord::new(),
            epsilon: burn::module::EmptyRecord::new(),
        });
        let x = uniform::<CpuTrain, 4>([4, 3, 5, 5], -2.0, 3.0, 2);
        assert!(
            max_abs_diff(ours.forward(x.clone()), theirs.forward(x.clone())) < 1e-5,
            "training"
        );
        assert!(
            max_abs_diff(
                ours.running_var.value_sync(),
                theirs.running_var.value_sync()
            ) < 1e-5,
            "running variance"
        );
        use burn::module::AutodiffModule;
        let x = uniform::<Cpu, 4>([4, 3, 5, 5], -2.0, 3.0, 3);
        assert!(
            max_abs_diff(ours.valid().forward(x.clone()), theirs.valid().forward(x)) < 1e-5,
            "evaluation"
        );
    }

    #[test]
    fn forward_relu_is_relu_of_forward_in_training_and_evaluation() {
        use burn::module::AutodiffModule;
        use burn::tensor::activation::relu;
        let mut norm = perturb(ChannelNorm::<CpuTrain>::new(5, &Default::default()), 0.5, 4);
        // Perturbed values as fresh leaves, so that their gradients are kept.
        norm.gamma = Param::from_tensor(norm.gamma.val().detach());
        norm.beta = Param::from_tensor(norm.beta.val().detach());
        let twin = norm.clone();
        let x = uniform::<CpuTrain, 4>([3, 5, 9, 7], -2.0, 3.0, 6).require_grad();
        let (fused, plain) = (norm.forward_relu(x.clone()), relu(twin.forward(x.clone())));
        assert!(
            max_abs_diff(fused.clone(), plain.clone()) < 1e-5,
            "training"
        );
        for (ours, theirs, what) in [
            (&norm.running_mean, &twin.running_mean, "running mean"),
            (&norm.running_var, &twin.running_var, "running variance"),
        ] {
            assert!(
                max_abs_diff(ours.value_sync(), theirs.value_sync()) < 1e-6,
                "{what}"
            );
        }
        let weights = uniform::<CpuTrain, 4>([3, 5, 9, 7], -1.0, 1.0, 8);
        let grads_fused = (fused * weights.clone()).sum().backward();
        let grads_plain = (plain * weights).sum().backward();
        let grad = |t: &Tensor<CpuTrain, 1>, g| t.grad(g).expect("a gradient");
        assert!(
            max_abs_diff(
                grad(&norm.gamma.val(), &grads_fused),
                grad(&twin.gamma.val(), &grads_plain)
            ) < 1e-4,
            "gamma gradient"
        );
        assert!(
            max_abs_diff(x.grad(&grads_fused).unwrap(), x.grad(&grads_plain).unwrap()) < 1e-4,
            "input gradient"
        );

        let norm = norm.valid();
        let x = uniform::<Cpu, 4>([3, 5, 9, 7], -2.0, 3.0, 7);
        assert!(
            max_abs_diff(norm.forward_relu(x.clone()), relu(norm.forward(x))) < 1e-5,
            "evaluation"
        );
    }
}
