//! What a step does with the gradients and the weights besides Adam: the global norm of
//! the gradients, clipping by it, and the exponential moving average of the weights.
//! Burn's gradient clipping is per tensor; these act on the whole model at once.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// Global L2 norm of the gradients (infinite or NaN when any gradient is).
pub(crate) fn gradient_norm<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SquaredNorm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut visitor = SquaredNorm::<B> { grads, total: None };
    model.visit(&mut visitor);
    visitor
        .total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0)
}

/// The gradients `grads` of `model`'s parameters multiplied by `factor`: clipping by
/// the global norm scales every tensor alike, keeping the gradient's direction.
pub(crate) fn scale_gradients<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut visitor = Scale { grads, factor };
    model.visit(&mut visitor);
    visitor.grads
}

/// `average <- decay * average + (1 - decay) * current`, parameter by parameter.
pub(crate) fn update_average<B: Backend, M: Module<B>>(average: M, current: &M, decay: f64) -> M {
    struct Collect<B: Backend> {
        values: HashMap<ParamId, Tensor<B, 1>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.values.insert(param.id, param.val().flatten(0, D - 1));
        }
    }
    struct Blend<B: Backend> {
        values: HashMap<ParamId, Tensor<B, 1>>,
        decay: f64,
    }
    impl<B: Backend> ModuleMapper<B> for Blend<B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let Some(current) = self.values.remove(&param.id) else {
                return param;
            };
            let decay = self.decay;
            param.map(|avg| {
                let shape = avg.dims();
                avg.mul_scalar(decay) + current.reshape(shape).mul_scalar(1.0 - decay)
            })
        }
    }
    let mut collect = Collect {
        values: HashMap::new(),
    };
    current.visit(&mut collect);
    average.map(&mut Blend {
        values: collect.values,
        decay,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kind::{FlowKind, Vectors};
    use burn::backend::{Autodiff, Flex};
    use realnvp_core::{Dequantization, VectorRealNvp, VectorRealNvpConfig};

    type Training = Autodiff<Flex>;

    /// A small vector flow (with perturbed, non-trivial parameters) and its gradients on
    /// a fixed batch.
    pub(crate) fn model_and_gradients() -> (VectorRealNvp<Training>, GradientsParams) {
        let device = Default::default();
        let config = VectorRealNvpConfig {
            dims: 3,
            couplings: 3,
            hidden: 8,
            ..Default::default()
        };
        // Seeded: the same model at each call. Perturbed parameters are results of
        // operations, so they are made leaves of the graph again.
        Training::seed(&device, 11);
        let perturbed = realnvp_core::testing::perturb(
            config.init::<Training>(&device).expect("valid"),
            0.3,
            7,
        );
        let model = perturbed.map(&mut Leaves);
        let x = realnvp_core::testing::uniform::<Training, 2>([16, 3], -2.0, 2.0, 3);
        let loss = Vectors::bits_per_dim(&model, x, Dequantization::Centre).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        (model, grads)
    }

    /// Makes every float parameter a leaf that requires its gradient.
    struct Leaves;
    impl<B: AutodiffBackend> ModuleMapper<B> for Leaves {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.map(|t| t.detach().require_grad())
        }
    }

    /// Every gradient entry, in module order.
    fn entries(model: &VectorRealNvp<Training>, grads: &GradientsParams) -> Vec<f64> {
        struct Collect<'a>(&'a GradientsParams, Vec<f64>);
        impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = self.0.get::<B::InnerBackend, D>(param.id) {
                    self.1.extend(realnvp_core::testing::values(g));
                }
            }
        }
        let mut collect = Collect(grads, Vec::new());
        model.visit(&mut collect);
        collect.1
    }

    /// Clipping scales the whole gradient to the global norm asked for, every tensor
    /// alike (Burn's per-tensor clipping would leave the global norm above it, and change
    /// the direction).
    #[test]
    fn clipping_scales_the_whole_gradient_to_the_global_norm() {
        let (model, grads) = model_and_gradients();
        let before = entries(&model, &grads);
        let norm = gradient_norm(&model, &grads);
        let direct = before.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!((norm - direct).abs() <= 1e-5 * direct, "{norm} vs {direct}");
        assert!(before.len() > 100 && norm > 0.0, "{} {norm}", before.len());
        let clipped = scale_gradients(&model, grads, 0.25);
        let after = entries(&model, &clipped);
        assert_eq!(after.len(), before.len());
        for (a, b) in after.iter().zip(&before) {
            assert!(
                (a - 0.25 * b).abs() <= 1e-6 * b.abs().max(1e-6),
                "{a} vs {b}"
            );
        }
        let clipped_norm = gradient_norm(&model, &clipped);
        assert!((clipped_norm - 0.25 * norm).abs() <= 1e-5 * norm);
    }
}
