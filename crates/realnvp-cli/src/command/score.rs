//! `realnvp score`: per-input log-likelihoods, or two inputs compared by bits/dim.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use realnvp_core::{Dequantization, Flow, RealNvp, VectorRealNvp};
use realnvp_data::loader::VectorArray;
use realnvp_data::tabular::{read_csv, Standardizer};
use realnvp_train::config::DataConfig;
use realnvp_train::data::Splits;
use realnvp_train::kind::ImageBatch;
use realnvp_train::output::plot::write_histograms;
use realnvp_train::{FlowKind, Images, RunDir, Vectors};

use crate::backend::{self, Inference};
use crate::inputs::{read_images, split_examples};

// The flags of `realnvp score`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// An image, a folder of images, a CSV file, or `data:test` / `data:train` for a
    /// split of the run's own data set.
    #[arg(long)]
    input: PathBuf,
    /// A second input of the same kinds to compare with (out-of-distribution checks):
    /// prints both distributions and the AUROC instead of per-input lines.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// With --compare: write overlaid bits/dim histograms to this PNG.
    #[arg(long, requires = "compare")]
    plot: Option<PathBuf>,
    /// One JSON object per line.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV with a header.
    #[arg(long)]
    csv: bool,
    /// Seed of the dequantisation noise: the inputs, in order, draw one stream of noise,
    /// so a score does not depend on how many inputs are scored together (the Python
    /// package's `seed=` gives the same numbers).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// One scored input.
struct Record {
    input: String,
    log_likelihood_nats: f64,
    bits_per_dim: f64,
}

impl Args {
    /// Scores `--input` (and `--compare`) and prints one line per input, or the
    /// comparison.
    pub fn run(self) -> anyhow::Result<()> {
        let run = RunDir::at(&self.run);
        score(
            &run,
            &self.input,
            self.compare.as_deref(),
            self.plot.as_deref(),
            self.json,
            self.csv,
            self.seed,
        )
    }
}

/// Scores `input` (and `compare`) under the model of `run` and prints the result: JSON
/// lines, CSV, text lines, or the comparison of both.
fn score(
    run: &RunDir,
    input: &Path,
    compare: Option<&Path>,
    plot: Option<&Path>,
    json: bool,
    csv: bool,
    seed: u64,
) -> anyhow::Result<()> {
    let device = backend::device();
    let (model, _) = run.load_model::<Inference>(&device)?;
    // Images come from files or the run's data set, vectors from CSV rows.
    let score = |input: &Path| match &model {
        Flow::Image(model) => score_images(model, run, input, seed),
        Flow::Vector(model) => score_rows(model, run, input),
    };
    let records = score(input)?;
    let others = compare.map(score).transpose()?;
    if let (Some(plot), Some(other), Some(others)) = (plot, compare, &others) {
        let a: Vec<f64> = records.iter().map(|r| r.bits_per_dim).collect();
        let b: Vec<f64> = others.iter().map(|r| r.bits_per_dim).collect();
        let (name_a, name_b) = (input.display().to_string(), other.display().to_string());
        let title = format!("bits/dim under the model of {}", run.path().display());
        write_histograms(plot, &title, &[(&name_a, &a), (&name_b, &b)], 60)?;
    }
    if let (Some(other), Some(others)) = (compare, &others) {
        summarise(input, &records, other, others, plot);
        return Ok(());
    }
    let mut table = csv.then(|| csv::Writer::from_writer(std::io::stdout()));
    if let Some(table) = table.as_mut() {
        table
            .write_record(["input", "log_likelihood_nats", "bits_per_dim"])
            .context("writing CSV")?;
    }
    for r in records {
        if json {
            println!(
                "{}",
                serde_json::json!({"input": r.input, "log_likelihood_nats": r.log_likelihood_nats, "bits_per_dim": r.bits_per_dim})
            );
        } else if let Some(table) = table.as_mut() {
            table
                .write_record([
                    r.input.as_str(),
                    &r.log_likelihood_nats.to_string(),
                    &r.bits_per_dim.to_string(),
                ])
                .context("writing CSV")?;
        } else {
            println!(
                "{}\t{:.4} nats\t{:.4} bits/dim",
                r.input, r.log_likelihood_nats, r.bits_per_dim
            );
        }
    }
    if let Some(mut table) = table {
        table.flush().context("writing CSV")?;
    }
    Ok(())
}

