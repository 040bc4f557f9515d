//! The 3x3 same-padding convolution on the Flex CPU backend: im2col + GEMM (the `gemm`
//! crate), forward and backward, for `f32` tensors (other dtypes use Burn's convolution).
//! The 1x1 convolution is a plain GEMM ([`pointwise`]).
//!
//! Per image, with `K = in * 9` and `P = height * width`:
//! - forward: `y [out, P] = weight [out, K] x col(x) [K, P] (+ bias)`;
//! - input gradient: the same 3x3 convolution of the output gradient with the weight
//!   flipped in space and with `in` and `out` swapped (no transposed convolution);
//! - weight gradient: `dW [out, K] += dy [out, P] x col(x)^T [P, K]`, summed over images.
//!
//! Small images are convolved a few at a time ([`GEMM_COLUMNS`]), their im2col matrices side
//! by side, so that each GEMM is wide enough to run at full speed. Images are split across
//! rayon's threads; each GEMM runs on one thread unless there are fewer images than threads.
//!
//! With at least 8 channels in and out on images of 100 pixels or more, all three (the forward convolution, and so the
//! input gradient, and the weight gradient) use Winograd's F(2x2, 3x3) instead
//! ([`winograd`]): 2.25 times fewer multiplications for the same result up to rounding.

use burn::tensor::ops::ModuleOps;
use burn::tensor::{Bytes, DType, Shape, TensorMetadata};
use burn_flex::{Flex, FlexTensor, Layout};
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::{on_primitives, ConvBackend};

mod pointwise;
mod winograd;

impl ConvBackend for Flex {
    fn weight_norm(direction: FlexTensor, length: FlexTensor) -> FlexTensor {
        if !all_f32(&[Some(&direction), Some(&length)]) {
            return on_primitives::weight_norm::<Self>(direction, length);
        }
        let dims: [usize; 4] = direction.shape().dims();
        let (direction, length) = (contiguous(direction), contiguous(length));
        tensor(weight_norm_f32(f32s(&direction), f32s(&length)), dims)
    }

    fn weight_norm_backward(
        direction: FlexTensor,
        length: FlexTensor,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        if !all_f32(&[Some(&direction), Some(&length), Some(&output_grad)]) {
            return on_primitives::weight_norm_backward::<Self>(direction, length, output_grad);
        }
        let dims: [usize; 4] = direction.shape().dims();
        let out = dims[0];
        let (direction, length) = (contiguous(direction), contiguous(length));
        let grad = contiguous(output_grad);
        let (direction_grad, length_grad) =
            weight_norm_backward_f32(f32s(&direction), f32s(&length), f32s(&grad));
        (tensor(direction_grad, dims), tensor(length_grad, [out]))
    }

    fn conv3x3(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
        if !all_f32(&[Some(&x), Some(&weight), bias.as_ref()]) {
            return Self::conv2d(x, weight, bias, crate::same_3x3());
        }
        let [n, c, h, w] = x.shape().dims();
        let [o, _, _, _] = weight.shape().dims();
        let (x, weight, bias) = (contiguous(x), contiguous(weight), bias.map(contiguous));
        let bias = bias.as_ref().map(f32s);
        let y = forward(f32s(&x), f32s(&weight), bias, [n, c, h, w], o);
        tensor(y, [n, o, h, w])
    }

    fn conv3x3_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        if !all_f32(&[Some(&x), Some(&weight), Some(&output_grad)]) {
            return crate::burn_conv_backward::<Self>(x, weight, output_grad, crate::same_3x3());
        }
        let [n, c, h, w] = x.shape().dims();
        let [o, _, _, _] = weight.shape().dims();
        let (x, weight, grad) = (contiguous(x), contiguous(weight), contiguous(output_grad));
        let (x, weight, grad) = (f32s(&x), f32s(&weight), f32s(&grad));

        let (x_grad, weight_grad) = if winograd::worthwhile(c, o, h, w) {
            let flipped = flip_transpose(weight, o, c);
            let x_grad = winograd::forward(grad, &flipped, None, [n, o, h, w], c);
            (x_grad, winograd::weight_gradient(x, grad, [n, c, h, w], o))
        } else {
            backward(x, weight, grad, [n, c, h, w], o)
        };
        (
            tensor(x_grad, [n, c, h, w]),
            tensor(weight_grad, [o, c, 3, 3]),
        )
    }

    fn conv1x1(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
        if !all_f32(&[Some(&x), Some(&weight), bias.as_ref()]) {
            return Self::conv2d(x, weight, bias, crate::pointwise());
        }
        let [n, c, h, w] = x.shape().dims();
        let [o, _, _, _] = weight.shape().dims();
        let (x, weight, bias) = (contiguous(x), contiguous(weight), bias.map(contiguous));
        let bias = bias.as_ref().map(f32s);
        let y = pointwise::forward(f32s(&x), f32s(&weight), bias, [n, c, h * w], o);
        tensor(y, [n, o, h, w])
    }

    fn conv1x1_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        if !all_f32(&[Some(&x), Some(&weight), Some(&output_grad)]) {
            return crate::burn_conv_backward::<Self>(x, weight, output_grad, crate::pointwise());
        }
        let [n, c, h, w] = x.shape().dims();
        let [o, _, _, _] = weight.shape().dims();
        let (x, weight, grad) = (contiguous(x), contiguous(weight), contiguous(output_grad));
        let (x_grad, weight_grad) =
            pointwise::backward(f32s(&x), f32s(&weight), f32s(&grad), [n, c, h * w], o);
        (
            tensor(x_grad, [n, c, h, w]),
            tensor(weight_grad, [o, c, 1, 1]),
        )
    }
}

