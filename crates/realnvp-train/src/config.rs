//! The run configuration (TOML): data, model and training settings, with `key=value`
//! overrides from the command line.

use std::path::{Path, PathBuf};

use realnvp_core::{ConvPrecision, FlowConfig, RealNvpArchitecture, VectorArchitecture};
use realnvp_data::folder::FolderPreset;
use realnvp_data::partition::Part;
use realnvp_data::toy::Toy;
use realnvp_data::DatasetInfo;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::state::schedule::{DecayKind, Schedule, ScheduleSettings};

/// The configuration used when none is given: `configs/digits.toml`, built in.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/digits.toml");

/// Everything a run needs; written to the run directory as `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The data set.
    pub data: DataConfig,
    /// The image model's architecture (shape, levels and classes come from the data set).
    pub model: RealNvpArchitecture,
    /// The vector model's architecture (dimensions come from the data set).
    pub vector_model: VectorArchitecture,
    /// Optimisation, stopping, logging and checkpointing.
    pub train: TrainSettings,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            data: DataConfig::Digits { flip: false },
            model: RealNvpArchitecture::default(),
            vector_model: VectorArchitecture::default(),
            train: TrainSettings::default(),
        }
    }
}

/// Which data set to train on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// The embedded UCI digits (8x8, 17 levels).
    Digits {
        /// Horizontal-flip augmentation.
        #[serde(default)]
        flip: bool,
    },
    /// A directory of the four standard IDX files (MNIST, Fashion-MNIST).
    Idx {
        /// The directory.
        path: PathBuf,
        /// Horizontal-flip augmentation.
        #[serde(default)]
        flip: bool,
    },
    /// The CIFAR-10 binary distribution (`cifar-10-batches-bin`).
    Cifar10 {
        /// The directory.
        path: PathBuf,
        /// Horizontal-flip augmentation (the paper uses it).
        #[serde(default = "yes")]
        flip: bool,
    },
    /// A folder of PNG/JPEG images. The held-out split is the official one where given:
    /// a separate folder (`test_path`) or a partition list (`partition`); otherwise every
    /// 10th image in file order.
    ImageFolder {
        /// The folder (with `test_path` or `partition`, of the training images or of all).
        path: PathBuf,
        /// A separate folder of held-out images, e.g. ImageNet's official validation
        /// images; all of `path` is then training data.
        #[serde(default)]
        test_path: Option<PathBuf>,
        /// An official partition list of the files of `path` (CelebA's
        /// `list_eval_partition.txt`: `<file name> <0 train, 1 valid, 2 test>` per line).
        #[serde(default)]
        partition: Option<PathBuf>,
        /// Which part of `partition` is held out: `valid` (the paper reports CelebA's
        /// validation set) or `test`. Training uses part 0 only.
        #[serde(default = "valid")]
        held_out: Part,
        /// Size handling (CelebA, LSUN, resize, native).
        preset: FolderPreset,
        /// 3 for colour, 1 for grey.
        #[serde(default = "three")]
        channels: usize,
        /// Horizontal-flip augmentation (the paper uses it for natural images).
        #[serde(default = "yes")]
        flip: bool,
    },
    /// A seeded 2-D toy distribution.
    Toy {
        /// Which distribution.
        toy: Toy,
        /// Training points.
        #[serde(default = "toy_train")]
        train: usize,
        /// Test points.
        #[serde(default = "toy_test")]
        test: usize,
    },
    /// Numeric CSV files, standardised with training statistics.
    Csv {
        /// Training rows.
        train: PathBuf,
        /// Test rows.
        test: PathBuf,
    },
}

impl DataConfig {
    /// A short name of the data set, for titles: `digits`, `fashion-mnist (IDX)` (the
    /// folder's name), `CIFAR-10`, `celeba (images)`, `toy moons`, `power (CSV)`.
    pub fn describe(&self) -> String {
        let folder = |path: &Path| {
            path.file_name()
                .or(path.parent().and_then(|p| p.file_name()))
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string())
        };
        match self {
            DataConfig::Digits { .. } => "digits".into(),
            DataConfig::Idx { path, .. } => format!("{} (IDX)", folder(path)),
            DataConfig::Cifar10 { .. } => "CIFAR-10".into(),
            DataConfig::ImageFolder { path, .. } => format!("{} (images)", folder(path)),
            DataConfig::Toy { toy, .. } => {
                let name = serde_json::to_string(toy).unwrap_or_default();
                format!("toy {}", name.trim_matches('"'))
            }
            DataConfig::Csv { train, .. } => {
                let stem = train.file_stem().map(|s| s.to_string_lossy().into_owned());
                format!("{} (CSV)", stem.unwrap_or_else(|| "table".into()))
            }
        }
    }
}

