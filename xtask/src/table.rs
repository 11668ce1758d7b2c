//! Plain-text tables for terminal reports.

/// Renders `header` and `rows` as aligned columns. `align` holds one `l` or `r` per column
/// (missing means left); widths count characters, so `µs` lines up.
pub(crate) fn render(header: &[&str], rows: &[Vec<String>], align: &str) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let right: Vec<bool> = (0..columns).map(|i| align.as_bytes().get(i) == Some(&b'r')).collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            if i > 0 {
                out.push_str("  ");
            }
            if right[i] {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&pad);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&mut rule.iter().map(String::as_str)));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn aligns_by_characters() {
        let rows = vec![vec!["a".to_owned(), "1.0 µs".to_owned()], vec!["long".to_owned(), "12 ns".to_owned()]];
        let expected = "\
case    time
----  ------
a     1.0 µs
long   12 ns
";
        assert_eq!(render(&["case", "time"], &rows, "lr"), expected);
    }
}