/// [`ConvBackend::weight_norm`] on `f32` slices.
fn weight_norm_f32(direction: &[f32], length: &[f32]) -> Vec<f32> {
    let per_output = (direction.len() / length.len().max(1)).max(1);
    let mut weight = Vec::with_capacity(direction.len());
    for (v, g) in direction.chunks_exact(per_output).zip(length) {
        let scale = g / kernel_norm(v);
        weight.extend(v.iter().map(|v| v * scale));
    }
    weight
}

/// [`ConvBackend::weight_norm_backward`] on `f32` slices: `(d/ddirection, d/dlength)`.
fn weight_norm_backward_f32(
    direction: &[f32],
    length: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let per_output = (direction.len() / length.len().max(1)).max(1);
    let mut direction_grad = Vec::with_capacity(direction.len());
    let mut length_grad = Vec::with_capacity(length.len());
    let kernels = direction
        .chunks_exact(per_output)
        .zip(grad.chunks_exact(per_output));
    for ((v, dw), g) in kernels.zip(length) {
        let norm = kernel_norm(v);
        let dot = v
            .iter()
            .zip(dw)
            .map(|(v, d)| *v as f64 * *d as f64)
            .sum::<f64>() as f32;
        length_grad.push(dot / norm);
        let (coefficient, projection) = (g / norm, dot / (norm * norm));
        direction_grad.extend(
            v.iter()
                .zip(dw)
                .map(|(v, d)| coefficient * (d - v * projection)),
        );
    }
    (direction_grad, length_grad)
}

/// `||v||`, summed in `f64`.
fn kernel_norm(v: &[f32]) -> f32 {
    v.iter().map(|v| *v as f64 * *v as f64).sum::<f64>().sqrt() as f32
}

impl crate::NormReluBackend for Flex {
    const FUSED_BATCH_NORM: bool = true;

    fn channel_affine_relu(x: FlexTensor, scale: FlexTensor, shift: FlexTensor) -> FlexTensor {
        if !all_f32(&[Some(&x), Some(&scale), Some(&shift)]) {
            return on_primitives::affine_relu::<Flex>(x, scale, shift);
        }
        let [n, c, h, w] = x.shape().dims();
        let (x, scale, shift) = (contiguous(x), contiguous(scale), contiguous(shift));
        let y = affine_relu(f32s(&x), f32s(&scale), f32s(&shift), n, h * w);
        tensor(y, [n, c, h, w])
    }

    fn batch_norm_relu(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if !all_f32(&[Some(&x), Some(&gamma), Some(&beta)]) {
            return on_primitives::batch_norm_relu::<Flex>(x, gamma, beta, epsilon);
        }
        let [n, c, h, w] = x.shape().dims();
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        let shape = Planes { n, c, plane: h * w };
        let (mean, var) = channel_statistics(f32s(&x), shape);
        let (scale, shift): (Vec<f32>, Vec<f32>) = (0..c)
            .map(|ch| {
                let scale = f32s(&gamma)[ch] / (var[ch] as f64 + epsilon).sqrt() as f32;
                (scale, f32s(&beta)[ch] - mean[ch] * scale)
            })
            .unzip();
        let y = affine_relu(f32s(&x), &scale, &shift, n, h * w);
        (tensor(y, [n, c, h, w]), tensor(mean, [c]), tensor(var, [c]))
    }

    fn batch_norm_relu_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let inputs = [&x, &gamma, &beta, &mean, &var, &output_grad].map(Some);
        if !all_f32(&inputs) {
            return on_primitives::batch_norm_relu_backward::<Flex>(
                x,
                gamma,
                beta,
                mean,
                var,
                epsilon,
                output_grad,
            );
        }
        let [n, c, h, w] = x.shape().dims();
        let [x, gamma, beta, mean, var, grad] =
            [x, gamma, beta, mean, var, output_grad].map(contiguous);
        let shape = Planes { n, c, plane: h * w };
        let normaliser = Normaliser {
            mean: f32s(&mean),
            inv_sigma: &f32s(&var)
                .iter()
                .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
                .collect::<Vec<_>>(),
            gamma: f32s(&gamma),
            beta: f32s(&beta),
        };
        let (x, grad) = (f32s(&x), f32s(&grad));
        let (gamma_grad, beta_grad) = normaliser.parameter_grads(x, grad, shape);
        let x_grad = normaliser.input_grad(x, grad, &gamma_grad, &beta_grad, shape);
        (
            tensor(x_grad, [n, c, h, w]),
            tensor(gamma_grad, [c]),
            tensor(beta_grad, [c]),
        )
    }
}

/// A contiguous `[n, c, plane]` tensor: `n * c` planes of `plane` values, channel `i % c`
/// for plane `i`.
#[derive(Clone, Copy)]
struct Planes {
    n: usize,
    c: usize,
    plane: usize,
}

impl Planes {
    /// Channel `ch`'s planes in `values`, one per example.
    fn of_channel(self, values: &[f32], ch: usize) -> impl Iterator<Item = &[f32]> {
        (0..self.n).map(move |i| &values[(i * self.c + ch) * self.plane..][..self.plane])
    }

    /// Examples times pixels per channel.
    fn count(self) -> f64 {
        (self.n * self.plane) as f64
    }
}

/// Per-channel mean and biased variance (two passes), channels split across rayon's threads.
fn channel_statistics(x: &[f32], shape: Planes) -> (Vec<f32>, Vec<f32>) {
    let stats = |ch: usize| {
        vectorised(
            #[inline(always)]
            || {
                let mean = (LaneSums::over(shape.of_channel(x, ch), |v| v) / shape.count()) as f32;
                let squares = LaneSums::over(shape.of_channel(x, ch), |v| (v - mean) * (v - mean));
                (mean, (squares / shape.count()) as f32)
            },
        )
    };
    if x.len() >= PARALLEL_PLANES {
        (0..shape.c).into_par_iter().map(stats).unzip()
    } else {
        (0..shape.c).map(stats).unzip()
    }
}

