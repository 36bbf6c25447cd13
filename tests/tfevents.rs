//! `periscope tfevents`: event files made by the real writers (tensorboardX, TensorBoard's own
//! EventFileWriter) read by `periscope` and by TensorBoard's own loader, which must agree; files
//! made by Periscope's writer read by TensorBoard's loader; damaged files; following a folder.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use periscope::tfevents::framing::{self, Frame};
use periscope::tfevents::{EventWriter, ScalarValue};
use serde_json::{json, Value};

use crate::harness::python::run_script;
use crate::harness::{periscope, run};

/// JSON lines as values, so numbers compare by value (`1e+38` and `1e38` are the same).
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// What TensorBoard's own loader reads from PATH, printed like `periscope tfevents scalars`.
fn tensorboard_reads(path: &Path) -> Vec<Value> {
    lines(&run_script("tfevents_load.py", [path]))
}

/// A folder with PyTorch-style (tensorboardX) and TF2-style (TensorBoard writer) runs.
fn written_by_real_writers() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run_script("tfevents_write_pytorch.py", [dir.path()]);
    run_script("tfevents_write_tf2.py", [dir.path()]);
    dir
}

fn tags(values: &[Value]) -> Vec<&str> {
    let mut tags: Vec<&str> = values.iter().map(|v| v["tag"].as_str().unwrap()).collect();
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// The one event file in `dir` (recursively).
fn only_event_file(dir: &Path) -> PathBuf {
    let found = periscope::tfevents::discover(dir).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].path.clone()
}

/// Byte offsets where each record of `bytes` starts.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while let Frame::Record { frame_len, .. } = framing::parse(&bytes[at..]) {
        starts.push(at);
        at += frame_len;
    }
    assert_eq!(
        at,
        bytes.len(),
        "the file must be whole before we damage it"
    );
    starts
}

#[test]
fn scalars_of_every_writer_and_dtype_match_tensorboards_loader() {
    let dir = written_by_real_writers();
    let expected = tensorboard_reads(dir.path());
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(dir.path()));
    ran.expect_code(0);
    assert_eq!(lines(&ran.stdout), expected);
    // The comparison covers what matters: every dtype in both encodings, simple_value, and the
    // non-finite values, while images, histograms, text and other plugins stay out.
    let seen = tags(&expected);
    for dtype in ["float", "double", "half", "bfloat16", "int32", "int64"] {
        for packing in ["typed", "content"] {
            let tag = format!("{dtype}/{packing}");
            assert!(seen.contains(&tag.as_str()), "{tag} missing from {seen:?}");
        }
    }
    for tag in ["train/loss", "odd/nan", "legacy/plugin_only"] {
        assert!(seen.contains(&tag), "{tag} missing from {seen:?}");
    }
    assert!(!seen.iter().any(|t| t.starts_with("not/")), "{seen:?}");
    assert!(!seen.contains(&"weights") && !seen.contains(&"image"));
    let values: Vec<&Value> = expected.iter().map(|v| &v["value"]).collect();
    for special in ["NaN", "Infinity", "-Infinity"] {
        assert!(values.contains(&&json!(special)), "{special} missing");
    }
    // Files come in sorted path order with paths relative to the folder.
    let files: Vec<&str> = expected
        .iter()
        .map(|v| v["file"].as_str().unwrap())
        .collect();
    assert!(files.windows(2).all(|w| w[0] <= w[1]), "{files:?}");
    assert!(files[0].starts_with("pytorch/events.out.tfevents."));
}

#[test]
fn a_file_argument_is_shown_as_given() {
    let dir = written_by_real_writers();
    let file = only_event_file(&dir.path().join("tf2"));
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(&file));
    ran.expect_code(0);
    let got = lines(&ran.stdout);
    assert_eq!(got, tensorboard_reads(&file));
    assert_eq!(got[0]["file"], json!(file.to_str().unwrap()));
}

