//! Data-parallel training across processes and machines on MPI (the `mpi` feature): one
//! process per device, launched by `mpirun` or Slurm's `srun`, each answering the
//! [`Replicas`] calls of its training step with MPI collectives. Every rule of the
//! in-process path ([`crate::run::parallel`]) holds: the global batch, the per-rank shards and
//! noise, the averaged running averages, the non-finite check after the reduce, and only
//! rank 0 writing.
//!
//! The calls, staged through host memory so that any backend takes part:
//! - `share_from_leader`: a broadcast of the length, then of the bytes;
//! - `agree`: an all-reduce (maximum) of the votes;
//! - `reduce_step`: one all-reduce (sum) of the step's flat vector
//!   (`step_vector`), copied from the device and back;
//! - `check_identical`: an all-gather of every rank's model fingerprint.
//!
//! Failure never hangs. MPI itself ends the job when a process dies (mpirun notices a
//! killed rank at once). What it does not notice is a rank that stops answering, so every
//! call here is watched: before it, each rank tells every other one that it arrived
//! (`notices`: 24 bytes per pair of ranks, which also checks that all make the same call);
//! the call is then polled, and after a second of waiting each rank sends a heartbeat
//! once a second. A rank that has waited longer than `train.collective_timeout_seconds`
//! names the step, the ranks that never arrived and those that arrived but fell silent,
//! and aborts the job. MPI cannot cancel a collective call, so `MPI_Abort` is the only way
//! out; checkpoints are written atomically, so the newest one stays intact. The last call
//! waits for rank 0's final evaluation and export, so that no rank waits unwatched in
//! `MPI_Finalize`; only the calls of `MPI_Init` and the communicator set-up at the start
//! are not watched.

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;
use realnvp_core::{AutodiffConvBackend, Flow};

use crate::config::RunConfig;
use crate::data::Splits;
use crate::error::{error_chain, TrainError};
use crate::run::replicas::{model_fingerprint, ReducedStep, Replicas, StopVotes};
use crate::run::step_vector;
use crate::run::trainer::{run_worker, TrainOptions, TrainSummary};
use crate::state::checkpoint::checksum;

/// This process's place in an MPI job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankPlace {
    /// Rank in the job, `0..ranks`; rank 0 leads (writes the run directory).
    pub rank: usize,
    /// Processes in the job.
    pub ranks: usize,
    /// Rank among the processes on this node (from an MPI shared-memory split).
    pub local_rank: usize,
    /// Processes on this node.
    pub local_ranks: usize,
    /// Nodes (machines) in the job.
    pub nodes: usize,
    /// This node's name, as MPI reports it.
    pub host: String,
}

/// MPI, initialised for the life of this value: `MPI_Finalize` runs when it is dropped.
///
/// The communicators a run uses are made on the thread that trains (they cannot cross
/// threads), so that this value can be shared with the compute threads.
pub struct MpiJob {
    place: RankPlace,
    _universe: Universe,
}

impl MpiJob {
    /// Initialises MPI (thread support `MPI_THREAD_MULTIPLE`: the training runs on a
    /// compute thread, and a panic hook may abort from any thread) and finds this
    /// process's place: rank, size, node-local rank and the number of nodes.
    pub fn init() -> Result<Self, TrainError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or_else(|| TrainError::collective("MPI was already initialised in this process"))?;
        if threading < Threading::Multiple {
            return Err(TrainError::collective(format!(
                "this MPI library offers thread support {threading:?}; realnvp needs MPI_THREAD_MULTIPLE (it trains on a compute thread and aborts from any thread), which OpenMPI 4 and MPICH offer"
            )));
        }
        let world = universe.world();
        let rank = world.rank() as usize;
        let ranks = world.size() as usize;
        let local = world.split_shared(world.rank());
        let local_rank = local.rank() as usize;
        let local_ranks = local.size() as usize;
        let first_on_node = u32::from(local_rank == 0);
        let mut nodes = 0u32;
        world.all_reduce_into(&first_on_node, &mut nodes, SystemOperation::sum());
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
        drop(local);
        Ok(Self {
            place: RankPlace {
                rank,
                ranks,
                local_rank,
                local_ranks,
                nodes: nodes as usize,
                host,
            },
            _universe: universe,
        })
    }

    /// This process's place in the job.
    pub fn place(&self) -> &RankPlace {
        &self.place
    }
}

