//! The identity of a set of objects, cheap to recompute without downloading anything.
//!
//! A restarted initContainer lists the prefix again (or heads the one object) and compares this
//! digest with the one recorded; equal digests mean nothing changed and nothing is fetched. The
//! digest covers every key with its ETag, or its size and modification time where a store offers
//! no ETag, in key order, so listing order never matters.

use object_store::ObjectMeta;
use sha2::{Digest, Sha256};

/// Hex sha256 over the sorted `(key, ETag or size+mtime)` pairs of `objects`.
pub fn fingerprint<'a>(objects: impl IntoIterator<Item = &'a ObjectMeta>) -> String {
    let mut lines: Vec<String> = objects
        .into_iter()
        .map(|m| {
            let version = match &m.e_tag {
                Some(tag) => format!("etag:{tag}"),
                None => format!(
                    "size:{}:mtime:{}",
                    m.size,
                    m.last_modified.timestamp_millis()
                ),
            };
            format!("{}\0{version}\n", m.location)
        })
        .collect();
    lines.sort();
    let mut hasher = Sha256::new();
    for line in &lines {
        hasher.update(line.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;

    fn meta(key: &str, etag: Option<&str>, size: u64) -> ObjectMeta {
        ObjectMeta {
            location: Path::from(key),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size,
            e_tag: etag.map(str::to_string),
            version: None,
        }
    }

    #[test]
    fn order_free_and_sensitive_to_changes() {
        let a = meta("p/a", Some("\"1\""), 1);
        let b = meta("p/b", None, 2);
        assert_eq!(fingerprint([&a, &b]), fingerprint([&b, &a]));
        let b2 = meta("p/b", None, 3);
        assert_ne!(fingerprint([&a, &b]), fingerprint([&a, &b2]));
        let a2 = meta("p/a", Some("\"2\""), 1);
        assert_ne!(fingerprint([&a, &b]), fingerprint([&a2, &b]));
    }
}
