//! Data-parallel training on Burn's collective engine (burn-collective): one worker per
//! device, on one machine or several, each reading its shard of every step's batch, with
//! gradients, batch-norm running averages and the step's bits/dim combined by all-reduce.
//!
//! How a run is kept correct:
//! - the leader (global rank 0) makes the start point (fresh weights or the newest
//!   checkpoint) and hands it to every worker through the collective, so all replicas start
//!   from the same weights, the same `ParamId`s and the same optimiser state; only the
//!   leader needs the run directory;
//! - every step carries one all-reduce of one flat vector: every gradient, every
//!   batch-norm running average, and the shard's bits/dim. Averaging the gradients of equal
//!   shards gives the gradient of the whole batch's loss, so `train.batch_size` stays the
//!   global batch. Batch-norm batch statistics are taken per shard (as PyTorch's DDP does
//!   without SyncBatchNorm): each worker normalises with the mean and variance of its own
//!   `batch_size / workers` examples, which makes the loss and its gradient slightly
//!   different from one device's, more so for small shards. The running averages are
//!   averaged after every step, so every replica stays identical and evaluation is that
//!   of one model;
//! - the stop votes (wall clock, Ctrl-C) and the non-finite-step check are made on
//!   all-reduced values, so every worker stops or skips at the same step;
//! - at the end every worker's model fingerprint is compared through the collective: a
//!   replica that drifted is an error, not a silent wrong answer.
//!
//! Failure: burn-collective 0.21 waits forever for a peer that died, and retries an
//! unreachable orchestrator forever. So every collective call here is watched: while a
//! worker waits in one, the other nodes' servers are probed, and a node that stops
//! answering ends the run with [`TrainError::NodeLost`]; joining (orchestrator, the other
//! nodes) has a deadline.
//!
//! Several machines: joining works (orchestrator, roll call, settings check), but
//! burn-collective 0.21 hangs on the second all-reduce across nodes (see
//! [`MULTI_NODE_BLOCKED`]), so a multi-node run stops after joining with that error.
//!
//! Security: burn-collective's servers (the orchestrator and every node's data service)
//! listen on all interfaces (0.0.0.0; burn-collective 0.21 fixes this) without
//! authentication. Run them on a private network only.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_communication::Address;
use realnvp_core::{AutodiffConvBackend, Flow};

use crate::checkpoint::checksum;
use crate::config::RunConfig;
use crate::data::Splits;
use crate::error::TrainError;
use crate::replicas::{ReducedStep, Replicas, StopVotes};
use crate::trainer::{run_worker, TrainOptions, TrainSummary};

/// This machine's place in a multi-node run.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Number of machines (nodes).
    pub nodes: usize,
    /// This node's rank, `0..nodes`; node 0 holds the leading worker.
    pub rank: usize,
    /// The orchestrator, `ws://HOST:PORT` (`realnvp orchestrator --port PORT`).
    pub orchestrator: String,
    /// Where the other nodes reach this one, `ws://THIS_HOST:PORT`; this node's data
    /// service listens on PORT (on all interfaces: burn-collective's choice).
    pub node_address: String,
    /// How long to wait for the orchestrator and the other nodes before giving up.
    pub join_timeout: Duration,
}

/// What a data-parallel run reports on this machine.
#[derive(Debug, Clone)]
pub struct ParallelSummary {
    /// The leader's summary (on node 0), `None` on the other nodes.
    pub leader: Option<TrainSummary>,
    /// Workers in the whole run.
    pub workers: usize,
    /// The fingerprint (checksum of the serialised weights, running averages and
    /// parameter ids) each worker on this machine ended with, in local order; the run
    /// checked that every worker's equals every other's.
    pub fingerprints: Vec<u64>,
    /// Per worker on this machine, in local order: seconds spent combining steps
    /// (packing gradients and running averages, the all-reduce itself, unpacking).
    pub reduce_seconds: Vec<f64>,
}

