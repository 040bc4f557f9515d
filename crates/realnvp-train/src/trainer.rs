//! The training loop: maximum likelihood with Adam, the scale penalty, warmup, gradient
//! clipping, an optional weight average, periodic evaluation, samples and checkpoints.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use realnvp_core::{
    export_model, AutodiffConvBackend, ConvBackend, Dequantization, Flow, FlowBatch, FlowConfig,
};
use realnvp_data::loader::{StreamConfig, StreamPosition, TrainStream};
use serde::Serialize;

use crate::checkpoint::{write_atomic, Checkpoints, Payload, TrainState};
use crate::config::RunConfig;
use crate::data::Splits;
use crate::error::TrainError;
use crate::evaluate::{evaluate, write_samples, Evaluation, Split};
use crate::plot::write_learning_curves;

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
    /// Training seconds in total (resumed runs included).
    pub seconds: f64,
    /// Training examples per second in this invocation.
    pub images_per_second: f64,
    /// Whether the run stopped on an interrupt.
    pub interrupted: bool,
    /// Non-finite steps skipped in total.
    pub skipped_steps: u64,
    /// The inference export.
    pub export: PathBuf,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Serialize)]
struct MetricsLine {
    step: u64,
    epoch: u64,
    train_bpd: Option<f64>,
    test_bpd: Option<f64>,
    learning_rate: f64,
    images_per_second: f64,
    elapsed_seconds: f64,
    skipped_steps: u64,
}

