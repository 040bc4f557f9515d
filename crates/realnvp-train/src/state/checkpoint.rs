//! Checkpoints: model, optimiser and stream state, written atomically (a temporary
//! directory renamed into place) and verified by checksum when read back, so that a run
//! killed at any point, or a damaged file, never leaves an unusable newest checkpoint.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Record, Recorder};
use burn::tensor::backend::Backend;
use realnvp_data::loader::StreamPosition;
use serde::{Deserialize, Serialize};

use crate::error::{error_chain, TrainError};

/// Name of the model's record in a checkpoint (`model.bin`).
pub(crate) const MODEL: &str = "model";
/// Name of the optimiser's record.
pub(crate) const OPTIMIZER: &str = "optimizer";
/// Name of the weight average's record, when the run keeps one.
pub(crate) const EMA: &str = "ema";
/// Name of the learning-rate schedule's record.
pub(crate) const SCHEDULE: &str = "schedule";

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps done.
    pub step: u64,
    /// Where the training stream continues.
    pub position: StreamPosition,
    /// Seconds of training so far (for `max_minutes`).
    pub elapsed_seconds: f64,
    /// Best held-out bits/dim so far and its step.
    pub best: Option<(f64, u64)>,
    /// Non-finite steps skipped so far.
    pub skipped_steps: u64,
    /// Data-parallel workers the run was trained with (1 in checkpoints written before
    /// data-parallel training existed).
    #[serde(default = "one_worker")]
    pub workers: u32,
}

fn one_worker() -> u32 {
    1
}

impl TrainState {
    /// The state of a run that has not taken a step, trained by `workers` workers.
    pub fn fresh(workers: u32) -> Self {
        Self {
            step: 0,
            position: StreamPosition::default(),
            elapsed_seconds: 0.0,
            best: None,
            skipped_steps: 0,
            workers,
        }
    }
}

/// The state file and the checksums of the tensor files of one checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    state: TrainState,
    /// File name -> (bytes, FNV-1a 64 checksum).
    files: Vec<(String, u64, u64)>,
}

const MANIFEST: &str = "state.json";

/// FNV-1a, 64 bits: enough to notice a damaged file (or a replica that drifted).
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The checkpoints directory of a run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

/// A checkpoint's tensor files, serialised.
pub struct Payload {
    files: Vec<(String, Vec<u8>)>,
}

impl Payload {
    /// An empty payload.
    pub fn new() -> Self {
        Self { files: Vec::new() }
    }

    /// Adds a record (model, optimiser, averaged weights) under `name`.
    pub fn add<R: Record<B>, B: Backend>(
        &mut self,
        name: &str,
        record: R,
    ) -> Result<(), TrainError> {
        let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(record, ())
            .map_err(|e| TrainError::Checkpoint {
                path: name.into(),
                message: format!("cannot serialise: {e}"),
            })?;
        self.files.push((format!("{name}.bin"), bytes));
        Ok(())
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::new()
    }
}

/// A checkpoint read back and verified.
pub struct Loaded {
    /// Its directory.
    pub path: PathBuf,
    /// The training state.
    pub state: TrainState,
    files: Vec<(String, Vec<u8>)>,
}

impl Loaded {
    /// A start point held in memory: `state` and the records of `payload` (a fresh run's
    /// initial model), as if read back from a checkpoint at `path`.
    pub fn in_memory(path: &Path, state: TrainState, payload: Payload) -> Self {
        Self {
            path: path.to_path_buf(),
            state,
            files: payload.files,
        }
    }

