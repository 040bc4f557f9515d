//! The learning curves of a run as a PNG: training bits/dim in blue, held-out bits/dim in
//! red, against the step; tick labels in a small built-in digit font.

use std::path::Path;

use image::{ImageBuffer, Rgb, RgbImage};

use crate::error::TrainError;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 400;
const LEFT: u32 = 70;
const RIGHT: u32 = 20;
const TOP: u32 = 20;
const BOTTOM: u32 = 40;
/// Training curve colour.
pub const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
/// Held-out curve colour.
pub const TEST: Rgb<u8> = Rgb([214, 39, 40]);

/// 3x5 bitmaps of `0-9`, `.` and `-`, one row per 3-bit number.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        _ => return None,
    })
}

/// Draws `text` with its top-left corner at `(x, y)`, 2x enlarged.
fn draw_text(image: &mut RgbImage, x: i64, y: i64, text: &str) {
    for (k, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        put(
                            image,
                            x + k as i64 * 8 + col * 2 + dx,
                            y + r as i64 * 2 + dy,
                            Rgb([0, 0, 0]),
                        );
                    }
                }
            }
        }
    }
}

fn put(image: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < image.width() && (y as u32) < image.height() {
        image.put_pixel(x as u32, y as u32, colour);
    }
}

fn line(image: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), colour: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for i in 0..=steps {
        let x = x0 + (x1 - x0) * i / steps;
        let y = y0 + (y1 - y0) * i / steps;
        put(image, x, y, colour);
        put(image, x, y + 1, colour);
    }
}

/// Writes the curves `(step, bits/dim)` of training and held-out data to `path`.
pub fn write_learning_curves(
    path: &Path,
    train: &[(u64, f64)],
    test: &[(u64, f64)],
) -> Result<(), TrainError> {
    let finite = |points: &[(u64, f64)]| -> Vec<(u64, f64)> {
        points.iter().copied().filter(|p| p.1.is_finite()).collect()
    };
    let (train, test) = (finite(train), finite(test));
    let all: Vec<&(u64, f64)> = train.iter().chain(&test).collect();
    let mut image: RgbImage = ImageBuffer::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let (x0, x1) = (LEFT as i64, (WIDTH - RIGHT) as i64);
    let (y0, y1) = (TOP as i64, (HEIGHT - BOTTOM) as i64);
    line(&mut image, (x0, y1), (x1, y1), Rgb([0, 0, 0]));
    line(&mut image, (x0, y0), (x0, y1), Rgb([0, 0, 0]));
    if !all.is_empty() {
        let max_step = all.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
        let lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let (lo, hi) = (lo - pad, hi + pad);
        let to_px = |(s, v): (u64, f64)| -> (i64, i64) {
            let x = x0 + ((s as f64 / max_step) * (x1 - x0) as f64) as i64;
            let y = y1 - (((v - lo) / (hi - lo)) * (y1 - y0) as f64) as i64;
            (x, y)
        };
        for k in 0..=4 {
            let v = lo + (hi - lo) * k as f64 / 4.0;
            let (_, y) = to_px((0, v));
            line(&mut image, (x0 - 5, y), (x0, y), Rgb([0, 0, 0]));
            draw_text(&mut image, 4, y - 5, &format!("{v:.2}"));
            let s = (max_step * k as f64 / 4.0).round() as u64;
            let (x, _) = to_px((s, lo));
            line(&mut image, (x, y1), (x, y1 + 5), Rgb([0, 0, 0]));
            draw_text(&mut image, x - 8, y1 + 12, &s.to_string());
        }
        for (points, colour) in [(&train, TRAIN), (&test, TEST)] {
            for pair in points.windows(2) {
                line(&mut image, to_px(pair[0]), to_px(pair[1]), colour);
            }
            if let [only] = points.as_slice() {
                let (x, y) = to_px(*only);
                for d in -2..=2 {
                    put(&mut image, x + d, y, colour);
                    put(&mut image, x, y + d, colour);
                }
            }
        }
    }
    image
        .save(path)
        .map_err(|e| TrainError::io(path, std::io::Error::other(e.to_string())))
}

