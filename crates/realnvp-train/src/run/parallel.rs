//! Data-parallel training on one machine, on burn-collective's local all-reduce: one
//! worker thread per device, each reading its shard of every step's batch, with gradients,
//! batch-norm running averages and the step's bits/dim combined by all-reduce. Across
//! processes and machines the same [`Replicas`] calls run on MPI instead
//! (`crate::run::mpi_replicas`, the `mpi` feature).
//!
//! How a run is kept correct (on MPI too):
//! - the leader (rank 0) makes the start point (fresh weights or the newest checkpoint) and
//!   hands it to every worker, so all replicas start from the same weights, the same
//!   `ParamId`s and the same optimiser state; only the leader needs the run directory;
//! - every step carries one all-reduce of one flat vector (`step_vector`): every
//!   gradient, every batch-norm running average, and the shard's bits/dim. Averaging the
//!   gradients of equal shards gives the gradient of the whole batch's loss, so
//!   `train.batch_size` stays the global batch. Batch-norm batch statistics are taken per
//!   shard (as PyTorch's DDP does without SyncBatchNorm): each worker normalises with the
//!   mean and variance of its own `batch_size / workers` examples, which makes the loss and
//!   its gradient slightly different from one device's, more so for small shards. The
//!   running averages are averaged after every step, so every replica stays identical and
//!   evaluation is that of one model;
//! - the stop votes (wall clock, Ctrl-C) and the non-finite-step check are made on
//!   all-reduced values, so every worker stops or skips at the same step;
//! - at the end every worker's model fingerprint is compared: a replica that drifted is an
//!   error, not a silent wrong answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use realnvp_core::{AutodiffConvBackend, Flow};

use crate::config::RunConfig;
use crate::data::Splits;
use crate::error::TrainError;
use crate::run::replicas::{model_fingerprint, ReducedStep, Replicas, StopVotes};
use crate::run::step_vector;
use crate::run::trainer::{run_worker, TrainOptions, TrainSummary};

/// What a data-parallel run reports.
#[derive(Debug, Clone)]
pub struct ParallelSummary {
    /// The leader's summary.
    pub leader: Option<TrainSummary>,
    /// Workers in the run.
    pub workers: usize,
    /// The fingerprint (checksum of the serialised weights, running averages and
    /// parameter ids) each worker ended with, in rank order; the run checked that every
    /// worker's equals every other's.
    pub fingerprints: Vec<u64>,
    /// Per worker, in rank order: seconds spent combining steps (packing gradients and
    /// running averages, the all-reduce itself, unpacking).
    pub reduce_seconds: Vec<f64>,
}

/// Trains the run of `config` data-parallel on this machine: one worker thread per entry
/// of `devices` (rank = position in the list).
pub fn train_parallel<B>(
    config: &RunConfig,
    options: &TrainOptions,
    devices: Vec<B::Device>,
) -> Result<ParallelSummary, TrainError>
where
    B: AutodiffConvBackend + 'static,
{
    if devices.is_empty() {
        return Err(TrainError::collective("no devices given"));
    }
    let workers = devices.len();
    let splits = Splits::load(&config.data, config.train.seed)?;
    reset_collective::<B::InnerBackend>();
    let collective = CollectiveConfig::default().with_num_devices(workers);
    let (results, finished) = mpsc::channel();
    let mut handles = Vec::new();
    for (rank, device) in devices.into_iter().enumerate() {
        let peer = Peer::<B> {
            id: PeerId::from(rank),
            rank,
            workers,
            device: device.clone(),
            fingerprint: Mutex::new(None),
            reduce_nanos: AtomicU64::new(0),
        };
        let (config, options, splits) = (config.clone(), options.clone(), splits.clone());
        let (collective, results) = (collective.clone(), results.clone());
        let handle = std::thread::Builder::new()
            .name(format!("realnvp-worker-{rank}"))
            .spawn(move || {
                let outcome = peer.run(&config, &options, splits, &device, collective);
                let _ = results.send((rank, outcome));
            })
            .map_err(|e| TrainError::collective(format!("cannot start a worker thread: {e}")))?;
        handles.push(handle);
    }
    drop(results);
    collect_results(&finished, &handles, workers)
}

