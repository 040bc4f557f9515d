//! The learning-rate schedule: an optional linear warmup, then constant, cosine,
//! exponential or step decay, each phase one of Burn's `lr_scheduler`s.
//!
//! Burn's schedulers run side by side when composed (`ComposedLrScheduler` multiplies
//! them from the first step), its composition has no step decay, and its cosine starts
//! over after `num_iters`. [`Schedule`] runs the warmup first and the decay after it,
//! and holds the cosine at its minimum once reached. Every scheduler runs on a factor
//! starting at 1, multiplied by `train.learning_rate`, so that Burn's limit of 1 on
//! initial rates never applies to the rate itself.

use burn::lr_scheduler::constant::ConstantLr;
use burn::lr_scheduler::cosine::{CosineAnnealingLrScheduler, CosineAnnealingLrSchedulerConfig};
use burn::lr_scheduler::exponential::{ExponentialLrScheduler, ExponentialLrSchedulerConfig};
use burn::lr_scheduler::linear::{LinearLrScheduler, LinearLrSchedulerConfig};
use burn::lr_scheduler::step::{StepLrScheduler, StepLrSchedulerConfig};
use burn::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::record::Record;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// How the learning rate decays after the warmup (`train.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecayKind {
    /// `train.learning_rate` throughout.
    #[default]
    Constant,
    /// Half a cosine from `train.learning_rate` down to `train.min_learning_rate` over
    /// `train.decay_steps` steps (or the steps left after the warmup up to
    /// `train.max_steps`), then held there.
    Cosine,
    /// Multiplied by `train.decay_rate` every `train.decay_steps` steps, a little every
    /// step.
    Exponential,
    /// Multiplied by `train.decay_rate` at once after every `train.decay_steps` steps.
    Step,
}

/// The keys of `[train]` that shape the learning rate over a run (see
/// `TrainSettings`, whose fields of the same names these are).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleSettings {
    /// The rate after the warmup (`train.learning_rate`).
    pub learning_rate: f64,
    /// Steps of linear warmup (`train.warmup_steps`).
    pub warmup_steps: u64,
    /// The decay after the warmup (`train.schedule`).
    pub schedule: DecayKind,
    /// Steps of the cosine, or per factor of `decay_rate` (`train.decay_steps`).
    pub decay_steps: Option<u64>,
    /// The factor per `decay_steps` (`train.decay_rate`).
    pub decay_rate: f64,
    /// The cosine's final rate (`train.min_learning_rate`).
    pub min_learning_rate: f64,
    /// The run's step limit, the cosine's default end (`train.max_steps`).
    pub max_steps: Option<u64>,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            warmup_steps: 0,
            schedule: DecayKind::Constant,
            decay_steps: None,
            decay_rate: 0.1,
            min_learning_rate: 0.0,
            max_steps: None,
        }
    }
}

/// The decay phase: one of Burn's schedulers, on a factor starting at 1.
#[derive(Clone)]
enum Decay {
    Constant(ConstantLr),
    Cosine {
        scheduler: CosineAnnealingLrScheduler,
        /// Steps to the minimum, after which the factor stays at `floor`.
        steps: usize,
        floor: f64,
    },
    Exponential(ExponentialLrScheduler),
    Step(StepLrScheduler),
}

/// The learning rate of every step: call [`LrScheduler::step`] once per training step
/// (skipped steps included), the first call giving step 1's rate.
#[derive(Clone)]
pub struct Schedule {
    base: LearningRate,
    /// The warmup factor (from `1 / warmup_steps` to 1) and its length in steps.
    warmup: Option<(LinearLrScheduler, usize)>,
    decay: Decay,
    /// Steps taken so far.
    taken: usize,
}

/// A [`Schedule`]'s state for checkpoints: the steps taken and each Burn scheduler's
/// own record.
#[derive(Record, Clone)]
pub struct ScheduleRecord<B: Backend> {
    taken: usize,
    warmup: Option<<LinearLrScheduler as LrScheduler>::Record<B>>,
    decay: DecayRecord<B>,
}

