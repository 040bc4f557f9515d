//! `realnvp train --mpi`: this process is one rank of an MPI job (`mpirun`, `srun`).
//!
//! Each rank picks its device and its share of the node's cores, trains, and on any error
//! or panic ends the whole job with `MPI_Abort`: a rank that stopped alone would leave the
//! others waiting in their next collective call.

use realnvp_train::run::mpi_replicas::{
    abort_job, print_rank_line, train_mpi, MpiJob, MpiSummary, RankPlace,
};
use realnvp_train::{RunConfig, TrainOptions};

use anyhow::Context;

use super::print_summary;
use crate::backend::{self, Checkpointed, Training};

/// Exit code of a rank that panicked (the job is aborted with it).
const PANIC_EXIT: i32 = 101;

/// Trains as one rank of the MPI job this process was started in; `device` is the
/// `--device` flag.
pub fn run(
    config: &RunConfig,
    options: &TrainOptions,
    device: Option<usize>,
) -> anyhow::Result<()> {
    let job = MpiJob::init().context("--mpi")?;
    let place = job.place().clone();
    abort_on_panic(place.rank);
    let threads = compute_threads(&place);
    let index = device.unwrap_or(if cfg!(any(feature = "cuda", feature = "wgpu")) {
        place.local_rank
    } else {
        0
    });
    // `main` has checked an explicit `--device` against the backend.
    let chosen = match backend::device_at(index) {
        Ok(device) => device,
        Err(error) => fail(place.rank, &format!("{error:#}")),
    };
    if place.rank == 0 {
        eprintln!("run directory: {}", options.run_dir.display());
    }
    eprintln!(
        "rank {} of {} on {} (local rank {} of {}, {} node(s)): {} device {index}, {}",
        place.rank,
        place.ranks,
        place.host,
        place.local_rank,
        place.local_ranks,
        place.nodes,
        backend::NAME,
        threads.describe()
    );
    let options = TrainOptions {
        progress: options.progress && place.rank == 0,
        ..options.clone()
    };
    let outcome = backend::on_compute_threads(|| {
        if config.train.gradient_checkpointing {
            train_mpi::<Checkpointed>(&job, config, &options, &chosen)
        } else {
            train_mpi::<Training>(&job, config, &options, &chosen)
        }
    });
    match outcome {
        Ok(summary) => {
            report(&place, &summary, &options);
            // No MPI_Abort once MPI is finalised: the default panic hook again.
            drop(std::panic::take_hook());
            drop(job);
            Ok(())
        }
        Err(error) => fail(place.rank, &format!("{:#}", anyhow::Error::new(error))),
    }
}

/// Prints `message` as this rank's error and ends every process of the job.
fn fail(rank: usize, message: &str) -> ! {
    print_rank_line(rank, &format!("error: {message}"));
    abort_job(1)
}

/// A panic (a bug, or a failed assertion deep in a backend) would otherwise unwind into
/// `MPI_Finalize` and leave the other ranks waiting for ever: print it, then abort.
fn abort_on_panic(rank: usize) {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        print_rank_line(rank, "panicked; aborting the MPI job");
        abort_job(PANIC_EXIT);
    }));
}

/// The compute threads of one rank and why.
struct Threads {
    count: usize,
    why: String,
}

impl Threads {
    fn describe(&self) -> String {
        format!("{} compute thread(s) ({})", self.count, self.why)
    }
}

/// Sizes rayon's pool (the CPU kernels' threads) to this rank's share of the node.
///
/// `RAYON_NUM_THREADS` wins when set. Otherwise each rank takes the cores it may run on
/// (its CPU affinity: mpirun binds each rank to a core by default for two ranks or
/// fewer, to a socket above that) divided fairly among the ranks on the node, at least
/// one: `min(allowed, node cores / ranks on the node)`. Oversubscribing (ranks times
/// threads above the cores) makes the threads of different ranks preempt each other
/// inside every convolution; one thread per core keeps each rank's kernels whole.
fn compute_threads(place: &RankPlace) -> Threads {
    if let Ok(value) = std::env::var("RAYON_NUM_THREADS") {
        return Threads {
            count: rayon::current_num_threads(),
            why: format!("RAYON_NUM_THREADS={value}"),
        };
    }
    let allowed = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let node = online_cores().unwrap_or(allowed);
    let share = node / place.local_ranks.max(1);
    let count = allowed.min(share).max(1);
    let mut why = format!(
        "{node} cores on the node, {} rank(s) there, {allowed} allowed to this rank",
        place.local_ranks
    );
    if allowed < share {
        why.push_str(&format!(
            "; mpirun bound this rank to {allowed} core(s): give it its {share} with `mpirun --bind-to none` or `--map-by slot:PE={share}`"
        ));
    }
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(count)
        .build_global()
    {
        return Threads {
            count: rayon::current_num_threads(),
            why: format!("rayon's pool was already built: {e}"),
        };
    }
    Threads { count, why }
}

/// The node's online cores (Linux: `/sys/devices/system/cpu/online`, e.g. `0-15,32-47`).
fn online_cores() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => Some(b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1),
            None => range.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}

/// What a rank prints at the end: rank 0 the run's summary and the all-reduce's share of
/// it; every rank its model's fingerprint (the run checked they are all equal).
fn report(place: &RankPlace, summary: &MpiSummary, options: &TrainOptions) {
    if let Some(leader) = &summary.leader {
        print_summary(leader, &options.run_dir);
        let steps = summary.steps.max(1) as f64;
        println!(
            "MPI: {} ranks on {} node(s); per step: all-reduce of {} floats ({:.1} MB) {:.1} ms, host staging {:.1} ms ({:.1}% of this invocation's {:.1} s), waiting for the slowest rank {:.1} ms",
            place.ranks,
            place.nodes,
            summary.step_floats,
            summary.step_floats as f64 * 4e-6,
            1e3 * summary.all_reduce_seconds / steps,
            1e3 * summary.staging_seconds / steps,
            100.0 * (summary.all_reduce_seconds + summary.staging_seconds)
                / leader.session_seconds.max(1e-9),
            leader.session_seconds,
            1e3 * summary.waiting_seconds / steps,
        );
    }
    println!(
        "rank {}: replicas identical on all {} ranks, model fingerprint {:016x}",
        place.rank, place.ranks, summary.fingerprint
    );
}
