//! Pictures of a run, drawn with plotters: the learning curves (training and held-out
//! bits/dim against the step, the best held-out point marked) and the score histograms
//! of `realnvp score --compare`. Text is set in a bundled subset of DejaVu Sans
//! (`assets/`), so that no system font or fontconfig is needed.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use image::RgbImage;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::TrainError;

/// Width of the pictures, pixels.
pub const WIDTH: u32 = 800;
/// Height of the pictures, pixels.
pub const HEIGHT: u32 = 500;
/// Training curve colour (and the first histogram's).
pub const TRAIN: RGBColor = RGBColor(31, 119, 180);
/// Held-out curve colour (and the second histogram's).
pub const TEST: RGBColor = RGBColor(214, 39, 40);
/// The family name the bundled font is registered under.
const FAMILY: &str = "sans-serif";

/// What drawing can fail with: plotters' errors, generic over its backend, boxed.
type DrawError = Box<dyn std::error::Error + Send + Sync>;

/// Registers the bundled font with plotters, once per process.
fn bundled_font() -> Result<(), DrawError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = REGISTERED.get_or_init(|| {
        let bytes = include_bytes!("../../assets/DejaVuSans-subset.ttf");
        register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
    });
    match registered {
        true => Ok(()),
        false => Err("the bundled font (DejaVu Sans) is not a valid font".into()),
    }
}

/// Draws a picture of `WIDTH` x `HEIGHT` with `draw` and saves it as a PNG at `path`.
/// plotters draws into an RGB buffer; the `image` crate encodes it.
fn save_png(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<(), DrawError>,
) -> Result<(), TrainError> {
    let failed = |error: DrawError| TrainError::io(path, std::io::Error::other(error));
    bundled_font().map_err(failed)?;
    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root).map_err(failed)?;
        root.present().map_err(|e| failed(e.into()))?;
    }
    let image = RgbImage::from_raw(WIDTH, HEIGHT, buffer).expect("buffer of WIDTH x HEIGHT x 3");
    image.save(path).map_err(|e| failed(e.into()))
}

/// A chart of both pictures: `f64` on both axes.
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws the axes with their titles `(x, y)` and light grid lines; `x_label` writes the
/// x tick labels.
fn draw_axes(
    chart: &mut Chart,
    (x, y): (&str, &str),
    x_label: &dyn Fn(&f64) -> String,
) -> Result<(), DrawError> {
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .x_label_formatter(x_label)
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(DrawError::from)
}

/// Draws the legend of the labelled series in the upper right corner.
fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), DrawError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(DrawError::from)
}

/// `lo..hi` widened by `fraction` of its length on both sides (a flat range by 1e-3).
fn padded(lo: f64, hi: f64, fraction: f64) -> Range<f64> {
    let pad = ((hi - lo) * fraction).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// The finite points of a curve, as plotting coordinates.
fn finite(points: &[(u64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|&(s, v)| (s as f64, v))
        .collect()
}

/// Writes the learning curves of a run to `path`: `train` and `test` are `(step,
/// bits/dim)` points (non-finite ones left out), `title` names the run and data set.
/// The held-out point with the lowest bits/dim is ringed and named in the legend.
pub fn write_learning_curves(
    path: &Path,
    title: &str,
    train: &[(u64, f64)],
    test: &[(u64, f64)],
) -> Result<(), TrainError> {
    let (train, test) = (finite(train), finite(test));
    let best = test
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)));
    save_png(path, |root| {
        root.fill(&WHITE)?;
        let all = || train.iter().chain(&test);
        let last_step = all().map(|p| p.0).fold(1.0, f64::max);
        let lo = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let values = if lo.is_finite() {
            padded(lo, hi, 0.05)
        } else {
            0.0..1.0
        };
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0.0..last_step * 1.02, values)?;
        draw_axes(&mut chart, ("training step", "bits/dim"), &|step| {
            format!("{step:.0}")
        })?;
        chart
            .draw_series(LineSeries::new(
                train.iter().copied(),
                TRAIN.stroke_width(2),
            ))?
            .label("training (mean over each logging window)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], TRAIN.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(test.iter().copied(), TEST.stroke_width(2)).point_size(3))?
            .label("held-out")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], TEST.stroke_width(2)));
        if let Some((step, bpd)) = best {
            chart
                .draw_series([Circle::new((step, bpd), 8, BLACK.stroke_width(2))])?
                .label(format!("best held-out: {bpd:.4} at step {step}"))
                .legend(|(x, y)| Circle::new((x + 12, y), 6, BLACK.stroke_width(2)));
        }
        draw_legend(&mut chart)
    })
}

/// The fraction of `values` in each of `bins` equal bins over `range` (values outside it
/// go to the nearest end bin).
fn bin_fractions(values: &[f64], range: &Range<f64>, bins: usize) -> Vec<f64> {
    let width = (range.end - range.start) / bins as f64;
    let mut counts = vec![0.0; bins];
    for v in values {
        let bin = ((v - range.start) / width).max(0.0) as usize;
        counts[bin.min(bins - 1)] += 1.0;
    }
    counts
        .iter()
        .map(|c| c / values.len().max(1) as f64)
        .collect()
}

