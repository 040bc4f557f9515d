//! `realnvp manifold`: the paper's equation-14 grid through the latents of four images.

use std::path::PathBuf;

use anyhow::bail;
use realnvp_core::latent_space::manifold;
use realnvp_train::output::grid::write_level_grid;
use realnvp_train::RunDir;

use crate::backend;
use crate::inputs::InputArgs;
use crate::latent::{check_grid_size, decode_to_levels, encode_images, image_model};

// The flags of `realnvp manifold`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Four images (top left, top right, bottom left, bottom right).
    #[command(flatten)]
    inputs: InputArgs,
    /// Values of phi (rows).
    #[arg(long, default_value_t = 8)]
    rows: usize,
    /// Values of phi' (columns).
    #[arg(long, default_value_t = 8)]
    cols: usize,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    /// Draws the `--rows` x `--cols` grid with the four images at its corners.
    pub fn run(self) -> anyhow::Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if rows < 2 || cols < 2 {
            bail!("--rows and --cols must be at least 2 (got {rows}, {cols})");
        }
        check_grid_size(rows.saturating_mul(cols), || {
            format!("--rows {rows} times --cols {cols}")
        })?;
        let run = RunDir::at(&self.run);
        let model = image_model(&run)?;
        let images = self.inputs.load(&run, model.config())?;
        if images.array.len() != 4 {
            bail!(
                "the manifold needs exactly 4 images, got {} ({})",
                images.array.len(),
                images.names.join(", ")
            );
        }
        let corners = encode_images(&model, &images.array);
        let grid = decode_to_levels(&model, manifold(&corners, rows, cols));
        write_level_grid(&self.out, grid, model.config().preprocess.levels, cols)?;
        eprintln!("backend: {}", backend::NAME);
        let names = &images.names;
        println!(
            "{}: {rows}x{cols} grid; corners {} (top left), {} (top right), {} (bottom left), {} (bottom right)",
            self.out.display(),
            names[0],
            names[1],
            names[2],
            names[3]
        );
        Ok(())
    }
}
