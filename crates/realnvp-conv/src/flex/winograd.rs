//! Winograd's minimal filtering F(2x2, 3x3) for the forward convolution (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of output pixels is computed from the 4x4 input tile around it with 16
//! multiplications per (in, out) channel pair instead of im2col's 36, 2.25 times fewer:
//! `Y = A^T [(G g G^T) * (B^T d B)] A` for a 3x3 kernel `g` and a tile `d`. Summed over
//! input channels, the 16 element-wise products become 16 GEMMs, one per tile position `k`:
//! `M_k [out, tiles] = U_k [out, in] x V_k [in, tiles]`.
//!
//! The transforms are written by hand: no maintained crate offers them for our layout, and
//! the GEMMs still go through the `gemm` crate like the im2col path.

use rayon::prelude::*;

use super::{gemm_parallelism, matmul, sum_of_shares, vectorised, with_scratch, Matrix};

/// Positions in a 4x4 transformed tile: the number of GEMMs per convolution.
const POSITIONS: usize = 16;

/// Tiles per group of GEMMs: small images are transformed a few at a time, side by side,
/// so that each of the 16 GEMMs is wide enough to run at full speed while the transformed
/// input and the products stay in cache.
const GROUP_TILES: usize = 256;

/// Whether F(2x2, 3x3) beats im2col + GEMM for `c` input and `o` output channels on
/// `h x w` images: with few channels on either side, or tiny images (the digits model's
/// 8x8 and 4x4), the transforms cost more than the multiplications they save.
pub(super) fn worthwhile(c: usize, o: usize, h: usize, w: usize) -> bool {
    c >= 8 && o >= 8 && h * w >= MIN_PIXELS
}

/// The smallest image, in pixels, worth the transforms: measured with `conv_speed`, 16 and
/// 32 channels on 8x8 and 4x4 images ran faster with im2col, 14x14 and larger with Winograd.
const MIN_PIXELS: usize = 100;

/// The forward convolution of `x [n, c, h, w]` with `weight [o, c, 3, 3]` and an optional
/// `bias [o]`: `[n, o, h, w]`, by F(2x2, 3x3). Odd sizes are padded to whole tiles.
pub(super) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    [n, c, h, w]: [usize; 4],
    o: usize,
) -> Vec<f32> {
    let mut y = vec![0.0f32; n * o * h * w];
    if n == 0 || h == 0 || w == 0 {
        return y;
    }
    let tiles = Tiles::new(h, w);
    let u = transform_weight(weight, o, c);
    let parallelism = gemm_parallelism(n);
    let (per_thread, group) = tiles.shares_and_groups(n);
    y.par_chunks_mut(per_thread * o * h * w)
        .zip(x.par_chunks(per_thread * c * h * w))
        .for_each(|(y, x)| {
            let groups = y
                .chunks_mut(group * o * h * w)
                .zip(x.chunks(group * c * h * w));
            for (y, x) in groups {
                let images = x.len() / (c * h * w);
                let cols = images * tiles.count;
                with_scratch([POSITIONS * c * cols, POSITIONS * o * cols], |v, m| {
                    vectorised(
                        #[inline(always)]
                        || {
                            tiles.transform_inputs(x, c, v, cols);
                        },
                    );
                    for k in 0..POSITIONS {
                        matmul(
                            &mut m[k * o * cols..][..o * cols],
                            false,
                            Matrix::row_major(&u[k * o * c..][..o * c], o, c),
                            Matrix::row_major(&v[k * c * cols..][..c * cols], c, cols),
                            parallelism,
                        );
                    }
                    vectorised(
                        #[inline(always)]
                        || {
                            tiles.transform_outputs(m, o, cols, bias, y);
                        },
                    );
                });
            }
        });
    y
}

