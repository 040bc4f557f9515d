//! The 1x1 convolution (the skip connections' projections) on Flex: a GEMM per group of
//! images, forward and backward.
//!
//! Per image, with `P = height * width`:
//! - forward: `y [out, P] = weight [out, in] x x [in, P] (+ bias)`;
//! - input gradient: `dx [in, P] = weight^T [in, out] x dy [out, P]`;
//! - weight gradient: `dW [out, in] += dy [out, P] x x^T [P, in]`, summed over images, with
//!   `x^T` copied pixel-major first.
//!
//! Burn's own 1x1 convolution on Flex runs its backward pass as a transposed convolution
//! and a convolution over the batch axis, with copies of the swapped axes in between: that
//! made a training step with skip connections twice as slow as one without. Small images
//! are taken a few at a time, side by side, as in the 3x3 kernel.

use rayon::prelude::*;

use super::{
    from_channel_major, gemm_parallelism, matmul, shares_and_groups, sum_of_shares,
    to_channel_major, to_pixel_major, with_scratch, Matrix, GEMM_COLUMNS,
};

/// `weight [o, c]` read as its transpose `[c, o]`.
fn transposed(weight: &[f32], o: usize, c: usize) -> Matrix<'_> {
    Matrix {
        values: weight,
        rows: c,
        cols: o,
        row_stride: 1,
        col_stride: c,
    }
}

/// The forward 1x1 convolution of `x [n, c, p]` with `weight [o, c]` and an optional `bias
/// [o]`: `[n, o, p]`.
pub(super) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    [n, c, p]: [usize; 3],
    o: usize,
) -> Vec<f32> {
    let mut y = vec![0.0f32; n * o * p];
    if n == 0 || p == 0 {
        return y;
    }
    let parallelism = gemm_parallelism(n);
    let (per_thread, group) = shares_and_groups(n, GEMM_COLUMNS / p, n * o * c * p);
    let lhs = Matrix::row_major(weight, o, c);
    y.par_chunks_mut(per_thread * o * p)
        .zip(x.par_chunks(per_thread * c * p))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(group * o * p).zip(x.chunks(group * c * p)) {
                let cols = x.len() / c;
                if cols == p {
                    if let Some(bias) = bias {
                        for (row, b) in y.chunks_exact_mut(p).zip(bias) {
                            row.fill(*b);
                        }
                    }
                    let rhs = Matrix::row_major(x, c, p);
                    matmul(y, bias.is_some(), lhs, rhs, parallelism);
                    continue;
                }
                with_scratch([c * cols, o * cols], |wide_x, wide_y| {
                    to_channel_major(x, c, p, wide_x);
                    let rhs = Matrix::row_major(wide_x, c, cols);
                    matmul(wide_y, false, lhs, rhs, parallelism);
                    from_channel_major(wide_y, o, p, bias, y);
                });
            }
        });
    y
}

/// Both gradients of the 1x1 convolution, `(dx [n, c, p], dW [o, c])`, from the input `x
/// [n, c, p]`, `weight [o, c]` and the output gradient `dy [n, o, p]`. Each thread sums its
/// own share of the batch before the shares are added.
pub(super) fn backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    [n, c, p]: [usize; 3],
    o: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut x_grad = vec![0.0f32; n * c * p];
    if n == 0 || p == 0 {
        return (x_grad, vec![0.0f32; o * c]);
    }
    let parallelism = gemm_parallelism(n);
    let (per_thread, group) = shares_and_groups(n, GEMM_COLUMNS / p, n * o * c * p);
    let weight_t = transposed(weight, o, c);
    let partials: Vec<Vec<f32>> = x_grad
        .par_chunks_mut(per_thread * c * p)
        .zip(x.par_chunks(per_thread * c * p))
        .zip(grad.par_chunks(per_thread * o * p))
        .map(|((dx, x), dy)| {
            let mut dw = vec![0.0f32; o * c];
            let wide = if group > 1 { group * p } else { 0 };
            with_scratch([c * group * p + o * wide, c * wide], |inputs, wide_dx| {
                let groups = dx
                    .chunks_mut(group * c * p)
                    .zip(x.chunks(group * c * p))
                    .zip(dy.chunks(group * o * p));
                for (g, ((dx, x), dy)) in groups.enumerate() {
                    let cols = dy.len() / o;
                    let single = cols == p;
                    let (x_pixels, wide_dy) = inputs.split_at_mut(c * group * p);
                    // x pixel-major [cols, c], so that neither GEMM operand needs gemm's
                    // element-by-element transposition (see the 3x3 kernel's backward).
                    let x_pixels = &mut x_pixels[..c * cols];
                    to_pixel_major(x, c, p, x_pixels);
                    let dy = if single {
                        dy
                    } else {
                        to_channel_major(dy, o, p, &mut wide_dy[..o * cols]);
                        &wide_dy[..o * cols]
                    };
                    let dy = Matrix::row_major(dy, o, cols);
                    let x_pixels = Matrix::row_major(x_pixels, cols, c);
                    matmul(&mut dw, g > 0, dy, x_pixels, parallelism);
                    if single {
                        matmul(dx, false, weight_t, dy, parallelism);
                    } else {
                        let dst = &mut wide_dx[..c * cols];
                        matmul(dst, false, weight_t, dy, parallelism);
                        from_channel_major(dst, c, p, None, dx);
                    }
                }
            });
            dw
        })
        .collect();
    (x_grad, sum_of_shares(partials))
}
