//! Which files the `--logs` globs match, and the path each is stored under.
//!
//! A glob's base is the folder before its first wildcard (`/var/log/job/**/*.log` → `/var/log/job`);
//! a matched file is stored under its path relative to that base, so two workers' layouts look the
//! same in storage whatever their mount points are.

use std::path::{Component, Path, PathBuf};

/// One `--logs` pattern. Invariant: `base` is a prefix of every path the pattern matches.
#[derive(Debug, Clone)]
pub struct LogGlob {
    pub pattern: String,
    pub base: PathBuf,
}

/// A bad `--logs` pattern.
#[derive(Debug, thiserror::Error)]
#[error("log pattern `{pattern}`: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: String,
}

impl LogGlob {
    /// Parses a pattern; it must be absolute or is taken relative to the current folder.
    pub fn new(pattern: &str) -> Result<LogGlob, GlobError> {
        glob::Pattern::new(pattern).map_err(|e| GlobError {
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })?;
        let mut base = PathBuf::new();
        let path = Path::new(pattern);
        let components: Vec<Component> = path.components().collect();
        for (i, c) in components.iter().enumerate() {
            let text = c.as_os_str().to_string_lossy();
            let wild = text.contains(['*', '?', '[']);
            if wild {
                break;
            }
            if i == components.len() - 1 {
                // A plain file name: its folder is the base.
                break;
            }
            base.push(c.as_os_str());
        }
        if base.as_os_str().is_empty() {
            base.push(".");
        }
        Ok(LogGlob {
            pattern: pattern.to_string(),
            base,
        })
    }

    /// The regular files the pattern matches now, with their stored relative paths.
    pub fn matches(&self) -> Vec<(PathBuf, String)> {
        let Ok(paths) = glob::glob(&self.pattern) else {
            return Vec::new();
        };
        paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .filter_map(|p| {
                let rel = p.strip_prefix(&self.base).ok()?;
                let rel = rel.to_string_lossy().replace('\\', "/");
                (!rel.is_empty()).then_some((p, rel))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_the_folder_before_the_first_wildcard() {
        assert_eq!(
            LogGlob::new("/var/log/job/**/*.log").unwrap().base,
            Path::new("/var/log/job")
        );
        assert_eq!(
            LogGlob::new("/logs/stdout.log").unwrap().base,
            Path::new("/logs")
        );
        assert_eq!(LogGlob::new("*.log").unwrap().base, Path::new("."));
        assert!(LogGlob::new("/x/[").is_err());
    }

    #[test]
    fn matches_files_with_relative_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/x.log"), "1").unwrap();
        std::fs::write(dir.path().join("a/y.txt"), "2").unwrap();
        let g = LogGlob::new(&format!("{}/**/*.log", dir.path().display())).unwrap();
        let m: Vec<String> = g.matches().into_iter().map(|(_, r)| r).collect();
        assert_eq!(m, vec!["a/b/x.log".to_string()]);
    }
}