/// Prints `message` on stderr as one line of rank `rank`, `rank R: message`, in a single
/// write. Stderr is unbuffered and `eprintln!` writes each piece of its format on its own;
/// mpirun forwards every write as it comes, so a line written in pieces can be split by
/// mpirun's own messages (seen in CI: "rank " and "0: error: ..." around an abort banner).
pub fn print_rank_line(rank: usize, message: &str) {
    use std::io::Write;
    let line = format!("rank {rank}: {message}\n");
    // Nothing better can be done when stderr itself fails.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Ends every process of the job with exit code `code` (`MPI_Abort`). Callable from any
/// thread once MPI is initialised, in a panic hook too.
pub fn abort_job(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

/// What one rank reports at the end of an MPI run.
#[derive(Debug, Clone)]
pub struct MpiSummary {
    /// The run's summary, on rank 0 only.
    pub leader: Option<TrainSummary>,
    /// The fingerprint of this rank's final model (weights, running averages, parameter
    /// ids); the run checked that every rank holds the same.
    pub fingerprint: u64,
    /// Steps combined by this rank in this invocation.
    pub steps: u64,
    /// Seconds waiting at the step's all-reduce for the slowest rank to arrive (the
    /// spread of the ranks' step times).
    pub waiting_seconds: f64,
    /// Seconds in the step's all-reduce itself, once every rank had arrived.
    pub all_reduce_seconds: f64,
    /// Seconds staging the step vector: packing on the device, copying to host memory
    /// and back, unpacking.
    pub staging_seconds: f64,
    /// Floats in one step's all-reduce: every gradient and running average, a presence
    /// flag per parameter, and the bits/dim.
    pub step_floats: usize,
}

/// Trains the run of `config` as rank `job.place().rank` of an MPI job, on `device`.
/// Call it on the thread that computes (it makes the communicators there).
pub fn train_mpi<B: AutodiffConvBackend>(
    job: &MpiJob,
    config: &RunConfig,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<MpiSummary, TrainError> {
    let replicas = MpiReplicas::<B>::new(job, device, config);
    let splits = Splits::load(&config.data, config.train.seed)?;
    let leader = run_worker::<B, _>(config, options, splits, device, &replicas)?;
    // The others wait (watched) while rank 0 evaluates and exports, rather than in
    // `MPI_Finalize`, which no timeout covers.
    replicas.finish()?;
    Ok(MpiSummary {
        leader,
        fingerprint: replicas
            .fingerprint
            .get()
            .ok_or_else(|| TrainError::collective("the replicas were not compared"))?,
        steps: replicas.steps.get(),
        waiting_seconds: replicas.waiting.get().as_secs_f64(),
        all_reduce_seconds: replicas.all_reduce.get().as_secs_f64(),
        staging_seconds: replicas.staging.get().as_secs_f64(),
        step_floats: replicas.step_floats.get(),
    })
}

/// A rank that has waited this long for the others to arrive stops spinning and polls
/// once every [`POLL_EVERY`]: a long wait is another rank's evaluation or checkpoint, and
/// spinning through it would take a core from that rank on a shared node. Once all have
/// arrived, the call itself is polled without pause: MPI's non-blocking collectives move
/// their data only inside these polls.
const SPIN_FOR: Duration = Duration::from_millis(200);
/// The polling period of a long wait.
const POLL_EVERY: Duration = Duration::from_millis(1);

/// How to wait between two polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poll {
    /// Waiting for the others to arrive: spin, then sleep.
    BackOff,
    /// Inside the call: spin.
    Spin,
}

/// After waiting this long in one call, a rank tells the ranks waiting in the same call,
/// once every this long, that it is still there.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A rank that arrived but has not been heard from for this long stopped answering; it is
/// sent no more heartbeats (a stopped process reads none, and unread messages would
/// fill MPI's buffers).
const QUIET_AFTER: Duration = Duration::from_secs(3);
/// A gap this long between two polls means this process itself did not run (stopped,
/// or starved): the time is not counted against the others.
const PAUSED_GAP: Duration = Duration::from_secs(2);
/// Message tag of the arrival notices.
const ARRIVAL: i32 = 0;
/// Message tag of the heartbeats.
const HEARTBEAT: i32 = 1;
/// The largest piece of the start state broadcast at once (MPI counts are `i32`).
const BROADCAST_PIECE: usize = 1 << 30;

/// The collective calls of a run, for arrival notices and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// The start-point broadcast, with a fingerprint of the rank's run configuration.
    Start(u64),
    Vote(u64),
    Step(u64),
    End,
    /// Rank 0's final evaluation and export are done.
    Done,
}

impl Call {
    /// The call as two numbers (kind, step or settings), compared between ranks: every
    /// rank must make the same calls in the same order, with the same settings.
    fn code(self) -> [u64; 2] {
        match self {
            Call::Start(settings) => [0, settings],
            Call::Vote(step) => [1, step],
            Call::Step(step) => [2, step],
            Call::End => [3, 0],
            Call::Done => [4, 0],
        }
    }

    /// The call of `code` (what another rank sent).
    fn from_code([kind, value]: [u64; 2]) -> Option<Self> {
        Some(match kind {
            0 => Call::Start(value),
            1 => Call::Vote(value),
            2 => Call::Step(value),
            3 => Call::End,
            4 => Call::Done,
            _ => return None,
        })
    }

    fn words(self) -> &'static str {
        match self {
            Call::Start(_) => "the start-point broadcast",
            Call::Vote(_) => "the stop vote",
            Call::Step(_) => "the all-reduce",
            Call::End => "the final comparison of the replicas",
            Call::Done => "the end of the run (rank 0's final evaluation and export)",
        }
    }

    fn step(self) -> Option<u64> {
        match self {
            Call::Vote(step) | Call::Step(step) => Some(step),
            Call::Start(_) | Call::End | Call::Done => None,
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.words())?;
        if let Some(step) = self.step() {
            write!(f, " of step {step}")?;
        }
        Ok(())
    }
}