fn valid() -> Part {
    Part::Valid
}

fn yes() -> bool {
    true
}
fn three() -> usize {
    3
}
fn toy_train() -> usize {
    20_000
}
fn toy_test() -> usize {
    5_000
}

/// Optimisation, stopping, logging and checkpointing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// Seed of initialisation, data order, augmentation and dequantisation noise.
    pub seed: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Adam beta 1.
    pub beta1: f32,
    /// Adam beta 2.
    pub beta2: f32,
    /// Adam's epsilon for the loss in per-example nats (the paper: Adam's usual 1e-8).
    /// The loss is bits/dim, `D ln 2` times smaller, so the optimiser gets
    /// `adam_epsilon / (D ln 2)` and behaves exactly as Adam with this epsilon on nats.
    /// Absent: Burn's default 1e-5 on bits/dim, which is `1e-5 * D ln 2` on nats (5.4e-3
    /// for Fashion-MNIST, 2.1e-2 for CIFAR-10), until the ablation of issue 13 measures
    /// which trains better.
    pub adam_epsilon: Option<f64>,
    /// Coefficient of the L2 penalty on the coupling scales (the paper's 5e-5).
    pub scale_penalty: f64,
    /// Linear learning-rate warmup over this many steps (step k of it gets
    /// `learning_rate * k / warmup_steps`; 0: none), before the decay.
    pub warmup_steps: u64,
    /// The decay after the warmup: `constant`, `cosine`, `exponential` or `step`.
    pub schedule: DecayKind,
    /// Cosine: steps from the end of the warmup to `min_learning_rate` (default: up to
    /// `max_steps`). Exponential and step: steps per factor of `decay_rate`.
    pub decay_steps: Option<u64>,
    /// Exponential and step schedules: the factor in (0, 1) per `decay_steps` steps.
    pub decay_rate: f64,
    /// Cosine schedule: the learning rate at its end, held after it.
    pub min_learning_rate: f64,
    /// Clip the gradient's global L2 norm (over all parameters together, of the bits/dim
    /// loss) to this value: the whole gradient is scaled down, its direction kept.
    pub grad_clip_norm: Option<f32>,
    /// Decay of an exponential moving average of the weights used for evaluation,
    /// sampling and the export (e.g. 0.999); none when absent.
    pub ema_decay: Option<f64>,
    /// Train with Burn's gradient checkpointing (`Autodiff<B, BalancedCheckpointing>`):
    /// the s/t networks' batch norm + ReLU outputs and Burn's memory-bound element-wise
    /// results are recomputed in the backward pass instead of kept, for less activation
    /// memory on large images at some speed; the gradients are the same.
    pub gradient_checkpointing: bool,
    /// The float type the s/t networks' convolutions compute in: `"f32"`, `"bf16"` or
    /// `"f16"` (see `realnvp_core::precision`). The flow's arithmetic, log-determinants,
    /// prior, weights and optimiser state stay `f32`. Half precision is for GPUs with
    /// tensor cores; `bf16` is the one to train with (`f16` gradients can underflow).
    pub conv_precision: ConvPrecision,
    /// Stop after this many steps.
    pub max_steps: Option<u64>,
    /// Stop after this many epochs.
    pub max_epochs: Option<u64>,
    /// Stop after this many minutes of training (wall clock).
    pub max_minutes: Option<f64>,
    /// Evaluate held-out bits/dim, write samples and a checkpoint every this many steps.
    pub eval_every: u64,
    /// Examples per evaluation batch.
    pub eval_batch_size: usize,
    /// Held-out examples used by periodic evaluations (all at the end of the run).
    pub eval_examples: Option<usize>,
    /// Append a line to `metrics.jsonl` every this many steps.
    pub log_every: u64,
    /// Images in each sample grid.
    pub samples: usize,
    /// Prior temperature of the sample grids.
    pub sample_temperature: f64,
    /// Also write a checkpoint every this many steps between evaluations, so that a run
    /// killed outright (`kill -9`, a lost node) loses at most this many steps.
    pub checkpoint_every: Option<u64>,
    /// Also write a checkpoint once this many minutes (wall clock) have passed since the
    /// last one.
    pub checkpoint_minutes: Option<f64>,
    /// Checkpoints kept besides the best one.
    pub keep_checkpoints: usize,
    /// Stop after this many non-finite steps in a row.
    pub max_bad_steps: u32,
    /// MPI runs (`realnvp train --mpi`): a rank that has waited this many seconds in one
    /// collective call (the step's all-reduce, the stop vote, the start-point broadcast,
    /// the final comparison, the end of the run) aborts the whole job, naming the step and
    /// the ranks it heard nothing from. The wait includes everything the other ranks do
    /// between two calls: the leader's periodic evaluation (`eval_examples`) and
    /// checkpoint, its final evaluation on the whole test split and export, and on a GPU
    /// the first steps' autotuning. The default, 600 s (PyTorch's default NCCL timeout),
    /// leaves room for all of these; lower it when a hung node costs more than a slow
    /// evaluation.
    pub collective_timeout_seconds: f64,
}

