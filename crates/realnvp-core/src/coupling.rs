//! The affine coupling layer (paper, equations 7-9).

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

use crate::bijector::{sum_per_example, Bijector};
use crate::channels::mul_channels;
use crate::mask::{Board, Mask};

/// A network that computes a coupling layer's raw scale and shift from its conditioning
/// input (as prepared by [`Mask::network_input`]).
pub trait CouplingNet<B: Backend, const D: usize>: Module<B> {
    /// Returns `(raw_s, t)`, each shaped like the changed part of the coupling's input.
    fn forward(&self, input: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, D>);
}

/// `y = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x))`, with `s = scale * tanh(raw_s)`
/// bounded by a learned per-channel `scale`.
///
/// The log-det is `sum s` over the changed entries, in nats. With the network's output
/// layer at zero the layer is the identity.
#[derive(Module, Debug)]
pub struct AffineCoupling<B: Backend, N> {
    /// The s/t network.
    pub net: N,
    /// Per-changed-channel bound on `|s|`, shape `[changed channels]`; starts at 1.
    pub scale: Param<Tensor<B, 1>>,
    #[module(skip)]
    mask: Mask,
}

impl<B: Backend, N> AffineCoupling<B, N> {
    /// A coupling with network `net` for `channels` input channels, partitioned by `mask`.
    pub fn new(net: N, mask: Mask, channels: usize, device: &B::Device) -> Self {
        Self {
            net,
            scale: Param::from_tensor(Tensor::ones([mask.changed_channels(channels)], device)),
            mask,
        }
    }

    /// The partition this layer uses.
    pub fn mask(&self) -> Mask {
        self.mask
    }

    /// Squared L2 norm of `scale` (the paper's regularised scale parameters).
    pub fn scale_penalty(&self) -> Tensor<B, 1> {
        self.scale.val().powi_scalar(2).sum()
    }

    /// `(s, t)` for the changed part, zero wherever the mask keeps an entry unchanged.
    fn scale_shift<const D: usize>(
        &self,
        conditioning: Tensor<B, D>,
        board: &Board<B, D>,
    ) -> (Tensor<B, D>, Tensor<B, D>)
    where
        N: CouplingNet<B, D>,
    {
        let (raw_scale, shift) = self
            .net
            .forward(self.mask.network_input(conditioning, board));
        let s = mul_channels(raw_scale.tanh(), self.scale.val());
        (
            self.mask.restrict_to_changed(s, board),
            self.mask.restrict_to_changed(shift, board),
        )
    }
}

impl<B: Backend, N: CouplingNet<B, D>, const D: usize> Bijector<B, D> for AffineCoupling<B, N> {
    fn forward(&self, x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, 1>) {
        let board = self.mask.board(&x);
        let (conditioning, changed) = self.mask.split(x, &board);
        let (s, t) = self.scale_shift(conditioning.clone(), &board);
        let changed = changed * s.clone().exp() + t;
        (self.mask.join(conditioning, changed), sum_per_example(s))
    }

