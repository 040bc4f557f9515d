//! Held-out bits/dim and samples of a model, shared by the trainer and the CLI.

use std::path::Path;

use realnvp_core::{ConvBackend, Dequantization, Flow, FlowBatch};
use realnvp_data::loader::{eval_batches, Fetch, ImageSource, VectorArray};
use realnvp_data::ImageArray;

use crate::data::Splits;
use crate::error::TrainError;
use crate::output::grid::{write_image_grid, write_scatter, MAX_GRID_IMAGES, MAX_SCATTER_POINTS};

/// Samples decoded at once by [`write_samples`]: a grid of more is decoded in pieces of
/// this many, so that memory holds the activations of these alone.
const SAMPLE_CHUNK: usize = 1024;

/// Bits/dim and negative log-likelihood of a split.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Mean bits/dim (dequantised with uniform noise, the logit Jacobian counted).
    pub bits_per_dim: f64,
    /// Mean negative log-likelihood per example, nats (discrete for images).
    pub nll_nats: f64,
    /// Examples evaluated.
    pub examples: usize,
    /// A class-conditional model on labelled images: mean bits/dim given each image's
    /// label, `-log p(x | label)`, the measure of its training curve (`bits_per_dim` is
    /// the marginal `-log p(x)`). `None` otherwise.
    pub given_label_bits_per_dim: Option<f64>,
}

impl Evaluation {
    /// The figure comparable with the training curve: given the label for a
    /// class-conditional model, else the marginal.
    pub fn curve_bits_per_dim(&self) -> f64 {
        self.given_label_bits_per_dim.unwrap_or(self.bits_per_dim)
    }
}

/// Which split of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training split.
    Train,
    /// The held-out test split.
    Test,
}

/// Evaluates `model` (evaluation mode: use a non-autodiff backend) on up to `limit`
/// examples of `split`, in batches of `batch_size`. The dequantisation noise is seeded
/// with `seed`, so the figure is reproducible.
pub fn evaluate<B: ConvBackend>(
    model: &Flow<B>,
    splits: &Splits,
    split: Split,
    batch_size: usize,
    limit: Option<usize>,
    seed: u64,
    device: &B::Device,
) -> Result<Evaluation, TrainError> {
    B::seed(device, seed);
    let train_split = split == Split::Train;
    let conditional = matches!(model, Flow::Image(m) if m.classes() > 0);
    let (dims, (total_bpd, total_given, examples)) = match splits {
        Splits::Images {
            train, test, info, ..
        } => {
            let source: &ImageSource = if train_split { train } else { test };
            let sums = sum_bits_per_dim(model, source, limit, batch_size, |b: ImageArray| {
                let batch = b.to_batch(device);
                match (conditional, batch.labels) {
                    (true, Some(labels)) => FlowBatch::LabelledImages(batch.pixels, labels),
                    _ => FlowBatch::Images(batch.pixels),
                }
            })?;
            (info.shape.iter().product::<usize>(), sums)
        }
        Splits::Vectors { train, test, .. } => {
            let source: &VectorArray = if train_split { train } else { test };
            let sums = sum_bits_per_dim(model, source, limit, batch_size, |b: VectorArray| {
                FlowBatch::Vectors(b.to_tensor(device))
            })?;
            (train.dims, sums)
        }
    };
    let bits_per_dim = total_bpd / examples.max(1) as f64;
    Ok(Evaluation {
        bits_per_dim,
        nll_nats: bits_per_dim * dims as f64 * std::f64::consts::LN_2,
        examples,
        given_label_bits_per_dim: total_given.map(|total| total / examples.max(1) as f64),
    })
}

/// Sums of the marginal bits/dim of the first `limit` examples of `source` and, for
/// labelled batches of a class-conditional model, of their bits/dim given the label (both
/// from one pass); and their number.
fn sum_bits_per_dim<B: ConvBackend, S: Fetch>(
    model: &Flow<B>,
    source: &S,
    limit: Option<usize>,
    batch_size: usize,
    to_batch: impl Fn(S::Batch) -> FlowBatch<B>,
) -> Result<(f64, Option<f64>, usize), TrainError> {
    let source = Limited {
        inner: source,
        limit,
    };
    let sum = |t: burn::tensor::Tensor<B, 1>| t.sum().into_scalar().elem_f64();
    let (mut total, mut total_given, mut examples) = (0.0, None, 0);
    for batch in eval_batches(&source, batch_size) {
        let batch = to_batch(batch?);
        examples += batch.len();
        match (model, batch) {
            (Flow::Image(m), FlowBatch::LabelledImages(x, labels)) => {
                let (marginal, given) =
                    m.bits_per_dim_marginal_and_given(x, labels, Dequantization::Uniform);
                total += sum(marginal);
                *total_given.get_or_insert(0.0) += sum(given);
            }
            (_, batch) => total += sum(model.bits_per_dim(batch, Dequantization::Uniform)),
        }
    }
    Ok((total, total_given, examples))
}

