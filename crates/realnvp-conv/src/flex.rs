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
use rayon::prelude::*;

use crate::{on_primitives, ConvBackend};

mod pointwise;
mod winograd;

impl ConvBackend for Flex {
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

/// Per-channel mean and biased variance (two passes, accumulated in f64), channels split
/// across rayon's threads.
fn channel_statistics(x: &[f32], shape: Planes) -> (Vec<f32>, Vec<f32>) {
    let stats = |ch: usize| {
        let sum: f64 = shape
            .of_channel(x, ch)
            .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
            .sum();
        let mean = sum / shape.count();
        let squares: f64 = shape
            .of_channel(x, ch)
            .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
            .sum();
        (mean as f32, (squares / shape.count()) as f32)
    };
    if x.len() >= PARALLEL_PLANES {
        (0..shape.c).into_par_iter().map(stats).unzip()
    } else {
        (0..shape.c).map(stats).unzip()
    }
}

/// One plane's share of the input gradient: its output, input and output-gradient values.
type PlaneTask<'a> = (&'a mut [f32], (&'a [f32], &'a [f32]));

/// What the backward pass of batch norm + ReLU needs per channel.
struct Normaliser<'a> {
    mean: &'a [f32],
    inv_sigma: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
}

impl Normaliser<'_> {
    /// `(x^, g)` of one value of channel `ch`: the normalised input and the output
    /// gradient where the ReLU passed (zero where it clipped).
    #[inline]
    fn point(&self, ch: usize, x: f32, grad: f32) -> (f32, f32) {
        let normalised = (x - self.mean[ch]) * self.inv_sigma[ch];
        let passed = normalised * self.gamma[ch] + self.beta[ch] > 0.0;
        (normalised, if passed { grad } else { 0.0 })
    }

    /// `(d/dgamma, d/dbeta)`: per channel, `sum g x^` and `sum g`.
    fn parameter_grads(&self, x: &[f32], grad: &[f32], shape: Planes) -> (Vec<f32>, Vec<f32>) {
        let sums = |ch: usize| {
            let (mut gamma_grad, mut beta_grad) = (0.0f64, 0.0f64);
            for (xs, gs) in shape.of_channel(x, ch).zip(shape.of_channel(grad, ch)) {
                let (mut gx, mut g) = (0.0f32, 0.0f32);
                for (&xv, &gv) in xs.iter().zip(gs) {
                    let (normalised, passed) = self.point(ch, xv, gv);
                    gx += passed * normalised;
                    g += passed;
                }
                gamma_grad += gx as f64;
                beta_grad += g as f64;
            }
            (gamma_grad as f32, beta_grad as f32)
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
        let mut x_grad = vec![0.0f32; x.len()];
        let count = shape.count() as f32;
        let plane = shape.plane.max(1);
        let fill = |(index, (out, (xs, gs))): (usize, PlaneTask)| {
            let ch = index % shape.c;
            let factor = self.gamma[ch] * self.inv_sigma[ch];
            let (mean_g, mean_gx) = (beta_grad[ch] / count, gamma_grad[ch] / count);
            for ((o, &xv), &gv) in out.iter_mut().zip(xs).zip(gs) {
                let (normalised, passed) = self.point(ch, xv, gv);
                *o = factor * (passed - mean_g - normalised * mean_gx);
            }
        };
        if x.len() >= PARALLEL_PLANES {
            x_grad
                .par_chunks_mut(plane)
                .zip(x.par_chunks(plane).zip(grad.par_chunks(plane)))
                .enumerate()
                .for_each(fill);
        } else {
            x_grad
                .chunks_mut(plane)
                .zip(x.chunks(plane).zip(grad.chunks(plane)))
                .enumerate()
                .for_each(fill);
        }
        x_grad
    }
}

/// Tensors of at least this many values are split across rayon's threads, a plane a task.
const PARALLEL_PLANES: usize = 1 << 14;

