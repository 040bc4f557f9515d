//! `realnvp train --mpi` under OpenMPI's `mpirun`, on loopback only: two ranks against
//! the in-process two-worker run, two "nodes" started as mpirun starts them across
//! machines, and the failures (a killed rank, a corrupt image in one rank's shard, a
//! stopped rank). Every wait is bounded; a test that gives up kills mpirun and every
//! process it started (OpenMPI puts each rank in a process group of its own, so they are
//! found through /proc). OpenMPI's TCP transports listen on ports the kernel picks, so
//! parallel CI jobs do not collide.
//!
//! Needs `mpirun` on PATH and a build with `--features mpi` (`.ci/run` installs Debian's
//! OpenMPI 4.1; the option names `plm_rsh_agent`, `rtc_hwloc_vmhole` and
//! `oob_tcp_if_include` are OpenMPI 4's).
#![cfg(feature = "mpi")]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One MPI job at a time: each wants both cores.
static ONE_JOB: Mutex<()> = Mutex::new(());

/// A small digits run: image model with both batch norms and dequantisation noise.
const SMALL: [&str; 14] = [
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
    "--set",
    "train.eval_every=3",
];

/// TCP on loopback only, for the MPI transport and mpirun's own channel.
const LOOPBACK: [&str; 9] = [
    "--mca",
    "btl",
    "tcp,self",
    "--mca",
    "btl_tcp_if_include",
    "lo",
    "--mca",
    "oob_tcp_if_include",
    "lo",
];

fn realnvp() -> &'static str {
    env!("CARGO_BIN_EXE_realnvp")
}

/// `mpirun` on loopback only, one compute thread per rank, its output captured, in a
/// process group of its own; the caller adds the ranks and what they run.
fn mpirun_on_loopback() -> Command {
    let mut command = Command::new("mpirun");
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .args(["-x", "RAYON_NUM_THREADS"])
        .args(LOOPBACK)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    command
}

