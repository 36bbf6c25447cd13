//! How scalars are printed: JSON lines and CSV (streamed), and a table (summarised) for people.
//!
//! Numbers are printed in the shortest form that reads back to the same f64 (as JSON does);
//! NaN and ±Infinity, which JSON cannot hold as numbers, are the strings `"NaN"`, `"Infinity"`
//! and `"-Infinity"`.

use std::collections::BTreeMap;
use std::io::{self, Write};

use periscope::tfevents::{RecordScalars, ScalarRef, SeriesSummary};
use serde::Serialize;

use crate::cli::format::number as number_text;
use crate::cli::format::{table, Align::*};

/// Where scalars go. Invariant: `finish` is called once, after the last `record`.
pub trait ScalarSink {
    /// Takes one record's scalars, in order.
    fn record(&mut self, file: &str, record: &RecordScalars<'_>) -> io::Result<()> {
        record.iter().try_for_each(|s| self.scalar(file, s))
    }
    fn scalar(&mut self, file: &str, scalar: ScalarRef<'_>) -> io::Result<()>;
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

/// One JSON object per line: `{"file","tag","step","wall_time","value"}`, each string and number
/// written by serde_json. Invariant: `prefix` is `{"file":<file>,"tag":` for `file`, so a file's
/// name is escaped once, not once per line; `line` is scratch space for one line.
pub struct Jsonl<W: Write> {
    out: W,
    file: Option<String>,
    prefix: Vec<u8>,
    line: Vec<u8>,
}

impl<W: Write> Jsonl<W> {
    pub fn new(out: W) -> Self {
        Jsonl {
            out,
            file: None,
            prefix: Vec::new(),
            line: Vec::new(),
        }
    }
}

impl<W: Write> ScalarSink for Jsonl<W> {
    fn scalar(&mut self, file: &str, s: ScalarRef<'_>) -> io::Result<()> {
        if self.file.as_deref() != Some(file) {
            self.prefix.clear();
            self.prefix.extend_from_slice(b"{\"file\":");
            serde_json::to_writer(&mut self.prefix, file).map_err(io::Error::other)?;
            self.prefix.extend_from_slice(b",\"tag\":");
            self.file = Some(file.to_owned());
        }
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(&self.prefix);
        serde_json::to_writer(&mut *line, s.tag).map_err(io::Error::other)?;
        write!(line, ",\"step\":{},\"wall_time\":", s.step)?;
        serde_json::to_writer(&mut *line, &json_value(s.wall_time)).map_err(io::Error::other)?;
        line.extend_from_slice(b",\"value\":");
        serde_json::to_writer(&mut *line, &json_value(s.value)).map_err(io::Error::other)?;
        line.extend_from_slice(b"}\n");
        self.out.write_all(line)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
    fn scalar(&mut self, file: &str, s: ScalarRef<'_>) -> io::Result<()> {
        if !self.header_done {
            self.out.write_all(b"file,tag,step,wall_time,value\n")?;
            self.header_done = true;
        }
        writeln!(
            self.out,
            "{},{},{},{},{}",
            csv_field(file),
            csv_field(s.tag),
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

/// One row per run and tag: count, first and last step, last value; printed at the end.
/// Invariants: `current` holds the series of run `current_run`, which is `run_of(last_file)`
/// (files arrive in long runs, so a record usually needs no lookup); `rows` holds every other run.
pub struct Table<W: Write> {
    out: W,
    rows: BTreeMap<String, SeriesSummary>,
    current: SeriesSummary,
    current_run: String,
    last_file: String,
}

impl<W: Write> Table<W> {
    pub fn new(out: W) -> Self {
        Table {
            out,
            rows: BTreeMap::new(),
            current: SeriesSummary::new(),
            current_run: run_of(""),
            last_file: String::new(),
        }
    }

    /// Makes `current` the summary of `file`'s run.
    fn switch_to(&mut self, file: &str) {
        self.last_file = file.to_owned();
        let run = run_of(file);
        if run != self.current_run {
            let done = std::mem::take(&mut self.current);
            if !done.is_empty() {
                self.rows
                    .insert(std::mem::take(&mut self.current_run), done);
            }
            self.current = self.rows.remove(&run).unwrap_or_default();
            self.current_run = run;
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
    fn record(&mut self, file: &str, record: &RecordScalars<'_>) -> io::Result<()> {
        if file != self.last_file {
            self.switch_to(file);
        }
        self.current.add_record(record);
        Ok(())
    }

    fn scalar(&mut self, file: &str, s: ScalarRef<'_>) -> io::Result<()> {
        if file != self.last_file {
            self.switch_to(file);
        }
        self.current.add(s);
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
        let current = std::mem::take(&mut self.current);
        if !current.is_empty() {
            self.rows
                .insert(std::mem::take(&mut self.current_run), current);
        }
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .flat_map(|(run, tags)| tags.iter().map(move |(tag, s)| (run, tag, s)))
            .map(|(run, tag, s)| {
                vec![
                    run.clone(),
                    tag.to_owned(),
                    s.count.to_string(),
                    s.first_step.to_string(),
                    s.last_step.to_string(),
                    number_text(s.last_value),
                ]
            })
            .collect();
        table(
            &mut self.out,
            &header,
            &rows,
            &[Left, Left, Right, Right, Right, Right],
        )?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(tag: &str, step: i64, value: f64) -> ScalarRef<'_> {
        ScalarRef {
            tag,
            step,
            wall_time: 1.5,
            value,
        }
    }

    #[test]
    fn jsonl_names_non_finite_values() {
        let mut out = Vec::new();
        let mut sink = Jsonl::new(&mut out);
        sink.scalar("a/ev", scalar("x", 1, f64::NAN)).unwrap();
        sink.scalar("a/ev", scalar("x", 2, f64::NEG_INFINITY))
            .unwrap();
        sink.scalar("a/ev", scalar("x", 3, 0.1)).unwrap();
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
    fn jsonl_escapes_file_and_tag_and_follows_file_changes() {
        let mut out = Vec::new();
        let mut sink = Jsonl::new(&mut out);
        sink.scalar("a\"b/ev", scalar("t\\x", -3, 2e-7)).unwrap();
        sink.scalar("c/ev", scalar("y", 4, 1e300)).unwrap();
        sink.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"file":"a\"b/ev","tag":"t\\x","step":-3,"wall_time":1.5,"value":2e-7}"#,
                "\n",
                r#"{"file":"c/ev","tag":"y","step":4,"wall_time":1.5,"value":1e+300}"#,
                "\n"
            )
        );
    }

    #[test]
    fn csv_quotes_awkward_fields() {
        let mut out = Vec::new();
        let mut sink = Csv::new(&mut out);
        sink.scalar("ev", scalar("a,\"b\"", 1, f64::INFINITY))
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
            sink.scalar("train/ev", scalar("loss", step, step as f64))
                .unwrap();
        }
        sink.scalar("ev", scalar("lr", 5, 0.5)).unwrap();
        sink.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("RUN    TAG   COUNT"), "{text}");
        assert!(lines[1].starts_with(".      lr        1"), "{text}");
        assert!(lines[2].ends_with("2.0"), "{text}");
    }
}
