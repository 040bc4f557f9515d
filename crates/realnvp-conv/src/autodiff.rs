//! `ConvBackend` for Burn's autodiff backend: the forward runs on the inner backend and the
//! backward step calls the inner backend's `conv3x3_backward` (or `conv1x1_backward`).
//!
//! Under a checkpointing strategy (`Autodiff<B, BalancedCheckpointing>`) the convolutions
//! keep their outputs (compute-bound) while the batch norm + ReLU between them is
//! recomputed in the backward pass from its input (memory-bound), so an s/t network keeps
//! one activation per convolution instead of two. Without one (the default) every output
//! is kept, as before.

use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;
use std::marker::PhantomData;

use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::retro_forward::RetroForward;
use burn_autodiff::checkpoint::state::BackwardStates;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};

use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::{ConvBackend, NormReluBackend};

/// Which of the extension's convolutions a tracked step ran.
#[derive(Debug, Clone, Copy)]
enum Window {
    /// [`ConvBackend::conv3x3`].
    Three,
    /// [`ConvBackend::conv1x1`].
    One,
}

impl Window {
    fn forward<B: ConvBackend>(
        self,
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
    ) -> FloatTensor<B> {
        match self {
            Window::Three => B::conv3x3(x, weight, bias),
            Window::One => B::conv1x1(x, weight, bias),
        }
    }

    fn backward<B: ConvBackend>(
        self,
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        output_grad: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        match self {
            Window::Three => B::conv3x3_backward(x, weight, output_grad),
            Window::One => B::conv1x1_backward(x, weight, output_grad),
        }
    }
}

/// The backward step of a convolution without bias; parents `[x, weight]`.
#[derive(Debug)]
struct Conv(Window);

/// The backward step of a convolution with bias; parents `[x, weight, bias]`.
#[derive(Debug)]
struct ConvBias(Window);

/// Gradients of `x` and `weight` from the checkpointed inputs, registered for the parents
/// that need them (none computed when neither does; otherwise both, as one call).
fn register_input_grads<B: ConvBackend>(
    window: Window,
    parents: [Option<NodeId>; 2],
    state: (NodeId, NodeId),
    grad: FloatTensor<B>,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
) {
    let [node_x, node_weight] = parents;
    if node_x.is_none() && node_weight.is_none() {
        return;
    }
    let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(state.0);
    let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(state.1);
    let (x_grad, weight_grad) = window.backward::<B>(x, weight, grad);
    if let Some(id) = node_x {
        grads.register::<B>(id, x_grad);
    }
    if let Some(id) = node_weight {
        grads.register::<B>(id, weight_grad);
    }
}

impl<B: ConvBackend> Backward<B, 2> for Conv {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckp: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x, weight] = ops
            .parents
            .each_ref()
            .map(|node| node.as_ref().map(|n| n.id));
        register_input_grads::<B>(self.0, [x, weight], ops.state, grad, grads, ckp);
    }
}

impl<B: ConvBackend> Backward<B, 3> for ConvBias {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckp: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x, weight, bias] = ops
            .parents
            .each_ref()
            .map(|node| node.as_ref().map(|n| n.id));
        if let Some(id) = bias {
            // d/dbias[o] = sum over batch and pixels of the output gradient (summing the
            // batch first keeps every step on contiguous data: no copy).
            let [_, out, h, w] = grad.shape().dims();
            let per_pixel =
                B::float_reshape(B::float_sum_dim(grad.clone(), 0), [out, h * w].into());
            let bias_grad = B::float_reshape(B::float_sum_dim(per_pixel, 1), [out].into());
            grads.register::<B>(id, bias_grad);
        }
        register_input_grads::<B>(self.0, [x, weight], ops.state, grad, grads, ckp);
    }
}

/// `window`'s convolution on the inner backend, tracked so that its backward step calls
/// the inner backend's backward kernel.
fn tracked<B: ConvBackend, C: CheckpointStrategy>(
    window: Window,
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
) -> FloatTensor<Autodiff<B, C>> {
    match bias {
        Some(bias) => match ConvBias(window)
            .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight));
                let output =
                    window.forward::<B>(x.primitive, weight.primitive, Some(bias.primitive));
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(window.forward::<B>(
                x.primitive,
                weight.primitive,
                Some(bias.primitive),
            )),
        },
        None => match Conv(window)
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight));
                prep.finish(
                    state,
                    window.forward::<B>(x.primitive, weight.primitive, None),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(window.forward::<B>(x.primitive, weight.primitive, None))
            }
        },
    }
}

