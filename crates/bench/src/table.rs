//! A markdown table with padded columns, readable both raw in a terminal and rendered.

use std::io::{self, Write};

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Clone, Debug)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

/// Escapes what would break a markdown table cell: pipes and line breaks.
fn escape(cell: &str) -> String {
    cell.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn width(s: &str) -> usize {
    s.chars().count()
}

impl Table {
    /// A table with these columns, all left-aligned.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        let align = vec![Align::Left; headers.len()];
        Table {
            headers,
            align,
            rows: Vec::new(),
        }
    }

    /// Sets the alignment of column `col` (ignored if there is no such column).
    pub fn align(mut self, col: usize, align: Align) -> Table {
        if let Some(a) = self.align.get_mut(col) {
            *a = align;
        }
        self
    }

    /// Adds a row; missing cells are left empty, extra cells are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.headers.len())
            .map(|c| escape(&c.into()))
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn widths(&self) -> Vec<usize> {
        self.headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                self.rows
                    .iter()
                    .map(|r| width(&r[i]))
                    .chain([width(&escape(h)), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect()
    }

    /// Writes the table as GitHub-flavoured markdown.
    pub fn render(&self, out: &mut impl Write) -> io::Result<()> {
        let widths = self.widths();
        let line = |out: &mut dyn Write, cells: &[String]| -> io::Result<()> {
            write!(out, "|")?;
            for ((cell, w), align) in cells.iter().zip(&widths).zip(&self.align) {
                let pad = " ".repeat(w - width(cell));
                match align {
                    Align::Left => write!(out, " {cell}{pad} |")?,
                    Align::Right => write!(out, " {pad}{cell} |")?,
                }
            }
            writeln!(out)
        };
        let headers: Vec<String> = self.headers.iter().map(|h| escape(h)).collect();
        line(out, &headers)?;
        write!(out, "|")?;
        for (w, align) in widths.iter().zip(&self.align) {
            match align {
                Align::Left => write!(out, " {} |", "-".repeat(*w))?,
                Align::Right => write!(out, " {}: |", "-".repeat(w - 1))?,
            }
        }
        writeln!(out)?;
        for row in &self.rows {
            line(out, row)?;
        }
        Ok(())
    }

    /// The rendered table as a string.
    pub fn to_markdown(&self) -> String {
        let mut buf = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.render(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// A ratio cell: "0.30×", three decimals below 0.1 ("0.012×"), "—" for none.
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "—".into(),
        Some(r) if r < 0.1 => format!("{r:.3}×"),
        Some(r) => format!("{r:.2}×"),
    }
}

/// A "Met" cell: "yes", "NO", or "—" when there is nothing to judge.
pub fn yes_no(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "—",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_to_the_widest_cell() {
        let mut t = Table::new(["Name", "Value"]).align(1, Align::Right);
        t.row(["a", "1"]);
        t.row(["longer name", "12345"]);
        assert_eq!(
            t.to_markdown(),
            "| Name        | Value |\n\
             | ----------- | ----: |\n\
             | a           |     1 |\n\
             | longer name | 12345 |\n"
        );
    }

    #[test]
    fn escapes_pipes_and_newlines_and_counts_chars_not_bytes() {
        let mut t = Table::new(["x"]);
        t.row(["a|b"]);
        t.row(["µs\nx"]);
        assert_eq!(
            t.to_markdown(),
            "| x    |\n\
             | ---- |\n\
             | a\\|b |\n\
             | µs x |\n"
        );
    }

    #[test]
    fn short_and_long_rows_are_fitted_to_the_header() {
        let mut t = Table::new(["a", "b"]);
        t.row(["1"]);
        t.row(["1", "2", "3"]);
        assert_eq!(
            t.to_markdown(),
            "| a   | b   |\n| --- | --- |\n| 1   |     |\n| 1   | 2   |\n"
        );
        assert!(!t.is_empty());
        assert!(Table::new(["a"]).is_empty());
    }
}
