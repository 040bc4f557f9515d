//! IDX files (MNIST, Fashion-MNIST and anything else in that format), plain or gzip.
//!
//! An IDX file is two zero bytes, a type code (only `0x08`, unsigned bytes, is accepted
//! here), the number of dimensions, each dimension as a big-endian `u32`, then the data.
//! The header is checked against the data's length before anything large is allocated.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::images::{DatasetInfo, ImageArray};

/// Largest data size accepted from a header (16 GiB), so that a lying header cannot make us
/// allocate without bound.
const MAX_DATA_BYTES: u64 = 16 << 30;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header.
    pub dims: Vec<usize>,
    /// The data, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file, gzip-compressed or not (detected from its first bytes).
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut head = [0u8; 2];
    let n = read_full(&mut file, &mut head).map_err(|e| DataError::io(path, e))?;
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    if n == 2 && head == [0x1f, 0x8b] {
        parse_idx(flate2::read::GzDecoder::new(BufReader::new(file)), path)
    } else {
        parse_idx(BufReader::new(file), path)
    }
}

/// Parses IDX bytes from `reader`; `path` names the source in errors.
pub fn parse_idx(mut reader: impl Read, path: &Path) -> Result<IdxArray, DataError> {
    let read_err = |e: std::io::Error| DataError::format(path, format!("unreadable ({e})"));
    let mut magic = [0u8; 4];
    if read_full(&mut reader, &mut magic).map_err(read_err)? < 4 {
        return Err(DataError::format(
            path,
            "shorter than the 4-byte IDX magic number",
        ));
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::format(
            path,
            format!(
                "bad magic number {:02x}{:02x}{:02x}{:02x}: an IDX file starts with two zero bytes",
                magic[0], magic[1], magic[2], magic[3]
            ),
        ));
    }
    if magic[2] != 0x08 {
        return Err(DataError::format(
            path,
            format!(
                "IDX type code 0x{:02x}, expected 0x08 (unsigned bytes)",
                magic[2]
            ),
        ));
    }
    let ndims = magic[3] as usize;
    if ndims == 0 {
        return Err(DataError::format(path, "IDX header declares 0 dimensions"));
    }
    let mut raw_dims = vec![0u8; 4 * ndims];
    if read_full(&mut reader, &mut raw_dims).map_err(read_err)? < raw_dims.len() {
        return Err(DataError::format(
            path,
            format!("truncated header: {ndims} dimensions declared"),
        ));
    }
    let dims: Vec<usize> = raw_dims
        .chunks(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_DATA_BYTES)
        .ok_or_else(|| {
            DataError::format(
                path,
                format!("header dimensions {dims:?} exceed 16 GiB of data"),
            )
        })?;
    // Read at most one byte more than the header promises: enough to tell "too long".
    let mut data = Vec::with_capacity(expected.min(1 << 26) as usize);
    reader
        .take(expected + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() as u64 != expected {
        let found = if data.len() as u64 > expected {
            "more".to_string()
        } else {
            data.len().to_string()
        };
        return Err(DataError::format(
            path,
            format!("header {dims:?} promises {expected} data bytes, the file holds {found}"),
        ));
    }
    Ok(IdxArray { dims, data })
}

/// Fills `buf` as far as the reader allows; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads an images file (`[n, rows, cols]`) and its labels file (`[n]`) into 8-bit grey
/// images.
pub fn read_idx_images(images: &Path, labels: &Path) -> Result<ImageArray, DataError> {
    let array = read_idx(images)?;
    if array.dims.len() != 3 {
        return Err(DataError::format(
            images,
            format!(
                "{} dimensions, expected 3 (images, rows, columns)",
                array.dims.len()
            ),
        ));
    }
    let label_array = read_idx(labels)?;
    if label_array.dims.len() != 1 || label_array.dims[0] != array.dims[0] {
        return Err(DataError::format(
            labels,
            format!(
                "label dimensions {:?}, expected [{}] to match {}",
                label_array.dims,
                array.dims[0],
                images.display()
            ),
        ));
    }
    Ok(ImageArray {
        shape: [1, array.dims[1], array.dims[2]],
        levels: 256,
        pixels: array.data,
        labels: Some(label_array.data.into_iter().map(u16::from).collect()),
    })
}

/// An IDX data set in a directory holding the four standard files
/// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`, each optionally with `.gz`), as MNIST and Fashion-MNIST are
/// distributed.
#[derive(Debug, Clone)]
pub struct IdxDataset {
    /// Training images (60,000 for MNIST and Fashion-MNIST).
    pub train: ImageArray,
    /// Test images (10,000).
    pub test: ImageArray,
    name: String,
}

impl IdxDataset {
    /// Where Debian's `dataset-fashion-mnist` package puts Fashion-MNIST.
    pub const FASHION_MNIST_DIR: &'static str = "/usr/share/datasets/fashion-mnist";