/// Trains (or resumes) the run described by `config` in `options.run_dir`.
pub fn train<B: AutodiffConvBackend>(
    config: &RunConfig,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    let run_dir = &options.run_dir;
    let checkpoints = Checkpoints::new(run_dir);
    let resume_from = if options.resume {
        Some(checkpoints.latest().ok_or_else(|| TrainError::Checkpoint {
            path: checkpoints.dir().to_path_buf(),
            message: "--resume given but there is no intact checkpoint".into(),
        })?)
    } else {
        if !checkpoints.list().is_empty() {
            return Err(TrainError::Checkpoint {
                path: run_dir.clone(),
                message:
                    "already holds a run; pass --resume to continue it or choose another --out"
                        .into(),
            });
        }
        None
    };
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let config_text = toml::to_string(config).map_err(|e| TrainError::Config {
        origin: "config".into(),
        message: e.to_string(),
    })?;
    write_atomic(&run_dir.join("config.toml"), config_text.as_bytes())?;

    let t = &config.train;
    let splits = Splits::load(&config.data, t.seed)?;
    let flow_config = config.flow_config(&splits.shape())?;
    write_atomic(
        &run_dir.join("model.toml"),
        toml::to_string(&flow_config).unwrap_or_default().as_bytes(),
    )?;
    B::seed(device, t.seed);
    let mut model: Flow<B> = flow_config.init(device).map_err(|e| TrainError::Config {
        origin: "model".into(),
        message: e.to_string(),
    })?;
    let mut optimizer = AdamConfig::new()
        .with_beta_1(t.beta1)
        .with_beta_2(t.beta2)
        .with_grad_clipping(
            t.grad_clip_norm
                .map(burn::grad_clipping::GradientClippingConfig::Norm),
        )
        .init::<B, Flow<B>>();
    let mut ema: Option<Flow<B::InnerBackend>> = t.ema_decay.map(|_| model.valid());
    let mut state = TrainState {
        step: 0,
        position: StreamPosition::default(),
        elapsed_seconds: 0.0,
        best: None,
        skipped_steps: 0,
    };
    let mut last_checkpoint = None;
    if let Some(loaded) = resume_from {
        model = loaded.load_into(MODEL, model, device)?;
        let record = loaded
            .record(OPTIMIZER, device)?
            .ok_or_else(|| TrainError::Checkpoint {
                path: loaded.path.clone(),
                message: "no optimizer state".into(),
            })?;
        optimizer = optimizer.load_record(record);
        if let Some(average) = ema.take() {
            ema = Some(loaded.load_into(EMA, average, device)?);
        }
        state = loaded.state.clone();
        eprintln!(
            "resuming from {} (step {})",
            loaded.path.display(),
            state.step
        );
        truncate_metrics(&run_dir.join("metrics.jsonl"), state.step)?;
        last_checkpoint = Some(loaded.path);
    }

    let stream_config = StreamConfig {
        batch_size: t.batch_size,
        seed: t.seed,
        flip: Splits::flip(&config.data),
    };
    let labelled = matches!(&flow_config, FlowConfig::Image(c) if c.classes > 0);
    let batches = Batches::new(&splits, stream_config, labelled)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
        .map_err(|e| TrainError::io(&run_dir.join("metrics.jsonl"), e))?;

    let (mut train_curve, mut test_curve) = read_curves(&run_dir.join("metrics.jsonl"));
    let progress = progress_bar(options.progress, t.max_steps, state.step);
    let started = Instant::now();
    let elapsed_before = state.elapsed_seconds;
    let start_step = state.step;
    let mut bad_in_a_row = 0u32;
    let (mut window_bpd, mut window_n, mut window_start) = (0.0f64, 0usize, Instant::now());
    let mut interrupted = false;

    loop {
        state.elapsed_seconds = elapsed_before + started.elapsed().as_secs_f64();
        let out_of_steps = t.max_steps.is_some_and(|m| state.step >= m);
        let out_of_epochs = t.max_epochs.is_some_and(|m| state.position.epoch >= m);
        let out_of_time = t
            .max_minutes
            .is_some_and(|m| state.elapsed_seconds >= m * 60.0);
        if out_of_steps || out_of_epochs || out_of_time {
            break;
        }
        if options.interrupt.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }

        let (batch, next) = batches.at(state.position, device)?;
        let examples = batch.len();
        // The forward pass updates batch-norm running averages; keep the values from
        // before it, so that a skipped step leaves no trace in the model.
        let before = model.clone().into_record();
        B::seed(device, step_seed(t.seed, state.step));
        let bpd = model.bits_per_dim(batch, Dequantization::Uniform).mean();
        let loss = bpd.clone() + model.scale_penalty().mul_scalar(t.scale_penalty);
        let bpd_value: f64 = bpd.into_scalar().elem();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let finite = bpd_value.is_finite() && gradient_norm::<B>(&model, &grads).is_finite();
        state.step += 1;
        state.position = next;
        if !finite {
            let fresh: Flow<B> = flow_config.init(device).map_err(|e| TrainError::Config {
                origin: "model".into(),
                message: e.to_string(),
            })?;
            model = fresh.load_record(before);
            bad_in_a_row += 1;
            state.skipped_steps += 1;
            progress.suspend(|| {
                eprintln!(
                    "warning: step {}: non-finite loss or gradient, step skipped",
                    state.step
                )
            });
            if bad_in_a_row >= t.max_bad_steps {
                progress.finish_and_clear();
                return Err(TrainError::Diverged {
                    step: state.step,
                    count: bad_in_a_row,
                    last_checkpoint,
                });
            }
            continue;
        }
        bad_in_a_row = 0;
        let lr = if t.warmup_steps > 0 {
            t.learning_rate * (state.step as f64 / t.warmup_steps as f64).min(1.0)
        } else {
            t.learning_rate
        };
        model = optimizer.step(lr, model, grads);
        if let (Some(average), Some(decay)) = (ema.take(), t.ema_decay) {
            ema = Some(update_average(average, &model.valid(), decay));
        }
        window_bpd += bpd_value * examples as f64;
        window_n += examples;

        let evaluate_now = state.step % t.eval_every == 0;
        if state.step % t.log_every == 0 || evaluate_now {
            let seconds = window_start.elapsed().as_secs_f64();
            let last_rate = window_n as f64 / seconds.max(1e-9);
            let train_bpd = window_bpd / window_n.max(1) as f64;
            let test_bpd = if evaluate_now {
                let eval_model = ema.clone().unwrap_or_else(|| model.valid());
                let e = evaluate_and_draw(
                    &eval_model,
                    &splits,
                    t.eval_examples,
                    &mut state,
                    run_dir,
                    t,
                    device,
                )?;
                Some(e.bits_per_dim)
            } else {
                None
            };
            let line = MetricsLine {
                step: state.step,
                epoch: state.position.epoch,
                train_bpd: Some(train_bpd),
                test_bpd,
                learning_rate: lr,
                images_per_second: last_rate,
                elapsed_seconds: elapsed_before + started.elapsed().as_secs_f64(),
                skipped_steps: state.skipped_steps,
            };
            write_metrics(&mut metrics, &line, run_dir)?;
            train_curve.push((state.step, train_bpd));
            if let Some(b) = test_bpd {
                test_curve.push((state.step, b));
                write_learning_curves(&run_dir.join(CURVES), &train_curve, &test_curve)?;
            }
            progress.set_position(state.step);
            progress.set_message(format!(
                "train {train_bpd:.3} bits/dim{} | {last_rate:.1} img/s",
                test_bpd
                    .map(|b| format!(" | test {b:.3}"))
                    .unwrap_or_default()
            ));
            // Without a terminal (nohup, CI, a pipe) the bar is hidden: a plain line per
            // logged step instead.
            if progress.is_hidden() && options.progress {
                eprintln!(
                    "step {}: train {train_bpd:.4} bits/dim{}, {last_rate:.1} img/s",
                    state.step,
                    test_bpd
                        .map(|b| format!(", test {b:.4} bits/dim"))
                        .unwrap_or_default()
                );
            }
            (window_bpd, window_n, window_start) = (0.0, 0, Instant::now());
            if evaluate_now {
                state.elapsed_seconds = elapsed_before + started.elapsed().as_secs_f64();
                last_checkpoint = Some(save_checkpoint(
                    &checkpoints,
                    &state,
                    &model,
                    &optimizer,
                    ema.as_ref(),
                    t.keep_checkpoints,
                )?);
            }
        }
    }
    progress.finish_and_clear();
    state.elapsed_seconds = elapsed_before + started.elapsed().as_secs_f64();

    // The end of the run: evaluate on the whole test split, draw samples, checkpoint and
    // export for inference.
    let eval_model = ema.clone().unwrap_or_else(|| model.valid());
    let test = evaluate_and_draw(&eval_model, &splits, None, &mut state, run_dir, t, device)?;
    let seconds_here = started.elapsed().as_secs_f64();
    let rate = (state.step - start_step) as f64 * t.batch_size as f64 / seconds_here.max(1e-9);
    write_metrics(
        &mut metrics,
        &MetricsLine {
            step: state.step,
            epoch: state.position.epoch,
            train_bpd: None,
            test_bpd: Some(test.bits_per_dim),
            learning_rate: t.learning_rate,
            images_per_second: rate,
            elapsed_seconds: state.elapsed_seconds,
            skipped_steps: state.skipped_steps,
        },
        run_dir,
    )?;
    test_curve.push((state.step, test.bits_per_dim));
    write_learning_curves(&run_dir.join(CURVES), &train_curve, &test_curve)?;
    save_checkpoint(
        &checkpoints,
        &state,
        &model,
        &optimizer,
        ema.as_ref(),
        t.keep_checkpoints,
    )?;
    let export = run_dir.join("export");
    export_model(&eval_model, &flow_config, &export)?;
    Ok(TrainSummary {
        steps: state.step,
        epochs: state.position.epoch + 1,
        test,
        seconds: state.elapsed_seconds,
        images_per_second: rate,
        interrupted,
        skipped_steps: state.skipped_steps,
        export,
    })
}