/// The decay scheduler's record.
#[derive(Record, Clone)]
pub enum DecayRecord<B: Backend> {
    /// Constant: nothing.
    Constant(<ConstantLr as LrScheduler>::Record<B>),
    /// Cosine: its iteration.
    Cosine(<CosineAnnealingLrScheduler as LrScheduler>::Record<B>),
    /// Exponential: the last factor.
    Exponential(<ExponentialLrScheduler as LrScheduler>::Record<B>),
    /// Step: its iteration.
    Step(<StepLrScheduler as LrScheduler>::Record<B>),
}

impl Schedule {
    /// The schedule `t` describes; errors name the `train.` key at fault.
    pub fn new(t: &ScheduleSettings) -> Result<Self, TrainError> {
        let bad = |key: &str, message: String| TrainError::Config {
            origin: format!("train.{key}"),
            message,
        };
        // Burn's linear scheduler gives `initial` at its first step and `final` at step
        // `num_iters + 1`: step k of the warmup gets the factor k / warmup_steps.
        let warmup = match t.warmup_steps as usize {
            0 | 1 => None,
            steps => Some((
                LinearLrSchedulerConfig::new(1.0 / steps as f64, 1.0, steps - 1)
                    .init()
                    .map_err(|e| bad("warmup_steps", e))?,
                steps,
            )),
        };
        let decay_steps = || {
            t.decay_steps
                .map(|s| s as usize)
                .filter(|&s| s > 0)
                .ok_or_else(|| {
                    bad(
                        "decay_steps",
                        format!(
                            "a positive number of steps for schedule `{}`",
                            t.schedule.name()
                        ),
                    )
                })
        };
        let decay = match t.schedule {
            DecayKind::Constant => Decay::Constant(ConstantLr::new(1.0)),
            DecayKind::Cosine => {
                let steps = match (t.decay_steps, t.max_steps) {
                    (Some(_), _) => decay_steps()?,
                    (None, Some(max)) if max > t.warmup_steps => (max - t.warmup_steps) as usize,
                    _ => {
                        return Err(bad(
                            "decay_steps",
                            "a positive number of steps: a cosine schedule needs its length \
                             (or train.max_steps beyond train.warmup_steps)"
                                .into(),
                        ))
                    }
                };
                let floor = t.min_learning_rate / t.learning_rate;
                Decay::Cosine {
                    scheduler: CosineAnnealingLrSchedulerConfig::new(1.0, steps)
                        .with_min_lr(floor)
                        .init()
                        .map_err(|e| {
                            bad(
                                "min_learning_rate",
                                format!("{e} (as a fraction of learning_rate)"),
                            )
                        })?,
                    steps,
                    floor,
                }
            }
            DecayKind::Exponential => {
                let gamma = decay_rate(t)?.powf(1.0 / decay_steps()? as f64);
                Decay::Exponential(
                    ExponentialLrSchedulerConfig::new(1.0, gamma)
                        .init()
                        .map_err(|e| bad("decay_rate", e))?,
                )
            }
            DecayKind::Step => Decay::Step(
                StepLrSchedulerConfig::new(1.0, decay_steps()?)
                    .with_gamma(decay_rate(t)?)
                    .init()
                    .map_err(|e| bad("decay_steps", e))?,
            ),
        };
        Ok(Self {
            base: t.learning_rate,
            warmup,
            decay,
            taken: 0,
        })
    }

    /// The schedule of a checkpoint written before schedules were saved: this one moved
    /// on by `steps` steps (every schedule is a function of the step alone).
    pub fn advanced(mut self, steps: u64) -> Self {
        for _ in 0..steps {
            self.step();
        }
        self
    }
}

/// `train.decay_rate`, checked.
fn decay_rate(t: &ScheduleSettings) -> Result<f64, TrainError> {
    if t.decay_rate > 0.0 && t.decay_rate < 1.0 {
        Ok(t.decay_rate)
    } else {
        Err(TrainError::Config {
            origin: "train.decay_rate".into(),
            message: format!(
                "expected a factor in (0, 1) for schedule `{}`, found {}",
                t.schedule.name(),
                t.decay_rate
            ),
        })
    }
}

