//! One worker's share of a data-parallel step as one flat vector, and back: every
//! trained parameter's gradient, every batch-norm running average and the shard's
//! bits/dim, in module order. Summing the vectors of all workers (one all-reduce, in
//! process or over MPI) and dividing by their number gives the whole batch's gradient, the
//! mean running averages and the batch's bits/dim.
//!
//! Layout: `[values of every float tensor (gradient or running average)...,
//! one flag per trained parameter (1 when it has a gradient)..., bits/dim]`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use realnvp_core::Flow;

use crate::error::TrainError;
use crate::run::replicas::ReducedStep;

/// Where the parts of a packed step lie in its flat vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Values of the float tensors, gradients and running averages together.
    elements: usize,
    /// Trained parameters, one presence flag each.
    flags: usize,
}

impl Layout {
    /// Length of the flat vector.
    pub(crate) fn len(&self) -> usize {
        self.elements + self.flags + 1
    }
}

/// This worker's step as one flat vector on its device, and its layout.
pub(crate) fn pack<B: AutodiffBackend>(
    model: &Flow<B>,
    grads: &GradientsParams,
    bits_per_dim: f64,
    device: &B::Device,
) -> (Tensor<B::InnerBackend, 1>, Layout) {
    // The forward pass left its running-average updates pending per thread; a record
    // settles them into the values the visitor below reads.
    let _ = model.clone().into_record();
    let mut pack = Pack::<B> {
        grads,
        parts: Vec::new(),
        present: Vec::new(),
        elements: 0,
    };
    model.visit(&mut pack);
    let layout = Layout {
        elements: pack.elements,
        flags: pack.present.len(),
    };
    let mut parts = pack.parts;
    parts.push(Tensor::from_data(
        TensorData::new(pack.present, [layout.flags]),
        device,
    ));
    parts.push(Tensor::from_data(
        TensorData::new(vec![bits_per_dim as f32], [1]),
        device,
    ));
    (Tensor::cat(parts, 0), layout)
}

/// The summed vector of `workers` workers (at least `layout.len()` long; anything after
/// is ignored) put back: mean gradients, the model with mean running averages, and the
/// batch's mean bits/dim.
pub(crate) fn unpack<B: AutodiffBackend>(
    model: Flow<B>,
    summed: Tensor<B::InnerBackend, 1>,
    layout: Layout,
    workers: usize,
) -> Result<ReducedStep<B>, TrainError> {
    let tail: Vec<f32> = summed
        .clone()
        .slice(layout.elements..layout.len())
        .into_data()
        .into_vec()
        .map_err(|e| TrainError::collective(format!("all-reduce result: {e:?}")))?;
    let mut unpack = Unpack::<B> {
        summed,
        workers: workers as f64,
        offset: 0,
        present: tail[..layout.flags].to_vec(),
        next_grad: 0,
        grads: GradientsParams::new(),
    };
    let model = model.map(&mut unpack);
    Ok(ReducedStep {
        model,
        grads: unpack.grads,
        bits_per_dim: tail[layout.flags] as f64 / workers as f64,
    })
}

/// Gathers, in module order, every trained parameter's gradient (zeros where a parameter
/// has none, marked absent) and every running average into flat vectors.
struct Pack<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    /// Per trained parameter: 1 when it has a gradient.
    present: Vec<f32>,
    elements: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Pack<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        self.elements += n;
        if value.is_require_grad() {
            match self.grads.get::<B::InnerBackend, D>(param.id) {
                Some(grad) => {
                    self.parts.push(grad.reshape([n]));
                    self.present.push(1.0);
                }
                None => {
                    self.parts.push(Tensor::zeros([n], &value.device()));
                    self.present.push(0.0);
                }
            }
        } else {
            self.parts.push(value.inner().reshape([n]));
        }
    }
}

/// The inverse of [`Pack`] on the summed vector: mean gradients into a fresh
/// `GradientsParams`, mean running averages into the model.
struct Unpack<B: AutodiffBackend> {
    summed: Tensor<B::InnerBackend, 1>,
    workers: f64,
    offset: usize,
    present: Vec<f32>,
    next_grad: usize,
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Unpack<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let value = param.val();
        let shape = value.shape();
        let n = shape.num_elements();
        let mean: Tensor<B::InnerBackend, D> = self
            .summed
            .clone()
            .slice(self.offset..self.offset + n)
            .div_scalar(self.workers)
            .reshape(shape);
        self.offset += n;
        if value.is_require_grad() {
            if self.present[self.next_grad] > 0.0 {
                self.grads.register::<B::InnerBackend, D>(param.id, mean);
            }
            self.next_grad += 1;
            param
        } else {
            Param::initialized(param.id, Tensor::from_inner(mean))
        }
    }
}
