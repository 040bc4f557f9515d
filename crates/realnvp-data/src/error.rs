//! Errors of data loading: each names the file (and record or line) at fault and what was
//! expected there.

use std::path::{Path, PathBuf};

/// A data set that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file or directory could not be opened or read.
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file's contents are not what its format requires.
    #[error("{}{}: {message}", path.display(), location.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
    Format {
        /// The file.
        path: PathBuf,
        /// Where in the file, e.g. `record 17` or `line 3, column 2`.
        location: Option<String>,
        /// What was found and what was expected.
        message: String,
    },
    /// The data set as a whole is unusable (empty, mixed shapes, ...).
    #[error("{}: {message}", path.display())]
    Dataset {
        /// The data set's file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            location: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(path: &Path, location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            location: Some(location.into()),
            message: message.into(),
        }
    }

    pub(crate) fn dataset(path: &Path, message: impl Into<String>) -> Self {
        Self::Dataset {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
