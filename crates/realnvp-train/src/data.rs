//! Loading the configured data set into training and test splits.

use std::path::Path;
use std::sync::Arc;

use realnvp_data::cifar::Cifar10;
use realnvp_data::digits::Digits;
use realnvp_data::folder::{ImageFolder, ImageFolderConfig};
use realnvp_data::idx::IdxDataset;
use realnvp_data::loader::{ImageSource, VectorArray};
use realnvp_data::tabular::{read_csv, Standardizer};
use realnvp_data::DatasetInfo;

use crate::config::{DataConfig, DataShape};
use crate::error::TrainError;

/// The splits of a loaded data set.
#[derive(Debug, Clone)]
pub enum Splits {
    /// Images.
    Images {
        /// Training images.
        train: ImageSource,
        /// Held-out images.
        test: ImageSource,
        /// Shape, levels, sizes.
        info: DatasetInfo,
    },
    /// Vectors.
    Vectors {
        /// Training vectors.
        train: VectorArray,
        /// Held-out vectors.
        test: VectorArray,
        /// Name for reports.
        name: String,
    },
}

impl Splits {
    /// What the model must match.
    pub fn shape(&self) -> DataShape {
        match self {
            Splits::Images { info, .. } => DataShape::Images(info.clone()),
            Splits::Vectors { train, name, .. } => DataShape::Vectors {
                name: name.clone(),
                dims: train.dims,
            },
        }
    }

    /// Whether training flips images.
    pub fn flip(config: &DataConfig) -> bool {
        match config {
            DataConfig::Digits { flip }
            | DataConfig::Idx { flip, .. }
            | DataConfig::Cifar10 { flip, .. }
            | DataConfig::ImageFolder { flip, .. } => *flip,
            DataConfig::Toy { .. } | DataConfig::Csv { .. } => false,
        }
    }

    /// Reads the data set; `seed` draws toy data.
    pub fn load(config: &DataConfig, seed: u64) -> Result<Self, TrainError> {
        let memory = |train, test, info| Splits::Images {
            train: ImageSource::Memory(Arc::new(train)),
            test: ImageSource::Memory(Arc::new(test)),
            info,
        };
        Ok(match config {
            DataConfig::Digits { .. } => {
                let d = Digits::load()?;
                let info = d.info();
                memory(d.train, d.test, info)
            }
            DataConfig::Idx { path, .. } => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "idx".into());
                let d = IdxDataset::load(path, &name)?;
                let info = d.info();
                memory(d.train, d.test, info)
            }
            DataConfig::Cifar10 { path, .. } => {
                let d = Cifar10::load(path)?;
                let info = d.info();
                memory(d.train, d.test, info)
            }
            DataConfig::ImageFolder {
                path,
                preset,
                channels,
                ..
            } => {
                let folder = Arc::new(ImageFolder::scan(ImageFolderConfig {
                    path: path.clone(),
                    preset: *preset,
                    channels: *channels,
                })?);
                if !folder.skipped().is_empty() {
                    eprintln!(
                        "warning: {}: skipped {} files that are not PNG or JPEG (first: {})",
                        path.display(),
                        folder.skipped().len(),
                        folder.skipped()[0].display()
                    );
                }
                let (test, train): (Vec<usize>, Vec<usize>) =
                    (0..folder.len()).partition(|i| i % 10 == 9);
                if test.is_empty() {
                    return Err(realnvp_data::DataError::Dataset {
                        path: path.clone(),
                        message: format!(
                            "{} images: at least 10 are needed to hold out a test split",
                            folder.len()
                        ),
                    }
                    .into());
                }
                let info = DatasetInfo {
                    name: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "images".into()),
                    shape: folder.shape(),
                    levels: 256,
                    train: train.len(),
                    test: test.len(),
                    classes: (!folder.classes().is_empty()).then(|| folder.classes().len()),
                };
                Splits::Images {
                    train: ImageSource::Folder {
                        folder: folder.clone(),
                        indices: Arc::new(train),
                    },
                    test: ImageSource::Folder {
                        folder,
                        indices: Arc::new(test),
                    },
                    info,
                }
            }
            DataConfig::Toy { toy, train, test } => {
                let to_array = |points: Vec<[f64; 2]>| VectorArray {
                    dims: 2,
                    values: points
                        .into_iter()
                        .flat_map(|p| p.map(|v| v as f32))
                        .collect(),
                };
                Splits::Vectors {
                    train: to_array(toy.sample(*train, seed)),
                    test: to_array(toy.sample(*test, seed ^ 0x7e57)),
                    name: format!("{toy:?}"),
                }
            }
            DataConfig::Csv { train, test } => {
                let train_table = read_csv(train)?;
                let test_table = read_csv(test)?;
                if train_table.columns.len() != test_table.columns.len() {
                    return Err(realnvp_data::DataError::Dataset {
                        path: test.clone(),
                        message: format!(
                            "{} columns, but the training file has {}",
                            test_table.columns.len(),
                            train_table.columns.len()
                        ),
                    }
                    .into());
                }
                let standardizer = Standardizer::fit(&train_table);
                let to_array = |t: realnvp_data::tabular::Table| VectorArray {
                    dims: t.columns.len(),
                    values: standardizer
                        .apply(&t)
                        .values
                        .into_iter()
                        .map(|v| v as f32)
                        .collect(),
                };
                Splits::Vectors {
                    train: to_array(train_table),
                    test: to_array(test_table),
                    name: file_name(train),
                }
            }
        })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
