//! What a run writes for a person to read: metrics and progress (`journal`), learning
//! curves and histograms ([`plot`]), TensorBoard event files ([`tensorboard`]), sample
//! grids and scatter densities ([`grid`]).

pub mod grid;
pub(crate) mod journal;
pub mod plot;
pub mod tensorboard;
