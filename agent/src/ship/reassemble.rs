//! Reading logs back from storage: `periscope logs cat` and `periscope logs ls`.
//!
//! A log path's chunks are listed, ordered by generation and byte range, checked for gaps, and
//! decompressed in order. A generation that is a link (a rotated name of a file stored under
//! another path) is read from where the link points. Overlapping chunks (which the shipper never
//! writes, but an operator's copy might) are trimmed so no byte is repeated. This module returns
//! bytes and summaries; the CLI prints them.
//!
//! Names: the sidecar stores each part of a log's path as an object key part, which escapes
//! characters keys should not hold (`%`, `?`, `#`, non-ASCII…). `ls` prints names unescaped,
//! except for what a URL cannot carry as it is; `cat` accepts a path spelled either way.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt};

use super::key::{under, Entry, Link, LOGS_DIR};
use crate::error::{Classify, ErrorClass};

/// A failure reading logs back.
#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    #[error("no log chunks under `{0}`")]
    NotFound(String),
    #[error("no stored log is named `{name}`; stored there: {}", list_names(.known))]
    NoSuchName { name: String, known: Vec<String> },
    #[error("`{name}` names {} stored logs: {}", .known.len(), list_names(.known))]
    Ambiguous { name: String, known: Vec<String> },
    #[error("cannot list or read `{what}`: {error}")]
    Store {
        what: String,
        #[source]
        error: object_store::Error,
    },
    #[error("chunk `{0}` is not valid gzip")]
    Corrupt(String),
    #[error("link `{0}` is not a valid link")]
    BadLink(String),
    #[error("cannot write the log out: {0}")]
    Output(#[source] std::io::Error),
}

