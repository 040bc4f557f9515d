//! `realnvp classify`: Bayes' rule with a class-conditional model, and its accuracy.

use std::path::PathBuf;

use realnvp_train::data::Splits;
use realnvp_train::evaluate::not_conditional;
use realnvp_train::{FlowKind, Images, RunDir};

use super::SplitArg;
use crate::backend::{self, Inference};

// The flags of `realnvp classify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory (trained with `model.conditional = true`).
    #[arg(long)]
    run: PathBuf,
    /// Which split.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Classify only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object (accuracy, examples, confusion matrix) instead of text.
    #[arg(long)]
    json: bool,
}

impl Args {
    /// Classifies the split and prints the confusion matrix and accuracy.
    pub fn run(self) -> anyhow::Result<()> {
        let run = RunDir::at(&self.run);
        let config = run.config()?;
        let device = backend::device();
        let (model, _) = run.load_model::<Inference>(&device)?;
        let model = Images::from_flow(model).ok_or_else(not_conditional)?;
        let data = Images::data(Splits::load(&config.data, config.train.seed)?)?;
        let result = realnvp_train::classify(
            &model,
            &data,
            self.split.into(),
            config.train.eval_batch_size,
            self.limit,
            &device,
        )?;
        if self.json {
            println!("{}", serde_json::to_string(&result)?);
            return Ok(());
        }
        eprintln!("backend: {}", backend::NAME);
        println!("confusion matrix (rows: label, columns: predicted class):");
        for row in &result.confusion {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:5}")).collect();
            println!("{}", cells.join(" "));
        }
        println!(
            "accuracy {:.4} on {} examples",
            result.accuracy, result.examples
        );
        Ok(())
    }
}
