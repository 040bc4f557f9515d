//! `realnvp`: train, evaluate, sample and score Real NVP models from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::Autodiff;
use burn::module::Module;
use clap::{Parser, Subcommand, ValueEnum};
use realnvp_core::{ConvPrecision, Dequantization, Flow, FlowBatch, FlowConfig, RealNvpConfig};
use realnvp_train::data::Splits;
use realnvp_train::{
    evaluate, load_run_model, run_config, train, train_parallel, write_samples, RunConfig, Split,
    TrainOptions, TrainSummary,
};

mod backend;
mod inputs;
mod latent;
#[cfg(feature = "mpi")]
mod mpi_train;
mod score;

use inputs::InputArgs;
use realnvp_core::latent_space::Fill;

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
    Train(TrainArgs),
    /// Print held-out (or training) bits/dim and negative log-likelihood of a run's model.
    Eval {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Which split.
        #[arg(long, value_enum, default_value_t = SplitArg::Test)]
        split: SplitArg,
        /// Only the first N examples of the split.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// The float type of the s/t networks' convolutions: f32, bf16 or f16 (the
        /// flow's arithmetic stays f32), to see what reduced precision costs.
        #[arg(long, default_value_t = ConvPrecision::F32, value_name = "TYPE")]
        conv_precision: ConvPrecision,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Draw samples from a run's model into a PNG grid.
    Sample {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Number of samples.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Standard deviation of the prior (0 < T <= 1 sharpens samples).
        #[arg(long, default_value_t = 1.0, conflicts_with = "temperatures")]
        temperature: f64,
        /// A grid instead: one row per temperature, the same noise in every row, e.g.
        /// `0,0.5,0.7,1` (image models).
        #[arg(long, value_delimiter = ',')]
        temperatures: Vec<f64>,
        /// Draw from this class's prior (class-conditional models); without it a
        /// conditional model's samples cycle through the classes.
        #[arg(long)]
        class: Option<usize>,
        /// Seed of the draw.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
    },
    /// Encode images exactly into the latents of every scale (a safetensors file);
    /// pixels are dequantised to the centres of their bins, so `decode` gives them back.
    Encode {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        #[command(flatten)]
        inputs: InputArgs,
        /// Output file (safetensors: `scale0` ... one tensor per scale, finest first).
        #[arg(long)]
        out: PathBuf,
    },
    /// Decode a latents file from `encode` (or edited latents) into one PNG per example.
    Decode {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// The latents file.
        #[arg(long)]
        latents: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// The paper's manifold (eq. 14) through the latents of four images, as a PNG grid
    /// with the images at its corners.
    Manifold {
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
    },
    /// Conceptual compression (paper appendix D): keep the coarsest latents, resample the
    /// rest, decode; one row per image, one column per kept fraction.
    Compress {
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
    },
    /// Samples larger than the training images from the fully convolutional model (paper
    /// appendix C).
    Extrapolate {
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
    },
    /// Log-likelihood (nats) and bits/dim of each image of a file or folder, or of each
    /// row of a CSV file for vector models, in input order.
    Score {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// An image, a folder of images, a CSV file, or `data:test` / `data:train` for a
        /// split of the run's own data set.
        #[arg(long)]
        input: PathBuf,
        /// A second input of the same kinds to compare with (out-of-distribution checks):
        /// prints both distributions and the AUROC instead of per-input lines.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// With --compare: write overlaid bits/dim histograms to this PNG.
        #[arg(long, requires = "compare")]
        plot: Option<PathBuf>,
        /// One JSON object per line.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// CSV with a header.
        #[arg(long)]
        csv: bool,
    },
    /// Classify the images of a split with a class-conditional model by Bayes' rule
    /// (`argmax_k log p(x | k)`, equal class priors) and print the accuracy.
    Classify {
        /// The run directory (trained with `model.conditional = true`).
        #[arg(long)]
        run: PathBuf,
        /// Which split.
        #[arg(long, value_enum, default_value_t = SplitArg::Test)]
        split: SplitArg,
        /// Classify only the first N examples.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object (accuracy, examples, confusion matrix) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure training, evaluation and sampling throughput (images/s) and peak memory of
    /// the benchmark architectures on the backend compiled in; one JSON line each.
    Bench {
        /// Architectures: digits, fashion-mnist, cifar10, imagenet64 (comma-separated;
        /// imagenet64, the paper's ImageNet 64 model, is for memory figures).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "digits,fashion-mnist,cifar10"
        )]
        models: Vec<String>,
        /// Images per batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Untimed iterations first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Iterations per repetition.
        #[arg(long, default_value_t = 2)]
        iterations: usize,
        /// Give the s/t networks the paper's skip connections (the PyTorch reference has
        /// none: compare with it only without them).
        #[arg(long)]
        skip_connections: bool,
        /// Train with Burn's gradient checkpointing (as `train.gradient_checkpointing`):
        /// compare peak memory and speed with and without it.
        #[arg(long)]
        gradient_checkpointing: bool,
        /// The float type of the s/t networks' convolutions (as `train.conv_precision`):
        /// f32, bf16 or f16.
        #[arg(long, default_value_t = ConvPrecision::F32, value_name = "TYPE")]
        conv_precision: ConvPrecision,
    },
    /// Build a model from a configuration and print its latent shapes and parameter count.
    Describe {
        /// Model configuration (TOML keys of `RealNvpConfig`); the default 3x32x32 model
        /// when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script, e.g. `realnvp completions bash >
    /// ~/.local/share/bash-completion/completions/realnvp`, or for zsh into a directory of
    /// `$fpath` as `_realnvp`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Run configuration (TOML); the embedded digits model when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a configuration key, e.g. `--set train.learning_rate=3e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Run directory [default: runs/<config name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its newest intact checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after N steps in total (0 writes the initialised model).
    #[arg(long)]
    steps: Option<u64>,
    /// Stop after M minutes of training in total.
    #[arg(long)]
    minutes: Option<f64>,
    /// Seed of initialisation, data order and noise.
    #[arg(long)]
    seed: Option<u64>,
    /// Fine-tune: start this new run from the weights of a trained run or export directory
    /// (the same architecture; a tensor of another shape is an error naming it).
    #[arg(long, value_name = "RUN_OR_EXPORT_DIR", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    #[command(flatten)]
    parallel: ParallelArgs,
}

/// Data-parallel training: one worker per device, gradients averaged by an all-reduce;
/// `train.batch_size` stays the global batch. `--devices` runs the workers as threads of
/// this process; `--mpi` makes this process one rank of an MPI job, on one machine or
/// many. MPI's TCP transport is unauthenticated and listens on every interface: keep the
/// nodes on a private network and pin MPI to it, e.g. `mpirun --mca btl_tcp_if_include
/// eth1 --mca oob_tcp_if_include eth1 ...`.
#[derive(clap::Args, Debug)]
struct ParallelArgs {
    /// Device indices, one worker thread each, e.g. `0,1` (CUDA or wgpu GPUs; on the CPU
    /// backends N workers share the one CPU device).
    #[arg(long, value_delimiter = ',', value_name = "INDICES")]
    devices: Vec<usize>,
    /// This process is one rank of an MPI job: `mpirun -np N realnvp train --mpi ...`
    /// (a hostfile for several machines) or `srun --mpi=pmix realnvp train --mpi ...`.
    ///
    /// One process per device: each rank takes its node-local rank's device unless
    /// `--device` says otherwise, and on the CPU its share of the node's cores; rank 0
    /// writes the run directory. A rank that waits longer than
    /// `train.collective_timeout_seconds` (600) for the others aborts the job. Needs a
    /// build with `--features mpi`.
    ///
    /// Security: MPI's TCP transport is unauthenticated and listens on every interface.
    /// Keep the nodes on a private network and pin MPI to it: `mpirun --mca
    /// btl_tcp_if_include IFACE --mca oob_tcp_if_include IFACE ...` (or the
    /// `OMPI_MCA_btl_tcp_if_include` and `OMPI_MCA_oob_tcp_if_include` variables).
    #[arg(long, conflicts_with = "devices")]
    mpi: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum SplitArg {
    Test,
    Train,
}

impl From<SplitArg> for Split {
    fn from(split: SplitArg) -> Self {
        match split {
            SplitArg::Test => Split::Test,
            SplitArg::Train => Split::Train,
        }
    }
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

type Inference = backend::Inference;
type Training = Autodiff<backend::Inference>;
/// Training with Burn's gradient checkpointing (`train.gradient_checkpointing`).
type Checkpointed = Autodiff<backend::Inference, BalancedCheckpointing>;

fn run(cli: Cli) -> Result<(), String> {
    backend::select(cli.device.unwrap_or(0))?;
    match cli.command {
        // A data-parallel run starts its own worker threads, so `train_command` moves only
        // a single-device run onto the compute threads.
        Command::Train(args) => train_command(args, cli.device),
        command => backend::on_compute_threads(|| run_command(command)),
    }
}

/// Every command but `train`, on the thread it is called from.
fn run_command(command: Command) -> Result<(), String> {
    match command {
        Command::Train(_) => unreachable!("`run` starts training itself"),
        Command::Eval {
            run,
            split,
            limit,
            conv_precision,
            json,
        } => eval_command(&run, split, limit, conv_precision, json),
        Command::Sample {
            run,
            n,
            temperature,
            temperatures,
            class,
            seed,
            out,
        } => {
            if temperatures.is_empty() && class.is_none() {
                sample_command(&run, n, temperature, seed, &out)
            } else {
                let temperatures = if temperatures.is_empty() {
                    vec![temperature]
                } else {
                    temperatures
                };
                latent::sample_grid_command(&run, n, &temperatures, class, seed, &out)
            }
        }
        Command::Encode { run, inputs, out } => latent::encode_command(&run, &inputs, &out),
        Command::Decode { run, latents, out } => latent::decode_command(&run, &latents, &out),
        Command::Manifold {
            run,
            inputs,
            rows,
            cols,
            out,
        } => latent::manifold_command(&run, &inputs, rows, cols, &out),
        Command::Compress {
            run,
            inputs,
            fractions,
            zero,
            temperature,
            seed,
            out,
        } => {
            let fill = if zero {
                Fill::Zero
            } else {
                Fill::Prior { temperature }
            };
            latent::compress_command(&run, &inputs, &fractions, fill, seed, &out)
        }
        Command::Extrapolate {
            run,
            factor,
            n,
            temperature,
            seed,
            out,
        } => latent::extrapolate_command(&run, factor, n, temperature, seed, &out),
        Command::Score {
            run,
            input,
            compare,
            plot,
            json,
            csv,
        } => score::score_command(score::ScoreArgs {
            run: &run,
            input: &input,
            compare: compare.as_deref(),
            plot: plot.as_deref(),
            json,
            csv,
        }),
        Command::Classify {
            run,
            split,
            limit,
            json,
        } => classify_command(&run, split, limit, json),
        Command::Bench {
            models,
            batch,
            warmup,
            repeats,
            iterations,
            skip_connections,
            gradient_checkpointing,
            conv_precision,
        } => {
            let settings = realnvp_train::bench::BenchSettings {
                batch,
                warmup,
                repeats,
                iterations,
                skip_connections,
                gradient_checkpointing,
                conv_precision,
            };
            bench_command(&models, settings)
        }
        Command::Describe { config } => describe(config),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "realnvp",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn train_command(args: TrainArgs, device: Option<usize>) -> Result<(), String> {
    let name = args
        .config
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "digits".into());
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(name));
    let mut overrides = args.overrides.clone();
    if let Some(steps) = args.steps {
        overrides.push(format!("train.max_steps={steps}"));
    }
    if let Some(minutes) = args.minutes {
        overrides.push(format!("train.max_minutes={minutes}"));
    }
    if let Some(seed) = args.seed {
        overrides.push(format!("train.seed={seed}"));
    }
    let config = if args.resume && args.config.is_none() && run_dir.join("config.toml").is_file() {
        RunConfig::load(Some(&run_dir.join("config.toml")), &overrides)
    } else {
        RunConfig::load(args.config.as_deref(), &overrides)
    }
    .map_err(|e| e.to_string())?;

    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted (Ctrl-C or SIGTERM): saving a checkpoint after this step (signal again to quit at once)"
        );
    })
    .map_err(|e| format!("cannot install the Ctrl-C / SIGTERM handler: {e}"))?;

    if !args.parallel.mpi {
        // An MPI rank says where it runs once it knows its rank.
        eprintln!("backend: {}", backend::NAME);
        eprintln!("run directory: {}", run_dir.display());
    }
    let options = TrainOptions {
        run_dir: run_dir.clone(),
        resume: args.resume,
        interrupt,
        progress: true,
        init_from: args.init_from.clone(),
    };
    let parallel = &args.parallel;
    if let (Some(device), false) = (device, parallel.devices.is_empty()) {
        return Err(format!(
            "--device {device} and --devices {:?} both given: --devices lists every device of a data-parallel run",
            parallel.devices
        ));
    }
    if parallel.mpi {
        return mpi_train(&config, &options, device);
    }
    if let Some((variable, ranks)) = started_as_mpi_ranks() {
        return Err(format!(
            "this process is one of {ranks} started by an MPI launcher ({variable}={ranks}) but --mpi is not given: each would train the same run alone, into the same directory. Add --mpi (with a build that has `--features mpi`)"
        ));
    }
    if parallel.devices.len() <= 1 {
        let device = match parallel.devices.first() {
            Some(&index) => backend::device_at(index)?,
            None => backend::device(),
        };
        let summary = backend::on_compute_threads(|| {
            if config.train.gradient_checkpointing {
                eprintln!("gradient checkpointing: on");
                train::<Checkpointed>(&config, &options, &device)
            } else {
                train::<Training>(&config, &options, &device)
            }
            .map_err(|e| e.to_string())
        })?;
        print_summary(&summary, &run_dir);
        return Ok(());
    }
    data_parallel(&config, &options, parallel)
}

