//! Errors of a training run; each names the file, key or step at fault.

use std::path::{Path, PathBuf};

/// Why a run could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file or directory could not be read or written.
    #[error("{}", path.display())]
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
    /// The model configuration is invalid.
    #[error("invalid configuration ({origin})")]
    Model {
        /// The key or file at fault (`model`, `train.conv_precision`, a `model.toml`).
        origin: String,
        /// What core's validation found.
        source: realnvp_core::ConfigError,
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
    /// More samples than one picture can hold.
    #[error("{requested} samples: one picture of {picture} samples holds at most {limit} (they are drawn and kept in memory at once); draw several with other seeds")]
    TooManySamples {
        /// Samples asked for.
        requested: usize,
        /// The most one picture holds ([`crate::output::grid::MAX_GRID_IMAGES`] images,
        /// [`crate::output::grid::MAX_SCATTER_POINTS`] points).
        limit: usize,
        /// `"image"` (a grid) or `"vector"` (a scatter density).
        picture: &'static str,
    },
    /// A collective operation between data-parallel workers failed.
    #[error("data-parallel training: {message}")]
    Collective {
        /// What failed, naming the worker or rank at fault.
        message: String,
    },
    /// A rank of an MPI run waited longer than `train.collective_timeout_seconds` in a
    /// collective call. MPI cannot cancel a collective call: the job is aborted after this
    /// error is printed.
    #[error("rank {rank} waited {waited:.0} s in {call}{} (train.collective_timeout_seconds = {limit}); {}; the newest checkpoint, if one was written, is intact: restart the job with --resume once every node works", step.map(|s| format!(" of step {s}")).unwrap_or_default(), silent_ranks(absent, quiet))]
    CollectiveTimeout {
        /// The rank that timed out.
        rank: usize,
        /// The collective call, in words (`the all-reduce`).
        call: String,
        /// The step it belongs to, when it belongs to one.
        step: Option<u64>,
        /// Seconds waited.
        waited: f64,
        /// The configured limit, seconds.
        limit: f64,
        /// The ranks that never reached this call.
        absent: Vec<usize>,
        /// The ranks that reached it, then stopped answering.
        quiet: Vec<usize>,
    },
}

impl TrainError {
    pub(crate) fn collective(message: impl Into<String>) -> Self {
        Self::Collective {
            message: message.into(),
        }
    }

    /// The replicas of `differing` ranks hold other weights than that of `rank`.
    pub(crate) fn replicas_differ(differing: &[usize], rank: usize) -> Self {
        let list: Vec<String> = differing.iter().map(ToString::to_string).collect();
        Self::collective(format!(
            "the replicas differ at the end of the run: worker(s) {} hold other weights than worker {rank}",
            list.join(", ")
        ))
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `error` and the chain of its sources as one line, `outer: cause: root cause`: for
/// messages that carry an error as text (to another rank, or in a warning).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The ranks a timed-out rank blames, in words.
fn silent_ranks(absent: &[usize], quiet: &[usize]) -> String {
    let list = |ranks: &[usize]| {
        let names: Vec<String> = ranks.iter().map(ToString::to_string).collect();
        match ranks {
            [_] => format!("rank {}", names[0]),
            _ => format!("ranks {}", names.join(", ")),
        }
    };
    let mut parts = Vec::new();
    if !absent.is_empty() {
        parts.push(format!(
            "{} never reached it (stopped, hung, died or far behind)",
            list(absent)
        ));
    }
    if !quiet.is_empty() {
        parts.push(format!(
            "{} reached it, then stopped answering",
            list(quiet)
        ));
    }
    if parts.is_empty() {
        return "every rank reached it and still answers, so the call itself stalled (a lost connection?)".into();
    }
    parts.join("; ")
}