/// The weight gradient `dW [o, c, 3, 3]` of `sum(grad * conv(x, W))` for `x [n, c, h, w]`
/// and `grad [n, o, h, w]`, by F(2x2, 3x3) run backwards: with `M_k = U_k V_k` per tile
/// position, `dU_k [o, c] = dM_k [o, tiles] x V_k^T [tiles, c]` summed over the batch, where
/// `dM = A dY A^T` per tile, and then `dW = G^T dU G`. Each thread sums its own share of the
/// batch before the shares are added, like the im2col path.
pub(super) fn weight_gradient(
    x: &[f32],
    grad: &[f32],
    [n, c, h, w]: [usize; 4],
    o: usize,
) -> Vec<f32> {
    if n == 0 || h == 0 || w == 0 {
        return vec![0.0f32; o * c * 9];
    }
    let tiles = Tiles::new(h, w);
    let parallelism = gemm_parallelism(n);
    let (per_thread, group) = tiles.shares_and_groups(n);
    let partials: Vec<Vec<f32>> = x
        .par_chunks(per_thread * c * h * w)
        .zip(grad.par_chunks(per_thread * o * h * w))
        .map(|(x, grad)| {
            let mut du = vec![0.0f32; POSITIONS * o * c];
            let groups = x
                .chunks(group * c * h * w)
                .zip(grad.chunks(group * o * h * w));
            for (first_group, (x, grad)) in groups.enumerate() {
                let cols = x.len() / (c * h * w) * tiles.count;
                with_scratch([POSITIONS * c * cols, POSITIONS * o * cols], |v, dm| {
                    vectorised(
                        #[inline(always)]
                        || {
                            tiles.transform_inputs(x, c, v, cols);
                            tiles.transform_output_grads(grad, o, dm, cols);
                        },
                    );
                    for k in 0..POSITIONS {
                        // V_k [c, cols] read as its transpose [cols, c].
                        let v_k = Matrix {
                            values: &v[k * c * cols..][..c * cols],
                            rows: cols,
                            cols: c,
                            row_stride: 1,
                            col_stride: cols,
                        };
                        matmul(
                            &mut du[k * o * c..][..o * c],
                            first_group > 0,
                            Matrix::row_major(&dm[k * o * cols..][..o * cols], o, cols),
                            v_k,
                            parallelism,
                        );
                    }
                });
            }
            du
        })
        .collect();
    weight_from_transformed_gradient(&sum_of_shares(partials), o, c)
}

/// `dW = G^T dU G` for every `(o, c)` pair from `du [16, o, c]`: `[o, c, 3, 3]`, with
/// `G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]]`.
fn weight_from_transformed_gradient(du: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; o * c * 9];
    for (pair, g) in dw.chunks_exact_mut(9).enumerate() {
        let at = |row: usize, col: usize| du[(row * 4 + col) * o * c + pair];
        // G^T dU: 3 rows of 4, built column by column.
        let columns = [0, 1, 2, 3].map(|col| {
            let (d0, d1, d2, d3) = (at(0, col), at(1, col), at(2, col), at(3, col));
            [d0 + 0.5 * (d1 + d2), 0.5 * (d1 - d2), 0.5 * (d1 + d2) + d3]
        });
        let rows = [0, 1, 2].map(|row| columns.map(|column| column[row]));
        // (G^T dU) G.
        for (row, r) in rows.iter().enumerate() {
            g[row * 3] = r[0] + 0.5 * (r[1] + r[2]);
            g[row * 3 + 1] = 0.5 * (r[1] - r[2]);
            g[row * 3 + 2] = 0.5 * (r[1] + r[2]) + r[3];
        }
    }
    dw
}

