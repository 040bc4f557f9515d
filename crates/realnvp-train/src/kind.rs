//! The kinds of flow a run trains, the image Real NVP ([`Images`]) and the vector Real
//! NVP ([`Vectors`]), behind one trait, [`FlowKind`]: the run loop, evaluation, samples,
//! checkpoints and the data-parallel path are written once, generic over the kind, and a
//! batch of the other kind cannot be written down.
//!
//! [`with_kind`] is the one place that decides which kind a model configuration is: the
//! trainer calls it where a run configuration and its data set become a run, the CLI
//! where a trained model is loaded.

use std::fmt::Debug;
use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use realnvp_core::{
    AutodiffConvBackend, ConfigError, ConvBackend, ConvPrecision, Dequantization, Flow, FlowConfig,
    RealNvp, RealNvpConfig, VectorRealNvp, VectorRealNvpConfig,
};
use realnvp_data::loader::{Fetch, ImageSource, VectorArray};
use realnvp_data::ImageArray;

use crate::data::Splits;
use crate::error::TrainError;
use crate::output::grid::{write_level_grid, write_scatter, MAX_GRID_IMAGES, MAX_SCATTER_POINTS};

/// A kind of flow: its settings, its model on any backend, its batch and its data, and
/// what the trainer, evaluation, samples, checkpoints and the data-parallel path ask of
/// it. Implemented by [`Images`] and [`Vectors`].
pub trait FlowKind: Sized + Send + Sync + 'static {
    /// Core's model configuration of this kind, the data set's shape filled in
    /// (`RealNvpConfig`, `VectorRealNvpConfig`).
    type Settings: Clone + Debug + PartialEq + Send + Sync;
    /// The model on a backend, for inference (`RealNvp<B>`, `VectorRealNvp<B>`).
    type Model<B: ConvBackend>: Module<B> + Clone + Debug + Send;
    /// The same model on an autodiff backend, for training: its evaluation copy
    /// (`valid()`) is [`FlowKind::Model`] on the inner backend. The same type as `Model`
    /// for both kinds; it exists because only here can the trait state that bound, which
    /// Adam and `valid()` need, for every autodiff backend.
    type Trainable<B: AutodiffConvBackend>: AutodiffModule<B, InnerModule = Self::Model<B::InnerBackend>>
        + Clone
        + Debug
        + Send;
    /// One batch on a backend: pixels with their labels (for a class-conditional model),
    /// or vectors.
    type Batch<B: Backend>;
    /// One split of a data set of this kind (`ImageSource`, `VectorArray`).
    type Source: Fetch + Clone + Debug + Send + Sync;

    /// `"image"` or `"vector"`.
    const NAME: &'static str;
    /// The most samples one picture of this kind holds (a grid, a scatter density).
    const MAX_SAMPLES: usize;

    /// The model configuration as core writes it (`model.toml`, exports).
    fn flow_config(settings: &Self::Settings) -> FlowConfig;

    /// Dimensions per example.
    fn dims(settings: &Self::Settings) -> usize;

    /// Dimensions per example of `model`.
    fn model_dims<B: ConvBackend>(model: &Self::Model<B>) -> usize;

    /// A freshly initialised model (core's `init` of the settings).
    fn new_model<B: ConvBackend>(
        settings: &Self::Settings,
        device: &B::Device,
    ) -> Result<Self::Model<B>, ConfigError>;

    /// A freshly initialised model whose s/t convolutions compute in `precision`; errors
    /// name `model` or `train.conv_precision`.
    fn init<B: ConvBackend>(
        settings: &Self::Settings,
        precision: ConvPrecision,
        device: &B::Device,
    ) -> Result<Self::Model<B>, TrainError> {
        let model = Self::new_model(settings, device).map_err(model_error("model"))?;
        Self::with_conv_precision(model, precision, device)
            .map_err(model_error("train.conv_precision"))
    }

    /// `model` with its s/t convolutions computed in `precision`, after checking that the
    /// backend computes in that type on `device` (`train.conv_precision`, `eval
    /// --conv-precision`). Vector models have no convolutions: they take `f32` only.
    fn with_conv_precision<B: ConvBackend>(
        model: Self::Model<B>,
        precision: ConvPrecision,
        device: &B::Device,
    ) -> Result<Self::Model<B>, ConfigError>;

    /// The model inside core's either-kind [`Flow`] (checkpoints, exports, replicas).
    fn into_flow<B: ConvBackend>(model: Self::Model<B>) -> Flow<B>;

    /// The model of this kind inside `flow`; `None` when it holds the other kind.
    fn from_flow<B: ConvBackend>(flow: Flow<B>) -> Option<Self::Model<B>>;

    /// The training model of an inference model on an autodiff backend (the same value).
    fn trainable<B: AutodiffConvBackend>(model: Self::Model<B>) -> Self::Trainable<B>;

    /// The inference model of a training model (the same value).
    fn untrainable<B: AutodiffConvBackend>(model: Self::Trainable<B>) -> Self::Model<B>;

    /// A training model seen as the inference model it is.
    fn as_model<B: AutodiffConvBackend>(model: &Self::Trainable<B>) -> &Self::Model<B>;

    /// This kind's part of a loaded data set; an error when it holds the other kind.
    fn data(splits: Splits) -> Result<Data<Self>, TrainError>;

    /// A fetched batch of examples as `model`'s batch on `device`. A class-conditional
    /// model is given the labels: in training (`training`) images without labels are an
    /// error, in evaluation they are scored by the marginal likelihood.
    fn batch<B: ConvBackend>(
        model: &Self::Model<B>,
        examples: <Self::Source as Fetch>::Batch,
        training: bool,
        device: &B::Device,
    ) -> Result<Self::Batch<B>, TrainError>;

    /// Bits/dim per example `[batch]`: for images of the integer pixels (dequantisation
    /// and logit included), given the label for a class-conditional model; for vectors
    /// `-log p(x) / (D ln 2)` of the continuous density, which can be negative.
    fn bits_per_dim<B: ConvBackend>(
        model: &Self::Model<B>,
        batch: Self::Batch<B>,
        dequantization: Dequantization,
    ) -> Tensor<B, 1>;

    /// Sums over a batch, for evaluation with seeded uniform dequantisation: the
    /// marginal bits/dim (`-log p(x)`) and, for a class-conditional model, the bits/dim
    /// given each example's label; and the number of examples.
    fn bits_per_dim_sums<B: ConvBackend>(
        model: &Self::Model<B>,
        batch: Self::Batch<B>,
    ) -> (f64, Option<f64>, usize);

    /// Sum of squared coupling scales, for the L2 penalty.
    fn scale_penalty<B: ConvBackend>(model: &Self::Model<B>) -> Tensor<B, 1>;

    /// Whether samples of a model with `settings` can be drawn as a picture (images; 2-D
    /// vectors).
    fn has_picture(settings: &Self::Settings) -> bool;

    /// Draws `n` samples at `temperature` (seeded by the caller) into a picture at
    /// `path`: a grid of images, or the scatter density of a 2-D model.
    fn draw_samples<B: ConvBackend>(
        model: &Self::Model<B>,
        path: &Path,
        n: usize,
        temperature: f64,
        device: &B::Device,
    ) -> Result<(), TrainError>;
}