    /// The checkpoint as one byte string, to hand to other workers: a length-prefixed
    /// JSON header (state, file names and sizes), then the files one after another.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = Manifest {
            state: self.state.clone(),
            files: self
                .files
                .iter()
                .map(|(name, bytes)| (name.clone(), bytes.len() as u64, checksum(bytes)))
                .collect(),
        };
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        for (_, bytes) in &self.files {
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Reads what [`Loaded::to_bytes`] wrote, verifying every file's size and checksum;
    /// `path` names where the bytes came from in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, TrainError> {
        let damaged = |message: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
            .ok_or_else(|| damaged("start state too short".into()))?;
        let header = bytes
            .get(8..8 + header_len)
            .ok_or_else(|| damaged("start state header cut short".into()))?;
        let manifest: Manifest = serde_json::from_slice(header)
            .map_err(|e| damaged(format!("unreadable start state header: {e}")))?;
        let mut offset = 8 + header_len;
        let mut files = Vec::new();
        for (name, len, sum) in manifest.files {
            let file = bytes
                .get(offset..offset + len as usize)
                .filter(|file| checksum(file) == sum)
                .ok_or_else(|| damaged(format!("`{name}` damaged in transfer")))?;
            files.push((name, file.to_vec()));
            offset += len as usize;
        }
        Ok(Self {
            path: path.to_path_buf(),
            state: manifest.state,
            files,
        })
    }

    /// Decodes the record stored under `name`, if present.
    pub fn record<R: Record<B>, B: Backend>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Option<R>, TrainError> {
        let file = format!("{name}.bin");
        let Some((_, bytes)) = self.files.iter().find(|(n, _)| *n == file) else {
            return Ok(None);
        };
        BinBytesRecorder::<FullPrecisionSettings>::default()
            .load(bytes.clone(), device)
            .map(Some)
            .map_err(|e| TrainError::Checkpoint {
                path: self.path.join(&file),
                message: format!("does not fit this model: {e}"),
            })
    }

    /// Loads the record `name` into `module`.
    pub fn load_into<B: Backend, M: Module<B>>(
        &self,
        name: &str,
        module: M,
        device: &B::Device,
    ) -> Result<M, TrainError> {
        match self.record::<M::Record, B>(name, device)? {
            Some(record) => Ok(module.load_record(record)),
            None => Err(TrainError::Checkpoint {
                path: self.path.clone(),
                message: format!("no `{name}.bin`"),
            }),
        }
    }
}

impl Checkpoints {
    /// The checkpoints in `dir` (a run directory's `checkpoints/`: see
    /// [`crate::state::run_dir::RunDir::checkpoints`]).
    pub fn in_dir(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory holding the checkpoints.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checkpoint directories, oldest first (by step).
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        found.sort();
        found
    }

    /// Writes a checkpoint for `state` atomically, then keeps the newest `keep` and the
    /// best one. Returns its directory.
    pub fn save(
        &self,
        state: &TrainState,
        payload: Payload,
        keep: usize,
    ) -> Result<PathBuf, TrainError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        let name = format!("step-{:010}", state.step);
        let tmp = self.dir.join(format!(".tmp-{name}"));
        let target = self.dir.join(&name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        let mut files = Vec::new();
        for (file, bytes) in &payload.files {
            let path = tmp.join(file);
            write_synced(&path, bytes)?;
            files.push((file.clone(), bytes.len() as u64, checksum(bytes)));
        }
        let manifest = Manifest {
            state: state.clone(),
            files,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| TrainError::Checkpoint {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        write_synced(&tmp.join(MANIFEST), &json)?;
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| TrainError::io(&target, e))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| TrainError::io(&target, e))?;
        self.prune(keep, state.best.map(|(_, step)| step));
        Ok(target)
    }

    /// Removes all but the newest `keep` checkpoints and the one of step `best`.
    fn prune(&self, keep: usize, best: Option<u64>) {
        let all = self.list();
        let excess = all.len().saturating_sub(keep.max(1));
        for (step, path) in all.into_iter().take(excess) {
            if Some(step) != best {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }

    /// Reads and verifies one checkpoint directory.
    pub fn read(path: &Path) -> Result<Loaded, TrainError> {
        let manifest_path = path.join(MANIFEST);
        let text = std::fs::read(&manifest_path).map_err(|e| TrainError::io(&manifest_path, e))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| TrainError::Checkpoint {
                path: manifest_path.clone(),
                message: format!("unreadable: {e}"),
            })?;
        let mut files = Vec::new();
        for (file, len, sum) in manifest.files {
            let file_path = path.join(&file);
            let bytes = std::fs::read(&file_path).map_err(|e| TrainError::io(&file_path, e))?;
            if bytes.len() as u64 != len || checksum(&bytes) != sum {
                return Err(TrainError::Checkpoint {
                    path: file_path,
                    message: format!(
                        "damaged: {} bytes, checksum mismatch (expected {len} bytes)",
                        bytes.len()
                    ),
                });
            }
            files.push((file, bytes));
        }
        Ok(Loaded {
            path: path.to_path_buf(),
            state: manifest.state,
            files,
        })
    }

    /// The newest checkpoint that reads back intact; damaged newer ones are reported on
    /// stderr and skipped. `None` when there is none.
    pub fn latest(&self) -> Option<Loaded> {
        for (_, path) in self.list().into_iter().rev() {
            match Self::read(&path) {
                Ok(loaded) => return Some(loaded),
                Err(e) => eprintln!("warning: skipping damaged checkpoint: {}", error_chain(&e)),
            }
        }
        None
    }
}

/// Writes `bytes` to `path` and flushes them to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    file.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    file.sync_all().map_err(|e| TrainError::io(path, e))
}

/// Writes a small text file atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}
