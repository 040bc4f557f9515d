//! Errors of a training run; each names the file, key or step at fault.

use std::path::{Path, PathBuf};

/// Why a run could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid configuration ({origin}): {message}")]
    Config {
        /// The file, key or override at fault.
        origin: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The data set could not be read.
    #[error(transparent)]
    Data(#[from] realnvp_data::DataError),
    /// The model export could not be written or read.
    #[error(transparent)]
    Export(#[from] realnvp_core::ExportError),
    /// No usable checkpoint.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The run or checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Training diverged: too many non-finite steps in a row.
    #[error("training stopped at step {step}: {count} non-finite losses or gradients in a row; the last good checkpoint is {}", last_checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none (no checkpoint written yet)".into()))]
    Diverged {
        /// The step at which the run stopped.
        step: u64,
        /// Non-finite steps in a row.
        count: u32,
        /// The newest checkpoint, intact.
        last_checkpoint: Option<PathBuf>,
    },
    /// A collective operation between data-parallel workers failed.
    #[error("data-parallel training: {message}")]
    Collective {
        /// What failed, naming the worker, node or address at fault.
        message: String,
    },
    /// A node of a multi-node run stopped answering.
    #[error("data-parallel training: lost node rank {node_rank} ({address}): {detail}; the run can continue from its last checkpoint with --resume once every node is back (restart the orchestrator too)")]
    NodeLost {
        /// The node rank (`--node-rank`) that was lost.
        node_rank: usize,
        /// Its node address.
        address: String,
        /// What the liveness probe saw.
        detail: String,
    },
}

impl TrainError {
    pub(crate) fn collective(message: impl Into<String>) -> Self {
        Self::Collective {
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
