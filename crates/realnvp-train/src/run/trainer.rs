//! The training loop: maximum likelihood with Adam, the scale penalty, warmup, gradient
//! clipping, an optional weight average, periodic evaluation, samples and checkpoints.
//!
//! A run reads top-down in [`run_worker`]: start (fresh or resumed), then per step one
//! optimisation step (the unit that one device and data-parallel workers share; with
//! several workers it combines with the others through [`Replicas`] and nothing else),
//! then, on the leader, logging, evaluation, samples and checkpoints; then the end of the
//! run (evaluation on the whole test split, a last checkpoint, the export).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::lr_scheduler::LrScheduler;
use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use realnvp_core::{AutodiffConvBackend, ConvBackend, ConvPrecision, Dequantization};
use realnvp_data::loader::{Fetch, Shard, StreamConfig, StreamPosition, TrainStream};
use serde::Serialize;

use crate::config::{RunConfig, TrainSettings};
use crate::data::Splits;
use crate::error::{error_chain, TrainError};
use crate::evaluate::{evaluate, write_samples, Evaluation, Split};
use crate::kind::{with_kind, Data, FlowKind, KindVisitor};
use crate::output::journal::{Horizon, Journal};
use crate::run::gradients::{gradient_norm, scale_gradients, update_average};
use crate::run::init_from::init_from;
use crate::run::replicas::{Replicas, Solo, StopVotes};
use crate::state::checkpoint::{
    Checkpoints, Loaded, Payload, TrainState, EMA, MODEL, OPTIMIZER, SCHEDULE,
};
use crate::state::run_dir::RunDir;
use crate::state::schedule::Schedule;

/// How a run is started.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Continue from the newest intact checkpoint.
    pub resume: bool,
    /// Set to stop after the current step, saving a checkpoint (Ctrl-C).
    pub interrupt: Arc<AtomicBool>,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
    /// Fine-tuning: start a new run from the weights of this trained run or export
    /// directory (same architecture) instead of a fresh initialisation.
    pub init_from: Option<PathBuf>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Steps done in total.
    pub steps: u64,
    /// Epochs started.
    pub epochs: u64,
    /// Held-out evaluation at the end.
    pub test: Evaluation,
    /// Which examples were held out, in words (the official split, or the fallback).
    pub held_out: String,
    /// Training seconds in total (resumed runs included).
    pub seconds: f64,
    /// Training examples per second in this invocation (up to its final evaluation).
    pub images_per_second: f64,
    /// Steps done in this invocation.
    pub session_steps: u64,
    /// Wall-clock seconds of this invocation up to its final evaluation.
    pub session_seconds: f64,
    /// Whether the run stopped on an interrupt.
    pub interrupted: bool,
    /// Non-finite steps skipped in total.
    pub skipped_steps: u64,
    /// The inference export (the last weights, or their average).
    pub export: PathBuf,
    /// The best held-out bits/dim and its step, exported to `export/best/`.
    pub best: Option<(f64, u64)>,
}

/// Trains (or resumes) the run described by `config` in `options.run_dir` on one device.
pub fn train<B: AutodiffConvBackend>(
    config: &RunConfig,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    let splits = Splits::load(&config.data, config.train.seed)?;
    run_worker::<B, Solo>(config, options, splits, device, &Solo)?
        .ok_or_else(|| TrainError::collective("the only worker must lead"))
}

/// One worker's whole run, top-down: start (fresh or resumed), then steps until a limit or
/// an interrupt, each followed on the leader by logging and, when due, evaluation,
/// samples and a checkpoint; then the end of the run. Returns the summary on the leader
/// (rank 0) and `None` on the other workers.
pub(crate) fn run_worker<B: AutodiffConvBackend, R: Replicas<B>>(
    config: &RunConfig,
    options: &TrainOptions,
    splits: Splits,
    device: &B::Device,
    replicas: &R,
) -> Result<Option<TrainSummary>, TrainError> {
    let t = &config.train;
    let workers = replicas.workers();
    if t.batch_size % workers != 0 {
        return Err(TrainError::Config {
            origin: "train.batch_size".into(),
            message: format!(
                "{} is not a multiple of the {workers} data-parallel workers (each reads batch_size / workers examples per step)",
                t.batch_size
            ),
        });
    }
    // Where a configuration and its data set become a run: the one place that decides
    // image or vector.
    let flow_config = config.flow_config(&splits.shape())?;
    let worker = Worker {
        config,
        options,
        splits,
        device,
        replicas,
    };
    with_kind(flow_config, worker)
}