/// Accuracy of a class-conditional model's Bayes classifier on a split.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Classification {
    /// Fraction of examples whose most likely class is their label.
    pub accuracy: f64,
    /// Examples classified.
    pub examples: usize,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Classifies every example of `split` (up to `limit`) by Bayes' rule with equal class
/// priors, `argmax_k log p(x | k)`, pixels dequantised to the centres of their bins.
/// Errors unless `model` is a class-conditional image model and the split is labelled.
pub fn classify<B: ConvBackend>(
    model: &Flow<B>,
    splits: &Splits,
    split: Split,
    batch_size: usize,
    limit: Option<usize>,
    device: &B::Device,
) -> Result<Classification, TrainError> {
    let not_conditional = || TrainError::Config {
        origin: "model".into(),
        message: "not a class-conditional model (train with model.conditional = true)".into(),
    };
    let (Flow::Image(model), Splits::Images { train, test, .. }) = (model, splits) else {
        return Err(not_conditional());
    };
    let classes = model.classes();
    if classes == 0 {
        return Err(not_conditional());
    }
    let source = Limited {
        inner: if split == Split::Train { train } else { test },
        limit,
    };
    let mut confusion = vec![vec![0usize; classes]; classes];
    for batch in eval_batches(&source, batch_size) {
        let batch = batch?;
        let labels = batch.labels.clone().ok_or_else(|| TrainError::Config {
            origin: "data".into(),
            message: "the images have no labels to classify against".into(),
        })?;
        let scores = model.class_log_probs(batch.to_tensor(device), Dequantization::Centre);
        let predicted = scores.argmax(1).into_data().convert::<i64>();
        let predicted = predicted.to_vec::<i64>().unwrap_or_default();
        for (&label, &guess) in labels.iter().zip(&predicted) {
            let (label, guess) = (label as usize, guess as usize);
            if label >= classes || guess >= classes {
                return Err(TrainError::Config {
                    origin: "data".into(),
                    message: format!("label {label} outside the model's {classes} classes"),
                });
            }
            confusion[label][guess] += 1;
        }
    }
    let examples: usize = confusion.iter().flatten().sum();
    let correct: usize = (0..classes).map(|k| confusion[k][k]).sum();
    Ok(Classification {
        accuracy: correct as f64 / examples.max(1) as f64,
        examples,
        confusion,
    })
}

/// The first `limit` examples of a split.
struct Limited<'a, S> {
    inner: &'a S,
    limit: Option<usize>,
}

impl<S: Fetch> Fetch for Limited<'_, S> {
    type Batch = S::Batch;

    fn len(&self) -> usize {
        self.limit
            .map_or(self.inner.len(), |l| l.min(self.inner.len()))
    }

    fn fetch(
        &self,
        indices: &[usize],
        crops: Option<&[u64]>,
        flips: &[bool],
    ) -> Result<S::Batch, realnvp_data::DataError> {
        self.inner.fetch(indices, crops, flips)
    }
}

trait ElemF64 {
    fn elem_f64(self) -> f64;
}

impl<E: burn::tensor::ElementConversion> ElemF64 for E {
    fn elem_f64(self) -> f64 {
        self.elem::<f64>()
    }
}

/// Refuses `n` samples when they are more than one picture of `model`'s kind holds
/// ([`MAX_GRID_IMAGES`] images, [`MAX_SCATTER_POINTS`] points).
pub fn check_sample_count<B: ConvBackend>(model: &Flow<B>, n: usize) -> Result<(), TrainError> {
    let limit = match model {
        Flow::Image(_) => MAX_GRID_IMAGES,
        Flow::Vector(_) => MAX_SCATTER_POINTS,
    };
    if n > limit {
        return Err(TrainError::TooManySamples {
            requested: n,
            limit,
            picture: model.kind(),
        });
    }
    Ok(())
}

/// Draws `n` samples at `temperature` (seeded) and writes them to `path` as PNG: an image
/// grid for image models, a 2-D histogram for 2-D vector models.
pub fn write_samples<B: ConvBackend>(
    model: &Flow<B>,
    path: &Path,
    n: usize,
    temperature: f64,
    seed: u64,
    device: &B::Device,
) -> Result<(), TrainError> {
    check_sample_count(model, n)?;
    B::seed(device, seed);
    match model {
        Flow::Image(m) => {
            let latents = m.sample_latents(n, temperature, device);
            let samples = m
                .preprocess()
                .quantize(m.decode_in_chunks(latents, SAMPLE_CHUNK));
            let shape = samples.dims();
            let pixels = samples
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            let columns = (n as f64).sqrt().ceil() as usize;
            write_image_grid(path, &pixels, shape, m.preprocess().levels(), columns)
        }
        Flow::Vector(m) => {
            if m.dims() != 2 {
                return Err(TrainError::Config {
                    origin: "sample".into(),
                    message: format!(
                        "a {}-dimensional vector model has no picture; only 2-D models are drawn",
                        m.dims()
                    ),
                });
            }
            let points = m
                .sample(n, temperature, device)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            write_scatter(path, &points, 4.0, 256)
        }
    }
}
