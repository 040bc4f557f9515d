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

use super::{gemm_parallelism, matmul, sum_of_shares, vectorised, with_scratch, zeroed, Matrix};

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
    let len = n * o * h * w;
    if n == 0 || h == 0 || w == 0 {
        return vec![0.0f32; len];
    }
    let tiles = Tiles::new(h, w);
    let u = transform_weight(weight, o, c);
    let parallelism = gemm_parallelism(n);
    let (_, group) = tiles.shares_and_groups(n);
    // Every group is a task of its own, so that a thread that finishes early takes the
    // groups the other has not started (a thread's fixed share kept one core idle whenever
    // the other was slowed down). The output is zeroed a group at a time by the thread
    // about to write it (see `written_by_planes`), not by the calling thread up front.
    let mut y = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(group * o * h * w)
        .zip(x.par_chunks(group * c * h * w))
        .for_each(|(y, x)| {
            let y = zeroed(y);
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
        });
    // SAFETY: `x` and `y` hold the same `n` images, so the groups zipped above cover all
    // `len` values, and `zeroed` initialised each of them.
    unsafe { y.set_len(len) };
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
        let mut scratch = InputScratch::new(self);
        let mut positions = positions_mut(v, c * stride);
        for (i, image) in images.chunks_exact(c * self.h * self.w).enumerate() {
            let first = i * self.count;
            self.transform_input(image, &mut positions, stride, first, &mut scratch);
        }
    }

    /// The width of a tile row's pixels, `2 * cols`: the image's width rounded up to even.
    fn wide(self) -> usize {
        2 * self.cols
    }

    /// Writes `V_k[ci, first + t] = (B^T d B)_k` for every tile `t` of every channel of
    /// `image [c, h, w]` into `positions[k][ci * stride..]` (`v [16, c, stride]` split by
    /// position), with `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
    ///
    /// Every loop runs over a whole plane, not over a row of tiles (7 or 14 on
    /// Fashion-MNIST, too short for vector loops): the plane's even and odd rows are copied
    /// apart, so that the four padded rows a tile row reads are four flat arrays, one tile
    /// row's pixels after the other; their even and odd columns are split once, flat, one
    /// value per tile; `B^T d` combines those halves over the whole plane and `(B^T d) B`
    /// combines its even and odd columns. Only the tiles at the left and right border are
    /// corrected one by one.
    #[inline(always)]
    fn transform_input(
        self,
        image: &[f32],
        positions: &mut [&mut [f32]; POSITIONS],
        stride: usize,
        first: usize,
        scratch: &mut InputScratch,
    ) {
        let (count, wide) = (self.count, self.wide());
        let InputScratch {
            even_rows,
            odd_rows,
            columns,
            even,
            odd,
        } = scratch;
        let (cols, band) = (self.cols, (self.rows + 1) * self.cols);
        for (ci, plane) in image.chunks_exact(self.h * self.w).enumerate() {
            // Padded row 2ti + 1 is plane row 2ti (even_rows[ti]); padded row 2ti is plane
            // row 2ti - 1 (odd_rows[ti]). Rows and columns past the image stay zero.
            for (y, row) in plane.chunks_exact(self.w).enumerate() {
                let (rows, ti) = match y % 2 {
                    0 => (&mut *even_rows, y / 2),
                    _ => (&mut *odd_rows, y / 2 + 1),
                };
                copy_row(&mut rows[ti * wide..][..self.w], row);
            }
            // The even and odd columns of every padded row, once: B^T's combinations of
            // rows below are linear, so they can act on the halves instead of whole rows.
            // columns = [odd_rows' even, odd_rows' odd, even_rows' even, even_rows' odd],
            // `[rows + 1][cols]` each.
            let (odd_halves, even_halves) = columns.split_at_mut(2 * band);
            for (rows, halves) in [(&*odd_rows, odd_halves), (&*even_rows, even_halves)] {
                let (e, o) = halves.split_at_mut(band);
                deinterleave(rows, e, o);
            }
            // Tile row ti reads padded rows 2ti ..= 2ti + 3: odd_rows[ti], even_rows[ti],
            // odd_rows[ti + 1], even_rows[ti + 1]; one row further is `cols` further on.
            let half =
                |which: usize, shift: usize| &columns[which * band + shift * cols..][..count];
            let at = ci * stride + first;
            // B^T's rows: r0 - r2, r1 + r2, r2 - r1, r1 - r3, on the even columns (which
            // = 0 for odd_rows, 2 for even_rows) and on the odd ones (1 and 3).
            let rows_of_b = [
                ((0, 0), (0, 1), -1.0),
                ((2, 0), (0, 1), 1.0),
                ((0, 1), (2, 0), -1.0),
                ((2, 0), (2, 1), -1.0),
            ];
            for (row, ((a, a_shift), (b, b_shift), sign)) in rows_of_b.into_iter().enumerate() {
                // Tile t's columns 2tj - 1, 2tj, 2tj + 1, 2tj + 2 are odd[t - 1], even[t],
                // odd[t], even[t + 1] (odd shifted by one: odd[t + 1] holds column 2t + 1).
                add_signed(&mut even[..count], half(a, a_shift), half(b, b_shift), sign);
                add_signed(
                    &mut odd[1..],
                    half(a + 1, a_shift),
                    half(b + 1, b_shift),
                    sign,
                );
                let [k0, k1, k2, k3] = &mut positions[row * 4..][..4] else {
                    unreachable!("four positions per row of B^T")
                };
                let (k0, k1) = (&mut k0[at..][..count], &mut k1[at..][..count]);
                let (k2, k3) = (&mut k2[at..][..count], &mut k3[at..][..count]);
                let (here, e0) = (&odd[1..], &even[..count]);
                input_columns([k0, k1, k2, k3], &odd[..count], here, e0, &even[1..]);
                // Column -1 and column 2 * cols are padding: the flat loop read the
                // neighbouring tile rows there.
                for ti in 0..self.rows {
                    let (left, right) = (ti * self.cols, ti * self.cols + self.cols - 1);
                    k0[left] = -here[left];
                    k3[right] = e0[right];
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
            halves: vec![0.0f32; 2 * self.count],
            pixels: vec![0.0f32; 2 * self.count],
        };
        let m = Transformed { m, o, stride };
        for (i, image) in images.chunks_exact_mut(o * self.h * self.w).enumerate() {
            self.transform_output(m, i * self.count, bias, image, &mut scratch);
        }
    }

    /// Writes `Y = A^T M A` (plus the bias) for every tile `first + t` of every output
    /// channel from `m [16, o, stride]` into `image [o, h, w]`, dropping the pixels past an
    /// odd edge, with `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`. Like the input transform,
    /// every loop runs over all tiles at once: `A^T M`, then `(A^T M) A` written as the
    /// even and odd columns of each output row, which the tile rows then copy out.
    #[inline(always)]
    fn transform_output(
        self,
        Transformed { m, o, stride }: Transformed,
        first: usize,
        bias: Option<&[f32]>,
        image: &mut [f32],
        OutputScratch {
            a_m,
            halves,
            pixels,
        }: &mut OutputScratch,
    ) {
        let count = self.count;
        for (oi, plane) in image.chunks_exact_mut(self.h * self.w).enumerate() {
            let at =
                |row: usize, col: usize| &m[((row * 4 + col) * o + oi) * stride + first..][..count];
            for col in 0..4 {
                let (top, bottom) = a_m.split_at_mut(4 * count);
                let top = &mut top[col * count..][..count];
                let bottom = &mut bottom[col * count..][..count];
                output_rows(
                    top,
                    bottom,
                    [at(0, col), at(1, col), at(2, col), at(3, col)],
                );
            }
            let b = bias.map_or(0.0, |b| b[oi]);
            let (left, right) = halves.split_at_mut(count);
            for dy in 0..2 {
                let r = |col: usize| &a_m[(dy * 4 + col) * count..][..count];
                output_rows(left, right, [r(0), r(1), r(2), r(3)]);
                // Output row 2ti + dy of every tile row, `2 * cols` pixels each.
                interleave(left, right, b, pixels);
                let rows = plane.chunks_exact_mut(self.w).skip(dy).step_by(2);
                for (out, row) in rows.zip(pixels.chunks_exact(self.wide())) {
                    copy_row(out, &row[..self.w]);
                }
            }
        }
    }

    /// [`Tiles::transform_output_grad`] of every image of `images [n, o, h, w]`, side by
    /// side: image `i`'s tiles start at column `i * count` of `dm [16, o, stride]`.
    #[inline(always)]
    fn transform_output_grads(self, images: &[f32], o: usize, dm: &mut [f32], stride: usize) {
        let mut scratch = GradScratch {
            // Rows and columns past an odd edge are never written and stay zero.
            rows: vec![0.0f32; 2 * self.rows * self.wide()],
            g: vec![0.0f32; 4 * self.count],
        };
        let mut positions = positions_mut(dm, o * stride);
        for (i, image) in images.chunks_exact(o * self.h * self.w).enumerate() {
            let first = i * self.count;
            self.transform_output_grad(image, &mut positions, stride, first, &mut scratch);
        }
    }

    /// Writes `dM_k = (A dY A^T)_k` for every tile `first + t` of every channel of the
    /// output gradient `image [o, h, w]` into `positions[k][oi * stride..]` (`dm [16, o,
    /// stride]` split by position), the pixels past an odd edge read as zero, with
    /// `A = [[1, 0], [1, 1], [1, -1], [0, -1]]`. The output rows are copied apart by parity
    /// and their even and odd columns split over the whole plane, so that every loop runs
    /// over all tiles at once.
    #[inline(always)]
    fn transform_output_grad(
        self,
        image: &[f32],
        positions: &mut [&mut [f32]; POSITIONS],
        stride: usize,
        first: usize,
        GradScratch { rows, g }: &mut GradScratch,
    ) {
        let (count, wide) = (self.count, self.wide());
        let (even_rows, odd_rows) = rows.split_at_mut(self.rows * wide);
        for (oi, plane) in image.chunks_exact(self.h * self.w).enumerate() {
            for (y, row) in plane.chunks_exact(self.w).enumerate() {
                let rows = if y % 2 == 0 {
                    &mut *even_rows
                } else {
                    &mut *odd_rows
                };
                copy_row(&mut rows[y / 2 * wide..][..self.w], row);
            }
            // The gradient of output pixel (2ti + dy, 2tj + dx) at g[dy * 2 + dx][ti * cols + tj].
            let (top, bottom) = g.split_at_mut(2 * count);
            for (rows, g) in [(&*even_rows, top), (&*odd_rows, bottom)] {
                let (left, right) = g.split_at_mut(count);
                deinterleave(rows, left, right);
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
}

/// The input transform's buffers, kept across the images of a group.
struct InputScratch {
    /// Padded rows `2ti + 1` (the plane's even rows), `[rows + 1][2 * cols]`, zero past
    /// the image.
    even_rows: Vec<f32>,
    /// Padded rows `2ti` (the plane's odd rows, none above the first), `[rows + 1][2 *
    /// cols]`, zero past the image.
    odd_rows: Vec<f32>,
    /// The even and odd columns of `odd_rows`, then of `even_rows`: `[4][rows + 1][cols]`.
    columns: Vec<f32>,
    /// A row of `B^T d` for every tile row, its even columns: one per tile and one spare,
    /// `count + 1`.
    even: Vec<f32>,
    /// Its odd columns, shifted by one (`odd[t + 1]` for tile `t`): `count + 1`.
    odd: Vec<f32>,
}

impl InputScratch {
    fn new(tiles: Tiles) -> Self {
        let padded = (tiles.rows + 1) * tiles.wide();
        InputScratch {
            even_rows: vec![0.0; padded],
            odd_rows: vec![0.0; padded],
            columns: vec![0.0; 4 * (tiles.rows + 1) * tiles.cols],
            even: vec![0.0; tiles.count + 1],
            odd: vec![0.0; tiles.count + 1],
        }
    }
}

/// The output transform's buffers, kept across the images of a group.
struct OutputScratch {
    /// `A^T M`: `[output row][col][tile]`.
    a_m: Vec<f32>,
    /// `(A^T M) A` of one output row: its left and right pixels, `[2][tiles]`.
    halves: Vec<f32>,
    /// One output row of every tile row, `[rows][2 * cols]`.
    pixels: Vec<f32>,
}

/// The output-gradient transform's buffers, kept across the images of a group.
struct GradScratch {
    /// The gradient's even rows, then its odd rows: `[2][rows][2 * cols]`, zero past the
    /// image.
    rows: Vec<f32>,
    /// `[2][2][tiles]`: the gradient of output pixel `(2ti + dy, 2tj + dx)` at `[dy][dx][ti
    /// * cols + tj]`.
    g: Vec<f32>,
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

// The transforms' inner loops, each a function of its own: slices that arrive as
// arguments cannot overlap, so the compiler vectorises the loops without run-time overlap
// checks (which, inlined into one body, it had added, and often failed).

/// `out = a + sign * b`, element by element (`sign` is 1 or -1, so the result is exact).
#[inline(always)]
fn add_signed(out: &mut [f32], a: &[f32], b: &[f32], sign: f32) {
    for ((out, a), b) in out.iter_mut().zip(a).zip(b) {
        *out = a + sign * b;
    }
}

/// `even[t] = pairs[2t]`, `odd[t] = pairs[2t + 1]` (as many as `even` and `odd` hold).
///
/// With AVX2, 8 pairs per step with explicit shuffles: the compiler turned this loop into
/// one scalar move per value, a fifth of the input transform's time.
#[inline(always)]
fn deinterleave(pairs: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let count = even.len().min(odd.len()).min(pairs.len() / 2);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        done = unsafe {
            avx2::deinterleave(&pairs[..2 * count], &mut even[..count], &mut odd[..count])
        };
    }
    let rest = pairs[2 * done..2 * count].chunks_exact(2);
    for ((p, e), o) in rest.zip(&mut even[done..count]).zip(&mut odd[done..count]) {
        *e = p[0];
        *o = p[1];
    }
}

/// `pairs[2t] = bias + left[t]`, `pairs[2t + 1] = bias + right[t]` (as many as `pairs`
/// holds), with AVX2 8 pairs per step like [`deinterleave`].
#[inline(always)]
fn interleave(left: &[f32], right: &[f32], bias: f32, pairs: &mut [f32]) {
    let count = left.len().min(right.len()).min(pairs.len() / 2);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        done = unsafe {
            avx2::interleave(
                &left[..count],
                &right[..count],
                bias,
                &mut pairs[..2 * count],
            )
        };
    }
    let rest = pairs[2 * done..2 * count].chunks_exact_mut(2);
    for ((p, l), r) in rest.zip(&left[done..count]).zip(&right[done..count]) {
        p[0] = bias + l;
        p[1] = bias + r;
    }
}

/// The shuffles of [`deinterleave`] and [`interleave`] on AVX2, 8 pairs a step; each
/// returns how many pairs it did (a multiple of 8), the caller does the rest.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `even.len() == odd.len() == pairs.len() / 2`.
    #[target_feature(enable = "avx2")]
    pub(super) fn deinterleave(pairs: &[f32], even: &mut [f32], odd: &mut [f32]) -> usize {
        let chunks = pairs
            .chunks_exact(16)
            .zip(even.chunks_exact_mut(8))
            .zip(odd.chunks_exact_mut(8));
        let mut done = 0;
        for ((p, e), o) in chunks {
            // SAFETY: 16 values are read from `p` and 8 written to each of `e` and `o`.
            unsafe {
                let a = _mm256_loadu_ps(p.as_ptr());
                let b = _mm256_loadu_ps(p.as_ptr().add(8));
                // Per 128-bit lane: [a0, a2, b0, b2 | a4, a6, b4, b6], then the 64-bit
                // halves put in order 0, 2, 1, 3.
                let evens = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                let odds = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
                let order = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                _mm256_storeu_ps(e.as_mut_ptr(), order(evens));
                _mm256_storeu_ps(o.as_mut_ptr(), order(odds));
            }
            done += 8;
        }
        done
    }

    /// `left.len() == right.len() == pairs.len() / 2`.
    #[target_feature(enable = "avx2")]
    pub(super) fn interleave(left: &[f32], right: &[f32], bias: f32, pairs: &mut [f32]) -> usize {
        let chunks = pairs
            .chunks_exact_mut(16)
            .zip(left.chunks_exact(8))
            .zip(right.chunks_exact(8));
        let mut done = 0;
        let b = _mm256_set1_ps(bias);
        for ((p, l), r) in chunks {
            // SAFETY: 8 values are read from each of `l` and `r` and 16 written to `p`.
            unsafe {
                let l = _mm256_add_ps(b, _mm256_loadu_ps(l.as_ptr()));
                let r = _mm256_add_ps(b, _mm256_loadu_ps(r.as_ptr()));
                // Per 128-bit lane [l0, r0, l1, r1 | l4, r4, l5, r5] and [l2, r2, l3, r3 |
                // l6, r6, l7, r7]; their low lanes, then their high lanes.
                let low = _mm256_unpacklo_ps(l, r);
                let high = _mm256_unpackhi_ps(l, r);
                _mm256_storeu_ps(p.as_mut_ptr(), _mm256_permute2f128_ps::<0x20>(low, high));
                _mm256_storeu_ps(
                    p.as_mut_ptr().add(8),
                    _mm256_permute2f128_ps::<0x31>(low, high),
                );
            }
            done += 8;
        }
        done
    }
}

/// Copies `src` into `dst` (equal lengths) 8 values at a time, the last 8 overlapping the
/// ones before: rows are 7 to 64 values long, where a call to `memcpy` per row cost more
/// than the copy.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let len = src.len();
    if len < 8 {
        dst.copy_from_slice(src);
        return;
    }
    let mut at = 0;
    while at + 8 < len {
        dst[at..at + 8].copy_from_slice(&src[at..at + 8]);
        at += 8;
    }
    dst[len - 8..].copy_from_slice(&src[len - 8..]);
}

/// `B^T`'s rows applied across a row of `B^T d`: with tile `t`'s columns `c0 = before[t]`,
/// `c1 = even[t]`, `c2 = here[t]`, `c3 = next[t]`, `k = (c0 - c2, c1 + c2, c2 - c1, c1 -
/// c3)`.
#[inline(always)]
fn input_columns(
    [k0, k1, k2, k3]: [&mut [f32]; 4],
    before: &[f32],
    here: &[f32],
    even: &[f32],
    next: &[f32],
) {
    let count = k0.len();
    let (k1, k2, k3) = (&mut k1[..count], &mut k2[..count], &mut k3[..count]);
    let (before, here, even, next) = (
        &before[..count],
        &here[..count],
        &even[..count],
        &next[..count],
    );
    for t in 0..count {
        k0[t] = before[t] - here[t];
        k1[t] = even[t] + here[t];
        k2[t] = here[t] - even[t];
        k3[t] = even[t] - next[t];
    }
}

/// `A^T`'s two rows applied to four rows `m`: `top = m0 + m1 + m2`, `bottom = m1 - m2 -
/// m3`.
#[inline(always)]
fn output_rows(top: &mut [f32], bottom: &mut [f32], [m0, m1, m2, m3]: [&[f32]; 4]) {
    let count = top.len();
    let bottom = &mut bottom[..count];
    let (m0, m1, m2, m3) = (&m0[..count], &m1[..count], &m2[..count], &m3[..count]);
    for t in 0..count {
        top[t] = m0[t] + m1[t] + m2[t];
        bottom[t] = m1[t] - m2[t] - m3[t];
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
