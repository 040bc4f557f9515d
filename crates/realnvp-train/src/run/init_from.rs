//! Fine-tuning: a new run's initial weights taken from a trained run or an export
//! (`realnvp train --init-from DIR`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use burn_store::{ModuleSnapshot, TensorSnapshot};
use realnvp_core::flow::WEIGHTS_FILE;
use realnvp_core::{AutodiffConvBackend, Flow};

use crate::error::TrainError;
use crate::state::run_dir::RunDir;

/// Replaces the weights (and batch-norm running averages) of `model`, freshly initialised
/// for this run, with those of the trained model in `dir`: an export directory, or a run
/// directory (its export, else its newest checkpoint). The two architectures must agree
/// tensor by tensor; a tensor missing on either side, or of another shape, is an error
/// naming it and both shapes.
pub(crate) fn init_from<B: AutodiffConvBackend>(
    mut model: Flow<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<Flow<B>, TrainError> {
    let source = if dir.join(WEIGHTS_FILE).is_file() {
        realnvp_core::load_model::<B::InnerBackend>(dir, device)?.0
    } else {
        RunDir::at(dir).load_model::<B::InnerBackend>(device)?.0
    };
    let theirs = source.collect(None, None, false);
    check_shapes(&theirs, &model.collect(None, None, false), dir)?;
    let result = model.apply(theirs, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(mismatch(
            dir,
            format!(
                "{} tensors could not be applied, {} missing (first error: {:?})",
                result.errors.len(),
                result.missing.len(),
                result.errors.first()
            ),
        ));
    }
    Ok(model)
}

/// Checks that `theirs` (the trained model's tensors) and `ours` (this run's) hold the same
/// tensor paths with the same shapes.
fn check_shapes(
    theirs: &[TensorSnapshot],
    ours: &[TensorSnapshot],
    dir: &Path,
) -> Result<(), TrainError> {
    let by_path: HashMap<String, &TensorSnapshot> =
        theirs.iter().map(|t| (t.full_path(), t)).collect();
    for mine in ours {
        let path = mine.full_path();
        match by_path.get(&path) {
            None => {
                return Err(mismatch(
                    dir,
                    format!(
                        "parameter `{path}` {:?} of this run's model is not in the trained model (another architecture: compare model.toml)",
                        mine.shape.as_slice()
                    ),
                ))
            }
            Some(trained) if trained.shape != mine.shape => {
                return Err(mismatch(
                    dir,
                    format!(
                        "parameter `{path}` is {:?} in the trained model but {:?} in this run's (same architecture needed: compare model.toml)",
                        trained.shape.as_slice(),
                        mine.shape.as_slice()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let our_paths: HashSet<String> = ours.iter().map(TensorSnapshot::full_path).collect();
    if let Some(extra) = theirs.iter().find(|t| !our_paths.contains(&t.full_path())) {
        return Err(mismatch(
            dir,
            format!(
                "parameter `{}` {:?} of the trained model is not in this run's model (another architecture: compare model.toml)",
                extra.full_path(),
                extra.shape.as_slice()
            ),
        ));
    }
    Ok(())
}

fn mismatch(dir: &Path, message: String) -> TrainError {
    TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("--init-from: {message}"),
    }
}