/// Whether an MPI launcher started this process as one of several ranks: the variable
/// that says so (OpenMPI's mpirun, MPICH's and Slurm's PMI) and the number of ranks.
fn started_as_mpi_ranks() -> Option<(&'static str, usize)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .into_iter()
        .find_map(|variable| {
            let ranks: usize = std::env::var(variable).ok()?.parse().ok()?;
            (ranks > 1).then_some((variable, ranks))
        })
}

/// `realnvp train --mpi`: this process is one rank of an MPI job.
#[cfg(feature = "mpi")]
fn mpi_train(
    config: &RunConfig,
    options: &TrainOptions,
    device: Option<usize>,
) -> Result<(), String> {
    mpi_train::run(config, options, device)
}

#[cfg(not(feature = "mpi"))]
fn mpi_train(_: &RunConfig, _: &TrainOptions, _: Option<usize>) -> Result<(), String> {
    Err("--mpi: this realnvp was built without MPI; install OpenMPI and libclang (Debian: apt-get install libopenmpi-dev openmpi-bin clang libclang-dev pkg-config) and build with `cargo build --release -p realnvp-cli --features mpi`".into())
}

/// `realnvp train --devices 0,1,...`: one worker thread per device.
fn data_parallel(
    config: &RunConfig,
    options: &TrainOptions,
    parallel: &ParallelArgs,
) -> Result<(), String> {
    let devices = parallel
        .devices
        .iter()
        .map(|&i| backend::device_at(i))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("data-parallel: {} workers on this machine", devices.len());
    let outcome = if config.train.gradient_checkpointing {
        train_parallel::<Checkpointed>(config, options, devices)
    } else {
        train_parallel::<Training>(config, options, devices)
    }
    .map_err(|e| e.to_string())?;
    if let Some(summary) = &outcome.leader {
        print_summary(summary, &options.run_dir);
        print_reduce_share(summary, &outcome.reduce_seconds);
    }
    println!(
        "replicas identical: {} workers, model fingerprint {:016x}",
        outcome.workers,
        outcome.fingerprints.first().copied().unwrap_or_default()
    );
    Ok(())
}

