//! The paper's walks through the latent space: the manifold spanned by four examples
//! (equation 14) and conceptual compression (appendix D), as operations on [`Latents`].

use std::f64::consts::FRAC_PI_2;

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::model::Latents;
use crate::prior::standard_normal_sample;

/// The paper's manifold (equation 14) through the latents `corners` of four examples
/// (batch 4: `z1, z2, z3, z4`):
/// `z = cos(phi) (cos(phi') z1 + sin(phi') z2) + sin(phi) (cos(phi') z3 + sin(phi') z4)`
/// with `phi` over `rows` and `phi'` over `cols` evenly spaced values in `[0, pi/2]`.
/// Returns `rows * cols` latents, row-major: the four corners of the grid are `z1`
/// (top left), `z2` (top right), `z3` (bottom left) and `z4` (bottom right).
///
/// # Panics
/// If `corners` does not hold exactly four examples or a side is shorter than 2.
pub fn manifold<B: Backend>(corners: &Latents<B>, rows: usize, cols: usize) -> Latents<B> {
    assert_eq!(corners.len(), 4, "the manifold needs four examples");
    assert!(
        rows >= 2 && cols >= 2,
        "the manifold grid needs 2x2 points or more"
    );
    let angle = |i: usize, n: usize| FRAC_PI_2 * i as f64 / (n - 1) as f64;
    let mut weights = Vec::with_capacity(rows * cols * 4);
    for i in 0..rows {
        let phi = angle(i, rows);
        for j in 0..cols {
            let psi = angle(j, cols);
            weights.extend([
                phi.cos() * psi.cos(),
                phi.cos() * psi.sin(),
                phi.sin() * psi.cos(),
                phi.sin() * psi.sin(),
            ]);
        }
    }
    let z = corners.flatten();
    let weights = Tensor::<B, 2>::from_data(
        TensorData::new(weights, [rows * cols, 4]).convert::<f32>(),
        &z.device(),
    );
    Latents::unflatten(weights.matmul(z), &corners.shapes())
}

/// What replaces the latents that conceptual compression drops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    /// Fresh draws from `N(0, temperature^2)` (the paper's choice, temperature 1).
    Prior {
        /// Standard deviation of the draws.
        temperature: f64,
    },
    /// Zeros: the prior's mode.
    Zero,
}

/// Which latent dimensions conceptual compression keeps, per scale (finest first) the
/// number of leading channels kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Channels kept in each scale, finest scale first.
    pub channels: Vec<usize>,
    /// Dimensions kept.
    pub dims: usize,
    /// All latent dimensions.
    pub total: usize,
}

impl Kept {
    /// Chooses the coarsest dimensions closest to `fraction` of all (ties keep more):
    /// whole scales from the coarsest down, then whole leading channels of the next finer
    /// scale. `shapes` are the per-scale `[channels, height, width]`, finest first.
    pub fn coarsest(shapes: &[[usize; 3]], fraction: f64) -> Self {
        let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        let target = fraction.clamp(0.0, 1.0) * total as f64;
        // Every achievable cut, from keeping nothing up to keeping everything.
        let mut cuts = vec![(vec![0; shapes.len()], 0usize)];
        let mut channels = vec![0; shapes.len()];
        let mut dims = 0;
        for (scale, &[c, h, w]) in shapes.iter().enumerate().rev() {
            for kept in 1..=c {
                channels[scale] = kept;
                dims += h * w;
                cuts.push((channels.clone(), dims));
            }
        }
        let (channels, dims) = cuts
            .into_iter()
            .rev()
            .min_by(|(_, a), (_, b)| {
                let (da, db) = ((*a as f64 - target).abs(), (*b as f64 - target).abs());
                da.total_cmp(&db)
            })
            .expect("at least the empty cut");
        Self {
            channels,
            dims,
            total,
        }
    }

    /// The fraction of dimensions kept.
    pub fn fraction(&self) -> f64 {
        self.dims as f64 / self.total as f64
    }
}

