//! Writing event files that TensorBoard reads.
//!
//! A new file is named `events.out.tfevents.<secs>.<host>.<pid>.<n>` (as TensorBoard's own writer
//! names them) and starts with a `file_version` record. Scalars are written as TF2 writes them: a
//! rank-0 tensor, with the `scalars` plugin metadata on each tag's first value only. This module
//! owns the encoding; it never decides where files go beyond the folder it is given, and never
//! replaces an existing file.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::framing;
use crate::proto::{
    event, summary_value, Event, PluginData, SessionLog, Summary, SummaryMetadata, SummaryValue,
    TensorProto, TensorShapeProto, DATA_CLASS_SCALAR, DT_DOUBLE, DT_FLOAT, SESSION_START,
};
use crate::scalar::SCALARS_PLUGIN;

/// The version string TensorBoard expects in a file's first record.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Distinguishes files one process creates within the same second, like TensorBoard's global uid.
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A scalar's number as it should be stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalarValue {
    /// `DT_FLOAT`, as TF2's `tf.summary.scalar` writes it.
    F32(f32),
    /// `DT_DOUBLE`, for values that must not lose precision.
    F64(f64),
}

/// An open event file. Invariant: the file on disk is a sequence of whole records up to the last
/// [`flush`](EventWriter::flush); its first record is the `file_version` event.
#[derive(Debug)]
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
    tags_with_metadata: HashSet<String>,
    scratch: Vec<u8>,
    frame: Vec<u8>,
}

impl EventWriter {
    /// Creates a new event file in `dir` (which must exist) and writes its `file_version` record.
    pub fn create(dir: &Path) -> io::Result<Self> {
        let now = unix_now();
        let name = format!(
            "events.out.tfevents.{:010}.{}.{}.{}",
            now as u64,
            hostname(),
            std::process::id(),
            FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_at(&dir.join(name), now)
    }

    /// Creates the event file at exactly `path` (refusing to replace one), with `wall_time` on
    /// its `file_version` record.
    pub fn create_at(path: &Path, wall_time: f64) -> io::Result<Self> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let mut writer = EventWriter {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            tags_with_metadata: HashSet::new(),
            scratch: Vec::new(),
            frame: Vec::new(),
        };
        writer.write_event(&Event {
            wall_time,
            step: 0,
            what: Some(event::What::FileVersion(FILE_VERSION.to_owned())),
        })?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as one record (buffered until [`flush`](Self::flush)).
    pub fn write_event(&mut self, event: &Event) -> io::Result<()> {
        self.scratch.clear();
        event
            .encode(&mut self.scratch)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.write_record_inner()
    }

    /// Appends raw bytes as one framed record.
    pub fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        self.frame.clear();
        framing::encode(data, &mut self.frame);
        self.out.write_all(&self.frame)
    }

    fn write_record_inner(&mut self) -> io::Result<()> {
        self.frame.clear();
        framing::encode(&self.scratch, &mut self.frame);
        self.out.write_all(&self.frame)
    }

    /// Appends a scalar the way TF2 writes it.
    pub fn add_scalar(
        &mut self,
        tag: &str,
        step: i64,
        wall_time: f64,
        value: ScalarValue,
    ) -> io::Result<()> {
        let mut tensor = TensorProto {
            tensor_shape: Some(TensorShapeProto::default()),
            ..Default::default()
        };
        match value {
            ScalarValue::F32(v) => {
                tensor.dtype = DT_FLOAT;
                tensor.float_val = vec![v];
            }
            ScalarValue::F64(v) => {
                tensor.dtype = DT_DOUBLE;
                tensor.double_val = vec![v];
            }
        }
        // TF2 sends the plugin metadata once per tag; readers remember it.
        let metadata = if self.tags_with_metadata.insert(tag.to_owned()) {
            Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: SCALARS_PLUGIN.to_owned(),
                    content: Vec::new(),
                }),
                data_class: DATA_CLASS_SCALAR,
                ..Default::default()
            })
        } else {
            None
        };
        self.write_event(&Event {
            wall_time,
            step,
            what: Some(event::What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: tag.to_owned(),
                    metadata,
                    value: Some(summary_value::Value::Tensor(tensor)),
                }],
            })),
        })
    }

    /// Appends a `SessionLog` START at `step`: readers drop earlier points at or after it.
    pub fn add_session_start(&mut self, step: i64, wall_time: f64) -> io::Result<()> {
        self.write_event(&Event {
            wall_time,
            step,
            what: Some(event::What::SessionLog(SessionLog {
                status: SESSION_START,
                ..Default::default()
            })),
        })
    }

    /// Hands buffered records to the OS, so readers see them.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and fsyncs, so the records survive a crash.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}

/// Seconds since the Unix epoch, as TensorBoard's writers record wall time.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's name for file names; `localhost` if it cannot be read.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length and gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).into_owned();
    // A '/' would turn the name into a path; keep the name a single component.
    if rc != 0 || name.is_empty() || name.contains('/') {
        "localhost".to_owned()
    } else {
        name
    }
}