const MODEL: &str = "model";
const CURVES: &str = "learning-curves.png";

/// `(step, bits/dim)` points of one curve.
type Curve = Vec<(u64, f64)>;

/// The training and held-out curves already logged.
fn read_curves(path: &Path) -> (Curve, Curve) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_u64() else {
            continue;
        };
        if let Some(b) = v["train_bpd"].as_f64() {
            train.push((step, b));
        }
        if let Some(b) = v["test_bpd"].as_f64() {
            test.push((step, b));
        }
    }
    (train, test)
}
const OPTIMIZER: &str = "optimizer";
const EMA: &str = "ema";

/// Evaluates on (the first `limit` examples of) the test split, draws the step's sample
/// grid and records the best held-out bits/dim.
fn evaluate_and_draw<B: ConvBackend>(
    model: &Flow<B>,
    splits: &Splits,
    limit: Option<usize>,
    state: &mut TrainState,
    run_dir: &Path,
    t: &crate::config::TrainSettings,
    device: &B::Device,
) -> Result<Evaluation, TrainError> {
    let e = evaluate(
        model,
        splits,
        Split::Test,
        t.eval_batch_size,
        limit,
        t.seed,
        device,
    )?;
    let samples = run_dir.join(format!("samples/step-{}.png", state.step));
    write_samples(
        model,
        &samples,
        t.samples,
        t.sample_temperature,
        t.seed,
        device,
    )?;
    if e.bits_per_dim.is_finite() && state.best.is_none_or(|(best, _)| e.bits_per_dim < best) {
        state.best = Some((e.bits_per_dim, state.step));
    }
    Ok(e)
}