    fn inverse(&self, y: Tensor<B, D>) -> Tensor<B, D> {
        let board = self.mask.board(&y);
        let (conditioning, changed) = self.mask.split(y, &board);
        let (s, t) = self.scale_shift(conditioning.clone(), &board);
        let changed = (changed - t) * s.neg().exp();
        self.mask.join(conditioning, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resnet::ResNet;
    use crate::testing::*;

    const MASKS: [Mask; 4] = [
        Mask::Checkerboard { parity: 0 },
        Mask::Checkerboard { parity: 1 },
        Mask::Channel { parity: 0 },
        Mask::Channel { parity: 1 },
    ];

    /// A coupling on a perturbed ResNet of 2 blocks, with or without skip connections.
    fn coupling<B: crate::ConvBackend>(
        mask: Mask,
        channels: usize,
        skip: bool,
        seed: u64,
    ) -> AffineCoupling<B, ResNet<B>> {
        let device = Default::default();
        let net = ResNet::new(
            mask.conditioning_channels(channels),
            mask.changed_channels(channels),
            8,
            2,
            skip,
            &device,
        );
        perturb(AffineCoupling::new(net, mask, channels, &device), 0.1, seed)
    }

    #[test]
    fn round_trip_in_evaluation_and_training() {
        for (i, mask) in MASKS.into_iter().enumerate() {
            for (channels, skip) in [(3, false), (4, false), (3, true), (4, true)] {
                let what = format!("{mask:?}, {channels} channels, skip connections {skip}");
                let x = uniform::<Cpu, 4>([3, channels, 6, 6], -3.0, 3.0, i as u64);
                assert_round_trip(
                    &coupling::<Cpu>(mask, channels, skip, 10 + i as u64),
                    x,
                    1e-4,
                    &what,
                );
                let x = uniform::<CpuTrain, 4>([3, channels, 6, 6], -3.0, 3.0, i as u64);
                let layer = coupling::<CpuTrain>(mask, channels, skip, 10 + i as u64);
                assert_round_trip(&layer, x, 1e-4, &format!("{what}, training"));
            }
        }
    }

    #[test]
    fn log_det_matches_brute_force_jacobian() {
        for (i, mask) in MASKS.into_iter().enumerate() {
            for (channels, skip) in [(2, false), (3, false), (2, true), (3, true)] {
                let what = format!("{mask:?}, {channels} channels, skip connections {skip}");
                let x = uniform::<Exact, 4>([2, channels, 4, 4], -2.0, 2.0, i as u64);
                assert_log_det(
                    &coupling::<Exact>(mask, channels, skip, 20 + i as u64),
                    x,
                    1e-6,
                    &what,
                );
                // Training mode: batch statistics inside the s/t network tie examples
                // together, but the Jacobian stays triangular, so its determinant is exact.
                let x = uniform::<ExactTrain, 4>([2, channels, 4, 4], -2.0, 2.0, i as u64);
                let layer = coupling::<ExactTrain>(mask, channels, skip, 20 + i as u64);
                assert_log_det(&layer, x, 1e-6, &format!("{what}, training"));
            }
        }
    }

    #[test]
    fn identity_at_initialisation() {
        let device = Default::default();
        for mask in MASKS {
            let net = ResNet::<Cpu>::new(
                mask.conditioning_channels(3),
                mask.changed_channels(3),
                8,
                2,
                true,
                &device,
            );
            let layer = AffineCoupling::new(net, mask, 3, &device);
            let x = uniform::<Cpu, 4>([2, 3, 4, 4], -3.0, 3.0, 5);
            let (y, log_det) = layer.forward(x.clone());
            assert_eq!(values(y), values(x), "{mask:?}");
            assert!(values(log_det).iter().all(|&v| v == 0.0), "{mask:?}");
        }
    }

    #[test]
    fn only_the_changed_entries_change() {
        for mask in MASKS {
            let layer = coupling::<Cpu>(mask, 4, true, 3);
            let x = uniform::<Cpu, 4>([2, 4, 4, 4], -2.0, 2.0, 9);
            let (y, _) = layer.forward(x.clone());
            let (kept_x, _) = mask.split(x.clone(), &mask.board(&x));
            let (kept_y, _) = mask.split(y.clone(), &mask.board(&y));
            assert_eq!(values(kept_x), values(kept_y), "{mask:?}");
        }
    }

    #[test]
    fn scale_penalty_is_the_squared_norm_of_the_scales() {
        let device = Default::default();
        let mask = Mask::Channel { parity: 0 };
        let net = ResNet::<Cpu>::new(2, 3, 4, 1, false, &device);
        let layer = AffineCoupling::<Cpu, _>::new(net, mask, 5, &device);
        // Scales start at one: the penalty counts the changed channels.
        assert_eq!(values(layer.scale_penalty()), vec![3.0]);
    }
}