fn print_summary(summary: &TrainSummary, run_dir: &Path) {
    println!(
        "{} after {} steps ({:.1} s, {:.1} images/s): test {:.4} bits/dim ({} examples: {})",
        if summary.interrupted {
            "interrupted"
        } else {
            "done"
        },
        summary.steps,
        summary.seconds,
        summary.images_per_second,
        summary.test.bits_per_dim,
        summary.test.examples,
        summary.held_out
    );
    if let Some(given) = summary.test.given_label_bits_per_dim {
        println!(
            "class-conditional: {given:.4} bits/dim given the label (the training objective), {:.4} marginal",
            summary.test.bits_per_dim
        );
    }
    println!("samples: {}", run_dir.join("samples").display());
    println!("model: {}", summary.export.display());
    if let Some((bits_per_dim, step)) = summary.best {
        println!(
            "best model: {} (step {step}, {bits_per_dim:.4} bits/dim held out)",
            summary.export.join(realnvp_train::BEST_EXPORT).display()
        );
    }
    if summary.interrupted {
        println!(
            "resume with: realnvp train --out {} --resume",
            run_dir.display()
        );
    }
}

/// How much of this invocation the leader spent combining steps with the other workers.
fn print_reduce_share(summary: &TrainSummary, reduce_seconds: &[f64]) {
    let Some(&seconds) = reduce_seconds.first() else {
        return;
    };
    println!(
        "all-reduce (rank 0): {:.1} s in all, {:.1} ms per step, {:.1}% of this invocation's {:.1} s",
        seconds,
        1e3 * seconds / summary.session_steps.max(1) as f64,
        100.0 * seconds / summary.session_seconds.max(1e-9),
        summary.session_seconds
    );
}