/// `U_k = G g G^T` for every kernel `g = weight[o, c]`, laid out `[16, o, c]`, with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
fn transform_weight(weight: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; POSITIONS * o * c];
    for (pair, g) in weight.chunks_exact(9).enumerate() {
        // G g: 4 rows of 3.
        let mut gg = [[0.0f32; 3]; 4];
        for col in 0..3 {
            let (g0, g1, g2) = (g[col], g[3 + col], g[6 + col]);
            gg[0][col] = g0;
            gg[1][col] = 0.5 * (g0 + g1 + g2);
            gg[2][col] = 0.5 * (g0 - g1 + g2);
            gg[3][col] = g2;
        }
        // (G g) G^T: 4 columns per row.
        for (row, r) in gg.iter().enumerate() {
            let values = [
                r[0],
                0.5 * (r[0] + r[1] + r[2]),
                0.5 * (r[0] - r[1] + r[2]),
                r[2],
            ];
            for (col, value) in values.into_iter().enumerate() {
                u[(row * 4 + col) * o * c + pair] = value;
            }
        }
    }
    u
}

/// The 2x2-output tiling of an `h x w` image: tile `(ti, tj)` writes output rows `2ti,
/// 2ti + 1` and columns `2tj, 2tj + 1`, and reads input rows `2ti - 1 ..= 2ti + 2` and
/// columns `2tj - 1 ..= 2tj + 2` (zero outside the image).
#[derive(Clone, Copy)]
struct Tiles {
    h: usize,
    w: usize,
    /// Tiles per column and per row.
    rows: usize,
    cols: usize,
    /// `rows * cols`.
    count: usize,
}

impl Tiles {
    fn new(h: usize, w: usize) -> Self {
        let (rows, cols) = (h.div_ceil(2), w.div_ceil(2));
        Tiles {
            h,
            w,
            rows,
            cols,
            count: rows * cols,
        }
    }

    /// How a batch of `n` images is shared out: `(images per thread, images per group)`,
    /// each group about [`GROUP_TILES`] tiles' worth of images transformed side by side.
    fn shares_and_groups(self, n: usize) -> (usize, usize) {
        // Winograd runs only on convolutions far above the one-thread threshold.
        super::shares_and_groups(n, GROUP_TILES / self.count, usize::MAX)
    }

    /// [`Tiles::transform_input`] of every image of `images [n, c, h, w]`, side by side:
    /// image `i`'s tiles start at column `i * count` of `v [16, c, stride]`.
    #[inline(always)]
    fn transform_inputs(self, images: &[f32], c: usize, v: &mut [f32], stride: usize) {
        let mut scratch = InputScratch {
            rows_b: vec![0.0f32; 2 * 4 * self.band()],
            halves: vec![0.0f32; 2 * (self.cols + 1)],
        };
        let mut positions = positions_mut(v, c * stride);
        for (i, image) in images.chunks_exact(c * self.h * self.w).enumerate() {
            let first = i * self.count;
            self.transform_input(image, &mut positions, stride, first, &mut scratch);
        }
    }

    /// `(rows + 1) * cols`: the tile rows of one parity of padded input rows, one more than
    /// the tiles have (the last one reads it).
    fn band(self) -> usize {
        (self.rows + 1) * self.cols
    }

