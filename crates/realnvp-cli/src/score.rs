//! `realnvp score`: per-input log-likelihoods.

use std::path::Path;

use realnvp_core::{Flow, FlowBatch, FlowConfig};
use realnvp_data::loader::VectorArray;
use realnvp_data::tabular::{read_csv, Standardizer};
use realnvp_train::config::DataConfig;
use realnvp_train::{load_run_model, run_config};

use realnvp_train::data::Splits;
use realnvp_train::plot::write_histograms;

use crate::inputs::{read_images, split_examples};
use crate::{backend, batch_bits_per_dim, Inference};

/// One scored input.
struct Record {
    input: String,
    log_likelihood_nats: f64,
    bits_per_dim: f64,
}

/// What `realnvp score` is asked.
pub struct ScoreArgs<'a> {
    /// The run directory.
    pub run: &'a Path,
    /// What to score.
    pub input: &'a Path,
    /// A second input to compare with.
    pub compare: Option<&'a Path>,
    /// Where to draw the histograms of both.
    pub plot: Option<&'a Path>,
    /// JSON lines.
    pub json: bool,
    /// CSV.
    pub csv: bool,
}

pub fn score_command(args: ScoreArgs) -> Result<(), String> {
    let ScoreArgs {
        run,
        input,
        compare,
        plot,
        json,
        csv,
    } = args;
    let device = backend::device();
    let (model, config) = load_run_model::<Inference>(run, &device).map_err(|e| e.to_string())?;
    let score = |input: &Path| match (&model, &config) {
        (Flow::Image(_), FlowConfig::Image(c)) => score_images(&model, run, c, input),
        (Flow::Vector(_), FlowConfig::Vector(c)) => score_rows(&model, c.dims, run, input),
        _ => Err("the run's model and configuration disagree".into()),
    };
    let records = score(input)?;
    let others = compare.map(score).transpose()?;
    if let (Some(plot), Some(other), Some(others)) = (plot, compare, &others) {
        let a: Vec<f64> = records.iter().map(|r| r.bits_per_dim).collect();
        let b: Vec<f64> = others.iter().map(|r| r.bits_per_dim).collect();
        let (name_a, name_b) = (input.display().to_string(), other.display().to_string());
        let title = format!("bits/dim under the model of {}", run.display());
        write_histograms(plot, &title, &[(&name_a, &a), (&name_b, &b)], 60)
            .map_err(|e| e.to_string())?;
    }
    if let (Some(other), Some(others)) = (compare, &others) {
        summarise(input, &records, other, others, plot);
        return Ok(());
    }
    let mut table = csv.then(|| csv::Writer::from_writer(std::io::stdout()));
    if let Some(table) = table.as_mut() {
        table
            .write_record(["input", "log_likelihood_nats", "bits_per_dim"])
            .map_err(|e| format!("writing CSV: {e}"))?;
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
                .map_err(|e| format!("writing CSV: {e}"))?;
        } else {
            println!(
                "{}\t{:.4} nats\t{:.4} bits/dim",
                r.input, r.log_likelihood_nats, r.bits_per_dim
            );
        }
    }
    if let Some(mut table) = table {
        table.flush().map_err(|e| format!("writing CSV: {e}"))?;
    }
    Ok(())
}

/// Images of a file or folder, or a split of the run's data set (`data:test`,
/// `data:train`), at the model's size; 8-bit values are mapped to the model's levels.
fn score_images(
    model: &Flow<Inference>,
    run: &Path,
    config: &realnvp_core::RealNvpConfig,
    input: &Path,
) -> Result<Vec<Record>, String> {
    let images = match input.to_str() {
        Some("data:test") | Some("data:train") => {
            let run_config = run_config(run).map_err(|e| e.to_string())?;
            let splits =
                Splits::load(&run_config.data, run_config.train.seed).map_err(|e| e.to_string())?;
            let Splits::Images { train, test, .. } = splits else {
                return Err("the run's data set holds no images".into());
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
        let bpd = batch_bits_per_dim(model, FlowBatch::Images(batch.to_tensor(&device)));
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
    model: &Flow<Inference>,
    dims: usize,
    run: &Path,
    input: &Path,
) -> Result<Vec<Record>, String> {
    let table = read_csv(input).map_err(|e| e.to_string())?;
    if table.columns.len() != dims {
        return Err(format!(
            "{}: {} columns, the model expects {dims}",
            input.display(),
            table.columns.len()
        ));
    }
    let config = run_config(run).map_err(|e| e.to_string())?;
    let (table, log_jacobian) = match &config.data {
        DataConfig::Csv { train, .. } => {
            let s = Standardizer::fit(&read_csv(train).map_err(|e| e.to_string())?);
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
    let bpd = batch_bits_per_dim(model, FlowBatch::Vectors(rows.to_tensor(&device)));
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