/// One rank's view of the others, on MPI.
struct MpiReplicas<B: AutodiffBackend> {
    /// The job's processes, for the collective calls (a duplicate of the world).
    world: SimpleCommunicator,
    /// The same processes, for arrival notices only.
    notices: SimpleCommunicator,
    rank: usize,
    ranks: usize,
    device: B::Device,
    timeout: Duration,
    /// Fingerprint of this rank's model and training settings (every rank's must match).
    settings: u64,
    /// Collective calls so far, numbered in every arrival notice.
    calls: Cell<u64>,
    /// The step vector of the last all-reduce, the next one's receive buffer.
    spare: Cell<Vec<f32>>,
    fingerprint: Cell<Option<u64>>,
    steps: Cell<u64>,
    step_floats: Cell<usize>,
    staging: Cell<Duration>,
    waiting: Cell<Duration>,
    all_reduce: Cell<Duration>,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> MpiReplicas<B> {
    fn new(job: &MpiJob, device: &B::Device, config: &RunConfig) -> Self {
        let world = SimpleCommunicator::world();
        Self {
            notices: world.duplicate(),
            world: world.duplicate(),
            rank: job.place.rank,
            ranks: job.place.ranks,
            device: device.clone(),
            timeout: Duration::from_secs_f64(config.train.collective_timeout_seconds),
            settings: settings_fingerprint(config),
            calls: Cell::new(0),
            spare: Cell::new(Vec::new()),
            fingerprint: Cell::new(None),
            steps: Cell::new(0),
            step_floats: Cell::new(0),
            staging: Cell::new(Duration::ZERO),
            waiting: Cell::new(Duration::ZERO),
            all_reduce: Cell::new(Duration::ZERO),
            _backend: PhantomData,
        }
    }

    /// Tells every other rank that this one reached `call`, and waits (bounded) until
    /// every other rank has said the same. Returns the wait's state: the call's deadline
    /// runs from here.
    fn arrive(&self, call: Call) -> Result<Waiting, TrainError> {
        self.drain_heartbeats(None);
        let number = self.calls.get() + 1;
        self.calls.set(number);
        let mut waiting = Waiting::new(call, number, self.ranks);
        let [kind, step] = call.code();
        let notice = [number, kind, step];
        let peers: Vec<usize> = (0..self.ranks).filter(|&r| r != self.rank).collect();
        let mut inbox = vec![[0u64; 3]; peers.len()];
        mpi::request::scope(|scope| {
            let sends: Vec<_> = peers
                .iter()
                .map(|&peer| {
                    self.notices
                        .process_at_rank(peer as i32)
                        .immediate_send_with_tag(scope, &notice[..], ARRIVAL)
                })
                .collect();
            let mut receives: Vec<Option<_>> = peers
                .iter()
                .zip(inbox.iter_mut())
                .map(|(&peer, slot)| {
                    Some(
                        self.notices
                            .process_at_rank(peer as i32)
                            .immediate_receive_into_with_tag(scope, &mut slot[..], ARRIVAL),
                    )
                })
                .collect();
            while receives.iter().any(Option::is_some) {
                for (slot, &peer) in receives.iter_mut().zip(&peers) {
                    if let Some(request) = slot.take() {
                        match request.test() {
                            Ok(_) => waiting.arrived[peer] = Some(Instant::now()),
                            Err(pending) => *slot = Some(pending),
                        }
                    }
                }
                self.tick(&mut waiting, Poll::BackOff);
            }
            for request in sends {
                self.wait(request, &mut waiting);
            }
        });
        for (&peer, got) in peers.iter().zip(&inbox) {
            if *got == notice {
                continue;
            }
            let theirs = Call::from_code([got[1], got[2]]);
            return Err(TrainError::collective(match (theirs, call) {
                (Some(Call::Start(_)), Call::Start(_)) => format!(
                    "rank {peer}'s run configuration (model and training settings) differs from rank {}'s: give every rank the same --config and --set (a rank without the run directory cannot read its config.toml: pass --config)",
                    self.rank
                ),
                (Some(theirs), _) => format!(
                    "rank {peer} is at collective call {} ({theirs}) while rank {} is at call {number} ({call}): the ranks run different versions or settings",
                    got[0], self.rank
                ),
                (None, _) => format!(
                    "rank {peer} sent an unknown collective call {got:?}: the ranks run different versions of realnvp"
                ),
            }));
        }
        Ok(waiting)
    }

    /// Polls `request` until it completes; past the deadline, aborts the job.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        mut request: Request<'a, D, S>,
        waiting: &mut Waiting,
    ) {
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            self.tick(waiting, Poll::Spin);
        }
    }

    /// Between two polls: heartbeats once the wait is long, the deadline, then a yield
    /// (or, backing off after a long wait, a short sleep).
    fn tick(&self, waiting: &mut Waiting, poll: Poll) {
        let now = Instant::now();
        let gap = now - waiting.last_tick;
        waiting.last_tick = now;
        if gap > PAUSED_GAP {
            waiting.paused += gap;
        }
        let waited = (now - waiting.started).saturating_sub(waiting.paused);
        if waited > HEARTBEAT_EVERY {
            self.exchange_heartbeats(waiting, now);
        }
        if waited > self.timeout {
            self.abort_for(waiting, waited);
        }
        if poll == Poll::BackOff && waited > SPIN_FOR {
            std::thread::sleep(POLL_EVERY);
        } else {
            std::thread::yield_now();
        }
    }

    /// Sends this rank's heartbeat when due, to the ranks waiting in the same call that
    /// still answer, and notes the heartbeats that came in.
    fn exchange_heartbeats(&self, waiting: &mut Waiting, now: Instant) {
        if waiting.next_heartbeat.is_none_or(|due| now >= due) {
            let beat = [waiting.number];
            for peer in (0..self.ranks).filter(|&r| r != self.rank) {
                let answering = [waiting.arrived[peer], waiting.heard[peer]]
                    .into_iter()
                    .flatten()
                    .any(|t| now - t < QUIET_AFTER);
                if answering {
                    // 8 bytes, a few per peer at most: sent eagerly, whether or not the
                    // peer is listening.
                    self.notices
                        .process_at_rank(peer as i32)
                        .send_with_tag(&beat[..], HEARTBEAT);
                }
            }
            waiting.next_heartbeat = Some(now + HEARTBEAT_EVERY);
        }
        self.drain_heartbeats(Some((waiting, now)));
    }

    /// Receives every heartbeat that has come in. With `waiting`, a heartbeat from this
    /// call or a later one (a rank that already left it) is a sign of life; earlier ones
    /// are stale and dropped.
    fn drain_heartbeats(&self, mut waiting: Option<(&mut Waiting, Instant)>) {
        while let Some(status) = self
            .notices
            .any_process()
            .immediate_probe_with_tag(HEARTBEAT)
        {
            let mut beat = [0u64];
            let peer = status.source_rank();
            self.notices
                .process_at_rank(peer)
                .receive_into_with_tag(&mut beat[..], HEARTBEAT);
            if let Some((waiting, now)) = waiting.as_mut() {
                if beat[0] >= waiting.number {
                    waiting.heard[peer as usize] = Some(*now);
                }
            }
        }
    }

    /// Ends the job after `waited` in `waiting.call`, naming the ranks that never reached
    /// it and those that reached it but fell silent.
    fn abort_for(&self, waiting: &Waiting, waited: Duration) -> ! {
        let now = Instant::now();
        let others = (0..self.ranks).filter(|&r| r != self.rank);
        let absent = others.clone().filter(|&r| waiting.arrived[r].is_none());
        let quiet = others.filter(|&r| {
            let arrived_long_ago = waiting.arrived[r].is_some_and(|t| now - t > QUIET_AFTER);
            let heard_lately = waiting.heard[r].is_some_and(|t| now - t < QUIET_AFTER);
            arrived_long_ago && !heard_lately
        });
        let error = TrainError::CollectiveTimeout {
            rank: self.rank,
            call: waiting.call.words().into(),
            step: waiting.call.step(),
            waited: waited.as_secs_f64(),
            limit: self.timeout.as_secs_f64(),
            absent: absent.collect(),
            quiet: quiet.collect(),
        };
        // MPI cannot cancel a pending collective call, so no error can be returned
        // through it: say why, then end every process of the job.
        print_rank_line(self.rank, &format!("error: {}", error_chain(&error)));
        abort_job(3)
    }

    /// `values` summed element-wise over every rank, under `waiting`'s deadline. The sum
    /// lands in the buffer that held the previous call's values (already in memory:
    /// fresh pages would be faulted in during the transfer, which made a CIFAR-10 step's
    /// all-reduce take 80 to 700 ms instead of 45 through shared memory), and `values` becomes the next
    /// call's.
    fn sum_floats(&self, values: Vec<f32>, waiting: &mut Waiting) -> Vec<f32> {
        let mut summed = self.spare.take();
        summed.resize(values.len(), 0.0);
        mpi::request::scope(|scope| {
            let request = self.world.immediate_all_reduce_into(
                scope,
                &values[..],
                &mut summed[..],
                SystemOperation::sum(),
            );
            self.wait(request, waiting);
        });
        self.spare.replace(values);
        summed
    }
}

