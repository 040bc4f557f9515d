//! `realnvp train`: a new run, a resumed one, or fine-tuning; on one device, data-parallel
//! on several (`--devices`), or as one rank of an MPI job (`--mpi`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use realnvp_train::{train, train_parallel, RunConfig, RunDir, TrainOptions, TrainSummary};

use crate::backend::{self, Checkpointed, Training};

#[cfg(feature = "mpi")]
mod mpi;

// The flags of `realnvp train` (the subcommand's help is its doc comment in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
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

impl Args {
    /// Trains; `device` is the global `--device` flag.
    pub fn run(self, device: Option<usize>) -> anyhow::Result<()> {
        let run_dir = self.run_dir();
        let config = self.config(&run_dir)?;
        let interrupt = interrupt_on_signals()?;
        let parallel = &self.parallel;
        if !parallel.mpi {
            // An MPI rank says where it runs once it knows its rank.
            eprintln!("backend: {}", backend::NAME);
            eprintln!("run directory: {}", run_dir.display());
        }
        let options = TrainOptions {
            run_dir,
            resume: self.resume,
            interrupt,
            progress: true,
            init_from: self.init_from.clone(),
        };
        if let (Some(device), false) = (device, parallel.devices.is_empty()) {
            bail!(
                "--device {device} and --devices {:?} both given: --devices lists every device of a data-parallel run",
                parallel.devices
            );
        }
        if parallel.mpi {
            return train_on_mpi(&config, &options, device);
        }
        if let Some((variable, ranks)) = started_as_mpi_ranks() {
            bail!(
                "this process is one of {ranks} started by an MPI launcher ({variable}={ranks}) but --mpi is not given: each would train the same run alone, into the same directory. Add --mpi (with a build that has `--features mpi`)"
            );
        }
        match parallel.devices.as_slice() {
            [] | [_] => train_on_one_device(&config, &options, parallel.devices.first().copied()),
            indices => train_data_parallel(&config, &options, indices),
        }
    }

    /// `--out`, else `runs/<config name>`.
    fn run_dir(&self) -> PathBuf {
        let name = self
            .config
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "digits".into());
        self.out
            .clone()
            .unwrap_or_else(|| Path::new("runs").join(name))
    }

    /// The run configuration: `--config` (or, resuming without it, the run's own
    /// `config.toml`; else the built-in digits configuration), the `--set` overrides, then
    /// `--steps`, `--minutes` and `--seed`, validated.
    fn config(&self, run_dir: &Path) -> anyhow::Result<RunConfig> {
        let saved = RunDir::at(run_dir).config_path();
        let path = match &self.config {
            None if self.resume && saved.is_file() => Some(saved.as_path()),
            given => given.as_deref(),
        };
        let mut config = RunConfig::read(path, &self.overrides)?;
        let train = &mut config.train;
        train.max_steps = self.steps.or(train.max_steps);
        train.max_minutes = self.minutes.or(train.max_minutes);
        train.seed = self.seed.unwrap_or(train.seed);
        config.validate()?;
        Ok(config)
    }
}

/// Ctrl-C, SIGTERM and SIGHUP set the returned flag (the run stops after its step with a
/// checkpoint); a second signal exits at once.
fn interrupt_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
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
    .context("cannot install the Ctrl-C / SIGTERM handler")?;
    Ok(interrupt)
}

/// One device: `--devices I` or `--device`, on the compute threads.
fn train_on_one_device(
    config: &RunConfig,
    options: &TrainOptions,
    index: Option<usize>,
) -> anyhow::Result<()> {
    let device = match index {
        Some(index) => backend::device_at(index)?,
        None => backend::device(),
    };
    let summary = backend::on_compute_threads(|| {
        if config.train.gradient_checkpointing {
            eprintln!("gradient checkpointing: on");
            train::<Checkpointed>(config, options, &device)
        } else {
            train::<Training>(config, options, &device)
        }
    })?;
    print_summary(&summary, &options.run_dir);
    Ok(())
}

/// `realnvp train --devices 0,1,...`: one worker thread per device.
fn train_data_parallel(
    config: &RunConfig,
    options: &TrainOptions,
    indices: &[usize],
) -> anyhow::Result<()> {
    let devices = indices
        .iter()
        .map(|&i| backend::device_at(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("data-parallel: {} workers on this machine", devices.len());
    let outcome = if config.train.gradient_checkpointing {
        train_parallel::<Checkpointed>(config, options, devices)
    } else {
        train_parallel::<Training>(config, options, devices)
    }?;
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
fn train_on_mpi(
    config: &RunConfig,
    options: &TrainOptions,
    device: Option<usize>,
) -> anyhow::Result<()> {
    mpi::run(config, options, device)
}

#[cfg(not(feature = "mpi"))]
fn train_on_mpi(_: &RunConfig, _: &TrainOptions, _: Option<usize>) -> anyhow::Result<()> {
    bail!("--mpi: this realnvp was built without MPI; install OpenMPI and libclang (Debian: apt-get install libopenmpi-dev openmpi-bin clang libclang-dev pkg-config) and build with `cargo build --release -p realnvp-cli --features mpi`")
}

/// What a finished run prints: its figures and where its outputs are.
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
    let run = RunDir::at(run_dir);
    println!("samples: {}", run.samples_dir().display());
    println!("model: {}", summary.export.display());
    if let Some((bits_per_dim, step)) = summary.best {
        println!(
            "best model: {} (step {step}, {bits_per_dim:.4} bits/dim held out)",
            run.best_export_dir().display()
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
