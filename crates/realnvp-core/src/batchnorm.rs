//! Batch normalization in the flow path, with the paper's running-average statistics
//! (appendix E) and its log-determinant.
//!
//! `y = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta`, statistics per channel
//! (dimension 1) over the batch and every other dimension. In training (an autodiff
//! backend, as for burn's own `BatchNorm`) the statistics used are
//! `running <- (1 - momentum) * running + momentum * batch`, gradients flowing through the
//! batch statistics only; the updated running values are stored, so the inverse, which
//! always uses the stored values, undoes the forward pass just made. In evaluation the
//! stored values are used and the layer is a fixed affine map.

use burn::module::{Module, Param, RunningState};
use burn::tensor::{backend::Backend, Tensor};

use crate::bijector::Bijector;
use crate::channels::{add_channels, mul_channels, sum_channels};

/// Flow-path batch normalization with running averages; see the module docs.
#[derive(Module, Debug)]
pub struct FlowBatchNorm<B: Backend> {
    /// Log of the learned scale, shape `[channels]`; starts at 0.
    pub log_gamma: Param<Tensor<B, 1>>,
    /// Learned shift, shape `[channels]`; starts at 0.
    pub beta: Param<Tensor<B, 1>>,
    /// Running mean, shape `[channels]`.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (biased) variance, shape `[channels]`.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Weight of the current batch in the running average (the paper's `1 - rho`).
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub epsilon: f64,
}

impl<B: Backend> FlowBatchNorm<B> {
    /// A layer on `channels` channels, starting from mean 0 and variance 1.
    pub fn new(channels: usize, momentum: f64, device: &B::Device) -> Self {
        Self {
            log_gamma: Param::from_tensor(Tensor::zeros([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum,
            epsilon: 1e-5,
        }
    }

    /// The statistics to normalise with, updating the running averages in training.
    fn statistics<const D: usize>(&self, x: &Tensor<B, D>) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let device = x.device();
        if !B::ad_enabled(&device) {
            return (
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
            );
        }
        let dims = x.dims();
        let count = (dims.iter().product::<usize>() / dims[1]) as f64;
        let batch_mean = sum_channels(x.clone()).div_scalar(count);
        let centred = add_channels(x.clone(), batch_mean.clone().neg());
        let batch_var = sum_channels(centred.powi_scalar(2)).div_scalar(count);
        let blend = |running: Tensor<B, 1>, batch: Tensor<B, 1>| {
            running.to_device(&device).mul_scalar(1.0 - self.momentum)
                + batch.mul_scalar(self.momentum)
        };
        let mean = blend(self.running_mean.value_sync(), batch_mean);
        let var = blend(self.running_var.value_sync(), batch_var);
        self.running_mean.update(mean.clone().detach());
        self.running_var.update(var.clone().detach());
        (mean, var)
    }
}

impl<B: Backend, const D: usize> Bijector<B, D> for FlowBatchNorm<B> {
    fn forward(&self, x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, 1>) {
        let dims = x.dims();
        let positions: usize = dims[2..].iter().product();
        let (mean, var) = self.statistics(&x);
        let log_std = var.add_scalar(self.epsilon).log().mul_scalar(0.5);
        let log_scale = self.log_gamma.val() - log_std;
        let y = add_channels(
            mul_channels(add_channels(x, mean.neg()), log_scale.clone().exp()),
            self.beta.val(),
        );
        let log_det = log_scale.sum().mul_scalar(positions as f64);
        (y, log_det.expand([dims[0]]))
    }

    fn inverse(&self, y: Tensor<B, D>) -> Tensor<B, D> {
        let device = y.device();
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        let log_std = var.add_scalar(self.epsilon).log().mul_scalar(0.5);
        let log_scale = self.log_gamma.val() - log_std;
        add_channels(
            mul_channels(
                add_channels(y, self.beta.val().neg()),
                log_scale.neg().exp(),
            ),
            mean,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn layer<B: Backend>(channels: usize, seed: u64) -> FlowBatchNorm<B> {
        perturb(
            FlowBatchNorm::new(channels, 0.3, &Default::default()),
            0.3,
            seed,
        )
    }

    #[test]
    fn round_trip_in_evaluation_and_training() {
        let x = uniform::<Cpu, 4>([4, 3, 5, 5], -3.0, 3.0, 1);
        assert_round_trip(&layer::<Cpu>(3, 2), x, 1e-4, "evaluation");
        let x = uniform::<CpuTrain, 4>([4, 3, 5, 5], -3.0, 3.0, 1);
        assert_round_trip(&layer::<CpuTrain>(3, 2), x, 1e-4, "training");
        let x = uniform::<CpuTrain, 2>([16, 5], -3.0, 3.0, 1);
        assert_round_trip(&layer::<CpuTrain>(5, 2), x, 1e-4, "training, vectors");
    }

    #[test]
    fn log_det_matches_brute_force_jacobian() {
        let x = uniform::<Exact, 4>([3, 2, 3, 3], -2.0, 2.0, 3);
        assert_log_det(&layer::<Exact>(2, 4), x, 1e-6, "images");
        let x = uniform::<Exact, 2>([3, 4], -2.0, 2.0, 3);
        assert_log_det(&layer::<Exact>(4, 4), x, 1e-6, "vectors");
    }

    #[test]
    fn training_blends_batch_statistics_into_the_running_averages() {
        let momentum = 0.3;
        let norm = FlowBatchNorm::<ExactTrain>::new(1, momentum, &Default::default());
        let data = [1.0, 2.0, 4.0, 9.0];
        let x = Tensor::<ExactTrain, 1>::from_floats(data, &Default::default()).reshape([4, 1]);
        let (y, log_det) = norm.forward(x);

        let batch_mean = data.iter().sum::<f64>() / 4.0;
        let batch_var = data.iter().map(|v| (v - batch_mean).powi(2)).sum::<f64>() / 4.0;
        let mean = (1.0 - momentum) * 0.0 + momentum * batch_mean;
        let var = (1.0 - momentum) * 1.0 + momentum * batch_var;
        let std = (var + norm.epsilon).sqrt();
        assert_close(
            &values(norm.running_mean.value_sync()),
            &[mean],
            1e-12,
            "running mean",
        );
        assert_close(
            &values(norm.running_var.value_sync()),
            &[var],
            1e-12,
            "running variance",
        );
        let expected: Vec<f64> = data.iter().map(|v| (v - mean) / std).collect();
        assert_close(&values(y), &expected, 1e-12, "output");
        assert_close(&values(log_det), &[-std.ln(); 4], 1e-12, "log-det");
    }

    #[test]
    fn gradients_flow_through_the_batch_statistics() {
        let norm = FlowBatchNorm::<ExactTrain>::new(1, 0.5, &Default::default());
        let x = Tensor::<ExactTrain, 1>::from_floats([1.0, 2.0, 4.0, 9.0], &Default::default())
            .reshape([4, 1])
            .require_grad();
        let (_, log_det) = norm.forward(x.clone());
        let grads = log_det.sum().backward();
        let grad = values(
            x.grad(&grads)
                .expect("the log-det depends on the input through the batch variance"),
        );
        assert!(grad.iter().any(|g| g.abs() > 1e-6), "gradient {grad:?}");
    }
}