    /// Writes `V_k[ci, first + t] = (B^T d B)_k` for every tile `t` of every channel of
    /// `image [c, h, w]` into `positions[k][ci * stride..]` (`v [16, c, stride]` split by
    /// position), with `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
    ///
    /// Both halves of the transform run over whole rows of tiles so that they vectorise:
    /// first `d B` on every input row (shared by the two tiles above and below it), then
    /// `B^T (d B)` on every tile at once, each output position its own slice.
    #[inline(always)]
    fn transform_input(
        self,
        image: &[f32],
        positions: &mut [&mut [f32]; POSITIONS],
        stride: usize,
        first: usize,
        scratch: &mut InputScratch,
    ) {
        let (count, cols, band) = (self.count, self.cols, self.band());
        // `d B` of padded input row `2 * ti + parity`, position `col` of tile `(ti, tj)`, at
        // `rows_b[parity][col][ti * cols + tj]`, for tile rows 0..=rows.
        let rows_b = &mut scratch.rows_b;
        let (even, odd) = scratch.halves.split_at_mut(cols + 1);
        for (ci, plane) in image.chunks_exact(self.h * self.w).enumerate() {
            // Padded row r holds input row r - 1 (zero above and below the image).
            for padded_row in 0..2 * self.rows + 2 {
                let (parity, ti) = (padded_row % 2, padded_row / 2);
                let out = &mut rows_b[parity * 4 * band + ti * cols..];
                let (d0, rest) = out.split_at_mut(band);
                let (d1, rest) = rest.split_at_mut(band);
                let (d2, d3) = rest.split_at_mut(band);
                let (d0, d1, d2, d3) = (
                    &mut d0[..cols],
                    &mut d1[..cols],
                    &mut d2[..cols],
                    &mut d3[..cols],
                );
                let Some(y) = padded_row.checked_sub(1).filter(|&y| y < self.h) else {
                    for d in [d0, d1, d2, d3] {
                        d.fill(0.0);
                    }
                    continue;
                };
                split_padded_row(&plane[y * self.w..][..self.w], even, odd);
                // Tile tj reads padded columns 2tj ..= 2tj + 3: even[tj], odd[tj],
                // even[tj + 1], odd[tj + 1].
                let (e0, e1, o0, o1) = (&even[..cols], &even[1..], &odd[..cols], &odd[1..]);
                for j in 0..cols {
                    d0[j] = e0[j] - e1[j];
                    d1[j] = o0[j] + e1[j];
                    d2[j] = e1[j] - o0[j];
                    d3[j] = o0[j] - o1[j];
                }
            }
            // B^T (d B): tile (ti, tj) reads padded rows 2ti (even, ti), 2ti + 1 (odd, ti),
            // 2ti + 2 (even, ti + 1) and 2ti + 3 (odd, ti + 1).
            let (row0, rest) = positions.split_at_mut(4);
            let (row1, rest) = rest.split_at_mut(4);
            let (row2, row3) = rest.split_at_mut(4);
            for col in 0..4 {
                let r0 = &rows_b[col * band..][..count];
                let r2 = &rows_b[col * band + cols..][..count];
                let r1 = &rows_b[(4 + col) * band..][..count];
                let r3 = &rows_b[(4 + col) * band + cols..][..count];
                // Positions col, 4 + col, 8 + col and 12 + col of V for this channel.
                let at = ci * stride + first;
                let k0 = &mut row0[col][at..][..count];
                let k1 = &mut row1[col][at..][..count];
                let k2 = &mut row2[col][at..][..count];
                let k3 = &mut row3[col][at..][..count];
                for t in 0..count {
                    k0[t] = r0[t] - r2[t];
                    k1[t] = r1[t] + r2[t];
                    k2[t] = r2[t] - r1[t];
                    k3[t] = r1[t] - r3[t];
                }
            }
        }
    }

    /// [`Tiles::transform_output`] of every image of `images [n, o, h, w]`, side by side:
    /// image `i`'s tiles start at column `i * count` of `m [16, o, stride]`.
    #[inline(always)]
    fn transform_outputs(
        self,
        m: &[f32],
        o: usize,
        stride: usize,
        bias: Option<&[f32]>,
        images: &mut [f32],
    ) {
        let mut scratch = OutputScratch {
            a_m: vec![0.0f32; 2 * 4 * self.count],
            y: vec![0.0f32; 4 * self.count],
        };
        let m = Transformed { m, o, stride };
        for (i, image) in images.chunks_exact_mut(o * self.h * self.w).enumerate() {
            self.transform_output(m, i * self.count, bias, image, &mut scratch);
        }
    }

