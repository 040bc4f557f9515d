//! The latent-space commands: exact encoding and decoding, the manifold through four
//! images, conceptual compression, extrapolation and temperature grids.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use realnvp_core::latent_file::{load_latents, save_latents, NamedLatents};
use realnvp_core::latent_space::{compress, manifold, Fill, Kept};
use realnvp_core::{Dequantization, Flow, Latents, RealNvp};
use realnvp_data::ImageArray;
use realnvp_train::grid::write_image_grid;
use realnvp_train::load_run_model;

use crate::inputs::{png_name, write_png, InputArgs};
use crate::{backend, Inference};

/// Examples per forward or inverse pass.
const CHUNK: usize = 64;

/// The image model of a run, for inference.
pub fn image_model(run: &Path) -> Result<RealNvp<Inference>, String> {
    let (model, _) =
        load_run_model::<Inference>(run, &backend::device()).map_err(|e| e.to_string())?;
    match model {
        Flow::Image(model) => Ok(model),
        Flow::Vector(_) => Err(format!(
            "{}: a vector model; this command works on image models",
            run.display()
        )),
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
    let n = latents.len();
    let parts: Vec<Tensor<Inference, 4>> = (0..n)
        .step_by(CHUNK)
        .map(|start| {
            let len = CHUNK.min(n - start);
            let chunk = Latents {
                scales: latents
                    .scales
                    .iter()
                    .map(|z| z.clone().narrow(0, start, len))
                    .collect(),
            };
            model.preprocess().quantize(model.decode(chunk))
        })
        .collect();
    Tensor::cat(parts, 0)
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
fn to_bytes(levels: Tensor<Inference, 4>) -> (Vec<u8>, [usize; 4]) {
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

/// Writes pixel levels `[n, c, h, w]` as a grid PNG, `columns` images per row.
fn write_grid(
    path: &Path,
    levels: Tensor<Inference, 4>,
    model_levels: u32,
    columns: usize,
) -> Result<(), String> {
    let shape = levels.dims();
    let values = levels
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default();
    write_image_grid(path, &values, shape, model_levels, columns).map_err(|e| e.to_string())
}

/// `realnvp encode`.
pub fn encode_command(run: &Path, inputs: &InputArgs, out: &Path) -> Result<(), String> {
    let model = image_model(run)?;
    let images = inputs.load(run, model.config())?;
    let latents = encode_images(&model, &images.array);
    let shapes = latents.shapes();
    save_latents(
        out,
        &NamedLatents {
            latents,
            names: images.names,
        },
    )
    .map_err(|e| e.to_string())?;
    eprintln!("backend: {}", backend::NAME);
    let described: Vec<String> = shapes
        .iter()
        .map(|[c, h, w]| format!("{c}x{h}x{w}"))
        .collect();
    println!(
        "{}: {} images, latents per scale {}",
        out.display(),
        images.array.len(),
        described.join(", ")
    );
    Ok(())
}

/// `realnvp decode`: one PNG per example into `out`, named after the encoded files.
pub fn decode_command(run: &Path, latents: &Path, out: &Path) -> Result<(), String> {
    let model = image_model(run)?;
    let named =
        load_latents::<Inference>(latents, &backend::device()).map_err(|e| e.to_string())?;
    let expected = model.config().latent_shapes();
    if named.latents.shapes() != expected {
        return Err(format!(
            "{}: latent shapes {:?} do not fit the model of {} ({:?})",
            latents.display(),
            named.latents.shapes(),
            run.display(),
            expected
        ));
    }
    let (bytes, [n, c, h, w]) = to_bytes(decode_to_levels(&model, named.latents));
    let mut files: Vec<PathBuf> = named.names.iter().map(|name| png_name(name)).collect();
    let mut unique = files.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != files.len() {
        files = files
            .iter()
            .enumerate()
            .map(|(i, f)| PathBuf::from(format!("{i:05}-{}", f.display())))
            .collect();
    }
    let levels = model.config().preprocess.levels;
    for (k, file) in files.iter().enumerate() {
        let pixels = &bytes[k * c * h * w..(k + 1) * c * h * w];
        write_png(&out.join(file), pixels, [c, h, w], levels)?;
    }
    eprintln!("backend: {}", backend::NAME);
    println!("{}: {n} images", out.display());
    Ok(())
}

/// `realnvp manifold`: the paper's equation-14 grid through four images.
pub fn manifold_command(
    run: &Path,
    inputs: &InputArgs,
    rows: usize,
    cols: usize,
    out: &Path,
) -> Result<(), String> {
    if rows < 2 || cols < 2 {
        return Err(format!(
            "--rows and --cols must be at least 2 (got {rows}, {cols})"
        ));
    }
    let model = image_model(run)?;
    let images = inputs.load(run, model.config())?;
    if images.array.len() != 4 {
        return Err(format!(
            "the manifold needs exactly 4 images, got {} ({})",
            images.array.len(),
            images.names.join(", ")
        ));
    }
    let corners = encode_images(&model, &images.array);
    let grid = decode_to_levels(&model, manifold(&corners, rows, cols));
    write_grid(out, grid, model.config().preprocess.levels, cols)?;
    eprintln!("backend: {}", backend::NAME);
    println!(
        "{}: {rows}x{cols} grid; corners {} (top left), {} (top right), {} (bottom left), {} (bottom right)",
        out.display(),
        images.names[0],
        images.names[1],
        images.names[2],
        images.names[3]
    );
    Ok(())
}

/// `realnvp compress`: one row per image, one column per kept fraction.
pub fn compress_command(
    run: &Path,
    inputs: &InputArgs,
    fractions: &[f64],
    fill: Fill,
    seed: u64,
    out: &Path,
) -> Result<(), String> {
    if let Some(bad) = fractions.iter().find(|f| !(0.0..=1.0).contains(*f)) {
        return Err(format!("--fractions: {bad} is not in [0, 1]"));
    }
    let model = image_model(run)?;
    let images = inputs.load(run, model.config())?;
    let latents = encode_images(&model, &images.array);
    let shapes = latents.shapes();
    Inference::seed(&backend::device(), seed);
    let mut columns = Vec::new();
    for &fraction in fractions {
        let kept = Kept::coarsest(&shapes, fraction);
        println!(
            "asked {:.2} %: kept {:.2} % of the latents ({} of {} dimensions; channels per scale, finest first: {:?})",
            100.0 * fraction,
            100.0 * kept.fraction(),
            kept.dims,
            kept.total,
            kept.channels
        );
        columns.push(decode_to_levels(&model, compress(&latents, &kept, fill)));
    }
    // [fractions, n, c, h, w] -> rows of images: [n, fractions, c, h, w].
    let n = images.array.len();
    let config = model.config();
    let [c, h, w] = [config.channels, config.height, config.width];
    let grid = Tensor::stack::<5>(columns, 1).reshape([n * fractions.len(), c, h, w]);
    write_grid(out, grid, model.config().preprocess.levels, fractions.len())?;
    eprintln!("backend: {}", backend::NAME);
    println!(
        "{}: one row per image ({})",
        out.display(),
        images.names.join(", ")
    );
    Ok(())
}

/// `realnvp extrapolate`: samples `factor` times the training size.
pub fn extrapolate_command(
    run: &Path,
    factor: usize,
    n: usize,
    temperature: f64,
    seed: u64,
    out: &Path,
) -> Result<(), String> {
    if factor == 0 || n == 0 {
        return Err(format!(
            "--factor and --n must be positive (got {factor}, {n})"
        ));
    }
    check_temperature(temperature)?;
    let model = image_model(run)?;
    let (height, width) = (
        model.config().height * factor,
        model.config().width * factor,
    );
    let device = backend::device();
    Inference::seed(&device, seed);
    let latents = model.sample_latents_sized(n, height, width, temperature, &device);
    let images = decode_to_levels(&model, latents);
    write_grid(
        out,
        images,
        model.config().preprocess.levels,
        (n as f64).sqrt().ceil() as usize,
    )?;
    eprintln!("backend: {}", backend::NAME);
    println!("{}: {n} samples of {height}x{width} pixels", out.display());
    Ok(())
}

/// `realnvp sample` with classes or several temperatures: one row per temperature, the
/// same noise in every row.
pub fn sample_grid_command(
    run: &Path,
    n: usize,
    temperatures: &[f64],
    class: Option<usize>,
    seed: u64,
    out: &Path,
) -> Result<(), String> {
    if n == 0 || temperatures.is_empty() {
        return Err("--n must be positive and --temperatures not empty".into());
    }
    for &t in temperatures {
        check_temperature(t)?;
    }
    let model = image_model(run)?;
    let device = backend::device();
    let classes = model.classes();
    let labels = match (class, classes) {
        (Some(k), 0) => {
            return Err(format!(
                "--class {k}: {} is not a class-conditional model (train with model.conditional = true)",
                run.display()
            ))
        }
        (Some(k), classes) if k >= classes => {
            return Err(format!("--class {k}: the model has classes 0..{}", classes - 1))
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
    write_grid(out, Tensor::cat(rows, 0), config.preprocess.levels, n)?;
    eprintln!("backend: {}", backend::NAME);
    println!("{}", out.display());
    Ok(())
}

fn check_temperature(t: f64) -> Result<(), String> {
    if t.is_finite() && t >= 0.0 {
        Ok(())
    } else {
        Err(format!(
            "temperature {t}: expected a number >= 0 (0 < T <= 1 sharpens)"
        ))
    }
}