/// A worker's run before its kind is known.
struct Worker<'a, B: AutodiffConvBackend, R: Replicas<B>> {
    config: &'a RunConfig,
    options: &'a TrainOptions,
    splits: Splits,
    device: &'a B::Device,
    replicas: &'a R,
}

impl<B: AutodiffConvBackend, R: Replicas<B>> KindVisitor for Worker<'_, B, R> {
    type Output = Result<Option<TrainSummary>, TrainError>;

    fn visit<K: FlowKind>(self, settings: K::Settings) -> Self::Output {
        let samples = self.config.train.samples;
        if samples > K::MAX_SAMPLES {
            return Err(TrainError::Config {
                origin: "train.samples".into(),
                message: format!(
                    "{samples}: the sample picture of a model of kind {} holds at most {}",
                    K::NAME,
                    K::MAX_SAMPLES
                ),
            });
        }
        let data = K::data(self.splits)?;
        let mut run = Run::<K, B, R>::start(
            self.config,
            self.options,
            settings,
            data,
            self.device,
            self.replicas,
        )?;
        while !run.should_stop()? {
            if let Some(step) = run.step()? {
                run.log_evaluate_and_checkpoint(&step)?;
            }
        }
        run.finish()
    }
}

/// The Adam optimiser of a run of kind `K`.
type Adam<K, B> = OptimizerAdaptor<burn::optim::Adam, <K as FlowKind>::Trainable<B>, B>;

/// A run of kind `K` in progress on one worker.
struct Run<'a, K: FlowKind, B: AutodiffConvBackend, R: Replicas<B>> {
    config: &'a RunConfig,
    options: &'a TrainOptions,
    run_dir: RunDir,
    device: B::Device,
    replicas: &'a R,
    settings: K::Settings,
    data: Data<K>,
    batches: Batches<K>,
    model: K::Trainable<B>,
    optimizer: Adam<K, B>,
    schedule: Schedule,
    /// The learning rate of the last step.
    learning_rate: f64,
    state: TrainState,
    /// When this invocation started, and the training seconds before it.
    started: Instant,
    elapsed_before: f64,
    start_step: u64,
    bad_in_a_row: u32,
    interrupted: bool,
    /// What only rank 0 keeps: outputs, checkpoints, the weight average.
    leader: Option<Leader<K, B>>,
}

/// The leader's part of a run.
struct Leader<K: FlowKind, B: AutodiffConvBackend> {
    checkpoints: Checkpoints,
    journal: Journal,
    ema: Option<K::Model<B::InnerBackend>>,
    last_checkpoint: Option<PathBuf>,
    /// When this session last wrote a checkpoint (or started), for `train.checkpoint_minutes`.
    last_saved: Instant,
}

/// What one optimisation step reports.
struct StepOutcome {
    /// Training bits/dim, mean over the whole batch (all workers).
    bits_per_dim: f64,
    /// Examples in the whole batch.
    examples: usize,
    /// The learning rate used.
    learning_rate: f64,
    /// Global L2 norm of the gradient, before clipping.
    grad_norm: f64,
}