/// A data set of one kind, split, as a run uses it.
#[derive(Debug, Clone)]
pub struct Data<K: FlowKind> {
    /// The training examples.
    pub train: K::Source,
    /// The held-out examples.
    pub test: K::Source,
    /// Which examples are held out, in words (the official split, or the fallback).
    pub held_out: String,
}

/// What runs once the kind of a model is known: [`with_kind`] calls `visit` with the
/// kind as a type and its settings.
pub trait KindVisitor {
    /// What the visit gives (usually a `Result`).
    type Output;

    /// Runs with the model settings of kind `K`.
    fn visit<K: FlowKind>(self, settings: K::Settings) -> Self::Output;
}

/// The one place that decides image or vector: `visitor` runs with the kind of
/// `flow_config` and its settings.
pub fn with_kind<V: KindVisitor>(flow_config: FlowConfig, visitor: V) -> V::Output {
    match flow_config {
        FlowConfig::Image(settings) => visitor.visit::<Images>(settings),
        FlowConfig::Vector(settings) => visitor.visit::<Vectors>(settings),
    }
}

/// The image Real NVP on integer pixels `[batch, channels, height, width]`.
#[derive(Debug, Clone, Copy)]
pub struct Images;

/// A batch of images: integer pixels `[batch, channels, height, width]`, and their class
/// labels `[batch]` when the model is class-conditional.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// Pixel levels as floats.
    pub pixels: Tensor<B, 4>,
    /// Class labels, given to a class-conditional model only.
    pub labels: Option<Tensor<B, 1, Int>>,
}

