//! What the latent-space commands share: the image model of a run, exact encoding and
//! decoding in chunks, grids of decoded images and their size limit, and the sample grid
//! with one row per temperature.

use std::path::Path;

use anyhow::bail;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use realnvp_core::{Dequantization, Flow, Latents, RealNvp};
use realnvp_data::ImageArray;
use realnvp_train::output::grid::{write_level_grid, MAX_GRID_IMAGES};
use realnvp_train::RunDir;

use crate::backend::{self, Inference};

/// Examples per forward or inverse pass.
const CHUNK: usize = 64;

/// The image model of a run, for inference.
pub fn image_model(run: &RunDir) -> anyhow::Result<RealNvp<Inference>> {
    let (model, _) = run.load_model::<Inference>(&backend::device())?;
    match model {
        Flow::Image(model) => Ok(model),
        Flow::Vector(_) => bail!(
            "{}: a vector model; this command works on image models",
            run.path().display()
        ),
    }
}

/// Latents of integer images, pixels dequantised to the centres of their bins, so that
/// decoding and rounding gives the images back exactly.
pub fn encode_images(model: &RealNvp<Inference>, images: &ImageArray) -> Latents<Inference> {
    let device = backend::device();
    let indices: Vec<usize> = (0..images.len()).collect();
    let parts: Vec<Latents<Inference>> = indices
        .chunks(CHUNK)
        .map(|chunk| {
            let x = images.select(chunk).to_tensor::<Inference>(&device);
            let y = model.preprocess().dequantize(x, Dequantization::Centre);
            model.encode(y)
        })
        .collect();
    concat(parts)
}

/// Decodes latents and rounds to pixel levels: `[n, c, h, w]` values `0..levels`.
pub fn decode_to_levels(
    model: &RealNvp<Inference>,
    latents: Latents<Inference>,
) -> Tensor<Inference, 4> {
    model
        .preprocess()
        .quantize(model.decode_in_chunks(latents, CHUNK))
}

/// Concatenates latents along the batch.
fn concat(parts: Vec<Latents<Inference>>) -> Latents<Inference> {
    let scales = parts[0].scales.len();
    Latents {
        scales: (0..scales)
            .map(|i| Tensor::cat(parts.iter().map(|p| p.scales[i].clone()).collect(), 0))
            .collect(),
    }
}

/// Pixel levels `[n, c, h, w]` as bytes.
pub fn to_bytes(levels: Tensor<Inference, 4>) -> (Vec<u8>, [usize; 4]) {
    let shape = levels.dims();
    let values = levels.into_data().convert::<f32>();
    let bytes = values
        .to_vec::<f32>()
        .unwrap_or_default()
        .iter()
        .map(|&v| v as u8)
        .collect();
    (bytes, shape)
}

/// Refuses a grid of more than [`MAX_GRID_IMAGES`] images (in training-size images),
/// before anything is drawn; `asked` says what was asked for.
pub fn check_grid_size(images: usize, asked: impl FnOnce() -> String) -> anyhow::Result<()> {
    if images > MAX_GRID_IMAGES {
        bail!(
            "{}: {images} images, but one grid holds at most {MAX_GRID_IMAGES} (drawn and kept in memory at once); draw several grids with other --seed values",
            asked()
        );
    }
    Ok(())
}

/// Refuses a temperature (a prior's standard deviation) below 0 or not a number.
pub fn check_temperature(t: f64) -> anyhow::Result<()> {
    if !(t.is_finite() && t >= 0.0) {
        bail!("temperature {t}: expected a number >= 0 (0 < T <= 1 sharpens)");
    }
    Ok(())
}

/// `realnvp sample` with classes or several temperatures: one row per temperature, the
/// same noise in every row; `n` samples per row, of `class` or cycling through the
/// classes of a class-conditional model.
pub fn sample_grid(
    run: &RunDir,
    n: usize,
    temperatures: &[f64],
    class: Option<usize>,
    seed: u64,
    out: &Path,
) -> anyhow::Result<()> {
    if n == 0 || temperatures.is_empty() {
        bail!("--n must be positive and --temperatures not empty");
    }
    for &t in temperatures {
        check_temperature(t)?;
    }
    check_grid_size(n.saturating_mul(temperatures.len()), || {
        format!("--n {n} samples at {} --temperatures", temperatures.len())
    })?;
    let model = image_model(run)?;
    let device = backend::device();
    let labels = match (class, model.classes()) {
        (Some(k), 0) => bail!(
            "--class {k}: {} is not a class-conditional model (train with model.conditional = true)",
            run.path().display()
        ),
        (Some(k), classes) if k >= classes => {
            bail!("--class {k}: the model has classes 0..{}", classes - 1)
        }
        (Some(k), _) => Some(vec![k as i64; n]),
        // A conditional model without --class: one column per class, in turn.
        (None, 0) => None,
        (None, classes) => Some((0..n).map(|i| (i % classes) as i64).collect()),
    };
    let labels =
        labels.map(|l| Tensor::<Inference, 1, Int>::from_data(TensorData::new(l, [n]), &device));
    Inference::seed(&device, seed);
    let config = model.config();
    let noise = model.sample_latents_sized(n, config.height, config.width, 1.0, &device);
    let rows: Vec<Tensor<Inference, 4>> = temperatures
        .iter()
        .map(|&t| {
            let latents = model.latents_from_noise(noise.clone(), t, labels.clone());
            decode_to_levels(&model, latents)
        })
        .collect();
    write_level_grid(out, Tensor::cat(rows, 0), config.preprocess.levels, n)?;
    eprintln!("backend: {}", backend::NAME);
    println!("{}", out.display());
    Ok(())
}
