//! CIFAR-10 in its binary distribution (`cifar-10-batches-bin`): `data_batch_1.bin` ...
//! `data_batch_5.bin` and `test_batch.bin`, each a sequence of 3073-byte records (a label
//! 0..=9, then 1024 red, 1024 green and 1024 blue bytes of a row-major 32x32 image).

use std::path::Path;

use crate::error::DataError;
use crate::images::{DatasetInfo, ImageArray};

/// Bytes of one record.
pub const RECORD_BYTES: usize = 1 + 3 * 32 * 32;

/// Parses the records of one batch file's bytes; `path` names it in errors.
pub fn parse_cifar(bytes: &[u8], path: &Path) -> Result<ImageArray, DataError> {
    if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
        return Err(DataError::format(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut pixels = Vec::with_capacity(n * (RECORD_BYTES - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks(RECORD_BYTES).enumerate() {
        if record[0] > 9 {
            return Err(DataError::at(
                path,
                format!("record {i}"),
                format!("label {}, expected 0..=9", record[0]),
            ));
        }
        labels.push(record[0] as u16);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(ImageArray {
        shape: [3, 32, 32],
        levels: 256,
        pixels,
        labels: Some(labels),
    })
}

/// Reads one batch file.
pub fn read_cifar(path: &Path) -> Result<ImageArray, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_cifar(&bytes, path)
}

/// CIFAR-10: 50,000 training and 10,000 test images.
#[derive(Debug, Clone)]
pub struct Cifar10 {
    /// The five training batches.
    pub train: ImageArray,
    /// `test_batch.bin`.
    pub test: ImageArray,
}

impl Cifar10 {
    /// Reads the six batch files from `dir` (the extracted `cifar-10-batches-bin`).
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        if !dir.is_dir() {
            return Err(DataError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        let mut train = read_cifar(&dir.join("data_batch_1.bin"))?;
        for i in 2..=5 {
            let batch = read_cifar(&dir.join(format!("data_batch_{i}.bin")))?;
            train.pixels.extend(batch.pixels);
            if let (Some(all), Some(more)) = (train.labels.as_mut(), batch.labels) {
                all.extend(more);
            }
        }
        let test = read_cifar(&dir.join("test_batch.bin"))?;
        Ok(Self { train, test })
    }

    /// Shape, levels, split sizes and classes.
    pub fn info(&self) -> DatasetInfo {
        DatasetInfo {
            name: "cifar10".into(),
            shape: [3, 32, 32],
            levels: 256,
            train: self.train.len(),
            test: self.test.len(),
            classes: Some(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![fill; RECORD_BYTES];
        r[0] = label;
        r
    }

    #[test]
    fn reads_a_directory_of_batches_in_the_real_layout() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (i, name) in [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ]
        .iter()
        .enumerate()
        {
            let bytes = [record(i as u8, 10 * i as u8), record(9, 1)].concat();
            std::fs::write(dir.path().join(name), bytes).expect("writable");
        }
        let data = Cifar10::load(dir.path()).expect("valid files");
        assert_eq!((data.info().train, data.info().test), (10, 2));
        assert_eq!(data.train.label(2), Some(1));
        assert_eq!(data.train.image(2)[0], 10);
        assert_eq!(data.test.label(0), Some(5));
    }

    #[test]
    fn bad_files_are_errors_naming_file_and_record() {
        let path = Path::new("data_batch_1.bin");
        let err = parse_cifar(&record(3, 0)[..100], path)
            .expect_err("truncated")
            .to_string();
        assert!(
            err.contains("data_batch_1.bin") && err.contains("100 bytes"),
            "{err}"
        );
        let bytes = [record(3, 0), record(12, 0)].concat();
        let err = parse_cifar(&bytes, path)
            .expect_err("bad label")
            .to_string();
        assert!(
            err.contains("record 1") && err.contains("label 12"),
            "{err}"
        );
        let err = parse_cifar(&[], path).expect_err("empty").to_string();
        assert!(err.contains("0 bytes"), "{err}");
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Cifar10::load(dir.path())
            .expect_err("missing files")
            .to_string();
        assert!(err.contains("data_batch_1.bin"), "{err}");
    }

    proptest::proptest! {
        /// Random and mutated bytes give a parse or an error, never a panic.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..8000)) {
            if let Ok(images) = parse_cifar(&bytes, Path::new("random")) {
                proptest::prop_assert_eq!(images.len() * RECORD_BYTES, bytes.len());
            }
        }
    }
}
