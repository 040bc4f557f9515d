//! The `Model` class: a loaded Real NVP and what Python can ask of it. Every computation
//! runs with the GIL released, `batch_size` examples at a time, on the Flex backend's own
//! threads.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use numpy::{PyArray1, PyArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use realnvp_core::prior::standard_normal_sample;
use realnvp_core::{Bijector, Dequantization, Flow, FlowConfig, Latents, RealNvp, VectorRealNvp};

use crate::arrays::{
    array, label_in_range, label_tensor, not_conditional, read_labels, rows, to_channels_last,
    vector_f64, FloatArray, LatentInput, PixelArray,
};
use crate::Cpu;

/// The backend's random generator is global: seeding it and drawing from it happen under
/// this lock, so that a seed gives the same samples whatever other threads do.
static SAMPLING: Mutex<()> = Mutex::new(());

/// A trained Real NVP, loaded by `realnvp.load`.
///
/// Image models take pixel levels `[N, C, H, W]` (uint8; `channels_last=True` for
/// `[N, H, W, C]`), vector models float32 `[N, D]`. Results are NumPy arrays: bits/dim and
/// log-likelihoods float64 `[N]`, images uint8, vectors and latents float32.
#[pyclass(module = "realnvp", frozen)]
pub struct Model {
    flow: Flow<Cpu>,
    config: FlowConfig,
    path: PathBuf,
}

/// What a score is reported in.
#[derive(Clone, Copy)]
enum Measure {
    /// `-log2 p(x) / D`.
    BitsPerDim,
    /// `log p(x)`, nats.
    LogProb,
}

/// How integer pixels become continuous: uniform noise from one seeded stream over the
/// whole input (so scores do not depend on `batch_size`), or the bin centres.
#[derive(Clone, Copy)]
enum Noise {
    Uniform { seed: u64 },
    Centre,
}

impl Noise {
    /// Reads `dequantization=` and `seed=` (`None`: a fresh seed).
    fn parse(name: &str, seed: Option<u64>) -> PyResult<Self> {
        match name {
            "uniform" => Ok(Self::Uniform {
                seed: seed.unwrap_or_else(rand::random),
            }),
            "centre" | "center" => Ok(Self::Centre),
            other => Err(PyValueError::new_err(format!(
                "dequantization: expected \"uniform\" or \"centre\", got {other:?}"
            ))),
        }
    }

    /// The dequantisation of the batch whose first example is example `first` of the input.
    fn at(self, first: usize) -> Dequantization {
        match self {
            Self::Uniform { seed } => Dequantization::SeededAt {
                seed,
                first_example: first as u64,
            },
            Self::Centre => Dequantization::Centre,
        }
    }
}

/// The most values `sample` draws in one call (8 GiB of float32 latents): more are
/// refused rather than letting the allocation abort the interpreter.
const MAX_SAMPLE_VALUES: usize = 1 << 31;

/// Refuses a batch size below 1. Counts arrive as Python ints and are checked here, so
/// that a negative one is a `ValueError` naming its argument.
fn check_batch_size(batch_size: i64) -> PyResult<usize> {
    usize::try_from(batch_size)
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "batch_size: expected at least 1 example per batch, got {batch_size}"
            ))
        })
}

/// Reads `seed=`: `None`, or an integer in `0..2^64`.
fn check_seed(seed: Option<i128>) -> PyResult<Option<u64>> {
    seed.map(|s| {
        u64::try_from(s).map_err(|_| {
            PyValueError::new_err(format!(
                "seed: expected an integer 0..2**64 or None, got {s}"
            ))
        })
    })
    .transpose()
}

/// Runs `work` with the GIL released, on one of rayon's worker threads. The CPU kernels
/// split every operation across rayon's pool: from a worker each split is a `join`, from
/// any other thread a job injected into the pool while the caller sleeps, thousands of
/// times a second (the CLI's `on_compute_threads` says more). Scoring 2,000 Fashion-MNIST
/// test images from the calling thread took 10 to 20 % longer.
fn compute<R: Send>(py: Python<'_>, work: impl FnOnce() -> R + Send) -> R {
    py.detach(|| rayon::scope(|_| work()))
}

/// Runs `f(start, len)` on consecutive batches of at most `batch` of `n` examples.
fn for_batches(n: usize, batch: usize, mut f: impl FnMut(usize, usize)) {
    for start in (0..n).step_by(batch) {
        f(start, batch.min(n - start));
    }
}