#[test]
fn tensorboards_loader_reads_what_our_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    let name = w.path().file_name().unwrap().to_str().unwrap().to_owned();
    let parts: Vec<&str> = name.split('.').collect();
    assert_eq!(&parts[..3], ["events", "out", "tfevents"], "{name}");
    assert!(
        parts[3].len() >= 10 && parts[3].parse::<u64>().is_ok(),
        "{name}"
    );
    assert_eq!(parts[parts.len() - 2], std::process::id().to_string());
    let points = [
        ("loss", 0, ScalarValue::F32(2.5)),
        ("lr", 0, ScalarValue::F64(1e-4)),
        ("loss", 1, ScalarValue::F32(f32::NAN)),
        ("loss", 2, ScalarValue::F32(f32::NEG_INFINITY)),
        ("lr", 2, ScalarValue::F64(0.1)),
    ];
    for (i, (tag, step, value)) in points.iter().enumerate() {
        w.add_scalar(tag, *step, 1_700_000_000.0 + i as f64, *value)
            .unwrap();
    }
    w.sync().unwrap();
    let file = w.path().to_path_buf();
    drop(w);
    let shown = file.to_str().unwrap();
    let expected = vec![
        json!({"file": shown, "tag": "loss", "step": 0, "wall_time": 1700000000.0, "value": 2.5}),
        json!({"file": shown, "tag": "lr", "step": 0, "wall_time": 1700000001.0, "value": 1e-4}),
        json!({"file": shown, "tag": "loss", "step": 1, "wall_time": 1700000002.0, "value": "NaN"}),
        json!({"file": shown, "tag": "loss", "step": 2, "wall_time": 1700000003.0, "value": "-Infinity"}),
        json!({"file": shown, "tag": "lr", "step": 2, "wall_time": 1700000004.0, "value": 0.1}),
    ];
    assert_eq!(tensorboard_reads(&file), expected);
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(&file));
    ran.expect_code(0);
    assert_eq!(lines(&ran.stdout), expected);
}

#[test]
fn csv_and_table_formats_summarise_the_same_scalars() {
    let dir = written_by_real_writers();
    let expected = tensorboard_reads(dir.path());
    let csv = run(periscope()
        .args(["tfevents", "scalars", "--format", "csv"])
        .arg(dir.path()));
    csv.expect_code(0);
    let rows: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(rows[0], "file,tag,step,wall_time,value");
    assert_eq!(rows.len(), expected.len() + 1);
    assert!(
        rows.iter().any(|r| r.starts_with("pytorch/")
            && r.contains(",odd/nan,20,")
            && r.ends_with(",NaN")),
        "{}",
        csv.stdout
    );

    let table = run(periscope()
        .args(["tfevents", "scalars", "--format", "table"])
        .arg(dir.path()));
    table.expect_code(0);
    let loss = table
        .stdout
        .lines()
        .find(|l| l.starts_with("pytorch ") && l.contains(" train/loss "))
        .unwrap_or_else(|| panic!("no pytorch train/loss row:\n{}", table.stdout));
    // 20 steps plus one at step 10^12; the last value written was 0.01 as a float32.
    let cells: Vec<&str> = loss.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "pytorch",
            "train/loss",
            "21",
            "0",
            "1000000000000",
            "0.009999999776482582"
        ]
    );
}

/// A tensorboardX file, its bytes, record starts, and what TensorBoard reads from it.
struct Sample {
    _dir: tempfile::TempDir,
    file: PathBuf,
    bytes: Vec<u8>,
    starts: Vec<usize>,
    expected: Vec<Value>,
}

fn pytorch_sample() -> Sample {
    let dir = tempfile::tempdir().unwrap();
    run_script("tfevents_write_pytorch.py", [dir.path()]);
    let file = only_event_file(&dir.path().join("pytorch"));
    let bytes = std::fs::read(&file).unwrap();
    let starts = record_starts(&bytes);
    let expected = tensorboard_reads(&file);
    // tensorboardX writes file_version, then one scalar per record for the first 40 records.
    assert_eq!(expected[0]["tag"], json!("train/loss"));
    Sample {
        _dir: dir,
        file,
        bytes,
        starts,
        expected,
    }
}

#[test]
fn flipped_data_byte_skips_one_record_reports_it_and_exits_8() {
    let s = pytorch_sample();
    let mut bytes = s.bytes.clone();
    // Record 6 holds scalar 5 (record 0 is the file_version).
    bytes[s.starts[6] + framing::HEADER_LEN + 2] ^= 0x20;
    std::fs::write(&s.file, &bytes).unwrap();
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(&s.file));
    ran.expect_code(8)
        .expect_output(&format!("record at byte {}", s.starts[6]))
        .expect_output("data checksum mismatch");
    let mut expected = s.expected.clone();
    expected.remove(5);
    assert_eq!(lines(&ran.stdout), expected);
}

#[test]
fn flipped_length_byte_stops_the_file_after_printing_what_came_before() {
    let s = pytorch_sample();
    let mut bytes = s.bytes.clone();
    bytes[s.starts[11] + 1] ^= 0x01;
    std::fs::write(&s.file, &bytes).unwrap();
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(&s.file));
    ran.expect_code(8).expect_output("length checksum mismatch");
    assert_eq!(lines(&ran.stdout), s.expected[..10]);
}

