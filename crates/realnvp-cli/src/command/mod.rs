//! The subcommands, one module each: its `Args` (the flags) and their `run`.

pub mod bench;
pub mod classify;
pub mod completions;
pub mod compress;
pub mod decode;
pub mod describe;
pub mod encode;
pub mod eval;
pub mod extrapolate;
pub mod manifold;
pub mod sample;
pub mod score;
pub mod train;

/// `--split`: which split of the run's data set.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum SplitArg {
    // (Plain comments: a doc comment would become the value's help text.)
    // The held-out split.
    Test,
    // The training split.
    Train,
}

impl From<SplitArg> for realnvp_train::Split {
    fn from(split: SplitArg) -> Self {
        match split {
            SplitArg::Test => realnvp_train::Split::Test,
            SplitArg::Train => realnvp_train::Split::Train,
        }
    }
}
