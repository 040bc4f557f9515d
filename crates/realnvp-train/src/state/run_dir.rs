//! The run directory, the one owner of its layout:
//!
//! ```text
//! <run>/config.toml              the resolved run configuration
//! <run>/model.toml               the model configuration (core's `FlowConfig`)
//! <run>/metrics.jsonl            one JSON line per logged step
//! <run>/learning-curves.png      training and held-out bits/dim
//! <run>/samples/step-<N>.png     the sample grid drawn at step N
//! <run>/checkpoints/step-<N>/    crash-safe, resumable checkpoints
//! <run>/tensorboard/             TensorBoard event files
//! <run>/export/                  the inference export (model.safetensors, model.toml)
//! <run>/export/best/             the best held-out model so far, with best.json
//! ```
//!
//! Every other module asks a [`RunDir`] for these paths; no file name of the layout is
//! written anywhere else. Inside `checkpoints/`, the checkpoints name their own step
//! folders and files (`state::checkpoint`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;
use realnvp_core::flow::{BEST_EXPORT_DIR, CONFIG_FILE, RUN_EXPORT_DIR, WEIGHTS_FILE};
use realnvp_core::{export_model, ConvBackend, Flow, FlowConfig};

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::state::checkpoint::{write_atomic, Checkpoints, EMA, MODEL};

/// File name of the resolved run configuration.
pub const CONFIG: &str = "config.toml";
/// File name of the metrics, one JSON line per logged step.
pub const METRICS: &str = "metrics.jsonl";
/// File name of the learning-curve picture.
pub const LEARNING_CURVES: &str = "learning-curves.png";
/// Folder of the sample grids.
pub const SAMPLES: &str = "samples";
/// Folder of the checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";
/// Folder of the TensorBoard event files.
pub const TENSORBOARD: &str = "tensorboard";
/// Folder of the inference export (core's, so that a program that only loads models
/// finds it too).
pub const EXPORT: &str = RUN_EXPORT_DIR;
/// Folder, inside the export, of the model with the best held-out bits/dim so far.
pub const BEST_EXPORT: &str = BEST_EXPORT_DIR;
/// File, inside the best export, naming its step and held-out bits/dim.
const BEST_NOTE: &str = "best.json";

