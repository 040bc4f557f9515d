//! End-to-end tests of the `realnvp` binary on the embedded digits data set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Settings that keep a digits run to seconds.
const SMALL: [&str; 12] = [
    "--set",
    "model.features=4",
    "--set",
    "model.res_blocks=1",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.eval_examples=32",
    "--set",
    "train.samples=4",
    "--set",
    "train.log_every=1",
];

fn realnvp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_realnvp"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().expect("utf-8 path")];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    realnvp(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn metrics_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics written")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON line")["step"]
                .as_u64()
                .expect("step")
        })
        .collect()
}

fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
    });
    found.sort();
    found
}

#[test]
fn untrained_model_evaluates_samples_and_scores() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = train(&run, &["--steps", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for file in [
        "config.toml",
        "model.toml",
        "metrics.jsonl",
        "export/model.safetensors",
        "samples/step-0.png",
        "learning-curves.png",
    ] {
        assert!(run.join(file).is_file(), "missing {file}");
    }
    let run_arg = run.to_str().expect("utf-8");
    let eval = realnvp(&["eval", "--run", run_arg, "--json"]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let json: serde_json::Value = serde_json::from_slice(&eval.stdout).expect("one JSON object");
    assert_eq!(json["examples"], 299);
    let bpd = json["bits_per_dim"].as_f64().expect("number");
    let nll = json["nll_nats"].as_f64().expect("number");
    assert!(bpd > 1.0 && bpd < 10.0, "bits/dim {bpd}");
    assert!((nll - bpd * 64.0 * std::f64::consts::LN_2).abs() < 1e-6);

    let png = dir.path().join("s.png");
    let sample = realnvp(&[
        "sample",
        "--run",
        run_arg,
        "--n",
        "9",
        "--temperature",
        "0.5",
        "--out",
        png.to_str().expect("utf-8"),
    ]);
    assert!(sample.status.success(), "{}", stderr(&sample));
    let (w, h) = image_size(&png);
    assert_eq!(
        (w, h),
        (3 * 33 + 1, 3 * 33 + 1),
        "3x3 grid of 32-pixel digits"
    );

    // Score two PNG digits in input order.
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("writable");
    for (name, value) in [("a.png", 0u8), ("b.png", 255)] {
        let img = image::GrayImage::from_pixel(8, 8, image::Luma([value]));
        img.save(images.join(name)).expect("writable");
    }
    let score = realnvp(&[
        "score",
        "--run",
        run_arg,
        "--input",
        images.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(score.status.success(), "{}", stderr(&score));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&score.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["input"].as_str().expect("path").ends_with("a.png"));
    for line in &lines {
        let (ll, bpd) = (
            line["log_likelihood_nats"].as_f64().expect("n"),
            line["bits_per_dim"].as_f64().expect("n"),
        );
        assert!(
            (ll + bpd * 64.0 * std::f64::consts::LN_2).abs() < 1e-3,
            "{line}"
        );
    }
}

/// Starts a long small training run in the background, checkpointing every `every` steps;
/// its output is captured when `capture`, else discarded.
fn start_long_run(run: &Path, every: &str, capture: bool) -> std::process::Child {
    let eval_every = format!("train.eval_every={every}");
    let mut args = vec!["train", "--out", run.to_str().expect("utf-8 path")];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(&["--steps", "100000", "--set", &eval_every]);
    let output = || {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    Command::new(env!("CARGO_BIN_EXE_realnvp"))
        .args(&args)
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("starts")
}

/// Waits (at most 5 minutes) until the run holds `n` checkpoints.
fn wait_for_checkpoints(run: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while checkpoints(run).len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} checkpoints after 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn image_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).expect("a PNG")
}

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "train".into(),
                "--set".into(),
                "train.learning_rat=1".into(),
            ],
            "learning_rat",
        ),
        (
            vec!["train".into(), "--config".into(), "/no/such.toml".into()],
            "/no/such.toml",
        ),
        (
            vec![
                "eval".into(),
                "--run".into(),
                dir.path().display().to_string(),
            ],
            "no config.toml",
        ),
        (
            vec![
                "train".into(),
                "--out".into(),
                dir.path().join("r").display().to_string(),
                "--set".into(),
                "model.scales=5".into(),
                "--steps".into(),
                "0".into(),
            ],
            "height",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = realnvp(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    // A run directory whose only checkpoint is missing its files.
    let run = dir.path().join("broken");
    let out = train(&run, &["--steps", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(run.join("export")).expect("removable");
    for c in checkpoints(&run) {
        std::fs::remove_file(c.join("model.bin")).expect("removable");
    }
    let out = realnvp(&["eval", "--run", run.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no intact checkpoint"),
        "{}",
        stderr(&out)
    );
}

/// A run killed with SIGKILL mid-training resumes from its last checkpoint; the metrics
/// continue without repeats and the final model loads.
#[test]
fn killed_run_resumes_and_continues_its_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let mut child = start_long_run(&run, "3", false);
    wait_for_checkpoints(&run, 2);
    std::thread::sleep(Duration::from_millis(700));
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let before = metrics_steps(&run);
    let last_checkpoint = checkpoints(&run).last().cloned().expect("checkpoints");
    let resumed_at: u64 = last_checkpoint
        .file_name()
        .and_then(|n| {
            n.to_string_lossy()
                .strip_prefix("step-")
                .and_then(|s| s.parse().ok())
        })
        .expect("step number");

    let target = resumed_at + 4;
    let out = train(&run, &["--resume", "--steps", &target.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("step {resumed_at})")),
        "{}",
        stderr(&out)
    );
    let after = metrics_steps(&run);
    let train_steps: Vec<u64> = after.iter().copied().filter(|&s| s <= target).collect();
    assert!(
        train_steps.windows(2).all(|w| w[0] <= w[1]),
        "steps go back: {after:?}"
    );
    assert_eq!(
        after.iter().filter(|&&s| s == resumed_at + 1).count(),
        1,
        "{after:?}"
    );
    assert_eq!(*after.last().expect("lines"), target);
    assert!(before.len() >= 2);
    let eval = realnvp(&["eval", "--run", run.to_str().expect("utf-8"), "--json"]);
    assert!(eval.status.success(), "{}", stderr(&eval));
}

/// A damaged newest checkpoint is skipped with a warning; the run resumes from the one
/// before.
#[test]
fn damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = train(&run, &["--steps", "4", "--set", "train.eval_every=2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = checkpoints(&run);
    assert_eq!(all.len(), 2, "{all:?}");
    let newest = all.last().expect("two").join("model.bin");
    let mut bytes = std::fs::read(&newest).expect("readable");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newest, bytes).expect("writable");

    let out = train(&run, &["--resume", "--steps", "6"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: skipping damaged checkpoint") && err.contains("model.bin"),
        "{err}"
    );
    assert!(err.contains("step 2)"), "resumed from step 2: {err}");
}

/// With a fixed seed, stopping and resuming gives the same parameters as an uninterrupted
/// run.
#[test]
fn resuming_gives_the_same_parameters_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");
    let every = ["--set", "train.eval_every=3", "--seed", "5"];
    assert!(train(&straight, &[&["--steps", "6"], &every[..]].concat())
        .status
        .success());
    assert!(train(&split, &[&["--steps", "3"], &every[..]].concat())
        .status
        .success());
    let out = train(
        &split,
        &[&["--resume", "--steps", "6"], &every[..]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Record files carry random parameter ids, so compare the values themselves.
    let weights = |run: &Path| {
        let (model, _) = realnvp_core::load_model::<burn::backend::Flex>(
            &run.join("export"),
            &Default::default(),
        )
        .expect("export loads with realnvp-core alone");
        parameter_values(&model)
    };
    let (a, b) = (weights(&straight), weights(&split));
    assert!(a.len() > 1000, "{} values", a.len());
    assert!(a == b, "parameters differ after resuming");
}

/// Every float parameter and running statistic, in visiting order.
fn parameter_values<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    module: &M,
) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) {
            self.0.extend(
                param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .expect("floats"),
            );
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// A diverging run skips its non-finite steps, then stops with a message naming the last
/// checkpoint, which stays intact and loadable.
#[test]
fn non_finite_steps_are_skipped_then_the_run_stops_with_its_checkpoint_intact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = train(
        &run,
        &[
            "--steps",
            "40",
            "--set",
            "train.eval_every=1",
            "--set",
            "train.learning_rate=1e30",
            "--set",
            "train.max_bad_steps=3",
        ],
    );
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a learning rate of 1e30 trained: {err}"
    );
    assert!(
        err.contains("non-finite loss or gradient, step skipped"),
        "{err}"
    );
    assert!(
        err.contains("3 non-finite losses or gradients in a row")
            && err.contains("checkpoints/step-"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let last = checkpoints(&run).last().cloned().expect("a checkpoint");
    assert!(last.join("model.bin").is_file());
    let eval = realnvp(&["eval", "--run", run.to_str().expect("utf-8"), "--json"]);
    assert!(
        eval.status.success(),
        "the last checkpoint loads: {}",
        stderr(&eval)
    );
}

/// Ctrl-C (SIGINT) finishes the current step, saves a checkpoint and the export, and exits
/// cleanly; the run can be resumed.
#[test]
fn interrupt_saves_a_checkpoint_before_exiting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let child = start_long_run(&run, "2", true);
    wait_for_checkpoints(&run, 1);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let out = child.wait_with_output().expect("exits");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("interrupted: saving a checkpoint"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("interrupted after"));
    let last_step = *metrics_steps(&run).last().expect("metrics");
    let newest = checkpoints(&run).last().cloned().expect("checkpoint");
    assert!(
        newest.ends_with(format!("step-{last_step:010}")),
        "{newest:?} vs step {last_step}"
    );
    assert!(run.join("export/model.safetensors").is_file());
    let resumed = train(&run, &["--resume", "--steps", &(last_step + 1).to_string()]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
}
