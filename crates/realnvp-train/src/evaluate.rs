//! Held-out bits/dim and samples of a model, shared by the trainer and the CLI.

use std::path::Path;

use realnvp_core::{ConvBackend, Dequantization, RealNvp};
use realnvp_data::loader::{eval_batches, Fetch};

use crate::error::TrainError;
use crate::kind::{Data, FlowKind, Images};

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
pub fn evaluate<K: FlowKind, B: ConvBackend>(
    model: &K::Model<B>,
    data: &Data<K>,
    split: Split,
    batch_size: usize,
    limit: Option<usize>,
    seed: u64,
    device: &B::Device,
) -> Result<Evaluation, TrainError> {
    B::seed(device, seed);
    let source = Limited {
        inner: match split {
            Split::Train => &data.train,
            Split::Test => &data.test,
        },
        limit,
    };
    let (mut total_bpd, mut total_given, mut examples) = (0.0, None, 0);
    for batch in eval_batches(&source, batch_size) {
        let batch = K::batch(model, batch?, false, device)?;
        let (marginal, given, count) = K::bits_per_dim_sums(model, batch);
        total_bpd += marginal;
        if let Some(given) = given {
            *total_given.get_or_insert(0.0) += given;
        }
        examples += count;
    }
    let dims = K::model_dims(model);
    let bits_per_dim = total_bpd / examples.max(1) as f64;
    Ok(Evaluation {
        bits_per_dim,
        nll_nats: bits_per_dim * dims as f64 * std::f64::consts::LN_2,
        examples,
        given_label_bits_per_dim: total_given.map(|total| total / examples.max(1) as f64),
    })
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
    model: &RealNvp<B>,
    data: &Data<Images>,
    split: Split,
    batch_size: usize,
    limit: Option<usize>,
    device: &B::Device,
) -> Result<Classification, TrainError> {
    let classes = model.classes();
    if classes == 0 {
        return Err(not_conditional());
    }
    let source = Limited {
        inner: match split {
            Split::Train => &data.train,
            Split::Test => &data.test,
        },
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

/// Refuses `n` samples when they are more than one picture of kind `K` holds
/// ([`FlowKind::MAX_SAMPLES`]).
pub fn check_sample_count<K: FlowKind>(n: usize) -> Result<(), TrainError> {
    if n > K::MAX_SAMPLES {
        return Err(TrainError::TooManySamples {
            requested: n,
            limit: K::MAX_SAMPLES,
            picture: K::NAME,
        });
    }
    Ok(())
}

/// Draws `n` samples of `model` at `temperature`, seeded by `seed`, into the PNG `path`:
/// a square grid of images, or for a 2-D vector model the scatter density of its samples.
pub fn write_samples<K: FlowKind, B: ConvBackend>(
    model: &K::Model<B>,
    path: &Path,
    n: usize,
    temperature: f64,
    seed: u64,
    device: &B::Device,
) -> Result<(), TrainError> {
    check_sample_count::<K>(n)?;
    B::seed(device, seed);
    K::draw_samples(model, path, n, temperature, device)
}

/// The error of classifying with a model that has no class prior.
pub fn not_conditional() -> TrainError {
    TrainError::Config {
        origin: "model".into(),
        message: "not a class-conditional model (train with model.conditional = true)".into(),
    }
}
