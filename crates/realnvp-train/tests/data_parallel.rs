//! Data-parallel training in one process: two workers on Flex against one worker on the
//! same global batches.
//!
//! burn-collective keeps one collective per backend type and process, so the runs here
//! take turns (one test function per comparison, serialised by a lock).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use realnvp_train::{train, train_parallel, ParallelSummary, RunConfig, TrainOptions};

type Training = Autodiff<Flex>;

/// One collective run at a time in this process.
static COLLECTIVE: Mutex<()> = Mutex::new(());

fn options(run_dir: &Path) -> TrainOptions {
    TrainOptions {
        run_dir: run_dir.to_path_buf(),
        resume: false,
        interrupt: Arc::new(AtomicBool::new(false)),
        progress: false,
        init_from: None,
    }
}

fn config(text: &str) -> RunConfig {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("run.toml");
    std::fs::write(&path, text).expect("config written");
    RunConfig::load(Some(&path), &[]).expect("valid config")
}

/// Every float tensor of the run's last checkpointed model (weights and running
/// averages), in module order.
fn final_values(run_dir: &Path) -> Vec<f32> {
    let (model, _) = realnvp_train::RunDir::at(run_dir)
        .load_model::<Flex>(&Default::default())
        .expect("model");
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.extend(data.to_vec::<f32>().expect("floats"));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "same parameters");
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut a.iter().zip(b).map(|(x, y)| (*x - *y) as f64));
    diff / norm(&mut a.iter().map(|x| *x as f64)).max(1e-30)
}

/// Trains `config` on one worker and on two; returns the final values of both runs and
/// the two-worker run's summary, after checking that its two replicas ended bit-identical.
fn one_and_two_workers(config: &RunConfig) -> (Vec<f32>, Vec<f32>, ParallelSummary) {
    let _turn = COLLECTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let device = Default::default();
    train::<Training>(config, &options(&one), &device).expect("one worker trains");
    let summary = train_parallel::<Training>(config, &options(&two), vec![device; 2])
        .expect("two workers train");
    assert_replicas_identical(&two, &summary);
    (final_values(&one), final_values(&two), summary)
}

/// Both replicas ended with the same fingerprint, and it is that of the model the leader
/// wrote into its last checkpoint.
fn assert_replicas_identical(run_dir: &Path, summary: &ParallelSummary) {
    assert_eq!(summary.workers, 2);
    assert_eq!(
        summary.fingerprints.len(),
        2,
        "one fingerprint per local worker"
    );
    assert_eq!(
        summary.fingerprints[0], summary.fingerprints[1],
        "the replicas differ"
    );
    let mut checkpoints: Vec<_> = std::fs::read_dir(run_dir.join("checkpoints"))
        .expect("checkpoints")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    checkpoints.sort();
    let newest = checkpoints.last().expect("a checkpoint");
    let bytes = std::fs::read(newest.join("model.bin")).expect("model.bin");
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    assert_eq!(
        fnv, summary.fingerprints[0],
        "the checkpoint holds the replicas' model"
    );
}

/// Without batch norm and without dequantisation noise (a vector model on 2-D points),
/// the mean of the two shards' gradients is the whole batch's gradient: two workers must
/// follow one worker's trajectory up to float rounding.
#[test]
fn two_workers_follow_one_worker_exactly_where_the_math_is_shard_free() {
    let config = config(
        r#"
[data]
kind = "toy"
toy = "two_moons"
train = 512
test = 256

[vector_model]
couplings = 4
hidden = 16
hidden_layers = 1
batch_norm = false

[train]
batch_size = 64
learning_rate = 1e-3
max_steps = 8
eval_every = 4
log_every = 2
samples = 16
"#,
    );
    let (one, two, _) = one_and_two_workers(&config);
    assert!(one.len() > 200, "{} values", one.len());
    assert_ne!(
        one[..],
        final_values_before_training(&config)[..],
        "the runs trained"
    );
    let difference = relative_difference(&one, &two);
    eprintln!("two workers against one, vector model: relative L2 difference {difference:e}");
    assert!(
        difference < 1e-5,
        "two workers drift from one: relative L2 difference {difference:e}"
    );
}

/// The values of the model a run of `config` starts from (step 0).
fn final_values_before_training(config: &RunConfig) -> Vec<f32> {
    let _turn = COLLECTIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("untrained");
    let mut untrained = config.clone();
    untrained.train.max_steps = Some(0);
    train::<Training>(&untrained, &options(&run), &Default::default()).expect("writes step 0");
    final_values(&run)
}

/// The full image model (flow batch norm, s/t-network batch norm, dequantisation noise)
/// takes batch statistics per shard, so two workers are not one: the replicas must still be
/// bit-identical, running averages included, and learn as well as one worker does.
#[test]
fn two_workers_keep_identical_replicas_of_the_full_image_model() {
    let config = config(
        r#"
[data]
kind = "digits"

[model]
features = 8
res_blocks = 1

[train]
batch_size = 32
learning_rate = 1e-3
max_steps = 12
eval_every = 6
log_every = 3
samples = 4
"#,
    );
    let (one, two, summary) = one_and_two_workers(&config);
    let leader = summary
        .leader
        .as_ref()
        .expect("this process holds the leader");
    assert_eq!(leader.steps, 12);
    let difference = relative_difference(&one, &two);
    eprintln!("two workers against one, image model: relative L2 difference {difference:e}");
    assert!(
        difference > 0.0 && difference < 0.05,
        "per-shard statistics make two workers close to, not equal to, one: {difference:e}"
    );
}
