//! # realnvp-data
//!
//! Files on disk to batches of integer-valued pixel tensors for any Burn backend.
//! Dequantisation and the logit transform belong to the model (`realnvp-core`), so that
//! bits/dim are computed in one place.
//!
//! Readers: the embedded [`digits`] (the default data set), [`idx`] (MNIST,
//! Fashion-MNIST), [`cifar`] (CIFAR-10 binary), [`folder`] (PNG/JPEG folders with the
//! paper's CelebA and LSUN presets; [`partition`] reads official splits such as CelebA's
//! `list_eval_partition.txt`), [`toy`] (2-D distributions) and [`tabular`] (CSV).
//! [`loader`] shuffles with a seed, resumably, augments with horizontal flips and batches.
//! Every reader reports bad input as a [`DataError`] naming the file and the record or
//! line, never a panic.

pub mod cifar;
pub mod digits;
pub mod error;
pub mod folder;
pub mod idx;
pub mod images;
pub mod loader;
pub mod partition;
pub mod tabular;
pub mod toy;

pub use error::DataError;
pub use images::{DatasetInfo, ImageArray};