impl DecayKind {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
            Self::Exponential => "exponential",
            Self::Step => "step",
        }
    }
}

impl LrScheduler for Schedule {
    type Record<B: Backend> = ScheduleRecord<B>;

    fn step(&mut self) -> LearningRate {
        self.taken += 1;
        let factor = match &mut self.warmup {
            Some((warmup, steps)) if self.taken <= *steps => warmup.step(),
            _ => match &mut self.decay {
                Decay::Constant(constant) => constant.step(),
                Decay::Cosine {
                    scheduler,
                    steps,
                    floor,
                } => {
                    let warmup = self.warmup.as_ref().map_or(0, |(_, steps)| *steps);
                    // Burn's cosine starts over after `steps`: hold the minimum instead.
                    if self.taken - warmup > *steps + 1 {
                        *floor
                    } else {
                        scheduler.step()
                    }
                }
                Decay::Exponential(exponential) => exponential.step(),
                Decay::Step(step) => step.step(),
            },
        };
        self.base * factor
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        ScheduleRecord {
            taken: self.taken,
            warmup: self.warmup.as_ref().map(|(w, _)| w.to_record::<B>()),
            decay: match &self.decay {
                Decay::Constant(_) => DecayRecord::Constant(()),
                Decay::Cosine { scheduler, .. } => DecayRecord::Cosine(scheduler.to_record::<B>()),
                Decay::Exponential(e) => DecayRecord::Exponential(e.to_record::<B>()),
                Decay::Step(s) => DecayRecord::Step(s.to_record::<B>()),
            },
        }
    }