impl TrainSettings {
    /// The keys that shape the learning rate over the run.
    pub fn schedule_settings(&self) -> ScheduleSettings {
        ScheduleSettings {
            learning_rate: self.learning_rate,
            warmup_steps: self.warmup_steps,
            schedule: self.schedule,
            decay_steps: self.decay_steps,
            decay_rate: self.decay_rate,
            min_learning_rate: self.min_learning_rate,
            max_steps: self.max_steps,
        }
    }
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            seed: 0,
            batch_size: 64,
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            adam_epsilon: None,
            scale_penalty: realnvp_core::PAPER_SCALE_PENALTY,
            warmup_steps: 0,
            schedule: DecayKind::Constant,
            decay_steps: None,
            decay_rate: 0.1,
            min_learning_rate: 0.0,
            grad_clip_norm: None,
            ema_decay: None,
            gradient_checkpointing: false,
            conv_precision: ConvPrecision::F32,
            max_steps: None,
            max_epochs: None,
            max_minutes: None,
            eval_every: 500,
            eval_batch_size: 256,
            eval_examples: None,
            log_every: 10,
            samples: 64,
            sample_temperature: 1.0,
            checkpoint_every: None,
            checkpoint_minutes: None,
            keep_checkpoints: 3,
            max_bad_steps: 10,
            collective_timeout_seconds: 600.0,
        }
    }
}

impl RunConfig {
    /// Reads a TOML file, applies `key=value` overrides (dotted keys, e.g.
    /// `train.learning_rate=3e-4`) and validates the result.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, TrainError> {
        let config = Self::read(path, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// [`RunConfig::load`] without the validation, for a caller that sets more values
    /// (typed command-line flags) and then calls [`RunConfig::validate`].
    pub fn read(path: Option<&Path>, overrides: &[String]) -> Result<Self, TrainError> {
        let (mut value, source) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
                let value: toml::Table = toml::from_str(&text).map_err(|e| TrainError::Config {
                    origin: path.display().to_string(),
                    message: e.message().to_string(),
                })?;
                (value, path.display().to_string())
            }
            None => {
                let value: toml::Table =
                    toml::from_str(DEFAULT_CONFIG).map_err(|e| TrainError::Config {
                        origin: "configs/digits.toml (built in)".into(),
                        message: e.message().to_string(),
                    })?;
                (
                    value,
                    "the default configuration (configs/digits.toml)".to_string(),
                )
            }
        };
        for item in overrides {
            apply_override(&mut value, item)?;
        }
        let config: RunConfig = serde_path_to_error::deserialize(toml::Value::Table(value))
            .map_err(|e| TrainError::Config {
                origin: if overrides.is_empty() {
                    source
                } else {
                    format!("{source} with --set overrides")
                },
                message: key_message(&e.path().to_string(), e.inner().message()),
            })?;
        Ok(config)
    }

    /// Checks the training settings.
    pub fn validate(&self) -> Result<(), TrainError> {
        let t = &self.train;
        let bad = |key: &str, expected: &str| TrainError::Config {
            origin: format!("train.{key}"),
            message: format!("expected {expected}"),
        };
        if t.batch_size == 0 {
            return Err(bad("batch_size", "a positive integer"));
        }
        if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
            return Err(bad("learning_rate", "a positive number"));
        }
        if t.adam_epsilon.is_some_and(|e| !(e > 0.0 && e.is_finite())) {
            return Err(bad("adam_epsilon", "a positive number"));
        }
        if t.grad_clip_norm
            .is_some_and(|c| !(c > 0.0 && c.is_finite()))
        {
            return Err(bad("grad_clip_norm", "a positive number"));
        }
        if t.eval_every == 0 || t.log_every == 0 {
            return Err(bad("eval_every/log_every", "positive integers"));
        }
        if t.ema_decay.is_some_and(|d| !(0.0..1.0).contains(&d)) {
            return Err(bad("ema_decay", "a number in [0, 1)"));
        }
        if t.sample_temperature.is_nan() || t.sample_temperature < 0.0 {
            return Err(bad("sample_temperature", "a number >= 0"));
        }
        if t.max_minutes.is_some_and(|m| m.is_nan() || m < 0.0) {
            return Err(bad("max_minutes", "a number >= 0"));
        }
        if t.eval_batch_size == 0 {
            return Err(bad("eval_batch_size", "a positive integer"));
        }
        if t.checkpoint_every == Some(0) {
            return Err(bad("checkpoint_every", "a positive integer (steps)"));
        }
        if t.checkpoint_minutes
            .is_some_and(|m| !(m > 0.0 && m.is_finite()))
        {
            return Err(bad("checkpoint_minutes", "a positive number of minutes"));
        }
        if !(t.collective_timeout_seconds > 0.0 && t.collective_timeout_seconds.is_finite()) {
            return Err(bad(
                "collective_timeout_seconds",
                "a positive number of seconds",
            ));
        }
        Schedule::new(&t.schedule_settings())?;
        Ok(())
    }

    /// The model configuration matching a data set with `info` (images) or `dims`
    /// (vectors).
    pub fn flow_config(&self, data: &DataShape) -> Result<FlowConfig, TrainError> {
        let config = match data {
            DataShape::Images(info) => {
                let m = &self.model;
                let classes = match (m.conditional, info.classes) {
                    (false, _) => 0,
                    (true, Some(classes)) if classes >= 2 => classes,
                    (true, classes) => {
                        return Err(TrainError::Config {
                            origin: "model.conditional".into(),
                            message: format!(
                                "data set `{}` has {}; a class-conditional model needs at least 2",
                                info.name,
                                classes.map_or("no labels".into(), |k| format!("{k} class")),
                            ),
                        })
                    }
                };
                FlowConfig::Image(m.config(info.shape, info.levels, classes))
            }
            DataShape::Vectors { dims, .. } => FlowConfig::Vector(self.vector_model.config(*dims)),
        };
        // Validate now so the error names the model key and the data set.
        config.validate().map_err(|source| TrainError::Model {
            origin: format!("model for data set `{}`", data.name()),
            source,
        })?;
        Ok(config)
    }
}

