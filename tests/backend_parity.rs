//! The same model on the default CPU backend (Flex) and on wgpu (and CUDA, with the `cuda`
//! feature) gives the same numbers: log-likelihoods, decoded images, and the gradients of
//! one training step with respect to the input and to every parameter.
//!
//! wgpu runs on any Vulkan driver; without a GPU, Mesa's lavapipe
//! (`apt-get install -y mesa-vulkan-drivers libvulkan1`) runs it on the CPU. Without any
//! adapter the test says so and passes, unless `REALNVP_REQUIRE_WGPU=1` (CI sets it).
//! On a machine with an NVIDIA GPU:
//! `REALNVP_REQUIRE_WGPU=1 cargo test --release -p realnvp-tests --features cuda --test backend_parity -- --nocapture`.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use realnvp_core::testing::{max_abs_diff, perturb, values};
use realnvp_core::{
    AutodiffConvBackend, Dequantization, Latents, PreprocessConfig, RealNvp, RealNvpConfig,
};
use realnvp_tests::transfer;
#[cfg(feature = "wgpu")]
use realnvp_tests::wgpu_required;

fn config() -> RealNvpConfig {
    RealNvpConfig {
        channels: 3,
        height: 8,
        width: 8,
        scales: 2,
        res_blocks: 2,
        // Skip connections, so their 1x1 projections (Burn's conv2d) are compared too.
        skip_connections: true,
        features: 8,
        batch_norm: true,
        batch_norm_momentum: 0.1,
        preprocess: PreprocessConfig::default(),
        // A class-conditional prior, so the per-class Gaussian and logsumexp are compared too.
        classes: 3,
    }
}

/// A wgpu device that works, or `None` (after saying why) when no adapter is present.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Option<burn::backend::wgpu::WgpuDevice> {
    use burn::backend::wgpu::{Wgpu, WgpuDevice};
    let probe = std::panic::catch_unwind(|| {
        let device = WgpuDevice::default();
        let sum = Tensor::<Wgpu, 1>::from_floats([1.0, 2.0], &device).sum();
        (values(sum)[0] == 3.0).then_some(device)
    });
    match probe {
        Ok(Some(device)) => Some(device),
        _ if wgpu_required() => panic!("REALNVP_REQUIRE_WGPU=1 but wgpu has no working adapter"),
        _ => {
            eprintln!("skipped: no wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
            None
        }
    }
}

fn pixels<B: Backend>(device: &B::Device) -> Tensor<B, 4> {
    B::seed(device, 11);
    Tensor::<B, 4>::random([6, 3, 8, 8], Distribution::Uniform(0.0, 256.0), device).floor()
}

/// Values of every parameter's gradient of the training loss (mean bits/dim of a batch
/// in training mode plus the scale penalty), in the model's parameter order.
fn parameter_gradients<B: AutodiffConvBackend>(
    model: &RealNvp<B>,
    x: Tensor<B, 4>,
) -> Vec<(String, Vec<f64>)> {
    let loss = model
        .bits_per_dim(x, Dequantization::Centre)
        .mean()
        .add(model.scale_penalty().mul_scalar(5e-5));
    let grads = loss.backward();
    struct Collect<'a, B: AutodiffBackend> {
        grads: &'a B::Gradients,
        found: Vec<(String, Vec<f64>)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = param.val().grad(self.grads).map(values).unwrap_or_default();
            self.found.push((format!("{:?}", param.dims()), grad));
        }
    }
    let mut collect = Collect::<B> {
        grads: &grads,
        found: Vec::new(),
    };
    model.visit(&mut collect);
    collect.found
}

/// `|a - b| / |a|` in the L2 norm.
fn relative_l2(a: &[f64], b: &[f64]) -> f64 {
    let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / norm.max(f64::MIN_POSITIVE)
}

