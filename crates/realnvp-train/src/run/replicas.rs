//! What a worker's training step needs from the other workers of a run. One device has
//! no others ([`Solo`]: every call gives its input back); data-parallel training answers
//! the same calls with an all-reduce: burn-collective's between the threads of one process
//! ([`crate::run::parallel`]), MPI's between processes and machines (`crate::run::mpi_replicas`,
//! the `mpi` feature). The step itself (`trainer`) is written once against this trait.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use realnvp_core::Flow;

use crate::error::TrainError;
use crate::state::checkpoint::checksum;

/// Why a run stops early, as voted by each worker before a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopVotes {
    /// The wall-clock limit (`train.max_minutes`) is reached.
    pub out_of_time: bool,
    /// The user interrupted (Ctrl-C).
    pub interrupted: bool,
}

/// One step's results once every worker's share is in.
pub struct ReducedStep<B: AutodiffBackend> {
    /// The model, its batch-norm running averages now the mean over the workers.
    pub model: Flow<B>,
    /// Gradients averaged over the workers: the gradient of the whole batch's loss.
    pub grads: GradientsParams,
    /// Training bits/dim, mean over the whole batch.
    pub bits_per_dim: f64,
}

/// The other workers of a run, as one worker's step sees them.
pub trait Replicas<B: AutodiffBackend> {
    /// This worker's rank: 0 leads (evaluates, writes metrics, samples, checkpoints).
    fn rank(&self) -> usize;

    /// Number of workers.
    fn workers(&self) -> usize;

    /// Whether this worker is the leader (rank 0).
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// The leader's `bytes` on every worker (the leader passes `Some`, the others `None`).
    fn share_from_leader(&self, bytes: Option<Vec<u8>>) -> Result<Vec<u8>, TrainError>;

    /// Each vote is true when any worker cast it: wall clocks and Ctrl-C differ between
    /// workers, yet all must stop at the same step. `step` is the step about to be taken
    /// (from 1), for error messages.
    fn agree(&self, step: u64, votes: StopVotes) -> Result<StopVotes, TrainError>;

    /// Combines this worker's step `step` (its model after the forward pass, its gradients
    /// and the mean bits/dim of its shard) with every other worker's.
    fn reduce_step(
        &self,
        step: u64,
        model: Flow<B>,
        grads: GradientsParams,
        bits_per_dim: f64,
    ) -> Result<ReducedStep<B>, TrainError>;

    /// At the end of the run: checks that every worker holds the same model (weights and
    /// running averages, bit for bit).
    fn check_identical(&self, model: &Flow<B>) -> Result<(), TrainError>;
}

/// Training on one device: there is nobody to combine with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl<B: AutodiffBackend> Replicas<B> for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn workers(&self) -> usize {
        1
    }

    fn share_from_leader(&self, bytes: Option<Vec<u8>>) -> Result<Vec<u8>, TrainError> {
        bytes.ok_or_else(|| TrainError::collective("a single worker must lead"))
    }

    fn agree(&self, _step: u64, votes: StopVotes) -> Result<StopVotes, TrainError> {
        Ok(votes)
    }

    fn reduce_step(
        &self,
        _step: u64,
        model: Flow<B>,
        grads: GradientsParams,
        bits_per_dim: f64,
    ) -> Result<ReducedStep<B>, TrainError> {
        Ok(ReducedStep {
            model,
            grads,
            bits_per_dim,
        })
    }

    fn check_identical(&self, _model: &Flow<B>) -> Result<(), TrainError> {
        Ok(())
    }
}

/// FNV-1a of the model's serialised record (weights, running averages, parameter ids):
/// equal on two workers exactly when their replicas are bit-identical.
pub(crate) fn model_fingerprint<B: AutodiffBackend>(model: &Flow<B>) -> Result<u64, TrainError> {
    let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
        .record(model.clone().into_record(), ())
        .map_err(|e| TrainError::collective(format!("cannot serialise the model: {e}")))?;
    Ok(checksum(&bytes))
}
