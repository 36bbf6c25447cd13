//! Following one local event file: reading its new records to find the last whole one, noticing
//! when the file is replaced or gone, and summarising damage.
//!
//! Damaged records are stored as they are (the stored copy is the file's bytes, and TensorBoard
//! meets the same damage in it as in the file); what is reported is one line per file and pass
//! that found damage, with the count and the first damaged record, and one line when the
//! framing breaks, after which nothing more of the file is read.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::plan::{Cuts, Limits};
use super::state::FileState;
use crate::ship::identity::Fingerprint;
use crate::tfevents::{DamageSummary, Next, RecordReader};

/// What [`Follower::advance`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The file is (still) the one being mirrored; `boundary` may have moved.
    Same,
    /// The file is not there (now).
    Gone,
    /// Another file is at the path (shorter than what is stored, or starting with other bytes).
    Replaced,
}

/// One followed file. Invariants: `boundary >= state.stored.stored`, a record boundary; the
/// reader, when open, sits at `boundary`; `cuts` were found from the records after
/// `state.stored.stored`.
pub struct Follower {
    pub path: PathBuf,
    pub state: FileState,
    pub boundary: u64,
    pub cuts: Cuts,
    reader: Option<RecordReader>,
    /// The framing broke at this offset; nothing after it is read (reported once).
    stopped: bool,
    /// Reported that the file is gone (once until it is back).
    gone: bool,
    /// Reported that the file cannot be read (once until it can).
    unreadable: bool,
}

impl Follower {
    pub fn new(path: PathBuf, state: FileState, limits: Limits) -> Follower {
        Follower {
            path,
            boundary: state.stored.stored,
            cuts: Cuts::new(&state.stored, limits),
            state,
            reader: None,
            stopped: false,
            gone: false,
            unreadable: false,
        }
    }

    /// Starts over from the first byte (after the file was replaced).
    pub fn restart(&mut self, limits: Limits) {
        self.state = FileState {
            purge: true,
            ..FileState::default()
        };
        self.boundary = 0;
        self.cuts = Cuts::new(&self.state.stored, limits);
        self.reader = None;
        self.stopped = false;
    }

    /// Whether the file was not there when last looked at.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Whole records read but not stored.
    pub fn backlog(&self) -> u64 {
        if self.gone {
            0
        } else {
            self.boundary - self.state.stored.stored
        }
    }

    /// Reads every new whole record, moving `boundary` past it.
    pub fn advance(&mut self) -> Seen {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.vanished(),
            Err(e) => {
                self.report_unreadable(&e);
                return Seen::Same;
            }
        };
        self.unreadable = false;
        if self.gone {
            self.gone = false;
            tracing::info!(file = %self.path.display(), "event file is back");
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let same_start = self
            .state
            .fingerprint
            .map_or(Ok(true), |fp| fp.matches(&file));
        if size < self.state.stored.stored || matches!(same_start, Ok(false)) {
            return Seen::Replaced;
        }
        if self.stopped {
            return Seen::Same;
        }
        if self.reader.is_none() {
            match RecordReader::new(file, self.boundary) {
                Ok(r) => self.reader = Some(r),
                Err(e) => {
                    self.report_unreadable(&e);
                    return Seen::Same;
                }
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return Seen::Same;
        };
        let mut damaged = DamageSummary::default();
        loop {
            let offset = reader.offset();
            match reader.next_record() {
                Ok(Next::Record(r)) => {
                    let (start, end) = (r.offset, r.end);
                    self.cuts.record(start, end);
                }
                Ok(Next::Skipped(damage)) => {
                    damaged.add(damage);
                    self.cuts.record(offset, reader.offset());
                }
                Ok(Next::Pending) => break,
                Ok(Next::Stopped(damage)) => {
                    self.stopped = true;
                    tracing::warn!(file = %self.path.display(), %damage,
                        "event file framing is broken; it is mirrored up to the damage, and nothing after it");
                    break;
                }
                Err(e) => {
                    self.report_unreadable(&e);
                    self.reader = None;
                    break;
                }
            }
        }
        if let Some(reader) = &self.reader {
            self.boundary = reader.offset();
        }
        if !damaged.is_empty() {
            tracing::warn!(file = %self.path.display(), damaged = damaged.count, summary = %damaged,
                "event file has damaged records; they are mirrored as they are");
        }
        Seen::Same
    }

    /// Takes the file's fingerprint once part of it is stored, and again while it covers fewer
    /// bytes than it could, so it stops matching any other file.
    pub fn remember_start(&mut self) {
        if self.state.fingerprint.is_some_and(|fp| !fp.is_partial()) {
            return;
        }
        let Ok(file) = File::open(&self.path) else {
            return;
        };
        let still_same = self
            .state
            .fingerprint
            .map_or(Ok(true), |fp| fp.matches(&file));
        if let (Ok(true), Ok(fp)) = (still_same, Fingerprint::take(&file)) {
            self.state.fingerprint = Some(fp);
        }
    }

    fn report_unreadable(&mut self, error: &io::Error) {
        if !self.unreadable {
            self.unreadable = true;
            tracing::warn!(file = %self.path.display(), %error, "cannot read event file; will try again");
        }
    }

    fn vanished(&mut self) -> Seen {
        if !self.gone {
            self.gone = true;
            let lost = self.boundary - self.state.stored.stored;
            tracing::warn!(file = %self.path.display(), stored = self.state.stored.stored, lost,
                "event file is gone; its stored copy stays as it is");
        }
        self.reader = None;
        Seen::Gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tfevents::{EventWriter, ScalarValue};

    fn limits() -> Limits {
        Limits::new(1 << 20, 64 << 20)
    }

    #[test]
    fn follows_whole_records_and_notices_a_replaced_or_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.add_scalar("loss", 1, 1.0, ScalarValue::F32(0.5)).unwrap();
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        let mut f = Follower::new(path.clone(), FileState::default(), limits());
        assert_eq!(f.advance(), Seen::Same);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(f.boundary, size);
        // Half a record more is not a record yet.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut o| std::io::Write::write_all(&mut o, &[1, 0, 0]))
            .unwrap();
        assert_eq!(f.advance(), Seen::Same);
        assert_eq!(f.boundary, size);
        f.state.stored.stored = f.boundary;
        f.remember_start();
        assert!(f.state.fingerprint.is_some());
        // Same size, other bytes: another file.
        let mut other = std::fs::read(&path).unwrap();
        other[20] ^= 0xff;
        std::fs::write(&path, &other).unwrap();
        assert_eq!(f.advance(), Seen::Replaced);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(f.advance(), Seen::Gone);
        assert_eq!(f.backlog(), 0, "a gone file is not waited for");
    }
}