/// A run directory: where a run's configuration, outputs, checkpoints and export live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The run directory at `path` (nothing is read or created yet).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run's name: its directory's (after resolving `.` and links).
    pub fn name(&self) -> String {
        self.path
            .canonicalize()
            .unwrap_or_else(|_| self.path.clone())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into())
    }

    /// `config.toml`: the resolved run configuration.
    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG)
    }

    /// `model.toml`: the model configuration, written when the run starts.
    pub fn model_config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    /// `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join(METRICS)
    }

    /// `learning-curves.png`.
    pub fn learning_curves_path(&self) -> PathBuf {
        self.path.join(LEARNING_CURVES)
    }

    /// `samples/`: the sample grids.
    pub fn samples_dir(&self) -> PathBuf {
        self.path.join(SAMPLES)
    }

    /// `samples/step-<step>.png`: the sample grid drawn at `step`.
    pub fn samples_path(&self, step: u64) -> PathBuf {
        self.samples_dir().join(format!("step-{step}.png"))
    }

    /// `tensorboard/`: the TensorBoard event files.
    pub fn tensorboard_dir(&self) -> PathBuf {
        self.path.join(TENSORBOARD)
    }

    /// The checkpoints in `checkpoints/`.
    pub fn checkpoints(&self) -> Checkpoints {
        Checkpoints::in_dir(self.path.join(CHECKPOINTS))
    }

    /// `export/`: the inference export, loadable by `realnvp_core::load_model`.
    pub fn export_dir(&self) -> PathBuf {
        self.path.join(EXPORT)
    }

    /// `export/best/`: the best held-out model so far.
    pub fn best_export_dir(&self) -> PathBuf {
        self.export_dir().join(BEST_EXPORT)
    }

    /// The resolved configuration of the run (its `config.toml`).
    pub fn config(&self) -> Result<RunConfig, TrainError> {
        let path = self.config_path();
        if !path.is_file() {
            return Err(TrainError::Checkpoint {
                path: self.path.clone(),
                message: format!("not a run directory (no {CONFIG})"),
            });
        }
        RunConfig::load(Some(&path), &[])
    }

    /// Creates the directory and writes the configuration of a run that starts or
    /// resumes: `config.toml` and `model.toml`.
    pub fn write_configs(
        &self,
        config: &RunConfig,
        flow_config: &FlowConfig,
    ) -> Result<(), TrainError> {
        std::fs::create_dir_all(&self.path).map_err(|e| TrainError::io(&self.path, e))?;
        let config_text = toml::to_string(config).map_err(|e| TrainError::Config {
            origin: "config".into(),
            message: e.to_string(),
        })?;
        write_atomic(&self.config_path(), config_text.as_bytes())?;
        write_atomic(
            &self.model_config_path(),
            toml::to_string(flow_config).unwrap_or_default().as_bytes(),
        )
    }

    /// The trained model of the run, for inference: its `export/` when the run finished,
    /// else the newest intact checkpoint (averaged weights when kept).
    pub fn load_model<B: ConvBackend>(
        &self,
        device: &B::Device,
    ) -> Result<(Flow<B>, FlowConfig), TrainError> {
        let export = self.export_dir();
        if export.join(WEIGHTS_FILE).is_file() {
            return Ok(realnvp_core::load_model(&export, device)?);
        }
        let path = self.model_config_path();
        let text = std::fs::read_to_string(&path).map_err(|_| TrainError::Checkpoint {
            path: self.path.clone(),
            message: "no trained model here: neither export/ nor a checkpoint (train first, or pass the run's directory)".into(),
        })?;
        let config: FlowConfig = toml::from_str(&text).map_err(|e| TrainError::Config {
            origin: path.display().to_string(),
            message: e.message().to_string(),
        })?;
        let loaded = self
            .checkpoints()
            .latest()
            .ok_or_else(|| TrainError::Checkpoint {
                path: self.path.clone(),
                message: "no intact checkpoint and no export/".into(),
            })?;
        let model = config
            .init::<B>(device)
            .map_err(|source| TrainError::Model {
                origin: path.display().to_string(),
                source,
            })?;
        let name = if loaded
            .record::<<Flow<B> as Module<B>>::Record, B>(EMA, device)?
            .is_some()
        {
            EMA
        } else {
            MODEL
        };
        Ok((loaded.load_into(name, model, device)?, config))
    }

    /// Writes `model` with its configuration to `export/`; returns the export's path.
    pub fn export<B: Backend>(
        &self,
        model: &Flow<B>,
        config: &FlowConfig,
    ) -> Result<PathBuf, TrainError> {
        let export = self.export_dir();
        export_model(model, config, &export)?;
        Ok(export)
    }

    /// Writes `model`, the best so far (`bits_per_dim` at `step`), to `export/best/` with
    /// a `best.json` naming the step: first into a temporary folder, which then replaces
    /// the previous best whole, so that a kill leaves one intact best model.
    pub fn export_best<B: Backend>(
        &self,
        model: &Flow<B>,
        config: &FlowConfig,
        bits_per_dim: f64,
        step: u64,
    ) -> Result<(), TrainError> {
        let tmp = self.export_dir().join(".best-tmp");
        let best = self.best_export_dir();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        export_model(model, config, &tmp)?;
        let note = serde_json::json!({ "step": step, "test_bits_per_dim": bits_per_dim });
        write_atomic(&tmp.join(BEST_NOTE), format!("{note}\n").as_bytes())?;
        if best.exists() {
            std::fs::remove_dir_all(&best).map_err(|e| TrainError::io(&best, e))?;
        }
        std::fs::rename(&tmp, &best).map_err(|e| TrainError::io(&best, e))
    }
}
