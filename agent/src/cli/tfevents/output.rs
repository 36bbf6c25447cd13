//! How scalars are printed: JSON lines and CSV (streamed), and a table (summarised) for people.
//!
//! Numbers are printed in the shortest form that reads back to the same f64 (as JSON does);
//! NaN and ±Infinity, which JSON cannot hold as numbers, are the strings `"NaN"`, `"Infinity"`
//! and `"-Infinity"`.

use std::collections::BTreeMap;
use std::io::{self, Write};

use periscope::tfevents::Scalar;
use serde::Serialize;

/// Where scalars go. Invariant: `finish` is called once, after the last `scalar`.
pub trait ScalarSink {
    fn scalar(&mut self, file: &str, scalar: &Scalar) -> io::Result<()>;
    /// Writes whatever is held back (the table) and flushes.
    fn finish(&mut self) -> io::Result<()>;
    /// Hands what was printed so far to the terminal or pipe (streamed formats).
    fn flush(&mut self) -> io::Result<()>;
}

/// A value as JSON: a number when finite, else its name as a string.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonValue {
    Number(f64),
    Name(&'static str),
}

fn json_value(v: f64) -> JsonValue {
    match non_finite_name(v) {
        Some(name) => JsonValue::Name(name),
        None => JsonValue::Number(v),
    }
}

fn non_finite_name(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("Infinity")
    } else if v == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// A number as text, as JSON would print it (names for non-finite values).
