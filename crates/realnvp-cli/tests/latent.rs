//! End-to-end tests of the latent-space commands (encode, decode, manifold, compress,
//! extrapolate, temperature grids) and of class-conditional models, on real images.

use std::path::Path;
use std::process::{Command, Output};

use realnvp_data::digits::Digits;
use realnvp_data::idx::IdxDataset;
use realnvp_data::ImageArray;

/// Settings that keep a run to seconds.
const SMALL: [&str; 10] = [
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
];

fn realnvp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_realnvp"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = realnvp(args);
    assert!(
        out.status.success(),
        "realnvp {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Trains a small model for `steps` steps (so its couplings are no longer the identity).
fn train(run: &Path, steps: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--out",
        run.to_str().expect("utf-8"),
        "--steps",
        steps,
    ];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    ok(&args);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Grey PNG as bytes, row-major, with its size.
fn grey(png: &Path) -> (Vec<u8>, u32, u32) {
    let image = image::open(png).expect("a PNG").to_luma8();
    let (w, h) = image.dimensions();
    (image.into_raw(), w, h)
}

/// An image's levels as the 8-bit values `decode` writes.
fn as_bytes(image: &[u8], levels: u32) -> Vec<u8> {
    image
        .iter()
        .map(|&l| (l as f64 * 255.0 / (levels - 1) as f64).round() as u8)
        .collect()
}

/// Cell `(row, col)` of a grid PNG written by the CLI: images of `side` pixels enlarged
/// `zoom` times, one-pixel borders; returns the image at its own resolution.
fn cell(grid: &(Vec<u8>, u32, u32), row: usize, col: usize, side: usize, zoom: usize) -> Vec<u8> {
    let (bytes, width, _) = grid;
    let big = side * zoom;
    let (oy, ox) = (row * (big + 1) + 1, col * (big + 1) + 1);
    let mut out = Vec::with_capacity(side * side);
    for y in 0..side {
        for x in 0..side {
            out.push(bytes[(oy + y * zoom) * *width as usize + ox + x * zoom]);
        }
    }
    out
}

/// Encodes test examples, decodes them to PNG files and compares every pixel with the
/// data set; then encodes the PNG files themselves and checks the latents agree.
fn assert_exact_round_trip(run: &Path, test: &ImageArray, dir: &Path) {
    let latents = dir.join("z.safetensors");
    let decoded = dir.join("decoded");
    let indices = "0,1,2,3,4,5,6,7,8,9,10,11";
    ok(&[
        "encode",
        "--run",
        path(run),
        "--test-examples",
        indices,
        "--out",
        path(&latents),
    ]);
    ok(&[
        "decode",
        "--run",
        path(run),
        "--latents",
        path(&latents),
        "--out",
        path(&decoded),
    ]);
    for i in 0..12 {
        let (png, _, _) = grey(&decoded.join(format!("test-{i}.png")));
        assert_eq!(png, as_bytes(test.image(i), test.levels), "test image {i}");
    }
    // The PNG files encode to the same latents and decode to themselves again.
    let again = dir.join("again.safetensors");
    let redecoded = dir.join("redecoded");
    ok(&[
        "encode",
        "--run",
        path(run),
        "--input",
        path(&decoded),
        "--out",
        path(&again),
    ]);
    ok(&[
        "decode",
        "--run",
        path(run),
        "--latents",
        path(&again),
        "--out",
        path(&redecoded),
    ]);
    for i in 0..12 {
        let name = format!("test-{i}.png");
        assert_eq!(
            grey(&decoded.join(&name)),
            grey(&redecoded.join(&name)),
            "{name}"
        );
    }
}

#[test]
fn encode_decode_is_exact_on_digits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    train(&run, "20", &[]);
    let test = Digits::load().expect("embedded").test;
    assert_exact_round_trip(&run, &test, dir.path());
}

#[test]
fn encode_decode_is_exact_on_fashion_mnist() {
    let Ok(data) = IdxDataset::load(Path::new(IdxDataset::FASHION_MNIST_DIR), "fashion-mnist")
    else {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Fashion-MNIST"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/fashion-mnist.toml");
    train(
        &run,
        "3",
        &["--config", path(&config), "--set", "train.eval_every=100"],
    );
    assert_exact_round_trip(&run, &data.test, dir.path());
}

#[test]
fn manifold_corners_and_full_compression_give_back_the_inputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    train(&run, "20", &[]);
    let test = Digits::load().expect("embedded").test;
    let digit = |i: usize| as_bytes(test.image(i), test.levels);

    let manifold = dir.path().join("manifold.png");
    ok(&[
        "manifold",
        "--run",
        path(&run),
        "--test-examples",
        "0,1,2,3",
        "--rows",
        "3",
        "--cols",
        "4",
        "--out",
        path(&manifold),
    ]);
    let grid = grey(&manifold);
    assert_eq!((grid.1, grid.2), (4 * 33 + 1, 3 * 33 + 1));
    for (example, (row, col)) in [(0, 0), (0, 3), (2, 0), (2, 3)].iter().enumerate() {
        assert_eq!(
            cell(&grid, *row, *col, 8, 4),
            digit(example),
            "corner {example}"
        );
    }
    // The middle of the grid is none of the corners.
    assert!((0..4).all(|k| cell(&grid, 1, 1, 8, 4) != digit(k)));

    let compressed = dir.path().join("compress.png");
    let out = ok(&[
        "compress",
        "--run",
        path(&run),
        "--test-examples",
        "4,5,6",
        "--fractions",
        "1,0.5,0",
        "--out",
        path(&compressed),
    ]);
    assert!(out.contains("kept 50.00 %"), "{out}");
    let grid = grey(&compressed);
    for (row, example) in [4, 5, 6].into_iter().enumerate() {
        assert_eq!(
            cell(&grid, row, 0, 8, 4),
            digit(example),
            "100 % of image {example}"
        );
    }
    // Keeping nothing forgets the image: the three rows' last cells are fresh samples.
    assert!((0..3).any(|row| cell(&grid, row, 2, 8, 4) != digit(4 + row)));
}

