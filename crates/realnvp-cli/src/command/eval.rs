//! `realnvp eval`: bits/dim and negative log-likelihood of a run's model on a split.

use std::path::PathBuf;

use anyhow::Context;
use realnvp_core::ConvPrecision;
use realnvp_train::data::Splits;
use realnvp_train::evaluate;
use realnvp_train::RunDir;

use super::SplitArg;
use crate::backend::{self, Inference};

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
        let (model, _) = run.load_model::<Inference>(&device)?;
        let precision = self.conv_precision;
        let model = model
            .with_conv_precision(precision, &device)
            .context("--conv-precision")?;
        let splits = Splits::load(&config.data, config.train.seed)?;
        let result = evaluate(
            &model,
            &splits,
            self.split.into(),
            config.train.eval_batch_size,
            self.limit,
            config.train.seed,
            &device,
        )?;
        if self.json {
            println!("{}", serde_json::to_string(&result)?);
            return Ok(());
        }
        eprintln!("backend: {}", backend::NAME);
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
