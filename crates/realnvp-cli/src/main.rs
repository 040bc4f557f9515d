//! `realnvp`: train, evaluate, sample and score Real NVP models from the command line.
//!
//! This file parses the command line and dispatches; each subcommand is one `Args` struct
//! with its `run`, in its own module of [`command`]. Errors are `anyhow` chains, printed as
//! one line `error: outer: cause: ...`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod backend;
mod command;
mod inputs;
mod latent;

/// Real NVP normalizing flows (Dinh et al.) on Burn: exact likelihood, exact sampling and
/// exact inversion.
#[derive(Parser, Debug)]
#[command(name = "realnvp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The device to run on: a GPU index with the CUDA and wgpu backends (0 is the first
    /// GPU, or wgpu's default adapter); the CPU backends have only device 0. [default: 0;
    /// with `train --mpi`, the rank's node-local rank]
    #[arg(long, global = true, value_name = "N")]
    device: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (by default the digits model on the embedded data set), or resume a
    /// run.
    Train(command::train::Args),
    /// Print held-out (or training) bits/dim and negative log-likelihood of a run's model.
    Eval(command::eval::Args),
    /// Draw samples from a run's model into a PNG grid.
    Sample(command::sample::Args),
    /// Encode images exactly into the latents of every scale (a safetensors file);
    /// pixels are dequantised to the centres of their bins, so `decode` gives them back.
    Encode(command::encode::Args),
    /// Decode a latents file from `encode` (or edited latents) into one PNG per example.
    Decode(command::decode::Args),
    /// The paper's manifold (eq. 14) through the latents of four images, as a PNG grid
    /// with the images at its corners.
    Manifold(command::manifold::Args),
    /// Conceptual compression (paper appendix D): keep the coarsest latents, resample the
    /// rest, decode; one row per image, one column per kept fraction.
    Compress(command::compress::Args),
    /// Samples larger than the training images from the fully convolutional model (paper
    /// appendix C).
    Extrapolate(command::extrapolate::Args),
    /// Log-likelihood (nats) and bits/dim of each image of a file or folder, or of each
    /// row of a CSV file for vector models, in input order.
    Score(command::score::Args),
    /// Classify the images of a split with a class-conditional model by Bayes' rule
    /// (`argmax_k log p(x | k)`, equal class priors) and print the accuracy.
    Classify(command::classify::Args),
    /// Measure training, evaluation and sampling throughput (images/s) and peak memory of
    /// the benchmark architectures on the backend compiled in; one JSON line each.
    Bench(command::bench::Args),
    /// Build a model from a configuration and print its latent shapes and parameter count.
    Describe(command::describe::Args),
    /// Print a shell completion script, e.g. `realnvp completions bash >
    /// ~/.local/share/bash-completion/completions/realnvp`, or for zsh into a directory of
    /// `$fpath` as `_realnvp`.
    Completions(command::completions::Args),
}

fn main() -> ExitCode {
    realnvp_core::memory::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Selects the device, then runs the subcommand: training starts its own worker threads
/// (a single-device run moves onto the compute threads itself), every other command runs
/// on the compute threads.
fn run(cli: Cli) -> anyhow::Result<()> {
    backend::select(cli.device.unwrap_or(0))?;
    match cli.command {
        Command::Train(args) => args.run(cli.device),
        Command::Completions(args) => {
            args.run(&mut Cli::command());
            Ok(())
        }
        Command::Eval(args) => backend::on_compute_threads(|| args.run()),
        Command::Sample(args) => backend::on_compute_threads(|| args.run()),
        Command::Encode(args) => backend::on_compute_threads(|| args.run()),
        Command::Decode(args) => backend::on_compute_threads(|| args.run()),
        Command::Manifold(args) => backend::on_compute_threads(|| args.run()),
        Command::Compress(args) => backend::on_compute_threads(|| args.run()),
        Command::Extrapolate(args) => backend::on_compute_threads(|| args.run()),
        Command::Score(args) => backend::on_compute_threads(|| args.run()),
        Command::Classify(args) => backend::on_compute_threads(|| args.run()),
        Command::Bench(args) => backend::on_compute_threads(|| args.run()),
        Command::Describe(args) => backend::on_compute_threads(|| args.run()),
    }
}
