//! # realnvp-py
//!
//! The `realnvp` Python package: a model trained by `realnvp train` (its run directory or
//! its export), loaded on the Flex CPU backend, scores, samples, encodes and decodes NumPy
//! arrays. Built by maturin into one abi3 wheel for CPython 3.9 and newer
//! (`pip install ./crates/realnvp-py`); `realnvp.pyi` beside this crate is its type stub.
//!
//! [`load`](realnvp::load) finds and reads the export ([`export`]); [`Model`] holds the model
//! and runs every computation with the GIL released, `batch_size` examples at a time;
//! [`arrays`] checks what comes from Python and builds what goes back.

use pyo3::prelude::*;

pub mod arrays;
pub mod export;
pub mod model;

pub use model::Model;

/// The CPU backend every model runs on.
pub type Cpu = burn::backend::Flex;

/// Real NVP normalizing flows trained with realnvp-rs.
///
/// `realnvp.load(path)` reads a trained model; its methods take and return NumPy arrays
/// (anything NumPy can read: arrays, lists, `torch.Tensor.numpy()`):
/// `bits_per_dim`, `log_prob`, `sample`, `encode`, `decode` and `classify`.
#[pymodule]
pub mod realnvp {
    use std::path::PathBuf;

    use pyo3::prelude::*;

    #[pymodule_export]
    use super::Model;

    /// Loads a trained model.
    ///
    /// `path` is a run directory of `realnvp train` (its `export/`, written when training
    /// ends) or an export directory (`model.safetensors` beside `model.toml`). With
    /// `best=True`, the export of the best held-out bits/dim so far (`export/best`).
    ///
    /// Raises `FileNotFoundError` when no model is there, `OSError` when a file cannot be
    /// read and `ValueError` when a file is not a valid model; each names the file.
    #[pyfunction]
    #[pyo3(signature = (path, best = false))]
    fn load(py: Python<'_>, path: PathBuf, best: bool) -> PyResult<Model> {
        let dir = super::export::find(&path, best)?;
        let loaded = py.detach(|| super::export::read(&dir));
        Ok(Model::new(loaded?, dir))
    }

    /// On import: the version, and glibc set to keep freed blocks of up to 32 MiB, as in
    /// the CLI (`realnvp_core::memory`); without it every batch faulted its tensors' pages
    /// in again, and scoring ran slower than `realnvp eval`.
    #[pymodule_init]
    fn init(module: &Bound<'_, PyModule>) -> PyResult<()> {
        realnvp_core::memory::keep_freed_memory();
        module.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