/// Writes overlaid histograms of bits/dim to `path`, one per `(name, values)` series
/// (the first in blue, the second in red, half transparent so that overlap shows),
/// `bins` bins over the common range of the finite values; the y axis is the fraction of
/// each series per bin, so that series of different sizes compare. For
/// out-of-distribution checks: in-distribution scores against others.
pub fn write_histograms(
    path: &Path,
    title: &str,
    series: &[(&str, &[f64])],
    bins: usize,
) -> Result<(), TrainError> {
    let bins = bins.max(1);
    let finite: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, s)| s.iter().copied().filter(|v| v.is_finite()).collect())
        .collect();
    let lo = finite
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let hi = finite
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let range = if lo.is_finite() {
        padded(lo, hi, 0.02)
    } else {
        0.0..1.0
    };
    let fractions: Vec<Vec<f64>> = finite
        .iter()
        .map(|s| bin_fractions(s, &range, bins))
        .collect();
    let top = fractions.iter().flatten().copied().fold(1e-9, f64::max) * 1.1;
    let width = (range.end - range.start) / bins as f64;
    save_png(path, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(range.clone(), 0.0..top)?;
        draw_axes(
            &mut chart,
            ("bits/dim", "fraction of inputs per bin"),
            &|v| format!("{v:.1}"),
        )?;
        let colours = [TRAIN, TEST].into_iter().cycle();
        for (((name, values), counts), colour) in series
            .iter()
            .map(|s| s.0)
            .zip(&finite)
            .zip(&fractions)
            .zip(colours)
        {
            let fill = colour.mix(0.55);
            let bars = counts
                .iter()
                .enumerate()
                .filter(|(_, &f)| f > 0.0)
                .map(|(b, &f)| {
                    let left = range.start + b as f64 * width;
                    Rectangle::new([(left, 0.0), (left + width, f)], fill.filled())
                });
            chart
                .draw_series(bars)?
                .label(format!("{name} ({} inputs)", values.len()))
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 18, y + 6)], fill.filled()));
        }
        draw_legend(&mut chart)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// Columns holding a pixel for which `is` holds.
    fn columns(image: &RgbImage, is: impl Fn(&Rgb<u8>) -> bool) -> Vec<u32> {
        let mut xs: Vec<u32> = image
            .enumerate_pixels()
            .filter(|(_, _, p)| is(p))
            .map(|(x, _, _)| x)
            .collect();
        xs.sort_unstable();
        xs.dedup();
        xs
    }

    /// Whether a pixel has text or axes on it: dark grey or black.
    fn dark(p: &Rgb<u8>) -> bool {
        p.0.iter().all(|&c| c < 100)
    }

    #[test]
    fn histograms_show_both_series_where_their_values_lie() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hist.png");
        let low: Vec<f64> = (0..200).map(|i| 2.0 + (i % 10) as f64 * 0.01).collect();
        let high: Vec<f64> = (0..50).map(|i| 5.0 + (i % 10) as f64 * 0.01).collect();
        write_histograms(&path, "test", &[("low", &low), ("high", &high)], 40).expect("writable");
        let image = image::open(&path).expect("a PNG").to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        // Half-transparent bars over white: bluish and reddish pixels, away from the
        // legend in the upper right.
        let plot = image::imageops::crop_imm(&image, 0, HEIGHT / 3, WIDTH, HEIGHT / 2).to_image();
        let blue = columns(&plot, |p| p[2] as i32 > p[0] as i32 + 60);
        let red = columns(&plot, |p| p[0] as i32 > p[2] as i32 + 60);
        assert!(!blue.is_empty() && !red.is_empty());
        assert!(blue.iter().max() < red.iter().min(), "{blue:?} {red:?}");
    }

    #[test]
    fn learning_curves_have_both_curves_the_best_point_and_labels() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("curves.png");
        let train: Vec<(u64, f64)> = (1..50).map(|s| (s, 6.0 - (s as f64).ln())).collect();
        let test = vec![(10, 4.0), (20, 3.5), (40, 3.0), (45, f64::NAN), (49, 3.2)];
        write_learning_curves(&path, "run x: digits", &train, &test).expect("writable");
        let image = image::open(&path).expect("a PNG").to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        let count = |c: RGBColor| image.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
        assert!(
            count(TRAIN) > 300 && count(TEST) > 100,
            "{} {}",
            count(TRAIN),
            count(TEST)
        );
        // The title (top band) and the y axis title (left band) are drawn text.
        let title = image::imageops::crop_imm(&image, 0, 0, WIDTH, 30).to_image();
        assert!(title.pixels().filter(|p| dark(p)).count() > 50);
        let y_title = image::imageops::crop_imm(&image, 0, 60, 25, HEIGHT - 120).to_image();
        assert!(y_title.pixels().filter(|p| dark(p)).count() > 30);
    }

    #[test]
    fn the_best_held_out_point_is_ringed_where_it_lies() {
        // Two pictures that differ only in which held-out point is lowest: the black
        // ring moves with it.
        let dir = tempfile::tempdir().expect("temp dir");
        let train: Vec<(u64, f64)> = (0..=100).map(|s| (s, 5.0)).collect();
        let ring_columns = |test: &[(u64, f64)]| {
            let path = dir.path().join("c.png");
            write_learning_curves(&path, "", &train, test).expect("writable");
            let image = image::open(&path).expect("a PNG").to_rgb8();
            // Below the legend, inside the axes.
            let band = image::imageops::crop_imm(&image, 100, 250, WIDTH - 120, 185).to_image();
            columns(&band, |p| p.0 == [0, 0, 0])
        };
        let early = ring_columns(&[(10, 3.0), (90, 4.0)]);
        let late = ring_columns(&[(10, 4.0), (90, 3.0)]);
        let mean = |xs: &[u32]| xs.iter().sum::<u32>() as f64 / xs.len().max(1) as f64;
        assert!(!early.is_empty() && !late.is_empty());
        assert!(mean(&early) + 300.0 < mean(&late), "{early:?} {late:?}");
    }
}