/// Images of a file or folder, or a split of the run's data set (`data:test`,
/// `data:train`), at the model's size; 8-bit values are mapped to the model's levels.
fn score_images(
    model: &RealNvp<Inference>,
    run: &RunDir,
    input: &Path,
    seed: u64,
) -> anyhow::Result<Vec<Record>> {
    let config = model.config();
    let images = match input.to_str() {
        Some("data:test") | Some("data:train") => {
            let run_config = run.config()?;
            let splits = Splits::load(&run_config.data, run_config.train.seed)?;
            let Splits::Images { train, test, .. } = splits else {
                bail!("the run's data set holds no images");
            };
            let split = if input.to_str() == Some("data:test") {
                test
            } else {
                train
            };
            let all: Vec<usize> = (0..split.len()).collect();
            let mut images = split_examples(&split, &all)?;
            let prefix = input.to_string_lossy().into_owned();
            for (i, name) in images.names.iter_mut().enumerate() {
                *name = format!("{prefix}:{i}");
            }
            images
        }
        _ => read_images(input, config)?,
    };
    let dims = config.dims() as f64;
    let device = backend::device();
    let mut records = Vec::new();
    let indices: Vec<usize> = (0..images.array.len()).collect();
    for chunk in indices.chunks(64) {
        let batch = images.array.select(chunk);
        let pixels = batch.to_tensor(&device);
        let noise = Dequantization::SeededAt {
            seed,
            first_example: chunk[0] as u64,
        };
        let bpd = bits_per_dim::<Images>(
            model,
            ImageBatch {
                pixels,
                labels: None,
            },
            noise,
        );
        for (k, &i) in chunk.iter().enumerate() {
            records.push(Record {
                input: images.names[i].clone(),
                log_likelihood_nats: -bpd[k] * dims * std::f64::consts::LN_2,
                bits_per_dim: bpd[k],
            });
        }
    }
    Ok(records)
}

/// Rows of a CSV file; for runs trained on CSV data the training standardisation is applied
/// and its Jacobian counted, so the density is that of the raw rows.
fn score_rows(
    model: &VectorRealNvp<Inference>,
    run: &RunDir,
    input: &Path,
) -> anyhow::Result<Vec<Record>> {
    let dims = model.dims();
    let table = read_csv(input)?;
    if table.columns.len() != dims {
        bail!(
            "{}: {} columns, the model expects {dims}",
            input.display(),
            table.columns.len()
        );
    }
    let config = run.config()?;
    let (table, log_jacobian) = match &config.data {
        DataConfig::Csv { train, .. } => {
            let s = Standardizer::fit(&read_csv(train)?);
            let log_jacobian: f64 = s.std.iter().map(|v| -v.ln()).sum();
            (s.apply(&table), log_jacobian)
        }
        _ => (table, 0.0),
    };
    let device = backend::device();
    let rows = VectorArray {
        dims,
        values: table.values.iter().map(|&v| v as f32).collect(),
    };
    // Vectors are continuous: there is no dequantisation noise.
    let bpd = bits_per_dim::<Vectors>(model, rows.to_tensor(&device), Dequantization::Centre);
    Ok(bpd
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let log_likelihood_nats = -b * dims as f64 * std::f64::consts::LN_2 + log_jacobian;
            Record {
                input: format!("row {}", i + 1),
                log_likelihood_nats,
                bits_per_dim: -log_likelihood_nats / (dims as f64 * std::f64::consts::LN_2),
            }
        })
        .collect())
}

/// Prints the bits/dim distribution of both inputs and the AUROC of telling them apart by
/// bits/dim (0.5: indistinguishable; 1: every `other` scores worse than every `input`).
fn summarise(
    input: &Path,
    records: &[Record],
    other: &Path,
    others: &[Record],
    plot: Option<&Path>,
) {
    let stats = |r: &[Record]| {
        let mut v: Vec<f64> = r.iter().map(|r| r.bits_per_dim).collect();
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        (
            v.len(),
            mean,
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
        )
    };
    for (name, r) in [(input, records), (other, others)] {
        let (n, mean, median) = stats(r);
        println!(
            "{}: {n} inputs, mean {mean:.4} bits/dim, median {median:.4}",
            name.display()
        );
    }
    let mut wins = 0.0;
    for a in records {
        for b in others {
            wins += match b.bits_per_dim.total_cmp(&a.bits_per_dim) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    let pairs = (records.len() * others.len()).max(1) as f64;
    println!(
        "AUROC of bits/dim separating {} (higher) from {}: {:.4}",
        other.display(),
        input.display(),
        wins / pairs
    );
    if let Some(plot) = plot {
        println!(
            "histograms: {} (blue: {}, red: {})",
            plot.display(),
            input.display(),
            other.display()
        );
    }
}

/// Bits/dim of a batch (images: marginal).
fn bits_per_dim<K: FlowKind>(
    model: &K::Model<Inference>,
    batch: K::Batch<Inference>,
    dequantization: Dequantization,
) -> Vec<f64> {
    K::bits_per_dim(model, batch, dequantization)
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_default()
}
