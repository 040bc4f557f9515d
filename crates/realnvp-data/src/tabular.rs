//! Tabular data from CSV files: numeric columns, an optional header row, standardised with
//! statistics of the training split only.

use std::path::Path;

use crate::error::DataError;

/// Rows of numbers, `[rows, columns]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column names from the header row, or `column_<i>`.
    pub columns: Vec<String>,
    /// Values, row after row.
    pub values: Vec<f64>,
}

impl Table {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len() / self.columns.len().max(1)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        let n = self.columns.len();
        &self.values[i * n..(i + 1) * n]
    }
}

/// Reads a CSV file of numbers. A first row with any non-numeric cell is the header; every
/// later cell must be a finite number.
pub fn read_csv(path: &Path) -> Result<Table, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_csv(&text, path)
}

/// Parses CSV text; `path` names the source in errors.
pub fn parse_csv(text: &str, path: &Path) -> Result<Table, DataError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .peekable();
    let Some(&(_, first)) = lines.peek() else {
        return Err(DataError::dataset(path, "no rows"));
    };
    let cells: Vec<&str> = first.split(',').map(str::trim).collect();
    let columns: Vec<String> = if cells.iter().any(|c| c.parse::<f64>().is_err()) {
        lines.next();
        cells.iter().map(|c| c.to_string()).collect()
    } else {
        (0..cells.len()).map(|i| format!("column_{i}")).collect()
    };
    let mut values = Vec::new();
    for (line_no, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != columns.len() {
            return Err(DataError::at(
                path,
                format!("line {}", line_no + 1),
                format!("{} cells, expected {}", cells.len(), columns.len()),
            ));
        }
        for (column, cell) in cells.iter().enumerate() {
            let value = cell
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    DataError::at(
                        path,
                        format!("line {}, column {}", line_no + 1, column + 1),
                        format!("`{cell}` is not a finite number"),
                    )
                })?;
            values.push(value);
        }
    }
    if values.is_empty() {
        return Err(DataError::dataset(path, "a header but no data rows"));
    }
    Ok(Table { columns, values })
}

/// Per-column mean and standard deviation, fitted on the training split.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    /// Column means.
    pub mean: Vec<f64>,
    /// Column standard deviations (1 for constant columns).
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Fits the statistics of `train`.
    pub fn fit(train: &Table) -> Self {
        let n = train.rows() as f64;
        let cols = train.columns.len();
        let mut mean = vec![0.0; cols];
        for i in 0..train.rows() {
            for (m, v) in mean.iter_mut().zip(train.row(i)) {
                *m += v / n;
            }
        }
        let mut var = vec![0.0; cols];
        for i in 0..train.rows() {
            for ((s, v), m) in var.iter_mut().zip(train.row(i)).zip(&mean) {
                *s += (v - m).powi(2) / n;
            }
        }
        let std = var
            .into_iter()
            .map(|v| if v > 0.0 { v.sqrt() } else { 1.0 })
            .collect();
        Self { mean, std }
    }

    /// `(x - mean) / std`, column-wise.
    pub fn apply(&self, table: &Table) -> Table {
        let cols = self.mean.len();
        let values = table
            .values
            .iter()
            .enumerate()
            .map(|(k, v)| (v - self.mean[k % cols]) / self.std[k % cols])
            .collect();
        Table {
            columns: table.columns.clone(),
            values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_optional() {
        let with = parse_csv("a,b\n1,2\n3,4\n", Path::new("t.csv")).expect("valid");
        assert_eq!(with.columns, vec!["a", "b"]);
        assert_eq!(with.values, vec![1.0, 2.0, 3.0, 4.0]);
        let without = parse_csv("1,2\n3,4\n", Path::new("t.csv")).expect("valid");
        assert_eq!(without.rows(), 2);
    }

    #[test]
    fn bad_cells_name_line_and_column() {
        let cases = [
            ("a,b\n1,2\n3,NaN\n", "line 3, column 2"),
            ("a,b\n1,x\n", "line 2, column 2"),
            ("1,2\n3\n", "line 2"),
            ("a,b\n", "no data rows"),
            ("", "no rows"),
            ("1,inf\n", "line 1, column 2"),
        ];
        for (text, expected) in cases {
            let err = parse_csv(text, Path::new("t.csv"))
                .expect_err(text)
                .to_string();
            assert!(
                err.contains("t.csv") && err.contains(expected),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn standardisation_uses_training_statistics_only() {
        let train = parse_csv("1,5\n3,5\n", Path::new("t")).expect("valid");
        let test = parse_csv("5,7\n", Path::new("t")).expect("valid");
        let s = Standardizer::fit(&train);
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.std, vec![1.0, 1.0]);
        assert_eq!(s.apply(&test).values, vec![3.0, 2.0]);
    }
}