/// A worker waiting in a collective call for longer than this makes the watchdog probe
/// the other nodes.
const PROBE_AFTER: Duration = Duration::from_secs(5);
/// Consecutive failed probes before a node counts as lost.
const PROBES_TO_LOSE: u32 = 3;
/// The watchdog's period and the probe's connection timeout.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Why multi-node runs stop after joining. burn-collective 0.21 makes exactly one global
/// all-reduce per registration: its node's `SyncService::sync` never empties its list of
/// synced peers (it clears a copy), so the second all-reduce across nodes waits forever.
/// The roll call (addresses, device counts, settings) is that one all-reduce; training
/// needs thousands. Burn removed burn-collective after 0.21 (its commit 6a02d2055), so no
/// fixed release will come; a multi-node run stops here with this
/// error rather than hang.
const MULTI_NODE_BLOCKED: &str = "the nodes joined and agree on their settings, but multi-node training cannot run on burn-collective 0.21: its second all-reduce across nodes never returns (the node's SyncService keeps every earlier sync in its peer list). Train on one machine with --devices";

/// Bytes of a node address in the roll call.
const ADDRESS_BYTES: usize = 128;

/// Trains the run of `config` data-parallel: one worker per entry of `devices` on this
/// machine, and with `nodes`, on every node of a multi-node run (each with the same number
/// of devices). Global ranks run node by node: node `r`'s workers are
/// `r * devices.len() ..`.
pub fn train_parallel<B>(
    config: &RunConfig,
    options: &TrainOptions,
    devices: Vec<B::Device>,
    nodes: Option<NodeSpec>,
) -> Result<ParallelSummary, TrainError>
where
    B: AutodiffConvBackend + 'static,
{
    if devices.is_empty() {
        return Err(TrainError::collective("no devices given"));
    }
    let node = match &nodes {
        Some(spec) => Some(NodeLink::check(spec)?),
        None => None,
    };
    let per_node = devices.len();
    let node_count = nodes.as_ref().map_or(1, |n| n.nodes);
    let node_rank = nodes.as_ref().map_or(0, |n| n.rank);
    let workers = per_node * node_count;
    let splits = Splits::load(&config.data, config.train.seed)?;
    reset_collective::<B::InnerBackend>();

    let collective = collective_config(per_node, node.as_ref())?;
    let watch = Arc::new(Watch::new(per_node));
    let (results, finished) = mpsc::channel();
    let mut handles = Vec::new();
    for (local, device) in devices.into_iter().enumerate() {
        let peer = Peer::<B> {
            id: PeerId::from(node_rank * per_node + local),
            rank: node_rank * per_node + local,
            local,
            workers,
            device: device.clone(),
            watch: watch.clone(),
            fingerprint: Mutex::new(None),
            reduce_nanos: AtomicU64::new(0),
        };
        let (config, options, splits) = (config.clone(), options.clone(), splits.clone());
        let (collective, node, results) = (collective.clone(), node.clone(), results.clone());
        let handle = std::thread::Builder::new()
            .name(format!("realnvp-worker-{}", peer.rank))
            .spawn(move || {
                let rank = peer.rank;
                let outcome = peer.run(&config, &options, splits, &device, collective, node);
                let _ = results.send((rank, outcome));
            })
            .map_err(|e| TrainError::collective(format!("cannot start a worker thread: {e}")))?;
        handles.push(handle);
    }
    drop(results);
    let watchdog = node.map(|link| {
        let watch = watch.clone();
        std::thread::spawn(move || watch.guard(link))
    });
    let outcome = collect_results(&watch, &finished, &handles, per_node, node_rank, workers);
    watch.done.store(true, Ordering::SeqCst);
    if let Some(watchdog) = watchdog {
        let _ = watchdog.join();
    }
    outcome
}

