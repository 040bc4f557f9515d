//! Forward + backward time of one 3x3 convolution on Flex: Burn's `conv2d` against
//! `conv3x3`. `cargo run --release -p realnvp-conv --features flex --example conv_speed`
//! (arguments: batch channels size [repeats] [ours]; `ours` skips Burn's `conv2d`, for
//! `perf stat` counts of the kernels alone).

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use burn_autodiff::Autodiff;
use burn_flex::Flex;
use realnvp_conv::{conv3x3, same_3x3};

type A = Autodiff<Flex>;

fn time(label: &str, repeats: usize, flops: f64, mut step: impl FnMut()) {
    step();
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let start = Instant::now();
        step();
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{label:>28}: {:8.2} ms  {:6.1} GFLOP/s",
        best * 1e3,
        flops / best / 1e9
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .take(4)
        .map(|a| {
            a.parse()
                .expect("batch channels size [repeats]: whole numbers")
        })
        .collect();
    let (n, c, s) = (
        args.first().copied().unwrap_or(64),
        args.get(1).copied().unwrap_or(64),
        args.get(2).copied().unwrap_or(14),
    );
    let repeats = args.get(3).copied().unwrap_or(5);
    let ours_only = std::env::args().nth(5).as_deref() == Some("ours");
    let device = Default::default();
    let x = Tensor::<A, 4>::random([n, c, s, s], Distribution::Normal(0.0, 1.0), &device)
        .require_grad();
    let w = Tensor::<A, 4>::random([c, c, 3, 3], Distribution::Normal(0.0, 0.1), &device)
        .require_grad();
    let b = Tensor::<A, 1>::random([c], Distribution::Normal(0.0, 0.1), &device).require_grad();
    let pass = 2.0 * (n * c * c * 9 * s * s) as f64;
    println!("{n}x{c}x{s}x{s}, {c} -> {c} channels");
    if !ours_only {
        burn_conv(&x, &w, &b, repeats, pass);
    }
    time("conv3x3 forward", repeats, pass, || {
        let y = conv3x3(
            x.clone().inner(),
            w.clone().inner(),
            Some(b.clone().inner()),
        );
        let _ = y.into_data();
    });
    time("conv3x3 forward+backward", repeats, 3.0 * pass, || {
        let y = conv3x3(x.clone(), w.clone(), Some(b.clone()));
        let grads = y.sum().backward();
        let _ = w.grad(&grads).unwrap().into_data();
    });
}

/// Burn's own `conv2d` on the same tensors, forward and forward + backward.
fn burn_conv(x: &Tensor<A, 4>, w: &Tensor<A, 4>, b: &Tensor<A, 1>, repeats: usize, pass: f64) {
    time("burn conv2d forward", repeats, pass, || {
        let y = burn::tensor::module::conv2d(
            x.clone().inner(),
            w.clone().inner(),
            Some(b.clone().inner()),
            same_3x3(),
        );
        let _ = y.into_data();
    });
    time("burn conv2d forward+backward", repeats, 3.0 * pass, || {
        let y = burn::tensor::module::conv2d(x.clone(), w.clone(), Some(b.clone()), same_3x3());
        let grads = y.sum().backward();
        let _ = w.grad(&grads).unwrap().into_data();
    });
}
