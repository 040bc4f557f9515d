//! Throughput of one model on one backend: training steps (forward, backward and Adam
//! update), bits/dim evaluation and sampling, in images per second, and the process's
//! peak resident memory. The same figures as the PyTorch reference's `speed` command
//! (`torch_realnvp.py`), for side-by-side tables.

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use realnvp_core::{
    AutodiffConvBackend, ConvPrecision, Dequantization, RealNvp, RealNvpConfig, PAPER_SCALE_PENALTY,
};
use serde::Serialize;

/// The benchmarked architectures, those of the PyTorch reference's comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchModel {
    /// 1x8x8, 2 scales, 2 residual blocks, 16 features (the digits default).
    Digits,
    /// 1x28x28, 2 scales, 4 residual blocks, 32 features.
    FashionMnist,
    /// 3x32x32, 2 scales, 8 residual blocks, 64 features (the paper's CIFAR-10 model).
    Cifar10,
    /// 3x64x64, 5 scales, 2 residual blocks, 32 features, skip connections (the paper's
    /// ImageNet 64 model, `configs/imagenet64.toml`): for memory, not in the defaults.
    Imagenet64,
}

impl BenchModel {
    /// Every benchmarked architecture.
    pub const ALL: [BenchModel; 4] = [
        BenchModel::Digits,
        BenchModel::FashionMnist,
        BenchModel::Cifar10,
        BenchModel::Imagenet64,
    ];

    /// Name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BenchModel::Digits => "digits",
            BenchModel::FashionMnist => "fashion-mnist",
            BenchModel::Cifar10 => "cifar10",
            BenchModel::Imagenet64 => "imagenet64",
        }
    }

    /// The model configuration (256 levels, flow-path batch norm).
    pub fn config(self) -> RealNvpConfig {
        let (channels, side, scales, res_blocks, features) = match self {
            BenchModel::Digits => (1, 8, 2, 2, 16),
            BenchModel::FashionMnist => (1, 28, 2, 4, 32),
            BenchModel::Cifar10 => (3, 32, 2, 8, 64),
            BenchModel::Imagenet64 => (3, 64, 5, 2, 32),
        };
        RealNvpConfig {
            channels,
            height: side,
            width: side,
            scales,
            res_blocks,
            features,
            skip_connections: self == BenchModel::Imagenet64,
            ..Default::default()
        }
    }
}

/// One of the measured phases of [`benchmark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Training steps: forward, backward and Adam update.
    Train,
    /// Bits/dim evaluation without autodiff.
    Eval,
    /// Sampling without autodiff.
    Sample,
}

impl Phase {
    /// `[train, eval, sample]`: whether each phase is among `chosen`.
    pub fn set(chosen: &[Phase]) -> [bool; 3] {
        [Phase::Train, Phase::Eval, Phase::Sample].map(|phase| chosen.contains(&phase))
    }
}

/// How to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchSettings {
    /// Images per batch.
    pub batch: usize,
    /// Whether to measure `[train, eval, sample]`; a phase left out is reported as null
    /// (evaluation and sampling then run on the untrained model, at the same cost).
    pub phases: [bool; 3],
    /// Untimed iterations first (allocation, autotuning, shader compilation).
    pub warmup: usize,
    /// Timed repetitions; the median is reported.
    pub repeats: usize,
    /// Iterations per repetition.
    pub iterations: usize,
    /// Give the s/t networks the paper's skip connections (`model.skip_connections`; the
    /// PyTorch reference has none, so compare with it only without them).
    pub skip_connections: bool,
    /// Recorded in the result: the caller runs [`benchmark`] on a checkpointing autodiff
    /// backend (`Autodiff<_, BalancedCheckpointing>`, as `train.gradient_checkpointing`).
    pub gradient_checkpointing: bool,
    /// The float type of the s/t networks' convolutions (`train.conv_precision`); the
    /// caller checks that the backend supports it.
    pub conv_precision: ConvPrecision,
}