/// Waits for this machine's workers; the first error (a worker's, a lost node's, a worker
/// that panicked) ends the wait. Workers still blocked in a collective call are left
/// behind (burn-collective cannot cancel one); the process should then exit.
fn collect_results(
    watch: &Watch,
    finished: &mpsc::Receiver<(usize, Result<WorkerEnd, TrainError>)>,
    handles: &[std::thread::JoinHandle<()>],
    per_node: usize,
    node_rank: usize,
    workers: usize,
) -> Result<ParallelSummary, TrainError> {
    // Per local worker: its end, once reported.
    let mut ends: Vec<Option<WorkerEnd>> = (0..per_node).map(|_| None).collect();
    let first_rank = node_rank * per_node;
    let record = |ends: &mut [Option<WorkerEnd>],
                  (rank, result): (usize, Result<WorkerEnd, TrainError>)| {
        ends[rank - first_rank] = Some(result?);
        Ok::<_, TrainError>(())
    };
    let mut reported = 0;
    while reported < per_node {
        if let Some(lost) = watch.failure.lock().ok().and_then(|mut f| f.take()) {
            return Err(lost);
        }
        watch.check_join_deadline()?;
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
                    .find(|(local, handle)| handle.is_finished() && ends[*local].is_none());
                if let Some((local, _)) = silent {
                    return Err(TrainError::collective(format!(
                        "worker {} (node rank {node_rank}) stopped without a result (it panicked)",
                        first_rank + local
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

fn poisoned<T>(_: T) -> TrainError {
    TrainError::collective("a worker panicked while holding shared state")
}

/// The burn-collective configuration of this machine's workers.
fn collective_config(
    per_node: usize,
    node: Option<&NodeLink>,
) -> Result<CollectiveConfig, TrainError> {
    let config = CollectiveConfig::default().with_num_devices(per_node);
    let Some(node) = node else {
        return Ok(config);
    };
    let address = |text: &str| {
        Address::from_str(text)
            .map_err(|e| TrainError::collective(format!("invalid address `{text}`: {e}")))
    };
    Ok(config
        .with_num_nodes(node.spec.nodes as u32)
        .with_global_address(address(&node.spec.orchestrator)?)
        .with_node_address(address(&node.spec.node_address)?)
        .with_data_service_port(node.port))
}

/// A multi-node spec, checked: addresses parsed, the orchestrator answering, this node's
/// port free.
#[derive(Debug, Clone)]
struct NodeLink {
    spec: NodeSpec,
    /// The port of this node's data service (the port of `--node-address`).
    port: u16,
}

impl NodeLink {
    fn check(spec: &NodeSpec) -> Result<Self, TrainError> {
        if spec.nodes == 0 || spec.rank >= spec.nodes {
            return Err(TrainError::collective(format!(
                "--node-rank {} must be below --nodes {}",
                spec.rank, spec.nodes
            )));
        }
        let (_, port) = host_and_port(&spec.node_address, "--node-address")?;
        host_and_port(&spec.orchestrator, "--orchestrator")?;
        if let Err(e) = TcpListener::bind(("0.0.0.0", port)) {
            return Err(TrainError::collective(format!(
                "--node-address {}: cannot listen on port {port}: {e}",
                spec.node_address
            )));
        }
        wait_for(&spec.orchestrator, "--orchestrator", spec.join_timeout).map_err(|e| {
            TrainError::collective(format!(
                "{e} (start it first with `realnvp orchestrator --port PORT`)"
            ))
        })?;
        Ok(Self {
            spec: spec.clone(),
            port,
        })
    }
}

/// `ws://HOST:PORT` split into its host and port.
fn host_and_port(address: &str, flag: &str) -> Result<(String, u16), TrainError> {
    let bad = || {
        TrainError::collective(format!(
            "{flag} `{address}`: expected ws://HOST:PORT, e.g. ws://10.0.0.2:3001"
        ))
    };
    let rest = address.strip_prefix("ws://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// One TCP connection attempt to a `ws://HOST:PORT` address.
fn probe(address: &str) -> Result<(), String> {
    let (host, port) = host_and_port(address, "address").map_err(|e| e.to_string())?;
    let targets: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for target in targets {
        match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Retries [`probe`] until it answers or `timeout` passes.
fn wait_for(address: &str, flag: &str, timeout: Duration) -> Result<(), TrainError> {
    let started = Instant::now();
    loop {
        match probe(address) {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() >= timeout => {
                return Err(TrainError::collective(format!(
                    "{flag} {address} cannot be reached: {e} (waited {} s)",
                    timeout.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// What a worker thread hands back.
struct WorkerEnd {
    summary: Option<TrainSummary>,
    fingerprint: u64,
    reduce_seconds: f64,
}

/// What this machine's workers and the watchdog share.
struct Watch {
    /// Per local worker: milliseconds since the epoch at which it entered the collective
    /// call it waits in, 0 when not waiting.
    waiting_since: Vec<AtomicU64>,
    /// Set while the workers register and take the roll call (joining has a deadline).
    joining: Mutex<Option<Instant>>,
    join_timeout: Mutex<Option<Duration>>,
    /// The other nodes, `(node rank, address)`, once the roll call has named them.
    peers: Mutex<Vec<(usize, String)>>,
    /// Why the run must stop (a lost node), set by the watchdog.
    failure: Mutex<Option<TrainError>>,
    done: AtomicBool,
}

impl Watch {
    fn new(workers: usize) -> Self {
        Self {
            waiting_since: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            joining: Mutex::new(None),
            join_timeout: Mutex::new(None),
            peers: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            done: AtomicBool::new(false),
        }
    }

    fn joining_since(&self) -> Option<Instant> {
        self.joining.lock().ok().and_then(|j| *j)
    }

    /// An error once the workers have waited for the others to join longer than allowed.
    fn check_join_deadline(&self) -> Result<(), TrainError> {
        let (Some(started), Some(deadline)) = (
            self.joining_since(),
            *self.join_timeout.lock().map_err(poisoned)?,
        ) else {
            return Ok(());
        };
        if started.elapsed() <= deadline {
            return Ok(());
        }
        Err(TrainError::collective(format!(
            "the run's workers did not all join within {} s: check that the orchestrator runs, that every node started with the same --nodes and --devices, and that each --node-address is reachable from the other machines",
            deadline.as_secs()
        )))
    }

    /// The longest current wait of a local worker in a collective call.
    fn longest_wait(&self) -> Duration {
        let now = now_ms();
        let oldest = self
            .waiting_since
            .iter()
            .map(|w| w.load(Ordering::SeqCst))
            .filter(|&since| since > 0)
            .min();
        oldest.map_or(Duration::ZERO, |since| {
            Duration::from_millis(now.saturating_sub(since))
        })
    }

    /// The watchdog of a multi-node run: while a local worker waits in a collective call,
    /// probes every other node's server; [`PROBES_TO_LOSE`] failures in a row name the node
    /// lost.
    fn guard(&self, link: NodeLink) {
        let mut failures: Vec<u32> = vec![0; link.spec.nodes];
        while !self.done.load(Ordering::SeqCst) {
            std::thread::sleep(PROBE_EVERY);
            if self.longest_wait() < PROBE_AFTER {
                failures.iter_mut().for_each(|f| *f = 0);
                continue;
            }
            let peers = self.peers.lock().map(|p| p.clone()).unwrap_or_default();
            for (rank, address) in peers {
                match probe(&address) {
                    Ok(()) => failures[rank] = 0,
                    Err(detail) => {
                        failures[rank] += 1;
                        if failures[rank] >= PROBES_TO_LOSE {
                            if let Ok(mut failure) = self.failure.lock() {
                                *failure = Some(TrainError::NodeLost {
                                    node_rank: rank,
                                    address,
                                    detail,
                                });
                            }
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .max(1)
}

/// One data-parallel worker: its place in the run and its device.
struct Peer<B: AutodiffBackend> {
    id: PeerId,
    /// Global rank.
    rank: usize,
    /// Index among this machine's workers.
    local: usize,
    workers: usize,
    device: B::Device,
    watch: Arc<Watch>,
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
        node: Option<NodeLink>,
    ) -> Result<WorkerEnd, TrainError> {
        self.join(collective, config, node.as_ref())?;
        let summary = run_worker::<B, Self>(config, options, splits, device, self)?;
        let fingerprint = self
            .fingerprint
            .lock()
            .map_err(poisoned)?
            .ok_or_else(|| TrainError::collective("the replicas were not compared"))?;
        if node.is_some() {
            // burn-collective's nodes serve tensors to each other until every download of
            // the last all-reduce is done, yet finishing does not wait for the others:
            // leaving at once could cut a slower node's last download.
            self.call(|| {
                self.sum(vec![1.0; self.workers])
                    .map(|_| std::thread::sleep(Duration::from_secs(2)))
            })?;
        }
        finish_collective::<B::InnerBackend>(self.id).map_err(|e| {
            TrainError::collective(format!("worker {} could not leave: {e:?}", self.rank))
        })?;
        Ok(WorkerEnd {
            summary,
            fingerprint,
            reduce_seconds: self.reduce_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        })
    }

    /// Registers with burn-collective and, across nodes, takes the roll call (every node's
    /// address and device count, and a fingerprint of its model and training settings).
    fn join(
        &self,
        collective: CollectiveConfig,
        config: &RunConfig,
        node: Option<&NodeLink>,
    ) -> Result<(), TrainError> {
        if self.local == 0 {
            if let Ok(mut joining) = self.watch.joining.lock() {
                *joining = Some(Instant::now());
            }
            if let (Some(node), Ok(mut timeout)) = (node, self.watch.join_timeout.lock()) {
                *timeout = Some(node.spec.join_timeout);
            }
        }
        register::<B::InnerBackend>(self.id, self.device.clone(), collective).map_err(|e| {
            TrainError::collective(format!(
                "worker {} could not register: {e:?}{}",
                self.rank,
                if node.is_some() {
                    " (do all nodes use the same --devices and --nodes?)"
                } else {
                    ""
                }
            ))
        })?;
        if let Some(node) = node {
            self.roll_call(node, config)?;
            return Err(TrainError::collective(MULTI_NODE_BLOCKED));
        }
        if self.local == 0 {
            if let Ok(mut joining) = self.watch.joining.lock() {
                *joining = None;
            }
        }
        Ok(())
    }

    /// Every node's row: `[present, devices, fingerprint (3 x 16 bits), address length,
    /// address bytes...]`, written by its first worker.
    fn roll_call(&self, node: &NodeLink, config: &RunConfig) -> Result<(), TrainError> {
        const ROW: usize = 6 + ADDRESS_BYTES;
        let nodes = node.spec.nodes;
        let per_node = self.workers / nodes;
        let mut table = vec![0.0f32; nodes * ROW];
        let settings = settings_fingerprint(config);
        if self.local == 0 {
            let address = node.spec.node_address.as_bytes();
            if address.len() > ADDRESS_BYTES {
                return Err(TrainError::collective(format!(
                    "--node-address is longer than {ADDRESS_BYTES} bytes"
                )));
            }
            let row = &mut table[node.spec.rank * ROW..(node.spec.rank + 1) * ROW];
            row[0] = 1.0;
            row[1] = per_node as f32;
            row[2..5].copy_from_slice(&u48_pieces(settings));
            row[5] = address.len() as f32;
            for (cell, byte) in row[6..].iter_mut().zip(address) {
                *cell = *byte as f32;
            }
        }
        let table = self.call(|| self.sum(table))?;
        let mut peers = Vec::new();
        for rank in 0..nodes {
            let row = &table[rank * ROW..(rank + 1) * ROW];
            match row[0] as usize {
                0 => {
                    return Err(TrainError::collective(format!(
                        "no node took --node-rank {rank}"
                    )))
                }
                1 => {}
                n => {
                    return Err(TrainError::collective(format!(
                        "{n} nodes took --node-rank {rank}"
                    )))
                }
            }
            if row[1] as usize != per_node {
                return Err(TrainError::collective(format!(
                    "node rank {rank} runs {} workers and node rank {} runs {per_node}: give every node the same number of --devices",
                    row[1], node.spec.rank
                )));
            }
            if from_u48_pieces(&row[2..5]) != from_u48_pieces(&u48_pieces(settings)) {
                return Err(TrainError::collective(format!(
                    "node rank {rank}'s model or training settings differ from node rank {}'s: give every node the same --config and --set",
                    node.spec.rank
                )));
            }
            let len = (row[5] as usize).min(ADDRESS_BYTES);
            let address: Vec<u8> = row[6..6 + len].iter().map(|&b| b as u8).collect();
            if rank != node.spec.rank {
                peers.push((rank, String::from_utf8_lossy(&address).into_owned()));
            }
        }
        if self.local == 0 {
            if let Ok(mut known) = self.watch.peers.lock() {
                *known = peers;
            }
        }
        Ok(())
    }

    /// Runs a collective call while the watchdog knows this worker waits in it.
    fn call<T>(&self, f: impl FnOnce() -> Result<T, TrainError>) -> Result<T, TrainError> {
        self.watch.waiting_since[self.local].store(now_ms(), Ordering::SeqCst);
        let result = f();
        self.watch.waiting_since[self.local].store(0, Ordering::SeqCst);
        result
    }

    /// The element-wise sum of `values` over all workers (padded so that burn-collective's
    /// ring all-reduce, which needs at least one element per node, accepts any length).
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

    /// Compares every replica's fingerprint; remembers this one's for the summary.
    fn check_fingerprints(&self, fingerprint: u64) -> Result<(), TrainError> {
        let mut slots = vec![0.0f32; 3 * self.workers];
        slots[3 * self.rank..3 * self.rank + 3].copy_from_slice(&u48_pieces(fingerprint));
        let all = self.call(|| self.sum(slots))?;
        let own = from_u48_pieces(&u48_pieces(fingerprint));
        let differing: Vec<String> = (0..self.workers)
            .filter(|&r| from_u48_pieces(&all[3 * r..3 * r + 3]) != own)
            .map(|r| r.to_string())
            .collect();
        if !differing.is_empty() {
            return Err(TrainError::collective(format!(
                "the replicas differ at the end of the run: worker(s) {} hold other weights than worker {}",
                differing.join(", "),
                self.rank
            )));
        }
        if let Ok(mut kept) = self.fingerprint.lock() {
            *kept = Some(fingerprint);
        }
        Ok(())
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
        let len = from_u48_pieces(&self.call(|| self.sum(header))?) as usize;
        let mut values = vec![0.0f32; len.div_ceil(2)];
        if let Some(bytes) = &bytes {
            for (value, pair) in values.iter_mut().zip(bytes.chunks(2)) {
                *value = pair[0] as f32 + 256.0 * pair.get(1).copied().unwrap_or(0) as f32;
            }
        }
        let values = self.call(|| self.sum(values))?;
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

    fn agree(&self, votes: StopVotes) -> Result<StopVotes, TrainError> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let all = self.call(|| self.sum(vec![flag(votes.out_of_time), flag(votes.interrupted)]))?;
        Ok(StopVotes {
            out_of_time: all[0] > 0.0,
            interrupted: all[1] > 0.0,
        })
    }

    fn reduce_step(
        &self,
        model: Flow<B>,
        grads: GradientsParams,
        bits_per_dim: f64,
    ) -> Result<ReducedStep<B>, TrainError> {
        let started = Instant::now();
        let reduced = self.combine(model, grads, bits_per_dim);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.reduce_nanos.fetch_add(nanos, Ordering::Relaxed);
        reduced
    }

    fn check_identical(&self, model: &Flow<B>) -> Result<(), TrainError> {
        self.check_fingerprints(model_fingerprint(model)?)
    }
}

impl<B: AutodiffConvBackend> Peer<B> {
    /// One step's combination: every gradient, running average and the shard's bits/dim
    /// in one flat all-reduce, then the averages put back into the model and gradients.
    fn combine(
        &self,
        model: Flow<B>,
        grads: GradientsParams,
        bits_per_dim: f64,
    ) -> Result<ReducedStep<B>, TrainError> {
        // The forward pass left its running-average updates pending per thread; a record
        // settles them into the values the visitors below read and write.
        let _ = model.clone().into_record();
        let mut pack = Pack::<B> {
            grads: &grads,
            parts: Vec::new(),
            present: Vec::new(),
            elements: 0,
        };
        model.visit(&mut pack);
        let (elements, present_len) = (pack.elements, pack.present.len());
        let mut parts = pack.parts;
        parts.push(Tensor::from_data(
            TensorData::new(pack.present, [present_len]),
            &self.device,
        ));
        parts.push(Tensor::from_data(
            TensorData::new(vec![bits_per_dim as f32], [1]),
            &self.device,
        ));
        let mut flat = Tensor::cat(parts, 0);
        let padding = self.workers.saturating_sub(elements + present_len + 1);
        if padding > 0 {
            flat = Tensor::cat(vec![flat, Tensor::zeros([padding], &self.device)], 0);
        }
        let summed = self.call(|| self.all_reduce(flat))?;
        let tail: Vec<f32> = summed
            .clone()
            .slice(elements..elements + present_len + 1)
            .into_data()
            .into_vec()
            .map_err(|e| TrainError::collective(format!("all-reduce result: {e:?}")))?;
        let mut unpack = Unpack::<B> {
            summed,
            workers: self.workers as f64,
            offset: 0,
            present: tail[..present_len].to_vec(),
            next_grad: 0,
            grads: GradientsParams::new(),
        };
        let model = model.map(&mut unpack);
        Ok(ReducedStep {
            model,
            grads: unpack.grads,
            bits_per_dim: tail[present_len] as f64 / self.workers as f64,
        })
    }
}

/// Gathers, in module order, every trained parameter's gradient (zeros where a parameter
/// has none, marked absent) and every running average into flat vectors.
struct Pack<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    /// Per trained parameter: 1 when it has a gradient.
    present: Vec<f32>,
    elements: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Pack<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        self.elements += n;
        if value.is_require_grad() {
            match self.grads.get::<B::InnerBackend, D>(param.id) {
                Some(grad) => {
                    self.parts.push(grad.reshape([n]));
                    self.present.push(1.0);
                }
                None => {
                    self.parts.push(Tensor::zeros([n], &value.device()));
                    self.present.push(0.0);
                }
            }
        } else {
            self.parts.push(value.inner().reshape([n]));
        }
    }
}

/// The inverse of [`Pack`] on the summed vector: mean gradients into a fresh
/// `GradientsParams`, mean running averages into the model.
struct Unpack<B: AutodiffBackend> {
    summed: Tensor<B::InnerBackend, 1>,
    workers: f64,
    offset: usize,
    present: Vec<f32>,
    next_grad: usize,
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Unpack<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let value = param.val();
        let shape = value.shape();
        let n = shape.num_elements();
        let mean: Tensor<B::InnerBackend, D> = self
            .summed
            .clone()
            .slice(self.offset..self.offset + n)
            .div_scalar(self.workers)
            .reshape(shape);
        self.offset += n;
        if value.is_require_grad() {
            if self.present[self.next_grad] > 0.0 {
                self.grads.register::<B::InnerBackend, D>(param.id, mean);
            }
            self.next_grad += 1;
            param
        } else {
            Param::initialized(param.id, Tensor::from_inner(mean))
        }
    }
}

/// FNV-1a of the model's serialised record (weights, running averages, parameter ids).
fn model_fingerprint<B: AutodiffBackend>(model: &Flow<B>) -> Result<u64, TrainError> {
    let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
        .record(model.clone().into_record(), ())
        .map_err(|e| TrainError::collective(format!("cannot serialise the model: {e}")))?;
    Ok(checksum(&bytes))
}

/// A fingerprint of the settings every node must share: the model and training sections
/// of the configuration (data paths may differ between machines).
fn settings_fingerprint(config: &RunConfig) -> u64 {
    let text = format!(
        "{}{}{}",
        toml::to_string(&config.model).unwrap_or_default(),
        toml::to_string(&config.vector_model).unwrap_or_default(),
        toml::to_string(&config.train).unwrap_or_default()
    );
    checksum(text.as_bytes())
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

/// Runs burn-collective's global orchestrator of multi-node runs on `port` (all
/// interfaces, no authentication: keep it on a private network) until Ctrl-C or SIGTERM.
pub fn run_orchestrator(port: u16) -> Result<(), TrainError> {
    // burn-collective only logs a port it cannot listen on; check first for a clear error.
    drop(TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        TrainError::collective(format!(
            "the orchestrator cannot listen on port {port}: {e}"
        ))
    })?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::collective(format!("cannot start the orchestrator: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
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
        let summary = collect_results(&Watch::new(2), &finished, &handles, 2, 0, 2)
            .expect("both workers reported");
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
                let _ = keep.send((2, Ok(end(1))));
            }),
            std::thread::spawn(move || drop(results)),
        ];
        let error = collect_results(&Watch::new(2), &finished, &handles, 2, 1, 4)
            .expect_err("worker 3 sent nothing");
        assert!(error.to_string().contains("worker 3"), "{error}");
    }
}
