//! A line diff of two texts (longest common subsequence), for comparing definition versions.

/// Above this many lines on either side the texts are not diffed (the table is quadratic).
pub(crate) const MAX_LINES: usize = 3_000;

/// One line of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// The lines of `old` and `new` with what changed between them; `None` when either is longer
/// than [`MAX_LINES`].
pub(crate) fn lines<'a>(old: &'a str, new: &'a str) -> Option<Vec<Line<'a>>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len() > MAX_LINES || b.len() > MAX_LINES {
        return None;
    }
    // Common prefix and suffix first: versions usually differ in a few places.
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (a_mid, b_mid) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let (n, m) = (a_mid.len(), b_mid.len());
    // lcs[i][j]: the longest common subsequence of a_mid[i..] and b_mid[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] =
                if a_mid[i] == b_mid[j] { lcs[at(i + 1, j + 1)] + 1 } else { lcs[at(i + 1, j)].max(lcs[at(i, j + 1)]) };
        }
    }
    let mut out: Vec<Line<'a>> = a[..prefix].iter().map(|l| Line::Same(l)).collect();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a_mid[i] == b_mid[j] {
            out.push(Line::Same(a_mid[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            out.push(Line::Removed(a_mid[i]));
            i += 1;
        } else {
            out.push(Line::Added(b_mid[j]));
            j += 1;
        }
    }
    out.extend(a[a.len() - suffix..].iter().map(|l| Line::Same(l)));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Line::*;

    #[test]
    fn changed_lines_show_as_removed_then_added() {
        let diff = lines("a\nb\nc\nk", "a\nx\nc\nk\ne").unwrap();
        assert_eq!(diff, [Same("a"), Removed("b"), Added("x"), Same("c"), Same("k"), Added("e")]);
        assert_eq!(lines("same", "same").unwrap(), [Same("same")]);
        assert_eq!(lines("", "new").unwrap(), [Added("new")]);
        assert!(lines(&"x\n".repeat(MAX_LINES + 1), "x").is_none());
    }
}
