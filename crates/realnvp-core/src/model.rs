//! The whole image flow: preprocessing, scales, prior; log-likelihood, bits/dim, sampling,
//! encoding and decoding.

use burn::module::Module;
use burn::tensor::{backend::Backend, Distribution, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::bijector::Bijector;
use crate::class_prior::ClassPrior;
use crate::error::ConfigError;
use crate::multiscale::{Scale, ScaleSpec};
use crate::precision::ConvPrecision;
use crate::preprocess::{Dequantization, Preprocess, PreprocessConfig};
use crate::prior::{standard_normal_log_prob, standard_normal_sample};
use realnvp_conv::ConvBackend;

/// Configuration of an image Real NVP; the model is built from it with
/// [`RealNvpConfig::init`]. Defaults: the paper's 32x32 model (4 residual blocks, 32
/// feature maps) with flow-path batch norm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealNvpConfig {
    /// Image channels (1 grey, 3 colour).
    pub channels: usize,
    /// Image height in pixels; divisible by `2^(scales - 1)`, at least 2 at the last scale.
    pub height: usize,
    /// Image width in pixels; same rule as `height`.
    pub width: usize,
    /// Number of scales; every scale but the last squeezes and factors out half.
    pub scales: usize,
    /// Residual blocks in every coupling network.
    pub res_blocks: usize,
    /// Skip connections in every coupling network (the paper's section 4.1): the output
    /// layers read the sum of 1x1 projections of every block's output. Absent in files
    /// written before it existed: off.
    pub skip_connections: bool,
    /// Feature maps of the first scale's checkerboard couplings; doubled at every squeeze.
    pub features: usize,
    /// Batch norm on every coupling's output in the flow path.
    pub batch_norm: bool,
    /// Weight of the current batch in the flow-path batch norm's running averages.
    pub batch_norm_momentum: f64,
    /// Dequantisation and logit settings.
    pub preprocess: PreprocessConfig,
    /// Number of classes of a class-conditional model (a learned Gaussian prior per
    /// class, see [`crate::class_prior`]); 0 for the unconditional model.
    pub classes: usize,
}

impl Default for RealNvpConfig {
    fn default() -> Self {
        Self {
            channels: 3,
            height: 32,
            width: 32,
            scales: 3,
            res_blocks: 4,
            skip_connections: false,
            features: 32,
            batch_norm: true,
            batch_norm_momentum: 0.05,
            preprocess: PreprocessConfig::default(),
            classes: 0,
        }
    }
}

impl RealNvpConfig {
    /// Checks every key and returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &'static str, value: usize| {
            if value == 0 {
                Err(ConfigError::invalid(key, value, "a positive integer"))
            } else {
                Ok(())
            }
        };
        positive("channels", self.channels)?;
        positive("scales", self.scales)?;
        positive("features", self.features)?;
        if self.scales > 16 {
            return Err(ConfigError::invalid("scales", self.scales, "at most 16"));
        }
        let factor = 1usize << (self.scales - 1);
        for (key, side) in [("height", self.height), ("width", self.width)] {
            if side % factor != 0 || side / factor < 2 {
                return Err(ConfigError::invalid(
                    key,
                    side,
                    format!(
                        "divisible by 2^(scales - 1) = {factor} and at least {} with scales = {}",
                        2 * factor,
                        self.scales
                    ),
                ));
            }
        }
        if !(self.batch_norm_momentum > 0.0 && self.batch_norm_momentum <= 1.0) {
            return Err(ConfigError::invalid(
                "batch_norm_momentum",
                self.batch_norm_momentum,
                "a number in (0, 1]",
            ));
        }
        self.preprocess.init().map(|_| ())
    }

    /// Dimensions per example, `channels * height * width`.
    pub fn dims(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Shapes `[channels, height, width]` of the latents of every scale, finest first.
    pub fn latent_shapes(&self) -> Vec<[usize; 3]> {
        let (mut c, mut h, mut w) = (self.channels, self.height, self.width);
        let mut shapes = Vec::with_capacity(self.scales);
        for _ in 1..self.scales {
            c *= 2;
            h /= 2;
            w /= 2;
            shapes.push([c, h, w]);
        }
        shapes.push([c, h, w]);
        shapes
    }

    /// Validates the configuration and builds a freshly initialised model.
    pub fn init<B: ConvBackend>(&self, device: &B::Device) -> Result<RealNvp<B>, ConfigError> {
        self.validate()?;
        let preprocess = self.preprocess.init()?;
        let momentum = self.batch_norm.then_some(self.batch_norm_momentum);
        let scales = (0..self.scales)
            .map(|i| {
                let spec = ScaleSpec {
                    channels: self.channels << i,
                    features: self.features << i,
                    res_blocks: self.res_blocks,
                    skip_connections: self.skip_connections,
                    batch_norm_momentum: momentum,
                    last: i + 1 == self.scales,
                };
                Scale::new(spec, device)
            })
            .collect();
        let class_prior =
            (self.classes > 0).then(|| ClassPrior::new(self.classes, self.dims(), device));
        Ok(RealNvp {
            scales,
            class_prior,
            preprocess,
            config: self.clone(),
        })
    }
}

