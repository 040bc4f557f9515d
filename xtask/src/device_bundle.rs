//! `cargo xtask device-bundle`: everything the GPU plan (`../shared/GPU.md`, items 1 and 2)
//! needs on a GPU machine that has no Rust toolchain, in one folder.
//!
//! The bundle holds the `realnvp` CLI built for CUDA and for wgpu and the backend-parity
//! test built with both (CUDA and wgpu against Flex), stripped and gzipped (together they
//! would not fit the 64 MiB the device tool carries otherwise), the PyTorch reference
//! script when it is given, and `run.sh`, which unpacks the binaries into a temporary
//! folder, runs the parity test, `realnvp bench` on both GPU backends and the reference on
//! the same shapes, and writes JSON lines and logs into a results folder. CUDA's libraries
//! are loaded at run time (burn-cuda's cudarc), so the binaries need nothing else from the
//! build machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::{build_cli, torch_arguments, Backend};

/// Options of `cargo xtask device-bundle`.
#[derive(Args, Debug)]
pub struct DeviceBundleArgs {
    /// The bundle folder (replaced); `device-bundle/` is git-ignored, ready for the device
    /// tool's `carry`.
    #[arg(long, default_value = "device-bundle")]
    out: PathBuf,
    /// The PyTorch reference script copied into the bundle (`torch_realnvp.py`); the
    /// bundle goes without it, saying so, when the file is absent.
    #[arg(long, default_value = "../shared/bench/torch_realnvp.py")]
    torch_script: PathBuf,
    /// The largest bundle allowed, in MiB (the device tool carries 64 MiB in all, the
    /// working tree of about 2 MiB included).
    #[arg(long, default_value_t = 60)]
    max_mib: u64,
}

/// The benchmark architectures `run.sh` measures, as `realnvp bench --models` names them.
const MODELS: [&str; 3] = ["digits", "fashion-mnist", "cifar10"];

/// Builds, strips and copies the binaries, writes `run.sh`, and checks the size.
pub fn device_bundle(args: &DeviceBundleArgs) -> Result<(), String> {
    let out = &args.out;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for backend in [Backend::Cuda, Backend::Wgpu] {
        let name = format!("realnvp-{}", backend.feature());
        pack(build_cli(backend, false)?, out, &name)?;
    }
    pack(&build_parity_test()?, out, "backend_parity")?;
    let torch = copy_torch_script(&args.torch_script, out)?;
    write_file(&out.join("run.sh"), &run_script(torch), true)?;
    write_file(&out.join("README.txt"), README, false)?;
    check_size(out, args.max_mib)
}

/// Builds the backend-parity test with the `cuda` feature (wgpu is on by default) and
/// returns its executable, as cargo reports it.
fn build_parity_test() -> Result<PathBuf, String> {
    eprintln!("xtask: building the backend-parity test with --features cuda");
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo_bin)
        .args(["test", "--release", "--package", "realnvp-tests"])
        .args(["--features", "cuda", "--test", "backend_parity"])
        .args(["--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {cargo_bin}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the backend-parity test failed ({})",
            output.status
        ));
    }
    test_executable(&String::from_utf8_lossy(&output.stdout), "backend_parity")
        .ok_or_else(|| "cargo did not report the backend_parity test executable".to_string())
}

/// The executable of test target `name` in cargo's `--message-format=json` output.
fn test_executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Writes `from` into `out` as `name.gz`, without its symbols (binutils' `strip`, then
/// `gzip`; `run.sh` unpacks it).
fn pack(from: &Path, out: &Path, name: &str) -> Result<(), String> {
    let stripped = out.join(name);
    run_tool(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&stripped)
            .arg(from),
        "strip (install binutils)",
    )?;
    let mib = |path: &Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / MIB;
    let stripped_mib = mib(&stripped);
    run_tool(
        Command::new("gzip").args(["-9", "-n", "-f"]).arg(&stripped),
        "gzip",
    )?;
    let packed = out.join(format!("{name}.gz"));
    eprintln!(
        "xtask: {} ({stripped_mib:.1} MiB stripped, {:.1} MiB packed)",
        packed.display(),
        mib(&packed)
    );
    Ok(())
}

