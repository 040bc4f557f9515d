//! # realnvp-core
//!
//! The Real NVP normalizing flow of Dinh, Sohl-Dickstein and Bengio, "Density estimation
//! using Real NVP" (ICLR 2017), as Burn modules generic over any `B: Backend`.
//!
//! The modules follow section 3 of the paper:
//! [`preprocess`] (dequantisation, logit, bits/dim), [`mask`] (checkerboard and channel-wise
//! partitions), [`coupling`] (the affine coupling layer), [`resnet`] (its s/t network, with
//! [`weight_norm`] and the convolutions' [`precision`]), [`squeeze`], [`batchnorm`] (flow-path batch norm with running
//! averages), [`multiscale`] (scales and factor-out), [`prior`], [`model`] (the whole image
//! flow) and [`vector`] (MLP couplings for 2-D and tabular data). Every layer implements
//! [`Bijector`]: `forward(x) -> (y, log|det J|)` and an exact `inverse`. A model's
//! [`architecture`] is what a run chooses, apart from what its data set determines; a
//! [`Flow`] holds either kind of model for storage ([`export_model`], [`load_model`]).
//!
//! This crate holds no training or data-loading code: a program that only loads a model
//! to sample or score depends on it alone.
//!
//! ```
//! use burn::backend::Flex;
//! use realnvp_core::{Dequantization, RealNvpConfig};
//! use burn::tensor::Tensor;
//!
//! let config = RealNvpConfig { channels: 1, height: 8, width: 8, scales: 2, res_blocks: 1,
//!     features: 8, ..Default::default() };
//! let model = config.init::<Flex>(&Default::default()).unwrap();
//! let pixels = Tensor::<Flex, 4>::full([2, 1, 8, 8], 128.0, &Default::default());
//! let bpd = model.bits_per_dim(pixels, Dequantization::Uniform);
//! assert_eq!(bpd.dims(), [2]);
//! ```

pub mod architecture;
pub mod batchnorm;
pub mod bijector;
pub mod channel_norm;
pub mod channels;
pub mod class_prior;
pub mod coupling;
pub mod error;
pub mod flow;
pub mod latent_file;
pub mod latent_space;
pub mod mask;
pub mod memory;
pub mod model;
pub mod multiscale;
pub mod precision;
pub mod preprocess;
pub mod prior;
pub mod resnet;
pub mod squeeze;
pub mod step;
pub mod vector;
pub mod weight_norm;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use architecture::{RealNvpArchitecture, VectorArchitecture};
pub use bijector::Bijector;
pub use error::ConfigError;
pub use flow::{export_model, load_model, ExportError, Flow, FlowConfig};
pub use model::{Latents, RealNvp, RealNvpConfig};
pub use precision::ConvPrecision;
pub use preprocess::{Dequantization, Preprocess, PreprocessConfig};
/// The backends a Real NVP model runs on: any Burn backend with the 3x3 convolution of
/// [`realnvp_conv`] (Flex, NdArray, wgpu, CUDA and `Autodiff` over any of them).
pub use realnvp_conv::{AutodiffConvBackend, ConvBackend};
pub use vector::{VectorRealNvp, VectorRealNvpConfig};

/// The L2 penalty coefficient on the coupling scales used in the paper.
pub const PAPER_SCALE_PENALTY: f64 = 5e-5;
