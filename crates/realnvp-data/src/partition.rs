//! Official train/valid/test partitions given as a list of file names, such as CelebA's
//! `list_eval_partition.txt`: one `<file name> <partition>` pair per line, partition 0 for
//! training, 1 for validation and 2 for test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::DataError;

/// The part of a data set a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Partition 0.
    Train,
    /// Partition 1: the validation set (what the paper reports for CelebA).
    Valid,
    /// Partition 2.
    Test,
}

impl Part {
    /// The partition's number in the file.
    pub fn number(self) -> u8 {
        match self {
            Part::Train => 0,
            Part::Valid => 1,
            Part::Test => 2,
        }
    }

    /// The partition's name.
    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Valid => "valid",
            Part::Test => "test",
        }
    }
}

/// A partition file read into a map from file name to part.
#[derive(Debug, Clone)]
pub struct Partition {
    path: PathBuf,
    parts: HashMap<String, Part>,
}

impl Partition {
    /// Reads `path`; a malformed line is an error naming its number.
    pub fn read(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let mut parts = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let at = || format!("line {}", index + 1);
            let mut fields = line.split_whitespace();
            let (Some(name), Some(part), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(DataError::at(
                    path,
                    at(),
                    format!("expected `<file name> <0, 1 or 2>`, found `{line}`"),
                ));
            };
            let part = match part {
                "0" => Part::Train,
                "1" => Part::Valid,
                "2" => Part::Test,
                other => {
                    return Err(DataError::at(
                        path,
                        at(),
                        format!("partition `{other}` of `{name}`, expected 0, 1 or 2"),
                    ))
                }
            };
            if parts.insert(name.to_string(), part).is_some() {
                return Err(DataError::at(path, at(), format!("`{name}` listed twice")));
            }
        }
        if parts.is_empty() {
            return Err(DataError::dataset(path, "no file names listed"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            parts,
        })
    }

    /// The partition file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of files listed.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether no file is listed (never true for a partition that was read).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The indices of `files` in the `train` and `held_out` parts, matched by file name;
    /// files of the third part are left out. A file the list does not name is an error
    /// naming it: a partition for other data must not split this one silently.
    pub fn split(
        &self,
        files: &[PathBuf],
        held_out: Part,
    ) -> Result<(Vec<usize>, Vec<usize>), DataError> {
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (index, file) in files.iter().enumerate() {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            match self.parts.get(name.as_ref()) {
                Some(Part::Train) => train.push(index),
                Some(&part) if part == held_out => test.push(index),
                Some(_) => {}
                None => {
                    return Err(DataError::dataset(
                        &self.path,
                        format!(
                            "does not list `{}` (is it the partition of this folder?)",
                            file.display()
                        ),
                    ))
                }
            }
        }
        Ok((train, test))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("list_eval_partition.txt");
        std::fs::write(&path, text).expect("writable");
        (dir, path)
    }

    #[test]
    fn files_go_to_their_part_by_name() {
        let (_dir, path) = write("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n000004.jpg 0\n");
        let partition = Partition::read(&path).expect("valid");
        assert_eq!(partition.len(), 4);
        let files: Vec<PathBuf> = ["000004.jpg", "000003.jpg", "000002.jpg", "000001.jpg"]
            .iter()
            .map(|f| Path::new("img_align_celeba").join(f))
            .collect();
        assert_eq!(
            partition.split(&files, Part::Valid).unwrap(),
            (vec![0, 3], vec![2])
        );
        assert_eq!(
            partition.split(&files, Part::Test).unwrap(),
            (vec![0, 3], vec![1])
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_line_or_the_file() {
        let message = |text: &str| Partition::read(&write(text).1).unwrap_err().to_string();
        assert!(message("a.jpg 0\nb.jpg 3\n").contains("line 2"));
        assert!(message("a.jpg 0 extra\n").contains("line 1"));
        assert!(message("a.jpg 0\na.jpg 1\n").contains("listed twice"));
        assert!(message("\n\n").contains("no file names"));
        let (_dir, path) = write("a.jpg 0\n");
        let err = Partition::read(&path)
            .unwrap()
            .split(&[PathBuf::from("b.jpg")], Part::Valid)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.jpg") && err.contains("list_eval_partition.txt"),
            "{err}"
        );
    }
}