/// `mpirun -np <ranks> [launch...] realnvp train --mpi --out <run> [args...]`.
fn mpirun(ranks: usize, launch: &[&str], run: &Path, args: &[&str]) -> Command {
    let mut command = mpirun_on_loopback();
    command
        .args(["-np", &ranks.to_string(), "--oversubscribe"])
        .args(launch)
        .args([realnvp(), "train", "--mpi", "--out", path(run)])
        .args(args);
    command
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Waits at most `limit` for `child`; past it, kills its whole process group and fails.
fn finish_within(mut child: Child, limit: Duration, what: &str) -> (Output, Duration) {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waitable").is_some() {
            let output = child.wait_with_output().expect("output");
            return (output, started.elapsed());
        }
        if started.elapsed() > limit {
            kill_group(&child);
            let output = child.wait_with_output().expect("output");
            panic!(
                "{what} did not end within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills `child` (mpirun) and every process below it: the ranks, and on two "nodes" the
/// daemons and their ranks.
fn kill_group(child: &Child) {
    let mut doomed = vec![child.id()];
    let mut found = 0;
    while found < doomed.len() {
        found = doomed.len();
        for (pid, ppid) in processes() {
            if doomed.contains(&ppid) && !doomed.contains(&pid) {
                doomed.push(pid);
            }
        }
    }
    for pid in doomed {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Every process as (pid, parent pid), from /proc.
fn processes() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: the command name may hold spaces.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// Kills the given ranks when dropped, also when a test fails: a stopped rank must not
/// outlive its test.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn run_job(command: &mut Command, limit: Duration, what: &str) -> Output {
    let child = command
        .spawn()
        .expect("mpirun starts (is OpenMPI installed?)");
    finish_within(child, limit, what).0
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// The model fingerprint each rank printed, by rank.
fn fingerprints(output: &Output, ranks: usize) -> Vec<String> {
    let stdout = text(&output.stdout);
    (0..ranks)
        .map(|rank| {
            let prefix = format!("rank {rank}: replicas identical");
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("rank {rank} printed no fingerprint:\n{stdout}"));
            line.rsplit(' ').next().expect("fingerprint").to_string()
        })
        .collect()
}

/// Every parameter value of a run's export.
fn export_values(run: &Path) -> Vec<f32> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{backend::Backend, Tensor};
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.extend(data.to_vec::<f32>().expect("floats"));
        }
    }
    let (model, _) =
        realnvp_core::load_model::<burn::backend::Flex>(&run.join("export"), &Default::default())
            .expect("the export loads");
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

/// A stand-in for ssh: mpirun calls it as `agent [options] HOST COMMAND...` to start its
/// daemon on HOST; this runs the command here instead.
fn remote_shell(dir: &Path) -> PathBuf {
    let agent = dir.join("fake-ssh");
    std::fs::write(
        &agent,
        "#!/bin/sh\n# ssh stand-in: skip options and the host name, run the command here.\nwhile [ \"${1#-}\" != \"$1\" ]; do shift; done\nshift\nexec /bin/sh -c \"$*\"\n",
    )
    .expect("agent written");
    let made_executable = Command::new("chmod")
        .args(["+x", path(&agent)])
        .status()
        .expect("chmod");
    assert!(made_executable.success());
    agent
}

/// `mpirun -np 2` on Flex ends with two bit-identical replicas whose weights equal those
/// of today's in-process two-worker run (`--devices 0,0`) within 1e-6; two "nodes" (a
/// hostfile with two host names, daemons started through a stand-in remote shell, TCP on
/// loopback) give the same weights as one.
#[test]
fn mpi_ranks_match_the_in_process_workers_on_one_node_and_on_two() {
    let _turn = ONE_JOB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let steps = ["--steps", "6", "--seed", "3"];
    let args = [&SMALL[..], &steps[..]].concat();

    let threads = dir.path().join("threads");
    let in_process = Command::new(realnvp())
        .env("RAYON_NUM_THREADS", "1")
        .args(["train", "--devices", "0,0", "--out", path(&threads)])
        .args(&args)
        .output()
        .expect("realnvp runs");
    succeeded(&in_process, "the in-process two-worker run");

    let one_node = dir.path().join("one-node");
    let output = run_job(
        &mut mpirun(2, &[], &one_node, &args),
        Duration::from_secs(300),
        "mpirun -np 2",
    );
    succeeded(&output, "mpirun -np 2");
    let printed = fingerprints(&output, 2);
    assert_eq!(printed[0], printed[1], "the ranks' replicas differ");
    assert!(
        text(&output.stderr).contains("rank 1 of 2"),
        "{}",
        text(&output.stderr)
    );
    let (threads_values, mpi_values) = (export_values(&threads), export_values(&one_node));
    assert!(mpi_values.len() > 1000, "{} values", mpi_values.len());
    let difference = relative_difference(&threads_values, &mpi_values);
    eprintln!("mpirun -np 2 against --devices 0,0: relative L2 difference {difference:e}");
    assert!(difference <= 1e-6, "relative difference {difference:e}");

    let hostfile = dir.path().join("hostfile");
    std::fs::write(&hostfile, "node-a slots=1\nnode-b slots=1\n").expect("hostfile");
    let agent = remote_shell(dir.path());
    let two_nodes = dir.path().join("two-nodes");
    // Both daemons run on this one machine: without `rtc_hwloc_vmhole none` they race to
    // map hwloc's shared topology at the same address, and one in ten starts crashes
    // (OpenMPI 4.1.4; real nodes each have their own).
    let launch = [
        "--hostfile",
        path(&hostfile),
        "--mca",
        "plm_rsh_agent",
        path(&agent),
        "--mca",
        "rtc_hwloc_vmhole",
        "none",
    ];
    let output = run_job(
        &mut mpirun(2, &launch, &two_nodes, &args),
        Duration::from_secs(300),
        "mpirun on two nodes",
    );
    succeeded(&output, "mpirun on two nodes");
    assert!(
        text(&output.stderr).contains("2 node(s)"),
        "mpirun started one daemon per node: {}",
        text(&output.stderr)
    );
    let printed = fingerprints(&output, 2);
    assert_eq!(printed[0], printed[1], "the ranks' replicas differ");
    assert!(
        export_values(&two_nodes) == mpi_values,
        "two nodes and one end with different weights"
    );
}

/// The process ids of the ranks of a local `mpirun` (its children), by rank.
fn rank_pids(mpirun: &Child, ranks: usize) -> Vec<u32> {
    let parent = mpirun.id();
    let started = Instant::now();
    loop {
        let mut pids = vec![None; ranks];
        for (pid, _) in processes().into_iter().filter(|&(_, ppid)| ppid == parent) {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let rank = environ
                .split(|&b| b == 0)
                .filter_map(|var| std::str::from_utf8(var).ok())
                .find_map(|var| var.strip_prefix("OMPI_COMM_WORLD_RANK="))
                .and_then(|r| r.parse::<usize>().ok());
            if let Some(rank) = rank.filter(|&r| r < ranks) {
                pids[rank] = Some(pid);
            }
        }
        if let Some(pids) = pids.iter().copied().collect::<Option<Vec<u32>>>() {
            return pids;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the ranks of mpirun {parent} did not appear"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -{name} {pid}");
}

/// The checkpoints of a run, oldest first.
fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
    });
    found.sort();
    found
}

