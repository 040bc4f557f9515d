//! What the leading worker (rank 0) writes about a run as it goes: `metrics.jsonl`, the
//! learning curves and the progress bar (or plain progress lines without a terminal).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{FormattedDuration, ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::TrainError;
use crate::evaluate::Evaluation;
use crate::output::plot::write_learning_curves;
use crate::output::tensorboard::EventWriter;
use crate::state::checkpoint::{write_atomic, TrainState};
use crate::state::run_dir::RunDir;

/// TensorBoard tag of the training bits/dim (mean over each logging window).
pub const TAG_TRAIN: &str = "bits_per_dim/train";
/// TensorBoard tag of the held-out bits/dim.
pub const TAG_TEST: &str = "bits_per_dim/test";
/// TensorBoard tag of a class-conditional model's held-out marginal bits/dim (its
/// `bits_per_dim/test` is given the label, like its training curve).
pub const TAG_TEST_MARGINAL: &str = "bits_per_dim/test_marginal";
/// TensorBoard tag of the learning rate used.
pub const TAG_LEARNING_RATE: &str = "learning_rate";
/// TensorBoard tag of the gradient's global L2 norm before clipping (window mean).
pub const TAG_GRAD_NORM: &str = "grad_norm";
/// TensorBoard tag of the training speed, images/s.
pub const TAG_IMAGES_PER_SECOND: &str = "images_per_second";
/// TensorBoard tag of the sample grids.
pub const TAG_SAMPLES: &str = "samples";

/// One line of `metrics.jsonl`.
#[derive(Debug, Serialize)]
struct MetricsLine {
    step: u64,
    epoch: u64,
    train_bpd: Option<f64>,
    /// Held-out bits/dim comparable with `train_bpd`: given the label for a
    /// class-conditional model.
    test_bpd: Option<f64>,
    /// A class-conditional model's held-out marginal bits/dim, `-log p(x)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    test_marginal_bpd: Option<f64>,
    learning_rate: f64,
    /// Global L2 norm of the gradient before clipping, mean over the logging window.
    grad_norm: Option<f64>,
    images_per_second: f64,
    elapsed_seconds: f64,
    skipped_steps: u64,
}

/// `(step, bits/dim)` points of one curve.
type Curve = Vec<(u64, f64)>;

/// The run's metrics file, curves, TensorBoard events and progress display.
pub(crate) struct Journal {
    run: RunDir,
    /// The learning curves' title: the run and its data set.
    title: String,
    metrics: std::fs::File,
    events: EventWriter,
    train_curve: Curve,
    test_curve: Curve,
    progress: ProgressBar,
    /// Plain lines on stderr when progress is wanted but there is no terminal.
    plain_lines: bool,
    /// Training bits/dim summed over the examples since the last logged step.
    window_bpd: f64,
    /// Gradient norms summed over the steps since the last logged step.
    window_grad_norm: f64,
    window_examples: usize,
    window_steps: u64,
    window_start: Instant,
    /// Where the run stops, for the progress bar and its ETA.
    horizon: Horizon,
}

/// Where a run stops, for the progress display: a step limit (`train.max_steps`, or
/// `train.max_epochs` in whole batches) and a wall-clock limit (`train.max_minutes`),
/// whichever comes first.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Horizon {
    /// The last step.
    pub steps: Option<u64>,
    /// Seconds of training (over all sessions of the run).
    pub seconds: Option<f64>,
}

impl Horizon {
    /// `(fraction done in [0, 1], seconds left)` at `step` after `elapsed` seconds, running
    /// at `seconds_per_step`, by the limit that comes first; `None` without a limit.
    pub(crate) fn progress(
        &self,
        step: u64,
        elapsed: f64,
        seconds_per_step: f64,
    ) -> Option<(f64, f64)> {
        let by_steps = self.steps.map(|last| {
            let left = last.saturating_sub(step) as f64 * seconds_per_step;
            (step as f64 / last.max(1) as f64, left)
        });
        let by_clock = self
            .seconds
            .map(|limit| (elapsed / limit.max(1e-9), (limit - elapsed).max(0.0)));
        let first = match (by_steps, by_clock) {
            (Some(a), Some(b)) => Some(if a.1 <= b.1 { a } else { b }),
            (a, b) => a.or(b),
        };
        first.map(|(fraction, left)| (fraction.clamp(0.0, 1.0), left))
    }
}

/// Positions of the progress bar: per mille of the run.
const BAR_LENGTH: u64 = 1000;