/// A sum of many `f32` terms kept in [`LaneSums::LANES`] independent `f32` lanes that the
/// compiler vectorises (one running sum is a chain of dependent additions, one value per
/// four cycles), moved into an `f64` total every [`LaneSums::FLUSH`] terms so that rounding
/// does not grow with the number of values.
struct LaneSums {
    lanes: [f32; Self::LANES],
    pending: usize,
    total: f64,
}

impl LaneSums {
    const LANES: usize = 16;
    const FLUSH: usize = 1024;

    fn new() -> Self {
        Self {
            lanes: [0.0; Self::LANES],
            pending: 0,
            total: 0.0,
        }
    }

    /// The sum of `term(v)` over every value of `planes`, in `f64`.
    #[inline(always)]
    fn over<'a>(planes: impl Iterator<Item = &'a [f32]>, term: impl Fn(f32) -> f32) -> f64 {
        let mut sums = Self::new();
        for plane in planes {
            sums.add(plane, &term);
        }
        sums.finish()
    }

    /// Adds `term(v)` for every value of `values`.
    #[inline(always)]
    fn add(&mut self, values: &[f32], term: impl Fn(f32) -> f32) {
        const L: usize = LaneSums::LANES;
        let mut chunks = values.chunks_exact(L);
        for chunk in &mut chunks {
            let chunk: &[f32; L] = chunk.try_into().unwrap();
            for (lane, &v) in self.lanes.iter_mut().zip(chunk) {
                *lane += term(v);
            }
        }
        for (lane, &v) in self.lanes.iter_mut().zip(chunks.remainder()) {
            *lane += term(v);
        }
        self.counted(values.len());
    }

    /// Adds `term(x, g) = (a, b)` for every pair of `xs` and `gs` (as long as each other):
    /// `a` into `first`, `b` into `second`.
    #[inline(always)]
    fn add_pairs(
        first: &mut Self,
        second: &mut Self,
        xs: &[f32],
        gs: &[f32],
        term: impl Fn(f32, f32) -> (f32, f32),
    ) {
        const L: usize = LaneSums::LANES;
        let (mut xc, mut gc) = (xs.chunks_exact(L), gs.chunks_exact(L));
        for (x, g) in (&mut xc).zip(&mut gc) {
            let (x, g): (&[f32; L], &[f32; L]) = (x.try_into().unwrap(), g.try_into().unwrap());
            for i in 0..L {
                let (a, b) = term(x[i], g[i]);
                first.lanes[i] += a;
                second.lanes[i] += b;
            }
        }
        for (i, (&x, &g)) in xc.remainder().iter().zip(gc.remainder()).enumerate() {
            let (a, b) = term(x, g);
            first.lanes[i] += a;
            second.lanes[i] += b;
        }
        first.counted(xs.len());
        second.counted(xs.len());
    }

    /// Notes `terms` more terms in the lanes, moving them into the total every
    /// [`LaneSums::FLUSH`].
    fn counted(&mut self, terms: usize) {
        self.pending += terms;
        if self.pending >= Self::FLUSH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.total += self.lanes.iter().map(|&v| v as f64).sum::<f64>();
        self.lanes = [0.0; Self::LANES];
        self.pending = 0;
    }

    fn finish(mut self) -> f64 {
        self.flush();
        self.total
    }
}

/// What the backward pass of batch norm + ReLU needs per channel.
struct Normaliser<'a> {
    mean: &'a [f32],
    inv_sigma: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
}

impl Normaliser<'_> {
    /// Channel `ch`'s constants: `(mean, 1 / sigma, gamma, beta)`.
    #[inline(always)]
    fn channel(&self, ch: usize) -> (f32, f32, f32, f32) {
        (
            self.mean[ch],
            self.inv_sigma[ch],
            self.gamma[ch],
            self.beta[ch],
        )
    }

    /// `(d/dgamma, d/dbeta)`: per channel, `sum g x^` and `sum g`, with `x^` the normalised
    /// input and `g` the output gradient where the ReLU passed (zero where it clipped).
    fn parameter_grads(&self, x: &[f32], grad: &[f32], shape: Planes) -> (Vec<f32>, Vec<f32>) {
        let sums = |ch: usize| {
            let (mean, inv_sigma, gamma, beta) = self.channel(ch);
            vectorised(
                #[inline(always)]
                || {
                    let (mut gamma_grad, mut beta_grad) = (LaneSums::new(), LaneSums::new());
                    for (xs, gs) in shape.of_channel(x, ch).zip(shape.of_channel(grad, ch)) {
                        LaneSums::add_pairs(&mut gamma_grad, &mut beta_grad, xs, gs, |v, g| {
                            let normalised = (v - mean) * inv_sigma;
                            // The ReLU passed where gamma x^ + beta > 0.
                            let passed = if normalised * gamma + beta > 0.0 {
                                g
                            } else {
                                0.0
                            };
                            (passed * normalised, passed)
                        });
                    }
                    (gamma_grad.finish() as f32, beta_grad.finish() as f32)
                },
            )
        };
        if x.len() >= PARALLEL_PLANES {
            (0..shape.c).into_par_iter().map(sums).unzip()
        } else {
            (0..shape.c).map(sums).unzip()
        }
    }

    /// `d/dx = gamma / sigma (g - dbeta / M - x^ dgamma / M)`, a plane per rayon task.
    fn input_grad(
        &self,
        x: &[f32],
        grad: &[f32],
        gamma_grad: &[f32],
        beta_grad: &[f32],
        shape: Planes,
    ) -> Vec<f32> {
        let count = shape.count() as f32;
        let plane = shape.plane.max(1);
        let fill = |index: usize, out: &mut [f32]| {
            let (xs, gs) = (&x[index * plane..][..out.len()], &grad[index * plane..]);
            let ch = index % shape.c;
            let (mean, inv_sigma, gamma, beta) = self.channel(ch);
            let factor = gamma * inv_sigma;
            let (mean_g, mean_gx) = (beta_grad[ch] / count, gamma_grad[ch] / count);
            vectorised(
                #[inline(always)]
                || {
                    for ((o, &xv), &gv) in out.iter_mut().zip(xs).zip(gs) {
                        let normalised = (xv - mean) * inv_sigma;
                        let passed = if normalised * gamma + beta > 0.0 {
                            gv
                        } else {
                            0.0
                        };
                        *o = factor * (passed - mean_g - normalised * mean_gx);
                    }
                },
            );
        };
        written_by_planes(x.len(), plane, x.len() >= PARALLEL_PLANES, fill)
    }
}