/// Waits (at most 120 s) until a run holds `count` checkpoints.
fn wait_for_checkpoints(run: &Path, count: usize, job: &Child) {
    let started = Instant::now();
    while checkpoints(run).len() < count {
        if started.elapsed() > Duration::from_secs(120) {
            kill_group(job);
            panic!("no {count} checkpoints in {}", run.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A long run that writes a checkpoint every step.
const LONG: [&str; 6] = [
    "--steps",
    "60",
    "--seed",
    "5",
    "--set",
    "train.checkpoint_every=1",
];

/// A rank killed with SIGKILL mid-run ends every process of the job within 60 s with a
/// non-zero exit; `--resume` under mpirun then ends with the parameters of an
/// uninterrupted run with the same seed.
#[test]
fn a_killed_rank_ends_the_job_and_resume_completes_it() {
    let _turn = ONE_JOB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let args = [&SMALL[..], &LONG[..]].concat();
    let run = dir.path().join("run");
    let job = mpirun(2, &[], &run, &args).spawn().expect("mpirun starts");
    let pids = rank_pids(&job, 2);
    let _cleanup = KillOnDrop(pids.clone());
    wait_for_checkpoints(&run, 3, &job);
    signal(pids[1], "KILL");
    let (output, took) = finish_within(job, Duration::from_secs(60), "the job with a killed rank");
    assert!(!output.status.success(), "{}", text(&output.stderr));
    assert!(
        pids.iter().all(|&pid| !alive(pid)),
        "a rank outlived the job: {pids:?}"
    );
    eprintln!("killed rank: the job ended {took:?} after the kill");
    let saved = checkpoints(&run);
    assert!(saved.len() >= 3, "{saved:?}");

    let resumed = run_job(
        &mut mpirun(2, &[], &run, &[&args[..], &["--resume"]].concat()),
        Duration::from_secs(300),
        "the resumed job",
    );
    succeeded(&resumed, "the resumed job");
    assert!(
        text(&resumed.stderr).contains("resuming from"),
        "{}",
        text(&resumed.stderr)
    );
    let straight = dir.path().join("straight");
    let uninterrupted = run_job(
        &mut mpirun(2, &[], &straight, &args),
        Duration::from_secs(300),
        "the uninterrupted job",
    );
    succeeded(&uninterrupted, "the uninterrupted job");
    assert!(
        export_values(&run) == export_values(&straight),
        "the resumed run ends with other parameters than the uninterrupted one"
    );
}

/// A rank stopped with SIGSTOP stops answering; with `train.collective_timeout_seconds =
/// 5` the others abort the job within 5 + 30 s, naming the step and the silent rank.
#[test]
fn a_stopped_rank_is_caught_by_the_collective_timeout() {
    let _turn = ONE_JOB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let timeout = ["--set", "train.collective_timeout_seconds=5"];
    let args = [&SMALL[..], &LONG[..], &timeout[..]].concat();
    let job = mpirun(2, &[], &run, &args).spawn().expect("mpirun starts");
    let pids = rank_pids(&job, 2);
    // Whatever happens, leave no stopped process behind.
    let _cleanup = KillOnDrop(pids.clone());
    wait_for_checkpoints(&run, 2, &job);
    signal(pids[1], "STOP");
    let (output, took) = finish_within(job, Duration::from_secs(35), "the job with a stopped rank");
    let err = text(&output.stderr);
    assert!(!output.status.success(), "{err}");
    eprintln!("stopped rank: the job ended {took:?} after the stop");
    eprintln!(
        "{}",
        err.lines()
            .find(|l| l.starts_with("rank 0: error:"))
            .unwrap_or("(no error line)")
    );
    // Stopped between two calls, rank 1 never reaches the next; stopped inside one, it
    // reached it and then fell silent.
    assert!(
        err.contains("rank 0: error: rank 0 waited")
            && err.contains("of step")
            && (err.contains("rank 1 never reached it")
                || err.contains("rank 1 reached it, then stopped answering")),
        "{err}"
    );
    assert!(
        !err.contains("rank 1: error:"),
        "the stopped rank blames no one: {err}"
    );
}

/// A corrupt image that only rank 1 reads (in its shard of step 4) ends the job within
/// 60 s with an error naming the file and the rank; the checkpoints of steps 1 to 3 stay
/// intact (the run evaluates from the newest).
#[test]
fn a_corrupt_image_in_one_ranks_shard_ends_the_job_naming_it() {
    use realnvp_data::loader::{ImageSource, Shard, StreamConfig, TrainStream};
    use realnvp_train::data::Splits;

    let _turn = ONE_JOB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let (train, test) = (dir.path().join("train"), dir.path().join("test"));
    for (folder, count) in [(&train, 64u32), (&test, 16)] {
        std::fs::create_dir_all(folder).expect("folder");
        for i in 0..count {
            let image = image::GrayImage::from_fn(8, 8, |x, y| {
                image::Luma([((x * 31 + y * 17 + i * 7) % 256) as u8])
            });
            image
                .save(folder.join(format!("{i:03}.png")))
                .expect("png written");
        }
    }
    let config = dir.path().join("folder.toml");
    std::fs::write(
        &config,
        format!(
            r#"[data]
kind = "image_folder"
path = "{}"
test_path = "{}"
preset = {{ kind = "native" }}
channels = 1
flip = false

[model]
scales = 2
res_blocks = 1
features = 4

[train]
seed = 11
batch_size = 16
max_steps = 8
eval_every = 100
eval_examples = 16
samples = 4
log_every = 1
checkpoint_every = 1
"#,
            path(&train),
            path(&test)
        ),
    )
    .expect("config written");

    // The file rank 1 reads first at step 4: the second half of the batch at offset 48 of
    // epoch 0 (rank 0 reads the first half; neither reads it before).
    let loaded = realnvp_train::RunConfig::load(Some(&config), &[]).expect("valid config");
    let Splits::Images {
        train: ImageSource::Folder { folder, indices },
        ..
    } = Splits::load(&loaded.data, loaded.train.seed).expect("folder scanned")
    else {
        panic!("an image folder")
    };
    let stream = TrainStream::new(
        ImageSource::Folder {
            folder: folder.clone(),
            indices: indices.clone(),
        },
        StreamConfig {
            batch_size: 16,
            seed: 11,
            flip: false,
        },
    )
    .expect("stream");
    let order = stream.order(0);
    let rank_1 = Shard { index: 1, count: 2 }.range(16);
    let corrupt = order[48 + rank_1.start..48 + rank_1.end]
        .iter()
        .map(|&i| folder.files()[indices[i]].clone())
        // The scan reads the first file's header: keep that one whole.
        .find(|file| file != &folder.files()[0])
        .expect("a file of rank 1's shard");
    std::fs::write(&corrupt, b"this is not a PNG file").expect("file corrupted");

    let run = dir.path().join("run");
    let job = mpirun(2, &[], &run, &["--config", path(&config)])
        .spawn()
        .expect("mpirun starts");
    let (output, took) =
        finish_within(job, Duration::from_secs(60), "the job with a corrupt image");
    let err = text(&output.stderr);
    assert!(!output.status.success(), "{err}");
    eprintln!("corrupt image: the job ended after {took:?}");
    let name = corrupt
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        err.contains("rank 1: error:") && err.contains(&name),
        "the error names rank 1 and {name}: {err}"
    );
    let saved = checkpoints(&run);
    assert!(
        saved.last().is_some_and(|c| c.ends_with("step-0000000003")),
        "{saved:?}"
    );
    let evaluated = Command::new(realnvp())
        .args(["eval", "--run", path(&run), "--limit", "8"])
        .output()
        .expect("realnvp runs");
    assert!(evaluated.status.success(), "{}", text(&evaluated.stderr));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    for line in metrics.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("whole metrics lines");
    }
}

/// Ranks started with different training settings (mpirun's `A : B` form) stop at the
/// start, each naming the other rank, before any step.
#[test]
fn ranks_with_different_settings_stop_at_the_start() {
    let _turn = ONE_JOB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let rank = |learning_rate: &str| {
        [
            "-np",
            "1",
            realnvp(),
            "train",
            "--mpi",
            "--out",
            path(&run),
            "--steps",
            "2",
            "--set",
            learning_rate,
        ]
        .map(String::from)
    };
    let mut command = mpirun_on_loopback();
    command
        .args(rank("train.learning_rate=1e-3"))
        .arg(":")
        .args(rank("train.learning_rate=2e-3"));
    let output = run_job(
        &mut command,
        Duration::from_secs(60),
        "ranks with different settings",
    );
    let err = text(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains(
            "rank 1's run configuration (model and training settings) differs from rank 0's"
        ) || err.contains(
            "rank 0's run configuration (model and training settings) differs from rank 1's"
        ),
        "{err}"
    );
    assert!(checkpoints(&run).is_empty(), "no step was taken");
}