/// What the trainer learns about a data set before building the model.
#[derive(Debug, Clone, PartialEq)]
pub enum DataShape {
    /// An image data set.
    Images(DatasetInfo),
    /// A vector data set.
    Vectors {
        /// Name for reports.
        name: String,
        /// Dimensions per vector.
        dims: usize,
    },
}

impl DataShape {
    /// Name for reports.
    pub fn name(&self) -> &str {
        match self {
            DataShape::Images(info) => &info.name,
            DataShape::Vectors { name, .. } => name,
        }
    }
}

/// A deserialisation error's message prefixed with the dotted key it concerns, when there is
/// one (`.` is the path of the whole document).
fn key_message(path: &str, message: &str) -> String {
    if path.is_empty() || path == "." {
        message.to_string()
    } else {
        format!("key `{path}`: {message}")
    }
}

/// Sets `key=value` (dotted key) in a TOML table; the value is parsed as TOML, or taken as
/// a string when it is not valid TOML.
fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), TrainError> {
    let (key, raw) = item.split_once('=').ok_or_else(|| TrainError::Config {
        origin: format!("--set {item}"),
        message: "expected key=value".into(),
    })?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, parents) = parts.split_last().ok_or_else(|| TrainError::Config {
        origin: format!("--set {item}"),
        message: "empty key".into(),
    })?;
    let mut current = table;
    for part in parents {
        current = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| TrainError::Config {
                origin: format!("--set {item}"),
                message: format!("`{part}` is not a table"),
            })?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_train_on_the_embedded_digits() {
        let config = RunConfig::load(None, &[]).expect("defaults are valid");
        assert_eq!(config.data, DataConfig::Digits { flip: false });
        assert_eq!(config.train.batch_size, 64);
        assert!(
            config.train.max_steps.is_some(),
            "the default run stops by itself"
        );
    }

    #[test]
    fn every_shipped_config_is_valid_and_fits_its_data() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
            let path = entry.expect("readable").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let config = RunConfig::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
            let shape = match &config.data {
                DataConfig::Digits { .. } => DataShape::Images(info([1, 8, 8])),
                DataConfig::Idx { .. } => DataShape::Images(info([1, 28, 28])),
                DataConfig::Cifar10 { .. } => DataShape::Images(info([3, 32, 32])),
                DataConfig::ImageFolder { preset, .. } => match preset {
                    FolderPreset::Resize { size } => {
                        DataShape::Images(info([3, *size as usize, *size as usize]))
                    }
                    _ => DataShape::Images(info([3, 64, 64])),
                },
                DataConfig::Toy { .. } => DataShape::Vectors {
                    name: "toy".into(),
                    dims: 2,
                },
                DataConfig::Csv { .. } => DataShape::Vectors {
                    name: "csv".into(),
                    dims: 4,
                },
            };
            config
                .flow_config(&shape)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
        assert!(seen >= 10, "{seen} configs");
    }

    fn info(shape: [usize; 3]) -> DatasetInfo {
        DatasetInfo {
            name: "test".into(),
            shape,
            levels: 256,
            train: 1,
            test: 1,
            classes: Some(10),
        }
    }

    #[test]
    fn a_conditional_model_takes_its_classes_from_labelled_data_only() {
        let config =
            RunConfig::load(None, &["model.conditional=true".into()]).expect("valid settings");
        let labelled = info([1, 8, 8]);
        match config.flow_config(&DataShape::Images(labelled)) {
            Ok(FlowConfig::Image(c)) => assert_eq!(c.classes, 10),
            other => panic!("{other:?}"),
        }
        let unlabelled = DatasetInfo {
            classes: None,
            ..info([1, 8, 8])
        };
        let err = config
            .flow_config(&DataShape::Images(unlabelled))
            .expect_err("no labels")
            .to_string();
        assert!(
            err.contains("model.conditional") && err.contains("no labels"),
            "{err}"
        );
    }

    #[test]
    fn overrides_set_nested_keys_with_types() {
        let config = RunConfig::load(
            None,
            &[
                "train.learning_rate=3e-4".into(),
                "model.features=16".into(),
                "train.max_minutes=1.5".into(),
                "train.conv_precision=bf16".into(),
            ],
        )
        .expect("valid overrides");
        assert_eq!(config.train.conv_precision, ConvPrecision::Bf16);
        assert_eq!(config.train.learning_rate, 3e-4);
        assert_eq!(config.model.features, 16);
        assert_eq!(config.train.max_minutes, Some(1.5));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let err = RunConfig::load(None, &["train.learning_rat=1".into()])
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("learning_rat"), "{err}");
        // Wrong types name the dotted key and what was expected (the example first).
        for (item, key, expected) in [
            ("train.learning_rate=abc", "train.learning_rate", "f64"),
            ("train.batch_size=\"big\"", "train.batch_size", "usize"),
            ("model.features=1.5", "model.features", "usize"),
        ] {
            let err = RunConfig::load(None, &[item.into()])
                .expect_err(item)
                .to_string();
            assert!(
                err.contains(&format!("key `{key}`")) && err.contains(expected),
                "{item}: {err}"
            );
        }
        for (item, key) in [
            ("train.batch_size=0", "train.batch_size"),
            ("train.adam_epsilon=0.0", "train.adam_epsilon"),
            ("train.grad_clip_norm=-1.0", "train.grad_clip_norm"),
        ] {
            let err = RunConfig::load(None, &[item.into()])
                .expect_err(item)
                .to_string();
            assert!(err.contains(key), "{item}: {err}");
        }
        let err = RunConfig::load(None, &["train.conv_precision=fp16".into()])
            .expect_err("unknown precision")
            .to_string();
        assert!(
            err.contains("train.conv_precision") && err.contains("fp16") && err.contains("bf16"),
            "{err}"
        );
        let config = RunConfig::load(None, &["train.adam_epsilon=1e-8".into()]).expect("valid");
        assert_eq!(config.train.adam_epsilon, Some(1e-8));
        let err = RunConfig::load(None, &["nonsense".into()])
            .expect_err("no =")
            .to_string();
        assert!(err.contains("key=value"), "{err}");
    }

    #[test]
    fn a_model_that_does_not_fit_the_data_is_an_error_naming_both() {
        let config = RunConfig::load(None, &["model.scales=4".into()]).expect("valid settings");
        let info = DatasetInfo {
            name: "digits".into(),
            shape: [1, 8, 8],
            levels: 17,
            train: 1,
            test: 1,
            classes: None,
        };
        let err = config
            .flow_config(&DataShape::Images(info))
            .expect_err("8x8 with 4 scales");
        let err = crate::error::error_chain(&err);
        assert!(err.contains("digits") && err.contains("height"), "{err}");
    }
}