impl Classify for ReadBackError {
    fn class(&self) -> ErrorClass {
        match self {
            ReadBackError::NotFound(_) | ReadBackError::NoSuchName { .. } => ErrorClass::NotFound,
            ReadBackError::Ambiguous { .. } => ErrorClass::Usage,
            ReadBackError::Store { error, .. } => match error {
                object_store::Error::NotFound { .. } => ErrorClass::NotFound,
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => ErrorClass::Auth,
                _ => ErrorClass::Network,
            },
            ReadBackError::Corrupt(_) | ReadBackError::BadLink(_) => ErrorClass::Integrity,
            ReadBackError::Output(_) => ErrorClass::Io,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ReadBackError::NotFound(_) => {
                Some("list what is stored with `periscope logs ls <URL>/<experiment>`".into())
            }
            ReadBackError::NoSuchName { .. } | ReadBackError::Ambiguous { .. } => Some(
                "give a path as `periscope logs ls <URL>/<experiment>` prints it, after the experiment's URL"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// At most this many names are listed in an error.
const NAMES_SHOWN: usize = 10;

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut out = names[..names.len().min(NAMES_SHOWN)].join(", ");
    if names.len() > NAMES_SHOWN {
        out.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    out
}

/// How many folders up from a name that is not stored `cat` looks for logs whose path ends with
/// it (from `<experiment>/app.log` or `<experiment>/worker-0/app.log` up to the experiment).
const LEVELS_UP: usize = 3;

/// The stored log a path names when it is not a log folder itself: a path that leaves out the
/// worker or `logs/` (`<experiment>/app.log`), given in the prefix listed above it. The first
/// prefix above it that holds logs decides: the one log whose path ends with the rest, or an
/// error that says which names exist there.
async fn resolve(store: &Arc<dyn ObjectStore>, folder: &Path) -> Result<Path, ReadBackError> {
    let parts: Vec<String> = folder.parts().map(|p| p.as_ref().to_string()).collect();
    for up in 1..=LEVELS_UP.min(parts.len().saturating_sub(1)) {
        let prefix = Path::from_iter(
            parts[..parts.len() - up]
                .iter()
                .map(|p| PathPart::from(p.as_str())),
        );
        let logs = ls(store, &prefix).await?;
        if logs.is_empty() {
            continue;
        }
        let name = parts[parts.len() - up..]
            .iter()
            .map(|p| printable(p))
            .collect::<Vec<_>>()
            .join("/");
        let matching: Vec<&StoredLog> = logs
            .iter()
            .filter(|l| l.path == name || l.path.ends_with(&format!("/{name}")))
            .collect();
        return match matching.as_slice() {
            [one] => Ok(one.folder.clone()),
            [] => Err(ReadBackError::NoSuchName {
                name,
                known: logs.into_iter().map(|l| l.path).collect(),
            }),
            many => Err(ReadBackError::Ambiguous {
                name,
                known: many.iter().map(|l| l.path.clone()).collect(),
            }),
        };
    }
    Err(ReadBackError::NotFound(folder.to_string()))
}

/// Bytes missing between two chunks of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub generation: u64,
    pub start: u64,
    pub end: u64,
}

/// What `cat` found, besides the bytes it wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatReport {
    pub generations: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub gaps: Vec<Gap>,
}

/// The chunks and links of one log folder, sorted by generation and range.
async fn entries_of(
    store: &Arc<dyn ObjectStore>,
    folder: &Path,
) -> Result<Vec<(Entry, Path)>, ReadBackError> {
    let depth = folder.parts().count();
    let metas: Vec<_> = store
        .list(Some(folder))
        .try_collect()
        .await
        .map_err(store_error(folder))?;
    let mut entries: Vec<(Entry, Path)> = metas
        .into_iter()
        .filter_map(|m| {
            let parts: Vec<String> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
            if parts.len() != depth + 2 {
                return None;
            }
            Entry::parse(&parts[depth], &parts[depth + 1]).map(|e| (e, m.location))
        })
        .collect();
    entries.sort_by_key(|(e, _)| match e {
        Entry::Chunk(c) => (c.generation, 0, c.start, c.end),
        Entry::Link { generation } => (*generation, 1, 0, 0),
    });
    Ok(entries)
}

/// The spellings a log folder may be stored under, as given first. The sidecar escapes the parts
/// it adds (experiment, worker, log path) as object keys escape them, and keeps the storage URL's
/// own prefix as it is; a folder parsed from a URL is unescaped. So each part that escaping
/// changes is tried escaped, from the last such part backwards.
fn spellings(folder: &Path) -> Vec<Path> {
    let raw: Vec<String> = folder.parts().map(|p| p.as_ref().to_string()).collect();
    let escaped: Vec<String> = raw
        .iter()
        .map(|p| PathPart::from(p.as_str()).as_ref().to_string())
        .collect();
    let differing: Vec<usize> = (0..raw.len()).filter(|&i| raw[i] != escaped[i]).collect();
    let mut out = vec![folder.clone()];
    for k in (0..differing.len()).rev() {
        let parts: Vec<&str> = (0..raw.len())
            .map(|i| {
                if differing[k..].contains(&i) {
                    escaped[i].as_str()
                } else {
                    raw[i].as_str()
                }
            })
            .collect();
        if let Ok(p) = Path::parse(parts.join("/")) {
            out.push(p);
        }
    }
    out
}

/// The folder of a log as stored, and its entries.
async fn find(
    store: &Arc<dyn ObjectStore>,
    folder: &Path,
) -> Result<(Path, Vec<(Entry, Path)>), ReadBackError> {
    for spelling in spellings(folder) {
        let entries = entries_of(store, &spelling).await?;
        if !entries.is_empty() {
            return Ok((spelling, entries));
        }
    }
    Err(ReadBackError::NotFound(folder.to_string()))
}

/// The error of a store operation on `what`.
fn store_error(what: &Path) -> impl Fn(object_store::Error) -> ReadBackError + '_ {
    move |error| ReadBackError::Store {
        what: what.to_string(),
        error,
    }
}

async fn get(store: &Arc<dyn ObjectStore>, key: &Path) -> Result<bytes::Bytes, ReadBackError> {
    store
        .get(key)
        .await
        .map_err(store_error(key))?
        .bytes()
        .await
        .map_err(store_error(key))
}

/// Reads a link, and the folder (beside the link's own) where its bytes are stored.
async fn read_link(
    store: &Arc<dyn ObjectStore>,
    folder: &Path,
    key: &Path,
) -> Result<(Link, Path), ReadBackError> {
    let body = get(store, key).await?;
    let link: Link =
        serde_json::from_slice(&body).map_err(|_| ReadBackError::BadLink(key.to_string()))?;
    let own = link.name.split('/').filter(|s| !s.is_empty()).count();
    let parts: Vec<String> = folder.parts().map(|p| p.as_ref().to_string()).collect();
    if own == 0 || parts.len() <= own || parts[parts.len() - own - 1] != LOGS_DIR {
        return Err(ReadBackError::BadLink(key.to_string()));
    }
    let logs = Path::parse(parts[..parts.len() - own].join("/"))
        .map_err(|_| ReadBackError::BadLink(key.to_string()))?;
    Ok((link.clone(), under(&logs, &link.from)))
}

/// Writes every stored byte of the log at `folder` to `out`, generation after generation (only
/// generation `only`, when given). A generation that is a link is read from the generation it
/// names.
pub async fn cat(
    store: &Arc<dyn ObjectStore>,
    folder: &Path,
    only: Option<u64>,
    out: &mut (dyn std::io::Write + Send),
) -> Result<CatReport, ReadBackError> {
    let (folder, entries) = match find(store, folder).await {
        Err(ReadBackError::NotFound(_)) => find(store, &resolve(store, folder).await?).await?,
        found => found?,
    };
    let mut report = CatReport::default();
    let mut chunks: Vec<(u64, super::key::ChunkName, Path)> = Vec::new();
    for (entry, key) in entries {
        if only.is_some_and(|g| g != entry.generation()) {
            continue;
        }
        match entry {
            Entry::Chunk(c) => chunks.push((c.generation, c, key)),
            Entry::Link { generation } => {
                if chunks.iter().any(|(g, _, _)| *g == generation) {
                    continue;
                }
                let (link, target) = read_link(store, &folder, &key).await?;
                for (e, k) in entries_of(store, &target).await? {
                    if let Entry::Chunk(c) = e {
                        if c.generation == link.from_generation {
                            chunks.push((generation, c, k));
                        }
                    }
                }
            }
        }
    }
    if chunks.is_empty() && only.is_some() {
        return Err(ReadBackError::NotFound(format!(
            "{folder} generation {}",
            only.unwrap_or_default()
        )));
    }
    chunks.sort_by_key(|(g, c, _)| (*g, c.start, c.end));
    let mut current_gen = None;
    let mut next = 0u64;
    for (generation, name, key) in chunks {
        if current_gen != Some(generation) {
            current_gen = Some(generation);
            report.generations += 1;
            next = 0;
        }
        if name.end <= next {
            continue;
        }
        if name.start > next {
            report.gaps.push(Gap {
                generation,
                start: next,
                end: name.start,
            });
        }
        let body = get(store, &key).await?;
        let mut raw = Vec::with_capacity((name.end - name.start) as usize);
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .map_err(|_| ReadBackError::Corrupt(key.to_string()))?;
        if raw.len() as u64 != name.end - name.start {
            return Err(ReadBackError::Corrupt(key.to_string()));
        }
        let skip = next.saturating_sub(name.start) as usize;
        out.write_all(&raw[skip..]).map_err(ReadBackError::Output)?;
        report.chunks += 1;
        report.bytes += (raw.len() - skip) as u64;
        next = name.end;
    }
    Ok(report)
}

/// Where a rotated name's newest generation is stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotatedFrom {
    /// This path's generation that is the link.
    pub generation: u64,
    /// The path (relative to the worker's `logs/`, as `ls` prints paths) and generation that
    /// hold its bytes.
    pub path: String,
    pub from_generation: u64,
}

