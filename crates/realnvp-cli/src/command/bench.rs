//! `realnvp bench`: training, evaluation and sampling throughput and peak memory of the
//! benchmark architectures on the backend compiled in (`cargo xtask bench` runs it).

use anyhow::bail;
use realnvp_core::ConvPrecision;

use crate::backend::{self, Checkpointed, Inference, Training};

mod measure;

use measure::{benchmark, BenchModel, BenchSettings, Phase};

// The flags of `realnvp bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architectures: digits, fashion-mnist, cifar10, imagenet64 (comma-separated;
    /// imagenet64, the paper's ImageNet 64 model, is for memory figures).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "digits,fashion-mnist,cifar10"
    )]
    models: Vec<String>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// What to measure, comma-separated: train, eval, sample (all three by default); one
    /// phase alone is what `perf record` should see when profiling it. The others are
    /// reported as null.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "train,eval,sample"
    )]
    phases: Vec<Phase>,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Iterations per repetition.
    #[arg(long, default_value_t = 2)]
    iterations: usize,
    /// Give the s/t networks the paper's skip connections (the PyTorch reference has
    /// none: compare with it only without them).
    #[arg(long)]
    skip_connections: bool,
    /// Train with Burn's gradient checkpointing (as `train.gradient_checkpointing`):
    /// compare peak memory and speed with and without it.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// The float type of the s/t networks' convolutions (as `train.conv_precision`):
    /// f32, bf16 or f16.
    #[arg(long, default_value_t = ConvPrecision::F32, value_name = "TYPE")]
    conv_precision: ConvPrecision,
}

impl Args {
    /// Measures each chosen architecture and prints one JSON line per architecture.
    pub fn run(self) -> anyhow::Result<()> {
        let settings = BenchSettings {
            batch: self.batch,
            phases: Phase::set(&self.phases),
            warmup: self.warmup,
            repeats: self.repeats,
            iterations: self.iterations,
            skip_connections: self.skip_connections,
            gradient_checkpointing: self.gradient_checkpointing,
            conv_precision: self.conv_precision,
        };
        if settings.batch == 0 || settings.repeats == 0 || settings.iterations == 0 {
            bail!("--batch, --repeats and --iterations must be positive");
        }
        let chosen = self
            .models
            .iter()
            .map(|name| chosen_model(name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        eprintln!("backend: {}", backend::NAME);
        let device = backend::device();
        settings
            .conv_precision
            .check::<Inference>(&device)
            .map_err(|e| anyhow::Error::new(e).context("--conv-precision"))?;
        for model in chosen {
            eprintln!("benchmarking {} ...", model.name());
            let result = if settings.gradient_checkpointing {
                benchmark::<Checkpointed>(model, settings, backend::NAME, &device)
            } else {
                benchmark::<Training>(model, settings, backend::NAME, &device)
            };
            println!("{}", serde_json::to_string(&result)?);
        }
        Ok(())
    }
}

/// The architecture called `name` on the command line.
fn chosen_model(name: &str) -> anyhow::Result<BenchModel> {
    match BenchModel::ALL.into_iter().find(|m| m.name() == name) {
        Some(model) => Ok(model),
        None => {
            let known: Vec<&str> = BenchModel::ALL.iter().map(|m| m.name()).collect();
            bail!(
                "--models: unknown model `{name}` (known: {})",
                known.join(", ")
            )
        }
    }
}