/// Runs `work` compiled for AVX2 and FMA where the CPU has them, else as it is: the
/// element-wise kernels and Winograd's transforms are plain loops that the compiler
/// vectorises 8 wide there instead of the baseline x86-64's 4 (this crate is built for the
/// baseline; `gemm` dispatches alike). `work` must be `#[inline(always)]` to be compiled so.
#[inline(always)]
fn vectorised<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(work: impl FnOnce() -> R) -> R {
            work()
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features `avx2` is compiled for.
            return unsafe { avx2(work) };
        }
    }
    work()
}

/// Tensors of at least this many values are split across rayon's threads, a plane a task.
const PARALLEL_PLANES: usize = 1 << 14;

/// Convolutions of fewer multiply-adds run on the calling thread: below about a million
/// (20 to 50 microseconds on one core) waking the other threads costs more than sharing
/// saves. On the digits model (whose 4x4 and 8x8 convolutions with 2 to 16 channels fall on
/// both sides) this took training from about 1,250 to 1,400 images/s.
const PARALLEL_WORK: usize = 1 << 20;

/// `max(0, x * scale[c] + shift[c])` over `n` examples of `scale.len()` planes of `plane`
/// values each, one plane (or a run of small planes) per rayon task.
fn affine_relu(x: &[f32], scale: &[f32], shift: &[f32], n: usize, plane: usize) -> Vec<f32> {
    let c = scale.len();
    let plane = plane.max(1);
    let len = n * c * plane;
    let map = |index: usize, out: &mut [f32]| {
        let (a, b) = (scale[index % c], shift[index % c]);
        let input = &x[index * plane..][..out.len()];
        vectorised(
            #[inline(always)]
            || {
                for (o, &v) in out.iter_mut().zip(input) {
                    *o = (v * a + b).max(0.0);
                }
            },
        );
    };
    written_by_planes(len, plane, len >= PARALLEL_PLANES && n * c > 1, map)
}

/// An output of `len` values written a plane (`plane` values) at a time by `write(index,
/// plane)`, which must set every value of its plane; on rayon's threads if `parallel`.
///
/// Each plane is zeroed by the task that writes it, just before. `vec![0.0; len]` had the
/// calling thread zero the whole output first: a serial `memset` of megabytes while the
/// other threads waited (4 % of a Fashion-MNIST training step's main thread).
fn written_by_planes(
    len: usize,
    plane: usize,
    parallel: bool,
    write: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    let task = |(index, part): (usize, &mut [MaybeUninit<f32>])| write(index, zeroed(part));
    let storage = &mut values.spare_capacity_mut()[..len];
    if parallel {
        storage.par_chunks_mut(plane).enumerate().for_each(task);
    } else {
        storage.chunks_mut(plane).enumerate().for_each(task);
    }
    // SAFETY: the planes cover all `len` values, and `zeroed` initialised each of them.
    unsafe { values.set_len(len) };
    values
}

/// Zeroes `part` and returns it as initialised values: how an output's storage, allocated
/// uninitialised, is zeroed piece by piece by the thread about to write each piece.
fn zeroed(part: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    part.fill(MaybeUninit::new(0.0));
    // SAFETY: every value was just initialised, and `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

fn all_f32(tensors: &[Option<&FlexTensor>]) -> bool {
    tensors.iter().flatten().all(|t| t.dtype() == DType::F32)
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("conv3x3: a contiguous f32 tensor after to_contiguous")
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::new(shape)),
        DType::F32,
    )
}

