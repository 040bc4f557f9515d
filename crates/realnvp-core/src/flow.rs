//! Either kind of model behind one type, for storage: the inference export (weights as
//! safetensors through burn-store, beside the model configuration as TOML) and the
//! trainer's checkpoints hold a [`Flow`]. Computation takes the model of its kind
//! (`RealNvp`, `VectorRealNvp`), so that a batch of the other kind cannot be given.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::model::{RealNvp, RealNvpConfig};
use crate::vector::{VectorRealNvp, VectorRealNvpConfig};
use realnvp_conv::ConvBackend;

/// Configuration of either model kind; in TOML, `kind = "image"` or `kind = "vector"`
/// beside the model's own keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FlowConfig {
    /// An image Real NVP.
    Image(RealNvpConfig),
    /// A vector Real NVP.
    Vector(VectorRealNvpConfig),
}

impl FlowConfig {
    /// Validates and builds a freshly initialised model.
    pub fn init<B: ConvBackend>(&self, device: &B::Device) -> Result<Flow<B>, ConfigError> {
        Ok(match self {
            FlowConfig::Image(c) => Flow::Image(c.init(device)?),
            FlowConfig::Vector(c) => Flow::Vector(c.init(device)?),
        })
    }

    /// Checks every key of the model configuration and returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            FlowConfig::Image(c) => c.validate(),
            FlowConfig::Vector(c) => c.validate(),
        }
    }
}

/// An image or a vector Real NVP.
// One model is held at a time, never in bulk, so the variants' size difference costs
// nothing; boxing would hide the module from burn's derive.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Flow<B: Backend> {
    /// An image Real NVP.
    Image(RealNvp<B>),
    /// A vector Real NVP.
    Vector(VectorRealNvp<B>),
}

/// A model export that cannot be written or read; names the file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The configuration file is not a valid model configuration.
    #[error("{}: {message}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights file is unreadable or does not fit the configuration.
    #[error("{}: {message}", path.display())]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// File name of the weights inside an export directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the configuration inside an export directory.
pub const CONFIG_FILE: &str = "model.toml";
/// Folder of a run directory that holds its export (written by realnvp-train's `RunDir`,
/// read by everything that loads a trained run: the CLI, the Python package).
pub const RUN_EXPORT_DIR: &str = "export";
/// Folder, inside a run's export, of the model with the best held-out bits/dim so far.
pub const BEST_EXPORT_DIR: &str = "best";

/// Writes `model` and its `config` into `dir` (`model.safetensors`, `model.toml`),
/// creating the directory. Batch-norm running averages are saved with the weights.
pub fn export_model<B: Backend>(
    model: &Flow<B>,
    config: &FlowConfig,
    dir: &Path,
) -> Result<(), ExportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config_path = dir.join(CONFIG_FILE);
    let text = toml::to_string(config).map_err(|e| ExportError::Config {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&config_path, text).map_err(io(&config_path))?;
    let weights = dir.join(WEIGHTS_FILE);
    let mut store = SafetensorsStore::from_file(&weights).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| ExportError::Weights {
            path: weights.clone(),
            message: e.to_string(),
        })
}

/// Reads the configuration of an export directory.
pub fn read_export_config(dir: &Path) -> Result<FlowConfig, ExportError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| ExportError::Io {
        path: path.clone(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ExportError::Config {
        path: path.clone(),
        message: e.message().to_string(),
    })
}

/// Loads a model written by [`export_model`] onto `device`, with nothing but this crate.
pub fn load_model<B: ConvBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(Flow<B>, FlowConfig), ExportError> {
    let config = read_export_config(dir)?;
    let config_path = dir.join(CONFIG_FILE);
    let mut model = config.init::<B>(device).map_err(|e| ExportError::Config {
        path: config_path,
        message: e.to_string(),
    })?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(ExportError::Io {
            path: weights,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no weights file"),
        });
    }
    let mut store = SafetensorsStore::from_file(&weights);
    let result = model
        .load_from(&mut store)
        .map_err(|e| ExportError::Weights {
            path: weights.clone(),
            message: e.to_string(),
        })?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(ExportError::Weights {
            path: weights,
            message: format!(
                "does not fit {}: {} tensors missing, {} errors",
                CONFIG_FILE,
                result.missing.len(),
                result.errors.len()
            ),
        });
    }
    Ok((model, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::Dequantization;
    use crate::testing::*;

    #[test]
    fn export_and_load_give_the_same_model() {
        let config = FlowConfig::Image(RealNvpConfig {
            channels: 1,
            height: 8,
            width: 8,
            scales: 2,
            res_blocks: 1,
            features: 4,
            ..Default::default()
        });
        let device = Default::default();
        let model = perturb(config.init::<Cpu>(&device).expect("valid"), 0.05, 1);
        let dir = tempfile::tempdir().expect("temp dir");
        export_model(&model, &config, dir.path()).expect("writable");
        let (loaded, loaded_config) = load_model::<Cpu>(dir.path(), &device).expect("readable");
        assert_eq!(loaded_config, config);
        let x = uniform::<Cpu, 4>([3, 1, 8, 8], 0.0, 256.0, 2).floor();
        let (Flow::Image(model), Flow::Image(loaded)) = (model, loaded) else {
            panic!("an image model was exported");
        };
        let a = model.bits_per_dim(x.clone(), Dequantization::Centre);
        let b = loaded.bits_per_dim(x, Dequantization::Centre);
        assert_eq!(
            values(a),
            values(b),
            "weights and running averages survive the export"
        );
    }

    #[test]
    fn missing_or_mismatched_exports_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = load_model::<Cpu>(dir.path(), &Default::default())
            .expect_err("empty dir")
            .to_string();
        assert!(err.contains(CONFIG_FILE), "{err}");

        let device = Default::default();
        let small = FlowConfig::Vector(VectorRealNvpConfig::default());
        export_model(
            &small.init::<Cpu>(&device).expect("valid"),
            &small,
            dir.path(),
        )
        .expect("writable");
        let bigger = FlowConfig::Vector(VectorRealNvpConfig {
            hidden: 8,
            ..Default::default()
        });
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            toml::to_string(&bigger).expect("toml"),
        )
        .expect("writable");
        let err = load_model::<Cpu>(dir.path(), &device)
            .expect_err("shapes differ")
            .to_string();
        assert!(err.contains(WEIGHTS_FILE), "{err}");

        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "kind = \"image\"\nheight = 7\n",
        )
        .expect("writable");
        let err = load_model::<Cpu>(dir.path(), &device)
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("height"), "{err}");
    }
}
