//! Pictures a person can look at: image grids and 2-D scatter densities as PNG.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use image::{ImageBuffer, Luma, Rgb};

use crate::error::TrainError;

/// The most images one grid PNG holds, a grid of 100 x 100: the images, their latents and
/// the grid are held in memory at once.
pub const MAX_GRID_IMAGES: usize = 10_000;

/// The most points one scatter PNG of a 2-D model is drawn from.
pub const MAX_SCATTER_POINTS: usize = 1_000_000;

/// Writes pixel levels `[n, c, h, w]` held in a tensor (values `0..levels`) as a grid PNG
/// with `columns` images per row: [`write_image_grid`] of the tensor's values.
pub fn write_level_grid<B: Backend>(
    path: &Path,
    pixels: Tensor<B, 4>,
    levels: u32,
    columns: usize,
) -> Result<(), TrainError> {
    let shape = pixels.dims();
    let values = pixels
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default();
    write_image_grid(path, &values, shape, levels, columns)
}

/// Writes images `[n, c, h, w]` (pixel levels `0..levels`, row-major, `c` = 1 or 3) as a
/// grid PNG with `columns` images per row and a one-pixel border.
pub fn write_image_grid(
    path: &Path,
    pixels: &[f32],
    shape: [usize; 4],
    levels: u32,
    columns: usize,
) -> Result<(), TrainError> {
    let [n, c, h0, w0] = shape;
    // Small images (digits are 8x8) are enlarged, nearest-neighbour, to at least 32 pixels.
    let zoom = (32 / h0.max(w0).max(1)).max(1);
    let (h, w) = (h0 * zoom, w0 * zoom);
    let columns = columns.clamp(1, n.max(1));
    let rows = n.div_ceil(columns);
    let (gw, gh) = ((w + 1) * columns + 1, (h + 1) * rows + 1);
    let scale = 255.0 / (levels.max(2) - 1) as f32;
    let value = |k: usize, ch: usize, y: usize, x: usize| -> u8 {
        let v = pixels[((k * c + ch) * h0 + y / zoom) * w0 + x / zoom];
        (v * scale).round().clamp(0.0, 255.0) as u8
    };
    let mut grid: ImageBuffer<Rgb<u8>, Vec<u8>> =
        ImageBuffer::from_pixel(gw as u32, gh as u32, Rgb([40, 40, 40]));
    for k in 0..n {
        let (oy, ox) = ((k / columns) * (h + 1) + 1, (k % columns) * (w + 1) + 1);
        for y in 0..h {
            for x in 0..w {
                let rgb = if c == 1 {
                    let v = value(k, 0, y, x);
                    [v, v, v]
                } else {
                    [value(k, 0, y, x), value(k, 1, y, x), value(k, 2, y, x)]
                };
                grid.put_pixel((ox + x) as u32, (oy + y) as u32, Rgb(rgb));
            }
        }
    }
    save(grid, path)
}

/// Writes a 2-D histogram of `points` (`[x, y]` pairs) over `[-extent, extent]^2` as a
/// `size x size` grey PNG (darker: more points).
pub fn write_scatter(
    path: &Path,
    points: &[f32],
    extent: f32,
    size: u32,
) -> Result<(), TrainError> {
    let mut counts = vec![0u32; (size * size) as usize];
    for p in points.chunks(2) {
        let to_cell = |v: f32| ((v + extent) / (2.0 * extent) * size as f32).floor();
        let (cx, cy) = (to_cell(p[0]), to_cell(-p[1]));
        if cx >= 0.0 && cy >= 0.0 && (cx as u32) < size && (cy as u32) < size {
            counts[(cy as u32 * size + cx as u32) as usize] += 1;
        }
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f32;
    let image: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_fn(size, size, |x, y| {
        let c = counts[(y * size + x) as usize] as f32;
        Luma([255 - (255.0 * (c / max).sqrt()) as u8])
    });
    save(image, path)
}

fn save<P: image::PixelWithColorType, C: std::ops::Deref<Target = [P::Subpixel]>>(
    image: ImageBuffer<P, C>,
    path: &Path,
) -> Result<(), TrainError>
where
    P::Subpixel: image::Primitive,
    [P::Subpixel]: image::EncodableLayout,
{
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    }
    image
        .save(path)
        .map_err(|e| TrainError::io(path, std::io::Error::other(e)))
}