/// One benchmark result: a JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Always `realnvp-rs` (the PyTorch reference writes `pytorch`).
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    /// The backend compiled in.
    pub backend: String,
    /// The architecture's name.
    pub model: &'static str,
    /// `[channels, height, width]`.
    pub shape: [usize; 3],
    /// Scales, residual blocks, features.
    pub scales: usize,
    /// Residual blocks per coupling network.
    pub blocks: usize,
    /// Feature maps at the first scale.
    pub features: usize,
    /// Whether the s/t networks had skip connections.
    pub skip_connections: bool,
    /// Whether training ran with gradient checkpointing.
    pub gradient_checkpointing: bool,
    /// The float type of the s/t networks' convolutions.
    pub conv_precision: ConvPrecision,
    /// Images per batch.
    pub batch: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Training images per second (median over repetitions).
    pub train_img_s: Option<f64>,
    /// Bits/dim evaluation images per second (median).
    pub eval_img_s: Option<f64>,
    /// Sampling images per second (median).
    pub sample_img_s: Option<f64>,
    /// Peak resident memory of the process so far, MiB (host memory; on a GPU backend the
    /// device memory is not included).
    pub peak_rss_mib: Option<f64>,
    /// Timed repetitions behind each median.
    pub repeats: usize,
}

/// Measures `model` on backend `B` (an autodiff backend; evaluation and sampling run on
/// its inner backend, as in the trainer).
pub fn benchmark<B: AutodiffConvBackend>(
    model: BenchModel,
    settings: BenchSettings,
    backend: &str,
    device: &B::Device,
) -> BenchResult {
    let base = model.config();
    let config = RealNvpConfig {
        skip_connections: settings.skip_connections || base.skip_connections,
        ..base
    };
    B::seed(device, 0);
    let mut flow: RealNvp<B> = config
        .init(device)
        .expect("benchmark configs are valid")
        .with_conv_precision(settings.conv_precision);
    let params = flow.num_params();
    let shape = [settings.batch, config.channels, config.height, config.width];
    let pixels = Tensor::<B, 4>::random(shape, Distribution::Uniform(0.0, 256.0), device).floor();
    let mut optimizer = AdamConfig::new().init::<B, RealNvp<B>>();

    let mut train_step = |flow: RealNvp<B>| {
        let loss = flow
            .bits_per_dim(pixels.clone(), Dequantization::Uniform)
            .mean()
            + flow.scale_penalty().mul_scalar(PAPER_SCALE_PENALTY);
        let grads = GradientsParams::from_grads(loss.backward(), &flow);
        let flow = optimizer.step(1e-3, flow, grads);
        // Wait for the device: read one parameter back.
        sync(&flow);
        flow
    };
    let [train, eval, sample] = settings.phases;
    let train_img_s = train.then(|| {
        warm_then_measure(settings, || {
            flow = train_step(flow.clone());
        })
    });

    let eval_flow: RealNvp<B::InnerBackend> = flow.valid();
    let inner_pixels = pixels.inner();
    let evaluate = || {
        let bpd = eval_flow.bits_per_dim(inner_pixels.clone(), Dequantization::Uniform);
        bpd.into_data();
    };
    let eval_img_s = eval.then(|| warm_then_measure(settings, evaluate));

    let inner_device = inner_pixels.device();
    let draw = || {
        eval_flow
            .sample(settings.batch, 1.0, &inner_device)
            .into_data();
    };
    let sample_img_s = sample.then(|| warm_then_measure(settings, draw));

    BenchResult {
        implementation: "realnvp-rs",
        backend: backend.to_string(),
        model: model.name(),
        shape: [config.channels, config.height, config.width],
        scales: config.scales,
        blocks: config.res_blocks,
        features: config.features,
        skip_connections: config.skip_connections,
        gradient_checkpointing: settings.gradient_checkpointing,
        conv_precision: settings.conv_precision,
        batch: settings.batch,
        params,
        train_img_s,
        eval_img_s,
        sample_img_s,
        peak_rss_mib: peak_rss_mib(),
        repeats: settings.repeats,
    }
}

/// [`median_rate`] after `settings.warmup` untimed iterations.
fn warm_then_measure(settings: BenchSettings, mut iteration: impl FnMut()) -> f64 {
    for _ in 0..settings.warmup {
        iteration();
    }
    median_rate(settings, iteration)
}

/// Images per second of `iteration` (one batch each), median over the repetitions.
fn median_rate(settings: BenchSettings, mut iteration: impl FnMut()) -> f64 {
    let mut rates: Vec<f64> = (0..settings.repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..settings.iterations.max(1) {
                iteration();
            }
            (settings.batch * settings.iterations.max(1)) as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let mid = rates.len() / 2;
    if rates.len() % 2 == 1 {
        rates[mid]
    } else {
        0.5 * (rates[mid - 1] + rates[mid])
    }
}

/// Blocks until the device has finished the work queued for `flow`'s parameters.
fn sync<B: Backend>(flow: &RealNvp<B>) {
    flow.scales[0].checkerboard[0]
        .coupling
        .scale
        .val()
        .into_data();
}

/// The process's peak resident set size (`VmHWM`), MiB; `None` off Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
