//! Include and exclude patterns: which files of a source are localized (`#include=`,
//! `#exclude=`), for archives, folders, object prefixes and saves of model artifacts alike.
//!
//! Patterns are globs (`*`, `?`, `[abc]`, `**`) matched against a file's path as it lands under
//! `DEST/<into>`, `/`-separated, case-sensitive:
//! * a pattern without `/` matches the name of the file or of any folder it is in, at any depth
//!   (`*.safetensors`, `checkpoints`);
//! * a pattern with `/` matches the path from the source's top, or the path of a folder the file
//!   is in (`model/*.bin`, `runs/**`); a leading `/` only anchors, as it always does here;
//! * a trailing `/` matches folders only (`logs/`).
//!
//! A file is kept when no include is given or one matches, and no exclude matches: exclude wins.
//! Filters choose what is written, never what is checked: every entry of a source is still held
//! to the safety rules. This module only decides; it never touches the disk.

use glob::{MatchOptions, Pattern};

use crate::localized::Patterns;

/// `*` and `?` never match `/`; dot files are matched like any other.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// One pattern. Invariant: `pattern` was compiled from `text` with any leading and trailing `/`
/// removed, and `anchored` is true when what is left holds a `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    text: String,
    pattern: Pattern,
    anchored: bool,
    folders_only: bool,
}

impl Glob {
    fn parse(text: &str) -> Result<Glob, String> {
        let folders_only = text.ends_with('/');
        let body = text.trim_start_matches('/').trim_end_matches('/');
        if body.is_empty() {
            return Err(format!("pattern `{text}` is empty"));
        }
        let pattern =
            Pattern::new(body).map_err(|e| format!("pattern `{text}` is not a glob: {e}"))?;
        Ok(Glob {
            text: text.to_string(),
            pattern,
            anchored: body.contains('/'),
            folders_only,
        })
    }

    /// Whether the pattern matches the file at `rel` or a folder it is in.
    fn matches(&self, rel: &str) -> bool {
        let mut end = 0;
        let parts: Vec<&str> = rel.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            end += part.len() + usize::from(i > 0);
            let is_file = i + 1 == parts.len();
            if self.folders_only && is_file {
                continue;
            }
            let candidate = if self.anchored { &rel[..end] } else { part };
            if self.pattern.matches_with(candidate, MATCH) {
                return true;
            }
        }
        false
    }
}

/// The include and exclude patterns of one source. The default keeps everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
}

impl Filter {
    /// Adds the comma-separated patterns of one `include=` option.
    pub fn add_include(&mut self, list: &str) -> Result<(), String> {
        Self::add(&mut self.include, list)
    }

    /// Adds the comma-separated patterns of one `exclude=` option.
    pub fn add_exclude(&mut self, list: &str) -> Result<(), String> {
        Self::add(&mut self.exclude, list)
    }

    fn add(to: &mut Vec<Glob>, list: &str) -> Result<(), String> {
        for text in list.split(',').map(str::trim) {
            to.push(Glob::parse(text)?);
        }
        Ok(())
    }

    /// True when some pattern was given, so that not every file is kept.
    pub fn is_active(&self) -> bool {
        !self.include.is_empty() || !self.exclude.is_empty()
    }

    /// Whether the file at `rel` (`/`-separated, relative to the source's top) is localized.
    pub fn keeps(&self, rel: &str) -> bool {
        let rel = rel.trim_start_matches('/');
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(rel)))
            && !self.exclude.iter().any(|g| g.matches(rel))
    }

    /// The patterns as given, as the localize record keeps them.
    pub fn patterns(&self) -> Patterns {
        Patterns {
            include: self.includes(),
            exclude: self.excludes(),
        }
    }

    /// The include patterns as given.
    pub fn includes(&self) -> Vec<String> {
        self.include.iter().map(|g| g.text.clone()).collect()
    }

    /// The exclude patterns as given.
    pub fn excludes(&self) -> Vec<String> {
        self.exclude.iter().map(|g| g.text.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &str, exclude: &str) -> Filter {
        let mut f = Filter::default();
        if !include.is_empty() {
            f.add_include(include).unwrap();
        }
        if !exclude.is_empty() {
            f.add_exclude(exclude).unwrap();
        }
        f
    }

    #[test]
    fn names_match_at_any_depth_and_paths_from_the_top() {
        let f = filter("*.safetensors,*.json", "");
        assert!(f.keeps("model.safetensors"));
        assert!(f.keeps("sub/dir/model.safetensors"));
        assert!(f.keeps("config.json"));
        assert!(!f.keeps("pytorch_model.bin"));
        assert!(!f.keeps("sub/tf_model.h5"));
        let f = filter("model/*.bin", "");
        assert!(f.keeps("model/a.bin"));
        assert!(!f.keeps("model/deeper/a.bin"), "`*` does not cross `/`");
        assert!(!f.keeps("other/model/a.bin"), "anchored at the top");
        let f = filter("/model/**/*.bin", "");
        assert!(f.keeps("model/deeper/a.bin"));
    }

    #[test]
    fn folders_match_what_they_hold_and_exclude_wins() {
        let f = filter("", "checkpoints,logs/");
        assert!(!f.keeps("checkpoints/step-1/w.bin"));
        assert!(!f.keeps("a/checkpoints"), "a file named like the pattern");
        assert!(!f.keeps("a/logs/x.txt"));
        assert!(f.keeps("a/logs"), "`logs/` matches folders only");
        assert!(f.keeps("train.py"));
        let f = filter("*.bin", "big*");
        assert!(f.keeps("small.bin"));
        assert!(!f.keeps("big.bin"));
        assert!(Filter::default().keeps("anything/at/all"));
        assert!(!Filter::default().is_active());
    }

    #[test]
    fn bad_patterns_are_refused() {
        let mut f = Filter::default();
        assert!(f.add_include("[abc").is_err());
        assert!(f.add_include("a,,b").is_err());
        assert!(f.add_exclude("/").is_err());
        assert_eq!(filter("*.a, *.b", "").includes(), ["*.a", "*.b"]);
    }
}