/// Latent variables of every scale, finest first; scale `i < L - 1` holds
/// `[batch, 2^(i+1) c, h / 2^(i+1), w / 2^(i+1)]`, the last the coarsest remainder.
#[derive(Debug, Clone)]
pub struct Latents<B: Backend> {
    /// One tensor per scale.
    pub scales: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Latents<B> {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.scales[0].dims()[0]
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples `start..start + len` of every scale.
    pub fn narrow(&self, start: usize, len: usize) -> Self {
        Self {
            scales: self
                .scales
                .iter()
                .map(|z| z.clone().narrow(0, start, len))
                .collect(),
        }
    }

    /// Per-scale shapes `[channels, height, width]`, finest first.
    pub fn shapes(&self) -> Vec<[usize; 3]> {
        self.scales
            .iter()
            .map(|z| {
                let [_, c, h, w] = z.dims();
                [c, h, w]
            })
            .collect()
    }

    /// All scales as one matrix `[batch, dims]`, finest scale first, each scale in
    /// `[channels, height, width]` order.
    pub fn flatten(&self) -> Tensor<B, 2> {
        let batch = self.len();
        let parts = self
            .scales
            .iter()
            .map(|z| {
                let [_, c, h, w] = z.dims();
                z.clone().reshape([batch, c * h * w])
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    /// Inverts [`Latents::flatten`] for the per-scale `shapes` `[channels, height, width]`.
    ///
    /// # Panics
    /// If `z` does not have as many columns as the shapes hold.
    pub fn unflatten(z: Tensor<B, 2>, shapes: &[[usize; 3]]) -> Self {
        let [batch, columns] = z.dims();
        let total: usize = shapes.iter().map(|[c, h, w]| c * h * w).sum();
        assert_eq!(total, columns, "latent matrix does not fit the shapes");
        let mut start = 0;
        let scales = shapes
            .iter()
            .map(|&[c, h, w]| {
                let part = z
                    .clone()
                    .narrow(1, start, c * h * w)
                    .reshape([batch, c, h, w]);
                start += c * h * w;
                part
            })
            .collect();
        Self { scales }
    }

    /// Log-density of all latents under the unit Gaussian prior, nats, shape `[batch]`.
    pub fn log_prob(&self) -> Tensor<B, 1> {
        self.scales
            .iter()
            .map(|z| standard_normal_log_prob(z.clone()))
            .reduce(|a, b| a + b)
            .expect("a model has at least one scale")
    }
}

/// An image Real NVP (Dinh, Sohl-Dickstein and Bengio).
///
/// Works on integer pixels `[batch, channels, height, width]` with values in
/// `0..levels` (as floats); densities are in nats, bits/dim count dequantisation and the
/// logit Jacobian. Training and evaluation mode follow burn: on an autodiff backend batch
/// norm uses batch statistics; on its inner backend (`model.valid()`) the running averages.
#[derive(Module, Debug)]
pub struct RealNvp<B: Backend> {
    /// The scales, finest first.
    pub scales: Vec<Scale<B>>,
    /// The per-class prior of a class-conditional model; `None`: `N(0, I)`.
    pub class_prior: Option<ClassPrior<B>>,
    #[module(skip)]
    preprocess: Preprocess,
    #[module(skip)]
    config: RealNvpConfig,
}

impl<B: ConvBackend> RealNvp<B> {
    /// The configuration this model was built from.
    pub fn config(&self) -> &RealNvpConfig {
        &self.config
    }

    /// The preprocessing transform (levels, logit margin).
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// This model with every s/t network's convolutions computed in `precision` (see
    /// [`crate::precision`]); the weights are unchanged and stay `f32`.
    pub fn with_conv_precision(mut self, precision: ConvPrecision) -> Self {
        for scale in &mut self.scales {
            for step in scale.checkerboard.iter_mut().chain(&mut scale.channelwise) {
                step.coupling.net.set_conv_precision(precision);
            }
        }
        self
    }

    /// Maps continuous pixels `y` in `[0, 1)` (dequantised) to the latents and the log-det
    /// of the whole map, logit included (nats, `[batch]`).
    pub fn encode_with_log_det(&self, y: Tensor<B, 4>) -> (Latents<B>, Tensor<B, 1>) {
        let (mut h, mut log_det) = self.preprocess.forward(y);
        let mut latents = Vec::with_capacity(self.scales.len());
        for scale in &self.scales {
            let out = scale.forward(h);
            log_det = log_det + out.log_det;
            latents.push(out.latent);
            match out.rest {
                Some(rest) => h = rest,
                None => break,
            }
        }
        (Latents { scales: latents }, log_det)
    }

    /// Maps continuous pixels `y` in `[0, 1)` to the latents of every scale.
    pub fn encode(&self, y: Tensor<B, 4>) -> Latents<B> {
        self.encode_with_log_det(y).0
    }

    /// Inverts [`RealNvp::encode`]: latents of every scale to continuous pixels in `[0, 1)`.
    pub fn decode(&self, latents: Latents<B>) -> Tensor<B, 4> {
        let mut h: Option<Tensor<B, 4>> = None;
        for (scale, z) in self.scales.iter().zip(latents.scales).rev() {
            h = Some(scale.inverse(z, h));
        }
        let h = h.expect("a model has at least one scale");
        self.preprocess.inverse(h)
    }

    /// [`RealNvp::decode`] `chunk` examples at a time, concatenated: the same pixels with
    /// the activations of at most `chunk` examples alive at once.
    pub fn decode_in_chunks(&self, latents: Latents<B>, chunk: usize) -> Tensor<B, 4> {
        let n = latents.len();
        if n <= chunk {
            return self.decode(latents);
        }
        let chunk = chunk.max(1);
        let parts = (0..n)
            .step_by(chunk)
            .map(|start| self.decode(latents.narrow(start, chunk.min(n - start))))
            .collect();
        Tensor::cat(parts, 0)
    }

    /// Log-density of continuous pixels `y` in `[0, 1)^D`, nats, shape `[batch]`. For a
    /// class-conditional model the marginal `logsumexp_k log p(y | k) - ln K`.
    pub fn log_density(&self, y: Tensor<B, 4>) -> Tensor<B, 1> {
        match &self.class_prior {
            None => {
                let (latents, log_det) = self.encode_with_log_det(y);
                latents.log_prob() + log_det
            }
            Some(prior) => {
                let per_class = self.class_log_densities(y);
                log_sum_exp(per_class).sub_scalar((prior.classes() as f64).ln())
            }
        }
    }

    /// Number of classes of a class-conditional model, 0 for an unconditional one.
    pub fn classes(&self) -> usize {
        self.class_prior.as_ref().map_or(0, ClassPrior::classes)
    }

    /// `log p(y | k)` for every class `k`: continuous pixels `[batch, c, h, w]` to
    /// `[batch, classes]`, nats. An unconditional model has one class, its prior.
    pub fn class_log_densities(&self, y: Tensor<B, 4>) -> Tensor<B, 2> {
        let (latents, log_det) = self.encode_with_log_det(y);
        let batch = latents.len();
        match &self.class_prior {
            None => (latents.log_prob() + log_det).reshape([batch, 1]),
            Some(prior) => {
                prior.log_prob_per_class(latents.flatten()) + log_det.reshape([batch, 1])
            }
        }
    }

    /// `log p(y_i | k_i)` for continuous pixels and labels `[batch]` (values
    /// `0..classes`), nats, `[batch]`; the marginal [`RealNvp::log_density`] for an
    /// unconditional model.
    pub fn log_density_given(&self, y: Tensor<B, 4>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        match &self.class_prior {
            None => self.log_density(y),
            Some(prior) => {
                let (latents, log_det) = self.encode_with_log_det(y);
                prior.log_prob_given(latents.flatten(), labels) + log_det
            }
        }
    }

    /// Bits/dim of integer pixels given their labels, `-log p(x | k) / (D ln 2)`, `[batch]`
    /// (the training objective of a class-conditional model).
    pub fn bits_per_dim_given(
        &self,
        x: Tensor<B, 4>,
        labels: Tensor<B, 1, Int>,
        dequantization: Dequantization,
    ) -> Tensor<B, 1> {
        let dims = self.config.dims();
        let y = self.preprocess.dequantize(x, dequantization);
        self.preprocess
            .bits_per_dim(self.log_density_given(y, labels), dims)
    }

    /// Bits/dim of integer pixels `x`, `[batch]` each, both marginal (`-log p(x)`, as
    /// [`RealNvp::bits_per_dim`]) and given the `labels` (`-log p(x | k)`, as
    /// [`RealNvp::bits_per_dim_given`]) from one pass through the flow; the two are equal
    /// for an unconditional model.
    pub fn bits_per_dim_marginal_and_given(
        &self,
        x: Tensor<B, 4>,
        labels: Tensor<B, 1, Int>,
        dequantization: Dequantization,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let per_class = self.class_log_probs(x, dequantization);
        let [batch, classes] = per_class.dims();
        let to_bits = -1.0 / (self.config.dims() as f64 * std::f64::consts::LN_2);
        let given = per_class
            .clone()
            .gather(1, labels.reshape([batch, 1]).clamp(0, classes as i64 - 1))
            .reshape([batch]);
        let marginal = log_sum_exp(per_class).sub_scalar((classes as f64).ln());
        (marginal.mul_scalar(to_bits), given.mul_scalar(to_bits))
    }

    /// `log p(x | k)` of integer pixels for every class, nats, `[batch, classes]`; Bayes'
    /// rule with equal class priors picks the argmax over dimension 1.
    pub fn class_log_probs(&self, x: Tensor<B, 4>, dequantization: Dequantization) -> Tensor<B, 2> {
        let y = self.preprocess.dequantize(x, dequantization);
        self.class_log_densities(y)
            .sub_scalar(self.preprocess.discretisation_nats(self.config.dims()))
    }

    /// Log-likelihood of integer pixels `x` (`0..levels`), nats per example, shape
    /// `[batch]`: `log p(y) - D ln(levels)` for the dequantised `y`. With
    /// [`Dequantization::Uniform`] its expectation is a lower bound on the discrete
    /// log-likelihood.
    pub fn log_prob(&self, x: Tensor<B, 4>, dequantization: Dequantization) -> Tensor<B, 1> {
        let y = self.preprocess.dequantize(x, dequantization);
        self.log_density(y)
            .sub_scalar(self.preprocess.discretisation_nats(self.config.dims()))
    }

    /// Log-likelihood of integer pixels given their `labels` `[batch]` (values
    /// `0..classes`), `log p(x | k)`, nats per example, `[batch]`; the marginal
    /// [`RealNvp::log_prob`] for an unconditional model.
    pub fn log_prob_given(
        &self,
        x: Tensor<B, 4>,
        labels: Tensor<B, 1, Int>,
        dequantization: Dequantization,
    ) -> Tensor<B, 1> {
        let y = self.preprocess.dequantize(x, dequantization);
        self.log_density_given(y, labels)
            .sub_scalar(self.preprocess.discretisation_nats(self.config.dims()))
    }

    /// Bits/dim of integer pixels `x`, shape `[batch]`:
    /// `(-log p(y) + D ln(levels)) / (D ln 2)`.
    pub fn bits_per_dim(&self, x: Tensor<B, 4>, dequantization: Dequantization) -> Tensor<B, 1> {
        let dims = self.config.dims();
        let y = self.preprocess.dequantize(x, dequantization);
        self.preprocess.bits_per_dim(self.log_density(y), dims)
    }

    /// Draws latents for `n` images from `N(0, temperature^2 I)` (a class-conditional
    /// model: from the mixture of its classes, each equally likely).
    pub fn sample_latents(&self, n: usize, temperature: f64, device: &B::Device) -> Latents<B> {
        match &self.class_prior {
            None => {
                let (height, width) = (self.config.height, self.config.width);
                self.sample_latents_sized(n, height, width, temperature, device)
            }
            Some(prior) => {
                let classes = prior.classes();
                let labels =
                    Tensor::<B, 1>::random([n], Distribution::Uniform(0.0, classes as f64), device)
                        .floor()
                        .int()
                        .clamp(0, classes as i64 - 1);
                self.sample_latents_given(labels, temperature)
            }
        }
    }

    /// Draws latents of the unit Gaussian prior for `n` images of `height x width` pixels:
    /// the model is fully convolutional, so any size divisible by `2^(scales - 1)` decodes
    /// (the paper's extrapolation, appendix C).
    pub fn sample_latents_sized(
        &self,
        n: usize,
        height: usize,
        width: usize,
        temperature: f64,
        device: &B::Device,
    ) -> Latents<B> {
        let config = RealNvpConfig {
            height,
            width,
            ..self.config.clone()
        };
        let scales = config
            .latent_shapes()
            .into_iter()
            .map(|[c, h, w]| standard_normal_sample([n, c, h, w], temperature, device))
            .collect();
        Latents { scales }
    }

    /// The latents at `temperature` that unit-Gaussian `noise` stands for: `T * noise` under
    /// the unit Gaussian prior, `mu_k + T * sigma_k * noise` under class `k`'s prior when
    /// `labels` `[n]` are given to a class-conditional model. One draw of noise at several
    /// temperatures shows the same sample sharpening.
    pub fn latents_from_noise(
        &self,
        noise: Latents<B>,
        temperature: f64,
        labels: Option<Tensor<B, 1, Int>>,
    ) -> Latents<B> {
        match (&self.class_prior, labels) {
            (Some(prior), Some(labels)) => {
                let shapes = noise.shapes();
                Latents::unflatten(
                    prior.from_noise(labels, noise.flatten(), temperature),
                    &shapes,
                )
            }
            _ => Latents {
                scales: noise
                    .scales
                    .into_iter()
                    .map(|z| z.mul_scalar(temperature))
                    .collect(),
            },
        }
    }

    /// Draws latents of the classes `labels` `[n]` from a class-conditional model's prior,
    /// `mu_k + temperature * sigma_k * eps`; the unit Gaussian for an unconditional model.
    pub fn sample_latents_given(&self, labels: Tensor<B, 1, Int>, temperature: f64) -> Latents<B> {
        let device = labels.device();
        match &self.class_prior {
            None => {
                let n = labels.dims()[0];
                self.sample_latents_sized(
                    n,
                    self.config.height,
                    self.config.width,
                    temperature,
                    &device,
                )
            }
            Some(prior) => Latents::unflatten(
                prior.sample(labels, temperature),
                &self.config.latent_shapes(),
            ),
        }
    }

    /// Samples `n` images at the given temperature (the prior's standard deviation), as
    /// continuous pixels in `[0, 1]` `[n, channels, height, width]`; see
    /// [`Preprocess::quantize`] for integer levels.
    pub fn sample(&self, n: usize, temperature: f64, device: &B::Device) -> Tensor<B, 4> {
        self.decode(self.sample_latents(n, temperature, device))
    }

    /// Sum of the squared coupling scales, for the trainer's L2 penalty (the paper uses
    /// 5e-5 times this).
    pub fn scale_penalty(&self) -> Tensor<B, 1> {
        self.scales
            .iter()
            .map(Scale::scale_penalty)
            .reduce(|a, b| a + b)
            .expect("a model has at least one scale")
    }
}

/// `log sum_k exp(a_ik)` over dimension 1, stabilised by the row maximum:
/// `[batch, k] -> [batch]`.
pub fn log_sum_exp<B: Backend>(a: Tensor<B, 2>) -> Tensor<B, 1> {
    let max = a.clone().max_dim(1).detach();
    let sum = (a - max.clone()).exp().sum_dim(1);
    (sum.log() + max).squeeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::ConvPrecision;
    use burn::module::AutodiffModule;
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};

    fn small_config(channels: usize, batch_norm: bool) -> RealNvpConfig {
        RealNvpConfig {
            channels,
            height: 4,
            width: 4,
            scales: 2,
            res_blocks: 1,
            skip_connections: false,
            features: 4,
            batch_norm,
            batch_norm_momentum: 0.5,
            preprocess: PreprocessConfig::default(),
            classes: 0,
        }
    }

    fn model<B: ConvBackend>(config: &RealNvpConfig, seed: u64) -> RealNvp<B> {
        B::seed(&Default::default(), seed);
        let model = config.init::<B>(&Default::default()).expect("valid config");
        perturb(model, 0.05, seed)
    }

    #[test]
    fn latent_shapes_follow_the_scales() {
        let config = RealNvpConfig {
            channels: 3,
            height: 32,
            width: 16,
            scales: 3,
            ..Default::default()
        };
        assert_eq!(
            config.latent_shapes(),
            vec![[6, 16, 8], [12, 8, 4], [12, 8, 4]]
        );
        let total: usize = config
            .latent_shapes()
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum();
        assert_eq!(total, config.dims());
    }

    #[test]
    fn encode_decode_round_trip_in_evaluation_and_training() {
        for channels in [1, 3] {
            for batch_norm in [false, true] {
                let config = RealNvpConfig {
                    height: 8,
                    width: 8,
                    scales: 3,
                    skip_connections: batch_norm,
                    ..small_config(channels, batch_norm)
                };
                let what =
                    format!("{channels} channels, batch norm and skip connections {batch_norm}");
                let y = uniform::<Cpu, 4>([4, channels, 8, 8], 0.0, 1.0, 1);
                let m = model::<Cpu>(&config, 2);
                let err = max_abs_diff(m.decode(m.encode(y.clone())), y);
                assert!(err < 1e-4, "{what}: error {err}");

                let y = uniform::<CpuTrain, 4>([4, channels, 8, 8], 0.0, 1.0, 1);
                let m = model::<CpuTrain>(&config, 2);
                let err = max_abs_diff(m.decode(m.encode(y.clone())), y);
                assert!(err < 1e-4, "{what}, training: error {err}");
            }
        }
    }

    #[test]
    fn log_det_of_the_whole_model_matches_brute_force_jacobian() {
        for (channels, skip_connections) in [(1, false), (3, false), (1, true), (3, true)] {
            let config = RealNvpConfig {
                skip_connections,
                ..small_config(channels, true)
            };
            let m = model::<Exact>(&config, 3);
            let y = uniform::<Exact, 4>([2, channels, 4, 4], 0.05, 0.95, 4);
            let (_, log_det) = m.encode_with_log_det(y.clone());
            let expected = brute_force_log_det(|y| m.encode(y).flatten(), y, 1e-6);
            assert_close(
                &values(log_det),
                &expected,
                1e-5,
                &format!("{channels} channels, skip connections {skip_connections}"),
            );
        }
    }

    /// At initialisation every coupling is the identity, so the latents are the
    /// preprocessed pixels and bits/dim have a closed form.
    #[test]
    fn untrained_bits_per_dim_equal_the_analytic_value() {
        let config = RealNvpConfig {
            height: 8,
            width: 8,
            scales: 3,
            batch_norm: false,
            ..small_config(1, false)
        };
        let levels = 17.0;
        let config = RealNvpConfig {
            preprocess: PreprocessConfig {
                levels: 17,
                ..Default::default()
            },
            ..config
        };
        let pixels: Vec<f32> = (0..2 * 64).map(|k| ((k * 7) % 17) as f32).collect();
        let alpha = 0.05;
        let expected: Vec<f64> = pixels
            .chunks(64)
            .map(|image| {
                let log_density: f64 = image
                    .iter()
                    .map(|&v| {
                        let y = (v as f64 + 0.5) / levels;
                        let p = alpha + (1.0 - 2.0 * alpha) * y;
                        let z = (p / (1.0 - p)).ln();
                        let log_normal = -0.5 * z * z - 0.5 * (2.0 * std::f64::consts::PI).ln();
                        log_normal + (1.0 - 2.0 * alpha).ln() - p.ln() - (1.0 - p).ln()
                    })
                    .sum();
                (-log_density + 64.0 * levels.ln()) / (64.0 * std::f64::consts::LN_2)
            })
            .collect();
        let device = Default::default();
        let x = Tensor::<Cpu, 1>::from_floats(pixels.as_slice(), &device).reshape([2, 1, 8, 8]);
        let untrained = config.init::<Cpu>(&device).expect("valid config");
        let bpd = untrained.bits_per_dim(x.clone(), Dequantization::Centre);
        assert_close(&values(bpd), &expected, 1e-4, "evaluation");
        let untrained = config.init::<CpuTrain>(&device).expect("valid config");
        let x = Tensor::<CpuTrain, 4>::from_data(x.into_data(), &device);
        let bpd = untrained.bits_per_dim(x, Dequantization::Centre);
        assert_close(&values(bpd), &expected, 1e-4, "training");
    }

    #[test]
    fn optimiser_steps_reduce_the_negative_log_likelihood() {
        let config = RealNvpConfig {
            height: 8,
            width: 8,
            preprocess: PreprocessConfig {
                levels: 17,
                ..Default::default()
            },
            ..small_config(1, true)
        };
        let device = Default::default();
        CpuTrain::seed(&device, 7);
        let mut m = config.init::<CpuTrain>(&device).expect("valid config");
        let x = uniform::<CpuTrain, 4>([16, 1, 8, 8], 0.0, 17.0, 8).floor();
        let mut optimizer = AdamConfig::new().init();
        let nll = |m: &RealNvp<CpuTrain>| {
            values(m.valid().bits_per_dim(
                Tensor::from_data(x.to_data(), &device),
                Dequantization::Centre,
            ))
            .iter()
            .sum::<f64>()
        };
        let before = nll(&m);
        for _ in 0..10 {
            let loss = m.bits_per_dim(x.clone(), Dequantization::Uniform).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            m = optimizer.step(1e-2, m, grads);
        }
        let after = nll(&m);
        assert!(after < before - 0.05 * 16.0, "bits/dim {before} -> {after}");
    }

    #[test]
    fn sampling_gives_finite_images_and_temperature_zero_decodes_the_zero_latent() {
        let config = RealNvpConfig {
            height: 8,
            width: 8,
            ..small_config(3, true)
        };
        let m = model::<Cpu>(&config, 5);
        let device = Default::default();
        let samples = m.sample(5, 0.7, &device);
        assert_eq!(samples.dims(), [5, 3, 8, 8]);
        assert!(values(samples).iter().all(|v| v.is_finite()));
        let cold = m.sample(2, 0.0, &device);
        let zero = m.decode(Latents {
            scales: config
                .latent_shapes()
                .into_iter()
                .map(|[c, h, w]| Tensor::zeros([2, c, h, w], &device))
                .collect(),
        });
        assert_eq!(values(cold), values(zero));
    }

    #[test]
    fn extrapolated_samples_have_the_requested_size_and_finite_pixels() {
        let m = model::<Cpu>(&small_config(3, true), 6);
        let device = Default::default();
        for (height, width) in [(8, 8), (40, 12)] {
            let latents = m.sample_latents_sized(2, height, width, 1.0, &device);
            let images = m.decode(latents.clone());
            assert_eq!(images.dims(), [2, 3, height, width]);
            assert!(values(images.clone()).iter().all(|v| v.is_finite()));
            let back = m.encode(images).flatten();
            assert!(max_abs_diff(back, latents.flatten()) < 1e-3);
        }
    }

    #[test]
    fn flatten_and_unflatten_are_inverse() {
        let m = model::<Cpu>(&small_config(3, false), 7);
        let y = uniform::<Cpu, 4>([3, 3, 4, 4], 0.0, 1.0, 8);
        let latents = m.encode(y);
        let flat = latents.flatten();
        assert_eq!(flat.dims(), [3, 48]);
        let back = Latents::unflatten(flat, &latents.shapes());
        for (a, b) in back.scales.into_iter().zip(latents.scales) {
            assert_eq!(values(a), values(b));
        }
    }

    #[test]
    fn marginal_and_given_bits_per_dim_come_from_one_pass_and_match_each() {
        let m = model::<Cpu>(&conditional_config(), 11);
        let x = uniform::<Cpu, 4>([5, 1, 4, 4], 0.0, 16.0, 12).int().float();
        let labels = Tensor::<Cpu, 1, Int>::from_ints([0, 2, 1, 2, 0], &Default::default());
        let (marginal, given) =
            m.bits_per_dim_marginal_and_given(x.clone(), labels.clone(), Dequantization::Centre);
        let expected_marginal = m.bits_per_dim(x.clone(), Dequantization::Centre);
        let expected_given = m.bits_per_dim_given(x, labels, Dequantization::Centre);
        assert_close(
            &values(marginal),
            &values(expected_marginal),
            1e-5,
            "marginal",
        );
        assert_close(
            &values(given),
            &values(expected_given),
            1e-5,
            "given the label",
        );
    }

    #[test]
    fn log_prob_given_is_the_bits_per_dim_given_in_nats() {
        let m = model::<Cpu>(&conditional_config(), 13);
        let x = uniform::<Cpu, 4>([4, 1, 4, 4], 0.0, 16.0, 14).int().float();
        let labels = Tensor::<Cpu, 1, Int>::from_ints([2, 0, 1, 1], &Default::default());
        let nats = values(m.log_prob_given(x.clone(), labels.clone(), Dequantization::Centre));
        let bits = values(m.bits_per_dim_given(x.clone(), labels, Dequantization::Centre));
        let dims = 16.0 * std::f64::consts::LN_2;
        let from_bits: Vec<f64> = bits.iter().map(|b| -b * dims).collect();
        assert_close(&nats, &from_bits, 1e-3, "nats from bits/dim");
        let marginal = values(m.log_prob(x, Dequantization::Centre));
        assert!(
            nats.iter()
                .zip(&marginal)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "the labels change the likelihood"
        );
    }

    fn conditional_config() -> RealNvpConfig {
        RealNvpConfig {
            classes: 3,
            ..small_config(1, true)
        }
    }

    fn labels(values: &[i64]) -> Tensor<Cpu, 1, Int> {
        Tensor::from_data(
            burn::tensor::TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    /// `log p(y | k)` computed by hand from the latents and the prior's parameters.
    #[test]
    fn class_conditional_log_density_is_the_class_gaussian_plus_the_log_det() {
        let m = model::<Cpu>(&conditional_config(), 9);
        let prior = m.class_prior.as_ref().expect("conditional");
        let y = uniform::<Cpu, 4>([4, 1, 4, 4], 0.05, 0.95, 10);
        let given = [2, 0, 1, 2];
        let actual = values(m.log_density_given(y.clone(), labels(&given)));
        let (latents, log_det) = m.encode_with_log_det(y);
        let z = values(latents.flatten());
        let (mean, log_std) = (values(prior.mean.val()), values(prior.log_std.val()));
        let dims = 16;
        let expected: Vec<f64> = values(log_det)
            .iter()
            .enumerate()
            .map(|(i, log_det)| {
                let k = given[i] as usize;
                let gaussian: f64 = (0..dims)
                    .map(|d| {
                        let (mu, ls) = (mean[k * dims + d], log_std[k * dims + d]);
                        let u = (z[i * dims + d] - mu) / ls.exp();
                        -0.5 * u * u - ls - 0.5 * (2.0 * std::f64::consts::PI).ln()
                    })
                    .sum();
                gaussian + log_det
            })
            .collect();
        assert_close(&actual, &expected, 1e-3, "log p(y | k)");
    }

    /// `log p(x) = logsumexp_k log p(x | k) + log p(k)` with `p(k) = 1/K`, each class
    /// scored on its own and summed on the host.
    #[test]
    fn class_conditional_likelihoods_sum_to_the_marginal() {
        let m = model::<Cpu>(&conditional_config(), 11);
        let x = uniform::<Cpu, 4>([5, 1, 4, 4], 0.0, 255.0, 12).floor();
        let y = m.preprocess().dequantize(x.clone(), Dequantization::Centre);
        let per_class: Vec<Vec<f64>> = (0..3)
            .map(|k| values(m.log_density_given(y.clone(), labels(&[k; 5]))))
            .collect();
        let marginal = values(m.log_density(y.clone()));
        for (i, &marginal) in marginal.iter().enumerate() {
            let terms: Vec<f64> = per_class.iter().map(|c| c[i] - 3f64.ln()).collect();
            let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum = max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln();
            assert!(
                (sum - marginal).abs() < 1e-3,
                "example {i}: {sum} vs {marginal}"
            );
        }
        // The classes differ, so the check is not of equal terms.
        assert!((per_class[0][0] - per_class[1][0]).abs() > 1e-2);
        // Scoring every class at once agrees with scoring one at a time.
        let all = values(m.class_log_probs(x, Dequantization::Centre));
        let offset = m.preprocess().discretisation_nats(16);
        for k in 0..3 {
            for i in 0..5 {
                assert!((all[i * 3 + k] + offset - per_class[k][i]).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn class_sampling_at_temperature_zero_decodes_the_class_mean() {
        let m = model::<Cpu>(&conditional_config(), 13);
        let prior = m.class_prior.as_ref().expect("conditional");
        let latents = m.sample_latents_given(labels(&[1, 2]), 0.0);
        let means = prior.mean.val().select(0, labels(&[1, 2]));
        assert_eq!(values(latents.flatten()), values(means));
        let warm = m.sample_latents_given(labels(&[1, 2]), 0.5);
        let images = m.decode(warm);
        assert_eq!(images.dims(), [2, 1, 4, 4]);
        assert!(values(images).iter().all(|v| v.is_finite()));
    }

    #[test]
    fn config_reads_from_toml_and_rejects_unknown_keys() {
        let config: RealNvpConfig = toml::from_str(
            "channels = 1\nheight = 28\nwidth = 28\nscales = 2\n[preprocess]\nlevels = 256\n",
        )
        .expect("valid TOML");
        assert_eq!(config.height, 28);
        assert_eq!(config.res_blocks, RealNvpConfig::default().res_blocks);
        let round_trip: RealNvpConfig =
            toml::from_str(&toml::to_string(&config).expect("serialisable")).expect("valid TOML");
        assert_eq!(round_trip, config);
        let err = toml::from_str::<RealNvpConfig>("chanels = 1\n").expect_err("unknown key");
        assert!(err.to_string().contains("chanels"), "{err}");
    }

    #[test]
    fn invalid_configs_name_their_key() {
        let bad = [
            (
                RealNvpConfig {
                    height: 30,
                    scales: 3,
                    ..Default::default()
                },
                "height",
            ),
            (
                RealNvpConfig {
                    width: 4,
                    scales: 3,
                    ..Default::default()
                },
                "width",
            ),
            (
                RealNvpConfig {
                    channels: 0,
                    ..Default::default()
                },
                "channels",
            ),
            (
                RealNvpConfig {
                    scales: 0,
                    ..Default::default()
                },
                "scales",
            ),
            (
                RealNvpConfig {
                    batch_norm_momentum: 0.0,
                    ..Default::default()
                },
                "batch_norm_momentum",
            ),
        ];
        for (config, key) in bad {
            let err = config
                .init::<Cpu>(&Default::default())
                .expect_err("invalid config accepted");
            assert!(err.to_string().contains(&format!("`{key}`")), "{err}");
        }
    }

    #[test]
    fn scale_penalty_sums_every_coupling() {
        let m = small_config(1, false)
            .init::<Cpu>(&Default::default())
            .expect("valid");
        // Scale 0: 3 checkerboard couplings change 1 channel, 3 channel-wise change 2;
        // scale 1: 4 checkerboard couplings change 2 channels. Scales start at one.
        assert_eq!(values(m.scale_penalty()), vec![3.0 + 6.0 + 8.0]);
    }

    /// `sum(bits/dim) / batch` backpropagated in training mode: every parameter's gradient.
    fn bits_per_dim_gradients(m: &RealNvp<CpuTrain>, x: &Tensor<Cpu, 4>) -> Vec<Vec<f64>> {
        let x = Tensor::<CpuTrain, 4>::from_data(x.to_data(), &Default::default());
        let loss = m.bits_per_dim(x, Dequantization::Centre).mean();
        let grads = GradientsParams::from_grads(loss.backward(), m);
        parameter_gradients(m, &grads)
    }

    /// Relative L2 distance of two sets of gradients, all parameters together.
    fn relative_distance(actual: &[Vec<f64>], expected: &[Vec<f64>]) -> f64 {
        let (mut diff, mut norm) = (0.0, 0.0);
        for (a, e) in actual.iter().flatten().zip(expected.iter().flatten()) {
            diff += (a - e).powi(2);
            norm += e.powi(2);
        }
        (diff / norm).sqrt()
    }

    /// With the s/t convolutions in bf16 or f16 the evaluation round trip stays exact, while
    /// the latents, bits/dim and gradients move by the type's rounding: they do move (the
    /// setting reaches every network) and stay close to f32.
    #[test]
    fn half_precision_convolutions_keep_the_round_trip_and_stay_close_to_f32() {
        let config = RealNvpConfig {
            height: 8,
            width: 8,
            skip_connections: true,
            ..small_config(3, true)
        };
        let device = Default::default();
        // Built once and cloned: tests running beside this one share the random seed.
        let exact = model::<Cpu>(&config, 2);
        let exact_train = model::<CpuTrain>(&config, 2);
        let y = uniform::<Cpu, 4>([4, 3, 8, 8], 0.0, 1.0, 1);
        let x = uniform::<Cpu, 4>([4, 3, 8, 8], 0.0, 256.0, 5).floor();
        let exact_latents = exact.encode(y.clone()).flatten();
        let exact_bpd = values(exact.bits_per_dim(x.clone(), Dequantization::Centre));
        let exact_grads = bits_per_dim_gradients(&exact_train, &x);
        assert!(exact_grads.len() > 20, "{} gradients", exact_grads.len());

        // Bits/dim within a few roundings of the type. The gradient of bits/dim is the
        // difference of a prior and a log-det term that nearly cancel, which makes it
        // about a hundred times more sensitive than bits/dim on this small model at random
        // weights: checked here for direction and size (a scale or sign error fails); the
        // digits of each convolution's gradients are checked in `precision`'s tests.
        for (precision, bpd_tol) in [(ConvPrecision::Bf16, 0.02), (ConvPrecision::F16, 0.004)] {
            let m = exact.clone().with_conv_precision(precision);
            let latents = m.encode(y.clone());
            let moved = max_abs_diff(latents.flatten(), exact_latents.clone());
            assert!(moved > 1e-6, "{precision}: the latents equal f32's");
            let err = max_abs_diff(m.decode(latents), y.clone());
            assert!(err < 1e-4, "{precision}: round-trip error {err}");

            // In training mode the flow batch norm's inverse hands each coupling back its
            // conditioning half with f32 rounding, which can move one half-precision
            // rounding of s or t by a unit: a round trip within the type's precision.
            let trained = exact_train.clone().with_conv_precision(precision);
            let y_train = Tensor::<CpuTrain, 4>::from_data(y.to_data(), &device);
            let err = max_abs_diff(trained.decode(trained.encode(y_train.clone())), y_train);
            assert!(err < 1e-2, "{precision}, training: round-trip error {err}");

            let bpd = values(m.bits_per_dim(x.clone(), Dequantization::Centre));
            assert_close(&bpd, &exact_bpd, bpd_tol, &format!("{precision} bits/dim"));
            let grads = bits_per_dim_gradients(&trained, &x);
            assert_eq!(
                grads.len(),
                exact_grads.len(),
                "{precision}: gradients missing"
            );
            assert!(grads.iter().flatten().all(|g| g.is_finite()), "{precision}");
            let distance = relative_distance(&grads, &exact_grads);
            assert!(
                distance > 0.0 && distance < 0.5,
                "{precision}: gradients {distance} from f32's"
            );
        }
    }
}
