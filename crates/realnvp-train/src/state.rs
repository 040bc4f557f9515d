//! What persists between invocations of a run: the run directory and its layout
//! ([`run_dir`]), crash-safe checkpoints ([`checkpoint`]) and the learning-rate schedule
//! ([`schedule`]).

pub mod checkpoint;
pub mod run_dir;
pub mod schedule;