/// Writes overlaid histograms of bits/dim, one per series, to `path`: the first series
/// in blue, the second in red (overlap darker), `bins` bins over the common range; tick
/// labels give bits/dim on the x axis and the fraction of each series per bin on the y
/// axis. For out-of-distribution checks: in-distribution scores vs others.
pub fn write_histograms(path: &Path, series: &[&[f64]], bins: usize) -> Result<(), TrainError> {
    let colours = [TRAIN, TEST];
    let finite: Vec<Vec<f64>> = series
        .iter()
        .map(|s| s.iter().copied().filter(|v| v.is_finite()).collect())
        .collect();
    let all = finite.iter().flatten();
    let lo = all.clone().copied().fold(f64::INFINITY, f64::min);
    let hi = all.copied().fold(f64::NEG_INFINITY, f64::max);
    let mut image: RgbImage = ImageBuffer::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let (x0, x1) = (LEFT as i64, (WIDTH - RIGHT) as i64);
    let (y0, y1) = (TOP as i64, (HEIGHT - BOTTOM) as i64);
    if lo.is_finite() && bins > 0 {
        let pad = ((hi - lo) * 0.02).max(1e-3);
        let (lo, hi) = (lo - pad, hi + pad);
        let width = (hi - lo) / bins as f64;
        let fractions: Vec<Vec<f64>> = finite
            .iter()
            .map(|s| {
                let mut counts = vec![0.0; bins];
                for v in s {
                    counts[(((v - lo) / width) as usize).min(bins - 1)] += 1.0;
                }
                counts.iter().map(|c| c / s.len().max(1) as f64).collect()
            })
            .collect();
        let top = fractions
            .iter()
            .flatten()
            .copied()
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.05;
        let to_x = |v: f64| x0 + ((v - lo) / (hi - lo) * (x1 - x0) as f64) as i64;
        let to_y = |f: f64| y1 - (f / top * (y1 - y0) as f64) as i64;
        for (counts, colour) in fractions.iter().zip(colours) {
            for (b, &f) in counts.iter().enumerate() {
                let (left, right) = (
                    to_x(lo + b as f64 * width),
                    to_x(lo + (b + 1) as f64 * width),
                );
                for x in left..right {
                    for y in to_y(f)..y1 {
                        let blended = match image.get_pixel(x as u32, y as u32) {
                            p if *p == Rgb([255, 255, 255]) => colour,
                            p => Rgb([
                                p[0] / 2 + colour[0] / 2,
                                p[1] / 2 + colour[1] / 2,
                                p[2] / 2 + colour[2] / 2,
                            ]
                            .map(|c| c.saturating_sub(40))),
                        };
                        put(&mut image, x, y, blended);
                    }
                }
            }
        }
        for k in 0..=4 {
            let v = lo + (hi - lo) * k as f64 / 4.0;
            let x = to_x(v);
            line(&mut image, (x, y1), (x, y1 + 5), Rgb([0, 0, 0]));
            draw_text(&mut image, x - 12, y1 + 12, &format!("{v:.2}"));
            let f = top * k as f64 / 4.0;
            let y = to_y(f);
            line(&mut image, (x0 - 5, y), (x0, y), Rgb([0, 0, 0]));
            draw_text(&mut image, 4, y - 5, &format!("{f:.3}"));
        }
    }
    line(&mut image, (x0, y1), (x1, y1), Rgb([0, 0, 0]));
    line(&mut image, (x0, y0), (x0, y1), Rgb([0, 0, 0]));
    image
        .save(path)
        .map_err(|e| TrainError::io(path, std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_show_both_series_where_their_values_lie() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hist.png");
        let low: Vec<f64> = (0..200).map(|i| 2.0 + (i % 10) as f64 * 0.01).collect();
        let high: Vec<f64> = (0..50).map(|i| 5.0 + (i % 10) as f64 * 0.01).collect();
        write_histograms(&path, &[&low, &high], 40).expect("writable");
        let image = image::open(&path).expect("a PNG").to_rgb8();
        let columns_with = |c: Rgb<u8>| -> Vec<u32> {
            let mut xs: Vec<u32> = image
                .enumerate_pixels()
                .filter(|(_, _, &p)| p == c)
                .map(|(x, _, _)| x)
                .collect();
            xs.dedup();
            xs
        };
        let (blue, red) = (columns_with(TRAIN), columns_with(TEST));
        assert!(!blue.is_empty() && !red.is_empty());
        // The low series sits left of the high one.
        assert!(blue.iter().max() < red.iter().min(), "{blue:?} {red:?}");
    }

    #[test]
    fn draws_both_curves_in_their_colours() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("curves.png");
        let train: Vec<(u64, f64)> = (1..50).map(|s| (s, 6.0 - (s as f64).ln())).collect();
        let test = vec![(10, 4.0), (20, 3.5), (40, 3.0), (45, f64::NAN)];
        write_learning_curves(&path, &train, &test).expect("writable");
        let image = image::open(&path).expect("a PNG").to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        let count = |c: Rgb<u8>| image.pixels().filter(|&&p| p == c).count();
        assert!(
            count(TRAIN) > 100 && count(TEST) > 50,
            "{} {}",
            count(TRAIN),
            count(TEST)
        );
    }
}
