//! How every command prints numbers, times and tables, so the same value reads the same in
//! `tfevents`, `metrics` and `runs`.

use std::io::{self, Write};

/// Longest cell a table prints; longer ones (a 70,000-character metric key) are cut with `…`,
/// so one odd value never makes a table unreadable or its column wider than formatting allows.
pub const MAX_CELL: usize = 120;

/// A number as JSON would print it: the shortest text that reads back as the same `f64`, and
/// `NaN`, `Infinity` or `-Infinity` for the values JSON has no number for.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "Infinity".into()
    } else if v == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        // Serialising a finite f64 cannot fail.
        serde_json::to_string(&v).unwrap_or_else(|_| v.to_string())
    }
}

/// Milliseconds since the epoch as an RFC 3339 UTC time with milliseconds.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `1,234`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How a column lines up: text to the left, numbers to the right, as people scan them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A cell cut to [`MAX_CELL`] characters.
fn cell(text: &str) -> String {
    if text.chars().count() <= MAX_CELL {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// Prints rows as aligned columns under a header; `align` gives each column's alignment
/// (missing ones are left-aligned).
pub fn table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
    align: &[Align],
) -> io::Result<()> {
    let cells: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| cell(h)).collect())
        .chain(rows.iter().map(|r| r.iter().map(|c| cell(c)).collect()))
        .collect();
    let mut widths = vec![0usize; header.len()];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in &cells {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w - c.chars().count());
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Left => {
                    line.push_str(c);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(c);
                }
            }
            line.push_str("  ");
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A text sparkline of at most `width` buckets (each the mean of its points); non-finite values
/// are left out.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() || width == 0 {
        return String::new();
    }
    let buckets = finite.len().min(width);
    let means: Vec<f64> = (0..buckets)
        .map(|b| {
            let from = b * finite.len() / buckets;
            let to = ((b + 1) * finite.len() / buckets).max(from + 1);
            finite[from..to].iter().sum::<f64>() / (to - from) as f64
        })
        .collect();
    let (lo, hi) = means
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    means
        .iter()
        .map(|v| {
            let i = if hi > lo {
                ((v - lo) / (hi - lo) * 7.0).round() as usize
            } else {
                3
            };
            BARS[i.min(7)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_shortest_text_that_reads_back_the_same() {
        assert_eq!(number(0.9137064218521118), "0.9137064218521118");
        assert_eq!(number(2.0), "2.0");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn a_huge_cell_is_cut_and_the_table_still_lines_up() {
        let key = "k".repeat(70_000);
        let mut out = Vec::new();
        let rows = vec![vec![key, "1".into()], vec!["short".into(), "22".into()]];
        table(&mut out, &["KEY", "N"], &rows, &[Align::Left, Align::Right]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains('…'));
        assert!(lines.iter().all(|l| l.chars().count() <= MAX_CELL + 2 + 2));
        assert!(lines[2].ends_with("22") && lines[1].ends_with(" 1"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1001), "1,001");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn sparkline_follows_the_trend() {
        assert_eq!(
            sparkline(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[5.0, 5.0], 8), "▄▄");
        assert_eq!(sparkline(&[f64::NAN], 8), "");
        assert_eq!(
            sparkline(&(0..100).map(f64::from).collect::<Vec<_>>(), 10)
                .chars()
                .count(),
            10
        );
    }
}
