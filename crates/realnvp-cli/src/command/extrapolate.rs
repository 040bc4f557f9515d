//! `realnvp extrapolate`: samples larger than the training images (paper appendix C).

use std::path::PathBuf;

use anyhow::bail;
use burn::tensor::backend::Backend;
use realnvp_train::output::grid::write_level_grid;
use realnvp_train::RunDir;

use crate::backend::{self, Inference};
use crate::latent::{check_grid_size, check_temperature, decode_to_levels, image_model};

// The flags of `realnvp extrapolate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Side length as a multiple of the training size.
    #[arg(long, default_value_t = 2)]
    factor: usize,
    /// Number of samples.
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Standard deviation of the prior.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    /// Draws `--n` samples `--factor` times the training size into a grid.
    pub fn run(self) -> anyhow::Result<()> {
        let (factor, n) = (self.factor, self.n);
        if factor == 0 || n == 0 {
            bail!("--factor and --n must be positive (got {factor}, {n})");
        }
        check_temperature(self.temperature)?;
        check_grid_size(n.saturating_mul(factor.saturating_mul(factor)), || {
            format!("--n {n} samples of --factor {factor} squared times the training size")
        })?;
        let model = image_model(&RunDir::at(&self.run))?;
        let config = model.config();
        let (height, width) = (config.height * factor, config.width * factor);
        let device = backend::device();
        Inference::seed(&device, self.seed);
        let latents = model.sample_latents_sized(n, height, width, self.temperature, &device);
        let images = decode_to_levels(&model, latents);
        let columns = (n as f64).sqrt().ceil() as usize;
        write_level_grid(&self.out, images, config.preprocess.levels, columns)?;
        eprintln!("backend: {}", backend::NAME);
        println!(
            "{}: {n} samples of {height}x{width} pixels",
            self.out.display()
        );
        Ok(())
    }
}