impl<'a, K: FlowKind, B: AutodiffConvBackend, R: Replicas<B>> Run<'a, K, B, R> {
    /// Start: the leader prepares the run directory and builds (or reads back) the start
    /// point; every worker builds its model and optimiser from the leader's, so that all
    /// replicas hold the same weights and the same parameter ids.
    fn start(
        config: &'a RunConfig,
        options: &'a TrainOptions,
        settings: K::Settings,
        data: Data<K>,
        device: &B::Device,
        replicas: &'a R,
    ) -> Result<Self, TrainError> {
        let t = &config.train;
        let workers = replicas.workers();
        let run_dir = RunDir::at(&options.run_dir);
        let prepared = replicas.is_leader().then(|| {
            prepare_run_dir::<K, B>(&run_dir, config, options, &settings, workers, device)
        });
        let start = share_start_point(replicas, prepared, &run_dir)?;

        let model = K::init::<B>(&settings, t.conv_precision, device)?;
        let model = K::trainable(load_model::<K, B>(&start, MODEL, model, device)?);
        let mut optimizer = adam::<K, B>(t, K::dims(&settings));
        match start.record(OPTIMIZER, device)? {
            Some(record) => optimizer = optimizer.load_record(record),
            None if options.resume => {
                return Err(TrainError::Checkpoint {
                    path: start.path.clone(),
                    message: "no optimizer state".into(),
                })
            }
            None => {}
        }
        let schedule = match start.record(SCHEDULE, device)? {
            Some(record) => Schedule::new(&t.schedule_settings())?.load_record::<B>(record),
            // A fresh run, or a checkpoint from before schedules were saved.
            None => Schedule::new(&t.schedule_settings())?.advanced(start.state.step),
        };
        let stream_config = StreamConfig {
            batch_size: t.batch_size,
            seed: t.seed,
            flip: Splits::flip(&config.data),
        };
        let batches = Batches::new(&data, stream_config)?;

        let mut state = start.state.clone();
        let leader = if replicas.is_leader() {
            let horizon = Horizon {
                steps: [
                    t.max_steps,
                    t.max_epochs
                        .map(|e| e * batches.steps_per_epoch(t.batch_size)),
                ]
                .into_iter()
                .flatten()
                .min(),
                seconds: t.max_minutes.map(|m| m * 60.0),
            };
            let (train, test) = (data.train.len(), data.test.len());
            eprintln!(
                "data: {}: {train} training and {test} held-out examples; held out: {}",
                config.data.describe(),
                data.held_out
            );
            if t.conv_precision != ConvPrecision::F32 {
                eprintln!(
                    "s/t convolutions in {} (train.conv_precision); the flow's arithmetic in f32",
                    t.conv_precision
                );
            }
            if options.resume {
                note_resume(&start, &state, t, workers);
            }
            Some(Leader::start(
                &start, &run_dir, options, config, &model, &state, horizon, device,
            )?)
        } else {
            None
        };
        state.workers = workers as u32;
        Ok(Self {
            config,
            options,
            run_dir,
            device: device.clone(),
            replicas,
            settings,
            data,
            batches,
            model,
            optimizer,
            schedule,
            learning_rate: t.learning_rate,
            elapsed_before: state.elapsed_seconds,
            start_step: state.step,
            state,
            started: Instant::now(),
            bad_in_a_row: 0,
            interrupted: false,
            leader,
        })
    }

    /// Training seconds in total, this invocation included.
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    /// Whether the run ends before the next step: step and epoch limits are the same on
    /// every worker; the wall clock and Ctrl-C are voted on, so that all stop together.
    fn should_stop(&mut self) -> Result<bool, TrainError> {
        let t = &self.config.train;
        self.state.elapsed_seconds = self.elapsed();
        let out_of_steps = t.max_steps.is_some_and(|m| self.state.step >= m);
        let out_of_epochs = t.max_epochs.is_some_and(|m| self.state.position.epoch >= m);
        if out_of_steps || out_of_epochs {
            return Ok(true);
        }
        let votes = self.replicas.agree(
            self.state.step + 1,
            StopVotes {
                out_of_time: t
                    .max_minutes
                    .is_some_and(|m| self.state.elapsed_seconds >= m * 60.0),
                interrupted: self.options.interrupt.load(Ordering::SeqCst),
            },
        )?;
        self.interrupted = votes.interrupted && !votes.out_of_time;
        Ok(votes.out_of_time || votes.interrupted)
    }

