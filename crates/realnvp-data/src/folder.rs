//! Folders of PNG/JPEG images, at any depth, with optional class sub-folders as labels, and
//! the paper's presets for CelebA and LSUN.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::images::{flip_horizontally, ImageArray};

/// How the images of a folder become model-sized images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FolderPreset {
    /// Used as they are: every image must have the size of the first.
    Native,
    /// CelebA as in the paper: centre crop 148x148, then resize to 64x64.
    Celeba,
    /// LSUN as in the paper: resize so that the shortest side is 96, then a random 64x64
    /// crop in training and the centre crop in evaluation.
    Lsun,
    /// Resize so that the shortest side is `size`, then the centre `size x size` crop
    /// (e.g. downsampled ImageNet exported as image folders).
    Resize {
        /// Output side in pixels.
        size: u32,
    },
}

impl FolderPreset {
    /// Output `(height, width)` for an input of `(height, width)`.
    fn output_size(&self, native: (u32, u32)) -> (u32, u32) {
        match *self {
            FolderPreset::Native => native,
            FolderPreset::Celeba | FolderPreset::Lsun => (64, 64),
            FolderPreset::Resize { size } => (size, size),
        }
    }

    /// Applies the preset; `crop_rng` draws LSUN's random crop in training (`None` for the
    /// centre crop).
    fn apply(&self, image: DynamicImage, crop_rng: Option<&mut dyn rand::RngCore>) -> DynamicImage {
        match *self {
            FolderPreset::Native => image,
            FolderPreset::Celeba => {
                let image = centre_crop(image, 148, 148);
                image.resize_exact(64, 64, FilterType::Triangle)
            }
            FolderPreset::Lsun => {
                let image = resize_shortest_side(image, 96);
                let (w, h) = image.dimensions();
                match crop_rng {
                    Some(rng) => {
                        let x = rng.random_range(0..=w - 64);
                        let y = rng.random_range(0..=h - 64);
                        image.crop_imm(x, y, 64, 64)
                    }
                    None => centre_crop(image, 64, 64),
                }
            }
            FolderPreset::Resize { size } => {
                centre_crop(resize_shortest_side(image, size), size, size)
            }
        }
    }
}

fn centre_crop(image: DynamicImage, width: u32, height: u32) -> DynamicImage {
    let (w, h) = image.dimensions();
    let (cw, ch) = (width.min(w), height.min(h));
    image.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch)
}

fn resize_shortest_side(image: DynamicImage, side: u32) -> DynamicImage {
    let (w, h) = image.dimensions();
    let scale = side as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(side),
        ((h as f64 * scale).round() as u32).max(side),
    );
    image.resize_exact(nw, nh, FilterType::Triangle)
}

/// Settings of an image folder data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderConfig {
    /// The folder; searched at any depth.
    pub path: PathBuf,
    /// Size handling.
    pub preset: FolderPreset,
    /// 3 for colour, 1 for grey; an image with the other count is an error.
    pub channels: usize,
}

/// Files with these extensions (any case) are images; others are skipped and reported.
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// A scanned image folder: the image files in a fixed (sorted) order, labels from class
/// sub-folders, and the shape every image is brought to.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    config: ImageFolderConfig,
    files: Vec<PathBuf>,
    labels: Option<Vec<u16>>,
    classes: Vec<String>,
    skipped: Vec<PathBuf>,
    shape: [usize; 3],
}

