//! Loading the configured data set into training and test splits.

use std::path::Path;
use std::sync::Arc;

use realnvp_data::cifar::Cifar10;
use realnvp_data::digits::Digits;
use realnvp_data::folder::{ImageFolder, ImageFolderConfig};
use realnvp_data::idx::IdxDataset;
use realnvp_data::loader::{ImageSource, VectorArray};
use realnvp_data::partition::{Part, Partition};
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
        /// Which images are held out, in words (e.g. `the official test files`).
        held_out: String,
    },
    /// Vectors.
    Vectors {
        /// Training vectors.
        train: VectorArray,
        /// Held-out vectors.
        test: VectorArray,
        /// Name for reports.
        name: String,
        /// Which vectors are held out, in words.
        held_out: String,
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
        let memory = |train, test, info, held_out: &str| Splits::Images {
            train: ImageSource::Memory(Arc::new(train)),
            test: ImageSource::Memory(Arc::new(test)),
            info,
            held_out: held_out.to_string(),
        };
        Ok(match config {
            DataConfig::Digits { .. } => {
                let d = Digits::load()?;
                let info = d.info();
                memory(
                    d.train,
                    d.test,
                    info,
                    "every 6th image in file order (the embedded set has no official split)",
                )
            }
            DataConfig::Idx { path, .. } => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "idx".into());
                let d = IdxDataset::load(path, &name)?;
                let info = d.info();
                memory(d.train, d.test, info, "the official test files (t10k-*)")
            }
            DataConfig::Cifar10 { path, .. } => {
                let d = Cifar10::load(path)?;
                let info = d.info();
                memory(
                    d.train,
                    d.test,
                    info,
                    "the official test batch (test_batch.bin)",
                )
            }
            DataConfig::ImageFolder {
                path,
                test_path,
                partition,
                held_out,
                preset,
                channels,
                ..
            } => {
                let scan = |path: &Path| -> Result<Arc<ImageFolder>, TrainError> {
                    let folder = ImageFolder::scan(ImageFolderConfig {
                        path: path.to_path_buf(),
                        preset: *preset,
                        channels: *channels,
                    })?;
                    warn_skipped(&folder, path);
                    Ok(Arc::new(folder))
                };
                let folder = scan(path)?;
                let held_out = match (test_path, partition) {
                    (Some(_), Some(_)) => {
                        return Err(TrainError::Config {
                            origin: "data.test_path and data.partition".into(),
                            message: "both given: a held-out split comes from one of them".into(),
                        })
                    }
                    (Some(test_path), None) => HeldOut::Folder(scan(test_path)?),
                    (None, Some(file)) => HeldOut::Partition(Partition::read(file)?, *held_out),
                    (None, None) => HeldOut::EveryTenth,
                };
                folder_splits(path, folder, held_out)?
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
                    held_out: format!("{test} points drawn with another seed"),
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
                    held_out: format!("the file {}", test.display()),
                }
            }
        })
    }
}

/// Where a folder data set's held-out images come from.
enum HeldOut {
    /// A folder of their own (an official validation set).
    Folder(Arc<ImageFolder>),
    /// An official partition list, and which part of it is held out.
    Partition(Partition, Part),
    /// Every 10th image in file order: the fallback.
    EveryTenth,
}

/// The training and held-out images of `folder` (at `path`), and how they were split.
fn folder_splits(
    path: &Path,
    folder: Arc<ImageFolder>,
    held_out: HeldOut,
) -> Result<Splits, TrainError> {
    let all = |folder: &ImageFolder| (0..folder.len()).collect::<Vec<_>>();
    let (train, test, test_folder, description) = match held_out {
        HeldOut::Folder(test_folder) => {
            check_same_kind(&folder, &test_folder)?;
            let description = format!("the folder {}", test_folder.config_path().display());
            (all(&folder), all(&test_folder), test_folder, description)
        }
        HeldOut::Partition(partition, part) => {
            let (train, test) = partition.split(folder.files(), part)?;
            let description = format!(
                "partition {} ({}) of {}; training on partition 0",
                part.number(),
                part.name(),
                partition.path().display()
            );
            (train, test, folder.clone(), description)
        }
        HeldOut::EveryTenth => {
            let (test, train) = (0..folder.len()).partition(|i| i % 10 == 9);
            let description = "every 10th image in file order (no official split configured: \
                               set data.test_path or data.partition)"
                .to_string();
            (train, test, folder.clone(), description)
        }
    };
    for (what, indices) in [("training", &train), ("held-out", &test)] {
        if indices.is_empty() {
            return Err(realnvp_data::DataError::Dataset {
                path: path.to_path_buf(),
                message: format!(
                    "{} images, none of them {what} with the split `{description}`",
                    folder.len()
                ),
            }
            .into());
        }
    }
    let info = DatasetInfo {
        name: file_name(path),
        shape: folder.shape(),
        levels: 256,
        train: train.len(),
        test: test.len(),
        classes: (!folder.classes().is_empty()).then(|| folder.classes().len()),
    };
    Ok(Splits::Images {
        train: ImageSource::Folder {
            folder,
            indices: Arc::new(train),
        },
        test: ImageSource::Folder {
            folder: test_folder,
            indices: Arc::new(test),
        },
        info,
        held_out: description,
    })
}

