//! `realnvp score`: per-input log-likelihoods.

use std::path::Path;

use realnvp_core::{Flow, FlowBatch, FlowConfig};
use realnvp_data::folder::{FolderPreset, ImageFolder, ImageFolderConfig};
use realnvp_data::loader::VectorArray;
use realnvp_data::tabular::{read_csv, Standardizer};
use realnvp_train::config::DataConfig;
use realnvp_train::{load_run_model, run_config};

use crate::{backend, batch_bits_per_dim, Inference};

/// One scored input.
struct Record {
    input: String,
    log_likelihood_nats: f64,
    bits_per_dim: f64,
}

pub fn score_command(run: &Path, input: &Path, json: bool, csv: bool) -> Result<(), String> {
    let device = backend::device();
    let (model, config) = load_run_model::<Inference>(run, &device).map_err(|e| e.to_string())?;
    let records = match (&model, &config) {
        (Flow::Image(_), FlowConfig::Image(c)) => score_images(&model, c, input)?,
        (Flow::Vector(_), FlowConfig::Vector(c)) => score_rows(&model, c.dims, run, input)?,
        _ => return Err("the run's model and configuration disagree".into()),
    };
    if csv {
        println!("input,log_likelihood_nats,bits_per_dim");
    }
    for r in records {
        if json {
            println!(
                "{}",
                serde_json::json!({"input": r.input, "log_likelihood_nats": r.log_likelihood_nats, "bits_per_dim": r.bits_per_dim})
            );
        } else if csv {
            println!(
                "\"{}\",{},{}",
                r.input.replace('"', "\"\""),
                r.log_likelihood_nats,
                r.bits_per_dim
            );
        } else {
            println!(
                "{}\t{:.4} nats\t{:.4} bits/dim",
                r.input, r.log_likelihood_nats, r.bits_per_dim
            );
        }
    }
    Ok(())
}

/// Images of a file or folder, at the model's size; 8-bit values are mapped to the model's
/// levels.
fn score_images(
    model: &Flow<Inference>,
    config: &realnvp_core::RealNvpConfig,
    input: &Path,
) -> Result<Vec<Record>, String> {
    let (dir, only) = if input.is_file() {
        (
            input.parent().unwrap_or(Path::new(".")).to_path_buf(),
            Some(input.to_path_buf()),
        )
    } else {
        (input.to_path_buf(), None)
    };
    let folder = ImageFolder::scan(ImageFolderConfig {
        path: dir,
        preset: FolderPreset::Native,
        channels: config.channels,
    })
    .map_err(|e| e.to_string())?;
    let indices: Vec<usize> = match &only {
        Some(file) => vec![folder
            .files()
            .iter()
            .position(|f| f == file)
            .ok_or_else(|| format!("{}: not a PNG or JPEG image", file.display()))?],
        None => (0..folder.len()).collect(),
    };
    let expected = [config.channels, config.height, config.width];
    let levels = config.preprocess.levels;
    let dims = config.dims() as f64;
    let device = backend::device();
    let mut records = Vec::new();
    for chunk in indices.chunks(64) {
        let mut batch = folder
            .decode_batch(chunk, None, &[])
            .map_err(|e| e.to_string())?;
        if batch.shape != expected {
            return Err(format!(
                "{}: images are {}x{}x{}, the model expects {}x{}x{}",
                input.display(),
                batch.shape[0],
                batch.shape[1],
                batch.shape[2],
                expected[0],
                expected[1],
                expected[2]
            ));
        }
        if levels != 256 {
            for p in batch.pixels.iter_mut() {
                *p = ((*p as f64) * (levels - 1) as f64 / 255.0).round() as u8;
            }
        }
        let bpd = batch_bits_per_dim(model, FlowBatch::Images(batch.to_tensor(&device)));
        for (k, &i) in chunk.iter().enumerate() {
            records.push(Record {
                input: folder.files()[i].display().to_string(),
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
