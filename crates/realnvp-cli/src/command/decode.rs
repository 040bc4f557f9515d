//! `realnvp decode`: latents back to images, one PNG per example.

use std::path::PathBuf;

use anyhow::bail;
use realnvp_core::latent_file::load_latents;
use realnvp_train::RunDir;

use crate::backend::{self, Inference};
use crate::inputs::{png_name, write_png};
use crate::latent::{decode_to_levels, image_model, to_bytes};

// The flags of `realnvp decode`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// The latents file.
    #[arg(long)]
    latents: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    /// Decodes `--latents` into `--out`, each PNG named after its encoded file (numbered
    /// when two names would collide).
    pub fn run(self) -> anyhow::Result<()> {
        let run = RunDir::at(&self.run);
        let model = image_model(&run)?;
        let named = load_latents::<Inference>(&self.latents, &backend::device())?;
        let expected = model.config().latent_shapes();
        if named.latents.shapes() != expected {
            bail!(
                "{}: latent shapes {:?} do not fit the model of {} ({:?})",
                self.latents.display(),
                named.latents.shapes(),
                self.run.display(),
                expected
            );
        }
        let (bytes, [n, c, h, w]) = to_bytes(decode_to_levels(&model, named.latents));
        let mut files: Vec<PathBuf> = named.names.iter().map(|name| png_name(name)).collect();
        let mut unique = files.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != files.len() {
            files = files
                .iter()
                .enumerate()
                .map(|(i, f)| PathBuf::from(format!("{i:05}-{}", f.display())))
                .collect();
        }
        let levels = model.config().preprocess.levels;
        for (k, file) in files.iter().enumerate() {
            let pixels = &bytes[k * c * h * w..(k + 1) * c * h * w];
            write_png(&self.out.join(file), pixels, [c, h, w], levels)?;
        }
        eprintln!("backend: {}", backend::NAME);
        println!("{}: {n} images", self.out.display());
        Ok(())
    }
}