impl ImageFolder {
    /// Scans `config.path`. Labels come from the first-level sub-folders when every image
    /// lies inside one (classes in sorted order). Reads the header of the first image to
    /// learn the native size.
    pub fn scan(config: ImageFolderConfig) -> Result<Self, DataError> {
        let root = &config.path;
        if !matches!(config.channels, 1 | 3) {
            return Err(DataError::dataset(
                root,
                format!(
                    "channels = {}, expected 1 (grey) or 3 (colour)",
                    config.channels
                ),
            ));
        }
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        walk(root, &mut files, &mut skipped)?;
        if files.is_empty() {
            return Err(DataError::dataset(
                root,
                format!(
                    "no PNG or JPEG images found{}",
                    if skipped.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} other files)", skipped.len())
                    }
                ),
            ));
        }
        let class_of = |file: &Path| -> Option<String> {
            let relative = file.strip_prefix(root).ok()?;
            let mut parts = relative.components();
            let first = parts.next()?;
            parts
                .next()
                .map(|_| first.as_os_str().to_string_lossy().into_owned())
        };
        let class_per_file: Option<Vec<String>> = files.iter().map(|f| class_of(f)).collect();
        let (labels, classes) = match class_per_file {
            Some(names) => {
                let mut classes = names.clone();
                classes.sort();
                classes.dedup();
                let labels = names
                    .iter()
                    .map(|n| classes.binary_search(n).unwrap_or_default() as u16)
                    .collect();
                (Some(labels), classes)
            }
            None => (None, Vec::new()),
        };
        let first = &files[0];
        let (w, h) = image::image_dimensions(first)
            .map_err(|e| DataError::format(first, format!("not a readable image: {e}")))?;
        let (out_h, out_w) = config.preset.output_size((h, w));
        Ok(Self {
            shape: [config.channels, out_h as usize, out_w as usize],
            config,
            files,
            labels,
            classes,
            skipped,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// `[channels, height, width]` of the images produced.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Class names (sub-folder names) in label order; empty without labels.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Files that were skipped for not having an image extension.
    pub fn skipped(&self) -> &[PathBuf] {
        &self.skipped
    }

    /// The scanned folder.
    pub fn config_path(&self) -> &Path {
        &self.config.path
    }

    /// The size preset.
    pub fn preset(&self) -> FolderPreset {
        self.config.preset
    }

    /// The image files, in data set order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Decodes image `index` into `[c, h, w]` bytes. `crop_seed` draws LSUN's random
    /// crop (training); `None` takes the centre.
    pub fn decode(&self, index: usize, crop_seed: Option<u64>) -> Result<Vec<u8>, DataError> {
        let path = &self.files[index];
        let image = image::open(path)
            .map_err(|e| DataError::format(path, format!("cannot decode image: {e}")))?;
        let channels = match image.color().channel_count() {
            1 | 2 => 1,
            _ => 3,
        };
        if channels != self.config.channels {
            return Err(DataError::format(
                path,
                format!(
                    "{channels}-channel image in a {}-channel data set",
                    self.config.channels
                ),
            ));
        }
        let mut rng = crop_seed.map(<rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64);
        let image = self
            .config
            .preset
            .apply(image, rng.as_mut().map(|r| r as &mut dyn rand::RngCore));
        let (w, h) = image.dimensions();
        if [h as usize, w as usize] != [self.shape[1], self.shape[2]] {
            return Err(DataError::format(
                path,
                format!(
                    "{w}x{h} image, expected {}x{} like the first image",
                    self.shape[2], self.shape[1]
                ),
            ));
        }
        Ok(to_planar(&image, channels))
    }

    /// Decodes the images at `indices` in parallel on all cores. `crop_seeds` (one per
    /// index) draw random crops in training; `flips` mirror the chosen images.
    pub fn decode_batch(
        &self,
        indices: &[usize],
        crop_seeds: Option<&[u64]>,
        flips: &[bool],
    ) -> Result<ImageArray, DataError> {
        let images: Vec<Vec<u8>> = indices
            .par_iter()
            .enumerate()
            .map(|(k, &i)| {
                let mut pixels = self.decode(i, crop_seeds.map(|s| s[k]))?;
                if flips.get(k).copied().unwrap_or(false) {
                    flip_horizontally(&mut pixels, self.shape);
                }
                Ok(pixels)
            })
            .collect::<Result<_, DataError>>()?;
        Ok(ImageArray {
            shape: self.shape,
            levels: 256,
            pixels: images.concat(),
            labels: self
                .labels
                .as_ref()
                .map(|labels| indices.iter().map(|&i| labels[i]).collect()),
        })
    }
}

/// `[c, h, w]` bytes of an image, grey or RGB (alpha dropped).
fn to_planar(image: &DynamicImage, channels: usize) -> Vec<u8> {
    if channels == 1 {
        return image.to_luma8().into_raw();
    }
    let rgb = image.to_rgb8();
    let n = (rgb.width() * rgb.height()) as usize;
    let mut planar = vec![0u8; 3 * n];
    for (k, pixel) in rgb.pixels().enumerate() {
        for c in 0..3 {
            planar[c * n + k] = pixel.0[c];
        }
    }
    planar
}

/// Whether `path` names a PNG or JPEG file (by its extension, as a folder scan does).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes the one image file `path` at its own size into an [`ImageArray`] of one image
/// with `channels` (1 grey, 3 colour; 256 levels, no label): a single file given on the
/// command line, without scanning its folder.
pub fn decode_file(path: &Path, channels: usize) -> Result<ImageArray, DataError> {
    let image = image::open(path)
        .map_err(|e| DataError::format(path, format!("cannot decode image: {e}")))?;
    let found = match image.color().channel_count() {
        1 | 2 => 1,
        _ => 3,
    };
    if found != channels {
        return Err(DataError::format(
            path,
            format!("{found}-channel image in a {channels}-channel data set"),
        ));
    }
    let (w, h) = image.dimensions();
    Ok(ImageArray {
        shape: [channels, h as usize, w as usize],
        levels: 256,
        pixels: to_planar(&image, channels),
        labels: None,
    })
}

/// Collects image files under `dir` in sorted order, and the other files.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, skipped: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, files, skipped)?;
        } else if is_image_file(&path) {
            files.push(path);
        } else {
            skipped.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn config(path: PathBuf, preset: FolderPreset) -> ImageFolderConfig {
        ImageFolderConfig {
            path,
            preset,
            channels: 3,
        }
    }

    #[test]
    fn class_sub_folders_become_labels_and_other_files_are_skipped() {
        let folder = ImageFolder::scan(config(fixtures().join("photos"), FolderPreset::Celeba))
            .expect("valid");
        assert_eq!(folder.len(), 4);
        assert_eq!(folder.classes(), ["animals", "objects"]);
        assert_eq!(folder.shape(), [3, 64, 64]);
        assert_eq!(folder.skipped().len(), 1, "notes.txt");
        let batch = folder
            .decode_batch(&[0, 1, 2, 3], None, &[])
            .expect("valid photos");
        assert_eq!(batch.labels, Some(vec![0, 1, 1, 1]));
        assert_eq!(batch.pixels.len(), 4 * 3 * 64 * 64);
        // Real photographs: every channel varies.
        assert!(batch.image(0).iter().any(|&p| p < 100) && batch.image(0).iter().any(|&p| p > 150));
    }

    #[test]
    fn lsun_crops_are_random_in_training_and_central_in_evaluation() {
        let folder = ImageFolder::scan(config(
            fixtures().join("photos/objects"),
            FolderPreset::Lsun,
        ))
        .expect("valid");
        assert_eq!(folder.labels, None, "no class sub-folders");
        let astronaut = 0;
        let centre = folder.decode(astronaut, None).expect("valid");
        assert_eq!(centre, folder.decode(astronaut, None).expect("valid"));
        let a = folder.decode(astronaut, Some(1)).expect("valid");
        assert_eq!(
            a,
            folder.decode(astronaut, Some(1)).expect("valid"),
            "seeded"
        );
        let differs = (2..10).any(|s| folder.decode(astronaut, Some(s)).expect("valid") != a);
        assert!(differs, "crops do not depend on the seed");
        assert_eq!(a.len(), 3 * 64 * 64);
    }

    #[test]
    fn flips_mirror_decoded_images() {
        let folder = ImageFolder::scan(config(
            fixtures().join("photos"),
            FolderPreset::Resize { size: 16 },
        ))
        .expect("valid");
        let plain = folder.decode_batch(&[1], None, &[false]).expect("valid");
        let mirrored = folder.decode_batch(&[1], None, &[true]).expect("valid");
        let mut twice = mirrored.pixels.clone();
        flip_horizontally(&mut twice, folder.shape());
        assert_eq!(twice, plain.pixels);
        assert_ne!(mirrored.pixels, plain.pixels);
    }

    fn temp_folder(files: &[(&str, &Path)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, source) in files {
            std::fs::copy(source, dir.path().join(name)).expect("copy fixture");
        }
        dir
    }

    #[test]
    fn bad_folders_are_errors_naming_the_file() {
        let f = fixtures();
        let photo = f.join("photos/objects/astronaut.jpg");
        // A truncated JPEG (a real one, cut off after 400 bytes).
        let dir = temp_folder(&[
            ("a.jpg", &photo),
            ("truncated.jpg", &f.join("truncated.jpg")),
        ]);
        let folder =
            ImageFolder::scan(config(dir.path().into(), FolderPreset::Celeba)).expect("scans");
        let err = folder
            .decode_batch(&[0, 1], None, &[])
            .expect_err("truncated")
            .to_string();
        assert!(err.contains("truncated.jpg"), "{err}");

        // Mixed sizes without a resizing preset.
        let dir = temp_folder(&[
            ("a.jpg", &photo),
            ("b.jpg", &f.join("photos/objects/rocket.jpg")),
        ]);
        let folder =
            ImageFolder::scan(config(dir.path().into(), FolderPreset::Native)).expect("scans");
        let err = folder
            .decode_batch(&[0, 1], None, &[])
            .expect_err("mixed sizes")
            .to_string();
        assert!(err.contains("b.jpg") && err.contains("120x80"), "{err}");

        // A grey image in a colour data set.
        let dir = temp_folder(&[("a.jpg", &photo), ("grey.png", &f.join("grey_brick.png"))]);
        let folder =
            ImageFolder::scan(config(dir.path().into(), FolderPreset::Celeba)).expect("scans");
        let err = folder.decode(1, None).expect_err("grey").to_string();
        assert!(
            err.contains("grey.png") && err.contains("1-channel"),
            "{err}"
        );

        // A text file named like an image.
        let dir = temp_folder(&[
            ("a.jpg", &photo),
            ("fake.png", &f.join("photos/objects/notes.txt")),
        ]);
        let folder =
            ImageFolder::scan(config(dir.path().into(), FolderPreset::Celeba)).expect("scans");
        let err = folder
            .decode(1, None)
            .expect_err("not an image")
            .to_string();
        assert!(err.contains("fake.png"), "{err}");

        // An empty folder, a folder of non-images, a missing folder.
        let dir = tempfile::tempdir().expect("temp dir");
        let err = ImageFolder::scan(config(dir.path().into(), FolderPreset::Celeba))
            .expect_err("empty")
            .to_string();
        assert!(err.contains("no PNG or JPEG images"), "{err}");
        let dir = temp_folder(&[("notes.txt", &f.join("photos/objects/notes.txt"))]);
        let err = ImageFolder::scan(config(dir.path().into(), FolderPreset::Celeba))
            .expect_err("no images")
            .to_string();
        assert!(err.contains("1 other files"), "{err}");
        let err = ImageFolder::scan(config(f.join("absent"), FolderPreset::Celeba))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("absent"), "{err}");
    }
}