    /// Reads the four files from `dir`; `name` labels the data set in reports.
    pub fn load(dir: &Path, name: &str) -> Result<Self, DataError> {
        if !dir.is_dir() {
            return Err(DataError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        let find = |stem: &str| -> Result<PathBuf, DataError> {
            [dir.join(stem), dir.join(format!("{stem}.gz"))]
                .into_iter()
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    DataError::dataset(dir, format!("missing `{stem}` (or `{stem}.gz`)"))
                })
        };
        let train = read_idx_images(
            &find("train-images-idx3-ubyte")?,
            &find("train-labels-idx1-ubyte")?,
        )?;
        let test = read_idx_images(
            &find("t10k-images-idx3-ubyte")?,
            &find("t10k-labels-idx1-ubyte")?,
        )?;
        if train.shape != test.shape {
            return Err(DataError::dataset(
                dir,
                format!(
                    "training images are {:?} but test images {:?}",
                    train.shape, test.shape
                ),
            ));
        }
        Ok(Self {
            train,
            test,
            name: name.to_string(),
        })
    }

    /// Shape, levels, split sizes and classes.
    pub fn info(&self) -> DatasetInfo {
        DatasetInfo {
            name: self.name.clone(),
            shape: self.train.shape,
            levels: 256,
            train: self.train.len(),
            test: self.test.len(),
            classes: self.train.classes().max(self.test.classes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(data);
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).expect("in memory");
        encoder.finish().expect("in memory")
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("temp dir is writable");
        path
    }

    #[test]
    fn reads_plain_and_gzip_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bytes = idx_bytes(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        for (name, content) in [("a.idx", bytes.clone()), ("a.idx.gz", gzip(&bytes))] {
            let array = read_idx(&write(dir.path(), name, &content)).expect("valid file");
            assert_eq!(array.dims, vec![2, 2, 3]);
            assert_eq!(array.data[11], 12);
        }
    }

    #[test]
    fn bad_idx_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = idx_bytes(&[2, 2], &[1, 2, 3, 4]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "shorter than"),
            ("magic", vec![1, 2, 8, 1, 0, 0, 0, 0], "bad magic"),
            (
                "type",
                vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0],
                "type code 0x0d",
            ),
            ("header", vec![0, 0, 8, 3, 0, 0], "truncated header"),
            ("short", good[..good.len() - 1].to_vec(), "holds 3"),
            ("long", [good.clone(), vec![9]].concat(), "holds more"),
            (
                "huge",
                idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[]),
                "exceed 16 GiB",
            ),
            ("corrupt.gz", gzip(&good)[..12].to_vec(), "unreadable"),
        ];
        for (name, bytes, expected) in cases {
            let path = write(dir.path(), name, &bytes);
            let err = read_idx(&path).expect_err(name).to_string();
            assert!(
                err.contains(name) && err.contains(expected),
                "{name}: {err}"
            );
        }
        let err = read_idx(&dir.path().join("absent"))
            .expect_err("missing file")
            .to_string();
        assert!(err.contains("absent"), "{err}");
    }

    #[test]
    fn a_directory_without_the_standard_files_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = IdxDataset::load(dir.path(), "x")
            .expect_err("empty dir")
            .to_string();
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
        let err = IdxDataset::load(&dir.path().join("nope"), "x")
            .expect_err("no dir")
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn labels_must_match_the_images() {
        let dir = tempfile::tempdir().expect("temp dir");
        let images = write(dir.path(), "i", &idx_bytes(&[2, 1, 1], &[1, 2]));
        let labels = write(dir.path(), "l", &idx_bytes(&[3], &[0, 1, 2]));
        let err = read_idx_images(&images, &labels)
            .expect_err("3 labels for 2 images")
            .to_string();
        assert!(err.contains("expected [2]"), "{err}");
    }

    /// Reads the real Fashion-MNIST files when Debian's `dataset-fashion-mnist` is
    /// installed (CI installs it).
    #[test]
    fn reads_fashion_mnist_when_installed() {
        let dir = Path::new(IdxDataset::FASHION_MNIST_DIR);
        if !dir.is_dir() {
            eprintln!(
                "skipped: {} absent (apt-get install -y dataset-fashion-mnist)",
                dir.display()
            );
            return;
        }
        let data = IdxDataset::load(dir, "fashion-mnist").expect("installed files are valid");
        let info = data.info();
        assert_eq!((info.train, info.test), (60_000, 10_000));
        assert_eq!(info.shape, [1, 28, 28]);
        assert_eq!(info.classes, Some(10));
    }

    proptest::proptest! {
        /// Random bytes never make the parser panic or over-allocate.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_idx(bytes.as_slice(), Path::new("random"));
        }

        /// Mutating a valid file gives a valid parse or an error, never a panic.
        #[test]
        fn mutated_files_never_panic(position in 0usize..20, value in proptest::num::u8::ANY, cut in 0usize..20) {
            let mut bytes = idx_bytes(&[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]);
            let position = position % bytes.len();
            bytes[position] = value;
            bytes.truncate(bytes.len() - cut % bytes.len());
            if let Ok(array) = parse_idx(bytes.as_slice(), Path::new("mutated")) {
                proptest::prop_assert_eq!(array.data.len(), array.dims.iter().product::<usize>());
            }
        }
    }
}
