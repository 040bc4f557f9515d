//! `realnvp describe`: the latent shapes and parameter count of an image model
//! configuration.

use std::path::PathBuf;

use anyhow::Context;
use burn::module::Module;
use realnvp_core::RealNvpConfig;

use crate::backend::{self, Inference};

// The flags of `realnvp describe`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model configuration (TOML keys of `RealNvpConfig`); the default 3x32x32 model
    /// when absent.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Args {
    /// Builds the model and prints its input, latent shapes and parameters.
    pub fn run(self) -> anyhow::Result<()> {
        let config = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
                toml::from_str::<RealNvpConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?
            }
            None => RealNvpConfig::default(),
        };
        let model = config.init::<Inference>(&backend::device())?;
        println!("backend: {}", backend::NAME);
        println!(
            "input: {}x{}x{} ({} dims)",
            config.channels,
            config.height,
            config.width,
            config.dims()
        );
        for (i, [c, h, w]) in config.latent_shapes().iter().enumerate() {
            println!("latent of scale {i}: {c}x{h}x{w}");
        }
        println!("parameters: {}", model.num_params());
        Ok(())
    }
}
