//! Where log chunks live in storage, and how a key says which bytes it holds.
//!
//! `<prefix>/<experiment>/<worker>/logs/<path>/g<generation>/<start>-<end>.gz`
//!
//! `<path>` is the log file's path relative to its glob's base folder. A generation is one file
//! that lived at that path (rotation starts a new one). `<start>-<end>` is the byte range of that
//! file the chunk holds, zero-padded so keys sort in file order. Because a key is derived from the
//! byte range alone, uploading the same range again after a crash writes the same object with the
//! same bytes: it can overwrite itself, never add a duplicate.

use object_store::path::{Path, PathPart};

/// The folder under a worker's prefix that holds log chunks.
pub const LOGS_DIR: &str = "logs";

/// One chunk's place in its log. Invariant: `start < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkName {
    pub generation: u64,
    pub start: u64,
    pub end: u64,
}

impl ChunkName {
    /// The two path segments this chunk adds under its log's folder.
    fn segments(&self) -> [String; 2] {
        [
            format!("g{:06}", self.generation),
            format!("{:020}-{:020}.gz", self.start, self.end),
        ]
    }

    /// Parses the last two segments of a chunk key.
    pub fn parse(generation_segment: &str, file_segment: &str) -> Option<ChunkName> {
        let generation = generation_segment.strip_prefix('g')?.parse().ok()?;
        let range = file_segment.strip_suffix(".gz")?;
        let (s, e) = range.split_once('-')?;
        let (start, end): (u64, u64) = (s.parse().ok()?, e.parse().ok()?);
        (start < end).then_some(ChunkName {
            generation,
            start,
            end,
        })
    }
}

/// The folder of one log path: `<worker_prefix>/logs/<relative path>`.
pub fn log_folder(worker_prefix: &Path, relative: &str) -> Path {
    let mut parts: Vec<PathPart<'static>> = worker_prefix
        .parts()
        .map(|p| p.as_ref().to_string().into())
        .collect();
    parts.push(LOGS_DIR.into());
    parts.extend(
        relative
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| PathPart::from(s.to_string())),
    );
    Path::from_iter(parts)
}

/// The key of one chunk of one log path.
pub fn chunk_key(log_folder: &Path, chunk: ChunkName) -> Path {
    let mut key = log_folder.clone();
    for segment in chunk.segments() {
        key = key.clone().join(segment);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_in_file_order() {
        let folder = log_folder(&Path::from("bucket-prefix/exp-1/worker-0"), "train/out.log");
        assert_eq!(
            folder.as_ref(),
            "bucket-prefix/exp-1/worker-0/logs/train/out.log"
        );
        let a = chunk_key(
            &folder,
            ChunkName {
                generation: 1,
                start: 0,
                end: 10,
            },
        );
        let b = chunk_key(
            &folder,
            ChunkName {
                generation: 1,
                start: 10,
                end: 200,
            },
        );
        assert!(a.as_ref() < b.as_ref());
        let parts: Vec<String> = b.parts().map(|p| p.as_ref().to_string()).collect();
        let n = parts.len();
        assert_eq!(
            ChunkName::parse(&parts[n - 2], &parts[n - 1]),
            Some(ChunkName {
                generation: 1,
                start: 10,
                end: 200
            })
        );
        assert_eq!(
            ChunkName::parse("g1", "00-00.gz"),
            None,
            "empty ranges are not chunks"
        );
    }
}
