//! Real NVP on vectors (2-D toy data, tabular data): MLP coupling networks with alternating
//! half masks, sharing the coupling, batch-norm and prior code of the image model.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{activation::relu, backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::bijector::{forward_chain, inverse_chain, Bijector};
use crate::coupling::CouplingNet;
use crate::error::ConfigError;
use crate::mask::Mask;
use crate::prior::{standard_normal_log_prob, standard_normal_sample};
use crate::step::FlowStep;

/// Configuration of a vector Real NVP, built with [`VectorRealNvpConfig::init`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorRealNvpConfig {
    /// Dimensions of a data vector (at least 2).
    pub dims: usize,
    /// Number of coupling layers; masks alternate between the two halves.
    pub couplings: usize,
    /// Width of the hidden layers of every coupling network.
    pub hidden: usize,
    /// Number of hidden layers of every coupling network.
    pub hidden_layers: usize,
    /// Flow-path batch norm after every coupling.
    pub batch_norm: bool,
    /// Weight of the current batch in the batch norm's running averages.
    pub batch_norm_momentum: f64,
}

impl Default for VectorRealNvpConfig {
    fn default() -> Self {
        Self {
            dims: 2,
            couplings: 8,
            hidden: 64,
            hidden_layers: 2,
            batch_norm: false,
            batch_norm_momentum: 0.05,
        }
    }
}

impl VectorRealNvpConfig {
    /// Checks every key and returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dims < 2 {
            return Err(ConfigError::invalid("dims", self.dims, "at least 2"));
        }
        for (key, value) in [
            ("couplings", self.couplings),
            ("hidden", self.hidden),
            ("hidden_layers", self.hidden_layers),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, value, "a positive integer"));
            }
        }
        if !(self.batch_norm_momentum > 0.0 && self.batch_norm_momentum <= 1.0) {
            return Err(ConfigError::invalid(
                "batch_norm_momentum",
                self.batch_norm_momentum,
                "a number in (0, 1]",
            ));
        }
        Ok(())
    }

    /// Validates the configuration and builds a freshly initialised model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<VectorRealNvp<B>, ConfigError> {
        self.validate()?;
        let momentum = self.batch_norm.then_some(self.batch_norm_momentum);
        let steps = (0..self.couplings)
            .map(|i| {
                let mask = Mask::Channel { parity: i % 2 };
                let net = Mlp::new(
                    mask.conditioning_channels(self.dims),
                    mask.changed_channels(self.dims),
                    self.hidden,
                    self.hidden_layers,
                    device,
                );
                FlowStep::new(net, mask, self.dims, momentum, device)
            })
            .collect();
        Ok(VectorRealNvp {
            steps,
            dims: self.dims,
        })
    }
}

/// The coupling network of vector flows: `[batch, in] -> (raw_s, t)`, each
/// `[batch, out]`; ReLU hidden layers, output layer starting at zero.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Vec<Linear<B>>,
    output: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `inputs -> hidden x layers -> 2 * outputs`.
    pub fn new(
        inputs: usize,
        outputs: usize,
        hidden: usize,
        layers: usize,
        device: &B::Device,
    ) -> Self {
        let hidden_layers = (0..layers)
            .map(|i| LinearConfig::new(if i == 0 { inputs } else { hidden }, hidden).init(device))
            .collect();
        let output = LinearConfig::new(hidden, 2 * outputs)
            .with_initializer(Initializer::Zeros)
            .init(device);
        Self {
            hidden: hidden_layers,
            output,
        }
    }
}

impl<B: Backend> CouplingNet<B, 2> for Mlp<B> {
    fn forward(&self, input: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let h = self
            .hidden
            .iter()
            .fold(input, |h, layer| relu(layer.forward(h)));
        let out = self.output.forward(h);
        let changed = out.dims()[1] / 2;
        (
            out.clone().narrow(1, 0, changed),
            out.narrow(1, changed, changed),
        )
    }
}

/// A Real NVP on vectors `[batch, dims]` with a unit Gaussian prior; densities in nats.
#[derive(Module, Debug)]
pub struct VectorRealNvp<B: Backend> {
    /// Coupling steps, applied in order from data to latent.
    pub steps: Vec<FlowStep<B, Mlp<B>>>,
    dims: usize,
}

impl<B: Backend> VectorRealNvp<B> {
    /// Dimensions of a data vector.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Log-density of `x` `[batch, dims]`, nats, shape `[batch]`.
    pub fn log_prob(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let (z, log_det) = self.forward(x);
        standard_normal_log_prob(z) + log_det
    }

