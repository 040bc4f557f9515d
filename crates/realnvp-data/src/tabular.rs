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
/// later cell must be a finite number. Quoted fields, a UTF-8 byte-order mark and the
/// delimiters `,` `;` tab and `|` (the one most frequent in the first line) are accepted.
pub fn read_csv(path: &Path) -> Result<Table, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_csv(&text, path)
}

/// The delimiters [`parse_csv`] recognises, in order of preference on a tie.
const DELIMITERS: [u8; 4] = [b',', b'\t', b';', b'|'];

/// The delimiter of `text`: the one of [`DELIMITERS`] most frequent in its first non-empty
/// line (a comma when none occurs: a single column).
fn sniff_delimiter(text: &str) -> u8 {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let count = |d: u8| first.bytes().filter(|&b| b == d).count();
    DELIMITERS
        .into_iter()
        .rev()
        .max_by_key(|&d| count(d))
        .filter(|&d| count(d) > 0)
        .unwrap_or(b',')
}

/// Parses CSV text (see [`read_csv`]); `path` names the source in errors, which give the
/// line and column.
pub fn parse_csv(text: &str, path: &Path) -> Result<Table, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(sniff_delimiter(text))
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = reader.records().peekable();
    let line_of = |record: &csv::StringRecord| record.position().map_or(0, csv::Position::line);
    let first = match records.peek() {
        None => return Err(DataError::dataset(path, "no rows")),
        Some(Err(e)) => return Err(csv_error(path, e)),
        Some(Ok(first)) => first.clone(),
    };
    let columns: Vec<String> = if first.iter().any(|c| c.parse::<f64>().is_err()) {
        records.next();
        first.iter().map(str::to_string).collect()
    } else {
        (0..first.len()).map(|i| format!("column_{i}")).collect()
    };
    let mut values = Vec::new();
    for record in records {
        let record = record.map_err(|e| csv_error(path, &e))?;
        let line = line_of(&record);
        if record.len() != columns.len() {
            return Err(DataError::at(
                path,
                format!("line {line}"),
                format!("{} cells, expected {}", record.len(), columns.len()),
            ));
        }
        for (column, cell) in record.iter().enumerate() {
            let value = cell
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    DataError::at(
                        path,
                        format!("line {line}, column {}", column + 1),
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

/// A CSV syntax error (an unclosed quote, invalid UTF-8), at its line.
fn csv_error(path: &Path, e: &csv::Error) -> DataError {
    let line = e.position().map_or(0, csv::Position::line);
    DataError::at(path, format!("line {line}"), e.to_string())
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
    fn quotes_delimiters_and_a_byte_order_mark_are_read() {
        let quoted = parse_csv(
            "\u{feff}\"x, first\",\"y\"\n\"1.5\",2\n",
            Path::new("q.csv"),
        )
        .expect("quoted header and cells, BOM");
        assert_eq!(quoted.columns, vec!["x, first", "y"]);
        assert_eq!(quoted.values, vec![1.5, 2.0]);
        for (text, name) in [
            ("a;b\n1;2\n", "semicolons"),
            ("a\tb\n1\t2\n", "tabs"),
            ("a|b\n1|2\n", "pipes"),
        ] {
            let table = parse_csv(text, Path::new("d.csv")).expect(name);
            assert_eq!(table.columns, vec!["a", "b"], "{name}");
            assert_eq!(table.values, vec![1.0, 2.0], "{name}");
        }
        let single = parse_csv("v\n1\n2\n", Path::new("s.csv")).expect("one column");
        assert_eq!(single.values, vec![1.0, 2.0]);
        let err = parse_csv("a,b\n1,\"x, y\"\n", Path::new("u.csv"))
            .expect_err("a quoted text cell")
            .to_string();
        assert!(
            err.contains("u.csv") && err.contains("line 2, column 2") && err.contains("`x, y`"),
            "{err}"
        );
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
