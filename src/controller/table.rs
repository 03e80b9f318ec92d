//! Plain-text tables: a header row and left-aligned columns two spaces apart.

/// Renders `rows` under `headers`; every line ends with a newline, no trailing spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(width) => *width = (*width).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_to_the_widest_cell() {
        let rows = vec![
            vec!["node1".to_string(), "node3".to_string(), "2".to_string()],
            vec!["node10".to_string(), "no reply".to_string(), "-".to_string()],
        ];
        let text = render(&["NODE", "LEADER", "TERM"], &rows);
        assert_eq!(text, "NODE    LEADER    TERM\nnode1   node3     2\nnode10  no reply  -\n");
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(render(&["TERM", "KEY", "VALUE"], &[]), "TERM  KEY  VALUE\n");
    }
}