/// Runs `f(start, len)` on consecutive batches of at most `batch` of `n` examples and
/// concatenates what they return.
fn in_batches<T>(n: usize, batch: usize, mut f: impl FnMut(usize, usize) -> Vec<T>) -> Vec<T> {
    let mut out = Vec::new();
    for_batches(n, batch, |start, len| out.extend(f(start, len)));
    out
}

/// The values of a tensor as `f64`.
fn to_f64<const D: usize>(tensor: Tensor<Cpu, D>) -> Vec<f64> {
    tensor.into_data().iter::<f64>().collect()
}

/// The values of a tensor as `f32`.
fn to_f32<const D: usize>(tensor: Tensor<Cpu, D>) -> Vec<f32> {
    tensor.into_data().iter::<f32>().collect()
}

impl Model {
    /// Wraps a loaded model and its configuration, read from the export at `path`.
    pub fn new((flow, config): (Flow<Cpu>, FlowConfig), path: PathBuf) -> Self {
        Self { flow, config, path }
    }

    /// `[C, H, W]` of an image model's inputs.
    fn image_shape(model: &RealNvp<Cpu>) -> [usize; 3] {
        let c = model.config();
        [c.channels, c.height, c.width]
    }

    /// Continuous pixels in `[0, 1)` to levels of the data the model was trained on, as
    /// bytes. A model of fewer (`n_bits`) levels than its data gives each of its levels
    /// the lowest data level of its bin: `ceil(k * data_levels / levels)`.
    fn to_data_levels(model: &RealNvp<Cpu>, y: Tensor<Cpu, 4>) -> Vec<u8> {
        let preprocess = model.preprocess();
        let data_levels = u64::from(model.config().preprocess.levels);
        let levels = u64::from(preprocess.levels());
        to_f32(preprocess.quantize(y))
            .into_iter()
            .map(|level| {
                let k = level as u64;
                let data = (k * data_levels).div_ceil(levels).min(data_levels - 1);
                u8::try_from(data).unwrap_or(u8::MAX)
            })
            .collect()
    }

