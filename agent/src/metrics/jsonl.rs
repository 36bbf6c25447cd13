//! The `--metrics-file` source: a JSONL file, one `{"key", "value", "step", "timestamp"}` per
//! line, for training scripts in any language.
//!
//! * Read incrementally from a checkpointed byte offset ([`JsonlState`]); only whole lines are
//!   taken, so a partial last line waits for its newline.
//! * `value` is a number, or `NaN` / `Infinity` / `-Infinity` written bare (as Python's `json`
//!   writes them) or as strings. `step` defaults to 0; `timestamp` is milliseconds since the epoch
//!   and defaults to the time the line is read.
//! * A bad line is reported (a warning with its line number), counted and skipped; it is never
//!   fatal. A file that shrank below the offset was truncated or replaced: it is read again from
//!   the start.
//!
//! This module reads files and produces metrics; it never writes the checkpoint or the queue.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::model::{float, now_ms, Item, Metric};

/// Where reading a metrics file resumes. Invariant: `offset` is just after a newline (or 0), and
/// `line` is the number of lines before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonlState {
    pub offset: u64,
    pub line: u64,
    /// Lines skipped because they were not a metric.
    pub bad_lines: u64,
}

/// One line as written by a user.
#[derive(Deserialize)]
struct Line {
    key: String,
    #[serde(with = "float")]
    value: f64,
    #[serde(default)]
    step: Option<i64>,
    #[serde(default)]
    timestamp: Option<serde_json::Number>,
}

/// Reads the whole lines after `state`, at most `max_bytes` of them (always at least one whole
/// line if there is one). Appends metrics to `out` and returns the new state.
pub fn read(
    path: &Path,
    state: &JsonlState,
    worker: &str,
    max_bytes: u64,
    out: &mut Vec<Item>,
) -> io::Result<JsonlState> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        // Not written yet: nothing to read.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(state.clone()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut state = state.clone();
    if len < state.offset {
        tracing::warn!(file = %path.display(), "metrics file shrank; reading it again from the start");
        state.offset = 0;
        state.line = 0;
    }
    if len == state.offset {
        return Ok(state);
    }
    file.seek(SeekFrom::Start(state.offset))?;
    let mut buf = Vec::new();
    let mut limit = max_bytes.max(1);
    loop {
        buf.clear();
        (&mut file).take(limit).read_to_end(&mut buf)?;
        if buf.contains(&b'\n') || (buf.len() as u64) < limit {
            break;
        }
        // One line longer than the budget: read more until its end.
        limit = limit.saturating_mul(2);
        file.seek(SeekFrom::Start(state.offset))?;
    }
    let Some(last_newline) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok(state);
    };
    for raw in buf[..last_newline].split(|b| *b == b'\n') {
        state.line += 1;
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match parse_line(text, worker) {
            Ok(metric) => out.push(Item::Metric(metric)),
            Err(why) => {
                state.bad_lines += 1;
                tracing::warn!(file = %path.display(), line = state.line, error = %why,
                    "skipping a metrics line that is not {{\"key\", \"value\", \"step\", \"timestamp\"}}");
            }
        }
    }
    state.offset += last_newline as u64 + 1;
    Ok(state)
}

/// Parses one line into a metric.
pub fn parse_line(text: &str, worker: &str) -> Result<Metric, String> {
    let text = float::quote_non_finite(text);
    let line: Line = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if line.key.is_empty() {
        return Err("empty key".into());
    }
    let timestamp_ms = match line.timestamp {
        None => now_ms(),
        Some(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f)) if f.is_finite() && f.abs() < 9.0e15 => f.round() as i64,
            _ => return Err(format!("timestamp {n} is not milliseconds since the epoch")),
        },
    };
    if chrono::DateTime::from_timestamp_millis(timestamp_ms).is_none() {
        return Err(format!("timestamp {timestamp_ms} is out of range"));
    }
    Ok(Metric {
        key: line.key,
        value: line.value,
        step: line.step.unwrap_or(0),
        timestamp_ms,
        worker: worker.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn metrics(items: &[Item]) -> Vec<(String, i64, f64)> {
        items
            .iter()
            .map(|i| match i {
                Item::Metric(m) => (m.key.clone(), m.step, m.value),
                other => panic!("not a metric: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn whole_lines_only_and_bad_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut f = File::create(&path).unwrap();
        write!(
            f,
            "{{\"key\":\"loss\",\"value\":0.5,\"step\":1,\"timestamp\":1000}}\n\
             not json\n\
             {{\"key\":\"acc\",\"value\":NaN,\"step\":2,\"timestamp\":2000}}\n\
             {{\"key\":\"half"
        )
        .unwrap();
        let mut out = Vec::new();
        let s1 = read(&path, &JsonlState::default(), "worker-0", 1 << 20, &mut out).unwrap();
        let got = metrics(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("loss".into(), 1, 0.5));
        assert!(got[1].2.is_nan());
        assert_eq!(s1.bad_lines, 1);
        assert_eq!(s1.line, 3);
        // The partial line is completed later and read once.
        writeln!(f, "\",\"value\":-Infinity,\"step\":3,\"timestamp\":3000}}").unwrap();
        out.clear();
        let s2 = read(&path, &s1, "worker-0", 1 << 20, &mut out).unwrap();
        assert_eq!(metrics(&out), [("half".into(), 3, f64::NEG_INFINITY)]);
        assert_eq!(s2.line, 4);
        out.clear();
        let s3 = read(&path, &s2, "worker-0", 1 << 20, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(s3, s2);
    }

    #[test]
    fn a_small_budget_still_reads_a_long_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        std::fs::write(
            &path,
            "{\"key\":\"a_long_key_name\",\"value\":\"Infinity\",\"timestamp\":5}\n{\"key\":\"b\",\"value\":1}\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let s = read(&path, &JsonlState::default(), "w", 4, &mut out).unwrap();
        assert_eq!(
            metrics(&out),
            [("a_long_key_name".into(), 0, f64::INFINITY)]
        );
        let s = read(&path, &s, "w", 4, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(s.line, 2);
    }

    #[test]
    fn strings_keep_their_nan_text() {
        let m = parse_line(r#"{"key":"NaN count","value":1,"timestamp":7}"#, "w").unwrap();
        assert_eq!(m.key, "NaN count");
        assert!(parse_line(r#"{"key":"x","value":1,"timestamp":1e300}"#, "w").is_err());
    }
}