#[test]
fn truncated_tail_is_not_damage() {
    let s = pytorch_sample();
    let last = *s.starts.last().unwrap();
    std::fs::write(&s.file, &s.bytes[..s.bytes.len() - 3]).unwrap();
    let ran = run(periscope().args(["tfevents", "scalars"]).arg(&s.file));
    ran.expect_code(0).expect_output(&format!(
        "the last {} bytes are an incomplete record",
        s.bytes.len() - 3 - last
    ));
    assert_eq!(lines(&ran.stdout), s.expected[..s.expected.len() - 1]);
}

#[test]
fn missing_path_and_empty_folder_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let missing = run(periscope()
        .args(["tfevents", "scalars"])
        .arg(dir.path().join("nope")));
    missing.expect_code(3);
    // The hint speaks of files and folders, not of URLs, refs or object keys.
    assert!(
        missing.stderr.contains("no such file or folder") && !missing.stderr.contains("ref"),
        "{}",
        missing.stderr
    );
    std::fs::write(dir.path().join("notes.txt"), "hi").unwrap();
    run(periscope().args(["tfevents", "scalars"]).arg(dir.path()))
        .expect_code(3)
        .expect_output("no tf.events files under");
}

/// A running `periscope tfevents tail`, killed when dropped; its stdout lines arrive on a channel.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn start(dir: &Path) -> Tail {
        let mut child = periscope()
            .args(["tfevents", "tail", "--interval-ms", "20"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        Tail { child, lines }
    }

    /// The next printed scalar as (file, tag, step); a generous bound only stops a hung test.
    fn next(&self) -> (String, String, i64) {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("tail printed nothing");
        let v: Value = serde_json::from_str(&line).unwrap();
        (
            v["file"].as_str().unwrap().to_owned(),
            v["tag"].as_str().unwrap().to_owned(),
            v["step"].as_i64().unwrap(),
        )
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tail_prints_each_scalar_once_as_files_grow_and_appear() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let tail = Tail::start(dir.path());

    // Build records with our writer into a scratch file, then feed them to the watched file in
    // pieces, cutting the second record in half.
    let scratch = tempfile::tempdir().unwrap();
    let mut w =
        EventWriter::create_at(&scratch.path().join("events.out.tfevents.src"), 1.0).unwrap();
    for step in 0..3 {
        w.add_scalar("loss", step, 2.0, ScalarValue::F32(0.5))
            .unwrap();
    }
    w.flush().unwrap();
    let bytes = std::fs::read(w.path()).unwrap();
    let starts = record_starts(&bytes);
    let cut = starts[2] + 7;

    std::fs::create_dir(dir.path().join("train")).unwrap();
    let watched = dir.path().join("train/events.out.tfevents.1.host");
    let mut file = std::fs::File::create(&watched).unwrap();
    file.write_all(&bytes[..cut]).unwrap();
    file.flush().unwrap();
    let name = "train/events.out.tfevents.1.host".to_owned();
    assert_eq!(tail.next(), (name.clone(), "loss".into(), 0));
    file.write_all(&bytes[cut..]).unwrap();
    file.flush().unwrap();
    assert_eq!(tail.next(), (name.clone(), "loss".into(), 1));
    assert_eq!(tail.next(), (name, "loss".into(), 2));

    // A file that appears later, in a new run folder, is picked up.
    std::fs::create_dir(dir.path().join("eval")).unwrap();
    let mut e = EventWriter::create(&dir.path().join("eval")).unwrap();
    e.add_scalar("acc", 7, 3.0, ScalarValue::F64(0.9)).unwrap();
    e.flush().unwrap();
    let (file, tag, step) = tail.next();
    assert!(file.starts_with("eval/events.out.tfevents."), "{file}");
    assert_eq!((tag.as_str(), step), ("acc", 7));
}

#[test]
fn a_tag_too_long_for_a_column_is_cut_and_the_table_still_prints() {
    let dir = tempfile::tempdir().unwrap();
    let long = "k".repeat(70_000);
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.add_scalar(&long, 1, 1_700_000_000.0, ScalarValue::F32(0.5))
        .unwrap();
    w.add_scalar("loss", 1, 1_700_000_000.0, ScalarValue::F32(0.25))
        .unwrap();
    w.flush().unwrap();
    let out = run(periscope()
        .args(["tfevents", "scalars", "--format", "table"])
        .arg(dir.path()));
    out.expect_code(0);
    let text = out.stdout;
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows.iter().any(|r| r.contains("kkk…")), "{text}");
    assert!(
        rows.iter()
            .any(|r| r.contains("loss") && r.ends_with("0.25")),
        "{text}"
    );
    assert!(rows.iter().all(|r| r.chars().count() < 300), "{text}");
}
