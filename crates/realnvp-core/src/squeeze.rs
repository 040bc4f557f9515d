//! The squeezing operation (paper, section 3.6 and figure 3) and its inverse.
//!
//! Each 2x2 block of every channel becomes one pixel of four channels. Channels are
//! ordered position-major: output channel `(2 di + dj) * c + ch` holds input channel `ch`
//! at offset `(di, dj)` inside the block. The first half of the squeezed channels is then
//! the top row of every block and the second half the bottom row, for any `c`: a
//! channel-wise mask after squeezing splits each block into rows, which neither
//! checkerboard parity (the block's diagonals) does, so the partitions are not redundant.

use burn::tensor::{backend::Backend, Tensor};

use crate::bijector::Bijector;

/// `[batch, c, h, w] -> [batch, 4c, h/2, w/2]` (`h` and `w` even); log-det 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Squeeze;

/// Squeezes `x` (see the module docs for the channel order).
pub fn squeeze<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / 2, 2, w / 2, 2])
        .permute([0, 3, 5, 1, 2, 4])
        .reshape([n, 4 * c, h / 2, w / 2])
}

/// Inverts [`squeeze`]: `[batch, 4c, h, w] -> [batch, c, 2h, 2w]`.
pub fn unsqueeze<B: Backend>(y: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c4, h, w] = y.dims();
    let c = c4 / 4;
    y.reshape([n, 2, 2, c, h, w])
        .permute([0, 3, 4, 1, 5, 2])
        .reshape([n, c, 2 * h, 2 * w])
}

impl<B: Backend> Bijector<B, 4> for Squeeze {
    fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 1>) {
        let batch = x.dims()[0];
        let device = x.device();
        (squeeze(x), Tensor::zeros([batch], &device))
    }

    fn inverse(&self, y: Tensor<B, 4>) -> Tensor<B, 4> {
        unsqueeze(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::Mask;
    use crate::testing::*;

    #[test]
    fn round_trip_is_exact() {
        let x = uniform::<Cpu, 4>([2, 3, 6, 4], -1.0, 1.0, 1);
        let y = squeeze(x.clone());
        assert_eq!(y.dims(), [2, 12, 3, 2]);
        assert_eq!(values(unsqueeze(y)), values(x));
    }

    #[test]
    fn channels_are_position_major() {
        let (c, h, w) = (3, 4, 6);
        let x = uniform::<Cpu, 4>([1, c, h, w], 0.0, 1.0, 2);
        let xs = values(x.clone());
        let ys = values(squeeze(x));
        for di in 0..2 {
            for dj in 0..2 {
                for ch in 0..c {
                    for i in 0..h / 2 {
                        for j in 0..w / 2 {
                            let out_c = (2 * di + dj) * c + ch;
                            let y = ys[(out_c * (h / 2) + i) * (w / 2) + j];
                            let x = xs[(ch * h + 2 * i + di) * w + 2 * j + dj];
                            assert_eq!(y, x);
                        }
                    }
                }
            }
        }
    }

    /// A channel-wise mask after squeezing must not reproduce either checkerboard mask
    /// before it (paper, figure 3).
    #[test]
    fn channel_masks_after_squeeze_are_not_checkerboards() {
        for c in [1, 3] {
            let device = Default::default();
            // Index image: every pixel holds its own flat index.
            let n = c * 4 * 4;
            let index = Tensor::<Cpu, 1>::from_floats(
                (0..n).map(|k| k as f32).collect::<Vec<_>>().as_slice(),
                &device,
            )
            .reshape([1, c, 4, 4]);
            let mask = Mask::Channel { parity: 0 };
            let squeezed = squeeze(index);
            let (first_half, _) = mask.split(squeezed.clone(), &mask.board(&squeezed));
            let mut conditioned: Vec<usize> =
                values(first_half).iter().map(|&v| v as usize).collect();
            conditioned.sort_unstable();
            for parity in 0..2 {
                let board: Vec<usize> = (0..n)
                    .filter(|k| ((k % 16) / 4 + k % 4) % 2 == parity)
                    .collect();
                assert_ne!(
                    conditioned, board,
                    "c = {c}: channel half equals checkerboard {parity}"
                );
                let overlap = conditioned.iter().filter(|k| board.contains(k)).count();
                assert_eq!(
                    overlap,
                    n / 4,
                    "c = {c}: each half holds both checkerboard colours equally"
                );
            }
        }
    }
}