impl FlowKind for Images {
    type Settings = RealNvpConfig;
    type Model<B: ConvBackend> = RealNvp<B>;
    type Trainable<B: AutodiffConvBackend> = RealNvp<B>;
    type Batch<B: Backend> = ImageBatch<B>;
    type Source = ImageSource;

    const NAME: &'static str = "image";
    const MAX_SAMPLES: usize = MAX_GRID_IMAGES;

    fn flow_config(settings: &RealNvpConfig) -> FlowConfig {
        FlowConfig::Image(settings.clone())
    }

    fn dims(settings: &RealNvpConfig) -> usize {
        settings.dims()
    }

    fn model_dims<B: ConvBackend>(model: &RealNvp<B>) -> usize {
        model.config().dims()
    }

    fn new_model<B: ConvBackend>(
        settings: &RealNvpConfig,
        device: &B::Device,
    ) -> Result<RealNvp<B>, ConfigError> {
        settings.init(device)
    }

    fn with_conv_precision<B: ConvBackend>(
        model: RealNvp<B>,
        precision: ConvPrecision,
        device: &B::Device,
    ) -> Result<RealNvp<B>, ConfigError> {
        precision.check::<B>(device)?;
        Ok(model.with_conv_precision(precision))
    }

    fn into_flow<B: ConvBackend>(model: RealNvp<B>) -> Flow<B> {
        Flow::Image(model)
    }

    fn from_flow<B: ConvBackend>(flow: Flow<B>) -> Option<RealNvp<B>> {
        match flow {
            Flow::Image(model) => Some(model),
            Flow::Vector(_) => None,
        }
    }

    fn trainable<B: AutodiffConvBackend>(model: RealNvp<B>) -> RealNvp<B> {
        model
    }

    fn untrainable<B: AutodiffConvBackend>(model: RealNvp<B>) -> RealNvp<B> {
        model
    }

    fn as_model<B: AutodiffConvBackend>(model: &RealNvp<B>) -> &RealNvp<B> {
        model
    }

    fn data(splits: Splits) -> Result<Data<Self>, TrainError> {
        match splits {
            Splits::Images {
                train,
                test,
                held_out,
                ..
            } => Ok(Data {
                train,
                test,
                held_out,
            }),
            Splits::Vectors { .. } => Err(other_kind::<Self>()),
        }
    }

    fn batch<B: ConvBackend>(
        model: &RealNvp<B>,
        examples: ImageArray,
        training: bool,
        device: &B::Device,
    ) -> Result<ImageBatch<B>, TrainError> {
        let batch = examples.to_batch::<B>(device);
        let labels = match (model.classes() > 0, batch.labels) {
            (true, Some(labels)) => Some(labels),
            (true, None) if training => {
                return Err(TrainError::Config {
                    origin: "model.conditional".into(),
                    message: "the training images have no labels".into(),
                })
            }
            _ => None,
        };
        Ok(ImageBatch {
            pixels: batch.pixels,
            labels,
        })
    }