    /// One optimisation step, the unit every worker runs: the loss and gradients of this
    /// worker's shard of the batch, combined with the other workers' (`reduce_step`), then
    /// Adam. A non-finite loss or gradient (seen alike by every worker, after the
    /// combination) skips the step and leaves no trace in the model. `None` when skipped.
    fn step(&mut self) -> Result<Option<StepOutcome>, TrainError> {
        let t = &self.config.train;
        let shard = Shard {
            index: self.replicas.rank(),
            count: self.replicas.workers(),
        };
        let model = K::as_model(&self.model);
        let (batch, next) =
            self.batches
                .shard_at(model, self.state.position, shard, &self.device)?;
        // The forward pass updates batch-norm running averages; keep the values from
        // before it, so that a skipped step leaves no trace in the model.
        let before = self.model.clone().into_record();
        let noise = noise_seed(t.seed, self.state.step, shard.index);
        let bpd = K::bits_per_dim(model, batch, Dequantization::Seeded(noise)).mean();
        let loss = bpd.clone() + K::scale_penalty(model).mul_scalar(t.scale_penalty);
        let shard_bpd: f64 = bpd.into_scalar().elem();
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        // The replicas exchange core's `Flow`, whichever the kind.
        let flow = K::into_flow(K::untrainable(self.model.clone()));
        let reduced = self
            .replicas
            .reduce_step(self.state.step + 1, flow, grads, shard_bpd)?;
        self.model = K::trainable(K::from_flow(reduced.model).ok_or_else(|| {
            TrainError::collective("the combined step holds a model of the other kind")
        })?);
        let grads = reduced.grads;
        let grad_norm = gradient_norm(&self.model, &grads);
        let finite = reduced.bits_per_dim.is_finite() && grad_norm.is_finite();
        self.state.step += 1;
        self.state.position = next;
        self.learning_rate = self.schedule.step();
        if !finite {
            self.skip_step(before)?;
            return Ok(None);
        }
        self.bad_in_a_row = 0;
        let grads = match t.grad_clip_norm {
            Some(max) if grad_norm > f64::from(max) => {
                scale_gradients(&self.model, grads, f64::from(max) / grad_norm)
            }
            _ => grads,
        };
        let lr = self.learning_rate;
        self.model = self.optimizer.step(lr, self.model.clone(), grads);
        if let Some(leader) = self.leader.as_mut() {
            if let (Some(average), Some(decay)) = (leader.ema.take(), t.ema_decay) {
                leader.ema = Some(update_average(average, &self.model.valid(), decay));
            }
        }
        Ok(Some(StepOutcome {
            bits_per_dim: reduced.bits_per_dim,
            examples: t.batch_size,
            learning_rate: lr,
            grad_norm,
        }))
    }

    /// Restores the model from before a non-finite step; stops the run after
    /// `train.max_bad_steps` of them in a row.
    fn skip_step(
        &mut self,
        before: <K::Trainable<B> as Module<B>>::Record,
    ) -> Result<(), TrainError> {
        let precision = self.config.train.conv_precision;
        let fresh = K::init::<B>(&self.settings, precision, &self.device)?;
        self.model = K::trainable(fresh).load_record(before);
        self.bad_in_a_row += 1;
        self.state.skipped_steps += 1;
        if let Some(leader) = &self.leader {
            leader.journal.warn(&format!(
                "step {}: non-finite loss or gradient, step skipped",
                self.state.step
            ));
        }
        if self.bad_in_a_row >= self.config.train.max_bad_steps {
            if let Some(leader) = &self.leader {
                leader.journal.clear_progress();
            }
            return Err(TrainError::Diverged {
                step: self.state.step,
                count: self.bad_in_a_row,
                last_checkpoint: self.leader.as_ref().and_then(|l| l.last_checkpoint.clone()),
            });
        }
        Ok(())
    }

