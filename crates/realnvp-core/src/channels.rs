//! Per-channel and per-position arithmetic on `[batch, channels, height, width]` tensors,
//! written so that every broadcast runs along one leading or trailing dimension of a 2-D
//! view. Burn's CPU backends run such broadcasts (and their gradients' reductions) tens of
//! times faster than a `[1, C, 1, 1]` broadcast over a rank-4 tensor.

use burn::tensor::{backend::Backend, Tensor};

/// `v` `[C]` repeated for every example, as a column `[batch * C, 1]`.
fn channel_column<B: Backend>(v: Tensor<B, 1>, batch: usize) -> Tensor<B, 2> {
    let c = v.dims()[0];
    v.reshape([1, c]).expand([batch, c]).reshape([batch * c, 1])
}

/// `x * v` with `v` `[C]` broadcast over every dimension but 1; `x` is `[batch, C, ...]`.
pub fn mul_channels<B: Backend, const D: usize>(x: Tensor<B, D>, v: Tensor<B, 1>) -> Tensor<B, D> {
    let dims = x.dims();
    if D == 2 {
        let c = dims[1];
        return x * v.reshape([1, c]).reshape(broadcast_shape::<D>(c));
    }
    let (n, c) = (dims[0], dims[1]);
    let rest: usize = dims[2..].iter().product();
    (x.reshape([n * c, rest]) * channel_column(v, n)).reshape(dims)
}

/// `x + v` with `v` `[C]` broadcast over every dimension but 1; `x` is `[batch, C, ...]`.
pub fn add_channels<B: Backend, const D: usize>(x: Tensor<B, D>, v: Tensor<B, 1>) -> Tensor<B, D> {
    let dims = x.dims();
    if D == 2 {
        let c = dims[1];
        return x + v.reshape(broadcast_shape::<D>(c));
    }
    let (n, c) = (dims[0], dims[1]);
    let rest: usize = dims[2..].iter().product();
    (x.reshape([n * c, rest]) + channel_column(v, n)).reshape(dims)
}

/// Per-channel sums over the batch and every other dimension: `[batch, C, ...] -> [C]`.
pub fn sum_channels<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    let dims = x.dims();
    let (n, c) = (dims[0], dims[1]);
    let rest: usize = dims[2..].iter().product();
    x.reshape([n * c, rest])
        .sum_dim(1)
        .reshape([n, c])
        .sum_dim(0)
        .reshape([c])
}

/// `x * m` with `m` `[1, 1, H, W]` (a spatial mask) broadcast over batch and channels;
/// `x` is `[batch, channels, H, W]`.
pub fn mul_positions<B: Backend, const D: usize>(x: Tensor<B, D>, m: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let (rows, cols) = (dims[0] * dims[1], dims[2..].iter().product::<usize>());
    (x.reshape([rows, cols]) * m.reshape([1, cols])).reshape(dims)
}

fn broadcast_shape<const D: usize>(c: usize) -> [usize; D] {
    let mut shape = [1; D];
    shape[1] = c;
    shape
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn agree_with_plain_broadcasting() {
        let x = uniform::<Cpu, 4>([3, 4, 5, 2], -1.0, 1.0, 1);
        let v = uniform::<Cpu, 1>([4], -1.0, 1.0, 2);
        let m = uniform::<Cpu, 4>([1, 1, 5, 2], -1.0, 1.0, 3);
        let plain = v.clone().reshape([1, 4, 1, 1]);
        assert!(
            max_abs_diff(
                mul_channels(x.clone(), v.clone()),
                x.clone() * plain.clone()
            ) < 1e-6
        );
        assert!(max_abs_diff(add_channels(x.clone(), v.clone()), x.clone() + plain) < 1e-6);
        assert!(max_abs_diff(mul_positions(x.clone(), m.clone()), x.clone() * m) < 1e-6);
        let sums = x.clone().sum_dim(0).sum_dim(2).sum_dim(3).reshape([4]);
        assert!(max_abs_diff(sum_channels(x), sums) < 1e-5);
        let x2 = uniform::<Cpu, 2>([3, 4], -1.0, 1.0, 4);
        assert!(
            max_abs_diff(
                mul_channels(x2.clone(), v.clone()),
                x2.clone() * v.clone().reshape([1, 4])
            ) < 1e-6
        );
    }
}