impl Journal {
    /// Opens the journal of `run` (`title` names the run and data set in the
    /// curves); a resumed run first drops the lines logged after its checkpoint's `step`,
    /// so that the curve continues without repeats, and starts a new event file that tells
    /// TensorBoard to do the same.
    pub(crate) fn open(
        run: &RunDir,
        title: String,
        resumed_at: Option<u64>,
        progress: bool,
        horizon: Horizon,
    ) -> Result<Self, TrainError> {
        let path = run.metrics_path();
        if let Some(step) = resumed_at {
            truncate_metrics(&path, step)?;
        }
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let (train_curve, test_curve) = read_curves(&path);
        let events = EventWriter::create(&run.tensorboard_dir(), resumed_at)?;
        let bar = progress_bar(progress, horizon);
        Ok(Self {
            run: run.clone(),
            title,
            metrics,
            events,
            train_curve,
            test_curve,
            plain_lines: progress && bar.is_hidden(),
            progress: bar,
            window_bpd: 0.0,
            window_grad_norm: 0.0,
            window_examples: 0,
            window_steps: 0,
            window_start: Instant::now(),
            horizon,
        })
    }

    /// Adds one step's training bits/dim (mean over `examples`) and gradient norm (global
    /// L2, before clipping) to the current window.
    pub(crate) fn add_step(&mut self, bits_per_dim: f64, examples: usize, grad_norm: f64) {
        self.window_bpd += bits_per_dim * examples as f64;
        self.window_grad_norm += grad_norm;
        self.window_examples += examples;
        self.window_steps += 1;
    }

    /// Writes the line of a logged step (metrics file and TensorBoard): the window's mean
    /// training bits/dim, gradient norm and images/s, the learning rate, and the held-out
    /// bits/dim when the step evaluated (`test`); starts a new window.
    pub(crate) fn log_step(
        &mut self,
        state: &TrainState,
        learning_rate: f64,
        test: Option<&Evaluation>,
    ) -> Result<(), TrainError> {
        let test_bpd = test.map(Evaluation::curve_bits_per_dim);
        let test_marginal_bpd = test
            .filter(|e| e.given_label_bits_per_dim.is_some())
            .map(|e| e.bits_per_dim);
        let seconds = self.window_start.elapsed().as_secs_f64();
        let rate = self.window_examples as f64 / seconds.max(1e-9);
        let train_bpd = self.window_bpd / self.window_examples.max(1) as f64;
        let grad_norm = self.window_grad_norm / self.window_steps.max(1) as f64;
        self.write(&MetricsLine {
            step: state.step,
            epoch: state.position.epoch,
            train_bpd: Some(train_bpd),
            test_bpd,
            test_marginal_bpd,
            learning_rate,
            grad_norm: Some(grad_norm),
            images_per_second: rate,
            elapsed_seconds: state.elapsed_seconds,
            skipped_steps: state.skipped_steps,
        })?;
        let mut scalars = vec![
            (TAG_TRAIN, train_bpd),
            (TAG_LEARNING_RATE, learning_rate),
            (TAG_GRAD_NORM, grad_norm),
            (TAG_IMAGES_PER_SECOND, rate),
        ];
        scalars.extend(test_bpd.map(|b| (TAG_TEST, b)));
        scalars.extend(test_marginal_bpd.map(|b| (TAG_TEST_MARGINAL, b)));
        self.events.scalars(state.step, &scalars)?;
        self.train_curve.push((state.step, train_bpd));
        if let Some(b) = test_bpd {
            self.test_curve.push((state.step, b));
            self.draw_curves()?;
        }
        let seconds_per_step = seconds / self.window_steps.max(1) as f64;
        let done = self
            .horizon
            .progress(state.step, state.elapsed_seconds, seconds_per_step);
        self.show_progress(state.step, train_bpd, test_bpd, rate, done);
        (self.window_bpd, self.window_grad_norm) = (0.0, 0.0);
        (self.window_examples, self.window_steps) = (0, 0);
        self.window_start = Instant::now();
        Ok(())
    }

    /// Writes the end-of-run line (held-out bits/dim on the whole test split) and the
    /// final curves.
    pub(crate) fn log_end(
        &mut self,
        state: &TrainState,
        learning_rate: f64,
        test: &Evaluation,
        images_per_second: f64,
    ) -> Result<(), TrainError> {
        let test_bpd = test.curve_bits_per_dim();
        let test_marginal_bpd = test.given_label_bits_per_dim.map(|_| test.bits_per_dim);
        self.write(&MetricsLine {
            step: state.step,
            epoch: state.position.epoch,
            train_bpd: None,
            test_bpd: Some(test_bpd),
            test_marginal_bpd,
            learning_rate,
            grad_norm: None,
            images_per_second,
            elapsed_seconds: state.elapsed_seconds,
            skipped_steps: state.skipped_steps,
        })?;
        let mut scalars = vec![(TAG_TEST, test_bpd)];
        scalars.extend(test_marginal_bpd.map(|b| (TAG_TEST_MARGINAL, b)));
        self.events.scalars(state.step, &scalars)?;
        self.test_curve.push((state.step, test_bpd));
        self.draw_curves()
    }