/// Runs `command`, failing with `what` when it cannot start or fails.
fn run_tool(command: &mut Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Copies the PyTorch reference into the bundle; whether it was there.
fn copy_torch_script(script: &Path, out: &Path) -> Result<bool, String> {
    if !script.is_file() {
        eprintln!(
            "xtask: {} not found: the bundle will have no PyTorch reference (pass --torch-script)",
            script.display()
        );
        return Ok(false);
    }
    std::fs::copy(script, out.join("torch_realnvp.py"))
        .map_err(|e| format!("{}: {e}", script.display()))?;
    Ok(true)
}

/// Writes `text` to `path`, executable when `executable`.
fn write_file(path: &Path, text: &str, executable: bool) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// Fails when the bundle's files add up to more than `max_mib`.
fn check_size(out: &Path, max_mib: u64) -> Result<(), String> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(out).map_err(|e| format!("{}: {e}", out.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", out.display()))?;
        bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
    }
    let mib = bytes as f64 / MIB;
    if mib > max_mib as f64 {
        return Err(format!(
            "the bundle in {} has {mib:.1} MiB, more than --max-mib {max_mib}",
            out.display()
        ));
    }
    println!(
        "device bundle: {} ({mib:.1} MiB); on the GPU machine run `{}/run.sh RESULTS_DIR`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `run.sh`: the parity test, `realnvp bench` on CUDA and wgpu (and on CUDA again with
/// bf16 and f16 convolutions), and (when bundled) the PyTorch reference on the same
/// shapes, with peak GPU memory from `nvidia-smi`.
fn run_script(torch: bool) -> String {
    let mut script = String::from(RUN_HEAD);
    for backend in ["cuda", "wgpu"] {
        script.push_str(&format!(
            "measure bench-{backend} \"$bin/realnvp-{backend}\" bench --models {}\n",
            MODELS.join(",")
        ));
    }
    // The s/t convolutions in half precision on the tensor cores (`train.conv_precision`).
    for precision in ["bf16", "f16"] {
        script.push_str(&format!(
            "measure bench-cuda-{precision} \"$bin/realnvp-cuda\" bench --models {} \
             --conv-precision {precision}\n",
            MODELS.join(",")
        ));
    }
    if torch {
        for model in MODELS {
            let [channels, size, scales, blocks, features] =
                torch_arguments(model).expect("every benchmark model has PyTorch arguments");
            script.push_str(&format!(
                "measure torch-{model} \"$python\" \"$here/torch_realnvp.py\" speed --device cuda \
                 --channels {channels} --size {size} --scales {scales} --blocks {blocks} \
                 --features {features} --batch 64 --iters 6\n"
            ));
        }
    } else {
        script.push_str("echo 'no torch_realnvp.py in this bundle: PyTorch not measured'\n");
    }
    script.push_str(RUN_TAIL);
    script
}

const RUN_HEAD: &str = r#"#!/usr/bin/env bash
# realnvp-rs on a GPU (../shared/GPU.md, items 1 and 2), from `cargo xtask device-bundle`.
# Usage: run.sh RESULTS_DIR [PYTHON]   (PYTHON with torch for the reference; default python3)
# Writes into RESULTS_DIR: gpu.txt (nvidia-smi), <step>.jsonl (JSON results), <step>.log
# (stderr), <step>.gpu-mib (peak GPU memory in use while the step ran, from nvidia-smi)
# and status.txt (each step's exit status). Every step runs even when one fails.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: run.sh RESULTS_DIR [PYTHON]}"
python="${2:-python3}"
mkdir -p "$out"
# The binaries travel gzipped; unpack them where they can be executed.
bin="$(mktemp -d "${TMPDIR:-/tmp}/realnvp-bundle.XXXXXX")"
trap 'rm -rf "$bin"' EXIT
for packed in "$here"/*.gz; do
    name="$(basename "$packed" .gz)"
    gzip -dc "$packed" > "$bin/$name" && chmod +x "$bin/$name"
done
nvidia-smi > "$out/gpu.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$out/gpu.txt" 2>&1
failed=0

# measure NAME COMMAND...: runs COMMAND, its stdout into NAME.jsonl and stderr into
# NAME.log, while nvidia-smi samples the memory in use every 100 ms.
measure() {
    local name=$1; shift
    echo "== $name: $*"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 \
        > "$out/$name.gpu-samples" 2>/dev/null &
    local sampler=$!
    local start=$SECONDS
    "$@" > "$out/$name.jsonl" 2> "$out/$name.log"
    local rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    sort -n "$out/$name.gpu-samples" | tail -n 1 > "$out/$name.gpu-mib"
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/status.txt"
    [ "$rc" = 0 ] || failed=1
}

# The wgpu half of the parity test must run (on the GPU's Vulkan driver), not skip.
export REALNVP_REQUIRE_WGPU=1
measure parity "$bin/backend_parity" --nocapture --test-threads 1
"#;

const RUN_TAIL: &str = r#"cat "$out"/*.jsonl 2>/dev/null
exit "$failed"
"#;

const README: &str = "\
realnvp-rs device bundle (cargo xtask device-bundle)

  realnvp-cuda.gz, realnvp-wgpu.gz   the realnvp CLI built with one GPU backend each
  backend_parity.gz                  Flex against CUDA and wgpu: likelihoods, inverses,
                                     gradients (stripped and gzipped: gzip -dc to unpack)
  torch_realnvp.py                   the PyTorch reference (when bundled)
  run.sh RESULTS_DIR [PYTHON]        runs all of them, results and logs into RESULTS_DIR

CUDA's libraries are loaded at run time; wgpu needs the Vulkan loader (libvulkan1) and the
NVIDIA driver's Vulkan ICD. Training on real data: realnvp-cuda train --config ... as on
the CPU (the configs and data are not in the bundle).
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_executable_in_cargos_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"realnvp_core"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"backend_parity"},"executable":"/t/release/deps/backend_parity-abc"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executable(messages, "backend_parity"),
            Some(PathBuf::from("/t/release/deps/backend_parity-abc"))
        );
        assert_eq!(test_executable(messages, "other"), None);
    }

    #[test]
    fn run_script_measures_every_model_on_both_backends_and_pytorch() {
        let script = run_script(true);
        assert!(script.contains("measure parity"));
        assert!(
            script.contains("\"$bin/realnvp-cuda\" bench --models digits,fashion-mnist,cifar10")
        );
        assert!(
            script.contains("\"$bin/realnvp-wgpu\" bench --models digits,fashion-mnist,cifar10")
                && script.contains("--conv-precision bf16")
        );
        assert!(script.contains("--channels 3 --size 32 --scales 2 --blocks 8 --features 64"));
        assert!(!run_script(false).contains("torch_realnvp.py\" speed"));
    }
}
