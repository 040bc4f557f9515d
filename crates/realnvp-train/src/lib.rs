//! # realnvp-train
//!
//! Maximum-likelihood training of Real NVP models (`realnvp-core`) on the data sets of
//! `realnvp-data`: Adam with the paper's scale penalty, learning-rate schedules (warmup,
//! then constant, cosine, exponential or step decay), gradient clipping and an
//! optional weight average; bits/dim on the training stream and held-out split;
//! stopping by steps, epochs or wall-clock minutes; a guard against non-finite steps; and
//! run directories with crash-safe, resumable checkpoints, `metrics.jsonl`, sample grids
//! and an inference export loadable by `realnvp-core` alone. [`train_parallel`] trains the
//! same run data-parallel on several devices of one machine over burn-collective's local
//! all-reduce; with the `mpi` feature, `run::mpi_replicas::train_mpi` trains it across
//! processes and machines on MPI (`mpirun`, Slurm's `srun`).
//!
//! A run directory ([`RunDir`], which owns its layout) holds `config.toml` (the resolved
//! configuration), `model.toml`, `metrics.jsonl`, `learning-curves.png`,
//! `samples/step-<N>.png`, `checkpoints/step-<N>/`, `tensorboard/` and `export/` (with
//! `export/best/`).
//!
//! The two kinds of flow, image and vector, are one trait, [`FlowKind`]: the run loop,
//! evaluation, samples and checkpoints are written once, generic over the kind, and
//! [`with_kind`] is the one place that decides which kind a model is.
//!
//! The modules, in three groups besides the kinds ([`kind`]) and the run's inputs
//! ([`config`], [`data`], [`evaluate`], [`error`]):
//! - [`run`]: the training loop and what one step shares between workers (one device,
//!   threads over burn-collective, MPI ranks), and fine-tuning's start point;
//! - [`state`]: what persists: the run directory, checkpoints, the learning-rate schedule;
//! - [`output`]: what a person reads: metrics and progress, learning curves, TensorBoard
//!   events, sample grids.

pub mod config;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod kind;
pub mod output;
pub mod run;
pub mod state;

pub use config::RunConfig;
pub use error::TrainError;
pub use evaluate::{classify, evaluate, write_samples, Classification, Evaluation, Split};
pub use kind::{with_kind, Data, FlowKind, Images, KindVisitor, Vectors};
pub use run::parallel::{train_parallel, ParallelSummary};
pub use run::trainer::{train, TrainOptions, TrainSummary};
pub use state::run_dir::{RunDir, BEST_EXPORT};