fn eval_command(
    run: &Path,
    split: SplitArg,
    limit: Option<usize>,
    precision: ConvPrecision,
    json: bool,
) -> Result<(), String> {
    let config = run_config(run).map_err(|e| e.to_string())?;
    let device = backend::device();
    let (model, _) = load_run_model::<Inference>(run, &device).map_err(|e| e.to_string())?;
    let model = model
        .with_conv_precision(precision, &device)
        .map_err(|e| format!("--conv-precision: {e}"))?;
    let splits = Splits::load(&config.data, config.train.seed).map_err(|e| e.to_string())?;
    let split = split.into();
    let result = evaluate(
        &model,
        &splits,
        split,
        config.train.eval_batch_size,
        limit,
        config.train.seed,
        &device,
    )
    .map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&result).map_err(|e| e.to_string())?
        );
    } else {
        eprintln!("backend: {}", backend::NAME);
        if precision != ConvPrecision::F32 {
            eprintln!("s/t convolutions in {precision}");
        }
        println!(
            "{:.4} bits/dim, {:.2} nats per example, {} examples",
            result.bits_per_dim, result.nll_nats, result.examples
        );
        if let Some(given) = result.given_label_bits_per_dim {
            println!("{given:.4} bits/dim given the label (the training objective)");
        }
    }
    Ok(())
}