/// Compares the model on Flex with the same model on backend `G`, named `name`.
fn check_parity<G: AutodiffConvBackend>(name: &str, gpu: &G::Device) {
    let cpu = Default::default();

    // Populate the running statistics with a few training-mode passes, then perturb every
    // parameter so that no layer is the identity.
    Autodiff::<Flex>::seed(&cpu, 1);
    let trained: RealNvp<Autodiff<Flex>> = config().init(&cpu).expect("valid config");
    for _ in 0..3 {
        trained.bits_per_dim(pixels(&cpu), Dequantization::Uniform);
    }
    let reference: RealNvp<Flex> = perturb(trained.valid(), 0.05, 3);
    let on_gpu: RealNvp<G::InnerBackend> = transfer(
        reference.clone(),
        config().init(gpu).expect("valid config"),
        gpu,
    );

    // Forward: log-likelihood in evaluation mode.
    let x_cpu = pixels::<Flex>(&cpu);
    let x_gpu = Tensor::<G::InnerBackend, 4>::from_data(x_cpu.to_data(), gpu);
    let bpd_cpu = reference.bits_per_dim(x_cpu.clone(), Dequantization::Centre);
    let bpd_gpu = on_gpu.bits_per_dim(x_gpu.clone(), Dequantization::Centre);
    let diff = max_abs_diff(bpd_cpu.clone(), Tensor::from_data(bpd_gpu.to_data(), &cpu));
    eprintln!(
        "bits/dim flex {:?}, max |flex - {name}| = {diff:.2e}",
        values(bpd_cpu)
    );
    assert!(diff < 1e-3, "bits/dim differ by {diff}");

    // Inverse: decoding the same latents.
    let latents_cpu = reference.sample_latents(4, 0.8, &cpu);
    let latents_gpu = Latents {
        scales: latents_cpu
            .scales
            .iter()
            .map(|z| Tensor::from_data(z.to_data(), gpu))
            .collect(),
    };
    let images_cpu = reference.decode(latents_cpu);
    let images_gpu = on_gpu.decode(latents_gpu);
    let diff = max_abs_diff(images_cpu, Tensor::from_data(images_gpu.to_data(), &cpu));
    eprintln!("decoded images: max |flex - {name}| = {diff:.2e}");
    assert!(diff < 1e-3, "decoded images differ by {diff}");

    // Training mode: the gradient of the log-density with respect to the input.
    let train_cpu: RealNvp<Autodiff<Flex>> =
        transfer(reference, config().init(&cpu).expect("valid config"), &cpu);
    let train_gpu: RealNvp<G> = transfer(on_gpu, config().init(gpu).expect("valid config"), gpu);
    let input_grad_cpu = {
        let x = Tensor::<Autodiff<Flex>, 4>::from_data(x_cpu.to_data(), &cpu)
            .add_scalar(0.5)
            .div_scalar(256.0)
            .require_grad();
        let grads = train_cpu.log_density(x.clone()).mean().backward();
        values(x.grad(&grads).expect("input gradient"))
    };
    let input_grad_gpu = {
        let x = Tensor::<G, 4>::from_data(x_gpu.to_data(), gpu)
            .add_scalar(0.5)
            .div_scalar(256.0)
            .require_grad();
        let grads = train_gpu.log_density(x.clone()).mean().backward();
        values(x.grad(&grads).expect("input gradient"))
    };
    // Relative L2 error: a ReLU input within rounding of zero may take the other side on
    // one backend and move a single element, which a max-abs comparison would overstate.
    let error = relative_l2(&input_grad_cpu, &input_grad_gpu);
    eprintln!("input gradients: |flex - {name}| / |flex| = {error:.2e} (L2)");
    assert!(
        error <= 1e-3,
        "input gradients differ: relative L2 error {error}"
    );

    // One training step's parameter gradients, every parameter of the model.
    let grads_cpu = parameter_gradients(&train_cpu, Tensor::from_data(x_cpu.to_data(), &cpu));
    let grads_gpu = parameter_gradients(&train_gpu, Tensor::from_data(x_cpu.to_data(), gpu));
    assert_eq!(grads_cpu.len(), grads_gpu.len());
    let all_cpu: Vec<f64> = grads_cpu.iter().flat_map(|(_, g)| g.clone()).collect();
    let all_gpu: Vec<f64> = grads_gpu.iter().flat_map(|(_, g)| g.clone()).collect();
    let norm = |g: &[f64]| g.iter().map(|v| v * v).sum::<f64>().sqrt();
    // Per tensor, relative to its own norm, or to 1e-4 of the whole gradient's norm for
    // tensors whose exact gradient is zero (a conv bias followed by batch norm), where
    // both backends give rounding noise.
    let floor = 1e-4 * norm(&all_cpu);
    let mut worst = (0.0, String::new());
    for ((shape, a), (_, b)) in grads_cpu.iter().zip(&grads_gpu) {
        assert_eq!(a.len(), b.len(), "gradient of the parameter {shape}");
        let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let error = norm(&diff) / norm(a).max(floor);
        if error > worst.0 {
            worst = (error, shape.clone());
        }
    }
    let error = relative_l2(&all_cpu, &all_gpu);
    eprintln!(
        "parameter gradients ({} tensors, {} values): |flex - {name}| / |flex| = {error:.2e} (L2); worst tensor {} at {:.2e}",
        grads_cpu.len(),
        all_cpu.len(),
        worst.1,
        worst.0
    );
    assert!(
        error <= 1e-3,
        "parameter gradients differ: relative L2 error {error}"
    );
    assert!(
        worst.0 <= 1e-2,
        "gradient of a {} parameter differs by {:.2e}",
        worst.1,
        worst.0
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn flex_and_wgpu_agree_on_likelihoods_inverses_and_gradients() {
    let Some(gpu) = wgpu_device() else { return };
    check_parity::<Autodiff<burn::backend::Wgpu>>("wgpu", &gpu);
}

#[cfg(feature = "cuda")]
#[test]
fn flex_and_cuda_agree_on_likelihoods_inverses_and_gradients() {
    check_parity::<Autodiff<burn::backend::Cuda>>("cuda", &Default::default());
}