    /// Draws `n` vectors with the prior's standard deviation set to `temperature`.
    pub fn sample(&self, n: usize, temperature: f64, device: &B::Device) -> Tensor<B, 2> {
        self.inverse(standard_normal_sample([n, self.dims], temperature, device))
    }

    /// Sum of the squared coupling scales, for the trainer's L2 penalty.
    pub fn scale_penalty(&self) -> Tensor<B, 1> {
        self.steps
            .iter()
            .map(|step| step.coupling.scale_penalty())
            .reduce(|a, b| a + b)
            .expect("a vector model has at least one coupling")
    }
}

impl<B: Backend> Bijector<B, 2> for VectorRealNvp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 1>) {
        forward_chain(&self.steps, x)
    }

    fn inverse(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        inverse_chain(&self.steps, z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::TensorData;

    fn model<B: Backend>(dims: usize, batch_norm: bool, seed: u64) -> VectorRealNvp<B> {
        perturbed_model(dims, batch_norm, 0.2, seed)
    }

    fn perturbed_model<B: Backend>(
        dims: usize,
        batch_norm: bool,
        std: f64,
        seed: u64,
    ) -> VectorRealNvp<B> {
        let config = VectorRealNvpConfig {
            dims,
            couplings: 4,
            hidden: 16,
            hidden_layers: 2,
            batch_norm,
            batch_norm_momentum: 0.5,
        };
        B::seed(&Default::default(), seed);
        perturb(
            config.init(&Default::default()).expect("valid config"),
            std,
            seed,
        )
    }

    #[test]
    fn round_trip_in_evaluation_and_training() {
        for dims in [2, 5] {
            let x = uniform::<Cpu, 2>([32, dims], -3.0, 3.0, 1);
            assert_round_trip(&model::<Cpu>(dims, true, 2), x, 1e-4, "evaluation");
            let x = uniform::<CpuTrain, 2>([32, dims], -3.0, 3.0, 1);
            assert_round_trip(&model::<CpuTrain>(dims, true, 2), x, 1e-4, "training");
        }
    }

    #[test]
    fn log_det_matches_brute_force_jacobian() {
        for dims in [2, 5] {
            let x = uniform::<Exact, 2>([4, dims], -2.0, 2.0, 3);
            assert_log_det(
                &model::<Exact>(dims, true, 4),
                x,
                1e-6,
                &format!("{dims} dims"),
            );
        }
    }

    /// The density of a perturbed 2-D flow integrates to one over a fine grid.
    #[test]
    fn density_integrates_to_one() {
        let m = perturbed_model::<Exact>(2, true, 0.1, 5);
        let (extent, n) = (12.0, 1200);
        let step = 2.0 * extent / n as f64;
        let points: Vec<f64> = (0..n * n)
            .flat_map(|k| {
                let x = -extent + (k / n) as f64 * step + step / 2.0;
                let y = -extent + (k % n) as f64 * step + step / 2.0;
                [x, y]
            })
            .collect();
        let device = Default::default();
        let grid = Tensor::<Exact, 2>::from_data(TensorData::new(points, [n * n, 2]), &device);
        // The grid must hold (nearly) all of the mass for the test to mean anything.
        let samples = values(m.sample(20000, 1.0, &device));
        let outside = samples
            .chunks(2)
            .filter(|p| p[0].abs() > extent || p[1].abs() > extent);
        assert!(
            outside.count() < 20,
            "the flow's mass reaches beyond the grid"
        );
        // ... and the flow must be far from the prior, or a wrong log-det could still pass.
        let (_, log_det) = m.forward(Tensor::from_data(
            TensorData::new(samples, [20000, 2]),
            &device,
        ));
        let mean_log_det = values(log_det).iter().sum::<f64>() / 20000.0;
        assert!(mean_log_det.abs() > 0.1, "mean log-det {mean_log_det}");
        let density: f64 = values(m.log_prob(grid).exp()).iter().sum::<f64>() * step * step;
        assert!((density - 1.0).abs() < 0.01, "integral {density}");
    }

    #[test]
    fn invalid_configs_name_their_key() {
        let err = VectorRealNvpConfig {
            dims: 1,
            ..Default::default()
        }
        .init::<Cpu>(&Default::default())
        .expect_err("one dimension cannot be split");
        assert!(err.to_string().contains("`dims`"), "{err}");
        let err = VectorRealNvpConfig {
            hidden: 0,
            ..Default::default()
        }
        .init::<Cpu>(&Default::default())
        .expect_err("no hidden units");
        assert!(err.to_string().contains("`hidden`"), "{err}");
    }
}