/// One rank's wait in one collective call.
struct Waiting {
    call: Call,
    /// The call's number in the run (every rank's must match).
    number: u64,
    started: Instant,
    last_tick: Instant,
    /// Time this process itself did not run while waiting.
    paused: Duration,
    /// Per rank: when its arrival notice came.
    arrived: Vec<Option<Instant>>,
    /// Per rank: when its last heartbeat for this call came.
    heard: Vec<Option<Instant>>,
    next_heartbeat: Option<Instant>,
}

impl Waiting {
    fn new(call: Call, number: u64, ranks: usize) -> Self {
        let now = Instant::now();
        Self {
            call,
            number,
            started: now,
            last_tick: now,
            paused: Duration::ZERO,
            arrived: vec![None; ranks],
            heard: vec![None; ranks],
            next_heartbeat: None,
        }
    }
}

impl<B: AutodiffBackend> MpiReplicas<B> {
    /// The last call of a run: every rank waits for rank 0's final evaluation and export.
    fn finish(&self) -> Result<(), TrainError> {
        let mut waiting = self.arrive(Call::Done)?;
        let request = self.world.immediate_barrier();
        self.wait(request, &mut waiting);
        Ok(())
    }
}

/// A fingerprint of what every rank must share: the model and training settings of the
/// configuration (data paths may differ between machines).
fn settings_fingerprint(config: &RunConfig) -> u64 {
    let text = [
        toml::to_string(&config.model),
        toml::to_string(&config.vector_model),
        toml::to_string(&config.train),
    ]
    .map(Result::unwrap_or_default)
    .concat();
    checksum(text.as_bytes())
}

