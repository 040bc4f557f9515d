//! `realnvp`: the command-line front end of realnvp-rs.

use std::path::PathBuf;
use std::process::ExitCode;

use burn::module::Module;
use clap::{Parser, Subcommand};
use realnvp_core::RealNvpConfig;

mod backend;

/// Real NVP normalizing flows (Dinh et al.) on Burn.
#[derive(Parser, Debug)]
#[command(name = "realnvp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a model from a configuration and print its architecture, latent shapes and
    /// parameter count.
    Describe {
        /// Model configuration (TOML, the keys of `RealNvpConfig`); the default 3x32x32
        /// model when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Describe { config } => describe(config),
    }
}

fn describe(config: Option<PathBuf>) -> Result<(), String> {
    let config = match config {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str::<RealNvpConfig>(&text)
                .map_err(|e| format!("{}: {}", path.display(), e.message()))?
        }
        None => RealNvpConfig::default(),
    };
    let device = backend::device();
    let model = config
        .init::<backend::Inference>(&device)
        .map_err(|e| e.to_string())?;
    println!("backend: {}", backend::NAME);
    println!(
        "input: {}x{}x{} ({} dims, {} levels)",
        config.channels,
        config.height,
        config.width,
        config.dims(),
        model.preprocess().levels()
    );
    for (i, shape) in config.latent_shapes().iter().enumerate() {
        println!(
            "latent of scale {i}: {}x{}x{}",
            shape[0], shape[1], shape[2]
        );
    }
    println!("parameters: {}", model.num_params());
    Ok(())
}
