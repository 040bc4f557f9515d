//! Partitions of a coupling layer's input into a conditioning and a changed part
//! (paper, section 3.4).

use burn::tensor::{backend::Backend, Tensor};

use crate::channels::mul_positions;

/// Which entries a coupling layer leaves unchanged (the mask `b = 1`) and conditions on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Spatial checkerboard on `[batch, channels, height, width]`: `b = 1` where
    /// `(row + column) % 2 == parity`. The paper's first mask has parity 1.
    Checkerboard {
        /// 0 or 1.
        parity: usize,
    },
    /// Halves of dimension 1 (channels of an image, features of a vector): parity 0
    /// conditions on the first `n / 2` and changes the rest; parity 1 the other way round.
    Channel {
        /// 0 or 1.
        parity: usize,
    },
}

/// The mask tensors of one coupling call, built once from the input's size and shared by
/// [`Mask::split`], [`Mask::network_input`] and [`Mask::restrict_to_changed`] (on a GPU
/// backend each checkerboard is a host upload). Empty for channel masks.
#[derive(Debug, Clone)]
pub struct Board<B: Backend, const D: usize> {
    /// `b`, `[1, 1, height, width]`: 1 on the entries the coupling keeps unchanged.
    keep: Option<Tensor<B, D>>,
    /// `1 - b`, the entries it changes.
    change: Option<Tensor<B, D>>,
}

impl Mask {
    /// The mask tensors for inputs shaped like `x` (only the size and device of `x` are read).
    pub fn board<B: Backend, const D: usize>(&self, x: &Tensor<B, D>) -> Board<B, D> {
        let keep = match *self {
            Mask::Checkerboard { parity } => {
                let dims = x.dims();
                Some(Self::checkerboard(
                    parity,
                    dims[D - 2],
                    dims[D - 1],
                    &x.device(),
                ))
            }
            Mask::Channel { .. } => None,
        };
        // 1 - b, on the device.
        let change = keep.clone().map(|b| b.neg().add_scalar(1.0));
        Board { keep, change }
    }

    /// The checkerboard mask `b` as a `[1, 1, height, width]`-shaped tensor of rank `D`.
    pub fn checkerboard<B: Backend, const D: usize>(
        parity: usize,
        height: usize,
        width: usize,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let values: Vec<f32> = (0..height * width)
            .map(|k| ((k / width + k % width) % 2 == parity) as u8 as f32)
            .collect();
        let mut shape = [1; D];
        shape[D - 2] = height;
        shape[D - 1] = width;
        Tensor::<B, 1>::from_floats(values.as_slice(), device).reshape(shape)
    }

    /// Number of channels the coupling network receives as input (without the extra mask
    /// channel), for an input of `channels` channels.
    pub fn conditioning_channels(&self, channels: usize) -> usize {
        match *self {
            Mask::Checkerboard { .. } => channels,
            Mask::Channel { parity: 0 } => channels / 2,
            Mask::Channel { .. } => channels - channels / 2,
        }
    }

    /// Number of channels whose scale and shift the coupling network outputs.
    pub fn changed_channels(&self, channels: usize) -> usize {
        match *self {
            Mask::Checkerboard { .. } => channels,
            _ => channels - self.conditioning_channels(channels),
        }
    }

    /// Splits `x` into `(conditioning, changed)`. For a checkerboard the conditioning part
    /// is `b * x` and the changed part is the whole of `x` (its `b = 1` entries get zero
    /// scale and shift); for channel masks they are the two halves.
    pub fn split<B: Backend, const D: usize>(
        &self,
        x: Tensor<B, D>,
        board: &Board<B, D>,
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        match *self {
            Mask::Checkerboard { .. } => {
                let b = board.keep.clone().expect("a checkerboard mask's board");
                (mul_positions(x.clone(), b), x)
            }
            Mask::Channel { parity } => {
                let channels = x.dims()[1];
                let first = channels / 2;
                let a = x.clone().narrow(1, 0, first);
                let rest = x.narrow(1, first, channels - first);
                if parity == 0 {
                    (a, rest)
                } else {
                    (rest, a)
                }
            }
        }
    }