/// A matrix read from a slice: element `(i, j)` at `i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// `values[..rows * cols]` as a row-major `[rows, cols]` matrix.
    fn row_major(values: &'a [f32], rows: usize, cols: usize) -> Self {
        Matrix {
            values,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Whether every element lies inside `values` (and the matrix is not empty).
    fn in_bounds(&self) -> bool {
        self.rows > 0
            && self.cols > 0
            && (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.values.len()
    }
}

/// `dst = lhs x rhs`, or `dst += lhs x rhs` when `accumulate`; `dst` is row-major
/// `[lhs.rows, rhs.cols]`. The one place the `gemm` crate is called.
///
/// # Panics
/// If the shapes disagree or a matrix reaches past its slice.
fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    lhs: Matrix,
    rhs: Matrix,
    parallelism: gemm::Parallelism,
) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert!(
        rhs.rows == k && lhs.in_bounds() && rhs.in_bounds() && dst.len() >= m * n,
        "matmul: [{m}, {k}] x [{}, {n}] into {} values",
        rhs.rows,
        dst.len()
    );
    // SAFETY: every element of lhs, rhs and the [m, n] row-major dst was checked above to
    // lie inside its slice; dst does not alias the inputs (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.values.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.values.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// How a batch of `n` images is shared out: images in parallel with single-threaded GEMMs,
/// or (fewer images than threads) one image at a time with a multi-threaded GEMM.
fn gemm_parallelism(n: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if n >= threads {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    }
}

/// Writes the im2col matrix of one image `x [c, h, w]` into `col [c * 9, h * w]`: row
/// `(ci, ky, kx)` holds `x[ci, y + ky - 1, x + kx - 1]` for every output pixel `(y, x)`,
/// zero outside the image.
pub fn im2col(x: &[f32], c: usize, h: usize, w: usize, col: &mut [f32]) {
    debug_assert_eq!(col.len(), c * 9 * h * w);
    im2col_strided(x, c, h, w, col, h * w);
}

/// [`im2col`] with rows `stride` elements apart: row `r` is `col[r * stride..][..h * w]`, so
/// that the matrices of several images can sit side by side in one `[c * 9, images * h * w]`.
fn im2col_strided(x: &[f32], c: usize, h: usize, w: usize, col: &mut [f32], stride: usize) {
    // The widths of the small images of the usual architectures (28 and 32 pixels wide,
    // squeezed once to three times, with 8 by 8 and 4 by 4 digits) go a pixel row at a time.
    vectorised(
        #[inline(always)]
        || match w {
            4 => im2col_narrow::<4>(x, c, h, col, stride),
            7 => im2col_narrow::<7>(x, c, h, col, stride),
            8 => im2col_narrow::<8>(x, c, h, col, stride),
            14 => im2col_narrow::<14>(x, c, h, col, stride),
            16 => im2col_narrow::<16>(x, c, h, col, stride),
            _ => im2col_bands(x, c, h, w, col, stride),
        },
    );
}

/// [`im2col_strided`] for images `W` pixels wide, a pixel row at a time. With the width
/// known to the compiler each row's shifted copy and zero fill are a few vector moves in
/// place, where [`im2col_bands`] calls libc's `memmove` and `memset` for a handful of values
/// per call: on the digits model (8 and 4 pixels wide) those calls took a fifth of the time.
#[inline(always)]
fn im2col_narrow<const W: usize>(x: &[f32], c: usize, h: usize, col: &mut [f32], stride: usize) {
    let p = h * W;
    debug_assert_eq!(x.len(), c * p);
    for (ci, plane) in x.chunks_exact(p).enumerate() {
        for ky in 0..3 {
            for kx in 0..3 {
                let row = &mut col[((ci * 3 + ky) * 3 + kx) * stride..][..p];
                for (y, out) in row.chunks_exact_mut(W).enumerate() {
                    // Source row y + ky - 1, zero above and below the image.
                    let Some(sy) = (y + ky).checked_sub(1).filter(|&sy| sy < h) else {
                        out.fill(0.0);
                        continue;
                    };
                    let src = &plane[sy * W..][..W];
                    match kx {
                        0 => {
                            out[0] = 0.0;
                            out[1..].copy_from_slice(&src[..W - 1]);
                        }
                        1 => out.copy_from_slice(src),
                        _ => {
                            out[..W - 1].copy_from_slice(&src[1..]);
                            out[W - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col_strided`] for any width: each row of `col` is one shifted copy of the plane.
fn im2col_bands(x: &[f32], c: usize, h: usize, w: usize, col: &mut [f32], stride: usize) {
    let p = h * w;
    debug_assert_eq!(x.len(), c * p);
    for (ci, plane) in x.chunks_exact(p).enumerate() {
        for ky in 0..3 {
            // Output rows whose source row y + ky - 1 lies inside the image.
            let (first, last) = (usize::from(ky == 0), h - usize::from(ky == 2));
            for kx in 0..3 {
                let row = &mut col[((ci * 3 + ky) * 3 + kx) * stride..][..p];
                row[..first * w].fill(0.0);
                row[last * w..].fill(0.0);
                if first >= last {
                    continue;
                }
                // The whole band of rows is one shifted copy of the plane: output index
                // y * w + x reads plane index (y + ky - 1) * w + (x + kx - 1); the pixels that
                // wrapped across a row edge are zeroed after.
                let dst = &mut row[first * w..last * w];
                let (start, len) = ((first + ky - 1) * w, (last - first) * w);
                match kx {
                    0 => {
                        dst[1..].copy_from_slice(&plane[start..start + len - 1]);
                        dst.iter_mut().step_by(w).for_each(|v| *v = 0.0);
                    }
                    1 => dst.copy_from_slice(&plane[start..start + len]),
                    _ => {
                        dst[..len - 1].copy_from_slice(&plane[start + 1..start + len]);
                        dst.iter_mut().skip(w - 1).step_by(w).for_each(|v| *v = 0.0);
                    }
                }
            }
        }
    }
}

std::thread_local! {
    /// Per-thread im2col and GEMM-output buffers, kept between calls: a fresh multi-megabyte
    /// buffer per call costs thousands of page faults while a training step's forward pass
    /// holds on to every activation.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Runs `work` with this thread's two scratch buffers resized to `lengths` (contents
/// unspecified), or fresh ones if the thread's are already in use further up its stack.
fn with_scratch<R>(lengths: [usize; 2], work: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let (a, b) = &mut *buffers;
            a.resize(a.len().max(lengths[0]), 0.0);
            b.resize(b.len().max(lengths[1]), 0.0);
            work(&mut a[..lengths[0]], &mut b[..lengths[1]])
        }
        Err(_) => work(&mut vec![0.0; lengths[0]], &mut vec![0.0; lengths[1]]),
    })
}

/// Columns per forward GEMM: small images are convolved a few at a time, side by side in
/// one im2col matrix, so that each GEMM is wide enough to run at full speed.
const GEMM_COLUMNS: usize = 768;

/// The forward convolution of `x [n, c, h, w]` with `weight [o, c, 3, 3]` and an optional
/// `bias [o]`: `[n, o, h, w]`.
fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    [n, c, h, w]: [usize; 4],
    o: usize,
) -> Vec<f32> {
    if winograd::worthwhile(c, o, h, w) {
        return winograd::forward(x, weight, bias, [n, c, h, w], o);
    }
    let (p, k) = (h * w, c * 9);
    let mut y = vec![0.0f32; n * o * p];
    if n == 0 || p == 0 {
        return y;
    }
    let parallelism = gemm_parallelism(n);
    let (per_thread, group) = shares_and_groups(n, GEMM_COLUMNS / p, n * o * k * p);
    y.par_chunks_mut(per_thread * o * p)
        .zip(x.par_chunks(per_thread * c * p))
        .for_each(|(y, x)| {
            let groups = y.chunks_mut(group * o * p).zip(x.chunks(group * c * p));
            for (y, x) in groups {
                let cols = x.len() / c;
                let single = cols == p;
                let wide_len = if single { 0 } else { o * cols };
                with_scratch([k * cols, wide_len], |col, wide| {
                    for (i, image) in x.chunks_exact(c * p).enumerate() {
                        im2col_strided(image, c, h, w, &mut col[i * p..], cols);
                    }
                    if single {
                        if let Some(bias) = bias {
                            for (row, b) in y.chunks_exact_mut(p).zip(bias) {
                                row.fill(*b);
                            }
                        }
                    }
                    let dst = if single { &mut *y } else { &mut *wide };
                    let lhs = Matrix::row_major(weight, o, k);
                    let rhs = Matrix::row_major(col, k, cols);
                    matmul(dst, single && bias.is_some(), lhs, rhs, parallelism);
                    if !single {
                        from_channel_major(wide, o, p, bias, y);
                    }
                });
            }
        });
    y
}

/// How a batch of `n` images is shared out: `(images per thread, images per group)`, each
/// thread's share taken a group of at most `most` images at a time (at least one). The
/// shares are as even as whole images allow, and so are the groups within a share: with
/// groups cut from the whole batch, one thread would be left with an extra group (or the
/// short last one) while the other waits, up to a tenth of a convolution's time.
///
/// A convolution of fewer than [`PARALLEL_WORK`] multiply-adds (`work`) stays on the calling
/// thread.
fn shares_and_groups(n: usize, most: usize, work: usize) -> (usize, usize) {
    let threads = if work < PARALLEL_WORK {
        1
    } else {
        rayon::current_num_threads().clamp(1, n.max(1))
    };
    let per_thread = n.div_ceil(threads).max(1);
    let group = per_thread.div_ceil(per_thread.div_ceil(most.max(1)));
    (per_thread, group)
}

/// `weight [o, c, 3, 3]` flipped in both spatial axes with the channel axes swapped:
/// `[c, o, 3, 3]`, the kernel whose forward convolution is the input gradient.
fn flip_transpose(weight: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut flipped = vec![0.0f32; weight.len()];
    for oi in 0..o {
        for ci in 0..c {
            let src = &weight[(oi * c + ci) * 9..][..9];
            let dst = &mut flipped[(ci * o + oi) * 9..][..9];
            for (i, v) in src.iter().enumerate() {
                dst[8 - i] = *v;
            }
        }
    }
    flipped
}

/// `images [n, ch, p]` rearranged into `wide [ch, n * p]`: the layout of an im2col matrix
/// whose columns are the pixels of several images side by side.
fn to_channel_major(images: &[f32], ch: usize, p: usize, wide: &mut [f32]) {
    let cols = images.len() / ch;
    for (i, image) in images.chunks_exact(ch * p).enumerate() {
        for (ci, row) in image.chunks_exact(p).enumerate() {
            wide[ci * cols + i * p..][..p].copy_from_slice(row);
        }
    }
}

/// The inverse of [`to_channel_major`]: `wide [ch, n * p]` into `images [n, ch, p]`, adding
/// `bias [ch]` if given.
fn from_channel_major(wide: &[f32], ch: usize, p: usize, bias: Option<&[f32]>, images: &mut [f32]) {
    let cols = images.len() / ch;
    for (i, image) in images.chunks_exact_mut(ch * p).enumerate() {
        for (ci, row) in image.chunks_exact_mut(p).enumerate() {
            let b = bias.map_or(0.0, |b| b[ci]);
            let src = &wide[ci * cols + i * p..][..p];
            row.iter_mut().zip(src).for_each(|(v, s)| *v = s + b);
        }
    }
}

/// Both gradients of the im2col convolution, `(dx [n, c, h, w], dW [o, c, 3, 3])`, from one
/// im2col matrix: that of the output gradient, `col(dy) [o * 9, P]`.
///
/// The input gradient is the forward convolution of `dy` with the flipped, transposed
/// kernel: `dx = flip(W)^T [c, o * 9] x col(dy)`. The weight gradient reads the same matrix:
/// row `(o, ky, kx)` of `col(dy)` at pixel `q` is `dy[o, q + (ky - 1, kx - 1)]`, so
/// `(col(dy) x x^T)[(o, ky, kx), c] = sum_q dy[o, q] x[c, q - (ky - 1, kx - 1)]`, which is
/// `dW[o, c, 2 - ky, 2 - kx]`. Computing `col(x)` as well would double the im2col work of
/// the backward pass, which on small images costs as much as the GEMMs. `x` goes into that
/// product pixel-major (`[P, c]`, a copy a ninth of the size of `col(dy)`): with both
/// operands laid out along the pixels, `gemm` would transpose all of `col(dy)` element by
/// element into its packing buffer (a seventh of the digits model's training time). Small
/// images are taken a group at a time, side by side, as in [`forward`]; each thread sums its
/// own share of the batch before the shares are added.
fn backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    [n, c, h, w]: [usize; 4],
    o: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (p, k) = (h * w, o * 9);
    let mut x_grad = vec![0.0f32; n * c * p];
    if n == 0 || p == 0 {
        return (x_grad, vec![0.0f32; o * c * 9]);
    }
    let flipped = flip_transpose(weight, o, c);
    let parallelism = gemm_parallelism(n);
    let (per_thread, group) = shares_and_groups(n, GEMM_COLUMNS / p, 2 * n * c * k * p);
    let partials: Vec<Vec<f32>> = x_grad
        .par_chunks_mut(per_thread * c * p)
        .zip(x.par_chunks(per_thread * c * p))
        .zip(grad.par_chunks(per_thread * o * p))
        .map(|((dx, x), dy)| {
            // [o * 9, c], the taps flipped; see above.
            let mut dw = vec![0.0f32; k * c];
            with_scratch([k * group * p, c * group * p], |col, wide| {
                let groups = dx
                    .chunks_mut(group * c * p)
                    .zip(x.chunks(group * c * p))
                    .zip(dy.chunks(group * o * p));
                for (g, ((dx, x), dy)) in groups.enumerate() {
                    let cols = dy.len() / o;
                    for (i, image) in dy.chunks_exact(o * p).enumerate() {
                        im2col_strided(image, o, h, w, &mut col[i * p..], cols);
                    }
                    let col = Matrix::row_major(col, k, cols);
                    let wide = &mut wide[..c * cols];
                    to_pixel_major(x, c, p, wide);
                    matmul(
                        &mut dw,
                        g > 0,
                        col,
                        Matrix::row_major(wide, cols, c),
                        parallelism,
                    );
                    let single = cols == p;
                    let dst = if single { &mut *dx } else { &mut *wide };
                    let lhs = Matrix::row_major(&flipped, c, k);
                    matmul(dst, false, lhs, col, parallelism);
                    if !single {
                        from_channel_major(wide, c, p, None, dx);
                    }
                }
            });
            dw
        })
        .collect();
    let weight_grad = unflip_taps(&sum_of_shares(partials), o, c);
    (x_grad, weight_grad)
}

/// `images [n, ch, p]` rearranged into `[n * p, ch]`: a row per pixel of every image.
fn to_pixel_major(images: &[f32], ch: usize, p: usize, out: &mut [f32]) {
    for (image, out) in images
        .chunks_exact(ch * p)
        .zip(out.chunks_exact_mut(ch * p))
    {
        for (ci, plane) in image.chunks_exact(p).enumerate() {
            for (q, v) in plane.iter().enumerate() {
                out[q * ch + ci] = *v;
            }
        }
    }
}

/// The weight gradient `[o, c, 3, 3]` from the backward GEMM's `[o, 9, c]` with its taps
/// flipped in space (tap `t` there is tap `8 - t` here).
fn unflip_taps(flipped: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut weight = vec![0.0f32; o * c * 9];
    for oi in 0..o {
        for t in 0..9 {
            let src = &flipped[(oi * 9 + t) * c..][..c];
            for (ci, v) in src.iter().enumerate() {
                weight[(oi * c + ci) * 9 + 8 - t] = *v;
            }
        }
    }
    weight
}

/// The element-wise sum of the per-thread partial gradients of a batch's shares.
fn sum_of_shares(partials: Vec<Vec<f32>>) -> Vec<f32> {
    let mut partials = partials.into_iter();
    let mut total = partials.next().expect("at least one share of the batch");
    for part in partials {
        total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn im2col_rows_are_shifted_zero_padded_planes() {
        // One 3x4 channel holding 1..=12.
        let x: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let mut col = vec![f32::NAN; 9 * 12];
        im2col(&x, 1, 3, 4, &mut col);
        let row = |ky: usize, kx: usize| col[(ky * 3 + kx) * 12..][..12].to_vec();
        assert_eq!(row(1, 1), x, "the centre tap is the image itself");
        #[rustfmt::skip]
        let up_left = vec![0., 0., 0., 0.,  0., 1., 2., 3.,  0., 5., 6., 7.];
        assert_eq!(
            row(0, 0),
            up_left,
            "tap (-1, -1) reads the pixel above-left"
        );
        #[rustfmt::skip]
        let down_right = vec![6., 7., 8., 0.,  10., 11., 12., 0.,  0., 0., 0., 0.];
        assert_eq!(
            row(2, 2),
            down_right,
            "tap (+1, +1) reads the pixel below-right"
        );
    }

    /// The fixed-width rows against the band copies: every specialised width, one to five
    /// rows, one and three channels, rows of `col` wider apart than a plane.
    #[test]
    fn narrow_im2col_matches_band_copies() {
        for w in [4, 7, 8, 14, 16] {
            for h in 1..=5 {
                for c in [1, 3] {
                    let p = h * w;
                    let x: Vec<f32> = (0..c * p).map(|i| (i as f32 * 0.37).sin()).collect();
                    let stride = p + 5;
                    let mut bands = vec![f32::NAN; c * 9 * stride];
                    let mut rows = bands.clone();
                    im2col_bands(&x, c, h, w, &mut bands, stride);
                    im2col_strided(&x, c, h, w, &mut rows, stride);
                    for r in 0..c * 9 {
                        let (a, b) = (&bands[r * stride..][..p], &rows[r * stride..][..p]);
                        assert_eq!(a, b, "{c}x{h}x{w}, row {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn matches_burn_conv_on_flex() {
        // Several images per thread, one image (multi-threaded GEMM), odd sizes, 1-pixel
        // and 1-channel edge cases, with and without bias.
        crate::tests::matches_burn_conv::<Flex>([5, 3, 7, 6], 4, true);
        crate::tests::matches_burn_conv::<Flex>([1, 8, 5, 5], 6, true);
        crate::tests::matches_burn_conv::<Flex>([4, 16, 14, 14], 16, false);
        crate::tests::matches_burn_conv::<Flex>([3, 1, 1, 1], 2, true);
        crate::tests::matches_burn_conv::<Flex>([2, 2, 9, 1], 3, true);
        // Small images side by side: several groups per thread, the last one shorter; on
        // one thread (under PARALLEL_WORK) and shared between threads.
        crate::tests::matches_burn_conv::<Flex>([40, 3, 8, 8], 5, true);
        crate::tests::matches_burn_conv::<Flex>([40, 6, 8, 8], 40, true);
        // Winograd's F(2x2, 3x3) forward and input gradient: odd and even sizes.
        crate::tests::matches_burn_conv::<Flex>([3, 8, 11, 10], 9, true);
        crate::tests::matches_burn_conv::<Flex>([1, 12, 10, 11], 8, false);
    }

    #[test]
    fn pointwise_matches_burn_conv_on_flex() {
        // Several images per thread (one per GEMM), one image (multi-threaded GEMM), small
        // images side by side in groups (the last one shorter, or a single image), 1-pixel
        // and 1-channel edge cases, with and without bias.
        crate::tests::matches_burn_conv_1x1::<Flex>([5, 3, 30, 29], 4, true);
        crate::tests::matches_burn_conv_1x1::<Flex>([1, 8, 5, 5], 6, true);
        crate::tests::matches_burn_conv_1x1::<Flex>([40, 7, 8, 8], 5, true);
        crate::tests::matches_burn_conv_1x1::<Flex>([40, 32, 8, 8], 32, true);
        crate::tests::matches_burn_conv_1x1::<Flex>([9, 32, 14, 14], 32, false);
        crate::tests::matches_burn_conv_1x1::<Flex>([3, 1, 1, 1], 2, true);
        crate::tests::matches_burn_conv_1x1::<Flex>([2, 2, 9, 1], 1, true);
    }

    #[test]
    fn pointwise_reads_non_contiguous_inputs_in_logical_order() {
        use burn::tensor::{Distribution, Tensor};
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([6, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device)
            .swap_dims(2, 3);
        let weight =
            Tensor::<Flex, 4>::random([3, 4, 1, 1], Distribution::Default, &device).swap_dims(0, 1);
        let ours = crate::conv1x1(x.clone(), weight.clone(), None);
        let theirs = burn::tensor::module::conv2d(x, weight, None, crate::pointwise());
        assert_eq!(ours.dims(), [6, 4, 5, 4]);
        let worst = (ours - theirs).abs().max().into_scalar();
        assert!(worst < 1e-4, "largest difference {worst}");
    }

    #[test]
    fn non_contiguous_inputs_are_read_in_logical_order() {
        use burn::tensor::{Distribution, Tensor};
        let device = Default::default();
        // Strided views: x [2, 3, 4, 5] with its spatial axes swapped, and the weight
        // with its channel axes swapped ([3, 4, 3, 3] read as [4, 3, 3, 3]).
        let x = Tensor::<Flex, 4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device)
            .swap_dims(2, 3);
        let weight =
            Tensor::<Flex, 4>::random([3, 4, 3, 3], Distribution::Default, &device).swap_dims(0, 1);
        let ours = crate::conv3x3(x.clone(), weight.clone(), None);
        let theirs = burn::tensor::module::conv2d(x, weight, None, crate::same_3x3());
        assert_eq!(ours.dims(), [2, 4, 5, 4]);
        let worst = (ours - theirs).abs().max().into_scalar();
        assert!(worst < 1e-4, "largest difference {worst}");
    }

    /// The fused kernel against Burn's broadcast arithmetic and `relu`: large (threaded)
    /// and small (sequential) tensors, a 1x1 plane, a strided view, negative scales.
    #[test]
    fn affine_relu_matches_burn_arithmetic() {
        use burn::tensor::{Distribution, Tensor};
        let device = Default::default();
        let check = |x: Tensor<Flex, 4>| {
            let c = x.dims()[1];
            let scale = Tensor::<Flex, 1>::random([c], Distribution::Normal(0.0, 1.5), &device);
            let shift = Tensor::<Flex, 1>::random([c], Distribution::Normal(0.0, 1.0), &device);
            let ours = crate::channel_affine_relu(x.clone(), scale.clone(), shift.clone());
            let theirs = crate::composed::affine_relu(x.clone(), scale, shift);
            assert_eq!(ours.dims(), x.dims());
            let worst = (ours.clone() - theirs).abs().max().into_scalar();
            assert!(worst <= 1e-6, "{:?}: largest difference {worst}", x.dims());
            let zeros = ours.lower_equal_elem(0.0).int().sum().into_scalar();
            assert!(zeros > 0, "{:?}: ReLU never clipped", x.dims());
        };
        let normal = |shape: [usize; 4]| {
            Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        check(normal([5, 3, 63, 61]));
        check(normal([3, 7, 5, 4]));
        check(normal([6, 5, 1, 1]));
        check(normal([4, 6, 40, 30]).swap_dims(1, 2));
    }

    #[test]
    fn weight_norm_matches_burn_composition() {
        // 3x3 and 1x1 kernels, one output channel, a strided (transposed) direction.
        crate::tests::matches_composed_weight_norm::<Flex>(|v| v, [32, 17, 3, 3]);
        crate::tests::matches_composed_weight_norm::<Flex>(|v| v, [6, 9, 1, 1]);
        crate::tests::matches_composed_weight_norm::<Flex>(|v| v, [1, 4, 3, 3]);
        crate::tests::matches_composed_weight_norm::<Flex>(|v| v.swap_dims(0, 1), [5, 8, 3, 3]);
    }

    #[test]
    fn batch_norm_relu_matches_burn_composition() {
        // Threaded and sequential sizes, a 1x1 plane, one example, a strided view.
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x, [6, 5, 31, 29]);
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x, [3, 4, 5, 7]);
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x, [9, 3, 1, 1]);
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x, [1, 2, 6, 5]);
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x.swap_dims(2, 3), [4, 3, 8, 6]);
    }
}