    /// On the leader, after a step: the step joins the training curve; every
    /// `train.log_every` steps a metrics line; every `train.eval_every` steps held-out
    /// bits/dim, samples and a checkpoint; and a checkpoint whenever
    /// `train.checkpoint_every` steps or `train.checkpoint_minutes` call for one.
    fn log_evaluate_and_checkpoint(&mut self, step: &StepOutcome) -> Result<(), TrainError> {
        let t = &self.config.train;
        let Some(leader) = self.leader.as_mut() else {
            return Ok(());
        };
        leader
            .journal
            .add_step(step.bits_per_dim, step.examples, step.grad_norm);
        let evaluate_now = self.state.step % t.eval_every == 0;
        let checkpoint_now = evaluate_now || self.checkpoint_due();
        if evaluate_now || self.state.step % t.log_every == 0 {
            let test = if evaluate_now {
                Some(self.evaluate_and_draw(t.eval_examples)?)
            } else {
                None
            };
            self.state.elapsed_seconds = self.elapsed();
            if let Some(leader) = self.leader.as_mut() {
                leader
                    .journal
                    .log_step(&self.state, step.learning_rate, test.as_ref())?;
            }
        }
        if checkpoint_now {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Whether `train.checkpoint_every` (steps) or `train.checkpoint_minutes` (since the last
    /// checkpoint this session) asks for a checkpoint now.
    fn checkpoint_due(&self) -> bool {
        let t = &self.config.train;
        let by_steps = t
            .checkpoint_every
            .is_some_and(|every| self.state.step % every == 0);
        let by_clock = t.checkpoint_minutes.is_some_and(|minutes| {
            self.leader
                .as_ref()
                .is_some_and(|l| l.last_saved.elapsed().as_secs_f64() >= minutes * 60.0)
        });
        by_steps || by_clock
    }

    /// The model used for evaluation, samples and the export: the weight average when
    /// kept, else the current weights.
    fn eval_model(&self) -> K::Model<B::InnerBackend> {
        self.leader
            .as_ref()
            .and_then(|l| l.ema.clone())
            .unwrap_or_else(|| self.model.valid())
    }

    /// Held-out bits/dim and a sample grid of the evaluation model; a new best is exported
    /// to `export/best/`.
    fn evaluate_and_draw(&mut self, limit: Option<usize>) -> Result<Evaluation, TrainError> {
        let model = self.eval_model();
        let best_before = self.state.best;
        let draw = K::has_picture(&self.settings);
        let evaluation = evaluate_and_draw::<K, B::InnerBackend>(
            &model,
            &self.data,
            draw,
            limit,
            &mut self.state,
            &self.run_dir,
            &self.config.train,
            &self.device,
        )?;
        if let Some((bits_per_dim, step)) =
            self.state.best.filter(|_| self.state.best != best_before)
        {
            let config = K::flow_config(&self.settings);
            self.run_dir
                .export_best(&K::into_flow(model), &config, bits_per_dim, step)?;
        }
        if let (Some(leader), true) = (self.leader.as_mut(), draw) {
            let samples = self.run_dir.samples_path(self.state.step);
            leader.journal.log_samples(self.state.step, &samples)?;
        }
        Ok(evaluation)
    }

    /// Writes a checkpoint (leader only).
    fn checkpoint(&mut self) -> Result<(), TrainError> {
        self.state.elapsed_seconds = self.elapsed();
        let Some(leader) = self.leader.as_mut() else {
            return Ok(());
        };
        leader.last_checkpoint = Some(save_checkpoint::<K, B, _>(
            &leader.checkpoints,
            &self.state,
            &self.model,
            &self.optimizer,
            &self.schedule,
            leader.ema.as_ref(),
            self.config.train.keep_checkpoints,
        )?);
        leader.last_saved = Instant::now();
        Ok(())
    }

    /// The end of the run, on the leader: evaluate on the whole test split, draw samples,
    /// checkpoint and export for inference.
    fn finish(mut self) -> Result<Option<TrainSummary>, TrainError> {
        self.replicas
            .check_identical(&K::into_flow(K::untrainable(self.model.clone())))?;
        let Some(leader) = self.leader.as_ref() else {
            return Ok(None);
        };
        leader.journal.clear_progress();
        if self.interrupted {
            // Stopped by a signal (a scheduler's SIGTERM has a grace period): keep the work
            // safe before the final evaluation, which a second signal may cut short.
            self.checkpoint()?;
        }
        self.state.elapsed_seconds = self.elapsed();
        // Throughput counts training (with its periodic evaluations), not the final one.
        let seconds_here = self.started.elapsed().as_secs_f64();
        let test = self.evaluate_and_draw(None)?;
        let t = &self.config.train;
        let rate = (self.state.step - self.start_step) as f64 * t.batch_size as f64
            / seconds_here.max(1e-9);
        if let Some(leader) = self.leader.as_mut() {
            leader
                .journal
                .log_end(&self.state, self.learning_rate, &test, rate)?;
        }
        self.checkpoint()?;
        let export = self.run_dir.export(
            &K::into_flow(self.eval_model()),
            &K::flow_config(&self.settings),
        )?;
        Ok(Some(TrainSummary {
            steps: self.state.step,
            epochs: self.state.position.epoch + 1,
            test,
            held_out: self.data.held_out.clone(),
            seconds: self.state.elapsed_seconds,
            images_per_second: rate,
            session_steps: self.state.step - self.start_step,
            session_seconds: seconds_here,
            interrupted: self.interrupted,
            skipped_steps: self.state.skipped_steps,
            best: self.state.best,
            export,
        }))
    }
}

impl<K: FlowKind, B: AutodiffConvBackend> Leader<K, B> {
    /// The leader's part of the start: the note on a resumed run, the weight average and
    /// the journal.
    #[allow(clippy::too_many_arguments)]
    fn start(
        start: &Loaded,
        run_dir: &RunDir,
        options: &TrainOptions,
        config: &RunConfig,
        model: &K::Trainable<B>,
        state: &TrainState,
        horizon: Horizon,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let ema = match config.train.ema_decay {
            Some(_) if options.resume => Some(load_model::<K, B::InnerBackend>(
                start,
                EMA,
                model.valid(),
                device,
            )?),
            Some(_) => Some(model.valid()),
            None => None,
        };
        let resumed_at = options.resume.then_some(state.step);
        let title = format!("{}: {}", run_dir.name(), config.data.describe());
        let journal = Journal::open(run_dir, title, resumed_at, options.progress, horizon)?;
        Ok(Self {
            checkpoints: run_dir.checkpoints(),
            journal,
            ema,
            last_checkpoint: options.resume.then(|| start.path.clone()),
            last_saved: Instant::now(),
        })
    }
}

/// Says where a resumed run continues from, and what changes when it continues with a
/// different number of workers than `state` was trained with.
fn note_resume(start: &Loaded, state: &TrainState, t: &TrainSettings, workers: usize) {
    eprintln!(
        "resuming from {} (step {})",
        start.path.display(),
        state.step
    );
    if state.workers as usize != workers {
        eprintln!(
            "note: the run was trained by {} worker(s) and continues with {workers}: the global batch stays {}, batch-norm statistics are now taken over {} examples per worker, and the dequantisation noise differs from an uninterrupted run",
            state.workers,
            t.batch_size,
            t.batch_size / workers
        );
    }
}

/// The leader's preparation of the run directory: refuses to overwrite a run unless
/// resuming, writes `config.toml` and `model.toml`, and returns the start point: the
/// newest intact checkpoint, or a freshly initialised model (seeded by `train.seed`).
fn prepare_run_dir<K: FlowKind, B: AutodiffConvBackend>(
    run_dir: &RunDir,
    config: &RunConfig,
    options: &TrainOptions,
    settings: &K::Settings,
    workers: usize,
    device: &B::Device,
) -> Result<Loaded, TrainError> {
    let checkpoints = run_dir.checkpoints();
    let resume_from = if options.resume {
        Some(checkpoints.latest().ok_or_else(|| TrainError::Checkpoint {
            path: checkpoints.dir().to_path_buf(),
            message: "--resume given but there is no intact checkpoint".into(),
        })?)
    } else {
        if !checkpoints.list().is_empty() {
            return Err(TrainError::Checkpoint {
                path: run_dir.path().to_path_buf(),
                message:
                    "already holds a run; pass --resume to continue it or choose another --out"
                        .into(),
            });
        }
        None
    };
    run_dir.write_configs(config, &K::flow_config(settings))?;
    if let Some(loaded) = resume_from {
        return Ok(loaded);
    }
    B::seed(device, config.train.seed);
    let mut model = K::into_flow(K::init::<B>(settings, ConvPrecision::F32, device)?);
    if let Some(dir) = &options.init_from {
        model = init_from(model, dir, device)?;
        eprintln!("initialised from the trained model in {}", dir.display());
    }
    let mut payload = Payload::new();
    payload.add::<_, B>(MODEL, model.into_record())?;
    Ok(Loaded::in_memory(
        run_dir.path(),
        TrainState::fresh(workers as u32),
        payload,
    ))
}

/// Hands the leader's start point (or the reason it could not make one) to every worker.
fn share_start_point<B: AutodiffBackend, R: Replicas<B>>(
    replicas: &R,
    prepared: Option<Result<Loaded, TrainError>>,
    run_dir: &RunDir,
) -> Result<Loaded, TrainError> {
    if replicas.workers() == 1 {
        return prepared
            .unwrap_or_else(|| Err(TrainError::collective("a single worker must lead")));
    }
    // A leading byte says whether the leader could start (0) or why not (1, a message).
    let bytes = prepared.as_ref().map(|result| match result {
        Ok(loaded) => [vec![0u8], loaded.to_bytes()].concat(),
        Err(e) => [vec![1u8], error_chain(e).into_bytes()].concat(),
    });
    let shared = replicas.share_from_leader(bytes)?;
    if let Some(result) = prepared {
        return result;
    }
    match shared.split_first() {
        Some((0, start)) => {
            Loaded::from_bytes(&run_dir.path().join("(start state from rank 0)"), start)
        }
        Some((_, message)) => Err(TrainError::collective(format!(
            "rank 0 could not start: {}",
            String::from_utf8_lossy(message)
        ))),
        None => Err(TrainError::collective("rank 0 sent an empty start state")),
    }
}

/// Loads the record `name` of `start` (checkpoints hold core's `Flow`) into `model`.
fn load_model<K: FlowKind, B: ConvBackend>(
    start: &Loaded,
    name: &str,
    model: K::Model<B>,
    device: &B::Device,
) -> Result<K::Model<B>, TrainError> {
    let flow = start.load_into(name, K::into_flow(model), device)?;
    K::from_flow(flow).ok_or_else(|| TrainError::Checkpoint {
        path: start.path.clone(),
        message: format!(
            "`{name}` holds another kind of model than this {} run",
            K::NAME
        ),
    })
}

/// Adam for the bits/dim loss of a model of `dims` dimensions: `train.adam_epsilon` is
/// for per-example nats, `dims ln 2` times the bits/dim loss, and Adam's update is the
/// same for a loss scaled by `k` and epsilon scaled by `k` (without the key, Burn's
/// default epsilon on bits/dim). Gradients are clipped by
/// their global norm before the step (`clip_by_global_norm`), not by Burn's per-tensor
/// clipping.
fn adam<K: FlowKind, B: AutodiffConvBackend>(t: &TrainSettings, dims: usize) -> Adam<K, B> {
    let config = AdamConfig::new().with_beta_1(t.beta1).with_beta_2(t.beta2);
    match t.adam_epsilon {
        Some(nats) => config.with_epsilon((nats / (dims as f64 * std::f64::consts::LN_2)) as f32),
        None => config,
    }
    .init::<B, K::Trainable<B>>()
}

/// Evaluates on (the first `limit` examples of) the test split, draws the step's sample
/// picture when `draw` and records the best held-out bits/dim.
#[allow(clippy::too_many_arguments)]
fn evaluate_and_draw<K: FlowKind, B: ConvBackend>(
    model: &K::Model<B>,
    data: &Data<K>,
    draw: bool,
    limit: Option<usize>,
    state: &mut TrainState,
    run_dir: &RunDir,
    t: &TrainSettings,
    device: &B::Device,
) -> Result<Evaluation, TrainError> {
    let e = evaluate::<K, B>(
        model,
        data,
        Split::Test,
        t.eval_batch_size,
        limit,
        t.seed,
        device,
    )?;
    if draw {
        let samples = run_dir.samples_path(state.step);
        write_samples::<K, B>(
            model,
            &samples,
            t.samples,
            t.sample_temperature,
            t.seed,
            device,
        )?;
    }
    let bits_per_dim = e.curve_bits_per_dim();
    if bits_per_dim.is_finite() && state.best.is_none_or(|(best, _)| bits_per_dim < best) {
        state.best = Some((bits_per_dim, state.step));
    }
    Ok(e)
}

/// Writes a checkpoint of the run: the model and the weight average as core's `Flow`
/// records (the same files whichever the kind), the optimiser and the schedule.
fn save_checkpoint<K: FlowKind, B: AutodiffConvBackend, O: Optimizer<K::Trainable<B>, B>>(
    checkpoints: &Checkpoints,
    state: &TrainState,
    model: &K::Trainable<B>,
    optimizer: &O,
    schedule: &Schedule,
    ema: Option<&K::Model<B::InnerBackend>>,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let mut payload = Payload::new();
    let model = K::into_flow(K::untrainable(model.clone()));
    payload.add::<_, B>(MODEL, model.into_record())?;
    payload.add::<_, B>(OPTIMIZER, optimizer.to_record())?;
    payload.add::<_, B>(SCHEDULE, schedule.to_record::<B>())?;
    if let Some(ema) = ema {
        let ema = K::into_flow(ema.clone());
        payload.add::<_, B::InnerBackend>(EMA, ema.into_record())?;
    }
    checkpoints.save(state, payload, keep)
}

/// The dequantisation-noise seed of a worker's step: a function of the run seed, the step
/// and the worker's rank alone, so that a resumed run draws the same noise as an
/// uninterrupted one and the workers' shards draw independent noise.
fn noise_seed(seed: u64, step: u64, rank: usize) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (z ^ (z >> 31)) ^ (rank as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// The training stream of a run of kind `K`, producing its batches.
struct Batches<K: FlowKind> {
    stream: TrainStream<K::Source>,
}

impl<K: FlowKind> Batches<K> {
    fn new(data: &Data<K>, config: StreamConfig) -> Result<Self, TrainError> {
        Ok(Self {
            stream: TrainStream::new(data.train.clone(), config)?,
        })
    }

    /// Whole batches of `batch_size` in one epoch (the incomplete last one is dropped).
    fn steps_per_epoch(&self, batch_size: usize) -> u64 {
        (self.stream.epoch_len() / batch_size.max(1)) as u64
    }

    /// This worker's `shard` of the batch at `position`, as `model`'s batch on `device`.
    fn shard_at<B: ConvBackend>(
        &self,
        model: &K::Model<B>,
        position: StreamPosition,
        shard: Shard,
        device: &B::Device,
    ) -> Result<(K::Batch<B>, StreamPosition), TrainError> {
        let (examples, next) = self.stream.shard_at(position, shard)?;
        Ok((K::batch(model, examples, true, device)?, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Vectors;
    use crate::run::gradients::tests::model_and_gradients;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use realnvp_core::VectorRealNvp;

    type Training = Autodiff<Flex>;

    /// Adam's update does not change when the loss and epsilon are scaled alike: the
    /// optimiser for bits/dim with `adam_epsilon / (D ln 2)` takes the same step as Adam
    /// with `adam_epsilon` on nats (the loss times D ln 2).
    #[test]
    fn epsilon_for_nats_gives_adams_step_on_nats() {
        let dims = 3;
        let mut t = TrainSettings {
            adam_epsilon: Some(1e-3),
            ..Default::default()
        };
        let step = |optimizer: &mut Adam<Vectors, Training>, scale: f64| {
            let (model, _) = model_and_gradients();
            let x = realnvp_core::testing::uniform::<Training, 2>([16, 3], -2.0, 2.0, 3);
            let loss = Vectors::bits_per_dim(&model, x, Dequantization::Centre)
                .mean()
                .mul_scalar(scale);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let after = optimizer.step(1e-2, model.clone(), grads);
            let collect = |m: &VectorRealNvp<Training>| {
                let mut v = Vec::new();
                struct Values<'a>(&'a mut Vec<f64>);
                impl<B: Backend> ModuleVisitor<B> for Values<'_> {
                    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                        self.0.extend(realnvp_core::testing::values(p.val()));
                    }
                }
                m.visit(&mut Values(&mut v));
                v
            };
            let (a, b) = (collect(&after), collect(&model));
            a.iter().zip(&b).map(|(x, y)| x - y).collect::<Vec<f64>>()
        };
        let nats_per_bpd = dims as f64 * std::f64::consts::LN_2;
        let ours = step(&mut adam::<Vectors, Training>(&t, dims), 1.0);
        // Adam on nats with epsilon 1e-3: `adam` for one dimension divides by ln 2.
        t.adam_epsilon = Some(1e-3 * std::f64::consts::LN_2);
        let on_nats = step(&mut adam::<Vectors, Training>(&t, 1), nats_per_bpd);
        let largest = on_nats.iter().fold(0.0f64, |m, d| m.max(d.abs()));
        assert!(largest > 1e-4, "the step moves the parameters: {largest}");
        for (a, b) in ours.iter().zip(&on_nats) {
            assert!((a - b).abs() <= 1e-4 * largest, "{a} vs {b}");
        }
        // A much larger epsilon (Burn's 1e-5 on bits/dim is 1e-5 * D ln 2 in nats)
        // changes the step: the test would see a wrong scaling.
        t.adam_epsilon = Some(1.0);
        let damped = step(&mut adam::<Vectors, Training>(&t, dims), 1.0);
        let moved = damped
            .iter()
            .zip(&ours)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(moved > 1e-2 * largest, "{moved}");
    }
}
