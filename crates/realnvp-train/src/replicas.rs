//! What a worker's training step needs from the other workers of a run. One device has
//! no others ([`Solo`]: every call gives its input back); data-parallel training
//! ([`crate::parallel`]) answers the same calls with burn-collective's all-reduce. The
//! step itself (`trainer`) is written once against this trait.

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use realnvp_core::Flow;

use crate::error::TrainError;

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
    /// workers, yet all must stop at the same step.
    fn agree(&self, votes: StopVotes) -> Result<StopVotes, TrainError>;

    /// Combines this worker's step (its model after the forward pass, its gradients and
    /// the mean bits/dim of its shard) with every other worker's.
    fn reduce_step(
        &self,
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

    fn agree(&self, votes: StopVotes) -> Result<StopVotes, TrainError> {
        Ok(votes)
    }

    fn reduce_step(
        &self,
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
