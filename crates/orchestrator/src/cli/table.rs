//! A tiny column formatter for the human output: left-aligned columns two spaces apart, the
//! last one unpadded so lines carry no trailing spaces.

/// Rows under a header, rendered with every column as wide as its widest cell.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with this header row.
    pub(crate) fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|cell| (*cell).to_owned()).collect()] }
    }

    /// Adds a row; missing cells render empty.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub(crate) fn render(&self) -> String {
        render_rows(&self.rows)
    }
}

/// `field  value` lines with the fields aligned, for one record.
pub(crate) fn details(pairs: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = pairs.iter().map(|(field, value)| vec![format!("{field}:"), value.clone()]).collect();
    render_rows(&rows)
}

fn render_rows(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell_width(cell));
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            line.push_str(&clean(cell));
            if i + 1 < columns {
                line.extend(std::iter::repeat_n(' ', width - cell_width(cell) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Cells are one line: a newline or tab would break the columns.
fn clean(cell: &str) -> String {
    cell.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn cell_width(cell: &str) -> usize {
    cell.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new(&["ID", "STATE", "NOTE"]);
        table.row(vec!["a".into(), "running".into(), "x".into()]);
        table.row(vec!["longer-id".into(), "ok".into(), String::new()]);
        table.row(vec!["ünï".into()]);
        assert_eq!(
            table.render(),
            "ID         STATE    NOTE\n\
             a          running  x\n\
             longer-id  ok\n\
             ünï\n"
        );
    }

    #[test]
    fn control_characters_do_not_break_lines() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["x\ny".into(), "z".into()]);
        assert_eq!(table.render(), "A    B\nx y  z\n");
    }

    #[test]
    fn details_align_the_values() {
        assert_eq!(details(&[("id", "x".into()), ("workflow", "order".into())]), "id:        x\nworkflow:  order\n");
    }
}