    /// Logs the sample grid written to `png` at `step` as a TensorBoard image.
    pub(crate) fn log_samples(&mut self, step: u64, png: &Path) -> Result<(), TrainError> {
        let bytes = std::fs::read(png).map_err(|e| TrainError::io(png, e))?;
        let decoded = image::load_from_memory(&bytes)
            .map_err(|e| TrainError::io(png, std::io::Error::other(e)))?;
        let shape = (
            decoded.width(),
            decoded.height(),
            decoded.color().channel_count(),
        );
        self.events.image(step, TAG_SAMPLES, bytes, shape)
    }

    /// A warning on stderr that does not break the progress bar.
    pub(crate) fn warn(&self, message: &str) {
        self.progress.suspend(|| eprintln!("warning: {message}"));
    }

    /// Removes the progress bar (before the end-of-run output).
    pub(crate) fn clear_progress(&self) {
        self.progress.finish_and_clear();
    }

    /// Shows a logged step: the bar at the fraction of the run `done` (with the seconds
    /// left), or a plain line on stderr without a terminal.
    fn show_progress(
        &self,
        step: u64,
        train_bpd: f64,
        test_bpd: Option<f64>,
        rate: f64,
        done: Option<(f64, f64)>,
    ) {
        let steps = match self.horizon.steps {
            Some(last) => format!("step {step}/{last}"),
            None => format!("step {step}"),
        };
        let test = test_bpd
            .map(|b| format!(" | test {b:.3}"))
            .unwrap_or_default();
        let left = done.map(|(_, left)| FormattedDuration(Duration::from_secs_f64(left)));
        if let Some((fraction, _)) = done {
            self.progress
                .set_position((fraction * BAR_LENGTH as f64).round() as u64);
        } else {
            self.progress.set_position(step);
        }
        self.progress.set_message(format!(
            "{steps} | train {train_bpd:.3} bits/dim{test} | {rate:.1} img/s{}",
            left.as_ref()
                .map(|l| format!(" | ETA {l}"))
                .unwrap_or_default()
        ));
        // Without a terminal (nohup, CI, a pipe) the bar is hidden: a plain line per
        // logged step instead.
        if self.plain_lines {
            eprintln!(
                "step {step}: train {train_bpd:.4} bits/dim{}, {rate:.1} img/s{}",
                test_bpd
                    .map(|b| format!(", test {b:.4} bits/dim"))
                    .unwrap_or_default(),
                left.map(|l| format!(", ETA {l}")).unwrap_or_default()
            );
        }
    }

    fn draw_curves(&self) -> Result<(), TrainError> {
        write_learning_curves(
            &self.run.learning_curves_path(),
            &self.title,
            &self.train_curve,
            &self.test_curve,
        )
    }

    fn write(&mut self, line: &MetricsLine) -> Result<(), TrainError> {
        let mut text = serde_json::to_string(line).unwrap_or_default();
        text.push('\n');
        self.metrics
            .write_all(text.as_bytes())
            .and_then(|_| self.metrics.flush())
            .map_err(|e| TrainError::io(&self.run.metrics_path(), e))
    }
}

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

/// Drops the metrics lines of steps after `step` (logged after the checkpoint a resumed
/// run continues from).
fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

/// A bar over the run's [`Horizon`] (the ETA is in the message, computed from the limit
/// that comes first), or a spinner when the run has no limit.
fn progress_bar(enabled: bool, horizon: Horizon) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    if horizon == Horizon::default() {
        return ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
    }
    ProgressBar::new(BAR_LENGTH).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    )
}

#[cfg(test)]
mod tests {
    use super::Horizon;

    #[test]
    fn horizon_reports_the_limit_that_comes_first() {
        let steps = Horizon {
            steps: Some(100),
            seconds: None,
        };
        assert_eq!(steps.progress(25, 999.0, 2.0), Some((0.25, 150.0)));
        let clock = Horizon {
            steps: None,
            seconds: Some(600.0),
        };
        assert_eq!(clock.progress(7, 150.0, 2.0), Some((0.25, 450.0)));
        // 75 steps left at 2 s is 150 s; the clock has 450 s left: the steps end first.
        let both = Horizon {
            steps: Some(100),
            seconds: Some(600.0),
        };
        assert_eq!(both.progress(25, 150.0, 2.0), Some((0.25, 150.0)));
        // At 10 s per step the clock ends first.
        assert_eq!(both.progress(25, 150.0, 10.0), Some((0.25, 450.0)));
        assert_eq!(both.progress(200, 900.0, 1.0), Some((1.0, 0.0)));
        assert_eq!(Horizon::default().progress(5, 1.0, 1.0), None);
    }
}