    /// Writes `Y = A^T M A` (plus the bias) for every tile `first + t` of every output
    /// channel from `m [16, o, stride]` into `image [o, h, w]`, dropping the pixels past an
    /// odd edge, with `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`. Like the input transform, both
    /// halves run over all tiles at once.
    #[inline(always)]
    fn transform_output(
        self,
        Transformed { m, o, stride }: Transformed,
        first: usize,
        bias: Option<&[f32]>,
        image: &mut [f32],
        OutputScratch { a_m, y }: &mut OutputScratch,
    ) {
        let count = self.count;
        for (oi, plane) in image.chunks_exact_mut(self.h * self.w).enumerate() {
            let at =
                |row: usize, col: usize| &m[((row * 4 + col) * o + oi) * stride + first..][..count];
            for col in 0..4 {
                let (m0, m1, m2, m3) = (at(0, col), at(1, col), at(2, col), at(3, col));
                let (top, bottom) = a_m.split_at_mut(4 * count);
                let top = &mut top[col * count..][..count];
                let bottom = &mut bottom[col * count..][..count];
                for t in 0..count {
                    top[t] = m0[t] + m1[t] + m2[t];
                    bottom[t] = m1[t] - m2[t] - m3[t];
                }
            }
            let b = bias.map_or(0.0, |b| b[oi]);
            for dy in 0..2 {
                let r = |col: usize| &a_m[(dy * 4 + col) * count..][..count];
                let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                let (left, right) = y[dy * 2 * count..][..2 * count].split_at_mut(count);
                for t in 0..count {
                    left[t] = b + r0[t] + r1[t] + r2[t];
                    right[t] = b + r1[t] - r2[t] - r3[t];
                }
            }
            self.scatter(y, plane);
        }
    }

    /// [`Tiles::transform_output_grad`] of every image of `images [n, o, h, w]`, side by
    /// side: image `i`'s tiles start at column `i * count` of `dm [16, o, stride]`.
    #[inline(always)]
    fn transform_output_grads(self, images: &[f32], o: usize, dm: &mut [f32], stride: usize) {
        // The gradient of output pixel (2ti + dy, 2tj + dx) at `[dy * 2 + dx][ti * cols + tj]`.
        // Entries past an odd edge are never written and stay zero.
        let mut g = vec![0.0f32; 4 * self.count];
        let mut positions = positions_mut(dm, o * stride);
        for (i, image) in images.chunks_exact(o * self.h * self.w).enumerate() {
            let first = i * self.count;
            self.transform_output_grad(image, &mut positions, stride, first, &mut g);
        }
    }

    /// Writes `dM_k = (A dY A^T)_k` for every tile `first + t` of every channel of the
    /// output gradient `image [o, h, w]` into `positions[k][oi * stride..]` (`dm [16, o,
    /// stride]` split by position), the pixels past an odd edge read as zero, with
    /// `A = [[1, 0], [1, 1], [1, -1], [0, -1]]`; `g` is scratch of `4 * count` values.
    #[inline(always)]
    fn transform_output_grad(
        self,
        image: &[f32],
        positions: &mut [&mut [f32]; POSITIONS],
        stride: usize,
        first: usize,
        g: &mut [f32],
    ) {
        let (count, cols) = (self.count, self.cols);
        for (oi, plane) in image.chunks_exact(self.h * self.w).enumerate() {
            for (py, row) in plane.chunks_exact(self.w).enumerate() {
                let (ti, dy) = (py / 2, py % 2);
                let (left, right) = g[dy * 2 * count..][..2 * count].split_at_mut(count);
                let (left, right) = (
                    &mut left[ti * cols..][..cols],
                    &mut right[ti * cols..][..cols],
                );
                let pairs = row.chunks_exact(2);
                if let Some(&last) = pairs.remainder().first() {
                    left[cols - 1] = last;
                }
                for ((l, r), pair) in left.iter_mut().zip(right.iter_mut()).zip(pairs) {
                    *l = pair[0];
                    *r = pair[1];
                }
            }
            let (top, bottom) = g.split_at(2 * count);
            let (g00, g01) = top.split_at(count);
            let (g10, g11) = bottom.split_at(count);
            // A dY: rows (g0., g0. + g1., g0. - g1., -g1.); then (A dY) A^T per row (a, b):
            // (a, a + b, a - b, -b).
            let at = oi * stride + first;
            for (row, ks) in positions.chunks_exact_mut(4).enumerate() {
                let [k0, k1, k2, k3] = ks else {
                    unreachable!("chunks of four positions")
                };
                let (k0, k1) = (&mut k0[at..][..count], &mut k1[at..][..count]);
                let (k2, k3) = (&mut k2[at..][..count], &mut k3[at..][..count]);
                for t in 0..count {
                    let (a, b) = match row {
                        0 => (g00[t], g01[t]),
                        1 => (g00[t] + g10[t], g01[t] + g11[t]),
                        2 => (g00[t] - g10[t], g01[t] - g11[t]),
                        _ => (-g10[t], -g11[t]),
                    };
                    k0[t] = a;
                    k1[t] = a + b;
                    k2[t] = a - b;
                    k3[t] = -b;
                }
            }
        }
    }