/// A separate held-out folder must give images of the training folder's shape and
/// classes.
fn check_same_kind(train: &ImageFolder, test: &ImageFolder) -> Result<(), TrainError> {
    let differs = |message: String| {
        Err(realnvp_data::DataError::Dataset {
            path: test.config_path().to_path_buf(),
            message,
        }
        .into())
    };
    if test.shape() != train.shape() {
        return differs(format!(
            "images of shape {:?}, but the training folder {} gives {:?}",
            test.shape(),
            train.config_path().display(),
            train.shape()
        ));
    }
    if test.classes() != train.classes() {
        return differs(format!(
            "class sub-folders {:?}, but the training folder {} has {:?}",
            test.classes(),
            train.config_path().display(),
            train.classes()
        ));
    }
    Ok(())
}

/// Warns about files of a folder that are not images.
fn warn_skipped(folder: &ImageFolder, path: &Path) {
    if let Some(first) = folder.skipped().first() {
        eprintln!(
            "warning: {}: skipped {} files that are not PNG or JPEG (first: {})",
            path.display(),
            folder.skipped().len(),
            first.display()
        );
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{Data, FlowKind, Images};

    /// The image splits of a valid configuration.
    fn image_splits(config: &DataConfig) -> Data<Images> {
        Images::data(Splits::load(config, 0).expect("a valid data set")).expect("images")
    }

    /// Training and held-out examples.
    fn sizes(data: &Data<Images>) -> (usize, usize) {
        (data.train.len(), data.test.len())
    }

    use realnvp_data::folder::FolderPreset;

    /// Writes `count` grey `side x side` PNGs named `0000.png`, ... into `dir`.
    fn images(dir: &Path, count: usize, side: u32) {
        std::fs::create_dir_all(dir).expect("writable");
        for i in 0..count {
            image::GrayImage::from_pixel(side, side, image::Luma([i as u8]))
                .save(dir.join(format!("{i:04}.png")))
                .expect("writable");
        }
    }

    /// A grey image folder at `path` with the given held-out settings.
    fn folder(
        path: &Path,
        test_path: Option<&Path>,
        partition: Option<&Path>,
        held_out: Part,
    ) -> DataConfig {
        DataConfig::ImageFolder {
            path: path.to_path_buf(),
            test_path: test_path.map(Path::to_path_buf),
            partition: partition.map(Path::to_path_buf),
            held_out,
            preset: FolderPreset::Native,
            channels: 1,
            flip: false,
        }
    }

    #[test]
    fn a_separate_test_folder_is_the_held_out_split() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (train, valid, other) = (
            dir.path().join("train"),
            dir.path().join("valid"),
            dir.path().join("other"),
        );
        images(&train, 7, 4);
        images(&valid, 3, 4);
        images(&other, 3, 6);
        let config = folder(&train, Some(&valid), None, Part::Valid);
        let splits = image_splits(&config);
        assert_eq!(sizes(&splits), (7, 3));
        assert!(splits.held_out.contains("valid"), "{}", splits.held_out);

        let config = folder(&train, Some(&other), None, Part::Valid);
        let err = Splits::load(&config, 0).unwrap_err().to_string();
        assert!(err.contains("other") && err.contains("shape"), "{err}");
    }

    #[test]
    fn a_partition_list_splits_the_folder_by_file_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let images_dir = dir.path().join("img");
        images(&images_dir, 6, 4);
        let list = dir.path().join("list_eval_partition.txt");
        std::fs::write(
            &list,
            "0000.png 0\n0001.png 1\n0002.png 2\n0003.png 0\n0004.png 0\n0005.png 2\n",
        )
        .expect("writable");
        let valid = image_splits(&folder(&images_dir, None, Some(&list), Part::Valid));
        assert_eq!(sizes(&valid), (3, 1));
        assert!(valid.held_out.contains("partition 1 (valid)"));
        let test = image_splits(&folder(&images_dir, None, Some(&list), Part::Test));
        assert_eq!(sizes(&test), (3, 2));

        let both = folder(&images_dir, Some(&images_dir), Some(&list), Part::Valid);
        let err = Splits::load(&both, 0).unwrap_err().to_string();
        assert!(err.contains("data.test_path and data.partition"), "{err}");
    }

    #[test]
    fn without_an_official_split_every_tenth_image_is_held_out_and_said_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        images(dir.path(), 25, 4);
        let splits = image_splits(&folder(dir.path(), None, None, Part::Valid));
        assert_eq!(sizes(&splits), (23, 2));
        assert!(splits.held_out.contains("every 10th"));
    }
}