/// One stored log path, as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredLog {
    /// `<worker>/logs/<path>` relative to the listed prefix, spelled so that `<prefix URL>/<path>`
    /// works with `logs cat`.
    pub path: String,
    pub generations: u64,
    pub chunks: u64,
    /// Uncompressed bytes in this path's own chunks (a rotated name's bytes are counted where
    /// they are stored).
    pub bytes: u64,
    pub stored_bytes: u64,
    /// RFC 3339 time of the newest chunk or link.
    pub last_modified: String,
    /// How many generations are links (rotated names of files stored under another path).
    pub rotated_generations: u64,
    pub rotated_from: Option<RotatedFrom>,
    /// The log's folder in the store.
    #[serde(skip)]
    pub folder: Path,
}

/// One key part as `ls` prints it: unescaped, but with what a URL path cannot carry as it is
/// (`%`, `?`, `#`, spaces, controls, `\`…) escaped again, so `logs cat` reads it back.
fn printable(part: &str) -> String {
    let text = percent_encoding::percent_decode_str(part).decode_utf8_lossy();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_control() || " \"#%<>?`{}\\".contains(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A stored relative log path (raw parts, `/`-separated) as `ls` prints it.
fn printable_path(relative: &str) -> String {
    relative
        .split('/')
        .map(|p| printable(PathPart::from(p).as_ref()))
        .collect::<Vec<_>>()
        .join("/")
}

/// Lists every log stored under `prefix` (an experiment, or one worker of it).
pub async fn ls(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<Vec<StoredLog>, ReadBackError> {
    let prefix = match spellings(prefix).into_iter().last() {
        Some(p) if store_has(store, &p).await? => p,
        _ => prefix.clone(),
    };
    let depth = prefix.parts().count();
    let metas: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(store_error(&prefix))?;
    type Seen = (
        StoredLog,
        std::collections::BTreeSet<u64>,
        Option<(u64, Path, Path)>,
    );
    let mut logs: BTreeMap<String, Seen> = BTreeMap::new();
    for m in metas {
        let Some((log, entry)) = Entry::listed(&m.location, depth) else {
            continue;
        };
        if !log.iter().any(|p| p == LOGS_DIR) {
            continue;
        }
        let parts: Vec<String> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
        let key_path = log.join("/");
        let path = log
            .iter()
            .map(|p| printable(p))
            .collect::<Vec<_>>()
            .join("/");
        let e = logs.entry(key_path.clone()).or_insert_with(|| {
            (
                StoredLog {
                    path,
                    generations: 0,
                    chunks: 0,
                    bytes: 0,
                    stored_bytes: 0,
                    last_modified: String::new(),
                    rotated_generations: 0,
                    rotated_from: None,
                    folder: Path::parse(parts[..parts.len() - 2].join("/")).unwrap_or_default(),
                },
                Default::default(),
                None,
            )
        });
        e.1.insert(entry.generation());
        match entry {
            Entry::Chunk(c) => {
                e.0.chunks += 1;
                e.0.bytes += c.end - c.start;
                e.0.stored_bytes += m.size;
            }
            Entry::Link { generation } => {
                e.0.rotated_generations += 1;
                if e.2.as_ref().is_none_or(|(g, _, _)| *g < generation) {
                    let folder =
                        Path::parse(parts[..parts.len() - 2].join("/")).unwrap_or_default();
                    e.2 = Some((generation, folder, m.location.clone()));
                }
            }
        }
        let lm = m
            .last_modified
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if lm > e.0.last_modified {
            e.0.last_modified = lm;
        }
    }
    let mut out = Vec::with_capacity(logs.len());
    for (_, (mut l, gens, newest_link)) in logs {
        l.generations = gens.len() as u64;
        if let Some((generation, folder, key)) = newest_link {
            let (link, _) = read_link(store, &folder, &key).await?;
            l.rotated_from = Some(RotatedFrom {
                generation,
                path: printable_path(&link.from),
                from_generation: link.from_generation,
            });
        }
        out.push(l);
    }
    Ok(out)
}

/// Whether anything is stored under `prefix`.
async fn store_has(store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<bool, ReadBackError> {
    let first = store
        .list(Some(prefix))
        .try_next()
        .await
        .map_err(store_error(prefix))?;
    Ok(first.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_names_are_unescaped_but_safe_in_a_url() {
        assert_eq!(printable("%E6%97%A5%E6%9C%AC.log"), "日本.log");
        assert_eq!(printable("a%3Fb%23c%25d.log"), "a%3Fb%23c%25d.log");
        assert_eq!(printable("with space.log"), "with%20space.log");
        assert_eq!(printable_path("dir/日本.log"), "dir/日本.log");
    }

    #[test]
    fn a_folder_parsed_from_a_url_is_tried_escaped() {
        let parsed = Path::parse("jobs/exp/w/logs/日本.log").unwrap();
        let tried: Vec<String> = spellings(&parsed).iter().map(|p| p.to_string()).collect();
        assert_eq!(
            tried,
            vec![
                "jobs/exp/w/logs/日本.log".to_string(),
                "jobs/exp/w/logs/%E6%97%A5%E6%9C%AC.log".to_string()
            ]
        );
    }
}