/// `max(0, x * scale[c] + shift[c])` over `n` examples of `scale.len()` planes of `plane`
/// values each, one plane (or a run of small planes) per rayon task.
fn affine_relu(x: &[f32], scale: &[f32], shift: &[f32], n: usize, plane: usize) -> Vec<f32> {
    let c = scale.len();
    let mut y = vec![0.0f32; n * c * plane];
    let map = |(index, (out, input)): (usize, (&mut [f32], &[f32]))| {
        let (a, b) = (scale[index % c], shift[index % c]);
        for (o, &v) in out.iter_mut().zip(input) {
            *o = (v * a + b).max(0.0);
        }
    };
    let plane = plane.max(1);
    if y.len() >= PARALLEL_PLANES && n * c > 1 {
        y.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(map);
    } else {
        y.chunks_mut(plane)
            .zip(x.chunks(plane))
            .enumerate()
            .for_each(map);
    }
    y
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
    let (per_thread, group) = shares_and_groups(n, GEMM_COLUMNS / p);
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
fn shares_and_groups(n: usize, most: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().clamp(1, n.max(1));
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
/// `(x [c, P] x col(dy)^T)[c, (o, ky, kx)] = sum_q dy[o, q] x[c, q - (ky - 1, kx - 1)]`, which
/// is `dW[o, c, 2 - ky, 2 - kx]`: the same flip and transpose again. Computing `col(x)` as
/// well would double the im2col work of the backward pass, which on small images costs as
/// much as the GEMMs. Small images are taken a group at a time, side by side, as in
/// [`forward`]; each thread sums its own share of the batch before the shares are added.
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
    let (per_thread, group) = shares_and_groups(n, GEMM_COLUMNS / p);
    let partials: Vec<Vec<f32>> = x_grad
        .par_chunks_mut(per_thread * c * p)
        .zip(x.par_chunks(per_thread * c * p))
        .zip(grad.par_chunks(per_thread * o * p))
        .map(|((dx, x), dy)| {
            // [c, o, 3, 3] with flipped taps; see above.
            let mut dw = vec![0.0f32; c * k];
            let wide_len = if group > 1 { c * group * p } else { 0 };
            with_scratch([k * group * p, wide_len], |col, wide| {
                let groups = dx
                    .chunks_mut(group * c * p)
                    .zip(x.chunks(group * c * p))
                    .zip(dy.chunks(group * o * p));
                for (g, ((dx, x), dy)) in groups.enumerate() {
                    let cols = dy.len() / o;
                    for (i, image) in dy.chunks_exact(o * p).enumerate() {
                        im2col_strided(image, o, h, w, &mut col[i * p..], cols);
                    }
                    let col_t = Matrix {
                        values: col,
                        rows: cols,
                        cols: k,
                        row_stride: 1,
                        col_stride: cols,
                    };
                    let single = cols == p;
                    let x = if single {
                        x
                    } else {
                        to_channel_major(x, c, p, &mut wide[..c * cols]);
                        &wide[..c * cols]
                    };
                    let x = Matrix::row_major(x, c, cols);
                    matmul(&mut dw, g > 0, x, col_t, parallelism);
                    let lhs = Matrix::row_major(&flipped, c, k);
                    let col = Matrix::row_major(col, k, cols);
                    let dst = if single {
                        &mut *dx
                    } else {
                        &mut wide[..c * cols]
                    };
                    matmul(dst, false, lhs, col, parallelism);
                    if !single {
                        from_channel_major(&wide[..c * cols], c, p, None, dx);
                    }
                }
            });
            dw
        })
        .collect();
    let weight_grad = flip_transpose(&sum_of_shares(partials), c, o);
    (x_grad, weight_grad)
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

    #[test]
    fn matches_burn_conv_on_flex() {
        // Several images per thread, one image (multi-threaded GEMM), odd sizes, 1-pixel
        // and 1-channel edge cases, with and without bias.
        crate::tests::matches_burn_conv::<Flex>([5, 3, 7, 6], 4, true);
        crate::tests::matches_burn_conv::<Flex>([1, 8, 5, 5], 6, true);
        crate::tests::matches_burn_conv::<Flex>([4, 16, 14, 14], 16, false);
        crate::tests::matches_burn_conv::<Flex>([3, 1, 1, 1], 2, true);
        crate::tests::matches_burn_conv::<Flex>([2, 2, 9, 1], 3, true);
        // Small images side by side: several groups per thread, the last one shorter.
        crate::tests::matches_burn_conv::<Flex>([40, 3, 8, 8], 5, true);
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
    fn batch_norm_relu_matches_burn_composition() {
        // Threaded and sequential sizes, a 1x1 plane, one example, a strided view.
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x, [6, 5, 31, 29]);
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x, [3, 4, 5, 7]);
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x, [9, 3, 1, 1]);
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x, [1, 2, 6, 5]);
        crate::tests::matches_composed_batch_norm::<Flex>(|x| x.swap_dims(2, 3), [4, 3, 8, 6]);
    }
}
