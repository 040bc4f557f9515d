//! Test helpers: parameter perturbation, brute-force Jacobians, tensor comparisons.
//!
//! Public with the `testing` feature so that the workspace's cross-backend tests share
//! them; not part of the library's API.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};

#[cfg(test)]
pub use backends::*;

#[cfg(test)]
mod backends {
    use burn::backend::{Autodiff, Flex, NdArray};
    /// The default CPU backend, evaluation mode.
    pub type Cpu = Flex;
    /// The default CPU backend, training mode (batch statistics).
    pub type CpuTrain = Autodiff<Flex>;
    /// A float64 backend for brute-force Jacobians.
    pub type Exact = NdArray<f64>;
    /// Training mode on the float64 backend.
    pub type ExactTrain = Autodiff<NdArray<f64>>;
}

/// Moves every float parameter away from its initial value by `N(0, std^2)` noise (running
/// variances are multiplied by `exp(noise)` so that they stay positive), so that no layer is
/// the identity and tests exercise the real math. Tracked parameters stay tracked.
pub fn perturb<B: Backend, M: Module<B>>(module: M, std: f64, seed: u64) -> M {
    B::seed(&Default::default(), seed);
    let mut mapper = Perturb {
        std,
        path: Vec::new(),
    };
    module.map(&mut mapper)
}

struct Perturb {
    std: f64,
    path: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Perturb {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let std = self.std;
        let is_variance = self.path.last().is_some_and(|name| name == "running_var");
        param.map(|t| {
            let noise = t.random_like(Distribution::Normal(0.0, std));
            // On an autodiff backend the sum would be an operation's output, not a leaf
            // with gradients of its own: make it a leaf again, tracked as before.
            let tracked = t.is_require_grad();
            let moved = if is_variance {
                t * noise.exp()
            } else {
                t + noise
            };
            moved.detach().set_require_grad(tracked)
        })
    }
}

/// The gradient of every float parameter of `module` that has one in `grads`, flattened,
/// in the order the module visits its parameters.
pub fn parameter_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Vec<Vec<f64>> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        found: Vec<Vec<f64>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.found.push(values(grad));
            }
        }
    }
    let mut collect = Collect {
        grads,
        found: Vec::new(),
    };
    module.visit(&mut collect);
    collect.found
}

/// Uniform random tensor in `[low, high)`.
pub fn uniform<B: Backend, const D: usize>(
    shape: [usize; D],
    low: f64,
    high: f64,
    seed: u64,
) -> Tensor<B, D> {
    let device = Default::default();
    B::seed(&device, seed);
    Tensor::random(shape, Distribution::Uniform(low, high), &device)
}

/// Values of a tensor as `f64`.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float tensor")
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `log|det J|` of `f` at every example of `x`, by central finite differences (step `h`)
/// and an LU determinant in f64. `f` must treat examples independently (or, for coupling
/// layers in training mode, keep the Jacobian triangular); it returns `[batch, dims]`.
pub fn brute_force_log_det<B: Backend, const D: usize>(
    f: impl Fn(Tensor<B, D>) -> Tensor<B, 2>,
    x: Tensor<B, D>,
    h: f64,
) -> Vec<f64> {
    let shape = x.dims();
    let batch = shape[0];
    let dims: usize = shape[1..].iter().product();
    let flat = x.reshape([batch, dims]);
    let device = flat.device();
    // jacobians[b][out][in]
    let mut jacobians = vec![vec![vec![0.0; dims]; dims]; batch];
    for i in 0..dims {
        let mut one_hot = vec![0.0f64; dims];
        one_hot[i] = h;
        // Not `from_floats`, which rounds to f32 on the way.
        let step = Tensor::<B, 1>::from_data(TensorData::new(one_hot, [dims]), &device)
            .reshape([1, dims])
            .expand([batch, dims]);
        let plus = values(f((flat.clone() + step.clone()).reshape(shape)));
        let minus = values(f((flat.clone() - step).reshape(shape)));
        for (b, jacobian) in jacobians.iter_mut().enumerate() {
            for (out, row) in jacobian.iter_mut().enumerate() {
                let k = b * dims + out;
                row[i] = (plus[k] - minus[k]) / (2.0 * h);
            }
        }
    }
    jacobians.into_iter().map(log_abs_det).collect()
}

/// `log|det m|` by LU decomposition with partial pivoting.
pub fn log_abs_det(mut m: Vec<Vec<f64>>) -> f64 {
    let n = m.len();
    let mut log_det = 0.0;
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .expect("non-empty matrix");
        m.swap(col, pivot);
        let p = m[col][col];
        assert!(p != 0.0, "singular Jacobian");
        log_det += p.abs().ln();
        let (top, bottom) = m.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for row in bottom {
            let factor = row[col] / p;
            for (value, above) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *value -= factor * above;
            }
        }
    }
    log_det
}

/// Asserts that two per-example vectors agree within `tol`.
pub fn assert_close(actual: &[f64], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol,
            "{what}: example {i}: got {a}, expected {e} (tolerance {tol})"
        );
    }
}

#[cfg(test)]
#[test]
fn log_abs_det_of_known_matrix() {
    // det [[2, 1], [4, 5]] = 6; a row swap must not change |det|.
    let d = log_abs_det(vec![vec![2.0, 1.0], vec![4.0, 5.0]]);
    assert!((d - 6f64.ln()).abs() < 1e-12);
    let d = log_abs_det(vec![vec![0.0, 3.0], vec![-2.0, 1.0]]);
    assert!((d - 6f64.ln()).abs() < 1e-12);
}

/// Asserts `inverse(forward(x)) == x` within `tol` and that the layer is not the identity
/// (so the round trip exercised real math).
pub fn assert_round_trip<B: Backend, const D: usize, L: crate::Bijector<B, D>>(
    layer: &L,
    x: Tensor<B, D>,
    tol: f64,
    what: &str,
) {
    let (y, log_det) = layer.forward(x.clone());
    assert!(
        values(log_det).iter().all(|v| v.is_finite()),
        "{what}: non-finite log-det"
    );
    let moved = max_abs_diff(y.clone(), x.clone());
    assert!(
        moved > 1e-3,
        "{what}: forward is the identity (moved {moved})"
    );
    let back = layer.inverse(y);
    let err = max_abs_diff(back, x);
    assert!(err < tol, "{what}: round-trip error {err} >= {tol}");
}

/// Asserts that `layer`'s log-det matches the brute-force Jacobian within `tol`.
pub fn assert_log_det<B: Backend, const D: usize, L: crate::Bijector<B, D>>(
    layer: &L,
    x: Tensor<B, D>,
    tol: f64,
    what: &str,
) {
    let batch = x.dims()[0];
    let (_, log_det) = layer.forward(x.clone());
    let expected = brute_force_log_det(
        |x| {
            let (y, _) = layer.forward(x);
            y.reshape([batch as i32, -1])
        },
        x,
        1e-5,
    );
    let actual = values(log_det);
    assert!(
        expected.iter().any(|v| v.abs() > 1e-2),
        "{what}: Jacobian is volume-preserving, the test would not see a wrong log-det"
    );
    assert_close(&actual, &expected, tol, what);
}
