//! `realnvp compress`: conceptual compression (paper appendix D).

use std::path::PathBuf;

use anyhow::bail;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use realnvp_core::latent_space::{compress, Fill, Kept};
use realnvp_train::output::grid::write_level_grid;
use realnvp_train::RunDir;

use crate::backend::{self, Inference};
use crate::inputs::InputArgs;
use crate::latent::{check_grid_size, decode_to_levels, encode_images, image_model};

// The flags of `realnvp compress`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    #[command(flatten)]
    inputs: InputArgs,
    /// Fractions of the latent dimensions to keep (the nearest whole channels are
    /// kept; the fractions kept are printed).
    #[arg(long, value_delimiter = ',', default_value = "1,0.5,0.25,0.125,0.0625")]
    fractions: Vec<f64>,
    /// Set the dropped latents to zero instead of drawing them from the prior.
    #[arg(long)]
    zero: bool,
    /// Standard deviation of the redrawn latents.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Seed of the redrawn latents.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    /// Keeps the coarsest latents of each input, refills the rest and decodes: one row
    /// per image, one column per kept fraction.
    pub fn run(self) -> anyhow::Result<()> {
        let fractions = &self.fractions;
        if let Some(bad) = fractions.iter().find(|f| !(0.0..=1.0).contains(*f)) {
            bail!("--fractions: {bad} is not in [0, 1]");
        }
        let fill = match self.zero {
            true => Fill::Zero,
            false => Fill::Prior {
                temperature: self.temperature,
            },
        };
        let run = RunDir::at(&self.run);
        let model = image_model(&run)?;
        let images = self.inputs.load(&run, model.config())?;
        let n = images.array.len();
        check_grid_size(n.saturating_mul(fractions.len()), || {
            format!("{n} images times {} --fractions", fractions.len())
        })?;
        let latents = encode_images(&model, &images.array);
        let shapes = latents.shapes();
        Inference::seed(&backend::device(), self.seed);
        let mut columns = Vec::new();
        for &fraction in fractions {
            let kept = Kept::coarsest(&shapes, fraction);
            println!(
                "asked {:.2} %: kept {:.2} % of the latents ({} of {} dimensions; channels per scale, finest first: {:?})",
                100.0 * fraction,
                100.0 * kept.fraction(),
                kept.dims,
                kept.total,
                kept.channels
            );
            columns.push(decode_to_levels(&model, compress(&latents, &kept, fill)));
        }
        // [fractions, n, c, h, w] -> rows of images: [n, fractions, c, h, w].
        let config = model.config();
        let [c, h, w] = [config.channels, config.height, config.width];
        let grid = Tensor::stack::<5>(columns, 1).reshape([n * fractions.len(), c, h, w]);
        write_level_grid(&self.out, grid, config.preprocess.levels, fractions.len())?;
        eprintln!("backend: {}", backend::NAME);
        println!(
            "{}: one row per image ({})",
            self.out.display(),
            images.names.join(", ")
        );
        Ok(())
    }
}