/// Waits for the workers; the first error (a worker's, or a worker that panicked) ends the
/// wait. Workers still blocked in a collective call are left behind (burn-collective cannot
/// cancel one); the process should then exit.
fn collect_results(
    finished: &mpsc::Receiver<(usize, Result<WorkerEnd, TrainError>)>,
    handles: &[std::thread::JoinHandle<()>],
    workers: usize,
) -> Result<ParallelSummary, TrainError> {
    // Per worker: its end, once reported.
    let mut ends: Vec<Option<WorkerEnd>> = (0..workers).map(|_| None).collect();
    let record = |ends: &mut [Option<WorkerEnd>],
                  (rank, result): (usize, Result<WorkerEnd, TrainError>)| {
        ends[rank] = Some(result?);
        Ok::<_, TrainError>(())
    };
    let mut reported = 0;
    while reported < workers {
        match finished.recv_timeout(Duration::from_millis(200)) {
            Ok(message) => {
                record(&mut ends, message)?;
                reported += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A thread that ended without reporting panicked. A finished thread sends
                // its result before it ends, so drain what arrived before judging.
                while let Ok(message) = finished.try_recv() {
                    record(&mut ends, message)?;
                    reported += 1;
                }
                let silent = handles
                    .iter()
                    .enumerate()
                    .find(|(rank, handle)| handle.is_finished() && ends[*rank].is_none());
                if let Some((rank, _)) = silent {
                    return Err(TrainError::collective(format!(
                        "worker {rank} stopped without a result (it panicked)"
                    )));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let ends = ends
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| TrainError::collective("a worker ended without a result"))?;
    Ok(ParallelSummary {
        workers,
        fingerprints: ends.iter().map(|end| end.fingerprint).collect(),
        reduce_seconds: ends.iter().map(|end| end.reduce_seconds).collect(),
        leader: ends.into_iter().find_map(|end| end.summary),
    })
}

/// What a worker thread hands back.
struct WorkerEnd {
    summary: Option<TrainSummary>,
    fingerprint: u64,
    reduce_seconds: f64,
}

/// One data-parallel worker: its place in the run and its device.
struct Peer<B: AutodiffBackend> {
    id: PeerId,
    rank: usize,
    workers: usize,
    device: B::Device,
    /// The replica's fingerprint, once compared with the others at the end of the run.
    fingerprint: Mutex<Option<u64>>,
    /// Nanoseconds spent in `reduce_step` so far.
    reduce_nanos: AtomicU64,
}

impl<B: AutodiffConvBackend> Peer<B> {
    /// The worker's life: join the collective, train, check the replicas agree, leave.
    fn run(
        &self,
        config: &RunConfig,
        options: &TrainOptions,
        splits: Splits,
        device: &B::Device,
        collective: CollectiveConfig,
    ) -> Result<WorkerEnd, TrainError> {
        register::<B::InnerBackend>(self.id, self.device.clone(), collective).map_err(|e| {
            TrainError::collective(format!("worker {} could not register: {e:?}", self.rank))
        })?;
        let summary = run_worker::<B, Self>(config, options, splits, device, self)?;
        let fingerprint = self
            .fingerprint
            .lock()
            .map_err(|_| TrainError::collective("a worker panicked while holding shared state"))?
            .ok_or_else(|| TrainError::collective("the replicas were not compared"))?;
        finish_collective::<B::InnerBackend>(self.id).map_err(|e| {
            TrainError::collective(format!("worker {} could not leave: {e:?}", self.rank))
        })?;
        Ok(WorkerEnd {
            summary,
            fingerprint,
            reduce_seconds: self.reduce_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        })
    }

    /// The element-wise sum of `values` over all workers (padded so that burn-collective's
    /// ring all-reduce, which needs at least one element per worker, accepts any length).
    fn sum(&self, mut values: Vec<f32>) -> Result<Vec<f32>, TrainError> {
        let len = values.len();
        values.resize(len.max(self.workers), 0.0);
        let shape = [values.len()];
        let tensor =
            Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(values, shape), &self.device);
        let mut summed = self
            .all_reduce(tensor)?
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| TrainError::collective(format!("all-reduce result: {e:?}")))?;
        summed.truncate(len);
        Ok(summed)
    }

    /// burn-collective's all-reduce (sum) of one tensor over all workers.
    fn all_reduce(
        &self,
        tensor: Tensor<B::InnerBackend, 1>,
    ) -> Result<Tensor<B::InnerBackend, 1>, TrainError> {
        let reduced = all_reduce::<B::InnerBackend>(
            self.id,
            tensor.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| {
            TrainError::collective(format!("all-reduce failed on worker {}: {e:?}", self.rank))
        })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
    }
}

impl<B: AutodiffConvBackend> Replicas<B> for Peer<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn workers(&self) -> usize {
        self.workers
    }

    fn share_from_leader(&self, bytes: Option<Vec<u8>>) -> Result<Vec<u8>, TrainError> {
        // The length, then the bytes two to an element (integers below 2^16 are exact in
        // f32, and adding the other workers' zeros keeps them exact).
        let mut header = vec![0.0f32; 3];
        if let Some(bytes) = &bytes {
            header.copy_from_slice(&u48_pieces(bytes.len() as u64));
        }
        let len = from_u48_pieces(&self.sum(header)?) as usize;
        let mut values = vec![0.0f32; len.div_ceil(2)];
        if let Some(bytes) = &bytes {
            for (value, pair) in values.iter_mut().zip(bytes.chunks(2)) {
                *value = pair[0] as f32 + 256.0 * pair.get(1).copied().unwrap_or(0) as f32;
            }
        }
        let values = self.sum(values)?;
        let mut shared: Vec<u8> = values
            .iter()
            .flat_map(|&v| {
                let v = v as u32;
                [(v & 0xff) as u8, (v >> 8) as u8]
            })
            .collect();
        shared.truncate(len);
        Ok(shared)
    }

    fn agree(&self, _step: u64, votes: StopVotes) -> Result<StopVotes, TrainError> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let all = self.sum(vec![flag(votes.out_of_time), flag(votes.interrupted)])?;
        Ok(StopVotes {
            out_of_time: all[0] > 0.0,
            interrupted: all[1] > 0.0,
        })
    }

    fn reduce_step(
        &self,
        _step: u64,
        model: Flow<B>,
        grads: GradientsParams,
        bits_per_dim: f64,
    ) -> Result<ReducedStep<B>, TrainError> {
        let started = Instant::now();
        let (mut flat, layout) = step_vector::pack(&model, &grads, bits_per_dim, &self.device);
        let padding = self.workers.saturating_sub(layout.len());
        if padding > 0 {
            flat = Tensor::cat(vec![flat, Tensor::zeros([padding], &self.device)], 0);
        }
        let summed = self.all_reduce(flat)?;
        let reduced = step_vector::unpack(model, summed, layout, self.workers);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.reduce_nanos.fetch_add(nanos, Ordering::Relaxed);
        reduced
    }

    fn check_identical(&self, model: &Flow<B>) -> Result<(), TrainError> {
        let fingerprint = model_fingerprint(model)?;
        let mut slots = vec![0.0f32; 3 * self.workers];
        slots[3 * self.rank..3 * self.rank + 3].copy_from_slice(&u48_pieces(fingerprint));
        let all = self.sum(slots)?;
        let own = from_u48_pieces(&u48_pieces(fingerprint));
        let differing: Vec<usize> = (0..self.workers)
            .filter(|&r| from_u48_pieces(&all[3 * r..3 * r + 3]) != own)
            .collect();
        if !differing.is_empty() {
            return Err(TrainError::replicas_differ(&differing, self.rank));
        }
        if let Ok(mut kept) = self.fingerprint.lock() {
            *kept = Some(fingerprint);
        }
        Ok(())
    }
}