fn classify_command(
    run: &Path,
    split: SplitArg,
    limit: Option<usize>,
    json: bool,
) -> Result<(), String> {
    let config = run_config(run).map_err(|e| e.to_string())?;
    let device = backend::device();
    let (model, _) = load_run_model::<Inference>(run, &device).map_err(|e| e.to_string())?;
    let splits = Splits::load(&config.data, config.train.seed).map_err(|e| e.to_string())?;
    let result = realnvp_train::classify(
        &model,
        &splits,
        split.into(),
        config.train.eval_batch_size,
        limit,
        &device,
    )
    .map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&result).map_err(|e| e.to_string())?
        );
    } else {
        eprintln!("backend: {}", backend::NAME);
        println!("confusion matrix (rows: label, columns: predicted class):");
        for row in &result.confusion {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:5}")).collect();
            println!("{}", cells.join(" "));
        }
        println!(
            "accuracy {:.4} on {} examples",
            result.accuracy, result.examples
        );
    }
    Ok(())
}

fn sample_command(
    run: &Path,
    n: usize,
    temperature: f64,
    seed: u64,
    out: &Path,
) -> Result<(), String> {
    if temperature.is_nan() || temperature < 0.0 || n == 0 {
        return Err(format!(
            "--n must be positive and --temperature >= 0 (got {n}, {temperature})"
        ));
    }
    let device = backend::device();
    let (model, _) = load_run_model::<Inference>(run, &device).map_err(|e| e.to_string())?;
    eprintln!("backend: {}", backend::NAME);
    write_samples(&model, out, n, temperature, seed, &device).map_err(|e| e.to_string())?;
    println!("{}", out.display());
    Ok(())
}