    fn bits_per_dim<B: ConvBackend>(
        model: &RealNvp<B>,
        batch: ImageBatch<B>,
        dequantization: Dequantization,
    ) -> Tensor<B, 1> {
        match batch.labels {
            Some(labels) => model.bits_per_dim_given(batch.pixels, labels, dequantization),
            None => model.bits_per_dim(batch.pixels, dequantization),
        }
    }

    fn bits_per_dim_sums<B: ConvBackend>(
        model: &RealNvp<B>,
        batch: ImageBatch<B>,
    ) -> (f64, Option<f64>, usize) {
        let examples = batch.pixels.dims()[0];
        match batch.labels {
            Some(labels) => {
                let (marginal, given) = model.bits_per_dim_marginal_and_given(
                    batch.pixels,
                    labels,
                    Dequantization::Uniform,
                );
                (sum(marginal), Some(sum(given)), examples)
            }
            None => {
                let bits = model.bits_per_dim(batch.pixels, Dequantization::Uniform);
                (sum(bits), None, examples)
            }
        }
    }

    fn scale_penalty<B: ConvBackend>(model: &RealNvp<B>) -> Tensor<B, 1> {
        model.scale_penalty()
    }

    fn has_picture(_settings: &RealNvpConfig) -> bool {
        true
    }

    fn draw_samples<B: ConvBackend>(
        model: &RealNvp<B>,
        path: &Path,
        n: usize,
        temperature: f64,
        device: &B::Device,
    ) -> Result<(), TrainError> {
        let latents = model.sample_latents(n, temperature, device);
        let samples = model
            .preprocess()
            .quantize(model.decode_in_chunks(latents, SAMPLE_CHUNK));
        let columns = (n as f64).sqrt().ceil() as usize;
        write_level_grid(path, samples, model.preprocess().levels(), columns)
    }
}

/// Samples decoded at once by [`FlowKind::draw_samples`]: a grid of more is decoded in
/// pieces of this many, so that memory holds the activations of these alone.
const SAMPLE_CHUNK: usize = 1024;

/// The vector Real NVP on real vectors `[batch, dims]` (2-D toys, tabular data).
#[derive(Debug, Clone, Copy)]
pub struct Vectors;

impl FlowKind for Vectors {
    type Settings = VectorRealNvpConfig;
    type Model<B: ConvBackend> = VectorRealNvp<B>;
    type Trainable<B: AutodiffConvBackend> = VectorRealNvp<B>;
    type Batch<B: Backend> = Tensor<B, 2>;
    type Source = VectorArray;

    const NAME: &'static str = "vector";
    const MAX_SAMPLES: usize = MAX_SCATTER_POINTS;

    fn flow_config(settings: &VectorRealNvpConfig) -> FlowConfig {
        FlowConfig::Vector(settings.clone())
    }

    fn dims(settings: &VectorRealNvpConfig) -> usize {
        settings.dims
    }

    fn model_dims<B: ConvBackend>(model: &VectorRealNvp<B>) -> usize {
        model.dims()
    }

    fn new_model<B: ConvBackend>(
        settings: &VectorRealNvpConfig,
        device: &B::Device,
    ) -> Result<VectorRealNvp<B>, ConfigError> {
        settings.init(device)
    }

    fn with_conv_precision<B: ConvBackend>(
        model: VectorRealNvp<B>,
        precision: ConvPrecision,
        device: &B::Device,
    ) -> Result<VectorRealNvp<B>, ConfigError> {
        precision.check::<B>(device)?;
        if precision != ConvPrecision::F32 {
            return Err(ConfigError::invalid(
                "conv_precision",
                precision,
                "f32 for a vector model: its couplings are MLPs, without convolutions",
            ));
        }
        Ok(model)
    }

    fn into_flow<B: ConvBackend>(model: VectorRealNvp<B>) -> Flow<B> {
        Flow::Vector(model)
    }

