//! The embedded default data set: UCI optical recognition of handwritten digits.
//!
//! E. Alpaydin and C. Kaynak (1998), UCI Machine Learning Repository, CC BY 4.0; the copy
//! shipped with scikit-learn (`digits.csv.gz`): 1797 grey images of 8x8 pixels with 17
//! levels (0..=16) and labels 0..=9. It is compiled into the crate, so the default model
//! trains with no download.
//!
//! Split: image `i` (0-based, file order) is in the test split when `i % 6 == 5` (299
//! images) and in the training split otherwise (1498 images).

use std::io::Read;
use std::path::Path;

use crate::error::DataError;
use crate::images::{DatasetInfo, ImageArray};

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");
const NAME: &str = "digits.csv.gz (embedded)";

/// The digits data set, split into training and test images.
#[derive(Debug, Clone)]
pub struct Digits {
    /// 1498 training images.
    pub train: ImageArray,
    /// 299 test images.
    pub test: ImageArray,
}

impl Digits {
    /// Decodes the embedded copy.
    pub fn load() -> Result<Self, DataError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
            .read_to_string(&mut text)
            .map_err(|e| DataError::io(Path::new(NAME), e))?;
        let all = parse(&text, Path::new(NAME))?;
        let (test, train): (Vec<usize>, Vec<usize>) = (0..all.len()).partition(|i| i % 6 == 5);
        Ok(Self {
            train: all.select(&train),
            test: all.select(&test),
        })
    }

    /// Shape, levels, split sizes and classes.
    pub fn info(&self) -> DatasetInfo {
        DatasetInfo {
            name: "digits".into(),
            shape: self.train.shape,
            levels: self.train.levels,
            train: self.train.len(),
            test: self.test.len(),
            classes: Some(10),
        }
    }
}

/// Parses rows of 64 pixel values (0..=16) and a label (0..=9).
fn parse(text: &str, path: &Path) -> Result<ImageArray, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            DataError::at(path, format!("line {line}"), e.to_string())
        })?;
        let line = record.position().map_or(0, csv::Position::line);
        let location = |column: usize| format!("line {line}, column {}", column + 1);
        if record.len() != 65 {
            return Err(DataError::at(
                path,
                format!("line {line}"),
                format!("{} values, expected 64 pixels and a label", record.len()),
            ));
        }
        for (column, value) in record.iter().enumerate() {
            let max = if column == 64 { 9 } else { 16 };
            let v: u8 = value
                .trim()
                .parse()
                .ok()
                .filter(|&v| v <= max)
                .ok_or_else(|| {
                    DataError::at(
                        path,
                        location(column),
                        format!("`{value}` is not an integer in 0..={max}"),
                    )
                })?;
            if column == 64 {
                labels.push(v as u16);
            } else {
                pixels.push(v);
            }
        }
    }
    Ok(ImageArray {
        shape: [1, 8, 8],
        levels: 17,
        pixels,
        labels: Some(labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_have_the_documented_split() {
        let digits = Digits::load().expect("embedded data decodes");
        let info = digits.info();
        assert_eq!((info.train, info.test), (1498, 299));
        assert_eq!(info.shape, [1, 8, 8]);
        assert_eq!(info.levels, 17);
        assert!(digits.train.pixels.iter().all(|&p| p <= 16));
        assert!(digits.train.pixels.contains(&16));
        // The first image of the file is a zero.
        assert_eq!(digits.train.label(0), Some(0));
        assert_eq!(&digits.train.image(0)[..8], &[0, 0, 5, 13, 9, 1, 0, 0]);
    }

    #[test]
    fn bad_rows_name_line_and_column() {
        let err = parse("1,2,3\n", Path::new("d.csv")).expect_err("short row");
        assert!(err.to_string().contains("d.csv (line 1)"), "{err}");
        let row = format!("{}17,0\n", "0,".repeat(63));
        let err = parse(&row, Path::new("d.csv")).expect_err("pixel out of range");
        assert!(err.to_string().contains("line 1, column 64"), "{err}");
        let row = format!("{}x\n", "0,".repeat(64));
        let err = parse(&row, Path::new("d.csv")).expect_err("non-numeric label");
        assert!(err.to_string().contains("column 65"), "{err}");
    }
}