    /// Copies the 2x2 outputs `y [2, 2, tiles]` of every tile into `plane [h, w]`.
    #[inline(always)]
    fn scatter(self, y: &[f32], plane: &mut [f32]) {
        let count = self.count;
        for (py, out) in plane.chunks_exact_mut(self.w).enumerate() {
            let (ti, dy) = (py / 2, py % 2);
            let left = &y[(dy * 2) * count + ti * self.cols..][..self.cols];
            let right = &y[(dy * 2 + 1) * count + ti * self.cols..][..self.cols];
            for (pair, (l, r)) in out.chunks_exact_mut(2).zip(left.iter().zip(right)) {
                pair[0] = *l;
                pair[1] = *r;
            }
            if self.w % 2 == 1 {
                out[self.w - 1] = left[self.cols - 1];
            }
        }
    }
}

/// The input transform's buffers, kept across the images of a group.
struct InputScratch {
    /// `d B` of every padded row: `[parity][col][tile row][tile column]`.
    rows_b: Vec<f32>,
    /// The even and odd columns of one padded row, `cols + 1` each.
    halves: Vec<f32>,
}

/// The output transform's buffers, kept across the images of a group.
struct OutputScratch {
    /// `A^T M`: `[output row][col][tile]`.
    a_m: Vec<f32>,
    /// `(A^T M) A`: `[output row][output col][tile]`.
    y: Vec<f32>,
}

/// The 16 GEMMs' products `m [16, o, stride]` that the output transform reads.
#[derive(Clone, Copy)]
struct Transformed<'a> {
    m: &'a [f32],
    o: usize,
    stride: usize,
}

/// `v [16, len]` split into its 16 positions.
fn positions_mut(v: &mut [f32], len: usize) -> [&mut [f32]; POSITIONS] {
    let mut positions = v.chunks_exact_mut(len);
    std::array::from_fn(|_| positions.next().expect("v holds 16 positions"))
}

