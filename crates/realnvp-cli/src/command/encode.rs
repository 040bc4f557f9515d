//! `realnvp encode`: images to the latents of every scale, exactly.

use std::path::PathBuf;

use realnvp_core::latent_file::{save_latents, NamedLatents};
use realnvp_train::RunDir;

use crate::backend;
use crate::inputs::InputArgs;
use crate::latent::{encode_images, image_model};

// The flags of `realnvp encode`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    #[command(flatten)]
    inputs: InputArgs,
    /// Output file (safetensors: `scale0` ... one tensor per scale, finest first).
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    /// Encodes the inputs into `--out`.
    pub fn run(self) -> anyhow::Result<()> {
        let run = RunDir::at(&self.run);
        let model = image_model(&run)?;
        let images = self.inputs.load(&run, model.config())?;
        let count = images.array.len();
        let latents = encode_images(&model, &images.array);
        let shapes = latents.shapes();
        let named = NamedLatents {
            latents,
            names: images.names,
        };
        save_latents(&self.out, &named)?;
        eprintln!("backend: {}", backend::NAME);
        let described: Vec<String> = shapes
            .iter()
            .map(|[c, h, w]| format!("{c}x{h}x{w}"))
            .collect();
        println!(
            "{}: {count} images, latents per scale {}",
            self.out.display(),
            described.join(", ")
        );
        Ok(())
    }
}
