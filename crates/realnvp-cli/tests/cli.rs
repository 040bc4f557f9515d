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
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
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

    // CSV output quotes a file name holding the delimiter and quotes, and reads back.
    let odd = dir.path().join("odd");
    std::fs::create_dir(&odd).expect("writable");
    let name = "c, \"d\".png";
    image::GrayImage::from_pixel(8, 8, image::Luma([9u8]))
        .save(odd.join(name))
        .expect("writable");
    let score = realnvp(&[
        "score",
        "--run",
        run_arg,
        "--input",
        odd.to_str().expect("utf-8"),
        "--csv",
    ]);
    assert!(score.status.success(), "{}", stderr(&score));
    let mut reader = csv::Reader::from_reader(score.stdout.as_slice());
    let header = reader.headers().expect("a header").clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        ["input", "log_likelihood_nats", "bits_per_dim"]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a row")).collect();
    assert_eq!(rows.len(), 1);
    assert!(rows[0][0].ends_with(name), "{:?}", &rows[0]);
    assert!(
        rows[0][2].parse::<f64>().is_ok_and(|b| b > 0.0),
        "{:?}",
        &rows[0]
    );
}

/// Starts a long small training run in the background with `extra` settings; its output
/// is captured when `capture`, else discarded.
fn start_long_run(run: &Path, extra: &[&str], capture: bool) -> std::process::Child {
    let mut args = vec!["train", "--out", run.to_str().expect("utf-8 path")];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(&["--steps", "100000"]);
    args.extend_from_slice(extra);
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
        (
            vec![
                "train".into(),
                "--config".into(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/moons.toml").into(),
                "--out".into(),
                dir.path().join("v").display().to_string(),
                "--set".into(),
                "train.conv_precision=bf16".into(),
                "--steps".into(),
                "0".into(),
            ],
            "vector model",
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
        // A refused setting is not announced as in use first.
        assert!(!err.contains("s/t convolutions in"), "{args:?}: {err}");
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

/// Every subcommand that takes `--input` reads a bare file name relative to the working
/// directory (`--input a.png`), as it reads `./a.png` and absolute paths.
#[test]
fn bare_relative_input_names_are_read_from_the_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = train(&run, &["--steps", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("writable");
    for (name, value) in [("a.png", 3u8), ("b.png", 200)] {
        image::GrayImage::from_pixel(8, 8, image::Luma([value]))
            .save(images.join(name))
            .expect("writable");
    }
    // The working directory holds other things too: an image of another size that sorts
    // first, and a folder. A named file is read alone.
    image::GrayImage::from_pixel(16, 16, image::Luma([9u8]))
        .save(images.join("0-larger.png"))
        .expect("writable");
    std::fs::create_dir(images.join("notes")).expect("writable");
    std::fs::write(images.join("notes/readme.txt"), "not an image").expect("writable");
    let run_arg = run.to_str().expect("utf-8");
    let in_images = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_realnvp"))
            .args(args)
            .current_dir(&images)
            .output()
            .expect("the binary runs")
    };
    let score = |input: &str| {
        let out = in_images(&["score", "--run", run_arg, "--input", input, "--json"]);
        assert!(
            out.status.success(),
            "score --input {input}: {}",
            stderr(&out)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one line");
        assert_eq!(line["input"], input, "the name as given");
        line["bits_per_dim"].as_f64().expect("bits/dim")
    };
    let bare = score("a.png");
    assert_eq!(bare, score("./a.png"));
    let absolute = images.join("a.png");
    assert_eq!(bare, score(absolute.to_str().expect("utf-8")));

    let cases: [&[&str]; 3] = [
        &["encode", "--input", "a.png", "--out", "latents.safetensors"],
        &[
            "manifold",
            "--input",
            "a.png",
            "--input",
            "b.png",
            "--input",
            "b.png",
            "--input",
            "a.png",
            "--rows",
            "2",
            "--cols",
            "2",
            "--out",
            "manifold.png",
        ],
        &["compress", "--input", "a.png", "--out", "compressed.png"],
    ];
    for args in cases {
        let mut full = vec![args[0], "--run", run_arg];
        full.extend_from_slice(&args[1..]);
        let out = in_images(&full);
        assert!(out.status.success(), "{full:?}: {}", stderr(&out));
        let written = args[args.len() - 1];
        assert!(images.join(written).is_file(), "{full:?} wrote {written}");
    }
}

/// `--steps`, `--minutes` and `--seed` are part of the configuration that is checked: a
/// cosine schedule takes its length from `--steps`.
#[test]
fn typed_flags_are_applied_before_the_configuration_is_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = train(
        &dir.path().join("run"),
        &[
            "--set",
            "train.schedule=\"cosine\"",
            "--steps",
            "2",
            "--seed",
            "5",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(dir.path().join("run/config.toml")).expect("written");
    assert!(
        config.contains("max_steps = 2") && config.contains("seed = 5"),
        "{config}"
    );
}

/// A vector model of more than two dimensions (CSV data) has no sample picture: it trains,
/// evaluates and exports without one.
#[test]
fn a_vector_model_of_three_dimensions_trains_without_a_sample_picture() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rows = |n: usize, offset: usize| {
        let mut text = String::from("a,b,c\n");
        for i in offset..offset + n {
            let x = (i as f64 * 0.37).sin();
            let y = (i as f64 * 0.11).cos();
            text.push_str(&format!("{x},{y},{}\n", x * y + 0.1 * (i % 7) as f64));
        }
        text
    };
    std::fs::write(dir.path().join("train.csv"), rows(96, 0)).expect("writable");
    std::fs::write(dir.path().join("test.csv"), rows(32, 500)).expect("writable");
    let config = dir.path().join("table.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\nkind = \"csv\"\ntrain = {:?}\ntest = {:?}\n\n[vector_model]\ncouplings = 2\nhidden = 8\n\n[train]\nbatch_size = 16\neval_every = 2\nsamples = 16\n",
            dir.path().join("train.csv"),
            dir.path().join("test.csv")
        ),
    )
    .expect("writable");
    let run = dir.path().join("run");
    let out = realnvp(&[
        "train",
        "--config",
        config.to_str().expect("utf-8"),
        "--out",
        run.to_str().expect("utf-8"),
        "--steps",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run.join("export/model.safetensors").is_file());
    assert!(!run.join("samples").exists(), "no picture of a 3-D model");
    let eval = realnvp(&["eval", "--run", run.to_str().expect("utf-8"), "--json"]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let json: serde_json::Value = serde_json::from_slice(&eval.stdout).expect("one JSON object");
    assert_eq!(json["examples"], 32);
}

/// A sample grid too large to hold is refused before anything is drawn, naming the limit.
#[test]
fn an_oversized_sample_grid_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = train(&run, &["--steps", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let png = dir.path().join("huge.png");
    let run_arg = run.to_str().expect("utf-8");
    let png_arg = png.to_str().expect("utf-8");
    let cases: [&[&str]; 3] = [
        &["sample", "--n", "100000000"],
        &["sample", "--n", "5001", "--temperatures", "0.5,1"],
        &["extrapolate", "--n", "1000", "--factor", "4"],
    ];
    for args in cases {
        let mut full = vec![args[0], "--run", run_arg, "--out", png_arg];
        full.extend_from_slice(&args[1..]);
        let out = realnvp(&full);
        let err = stderr(&out);
        assert!(!out.status.success(), "{full:?} succeeded");
        assert!(
            err.contains("error: ") && err.contains("10000"),
            "{full:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{full:?}: {err}");
        assert!(!png.exists(), "{full:?} wrote a grid");
    }
    // The limit itself is drawn.
    let out = realnvp(&["sample", "--run", run_arg, "--out", png_arg, "--n", "10000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image_size(&png), (100 * 33 + 1, 100 * 33 + 1));
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("writable");
    for entry in std::fs::read_dir(from).expect("readable") {
        let entry = entry.expect("readable");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copied");
        }
    }
}

/// A run directory written by an earlier realnvp (`tests/fixtures/digits-run`: 4 steps of
/// a small digits model, trained before the run directory and the CLI were reshaped)
/// still evaluates to the figures printed then, draws the same samples, loads from its
/// checkpoint alone, and resumes, keeping the metrics already written.
#[test]
fn a_run_directory_written_before_evaluates_samples_and_resumes() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    copy_tree(&fixtures.join("digits-run"), &run);
    let run_arg = run.to_str().expect("utf-8");

    let eval = realnvp(&["eval", "--run", run_arg, "--json"]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let now: serde_json::Value = serde_json::from_slice(&eval.stdout).expect("JSON");
    let then: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("digits-run-eval.json")).expect("readable"),
    )
    .expect("JSON");
    assert_eq!(now, then, "the same figures as when the run was written");

    let png = dir.path().join("sample.png");
    let png_arg = png.to_str().expect("utf-8");
    let sample = realnvp(&[
        "sample", "--run", run_arg, "--n", "4", "--seed", "3", "--out", png_arg,
    ]);
    assert!(sample.status.success(), "{}", stderr(&sample));
    let pixels = |path: &Path| image::open(path).expect("a PNG").to_rgb8().into_raw();
    assert!(
        pixels(&png) == pixels(&fixtures.join("digits-run-sample.png")),
        "the same samples for the same seed"
    );

    let metrics_before = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let out = train(&run, &["--resume", "--steps", "6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming from"), "{}", stderr(&out));
    let metrics_after = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    assert!(
        metrics_after.starts_with(&metrics_before),
        "the lines written before are kept"
    );
    let steps = metrics_steps(&run);
    assert_eq!(steps.last(), Some(&6), "{steps:?}");
    assert!(steps[metrics_before.lines().count()..]
        .iter()
        .all(|&s| s > 4));

    // Without its export, the run's newest checkpoint is its model.
    std::fs::remove_dir_all(run.join("export")).expect("removable");
    let eval = realnvp(&["eval", "--run", run_arg, "--json"]);
    assert!(eval.status.success(), "{}", stderr(&eval));
}

/// `train.conv_precision` trains with the s/t convolutions in bf16, and `eval
/// --conv-precision` scores one model with each precision: half precision moves bits/dim,
/// but by less than 0.01.
#[test]
fn half_precision_convolutions_train_and_evaluate_close_to_f32() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = train(
        &run,
        &["--steps", "20", "--set", "train.conv_precision=bf16"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("s/t convolutions in bf16"),
        "{}",
        stderr(&out)
    );
    let run_arg = run.to_str().expect("utf-8");
    let bits_per_dim = |precision: &str| {
        let out = realnvp(&[
            "eval",
            "--run",
            run_arg,
            "--limit",
            "100",
            "--conv-precision",
            precision,
            "--json",
        ]);
        assert!(out.status.success(), "{precision}: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(json["examples"], 100, "{precision}");
        json["bits_per_dim"].as_f64().expect("number")
    };
    let exact = bits_per_dim("f32");
    assert!(exact.is_finite() && exact > 0.0, "f32: {exact}");
    for precision in ["bf16", "f16"] {
        let bpd = bits_per_dim(precision);
        assert!(
            bpd != exact && (bpd - exact).abs() < 0.01,
            "{precision}: {bpd} against f32's {exact}"
        );
    }
    let out = realnvp(&["eval", "--run", run_arg, "--conv-precision", "fp16"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fp16") && stderr(&out).contains("bf16"),
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
    let mut child = start_long_run(&run, &["--set", "train.eval_every=3"], false);
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

/// With a fixed seed, stopping and resuming gives the same parameters and learning rates
/// (a warmup, then a cosine decay, its state in the checkpoint) as an uninterrupted run.
#[test]
fn resuming_gives_the_same_parameters_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");
    let every = [
        "--set",
        "train.eval_every=3",
        "--set",
        "train.warmup_steps=2",
        "--set",
        "train.schedule=cosine",
        "--set",
        "train.decay_steps=3",
        "--seed",
        "5",
    ];
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
    let (a, b) = (export_values(&straight), export_values(&split));
    assert!(a.len() > 1000, "{} values", a.len());
    assert!(a == b, "parameters differ after resuming");
    let rates = metrics_series(&straight, "learning_rate");
    assert_eq!(rates.len(), 6, "{rates:?}");
    assert!(
        rates.windows(2).any(|w| w[1].1 < w[0].1) && rates.windows(2).any(|w| w[1].1 > w[0].1),
        "a warmup, then a decay: {rates:?}"
    );
    assert_eq!(metrics_series(&split, "learning_rate"), rates);
}

/// The parameter values of a run's export, loaded with realnvp-core alone. Record files
/// carry random parameter ids, so runs are compared by their values.
fn export_values(run: &Path) -> Vec<f32> {
    let (model, _) =
        realnvp_core::load_model::<burn::backend::Flex>(&run.join("export"), &Default::default())
            .expect("export loads with realnvp-core alone");
    parameter_values(&model)
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
    let child = start_long_run(&run, &["--set", "train.eval_every=2"], true);
    wait_for_checkpoints(&run, 1);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let out = child.wait_with_output().expect("exits");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("interrupted (Ctrl-C or SIGTERM): saving a checkpoint"),
        "{err}"
    );
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

/// A scheduler's SIGTERM stops a run like Ctrl-C: a checkpoint at the step it stopped at
/// and exit 0 with the command that resumes it. `train.checkpoint_every` wrote checkpoints
/// between evaluations before that, and the resumed run ends with the same parameters as
/// an uninterrupted one.
#[test]
fn sigterm_checkpoints_and_the_resumed_run_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (run, straight) = (dir.path().join("run"), dir.path().join("straight"));
    let settings = [
        "--seed",
        "5",
        "--set",
        "train.eval_every=100000",
        "--set",
        "train.checkpoint_every=2",
    ];
    let child = start_long_run(&run, &settings, true);
    // Evaluations are 100000 steps apart: this checkpoint comes from `checkpoint_every`.
    wait_for_checkpoints(&run, 1);
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let out = child.wait_with_output().expect("exits");
    let (err, stdout) = (stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{err}");
    assert!(err.contains("interrupted (Ctrl-C or SIGTERM)"), "{err}");
    assert!(
        stdout.contains(&format!(
            "resume with: realnvp train --out {} --resume",
            run.display()
        )),
        "{stdout}"
    );
    let last_step = *metrics_steps(&run).last().expect("metrics");
    let saved = checkpoints(&run);
    assert!(
        saved
            .last()
            .is_some_and(|c| c.ends_with(format!("step-{last_step:010}"))),
        "{saved:?} vs step {last_step}"
    );
    let step_of = |c: &PathBuf| -> u64 {
        let name = c.file_name().expect("name").to_string_lossy().into_owned();
        name["step-".len()..].parse().expect("step number")
    };
    assert!(
        saved[..saved.len() - 1].iter().all(|c| step_of(c) % 2 == 0),
        "between evaluations, checkpoints only every 2 steps: {saved:?}"
    );

    let target = (last_step + 2).to_string();
    let resumed = train(&run, &["--resume", "--steps", &target]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let uninterrupted = train(
        &straight,
        &[&["--steps", &target][..], &settings[..]].concat(),
    );
    assert!(uninterrupted.status.success(), "{}", stderr(&uninterrupted));
    assert!(
        export_values(&run) == export_values(&straight),
        "parameters differ after SIGTERM and resume"
    );
}

/// `realnvp completions SHELL` prints a completion script naming the subcommands and their
/// options; an unknown shell is an error that lists the known ones.
#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = realnvp(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["realnvp", "train", "sample", "resume", "completions"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = realnvp(&["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bash"), "{}", stderr(&out));
}

/// The model with the best held-out bits/dim is exported to `export/best/` beside the last
/// one, with `best.json` naming its step and figure, which match the metrics.
#[test]
fn the_best_model_is_exported_beside_the_last() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = train(&run, &["--steps", "5", "--set", "train.eval_every=1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tests: Vec<(u64, f64)> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            Some((v["step"].as_u64()?, v["test_bpd"].as_f64()?))
        })
        .collect();
    assert!(tests.len() >= 5, "{tests:?}");
    let best = tests
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("evaluations");
    let note: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("export/best/best.json")).expect("best.json"),
    )
    .expect("JSON");
    assert_eq!(note["step"].as_u64(), Some(best.0), "{note} vs {tests:?}");
    assert_eq!(note["test_bits_per_dim"].as_f64(), Some(best.1));
    realnvp_core::load_model::<burn::backend::Flex>(&run.join("export/best"), &Default::default())
        .expect("the best export loads with realnvp-core alone");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("best model: "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `--device N` above 0 on a CPU backend is one clear error line on every subcommand that
/// builds a model; `--device 0` is the CPU.
#[test]
fn device_beyond_the_cpu_is_one_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let run_arg = run.to_str().expect("utf-8");
    let out = train(&run, &["--steps", "1", "--device", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let png = dir.path().join("s.png");
    let cases: [&[&str]; 4] = [
        &["train", "--out", run_arg, "--steps", "2", "--device", "1"],
        &["eval", "--run", run_arg, "--device", "1"],
        &[
            "sample",
            "--run",
            run_arg,
            "--out",
            png.to_str().expect("utf-8"),
            "--device",
            "3",
        ],
        &["bench", "--models", "digits", "--device", "1"],
    ];
    for args in cases {
        let out = realnvp(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(
            err.contains("--device") && err.contains("has one device, 0"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!png.exists());
}

/// `--init-from` starts a new run from a trained one: at step 0 its weights are the
/// source's; another architecture is one error line naming the tensor and both shapes.
#[test]
fn init_from_starts_a_new_run_from_trained_weights() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (source, tuned, other) = (
        dir.path().join("source"),
        dir.path().join("tuned"),
        dir.path().join("other"),
    );
    let out = train(&source, &["--steps", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for from in [source.clone(), source.join("export")] {
        let _ = std::fs::remove_dir_all(&tuned);
        let from_arg = from.to_str().expect("utf-8");
        let out = train(
            &tuned,
            &["--steps", "0", "--init-from", from_arg, "--seed", "9"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("initialised from the trained model"));
        assert!(
            export_values(&tuned) == export_values(&source),
            "--init-from {from:?}: the weights at step 0 are not the source's"
        );
    }
    let source_arg = source.to_str().expect("utf-8");
    let out = train(
        &other,
        &[
            "--steps",
            "1",
            "--init-from",
            source_arg,
            "--set",
            "model.features=6",
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "another architecture trained");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains("--init-from: parameter `")
            && last.contains("] in the trained model but [")
            && last.contains("] in this run's"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Reads a run's TensorBoard folder with TensorBoard's own `EventAccumulator`: JSON of
/// `{"scalars": {tag: [[step, value]...]}, "images": {tag: [[step, width, height,
/// bytes]...]}}`, every event kept.
const READ_EVENTS: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
acc.Reload()
tags = acc.Tags()
print(json.dumps({
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "images": {t: [[e.step, e.width, e.height, len(e.encoded_image_string)]
                   for e in acc.Images(t)] for t in tags["images"]},
}))
"#;

/// The Python that has the `tensorboard` package: `REALNVP_TENSORBOARD_PYTHON`, else
/// `python3`. `None` (the test then says so and passes) when it cannot import
/// tensorboard, unless `REALNVP_REQUIRE_TENSORBOARD=1` (CI sets it).
fn tensorboard_python() -> Option<String> {
    let python = std::env::var("REALNVP_TENSORBOARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let works = Command::new(&python)
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("REALNVP_REQUIRE_TENSORBOARD").is_ok_and(|v| v == "1");
    match (works, required) {
        (true, _) => Some(python),
        (false, true) => {
            panic!("{python} cannot import tensorboard (REALNVP_REQUIRE_TENSORBOARD=1)")
        }
        (false, false) => {
            eprintln!("skipped: {python} cannot import tensorboard (pip install tensorboard)");
            None
        }
    }
}

/// The scalars of `metrics.jsonl` under `key` as `(step, value)`, in file order. The
/// end-of-run line adds only the held-out figure to TensorBoard, so other keys are read
/// from the logged steps' lines (those with training bits/dim).
fn metrics_series(run: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics written")
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            let logged_step = v["train_bpd"].is_number() || key == "test_bpd";
            let point = (v["step"].as_u64()?, v[key].as_f64()?);
            logged_step.then_some(point)
        })
        .collect()
}

/// TensorBoard reads back every scalar of `metrics.jsonl` and each sample grid, at the
/// right steps, also across a resume from an older checkpoint: the resumed session's
/// event file makes the reader drop the steps logged after that checkpoint.
#[test]
fn tensorboard_reads_back_the_metrics_and_samples_of_a_resumed_run() {
    let Some(python) = tensorboard_python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let every = ["--set", "train.eval_every=3"];
    let out = train(&run, &[&["--steps", "6"], &every[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    // Resume from step 3: steps 4 to 6 are trained and logged again.
    let newest = checkpoints(&run).pop().expect("checkpoints");
    assert!(
        newest.to_string_lossy().ends_with("-0000000006"),
        "{newest:?}"
    );
    std::fs::remove_dir_all(&newest).expect("removable");
    let out = train(&run, &[&["--resume", "--steps", "8"], &every[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let files = std::fs::read_dir(run.join("tensorboard")).expect("tensorboard folder");
    assert_eq!(files.count(), 2, "one event file per session");

    let read = Command::new(&python)
        .args(["-c", READ_EVENTS])
        .arg(run.join("tensorboard"))
        .output()
        .expect("python runs");
    assert!(read.status.success(), "{}", stderr(&read));
    let events: serde_json::Value = serde_json::from_slice(&read.stdout).expect("JSON");
    let scalars = |tag: &str| -> Vec<(u64, f64)> {
        events["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("no scalars {tag}: {events}"))
            .iter()
            .map(|p| (p[0].as_u64().expect("step"), p[1].as_f64().expect("value")))
            .collect()
    };
    for (tag, key) in [
        ("bits_per_dim/train", "train_bpd"),
        ("bits_per_dim/test", "test_bpd"),
        ("learning_rate", "learning_rate"),
        ("grad_norm", "grad_norm"),
        ("images_per_second", "images_per_second"),
    ] {
        let (read, logged) = (scalars(tag), metrics_series(&run, key));
        let steps = |s: &[(u64, f64)]| s.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(steps(&read), steps(&logged), "{tag}");
        for ((_, a), (_, b)) in read.iter().zip(&logged) {
            // Stored as f32.
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{tag}: {a} vs {b}"
            );
        }
    }
    assert_eq!(
        scalars("bits_per_dim/train")
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    // One sample grid per evaluation (steps 3 and 6) and at the end (8); of step 6 only
    // the resumed session's, the first session's two (evaluation and end) dropped.
    let images = events["images"]["samples"]
        .as_array()
        .expect("sample images");
    let steps: Vec<u64> = images
        .iter()
        .map(|i| i[0].as_u64().expect("step"))
        .collect();
    assert_eq!(steps, [3, 6, 8]);
    for image in images {
        let png = run.join(format!("samples/step-{}.png", image[0]));
        let (width, height) = image_size(&png);
        let bytes = std::fs::metadata(&png).expect("sample file").len();
        assert_eq!(
            (image[1].as_u64(), image[2].as_u64(), image[3].as_u64()),
            (Some(width.into()), Some(height.into()), Some(bytes)),
            "{png:?}"
        );
    }
}

/// Started by an MPI launcher as one of several ranks but without `--mpi`, `train` refuses
/// to start (every rank would train the same run alone into the same directory) and says
/// to add `--mpi`; nothing is written.
#[test]
fn ranks_of_an_mpi_launch_without_mpi_refuse_to_train() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_realnvp"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .args([
            "train",
            "--out",
            run.to_str().expect("utf-8"),
            "--steps",
            "1",
        ])
        .output()
        .expect("the binary runs");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("OMPI_COMM_WORLD_SIZE=2") && err.contains("Add --mpi"),
        "{err}"
    );
    assert!(!run.exists(), "nothing written");
}

/// `train --mpi` on a build without the `mpi` feature says how to get one.
#[cfg(not(feature = "mpi"))]
#[test]
fn mpi_needs_a_build_with_the_feature() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = train(&dir.path().join("run"), &["--mpi"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--features mpi") && err.contains("libopenmpi-dev"),
        "{err}"
    );
}