/// The low 48 bits of `value` as three 16-bit integers, each exact in f32.
fn u48_pieces(value: u64) -> [f32; 3] {
    [0, 16, 32].map(|shift| ((value >> shift) & 0xffff) as f32)
}

fn from_u48_pieces(pieces: &[f32]) -> u64 {
    pieces
        .iter()
        .zip([0, 16, 32])
        .fold(0, |v, (&p, shift)| v | ((p as u64) << shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(fingerprint: u64) -> WorkerEnd {
        WorkerEnd {
            summary: None,
            fingerprint,
            reduce_seconds: 0.5,
        }
    }

    /// A worker that finishes long before the others (a non-leader skips the final
    /// evaluation) has reported: it is not taken for one that panicked.
    #[test]
    fn early_finishers_are_not_taken_for_panics() {
        let (results, finished) = mpsc::channel();
        let early = results.clone();
        let handles = vec![
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1200));
                let _ = results.send((0, Ok(end(7))));
            }),
            std::thread::spawn(move || {
                let _ = early.send((1, Ok(end(7))));
            }),
        ];
        let summary = collect_results(&finished, &handles, 2).expect("both workers reported");
        assert_eq!(summary.fingerprints, vec![7, 7]);
        assert_eq!(summary.reduce_seconds, vec![0.5, 0.5]);
    }

    /// A worker thread that ends without a result is named.
    #[test]
    fn a_silent_worker_is_named() {
        let (results, finished) = mpsc::channel::<(usize, Result<WorkerEnd, TrainError>)>();
        let keep = results.clone();
        let handles = vec![
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1500));
                let _ = keep.send((0, Ok(end(1))));
            }),
            std::thread::spawn(move || drop(results)),
        ];
        let error = collect_results(&finished, &handles, 2).expect_err("worker 1 sent nothing");
        assert!(error.to_string().contains("worker 1"), "{error}");
    }
}
