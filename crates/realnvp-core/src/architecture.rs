//! The architecture of a model, apart from what the data set determines: a run
//! configuration chooses an architecture (its `[model]` or `[vector_model]` table), the
//! data set supplies the shape, the pixel levels and the classes, and together they make
//! the model configuration ([`RealNvpConfig`], [`VectorRealNvpConfig`]).

use serde::{Deserialize, Serialize};

use crate::model::RealNvpConfig;
use crate::preprocess::PreprocessConfig;
use crate::vector::VectorRealNvpConfig;

/// The architecture of an image Real NVP: every key of [`RealNvpConfig`] but the image
/// shape, the pixel levels and the number of classes. Defaults: those of
/// `RealNvpConfig`, with 2 scales.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealNvpArchitecture {
    /// Number of scales.
    pub scales: usize,
    /// Residual blocks per coupling network.
    pub res_blocks: usize,
    /// Skip connections in the coupling networks (the paper's section 4.1).
    pub skip_connections: bool,
    /// Feature maps at the first scale (doubled per scale).
    pub features: usize,
    /// Flow-path batch norm.
    pub batch_norm: bool,
    /// Weight of the current batch in the running averages.
    pub batch_norm_momentum: f64,
    /// Logit margin.
    pub alpha: f64,
    /// Model only the `n_bits` most significant bits.
    pub n_bits: Option<u32>,
    /// Class-conditional prior (one learned Gaussian per class of a labelled data set),
    /// trained on `log p(x | label)`; enables `realnvp sample --class` and `realnvp classify`.
    pub conditional: bool,
}

impl Default for RealNvpArchitecture {
    fn default() -> Self {
        let d = RealNvpConfig::default();
        Self {
            scales: 2,
            res_blocks: d.res_blocks,
            skip_connections: d.skip_connections,
            features: d.features,
            batch_norm: d.batch_norm,
            batch_norm_momentum: d.batch_norm_momentum,
            alpha: d.preprocess.alpha,
            n_bits: None,
            conditional: false,
        }
    }
}

impl RealNvpArchitecture {
    /// The model configuration of this architecture for images of `shape` `[channels,
    /// height, width]` with `levels` pixel levels; `classes` is the data set's number of
    /// classes, used when the architecture is class-conditional (unchecked here: see
    /// [`RealNvpConfig::validate`]).
    pub fn config(&self, shape: [usize; 3], levels: u32, classes: usize) -> RealNvpConfig {
        let [channels, height, width] = shape;
        RealNvpConfig {
            channels,
            height,
            width,
            scales: self.scales,
            res_blocks: self.res_blocks,
            skip_connections: self.skip_connections,
            features: self.features,
            batch_norm: self.batch_norm,
            batch_norm_momentum: self.batch_norm_momentum,
            preprocess: PreprocessConfig {
                levels,
                n_bits: self.n_bits,
                alpha: self.alpha,
            },
            classes: if self.conditional { classes } else { 0 },
        }
    }
}

/// The architecture of a vector Real NVP: every key of [`VectorRealNvpConfig`] but the
/// dimensions, which the data set determines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorArchitecture {
    /// Coupling layers.
    pub couplings: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Hidden layers per coupling network.
    pub hidden_layers: usize,
    /// Flow-path batch norm.
    pub batch_norm: bool,
    /// Weight of the current batch in the running averages.
    pub batch_norm_momentum: f64,
}

impl Default for VectorArchitecture {
    fn default() -> Self {
        let d = VectorRealNvpConfig::default();
        Self {
            couplings: d.couplings,
            hidden: d.hidden,
            hidden_layers: d.hidden_layers,
            batch_norm: d.batch_norm,
            batch_norm_momentum: d.batch_norm_momentum,
        }
    }
}

impl VectorArchitecture {
    /// The model configuration of this architecture for vectors of `dims` dimensions.
    pub fn config(&self, dims: usize) -> VectorRealNvpConfig {
        VectorRealNvpConfig {
            dims,
            couplings: self.couplings,
            hidden: self.hidden,
            hidden_layers: self.hidden_layers,
            batch_norm: self.batch_norm,
            batch_norm_momentum: self.batch_norm_momentum,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the architecture reaches the model configuration, and the data set's
    /// shape, levels and classes fill the rest.
    #[test]
    fn an_architecture_and_a_data_shape_make_the_model_configuration() {
        let architecture = RealNvpArchitecture {
            scales: 3,
            res_blocks: 5,
            skip_connections: true,
            features: 7,
            batch_norm: false,
            batch_norm_momentum: 0.25,
            alpha: 0.01,
            n_bits: Some(5),
            conditional: true,
        };
        let config = architecture.config([1, 28, 28], 256, 10);
        assert_eq!((config.channels, config.height, config.width), (1, 28, 28));
        assert_eq!(
            (config.scales, config.res_blocks, config.features),
            (3, 5, 7)
        );
        assert!(config.skip_connections && !config.batch_norm);
        assert_eq!(config.batch_norm_momentum, 0.25);
        assert_eq!(
            config.preprocess,
            PreprocessConfig {
                levels: 256,
                n_bits: Some(5),
                alpha: 0.01
            }
        );
        assert_eq!(config.classes, 10);
        let unconditional = RealNvpArchitecture {
            conditional: false,
            ..architecture
        };
        assert_eq!(unconditional.config([1, 28, 28], 256, 10).classes, 0);

        let vector = VectorArchitecture {
            couplings: 3,
            hidden: 9,
            hidden_layers: 4,
            batch_norm: true,
            batch_norm_momentum: 0.5,
        }
        .config(6);
        assert_eq!(
            (
                vector.dims,
                vector.couplings,
                vector.hidden,
                vector.hidden_layers
            ),
            (6, 3, 9, 4)
        );
        assert!(vector.batch_norm && vector.batch_norm_momentum == 0.5);
    }
}
