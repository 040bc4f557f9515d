//! Project automation for realnvp-rs: `cargo xtask <job>`.

use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let result = match Xtask::parse().job {
        Job::CheckBackends => check_backends(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
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