    /// Inverts [`Mask::split`] given the (transformed) changed part.
    pub fn join<B: Backend, const D: usize>(
        &self,
        conditioning: Tensor<B, D>,
        changed: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match *self {
            Mask::Checkerboard { .. } => changed,
            Mask::Channel { parity: 0 } => Tensor::cat(vec![conditioning, changed], 1),
            Mask::Channel { .. } => Tensor::cat(vec![changed, conditioning], 1),
        }
    }

    /// The coupling network's input for a conditioning part: images get the mask itself as
    /// one extra channel (ones for channel masks), so that zero padding and masked-out
    /// zeros can be told apart; vectors (rank 2) get the conditioning part alone.
    pub fn network_input<B: Backend, const D: usize>(
        &self,
        conditioning: Tensor<B, D>,
        board: &Board<B, D>,
    ) -> Tensor<B, D> {
        if D != 4 {
            return conditioning;
        }
        let [batch, _, height, width] = [
            conditioning.dims()[0],
            conditioning.dims()[1],
            conditioning.dims()[2],
            conditioning.dims()[3],
        ];
        let mask_channel = match *self {
            Mask::Checkerboard { .. } => board.keep.clone().expect("a checkerboard mask's board"),
            Mask::Channel { .. } => {
                let mut shape = [1; D];
                shape[2] = height;
                shape[3] = width;
                Tensor::ones(shape, &conditioning.device())
            }
        };
        let mut shape = [batch; D];
        shape[1] = 1;
        shape[2] = height;
        shape[3] = width;
        Tensor::cat(vec![conditioning, mask_channel.expand(shape)], 1)
    }

    /// Zeroes the scale or shift of entries that the mask keeps unchanged (checkerboard
    /// only: channel masks never produce them).
    pub fn restrict_to_changed<B: Backend, const D: usize>(
        &self,
        st: Tensor<B, D>,
        board: &Board<B, D>,
    ) -> Tensor<B, D> {
        match *self {
            Mask::Checkerboard { .. } => {
                let change = board.change.clone().expect("a checkerboard mask's board");
                mul_positions(st, change)
            }
            Mask::Channel { .. } => st,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn checkerboard_follows_the_parity_of_row_plus_column() {
        let b = Mask::checkerboard::<Cpu, 4>(1, 3, 4, &Default::default());
        assert_eq!(b.dims(), [1, 1, 3, 4]);
        let expected: Vec<f64> = (0..12).map(|k| ((k / 4 + k % 4) % 2) as f64).collect();
        assert_eq!(values(b), expected);
    }

    #[test]
    fn split_then_join_restores_the_input() {
        let x = uniform::<Cpu, 4>([2, 5, 4, 4], -1.0, 1.0, 1);
        for mask in [Mask::Channel { parity: 0 }, Mask::Channel { parity: 1 }] {
            let (a, b) = mask.split(x.clone(), &mask.board(&x));
            assert_eq!(a.dims()[1], mask.conditioning_channels(5));
            assert_eq!(b.dims()[1], mask.changed_channels(5));
            assert_eq!(values(mask.join(a, b)), values(x.clone()), "{mask:?}");
        }
    }

    #[test]
    fn network_input_carries_the_mask_as_a_channel() {
        let x = uniform::<Cpu, 4>([2, 3, 4, 4], 1.0, 2.0, 2);
        let mask = Mask::Checkerboard { parity: 0 };
        let board = mask.board(&x);
        let (conditioning, _) = mask.split(x, &board);
        let input = mask.network_input(conditioning, &board);
        assert_eq!(input.dims(), [2, 4, 4, 4]);
        let last = values(input.narrow(1, 3, 1));
        let board = values(Mask::checkerboard::<Cpu, 4>(0, 4, 4, &Default::default()));
        assert_eq!(last, [board.clone(), board].concat());
    }
}
