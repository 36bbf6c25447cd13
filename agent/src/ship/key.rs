//! Where log chunks live in storage, and how a key says which bytes it holds.
//!
//! `<prefix>/<experiment>/<worker>/logs/<path>/g<generation>/<start>-<end>.gz`
//! `<prefix>/<experiment>/<worker>/logs/<path>/g<generation>/link.json`
//!
//! `<path>` is the log file's path relative to its glob's base folder. A generation is one file
//! that lived at that path (rotation starts a new one). `<start>-<end>` is the byte range of that
//! file the chunk holds, zero-padded so keys sort in file order. Because a key is derived from the
//! byte range alone, uploading the same range again after a crash writes the same object with the
//! same bytes: it can overwrite itself, never add a duplicate.
//!
//! A file's bytes are stored once, under the path and generation where it was first seen. When the
//! same file (renamed by rotation), a copy of it (`copytruncate`) or its gzip (`compress`) shows up
//! at another matched path, that path's generation is a `link.json` ([`Link`]) naming where the
//! bytes are, instead of chunks.

use object_store::path::Path;

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

/// The object that makes a generation of one path another name of a stored generation.
pub const LINK_FILE: &str = "link.json";

/// What a generation folder holds: one chunk, or the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Chunk(ChunkName),
    Link { generation: u64 },
}

impl Entry {
    /// Parses the last two segments of a key under a log's folder.
    pub fn parse(generation_segment: &str, file_segment: &str) -> Option<Entry> {
        if file_segment == LINK_FILE {
            let generation = generation_segment.strip_prefix('g')?.parse().ok()?;
            return Some(Entry::Link { generation });
        }
        ChunkName::parse(generation_segment, file_segment).map(Entry::Chunk)
    }

    /// The entry a listed object names, with the parts of its key between the first `depth`
    /// (the listed prefix) and the entry's own two: the log's folder relative to the prefix.
    /// `None` for an object that is not a chunk or a link.
    pub fn listed(location: &Path, depth: usize) -> Option<(Vec<String>, Entry)> {
        let parts: Vec<String> = location.parts().map(|p| p.as_ref().to_string()).collect();
        let rel = parts.get(depth..).filter(|r| r.len() >= 3)?;
        let entry = Entry::parse(&rel[rel.len() - 2], &rel[rel.len() - 1])?;
        Some((rel[..rel.len() - 2].to_vec(), entry))
    }

    pub fn generation(&self) -> u64 {
        match self {
            Entry::Chunk(c) => c.generation,
            Entry::Link { generation } => *generation,
        }
    }
}

/// The body of a link: generation `generation` of path `name` holds the bytes of generation
/// `from_generation` of path `from` (both paths relative to the same worker's `logs/` folder).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    pub name: String,
    pub generation: u64,
    pub from: String,
    pub from_generation: u64,
}

/// The key of a generation's link.
pub fn link_key(log_folder: &Path, generation: u64) -> Path {
    log_folder
        .clone()
        .join(format!("g{generation:06}"))
        .join(LINK_FILE)
}

/// The folder of one log path: `<worker_prefix>/logs/<relative path>`.
pub fn log_folder(worker_prefix: &Path, relative: &str) -> Path {
    under(&worker_prefix.clone().join(LOGS_DIR), relative)
}

/// `folder/<relative path>`, each `/`-separated part of `relative` one segment, encoded as
/// object keys encode it (the folder's own segments are kept as they are).
pub fn under(folder: &Path, relative: &str) -> Path {
    relative
        .split('/')
        .filter(|s| !s.is_empty())
        .fold(folder.clone(), |path, part| path.join(part))
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
        let link = link_key(&folder, 3);
        let parts: Vec<String> = link.parts().map(|p| p.as_ref().to_string()).collect();
        let n = parts.len();
        assert_eq!(
            Entry::parse(&parts[n - 2], &parts[n - 1]),
            Some(Entry::Link { generation: 3 })
        );
    }
}