    /// Images `[N, C, H, W]` as a uint8 array, reordered when `channels_last`.
    fn image_array<'py>(
        py: Python<'py>,
        model: &RealNvp<Cpu>,
        levels: Vec<u8>,
        channels_last: bool,
    ) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
        let [c, h, w] = Self::image_shape(model);
        let n = levels.len() / (c * h * w);
        if channels_last {
            array(py, to_channels_last(&levels, [c, h, w]), &[n, h, w, c])
        } else {
            array(py, levels, &[n, c, h, w])
        }
    }

    /// Refuses `channels_last` and `labels` for a vector model.
    fn check_vector_options(channels_last: bool, labels: bool) -> PyResult<()> {
        if channels_last {
            return Err(PyValueError::new_err(
                "channels_last: a vector model takes rows [N, D], not images",
            ));
        }
        if labels {
            return Err(not_conditional("labels"));
        }
        Ok(())
    }

    /// Bits/dim or log-likelihoods of `x` (given `labels` when set), one per example.
    #[allow(clippy::too_many_arguments)]
    fn score(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
        dequantization: &str,
        seed: Option<i128>,
        batch_size: i64,
        channels_last: bool,
        measure: Measure,
    ) -> PyResult<Vec<f64>> {
        let batch = check_batch_size(batch_size)?;
        let noise = Noise::parse(dequantization, check_seed(seed)?)?;
        match &self.flow {
            Flow::Image(model) => {
                let levels = model.config().preprocess.levels;
                let pixels = PixelArray::read(x, Self::image_shape(model), levels, channels_last)?;
                let n = pixels.len();
                let labels = labels
                    .map(|l| read_labels(l, n, model.classes()))
                    .transpose()?;
                let view = pixels.view();
                Ok(compute(py, || {
                    in_batches(n, batch, |start, len| {
                        let x = view.tensor(start, len);
                        let dequantization = noise.at(start);
                        let given = labels.as_deref().map(|l| label_tensor(l, start, len));
                        let out = match (given, measure) {
                            (None, Measure::BitsPerDim) => model.bits_per_dim(x, dequantization),
                            (None, Measure::LogProb) => model.log_prob(x, dequantization),
                            (Some(l), Measure::BitsPerDim) => {
                                model.bits_per_dim_given(x, l, dequantization)
                            }
                            (Some(l), Measure::LogProb) => {
                                model.log_prob_given(x, l, dequantization)
                            }
                        };
                        to_f64(out)
                    })
                }))
            }
            Flow::Vector(model) => {
                Self::check_vector_options(channels_last, labels.is_some())?;
                let dims = model.dims();
                let vectors = FloatArray::read(x, "vectors", &[dims])?;
                let (n, values) = (vectors.len(), vectors.values());
                Ok(compute(py, || {
                    in_batches(n, batch, |start, len| {
                        let log_prob = model.log_prob(rows(values, start, [len, dims]));
                        to_f64(match measure {
                            Measure::LogProb => log_prob,
                            Measure::BitsPerDim => {
                                log_prob.div_scalar(-(dims as f64) * std::f64::consts::LN_2)
                            }
                        })
                    })
                }))
            }
        }
    }

    /// The image model, or a `ValueError` naming `what` needs one.
    fn image_model(&self, what: &str) -> PyResult<&RealNvp<Cpu>> {
        match &self.flow {
            Flow::Image(model) => Ok(model),
            Flow::Vector(_) => Err(PyValueError::new_err(format!(
                "{what}: needs an image model; this is a vector model"
            ))),
        }
    }

    /// Samples of a vector model: latents drawn at once, inverted `batch` at a time.
    fn sample_vectors(
        model: &VectorRealNvp<Cpu>,
        n: usize,
        temperature: f64,
        seed: u64,
        batch: usize,
    ) -> Vec<f32> {
        let dims = model.dims();
        let device = Default::default();
        let z = {
            let _drawing = SAMPLING.lock().unwrap_or_else(PoisonError::into_inner);
            Cpu::seed(&device, seed);
            to_f32(standard_normal_sample::<Cpu, 2>(
                [n, dims],
                temperature,
                &device,
            ))
        };
        in_batches(n, batch, |start, len| {
            to_f32(model.inverse(rows(&z, start, [len, dims])))
        })
    }

    /// Sample images as data levels: latents drawn at once (of class `label` when set),
    /// decoded `batch` at a time.
    fn sample_images(
        model: &RealNvp<Cpu>,
        n: usize,
        temperature: f64,
        seed: u64,
        label: Option<i64>,
        batch: usize,
    ) -> Vec<u8> {
        let device = Default::default();
        let latents = {
            let _drawing = SAMPLING.lock().unwrap_or_else(PoisonError::into_inner);
            Cpu::seed(&device, seed);
            match label {
                Some(label) => {
                    let labels = Tensor::<Cpu, 1, Int>::full([n], label, &device);
                    model.sample_latents_given(labels, temperature)
                }
                None => model.sample_latents(n, temperature, &device),
            }
        };
        in_batches(n, batch, |start, len| {
            Self::to_data_levels(model, model.decode(latents.narrow(start, len)))
        })
    }
}

