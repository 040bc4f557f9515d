//! Images given on the command line: files, folders, or examples of the run's own data set;
//! and images written back as PNG files.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use realnvp_core::RealNvpConfig;
use realnvp_data::folder::{
    decode_file, is_image_file, FolderPreset, ImageFolder, ImageFolderConfig,
};
use realnvp_data::loader::ImageSource;
use realnvp_data::ImageArray;
use realnvp_train::data::Splits;
use realnvp_train::RunDir;

/// Where the images of a command come from.
#[derive(clap::Args, Debug, Clone)]
pub struct InputArgs {
    /// An image or a folder of images (PNG/JPEG at the model's size; 8-bit values are
    /// mapped to the model's levels). Repeatable.
    #[arg(
        long = "input",
        value_name = "PATH",
        required_unless_present = "test_examples"
    )]
    pub inputs: Vec<PathBuf>,
    /// Instead of files: examples of the run's test split by index, e.g. `0,1,2,3`.
    #[arg(long, value_delimiter = ',', conflicts_with = "inputs")]
    pub test_examples: Vec<usize>,
}

/// Images at a model's levels, with one name per image.
pub struct Images {
    /// The pixels, values `0..levels`.
    pub array: ImageArray,
    /// The file each image came from, or `test-<index>`.
    pub names: Vec<String>,
}

impl InputArgs {
    /// Reads the images for a model with `config` trained in `run`.
    pub fn load(&self, run: &RunDir, config: &RealNvpConfig) -> anyhow::Result<Images> {
        if self.test_examples.is_empty() {
            let mut all: Option<Images> = None;
            for input in &self.inputs {
                let next = read_images(input, config)?;
                all = Some(match all {
                    None => next,
                    Some(mut all) => {
                        all.array.pixels.extend(next.array.pixels);
                        all.names.extend(next.names);
                        all
                    }
                });
            }
            all.ok_or_else(|| anyhow!("give --input or --test-examples"))
        } else {
            test_examples(run, &self.test_examples)
        }
    }
}

/// The examples `indices` of the test split of the data set `run` was trained on.
pub fn test_examples(run: &RunDir, indices: &[usize]) -> anyhow::Result<Images> {
    let run_config = run.config()?;
    let splits = Splits::load(&run_config.data, run_config.train.seed)?;
    let Splits::Images { test, .. } = splits else {
        bail!("--test-examples needs an image data set");
    };
    split_examples(&test, indices)
}

/// The examples `indices` of an image split.
pub fn split_examples(split: &ImageSource, indices: &[usize]) -> anyhow::Result<Images> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= split.len()) {
        bail!(
            "--test-examples: index {bad} is past the test split's {} images",
            split.len()
        );
    }
    let array = split.fetch(indices, None, &[])?;
    Ok(Images {
        array,
        names: indices.iter().map(|i| format!("test-{i}")).collect(),
    })
}

/// An image file, or every image of a folder (sorted, recursively), at the model's shape
/// and levels.
pub fn read_images(input: &Path, config: &RealNvpConfig) -> anyhow::Result<Images> {
    let (mut array, names) = if input.is_file() {
        // One file is decoded alone: its folder may hold anything else.
        if !is_image_file(input) {
            bail!("{}: not a PNG or JPEG image", input.display());
        }
        let array = decode_file(input, config.channels)?;
        (array, vec![input.display().to_string()])
    } else {
        let folder = ImageFolder::scan(ImageFolderConfig {
            path: input.to_path_buf(),
            preset: FolderPreset::Native,
            channels: config.channels,
        })?;
        let indices: Vec<usize> = (0..folder.len()).collect();
        let array = folder.decode_batch(&indices, None, &[])?;
        let names = folder
            .files()
            .iter()
            .map(|file| file.display().to_string())
            .collect();
        (array, names)
    };
    let expected = [config.channels, config.height, config.width];
    if array.shape != expected {
        let [c, h, w] = array.shape;
        bail!(
            "{}: images are {c}x{h}x{w}, the model expects {}x{}x{}",
            input.display(),
            expected[0],
            expected[1],
            expected[2]
        );
    }
    let levels = config.preprocess.levels;
    if levels != 256 {
        for p in array.pixels.iter_mut() {
            *p = ((*p as f64) * (levels - 1) as f64 / 255.0).round() as u8;
        }
    }
    array.levels = levels;
    Ok(Images { array, names })
}

/// Writes one image `[c, h, w]` of pixel levels `0..levels` as an 8-bit PNG; level `l`
/// becomes `round(255 l / (levels - 1))`, which [`read_images`] maps back to `l`.
pub fn write_png(path: &Path, pixels: &[u8], shape: [usize; 3], levels: u32) -> anyhow::Result<()> {
    let [c, h, w] = shape;
    let scale = 255.0 / (levels.max(2) - 1) as f64;
    let to_byte = |v: u8| ((v as f64) * scale).round().clamp(0.0, 255.0) as u8;
    let mut bytes = Vec::with_capacity(c * h * w);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                bytes.push(to_byte(pixels[(ch * h + y) * w + x]));
            }
        }
    }
    let color = if c == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    image::save_buffer(path, &bytes, w as u32, h as u32, color)
        .with_context(|| path.display().to_string())
}

/// A file name for example `name`'s PNG: its file stem, or the name itself.
pub fn png_name(name: &str) -> PathBuf {
    let stem = Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string());
    PathBuf::from(format!("{stem}.png"))
}