fn save_checkpoint<B: AutodiffBackend, O: Optimizer<Flow<B>, B>>(
    checkpoints: &Checkpoints,
    state: &TrainState,
    model: &Flow<B>,
    optimizer: &O,
    ema: Option<&Flow<B::InnerBackend>>,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let mut payload = Payload::new();
    payload.add::<_, B>(MODEL, model.clone().into_record())?;
    payload.add::<_, B>(OPTIMIZER, optimizer.to_record())?;
    if let Some(ema) = ema {
        payload.add::<_, B::InnerBackend>(EMA, ema.clone().into_record())?;
    }
    checkpoints.save(state, payload, keep)
}

/// Drops the metrics lines of steps after `step` (logged after the checkpoint a resumed
/// run continues from), so that the curve continues without repeats.
fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

fn write_metrics(
    file: &mut std::fs::File,
    line: &MetricsLine,
    run_dir: &Path,
) -> Result<(), TrainError> {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|_| file.flush())
        .map_err(|e| TrainError::io(&run_dir.join("metrics.jsonl"), e))
}

fn progress_bar(enabled: bool, max_steps: Option<u64>, position: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match max_steps {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] step {pos}/{len} | {msg} | ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{elapsed_precise} step {pos} | {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_position(position);
    bar
}

/// The dequantisation-noise seed of a step: a function of the run seed and the step alone,
/// so that a resumed run draws the same noise as an uninterrupted one.
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

/// Global L2 norm of the gradients (infinite or NaN when any gradient is).
fn gradient_norm<B: AutodiffBackend>(model: &Flow<B>, grads: &GradientsParams) -> f64 {
    struct SquaredNorm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut visitor = SquaredNorm::<B> { grads, total: None };
    model.visit(&mut visitor);
    visitor
        .total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0)
}

/// `average <- decay * average + (1 - decay) * current`, parameter by parameter.
fn update_average<B: Backend>(average: Flow<B>, current: &Flow<B>, decay: f64) -> Flow<B> {
    struct Collect<B: Backend> {
        values: HashMap<ParamId, Tensor<B, 1>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.values.insert(param.id, param.val().flatten(0, D - 1));
        }
    }
    struct Blend<B: Backend> {
        values: HashMap<ParamId, Tensor<B, 1>>,
        decay: f64,
    }
    impl<B: Backend> ModuleMapper<B> for Blend<B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let Some(current) = self.values.remove(&param.id) else {
                return param;
            };
            let decay = self.decay;
            param.map(|avg| {
                let shape = avg.dims();
                avg.mul_scalar(decay) + current.reshape(shape).mul_scalar(1.0 - decay)
            })
        }
    }
    let mut collect = Collect {
        values: HashMap::new(),
    };
    current.visit(&mut collect);
    average.map(&mut Blend {
        values: collect.values,
        decay,
    })
}