    /// A record of another schedule (the configuration changed before a resume) gives
    /// this schedule moved on by the record's steps.
    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        let same_kind = matches!(
            (&self.decay, &record.decay),
            (Decay::Constant(_), DecayRecord::Constant(_))
                | (Decay::Cosine { .. }, DecayRecord::Cosine(_))
                | (Decay::Exponential(_), DecayRecord::Exponential(_))
                | (Decay::Step(_), DecayRecord::Step(_))
        );
        if !same_kind || self.warmup.is_some() != record.warmup.is_some() {
            return self.advanced(record.taken as u64);
        }
        self.taken = record.taken;
        if let (Some((warmup, _)), Some(r)) = (self.warmup.as_mut(), record.warmup) {
            *warmup = warmup.load_record::<B>(r);
        }
        self.decay = match (self.decay, record.decay) {
            (
                Decay::Cosine {
                    scheduler,
                    steps,
                    floor,
                },
                DecayRecord::Cosine(r),
            ) => Decay::Cosine {
                scheduler: scheduler.load_record::<B>(r),
                steps,
                floor,
            },
            (Decay::Exponential(e), DecayRecord::Exponential(r)) => {
                Decay::Exponential(e.load_record::<B>(r))
            }
            (Decay::Step(s), DecayRecord::Step(r)) => Decay::Step(s.load_record::<B>(r)),
            (decay, _) => decay,
        };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};

    fn settings(schedule: DecayKind, warmup: u64, decay_steps: Option<u64>) -> ScheduleSettings {
        ScheduleSettings {
            learning_rate: 2e-3,
            warmup_steps: warmup,
            schedule,
            decay_steps,
            decay_rate: 0.25,
            min_learning_rate: 2e-4,
            ..ScheduleSettings::default()
        }
    }

    fn rates(t: &ScheduleSettings, steps: usize) -> Vec<f64> {
        let mut schedule = Schedule::new(t).unwrap();
        (0..steps).map(|_| schedule.step()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-3)
    }

    #[test]
    fn warmup_ramps_by_step_then_the_rate_stays() {
        let lr = rates(&settings(DecayKind::Constant, 4, None), 8);
        let expected = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0].map(|f| f * 2e-3);
        assert!(lr.iter().zip(expected).all(|(a, b)| close(*a, b)), "{lr:?}");
    }

    #[test]
    fn cosine_falls_to_the_minimum_after_the_warmup_and_stays_there() {
        let (warmup, steps) = (3, 10);
        let lr = rates(&settings(DecayKind::Cosine, warmup, Some(steps)), 40);
        let after = &lr[warmup as usize..];
        assert!(
            close(after[0], 2e-3),
            "the decay starts at the full rate: {lr:?}"
        );
        assert!(
            close(after[5], 0.5 * (2e-3 + 2e-4)),
            "half way: {}",
            after[5]
        );
        assert!(after.windows(2).take(10).all(|w| w[1] < w[0]), "{after:?}");
        assert!(
            after[10..].iter().all(|&r| close(r, 2e-4)),
            "held: {after:?}"
        );
    }

    #[test]
    fn cosine_defaults_to_the_steps_up_to_max_steps() {
        let t = ScheduleSettings {
            max_steps: Some(13),
            ..settings(DecayKind::Cosine, 3, None)
        };
        let lr = rates(&t, 14);
        assert!(close(lr[13], 2e-4) && lr[12] > 2e-4, "{lr:?}");
    }

    #[test]
    fn exponential_and_step_decay_by_the_rate_every_decay_steps() {
        let exponential = rates(&settings(DecayKind::Exponential, 0, Some(4)), 9);
        assert!(close(exponential[0], 2e-3));
        assert!(close(exponential[4], 2e-3 * 0.25), "{exponential:?}");
        assert!(close(exponential[8], 2e-3 * 0.0625), "{exponential:?}");
        assert!(
            close(exponential[2], 2e-3 * 0.25f64.sqrt()),
            "{exponential:?}"
        );
        let step = rates(&settings(DecayKind::Step, 2, Some(4)), 11);
        let expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.25, 0.25, 0.25, 0.25, 0.0625];
        assert!(
            step.iter().zip(expected).all(|(a, f)| close(*a, f * 2e-3)),
            "{step:?}"
        );
    }

    #[test]
    fn a_schedule_saved_and_loaded_continues_exactly() {
        for kind in [
            DecayKind::Constant,
            DecayKind::Cosine,
            DecayKind::Exponential,
            DecayKind::Step,
        ] {
            let t = settings(kind, 5, Some(7));
            let whole = rates(&t, 30);
            for cut in [0, 3, 5, 9, 12] {
                let mut first = Schedule::new(&t).unwrap();
                let mut got: Vec<f64> = (0..cut).map(|_| first.step()).collect();
                let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
                let bytes = recorder.record(first.to_record::<Flex>(), ()).unwrap();
                let record = recorder.load(bytes, &Default::default()).unwrap();
                let mut resumed = Schedule::new(&t).unwrap().load_record::<Flex>(record);
                got.extend((cut..30).map(|_| resumed.step()));
                assert_eq!(got, whole, "{kind:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_record_of_another_schedule_moves_the_new_one_on_by_its_steps() {
        let mut constant = Schedule::new(&settings(DecayKind::Constant, 0, None)).unwrap();
        for _ in 0..6 {
            constant.step();
        }
        let cosine = settings(DecayKind::Cosine, 0, Some(10));
        let mut loaded = Schedule::new(&cosine)
            .unwrap()
            .load_record::<Flex>(constant.to_record::<Flex>());
        assert_eq!(loaded.step(), rates(&cosine, 7)[6]);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let message = |t: ScheduleSettings| Schedule::new(&t).err().unwrap().to_string();
        let cosine = settings(DecayKind::Cosine, 0, None);
        assert!(message(cosine).contains("train.decay_steps"));
        let floor_too_high = ScheduleSettings {
            min_learning_rate: 1.0,
            ..settings(DecayKind::Cosine, 0, Some(5))
        };
        assert!(message(floor_too_high).contains("train.min_learning_rate"));
        for kind in [DecayKind::Exponential, DecayKind::Step] {
            let growing = ScheduleSettings {
                decay_rate: 1.5,
                ..settings(kind, 0, Some(5))
            };
            assert!(message(growing).contains("train.decay_rate"), "{kind:?}");
            assert!(message(settings(kind, 0, None)).contains("train.decay_steps"));
        }
    }
}
