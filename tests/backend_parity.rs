//! The same model on the default CPU backend (Flex) and on wgpu gives the same numbers.
//!
//! wgpu runs on any Vulkan driver; without a GPU, Mesa's lavapipe
//! (`apt-get install -y mesa-vulkan-drivers libvulkan1`) runs it on the CPU. Without any
//! adapter the test says so and passes, unless `REALNVP_REQUIRE_WGPU=1` (CI sets it).

#![cfg(feature = "wgpu")]

use burn::backend::wgpu::{Wgpu, WgpuDevice};
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use realnvp_core::testing::{max_abs_diff, perturb, values};
use realnvp_core::{Dequantization, Latents, PreprocessConfig, RealNvp, RealNvpConfig};
use realnvp_tests::{transfer, wgpu_required};

fn config() -> RealNvpConfig {
    RealNvpConfig {
        channels: 3,
        height: 8,
        width: 8,
        scales: 2,
        res_blocks: 2,
        features: 8,
        batch_norm: true,
        batch_norm_momentum: 0.1,
        preprocess: PreprocessConfig::default(),
        // A class-conditional prior, so the per-class Gaussian and logsumexp are compared too.
        classes: 3,
    }
}

/// A wgpu device that works, or `None` (after saying why) when no adapter is present.
fn wgpu_device() -> Option<WgpuDevice> {
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

#[test]
fn forward_inverse_and_gradients_agree_between_flex_and_wgpu() {
    let Some(gpu) = wgpu_device() else { return };
    let cpu = Default::default();

    // Populate the running statistics with a few training-mode passes, then perturb every
    // parameter so that no layer is the identity.
    Autodiff::<Flex>::seed(&cpu, 1);
    let trained: RealNvp<Autodiff<Flex>> = config().init(&cpu).expect("valid config");
    for _ in 0..3 {
        trained.bits_per_dim(pixels(&cpu), Dequantization::Uniform);
    }
    let reference: RealNvp<Flex> = perturb(trained.valid(), 0.05, 3);
    let on_gpu: RealNvp<Wgpu> = transfer(
        reference.clone(),
        config().init(&gpu).expect("valid config"),
        &gpu,
    );

    // Forward: log-likelihood in evaluation mode.
    let x_cpu = pixels::<Flex>(&cpu);
    let x_gpu = Tensor::<Wgpu, 4>::from_data(x_cpu.to_data(), &gpu);
    let bpd_cpu = reference.bits_per_dim(x_cpu.clone(), Dequantization::Centre);
    let bpd_gpu = on_gpu.bits_per_dim(x_gpu.clone(), Dequantization::Centre);
    let diff = max_abs_diff(bpd_cpu.clone(), Tensor::from_data(bpd_gpu.to_data(), &cpu));
    eprintln!(
        "bits/dim flex {:?}, max |flex - wgpu| = {diff:.2e}",
        values(bpd_cpu)
    );
    assert!(diff < 1e-3, "bits/dim differ by {diff}");

    // Inverse: decoding the same latents.
    let latents_cpu = reference.sample_latents(4, 0.8, &cpu);
    let latents_gpu = Latents {
        scales: latents_cpu
            .scales
            .iter()
            .map(|z| Tensor::from_data(z.to_data(), &gpu))
            .collect(),
    };
    let images_cpu = reference.decode(latents_cpu);
    let images_gpu = on_gpu.decode(latents_gpu);
    let diff = max_abs_diff(images_cpu, Tensor::from_data(images_gpu.to_data(), &cpu));
    eprintln!("decoded images: max |flex - wgpu| = {diff:.2e}");
    assert!(diff < 1e-3, "decoded images differ by {diff}");

    // Training mode: the gradient of the loss with respect to the input.
    let train_cpu: RealNvp<Autodiff<Flex>> =
        transfer(reference, config().init(&cpu).expect("valid config"), &cpu);
    let train_gpu: RealNvp<Autodiff<Wgpu>> =
        transfer(on_gpu, config().init(&gpu).expect("valid config"), &gpu);
    let grad = |model: &RealNvp<Autodiff<Flex>>| {
        let x = Tensor::<Autodiff<Flex>, 4>::from_data(x_cpu.to_data(), &cpu)
            .add_scalar(0.5)
            .div_scalar(256.0)
            .require_grad();
        let grads = model.log_density(x.clone()).mean().backward();
        values(x.grad(&grads).expect("input gradient"))
    };
    let grad_gpu = {
        let x = Tensor::<Autodiff<Wgpu>, 4>::from_data(x_gpu.to_data(), &gpu)
            .add_scalar(0.5)
            .div_scalar(256.0)
            .require_grad();
        let grads = train_gpu.log_density(x.clone()).mean().backward();
        values(x.grad(&grads).expect("input gradient"))
    };
    let grad_cpu = grad(&train_cpu);
    // Relative L2 error: a ReLU input within rounding of zero may take the other side on
    // one backend and move a single element, which a max-abs comparison would overstate.
    let norm = grad_cpu.iter().map(|g| g * g).sum::<f64>().sqrt();
    let diff = grad_cpu
        .iter()
        .zip(&grad_gpu)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    eprintln!(
        "input gradients: |flex - wgpu| / |flex| = {:.2e} (L2)",
        diff / norm
    );
    assert!(
        diff <= 1e-3 * norm,
        "gradients differ: relative L2 error {}",
        diff / norm
    );
}
