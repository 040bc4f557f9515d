//! `realnvp eval`: bits/dim and negative log-likelihood of a run's model on a split.

use std::path::PathBuf;

use anyhow::Context;
use realnvp_core::{ConvPrecision, Flow};
use realnvp_train::config::DataConfig;
use realnvp_train::data::Splits;
use realnvp_train::kind::model_of_kind;
use realnvp_train::{evaluate, with_kind, Evaluation, FlowKind, KindVisitor, RunDir};

use super::SplitArg;
use crate::backend::{self, Device, Inference};

// The flags of `realnvp eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Only the first N examples of the split.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// The float type of the s/t networks' convolutions: f32, bf16 or f16 (the
    /// flow's arithmetic stays f32), to see what reduced precision costs.
    #[arg(long, default_value_t = ConvPrecision::F32, value_name = "TYPE")]
    conv_precision: ConvPrecision,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Evaluates and prints the figures (text, or one JSON object).
    pub fn run(self) -> anyhow::Result<()> {
        let run = RunDir::at(&self.run);
        let config = run.config()?;
        let device = backend::device();
        let (model, flow_config) = run.load_model::<Inference>(&device)?;
        let evaluate = Evaluate {
            args: &self,
            model,
            data: config.data,
            eval_batch_size: config.train.eval_batch_size,
            seed: config.train.seed,
            device,
        };
        let result = with_kind(flow_config, evaluate)?;
        if self.json {
            println!("{}", serde_json::to_string(&result)?);
            return Ok(());
        }
        eprintln!("backend: {}", backend::NAME);
        let precision = self.conv_precision;
        if precision != ConvPrecision::F32 {
            eprintln!("s/t convolutions in {precision}");
        }
        println!(
            "{:.4} bits/dim, {:.2} nats per example, {} examples",
            result.bits_per_dim, result.nll_nats, result.examples
        );
        if let Some(given) = result.given_label_bits_per_dim {
            println!("{given:.4} bits/dim given the label (the training objective)");
        }
        Ok(())
    }
}

/// The evaluation of a loaded model, once its kind is known.
struct Evaluate<'a> {
    args: &'a Args,
    model: Flow<Inference>,
    data: DataConfig,
    eval_batch_size: usize,
    seed: u64,
    device: Device,
}

impl KindVisitor for Evaluate<'_> {
    type Output = anyhow::Result<Evaluation>;

    fn visit<K: FlowKind>(self, _settings: K::Settings) -> Self::Output {
        let model = model_of_kind::<K, Inference>(self.model)?;
        let model = K::with_conv_precision(model, self.args.conv_precision, &self.device)
            .context("--conv-precision")?;
        let data = K::data(Splits::load(&self.data, self.seed)?)?;
        Ok(evaluate::<K, Inference>(
            &model,
            &data,
            self.args.split.into(),
            self.eval_batch_size,
            self.args.limit,
            self.seed,
            &self.device,
        )?)
    }
}
