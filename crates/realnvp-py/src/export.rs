//! Where a trained model lives and how it is read: a run directory's `export/` (or
//! `export/best/`), or an export directory given directly.

use std::path::{Path, PathBuf};

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::PyErr;
use realnvp_core::flow::{BEST_EXPORT_DIR, CONFIG_FILE, RUN_EXPORT_DIR, WEIGHTS_FILE};
use realnvp_core::{load_model, ExportError, Flow, FlowConfig};

use crate::Cpu;

/// The export directory `path` stands for: `path/export` (or `path/export/best`) of a run
/// directory, or `path` itself (or `path/best`) when it holds the weights.
pub fn find(path: &Path, best: bool) -> Result<PathBuf, PyErr> {
    if !path.exists() {
        return Err(PyFileNotFoundError::new_err(format!(
            "{}: no such file or directory",
            path.display()
        )));
    }
    let candidates = if best {
        [
            path.join(RUN_EXPORT_DIR).join(BEST_EXPORT_DIR),
            path.join(BEST_EXPORT_DIR),
        ]
    } else {
        [path.join(RUN_EXPORT_DIR), path.to_path_buf()]
    };
    if let Some(dir) = candidates.iter().find(|d| d.join(WEIGHTS_FILE).is_file()) {
        return Ok(dir.clone());
    }
    let what = if best {
        format!(
            "no best export here ({RUN_EXPORT_DIR}/{BEST_EXPORT_DIR}/{WEIGHTS_FILE}): a run writes it at its \
             first evaluation on held-out data"
        )
    } else {
        format!(
            "no trained model here: expected a run directory with {RUN_EXPORT_DIR}/{WEIGHTS_FILE} \
             (written when training ends) or an export directory with {WEIGHTS_FILE} and \
             {CONFIG_FILE}"
        )
    };
    Err(PyFileNotFoundError::new_err(format!(
        "{}: {what}",
        path.display()
    )))
}

/// Reads the model exported in `dir`, with its configuration.
pub fn read(dir: &Path) -> Result<(Flow<Cpu>, FlowConfig), PyErr> {
    load_model::<Cpu>(dir, &Default::default()).map_err(python_error)
}

/// The Python exception for an export that cannot be read: `FileNotFoundError` or `OSError`
/// for the file system, `ValueError` for contents; the message names the file.
fn python_error(error: ExportError) -> PyErr {
    match error {
        ExportError::Io { path, source } => {
            let message = format!("{}: {source}", path.display());
            if source.kind() == std::io::ErrorKind::NotFound {
                PyFileNotFoundError::new_err(message)
            } else {
                PyOSError::new_err(message)
            }
        }
        ExportError::Config { path, message } => PyValueError::new_err(format!(
            "{}: not a valid model configuration: {message}",
            path.display()
        )),
        ExportError::Weights { path, message } => PyValueError::new_err(format!(
            "{}: not valid model weights: {message}",
            path.display()
        )),
    }
}