/// Conceptual compression (appendix D): keeps the latents chosen by `kept` and replaces
/// the others with `fill`.
///
/// # Panics
/// If `kept` was computed for other shapes.
pub fn compress<B: Backend>(latents: &Latents<B>, kept: &Kept, fill: Fill) -> Latents<B> {
    assert_eq!(
        kept.channels.len(),
        latents.scales.len(),
        "one count per scale"
    );
    let scales = latents
        .scales
        .iter()
        .zip(&kept.channels)
        .map(|(z, &keep)| {
            let [n, c, h, w] = z.dims();
            if keep == c {
                return z.clone();
            }
            let replacement = match fill {
                Fill::Prior { temperature } => {
                    standard_normal_sample([n, c - keep, h, w], temperature, &z.device())
                }
                Fill::Zero => Tensor::zeros([n, c - keep, h, w], &z.device()),
            };
            if keep == 0 {
                replacement
            } else {
                Tensor::cat(vec![z.clone().narrow(1, 0, keep), replacement], 1)
            }
        })
        .collect();
    Latents { scales }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn latents(n: usize, seed: u64) -> Latents<Cpu> {
        Latents {
            scales: vec![
                uniform([n, 2, 4, 4], -1.0, 1.0, seed),
                uniform([n, 4, 2, 2], -1.0, 1.0, seed + 1),
                uniform([n, 4, 2, 2], -1.0, 1.0, seed + 2),
            ],
        }
    }

    #[test]
    fn manifold_corners_are_the_four_inputs_and_the_middle_mixes_them() {
        let corners = latents(4, 1);
        let grid = manifold(&corners, 3, 5).flatten();
        assert_eq!(grid.dims(), [15, 64]);
        let z = values(corners.flatten());
        let row = |t: &[f64], i: usize| t[i * 64..(i + 1) * 64].to_vec();
        let grid = values(grid);
        for (corner, cell) in [(0, 0), (1, 4), (2, 10), (3, 14)] {
            assert_close(&row(&grid, cell), &row(&z, corner), 1e-6, "corner");
        }
        // The centre: phi = phi' = pi/4, all four weights 1/2.
        let centre: Vec<f64> = (0..64)
            .map(|d| 0.5 * (0..4).map(|k| z[k * 64 + d]).sum::<f64>())
            .collect();
        assert_close(&row(&grid, 7), &centre, 1e-6, "centre");
    }

    #[test]
    fn kept_dimensions_are_the_coarsest_and_closest_to_the_fraction() {
        // 32 + 16 + 16 dims; channels of 16, 4 and 4 dims.
        let shapes = [[2, 4, 4], [4, 2, 2], [4, 2, 2]];
        let cases = [
            (1.0, vec![2, 4, 4], 64),
            (0.5, vec![0, 4, 4], 32),
            (0.25, vec![0, 0, 4], 16),
            (0.125, vec![0, 0, 2], 8),
            (0.0625, vec![0, 0, 1], 4),
            (0.0, vec![0, 0, 0], 0),
            (0.75, vec![1, 4, 4], 48),
        ];
        for (fraction, channels, dims) in cases {
            let kept = Kept::coarsest(&shapes, fraction);
            assert_eq!(kept.channels, channels, "fraction {fraction}");
            assert_eq!(kept.dims, dims);
        }
        // Between two cuts the nearer one wins; on a tie, the larger.
        assert_eq!(Kept::coarsest(&shapes, 0.6).dims, 32);
        assert_eq!(Kept::coarsest(&shapes, 0.625).dims, 48);
    }

    #[test]
    fn compression_keeps_the_chosen_latents_and_refills_the_rest() {
        let z = latents(2, 3);
        let shapes = z.shapes();
        let whole = compress(&z, &Kept::coarsest(&shapes, 1.0), Fill::Zero);
        assert_eq!(values(whole.flatten()), values(z.flatten()));

        let kept = Kept::coarsest(&shapes, 0.125);
        let zeroed = compress(&z, &kept, Fill::Zero);
        assert_eq!(zeroed.shapes(), shapes);
        let (a, b) = (
            values(zeroed.scales[2].clone()),
            values(z.scales[2].clone()),
        );
        for example in 0..2 {
            let base = example * 16;
            assert_eq!(a[base..base + 8], b[base..base + 8], "kept channels");
            assert!(a[base + 8..base + 16].iter().all(|&v| v == 0.0));
        }
        assert!(values(zeroed.scales[0].clone()).iter().all(|&v| v == 0.0));

        Cpu::seed(&Default::default(), 4);
        let drawn = compress(&z, &kept, Fill::Prior { temperature: 1.0 });
        let fresh = values(drawn.scales[0].clone());
        assert!(fresh.iter().all(|v| v.is_finite()));
        assert!(fresh.iter().any(|&v| v != 0.0));
        assert_ne!(fresh, values(z.scales[0].clone()));
    }
}