fn bench_command(
    models: &[String],
    settings: realnvp_train::bench::BenchSettings,
) -> Result<(), String> {
    use realnvp_train::bench::{benchmark, BenchModel};
    if settings.batch == 0 || settings.repeats == 0 || settings.iterations == 0 {
        return Err("--batch, --repeats and --iterations must be positive".into());
    }
    let chosen = models
        .iter()
        .map(|name| {
            BenchModel::ALL
                .into_iter()
                .find(|m| m.name() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = BenchModel::ALL.iter().map(|m| m.name()).collect();
                    format!(
                        "--models: unknown model `{name}` (known: {})",
                        known.join(", ")
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!("backend: {}", backend::NAME);
    let device = backend::device();
    settings
        .conv_precision
        .check::<Inference>(&device)
        .map_err(|e| format!("--conv-precision: {e}"))?;
    for model in chosen {
        eprintln!("benchmarking {} ...", model.name());
        let result = if settings.gradient_checkpointing {
            benchmark::<Checkpointed>(model, settings, backend::NAME, &device)
        } else {
            benchmark::<Training>(model, settings, backend::NAME, &device)
        };
        println!(
            "{}",
            serde_json::to_string(&result).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

fn describe(config: Option<PathBuf>) -> Result<(), String> {
    let config = match config {
        Some(path) => {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str::<RealNvpConfig>(&text)
                .map_err(|e| format!("{}: {}", path.display(), e.message()))?
        }
        None => RealNvpConfig::default(),
    };
    let device = backend::device();
    let model = FlowConfig::Image(config.clone())
        .init::<Inference>(&device)
        .map_err(|e| e.to_string())?;
    println!("backend: {}", backend::NAME);
    println!(
        "input: {}x{}x{} ({} dims)",
        config.channels,
        config.height,
        config.width,
        config.dims()
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

/// Bits/dim of a batch in evaluation mode with seeded uniform dequantisation.
fn batch_bits_per_dim(model: &Flow<Inference>, batch: FlowBatch<Inference>) -> Vec<f64> {
    use burn::tensor::backend::Backend;
    Inference::seed(&backend::device(), 0);
    model
        .bits_per_dim(batch, Dequantization::Uniform)
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_default()
}