    fn from_flow<B: ConvBackend>(flow: Flow<B>) -> Option<VectorRealNvp<B>> {
        match flow {
            Flow::Vector(model) => Some(model),
            Flow::Image(_) => None,
        }
    }

    fn trainable<B: AutodiffConvBackend>(model: VectorRealNvp<B>) -> VectorRealNvp<B> {
        model
    }

    fn untrainable<B: AutodiffConvBackend>(model: VectorRealNvp<B>) -> VectorRealNvp<B> {
        model
    }

    fn as_model<B: AutodiffConvBackend>(model: &VectorRealNvp<B>) -> &VectorRealNvp<B> {
        model
    }

    fn data(splits: Splits) -> Result<Data<Self>, TrainError> {
        match splits {
            Splits::Vectors {
                train,
                test,
                held_out,
                ..
            } => Ok(Data {
                train,
                test,
                held_out,
            }),
            Splits::Images { .. } => Err(other_kind::<Self>()),
        }
    }

    fn batch<B: ConvBackend>(
        _model: &VectorRealNvp<B>,
        examples: VectorArray,
        _training: bool,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, TrainError> {
        Ok(examples.to_tensor(device))
    }

    fn bits_per_dim<B: ConvBackend>(
        model: &VectorRealNvp<B>,
        batch: Tensor<B, 2>,
        _dequantization: Dequantization,
    ) -> Tensor<B, 1> {
        let dims = model.dims() as f64;
        model
            .log_prob(batch)
            .div_scalar(-dims * std::f64::consts::LN_2)
    }

    fn bits_per_dim_sums<B: ConvBackend>(
        model: &VectorRealNvp<B>,
        batch: Tensor<B, 2>,
    ) -> (f64, Option<f64>, usize) {
        let examples = batch.dims()[0];
        let bits = Self::bits_per_dim(model, batch, Dequantization::Uniform);
        (sum(bits), None, examples)
    }

    fn scale_penalty<B: ConvBackend>(model: &VectorRealNvp<B>) -> Tensor<B, 1> {
        model.scale_penalty()
    }

    fn has_picture(settings: &VectorRealNvpConfig) -> bool {
        settings.dims == 2
    }

    fn draw_samples<B: ConvBackend>(
        model: &VectorRealNvp<B>,
        path: &Path,
        n: usize,
        temperature: f64,
        device: &B::Device,
    ) -> Result<(), TrainError> {
        if model.dims() != 2 {
            return Err(TrainError::Config {
                origin: "sample".into(),
                message: format!(
                    "a {}-dimensional vector model has no picture; only 2-D models are drawn",
                    model.dims()
                ),
            });
        }
        let points = model
            .sample(n, temperature, device)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        write_scatter(path, &points, 4.0, 256)
    }
}

/// The model of kind `K` inside a loaded `flow` (a run's export or checkpoint, whose
/// configuration said `K`).
pub fn model_of_kind<K: FlowKind, B: ConvBackend>(
    flow: Flow<B>,
) -> Result<K::Model<B>, TrainError> {
    K::from_flow(flow).ok_or_else(|| TrainError::Config {
        origin: "model".into(),
        message: format!(
            "the weights hold another kind of model than the {} model of the configuration",
            K::NAME
        ),
    })
}

/// Core's configuration error at the key or file `origin`.
fn model_error(origin: &str) -> impl FnOnce(ConfigError) -> TrainError + '_ {
    move |source| TrainError::Model {
        origin: origin.into(),
        source,
    }
}

/// The data set holds the other kind of examples than the model of kind `K` takes.
fn other_kind<K: FlowKind>() -> TrainError {
    TrainError::Config {
        origin: "data".into(),
        message: format!(
            "the data set holds the other kind of examples than a model of kind {} takes",
            K::NAME
        ),
    }
}

/// The sum of a tensor's values.
fn sum<B: Backend>(values: Tensor<B, 1>) -> f64 {
    use burn::tensor::ElementConversion;
    values.sum().into_scalar().elem::<f64>()
}