impl<B: AutodiffConvBackend> Replicas<B> for MpiReplicas<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn workers(&self) -> usize {
        self.ranks
    }

    fn share_from_leader(&self, bytes: Option<Vec<u8>>) -> Result<Vec<u8>, TrainError> {
        let mut waiting = self.arrive(Call::Start(self.settings))?;
        let leader = self.world.process_at_rank(0);
        let mut len = bytes.as_ref().map_or(0, |b| b.len() as u64);
        mpi::request::scope(|scope| {
            let request = leader.immediate_broadcast_into(scope, &mut len);
            self.wait(request, &mut waiting);
        });
        let mut shared = bytes.unwrap_or_else(|| vec![0u8; len as usize]);
        for piece in shared.chunks_mut(BROADCAST_PIECE) {
            mpi::request::scope(|scope| {
                let request = leader.immediate_broadcast_into(scope, piece);
                self.wait(request, &mut waiting);
            });
        }
        Ok(shared)
    }

    fn agree(&self, step: u64, votes: StopVotes) -> Result<StopVotes, TrainError> {
        let mut waiting = self.arrive(Call::Vote(step))?;
        let mine = [u8::from(votes.out_of_time), u8::from(votes.interrupted)];
        let mut any = [0u8; 2];
        mpi::request::scope(|scope| {
            let request = self.world.immediate_all_reduce_into(
                scope,
                &mine[..],
                &mut any[..],
                SystemOperation::max(),
            );
            self.wait(request, &mut waiting);
        });
        Ok(StopVotes {
            out_of_time: any[0] > 0,
            interrupted: any[1] > 0,
        })
    }

    fn reduce_step(
        &self,
        step: u64,
        model: Flow<B>,
        grads: GradientsParams,
        bits_per_dim: f64,
    ) -> Result<ReducedStep<B>, TrainError> {
        let staging = Instant::now();
        let (flat, layout) = step_vector::pack(&model, &grads, bits_per_dim, &self.device);
        let values: Vec<f32> = flat
            .into_data()
            .into_vec()
            .map_err(|e| TrainError::collective(format!("step vector: {e:?}")))?;
        let mut staged = staging.elapsed();
        let mut waiting = self.arrive(Call::Step(step))?;
        self.waiting
            .set(self.waiting.get() + waiting.started.elapsed());
        let reducing = Instant::now();
        let summed = self.sum_floats(values, &mut waiting);
        self.all_reduce
            .set(self.all_reduce.get() + reducing.elapsed());
        let unstaging = Instant::now();
        let summed = Tensor::from_data(TensorData::new(summed, [layout.len()]), &self.device);
        let reduced = step_vector::unpack(model, summed, layout, self.ranks);
        staged += unstaging.elapsed();
        self.staging.set(self.staging.get() + staged);
        self.steps.set(self.steps.get() + 1);
        self.step_floats.set(layout.len());
        reduced
    }

    fn check_identical(&self, model: &Flow<B>) -> Result<(), TrainError> {
        let fingerprint = model_fingerprint(model)?;
        let mut waiting = self.arrive(Call::End)?;
        let mut all = vec![0u64; self.ranks];
        mpi::request::scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_into(scope, &fingerprint, &mut all[..]);
            self.wait(request, &mut waiting);
        });
        let differing: Vec<usize> = (0..self.ranks).filter(|&r| all[r] != fingerprint).collect();
        if !differing.is_empty() {
            return Err(TrainError::replicas_differ(&differing, self.rank));
        }
        self.fingerprint.set(Some(fingerprint));
        Ok(())
    }
}