/// The backward step of an operation whose parents' gradients come from one call:
/// `compute(state, output_grad)` gives one per parent, registered for the parents that
/// need one (nothing is computed when none does).
fn register_from<B: Backend, S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
    compute: impl FnOnce(S, FloatTensor<B>) -> [FloatTensor<B>; N],
) {
    let grad = grads.consume::<B>(&ops.node);
    let parents = ops
        .parents
        .each_ref()
        .map(|node| node.as_ref().map(|n| n.id));
    if parents.iter().all(Option::is_none) {
        return;
    }
    for (parent, value) in parents.into_iter().zip(compute(ops.state, grad)) {
        if let Some(id) = parent {
            grads.register::<B>(id, value);
        }
    }
}

/// The backward step of `weight_norm`; parents `[direction, length]`, state the two (a
/// kernel's worth of values, kept as they are).
#[derive(Debug)]
struct WeightNorm;

impl<B: ConvBackend> Backward<B, 2> for WeightNorm {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        register_from::<B, _, 2>(ops, grads, |(direction, length), grad| {
            let (direction_grad, length_grad) = B::weight_norm_backward(direction, length, grad);
            [direction_grad, length_grad]
        });
    }
}

impl<B: ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn weight_norm(direction: FloatTensor<Self>, length: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [direction.node.clone(), length.node.clone()];
        match WeightNorm.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (direction.primitive.clone(), length.primitive.clone());
                prep.finish(state, B::weight_norm(direction.primitive, length.primitive))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::weight_norm(direction.primitive, length.primitive))
            }
        }
    }

    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(Window::Three, x, weight, bias)
    }

    fn conv1x1(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(Window::One, x, weight, bias)
    }
}

/// The backward step of `batch_norm_relu`; parents `[x, gamma, beta]`, state the inputs,
/// the batch statistics and epsilon.
#[derive(Debug)]
struct BatchNormRelu;

type BatchNormState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    f64,
);

/// Recomputes `batch_norm_relu`'s output from its inputs `[x, gamma, beta]` in the backward
/// pass, when a checkpointing strategy dropped it. The statistics are those of the same
/// batch, so the recomputed output equals the one of the forward pass.
#[derive(Debug)]
struct RecomputeBatchNormRelu<B> {
    inputs: [NodeId; 3],
    epsilon: f64,
    backend: PhantomData<B>,
}

impl<B: NormReluBackend> RetroForward for RecomputeBatchNormRelu<B> {
    fn forward(&self, states: &mut BackwardStates, out_node: NodeId) {
        let [x, gamma, beta] = self
            .inputs
            .map(|id| states.get_state::<FloatTensor<B>>(&id));
        let (y, _, _) = B::batch_norm_relu(x, gamma, beta, self.epsilon);
        states.save(out_node, y);
    }
}

impl<B: NormReluBackend> Backward<B, 3> for BatchNormRelu {
    type State = BatchNormState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        register_from::<B, _, 3>(ops, grads, |(x, gamma, beta, mean, var, epsilon), grad| {
            let (x_grad, gamma_grad, beta_grad) =
                B::batch_norm_relu_backward(x, gamma, beta, mean, var, epsilon, grad);
            [x_grad, gamma_grad, beta_grad]
        });
    }
}

/// Training runs the inner backend's batch-norm kernels when it has them
/// (`FUSED_BATCH_NORM`), and otherwise differentiates the plain composition, as before.
/// Evaluation's affine + ReLU differentiates the default body.
impl<B: NormReluBackend, C: CheckpointStrategy> NormReluBackend for Autodiff<B, C> {
    fn batch_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !B::FUSED_BATCH_NORM {
            return crate::on_primitives::batch_norm_relu::<Self>(x, gamma, beta, epsilon);
        }
        let (y, mean, var) = B::batch_norm_relu(
            x.primitive.clone(),
            gamma.primitive.clone(),
            beta.primitive.clone(),
            epsilon,
        );
        let statistics = (
            Self::from_inner(mean.clone()),
            Self::from_inner(var.clone()),
        );
        let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        let recompute = RecomputeBatchNormRelu::<B> {
            inputs: [x.node.id, gamma.node.id, beta.node.id],
            epsilon,
            backend: PhantomData,
        };
        let prepared = BatchNormRelu
            .prepare::<C>(nodes)
            .memory_bound()
            .retro_forward(recompute)
            .parents([&x, &gamma, &beta]);
        let y = match prepared.stateful() {
            OpsKind::Tracked(prep) => prep.finish(
                (
                    x.primitive,
                    gamma.primitive,
                    beta.primitive,
                    mean,
                    var,
                    epsilon,
                ),
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, statistics.0, statistics.1)
    }
}
