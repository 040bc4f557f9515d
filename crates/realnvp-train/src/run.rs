//! The training loop ([`trainer`]) and what one optimisation step shares between the
//! workers of a run: one device ([`replicas::Solo`]), threads of this process over
//! burn-collective ([`parallel`]) or MPI ranks (`mpi_replicas`, feature `mpi`), all through
//! [`replicas::Replicas`]; the gradient's norm, clipping and the weight average
//! ([`gradients`]); and fine-tuning's start point ([`init_from`]).

pub(crate) mod gradients;
pub(crate) mod init_from;
#[cfg(feature = "mpi")]
pub mod mpi_replicas;
pub mod parallel;
pub mod replicas;
mod step_vector;
pub mod trainer;