#[pymethods]
impl Model {
    /// `"image"` or `"vector"`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.flow {
            Flow::Image(_) => "image",
            Flow::Vector(_) => "vector",
        }
    }

    /// The shape of one example: `(C, H, W)` for an image model, `(D,)` for a vector model.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        match &self.flow {
            Flow::Image(model) => PyTuple::new(py, Self::image_shape(model)),
            Flow::Vector(model) => PyTuple::new(py, [model.dims()]),
        }
    }

    /// Number of classes of a class-conditional model; 0 for an unconditional one.
    #[getter]
    fn classes(&self) -> usize {
        match &self.flow {
            Flow::Image(model) => model.classes(),
            Flow::Vector(_) => 0,
        }
    }

    /// Dimensions of one example, `D` (`C * H * W` for images): bits/dim divide by it.
    #[getter]
    fn dims(&self) -> usize {
        match &self.flow {
            Flow::Image(model) => model.config().dims(),
            Flow::Vector(model) => model.dims(),
        }
    }

    /// Pixel levels of the data the image model was trained on (256 for 8-bit images, 17
    /// for the embedded digits): inputs and outputs hold `0..levels`. `None` for vectors.
    #[getter]
    fn levels(&self) -> Option<u32> {
        match &self.flow {
            Flow::Image(model) => Some(model.config().preprocess.levels),
            Flow::Vector(_) => None,
        }
    }

    /// Per-scale latent shapes `(c, h, w)`, finest first, as `encode` returns them; a
    /// vector model has one, `(D,)`.
    #[getter]
    fn latent_shapes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let shapes: Vec<Bound<'py, PyTuple>> = match &self.flow {
            Flow::Image(model) => model
                .config()
                .latent_shapes()
                .into_iter()
                .map(|s| PyTuple::new(py, s))
                .collect::<PyResult<_>>()?,
            Flow::Vector(model) => vec![PyTuple::new(py, [model.dims()])?],
        };
        PyList::new(py, shapes)
    }

    /// The model configuration (`model.toml` of the export) as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value = toml::Value::try_from(&self.config)
            .map_err(|e| PyValueError::new_err(format!("the model configuration: {e}")))?;
        toml_to_python(py, &value)
    }

    /// The export directory the model was read from.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    fn __repr__(&self) -> String {
        let shape = match &self.flow {
            Flow::Image(model) => {
                let [c, h, w] = Self::image_shape(model);
                format!("({c}, {h}, {w})")
            }
            Flow::Vector(model) => format!("({},)", model.dims()),
        };
        format!(
            "realnvp.Model(kind={:?}, shape={shape}, classes={}, path={:?})",
            self.kind(),
            self.classes(),
            self.path()
        )
    }

    /// Bits per dimension of each example, float64 `[N]`: `-log2 p(x) / D`.
    ///
    /// `x`: images `[N, C, H, W]` of integer levels `0..levels` (uint8; `channels_last=True`
    /// for `[N, H, W, C]`), or vectors float32 `[N, D]`. `labels`: `[N]` class labels of a
    /// class-conditional model, for `-log2 p(x | label) / D`; without them, the marginal.
    /// `dequantization`: `"uniform"` (noise `u ~ U[0, 1)` added to every level, drawn from
    /// one stream seeded with `seed` over the whole input, so the result does not depend on
    /// `batch_size`; `seed=None` draws fresh noise) or `"centre"` (`+ 0.5`, deterministic).
    /// `realnvp score --json` gives the same numbers for `seed=0` (for a vector model
    /// trained on a CSV file, `score` also standardises the rows: see the README).
    /// Arrays are read in place while the GIL is released: do not change them from another
    /// thread during the call.
    #[pyo3(
        signature = (x, labels = None, *, dequantization = "uniform", seed = Some(0), batch_size = 64, channels_last = false),
        text_signature = "($self, x, labels=None, *, dequantization=\"uniform\", seed=0, batch_size=64, channels_last=False)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn bits_per_dim<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        labels: Option<&Bound<'py, PyAny>>,
        dequantization: &str,
        seed: Option<i128>,
        batch_size: i64,
        channels_last: bool,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let bits = self.score(
            py,
            x,
            labels,
            dequantization,
            seed,
            batch_size,
            channels_last,
            Measure::BitsPerDim,
        )?;
        Ok(vector_f64(py, bits))
    }

    /// Log-likelihood of each example in nats, float64 `[N]`: `log p(x)` of integer pixels
    /// (the dequantised density times the bin volume) or of vectors; given `labels`,
    /// `log p(x | label)`. The arguments are those of `bits_per_dim`.
    #[pyo3(
        signature = (x, labels = None, *, dequantization = "uniform", seed = Some(0), batch_size = 64, channels_last = false),
        text_signature = "($self, x, labels=None, *, dequantization=\"uniform\", seed=0, batch_size=64, channels_last=False)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn log_prob<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        labels: Option<&Bound<'py, PyAny>>,
        dequantization: &str,
        seed: Option<i128>,
        batch_size: i64,
        channels_last: bool,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let nats = self.score(
            py,
            x,
            labels,
            dequantization,
            seed,
            batch_size,
            channels_last,
            Measure::LogProb,
        )?;
        Ok(vector_f64(py, nats))
    }

    /// Class posteriors of a class-conditional image model: `log p(k | x)` for every
    /// class, float64 `[N, classes]` (equal class priors; each row's exponentials sum to
    /// 1). `x` and the options are those of `bits_per_dim`.
    #[pyo3(
        signature = (x, *, dequantization = "uniform", seed = Some(0), batch_size = 64, channels_last = false),
        text_signature = "($self, x, *, dequantization=\"uniform\", seed=0, batch_size=64, channels_last=False)"
    )]
    fn classify<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        dequantization: &str,
        seed: Option<i128>,
        batch_size: i64,
        channels_last: bool,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let model = self.image_model("classify")?;
        let classes = model.classes();
        if classes == 0 {
            return Err(not_conditional("classify"));
        }
        let batch = check_batch_size(batch_size)?;
        let noise = Noise::parse(dequantization, check_seed(seed)?)?;
        let levels = model.config().preprocess.levels;
        let pixels = PixelArray::read(x, Self::image_shape(model), levels, channels_last)?;
        let n = pixels.len();
        let view = pixels.view();
        let posteriors = compute(py, || {
            in_batches(n, batch, |start, len| {
                // log p(k | x) = log p(x | k) - logsumexp_k log p(x | k), in f64 on the
                // host: the joint values are thousands of nats, where f32 would leave the
                // posteriors only to about 1e-4.
                let joint = to_f64(model.class_log_probs(view.tensor(start, len), noise.at(start)));
                joint
                    .chunks_exact(classes)
                    .flat_map(|row| {
                        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let norm = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                        row.iter().map(move |v| v - norm)
                    })
                    .collect()
            })
        });
        array(py, posteriors, &[n, classes])
    }

    /// Draws `n` samples: images uint8 `[n, C, H, W]` (`channels_last=True`:
    /// `[n, H, W, C]`) of the training data's levels, or vectors float32 `[n, D]`.
    ///
    /// `temperature` scales the prior's standard deviation (0 gives the mode: the decoded
    /// prior mean). `seed`: the same seed gives the same samples (`None`: fresh ones).
    /// `label`: draw every sample from that class of a class-conditional model; without
    /// it, from the mixture of all classes.
    #[pyo3(signature = (n, temperature = 1.0, seed = None, label = None, *, batch_size = 64, channels_last = false))]
    #[allow(clippy::too_many_arguments)]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        n: i64,
        temperature: f64,
        seed: Option<i128>,
        label: Option<i64>,
        batch_size: i64,
        channels_last: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "temperature: expected a finite number at least 0, got {temperature}"
            )));
        }
        let n = usize::try_from(n).map_err(|_| {
            PyValueError::new_err(format!(
                "n: expected a number of samples at least 0, got {n}"
            ))
        })?;
        let dims = self.dims();
        if n.checked_mul(dims)
            .is_none_or(|values| values > MAX_SAMPLE_VALUES)
        {
            return Err(PyValueError::new_err(format!(
                "n: {n} samples of {dims} dimensions are more than one call draws (at most \
                 {MAX_SAMPLE_VALUES} values); draw them in several calls"
            )));
        }
        let batch = check_batch_size(batch_size)?;
        let seed = check_seed(seed)?.unwrap_or_else(rand::random);
        match &self.flow {
            Flow::Image(model) => {
                if let Some(label) = label {
                    if model.classes() == 0 {
                        return Err(not_conditional("label"));
                    }
                    if !label_in_range(label, model.classes()) {
                        return Err(PyValueError::new_err(format!(
                            "label: {label} is outside 0..={}, the model's {} classes",
                            model.classes() - 1,
                            model.classes()
                        )));
                    }
                }
                let levels = if n == 0 {
                    Vec::new()
                } else {
                    compute(py, || {
                        Self::sample_images(model, n, temperature, seed, label, batch)
                    })
                };
                Ok(Self::image_array(py, model, levels, channels_last)?.into_any())
            }
            Flow::Vector(model) => {
                Self::check_vector_options(channels_last, label.is_some())?;
                let values = if n == 0 {
                    Vec::new()
                } else {
                    compute(py, || {
                        Self::sample_vectors(model, n, temperature, seed, batch)
                    })
                };
                Ok(array(py, values, &[n, dims])?.into_any())
            }
        }
    }

    /// The latents of `x`, exactly invertible by `decode`.
    ///
    /// Images (integer levels, as for `bits_per_dim`) are dequantised at their bin centres;
    /// the result is one float32 array per scale, `[N, c, h, w]`, finest first (see
    /// `latent_shapes`), or with `flat=True` one array `[N, D]` of all scales in that order.
    /// Vectors give one float32 array `[N, D]`. A model of `n_bits` fewer levels than its
    /// data encodes each pixel's bin, so `decode` returns the bin's lowest level.
    #[pyo3(signature = (x, *, flat = false, batch_size = 64, channels_last = false))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        flat: bool,
        batch_size: i64,
        channels_last: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let batch = check_batch_size(batch_size)?;
        match &self.flow {
            Flow::Image(model) => {
                let levels = model.config().preprocess.levels;
                let pixels = PixelArray::read(x, Self::image_shape(model), levels, channels_last)?;
                let n = pixels.len();
                let view = pixels.view();
                let shapes = model.config().latent_shapes();
                let scales = shapes.len();
                let parts = compute(py, || {
                    let mut parts: Vec<Vec<f32>> = vec![Vec::new(); if flat { 1 } else { scales }];
                    for_batches(n, batch, |start, len| {
                        let x = view.tensor(start, len);
                        let y = model.preprocess().dequantize(x, Dequantization::Centre);
                        let latents = model.encode(y);
                        if flat {
                            parts[0].extend(to_f32(latents.flatten()));
                        } else {
                            for (part, z) in parts.iter_mut().zip(latents.scales) {
                                part.extend(to_f32(z));
                            }
                        }
                    });
                    parts
                });
                if flat {
                    let dims = model.config().dims();
                    let values = parts.into_iter().next().unwrap_or_default();
                    return Ok(array(py, values, &[n, dims])?.into_any());
                }
                let arrays = parts
                    .into_iter()
                    .zip(&shapes)
                    .map(|(values, &[c, h, w])| array(py, values, &[n, c, h, w]))
                    .collect::<PyResult<Vec<_>>>()?;
                Ok(PyList::new(py, arrays)?.into_any())
            }
            Flow::Vector(model) => {
                Self::check_vector_options(channels_last, false)?;
                let dims = model.dims();
                let vectors = FloatArray::read(x, "vectors", &[dims])?;
                let (n, values) = (vectors.len(), vectors.values());
                let z = compute(py, || {
                    in_batches(n, batch, |start, len| {
                        to_f32(model.forward(rows(values, start, [len, dims])).0)
                    })
                });
                Ok(array(py, z, &[n, dims])?.into_any())
            }
        }
    }

    /// Inverts `encode`: latents (the per-scale list, or one flat `[N, D]` array) to images
    /// uint8 `[N, C, H, W]` (`channels_last=True`: `[N, H, W, C]`) of the training data's
    /// levels; for a vector model, `[N, D]` latents to float32 vectors `[N, D]`.
    /// `decode(encode(x))` gives integer images back exactly.
    #[pyo3(signature = (z, *, batch_size = 64, channels_last = false))]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        z: &Bound<'py, PyAny>,
        batch_size: i64,
        channels_last: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let batch = check_batch_size(batch_size)?;
        match &self.flow {
            Flow::Image(model) => {
                let shapes = model.config().latent_shapes();
                let latents = LatentInput::read(z, &shapes)?;
                let n = latents.len();
                let dims = model.config().dims();
                let levels = match &latents {
                    LatentInput::Flat(flat) => {
                        let values = flat.values();
                        compute(py, || {
                            in_batches(n, batch, |start, len| {
                                let z =
                                    Latents::unflatten(rows(values, start, [len, dims]), &shapes);
                                Self::to_data_levels(model, model.decode(z))
                            })
                        })
                    }
                    LatentInput::Scales(scales) => {
                        let values: Vec<&[f32]> = scales.iter().map(FloatArray::values).collect();
                        compute(py, || {
                            in_batches(n, batch, |start, len| {
                                let z = Latents {
                                    scales: values
                                        .iter()
                                        .zip(&shapes)
                                        .map(|(v, &[c, h, w])| rows(v, start, [len, c, h, w]))
                                        .collect(),
                                };
                                Self::to_data_levels(model, model.decode(z))
                            })
                        })
                    }
                };
                Ok(Self::image_array(py, model, levels, channels_last)?.into_any())
            }
            Flow::Vector(model) => {
                Self::check_vector_options(channels_last, false)?;
                let dims = model.dims();
                let latents = FloatArray::read(z, "latents", &[dims])?;
                let (n, values) = (latents.len(), latents.values());
                let x = compute(py, || {
                    in_batches(n, batch, |start, len| {
                        to_f32(model.inverse(rows(values, start, [len, dims])))
                    })
                });
                Ok(array(py, x, &[n, dims])?.into_any())
            }
        }
    }
}

/// A TOML value as the Python object `tomllib` would give.
fn toml_to_python<'py>(py: Python<'py>, value: &toml::Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        toml::Value::String(s) => s.into_pyobject(py)?.into_any(),
        toml::Value::Integer(i) => i.into_pyobject(py)?.into_any(),
        toml::Value::Float(f) => f.into_pyobject(py)?.into_any(),
        toml::Value::Boolean(b) => b.into_pyobject(py)?.to_owned().into_any(),
        toml::Value::Datetime(d) => d.to_string().into_pyobject(py)?.into_any(),
        toml::Value::Array(items) => {
            let items = items
                .iter()
                .map(|v| toml_to_python(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        toml::Value::Table(table) => {
            let dict = PyDict::new(py);
            for (key, v) in table {
                dict.set_item(key, toml_to_python(py, v)?)?;
            }
            dict.into_any()
        }
    })
}