/// Splits input row `row` into the even and odd columns of its zero-padded version (input
/// column `x` at padded column `x + 1`): padded column `2j` into `even[j]`, `2j + 1` into
/// `odd[j]`, zero outside the row. Unit-stride halves let the row transform vectorise,
/// where reading the padded row two columns at a time did not.
#[inline(always)]
fn split_padded_row(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    // The pairs below write odd[..w / 2] and even[1..=w / 2], an odd width's last value
    // odd[w / 2]; only the left border and the columns past the right edge are left.
    let cols = even.len() - 1;
    even[0] = 0.0;
    even[cols] = 0.0;
    odd[cols] = 0.0;
    let pairs = row.chunks_exact(2);
    if let Some(&last) = pairs.remainder().first() {
        odd[row.len() / 2] = last;
    }
    for (j, pair) in pairs.enumerate() {
        odd[j] = pair[0];
        even[j + 1] = pair[1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct definition: `y[o, y, x] = bias[o] + sum_c sum_ky,kx w[o, c, ky, kx] *
    /// x[c, y + ky - 1, x + kx - 1]`, in f64.
    fn direct(
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        [n, c, h, w]: [usize; 4],
        o: usize,
    ) -> Vec<f32> {
        let mut y = vec![0.0f32; n * o * h * w];
        for ni in 0..n {
            for oi in 0..o {
                for py in 0..h {
                    for px in 0..w {
                        let mut sum = bias.map_or(0.0, |b| b[oi] as f64);
                        for ci in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (sy, sx) = (py + ky, px + kx);
                                    if sy == 0 || sx == 0 || sy > h || sx > w {
                                        continue;
                                    }
                                    let xv = x[((ni * c + ci) * h + sy - 1) * w + sx - 1];
                                    let wv = weight[((oi * c + ci) * 3 + ky) * 3 + kx];
                                    sum += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((ni * o + oi) * h + py) * w + px] = sum as f32;
                    }
                }
            }
        }
        y
    }

    /// The direct definition of the weight gradient: `dW[o, c, ky, kx] = sum_n,y,x
    /// grad[n, o, y, x] * x[n, c, y + ky - 1, x + kx - 1]`, in f64.
    fn direct_weight_gradient(
        x: &[f32],
        grad: &[f32],
        [n, c, h, w]: [usize; 4],
        o: usize,
    ) -> Vec<f32> {
        let mut dw = vec![0.0f32; o * c * 9];
        for oi in 0..o {
            for ci in 0..c {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let mut sum = 0.0f64;
                        for ni in 0..n {
                            for py in 0..h {
                                for px in 0..w {
                                    let (sy, sx) = (py + ky, px + kx);
                                    if sy == 0 || sx == 0 || sy > h || sx > w {
                                        continue;
                                    }
                                    let xv = x[((ni * c + ci) * h + sy - 1) * w + sx - 1];
                                    let gv = grad[((ni * o + oi) * h + py) * w + px];
                                    sum += xv as f64 * gv as f64;
                                }
                            }
                        }
                        dw[((oi * c + ci) * 3 + ky) * 3 + kx] = sum as f32;
                    }
                }
            }
        }
        dw
    }

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_direct_convolution_on_odd_shapes() {
        // Odd and even sizes, 1-pixel images, one image (multi-threaded GEMM), groups of
        // several images, with and without bias.
        let shapes = [
            ([1, 8, 5, 7], 9, true),
            ([3, 9, 4, 4], 8, false),
            ([5, 8, 1, 1], 8, true),
            ([2, 12, 3, 1], 10, true),
            ([7, 16, 6, 9], 16, false),
        ];
        for (seed, ([n, c, h, w], o, with_bias)) in shapes.into_iter().enumerate() {
            let seed = seed as u32 * 3 + 1;
            let x = values(n * c * h * w, seed);
            let weight = values(o * c * 9, seed + 1);
            let bias = with_bias.then(|| values(o, seed + 2));
            let ours = forward(&x, &weight, bias.as_deref(), [n, c, h, w], o);
            let exact = direct(&x, &weight, bias.as_deref(), [n, c, h, w], o);
            let worst = ours
                .iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-5,
                "[{n}, {c}, {h}, {w}] -> {o}: largest difference {worst}"
            );
        }
    }

    #[test]
    fn weight_gradient_matches_the_direct_definition_on_odd_shapes() {
        // Odd and even sizes, 1-pixel images, one image, several groups per thread (14x14
        // images: 5 per group), shares of unequal size.
        let shapes = [
            ([1, 8, 5, 7], 9),
            ([3, 9, 4, 4], 8),
            ([5, 8, 1, 1], 8),
            ([2, 12, 3, 1], 10),
            ([13, 8, 14, 14], 8),
        ];
        for (seed, ([n, c, h, w], o)) in shapes.into_iter().enumerate() {
            let seed = seed as u32 * 5 + 2;
            let x = values(n * c * h * w, seed);
            let grad = values(n * o * h * w, seed + 1);
            let ours = weight_gradient(&x, &grad, [n, c, h, w], o);
            let exact = direct_weight_gradient(&x, &grad, [n, c, h, w], o);
            let scale = exact.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let worst = ours
                .iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-5 * scale,
                "[{n}, {c}, {h}, {w}] -> {o}: largest difference {worst} (scale {scale})"
            );
        }
    }
}