pub fn number_text(v: f64) -> String {
    match non_finite_name(v) {
        Some(name) => name.to_owned(),
        // Serialising a finite f64 cannot fail.
        None => serde_json::to_string(&v).unwrap_or_else(|_| v.to_string()),
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    file: &'a str,
    tag: &'a str,
    step: i64,
    wall_time: JsonValue,
    value: JsonValue,
}

/// One JSON object per line.
pub struct Jsonl<W: Write>(pub W);

impl<W: Write> ScalarSink for Jsonl<W> {
    fn scalar(&mut self, file: &str, s: &Scalar) -> io::Result<()> {
        let line = JsonLine {
            file,
            tag: &s.tag,
            step: s.step,
            wall_time: json_value(s.wall_time),
            value: json_value(s.value),
        };
        serde_json::to_writer(&mut self.0, &line).map_err(io::Error::other)?;
        self.0.write_all(b"\n")
    }

    fn finish(&mut self) -> io::Result<()> {
        self.0.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// CSV with a header line; fields quoted when they hold a comma, quote or line break.
pub struct Csv<W: Write> {
    out: W,
    header_done: bool,
}

impl<W: Write> Csv<W> {
    pub fn new(out: W) -> Self {
        Csv {
            out,
            header_done: false,
        }
    }
}

fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

impl<W: Write> ScalarSink for Csv<W> {
    fn scalar(&mut self, file: &str, s: &Scalar) -> io::Result<()> {
        if !self.header_done {
            self.out.write_all(b"file,tag,step,wall_time,value\n")?;
            self.header_done = true;
        }
        writeln!(
            self.out,
            "{},{},{},{},{}",
            csv_field(file),
            csv_field(&s.tag),
            s.step,
            number_text(s.wall_time),
            number_text(s.value)
        )
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.header_done {
            self.out.write_all(b"file,tag,step,wall_time,value\n")?;
            self.header_done = true;
        }
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Per-series summary for the table.
struct Series {
    count: u64,
    first_step: i64,
    last_step: i64,
    last_value: f64,
}

/// One row per run and tag: count, first and last step, last value; printed at the end.
/// Invariant: `last_run` is `run_of(last_file)`, cached because files arrive in long runs.
pub struct Table<W: Write> {
    out: W,
    rows: BTreeMap<String, BTreeMap<String, Series>>,
    last_file: String,
    last_run: String,
}

impl<W: Write> Table<W> {
    pub fn new(out: W) -> Self {
        Table {
            out,
            rows: BTreeMap::new(),
            last_file: String::new(),
            last_run: run_of(""),
        }
    }
}

/// The run of a file as printed: its folder, or `.`.
fn run_of(file: &str) -> String {
    match std::path::Path::new(file).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
        _ => ".".to_owned(),
    }
}

impl<W: Write> ScalarSink for Table<W> {
    fn scalar(&mut self, file: &str, s: &Scalar) -> io::Result<()> {
        if file != self.last_file {
            self.last_file = file.to_owned();
            self.last_run = run_of(file);
        }
        // Look up before inserting: the common case allocates nothing.
        let tags = match self.rows.get_mut(&self.last_run) {
            Some(tags) => tags,
            None => self.rows.entry(self.last_run.clone()).or_default(),
        };
        let series = match tags.get_mut(&s.tag) {
            Some(series) => series,
            None => tags.entry(s.tag.clone()).or_insert(Series {
                count: 0,
                first_step: s.step,
                last_step: s.step,
                last_value: s.value,
            }),
        };
        series.count += 1;
        series.last_step = s.step;
        series.last_value = s.value;
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        let header = [
            "RUN",
            "TAG",
            "COUNT",
            "FIRST STEP",
            "LAST STEP",
            "LAST VALUE",
        ];
        let mut cells: Vec<[String; 6]> = vec![header.map(str::to_owned)];
        for (run, tag, s) in self
            .rows
            .iter()
            .flat_map(|(run, tags)| tags.iter().map(move |(tag, s)| (run, tag, s)))
        {
            cells.push([
                run.clone(),
                tag.clone(),
                s.count.to_string(),
                s.first_step.to_string(),
                s.last_step.to_string(),
                number_text(s.last_value),
            ]);
        }
        let mut widths = [0usize; 6];
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        for row in &cells {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                // Text columns align left, numbers right, as people scan them.
                if i < 2 {
                    line.push_str(&format!("{c:<w$}"));
                } else {
                    line.push_str(&format!("{c:>w$}"));
                }
                if i < 5 {
                    line.push_str("  ");
                }
            }
            writeln!(self.out, "{}", line.trim_end())?;
        }
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(tag: &str, step: i64, value: f64) -> Scalar {
        Scalar {
            tag: tag.into(),
            step,
            wall_time: 1.5,
            value,
        }
    }

    #[test]
    fn jsonl_names_non_finite_values() {
        let mut out = Vec::new();
        let mut sink = Jsonl(&mut out);
        sink.scalar("a/ev", &scalar("x", 1, f64::NAN)).unwrap();
        sink.scalar("a/ev", &scalar("x", 2, f64::NEG_INFINITY))
            .unwrap();
        sink.scalar("a/ev", &scalar("x", 3, 0.1)).unwrap();
        sink.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"file":"a/ev","tag":"x","step":1,"wall_time":1.5,"value":"NaN"}"#
        );
        assert!(lines[1].ends_with(r#""value":"-Infinity"}"#));
        assert!(lines[2].ends_with(r#""value":0.1}"#));
    }

    #[test]
    fn csv_quotes_awkward_fields() {
        let mut out = Vec::new();
        let mut sink = Csv::new(&mut out);
        sink.scalar("ev", &scalar("a,\"b\"", 1, f64::INFINITY))
            .unwrap();
        sink.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "file,tag,step,wall_time,value\nev,\"a,\"\"b\"\"\",1,1.5,Infinity\n"
        );
    }

    #[test]
    fn table_has_one_row_per_run_and_tag() {
        let mut out = Vec::new();
        let mut sink = Table::new(&mut out);
        for step in 0..3 {
            sink.scalar("train/ev", &scalar("loss", step, step as f64))
                .unwrap();
        }
        sink.scalar("ev", &scalar("lr", 5, 0.5)).unwrap();
        sink.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("RUN    TAG   COUNT"), "{text}");
        assert!(lines[1].starts_with(".      lr        1"), "{text}");
        assert!(lines[2].ends_with("2.0"), "{text}");
    }
}
