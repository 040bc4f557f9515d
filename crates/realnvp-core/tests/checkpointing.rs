//! Gradient checkpointing (`Autodiff<Flex, BalancedCheckpointing>`): one training step of
//! the same model gives the same gradients as the default `Autodiff<Flex>` (the outputs of
//! batch norm and ReLU recomputed in the backward pass by `realnvp-conv`'s retro-forward),
//! with a lower peak of allocated memory.
//!
//! This file is its own test binary, so its counting allocator sees only this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use realnvp_core::{testing, AutodiffConvBackend, Dequantization, RealNvp, RealNvpConfig};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(pointer, layout) };
        IN_USE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Each parameter's gradient (flattened, in the model's visiting order) after one step,
/// and the step's peak of allocated bytes above what was allocated before it.
struct Step {
    grads: Vec<Vec<f64>>,
    peak_bytes: usize,
}

/// One forward and backward pass on `pixels` of a model of `config` initialised on `B`
/// from Flex's random stream seeded with `seed` (the same weights for every `B` on Flex).
fn training_step<B>(config: &RealNvpConfig, seed: u64, pixels: &Tensor<Flex, 4>) -> Step
where
    B: AutodiffConvBackend<InnerBackend = Flex>,
{
    Flex::seed(&Default::default(), seed);
    let model: RealNvp<B> = config.init(&Default::default()).unwrap();
    let pixels = Tensor::<B, 4>::from_inner(pixels.clone());
    let before = IN_USE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let loss = model.bits_per_dim(pixels, Dequantization::Seeded(7)).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let peak_bytes = PEAK.load(Relaxed) - before;

    Step {
        grads: testing::parameter_gradients(&model, &grads),
        peak_bytes,
    }
}

#[test]
fn checkpointing_gives_the_same_gradients_with_less_memory() {
    let device = Default::default();
    Flex::seed(&device, 5);
    // Two scales with skip connections: every kind of layer the s/t networks have.
    let config = RealNvpConfig {
        channels: 3,
        height: 16,
        width: 16,
        scales: 2,
        res_blocks: 2,
        features: 16,
        skip_connections: true,
        ..Default::default()
    };
    let pixels =
        Tensor::<Flex, 4>::random([8, 3, 16, 16], Distribution::Uniform(0.0, 256.0), &device)
            .floor();

    let plain = training_step::<Autodiff<Flex>>(&config, 3, &pixels);
    let checkpointed = training_step::<Autodiff<Flex, BalancedCheckpointing>>(&config, 3, &pixels);

    assert_eq!(
        plain.grads.len(),
        checkpointed.grads.len(),
        "parameters with gradients"
    );
    assert!(plain.grads.len() > 10);
    for (i, (expected, actual)) in plain.grads.iter().zip(&checkpointed.grads).enumerate() {
        let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let worst = expected
            .iter()
            .zip(actual)
            .fold(0.0f64, |m, (e, a)| m.max((e - a).abs()));
        assert!(
            worst <= 1e-5 * scale,
            "parameter {i}: gradients differ by {worst} (scale {scale})"
        );
    }
    eprintln!(
        "peak allocated during a step: {:.2} MiB without checkpointing, {:.2} MiB with",
        plain.peak_bytes as f64 / 1048576.0,
        checkpointed.peak_bytes as f64 / 1048576.0
    );
    assert!(
        checkpointed.peak_bytes < plain.peak_bytes,
        "checkpointing did not lower the peak: {} against {} bytes",
        checkpointed.peak_bytes,
        plain.peak_bytes
    );
}