/// The training stream of either data kind, producing model batches.
enum Batches {
    /// Images, with their labels when `labelled` (a class-conditional model).
    Images {
        stream: TrainStream<realnvp_data::loader::ImageSource>,
        labelled: bool,
    },
    Vectors(TrainStream<realnvp_data::loader::VectorArray>),
}

impl Batches {
    fn new(splits: &Splits, config: StreamConfig, labelled: bool) -> Result<Self, TrainError> {
        Ok(match splits {
            Splits::Images { train, .. } => Batches::Images {
                stream: TrainStream::new(train.clone(), config)?,
                labelled,
            },
            Splits::Vectors { train, .. } => {
                Batches::Vectors(TrainStream::new(train.clone(), config)?)
            }
        })
    }

    fn at<B: Backend>(
        &self,
        position: StreamPosition,
        device: &B::Device,
    ) -> Result<(FlowBatch<B>, StreamPosition), TrainError> {
        Ok(match self {
            Batches::Images { stream, labelled } => {
                let (batch, next) = stream.batch_at(position)?;
                let batch = batch.to_batch(device);
                match (labelled, batch.labels) {
                    (true, Some(labels)) => (FlowBatch::LabelledImages(batch.pixels, labels), next),
                    (true, None) => {
                        return Err(TrainError::Config {
                            origin: "model.conditional".into(),
                            message: "the training images have no labels".into(),
                        })
                    }
                    (false, _) => (FlowBatch::Images(batch.pixels), next),
                }
            }
            Batches::Vectors(s) => {
                let (batch, next) = s.batch_at(position)?;
                (FlowBatch::Vectors(batch.to_tensor(device)), next)
            }
        })
    }
}

use burn::tensor::ElementConversion;

/// The resolved configuration of the run in `run_dir` (its `config.toml`).
pub fn run_config(run_dir: &Path) -> Result<RunConfig, TrainError> {
    let path = run_dir.join("config.toml");
    if !path.is_file() {
        return Err(TrainError::Checkpoint {
            path: run_dir.to_path_buf(),
            message: "not a run directory (no config.toml)".into(),
        });
    }
    RunConfig::load(Some(&path), &[])
}

/// The trained model of the run in `run_dir`, for inference: its `export/` when the run
/// finished, else the newest intact checkpoint (averaged weights when kept).
pub fn load_run_model<B: ConvBackend>(
    run_dir: &Path,
    device: &B::Device,
) -> Result<(Flow<B>, FlowConfig), TrainError> {
    let export = run_dir.join("export");
    if export.join(realnvp_core::flow::WEIGHTS_FILE).is_file() {
        return Ok(realnvp_core::load_model(&export, device)?);
    }
    let path = run_dir.join("model.toml");
    let text = std::fs::read_to_string(&path).map_err(|_| TrainError::Checkpoint {
        path: run_dir.to_path_buf(),
        message: "no trained model here: neither export/ nor a checkpoint (train first, or pass the run's directory)".into(),
    })?;
    let config: FlowConfig = toml::from_str(&text).map_err(|e| TrainError::Config {
        origin: path.display().to_string(),
        message: e.message().to_string(),
    })?;
    let loaded = Checkpoints::new(run_dir)
        .latest()
        .ok_or_else(|| TrainError::Checkpoint {
            path: run_dir.to_path_buf(),
            message: "no intact checkpoint and no export/".into(),
        })?;
    let model = config.init::<B>(device).map_err(|e| TrainError::Config {
        origin: path.display().to_string(),
        message: e.to_string(),
    })?;
    let name = if loaded
        .record::<<Flow<B> as Module<B>>::Record, B>(EMA, device)?
        .is_some()
    {
        EMA
    } else {
        MODEL
    };
    Ok((loaded.load_into(name, model, device)?, config))
}