#[test]
fn extrapolation_and_temperature_grids_have_the_requested_shapes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    train(&run, "5", &[]);
    let big = dir.path().join("big.png");
    let out = ok(&[
        "extrapolate",
        "--run",
        path(&run),
        "--factor",
        "2",
        "--n",
        "4",
        "--out",
        path(&big),
    ]);
    assert!(out.contains("16x16"), "{out}");
    // 2x2 samples of 16x16 pixels, enlarged twice to 32, with borders.
    let (_, w, h) = grey(&big);
    assert_eq!((w, h), (2 * 33 + 1, 2 * 33 + 1));

    let temps = dir.path().join("temps.png");
    ok(&[
        "sample",
        "--run",
        path(&run),
        "--n",
        "5",
        "--temperatures",
        "0,0.5,1",
        "--seed",
        "3",
        "--out",
        path(&temps),
    ]);
    let grid = grey(&temps);
    assert_eq!((grid.1, grid.2), (5 * 33 + 1, 3 * 33 + 1));
    // Temperature 0: every column decodes the zero latent; at 1 they differ.
    let cold: Vec<Vec<u8>> = (0..5).map(|c| cell(&grid, 0, c, 8, 4)).collect();
    assert!(cold.iter().all(|c| *c == cold[0]));
    let warm: Vec<Vec<u8>> = (0..5).map(|c| cell(&grid, 2, c, 8, 4)).collect();
    assert!(warm.iter().any(|c| *c != warm[0]));
    // The class flag needs a class-conditional model.
    let out = realnvp(&[
        "sample",
        "--run",
        path(&run),
        "--class",
        "1",
        "--out",
        path(&temps),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("class-conditional"));
}

#[test]
fn class_conditional_model_samples_classes_and_classifies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    train(
        &run,
        "60",
        &[
            "--set",
            "model.conditional=true",
            "--set",
            "train.eval_every=30",
        ],
    );
    let out = ok(&["classify", "--run", path(&run), "--json"]);
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(result["examples"], 299);
    let accuracy = result["accuracy"].as_f64().expect("accuracy");
    // Ten classes: chance is 0.1; sixty small steps already do far better.
    assert!(accuracy > 0.3, "accuracy {accuracy}");
    let confusion: Vec<Vec<u64>> =
        serde_json::from_value(result["confusion"].clone()).expect("matrix");
    assert_eq!(confusion.len(), 10);
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 299);

    let samples = dir.path().join("three.png");
    ok(&[
        "sample",
        "--run",
        path(&run),
        "--class",
        "3",
        "--n",
        "4",
        "--out",
        path(&samples),
    ]);
    assert!(samples.is_file());
    let out = realnvp(&[
        "sample",
        "--run",
        path(&run),
        "--class",
        "10",
        "--out",
        path(&samples),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("classes 0..9"));

    // eval reports the marginal likelihood of a conditional model and the likelihood given
    // the label; -log p(x) <= -log p(x | label) + ln K, so the marginal exceeds the
    // labelled figure by at most log2(10) / 64 bits/dim.
    let eval = ok(&["eval", "--run", path(&run), "--json"]);
    let eval: serde_json::Value = serde_json::from_str(eval.trim()).expect("JSON");
    let marginal = eval["bits_per_dim"].as_f64().expect("bpd");
    let given = eval["given_label_bits_per_dim"]
        .as_f64()
        .expect("given the label");
    assert!(marginal.is_finite() && given.is_finite());
    assert!(marginal != given);
    assert!(
        marginal <= given + 10f64.log2() / 64.0 + 1e-9,
        "{marginal} {given}"
    );

    // The held-out curve is given the label like the training curve; the marginal is
    // logged beside it. The end-of-run line evaluates the same export as eval.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let evaluated: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["test_bpd"].is_f64()).collect();
    assert!(evaluated.len() >= 2, "{metrics}");
    assert!(evaluated.iter().all(|l| l["test_marginal_bpd"].is_f64()));
    let end = lines.last().expect("an end line");
    assert!(
        (end["test_bpd"].as_f64().unwrap() - given).abs() < 1e-9,
        "{end} {given}"
    );
    assert!((end["test_marginal_bpd"].as_f64().unwrap() - marginal).abs() < 1e-9);
}

#[test]
fn scores_of_two_inputs_are_compared_in_a_histogram() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    train(&run, "20", &[]);
    // Out-of-distribution images: the test digits turned upside down.
    let test = Digits::load().expect("embedded").test;
    let flipped = dir.path().join("flipped");
    std::fs::create_dir_all(&flipped).expect("dir");
    for i in 0..40 {
        let mut bytes = as_bytes(test.image(i), test.levels);
        bytes.reverse();
        image::save_buffer(
            flipped.join(format!("{i}.png")),
            &bytes,
            8,
            8,
            image::ExtendedColorType::L8,
        )
        .expect("PNG written");
    }
    let plot = dir.path().join("hist.png");
    let out = ok(&[
        "score",
        "--run",
        path(&run),
        "--input",
        "data:test",
        "--compare",
        path(&flipped),
        "--plot",
        path(&plot),
    ]);
    assert!(
        out.contains("data:test: 299 inputs") && out.contains("40 inputs"),
        "{out}"
    );
    assert!(out.contains("AUROC"), "{out}");
    assert!(plot.is_file());
}
