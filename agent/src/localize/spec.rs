//! The source URL grammar: the one parser for everything `--source` accepts.
//!
//! A source is a URL whose fragment carries Periscope's options, like pip's `#egg=`: the fragment is
//! never sent to a server, so a presigned URL stays byte-for-byte intact. For example
//! `https://host/job.tar.gz?X-Amz-Signature=…#sha256=…&strip=1&into=training-job`.
//!
//! This module only parses and validates; it never touches the network or the disk. It must stay
//! the single place that decides which kind of source a string is.

use std::fmt;
use std::path::{Component, Path};

use url::Url;

use super::filter::Filter;
use crate::error::{Classify, ErrorClass};
use crate::redact::redact_url;

/// A parsed `--source`. Invariant: `options` were validated against `kind` (e.g. `ref` only on git
/// sources), and `into` is a safe relative folder name.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// What to fetch, with the fragment removed.
    pub kind: SourceKind,
    /// Options from the fragment.
    pub options: SourceOptions,
    /// The folder under DEST where this source lands.
    pub into: String,
    /// The URL as people may see it: credentials and query values removed, fragment kept.
    pub display: String,
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the raw URL: it may carry a token.
        f.debug_struct("SourceSpec")
            .field("display", &self.display)
            .field("into", &self.into)
            .finish()
    }
}

/// Which fetcher handles a source.
#[derive(Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A git repository. `url` is what libgit2 is given: `https://…`, `http://…`, `git://…`,
    /// `ssh://…`, `file://…`, or scp-like `user@host:path`.
    Git { url: String },
    /// A single file over HTTP(S), usually an archive. May carry credentials or a presigned query.
    Http { url: Url },
    /// An object store location: `s3://`, `gs://`, `az://` or `file://`. A path ending in `/` is a
    /// prefix (every object under it is copied); otherwise one object.
    Object { url: Url },
}

impl SourceKind {
    /// A short name for logs and the localize record.
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Git { .. } => "git",
            SourceKind::Http { .. } => "http",
            SourceKind::Object { .. } => "object",
        }
    }
}

/// How an archive is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    Zip,
    /// Store the downloaded file as is, under its own name.
    None,
}

impl ArchiveFormat {
    /// The format a file name's extension names, if any.
    pub fn from_name(name: &str) -> Option<ArchiveFormat> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(ArchiveFormat::TarGz)
        } else if lower.ends_with(".tar") {
            Some(ArchiveFormat::Tar)
        } else if lower.ends_with(".zip") {
            Some(ArchiveFormat::Zip)
        } else {
            None
        }
    }

    /// The file name without its archive extension (`job.tar.gz` → `job`).
    pub fn strip_extension(name: &str) -> &str {
        let lower = name.to_ascii_lowercase();
        for ext in [".tar.gz", ".tgz", ".tar", ".zip", ".git"] {
            if lower.ends_with(ext) && name.len() > ext.len() {
                return &name[..name.len() - ext.len()];
            }
        }
        name
    }

    fn parse(value: &str) -> Option<ArchiveFormat> {
        match value.to_ascii_lowercase().as_str() {
            "tar" => Some(ArchiveFormat::Tar),
            "tar.gz" | "tgz" | "gz" => Some(ArchiveFormat::TarGz),
            "zip" => Some(ArchiveFormat::Zip),
            "none" | "file" => Some(ArchiveFormat::None),
            _ => None,
        }
    }
}

/// Whether git submodules are checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Submodules {
    /// All submodules, and theirs, recursively (the default).
    #[default]
    Recursive,
    /// None.
    None,
}

/// Options from a source's fragment. Invariant: `sha256`, when set, is 32 bytes; `reference`
/// neither starts with `-` nor contains control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceOptions {
    /// git: branch, tag or full commit SHA; `None` means the remote's HEAD.
    pub reference: Option<String>,
    /// git: history depth; `None` means the default (1). `0` means full history.
    pub depth: Option<u32>,
    /// archives: expected sha256 of the downloaded bytes.
    pub sha256: Option<[u8; 32]>,
    /// archives: leading path components to remove from every entry.
    pub strip: usize,
    /// archives: how to unpack; `None` means decide from the name, then from magic bytes.
    pub format: Option<ArchiveFormat>,
    /// git: whether submodules are checked out.
    pub submodules: Submodules,
    /// archives, folders, object prefixes and saves: which files are localized.
    pub filter: Filter,
}

/// A source string that cannot be used, and why. Always a usage error: the command line is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("source `{source_shown}`: {reason}")]
    Invalid {
        source_shown: String,
        reason: String,
    },
}

impl Classify for SpecError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Usage
    }

    fn hint(&self) -> Option<String> {
        Some(
            "sources look like git+https://host/org/repo.git#ref=v1, https://host/job.tar.gz#sha256=HEX, \
             s3://bucket/prefix/ or a local path (./job, /srv/job); see `periscope localize --help`"
                .into(),
        )
    }
}

const KNOWN_OPTIONS: &str = "ref, depth, into, sha256, strip, format, submodules, include, exclude";

impl SourceSpec {
    /// Parses one `--source` value.
    pub fn parse(raw: &str) -> Result<SourceSpec, SpecError> {
        let raw = raw.trim();
        let display = redact_url(raw);
        let fail = |reason: String| SpecError::Invalid {
            source_shown: display.clone(),
            reason,
        };
        if raw.is_empty() {
            return Err(fail("the source is empty".into()));
        }
        let (location, fragment) = match raw.split_once('#') {
            Some((l, f)) => (l, Some(f)),
            None => (raw, None),
        };
        let (kind, local) = classify_location(location).map_err(&fail)?;
        // A local path is shown as the absolute path it was resolved to, so the record names it
        // whatever the working folder of a later run.
        let display = match (local, fragment) {
            (Some(path), Some(f)) => format!("{path}#{f}"),
            (Some(path), None) => path,
            (None, _) => display.clone(),
        };
        let (options, into) = parse_fragment(fragment.unwrap_or(""), &kind).map_err(&fail)?;
        let into = match into {
            Some(into) => into,
            None => default_into(&kind).map_err(&fail)?,
        };
        validate_into(&into).map_err(&fail)?;
        Ok(SourceSpec {
            kind,
            options,
            into,
            display,
        })
    }
}

/// Which kind of source `location` is; for a local path, also the absolute path it names.
fn classify_location(location: &str) -> Result<(SourceKind, Option<String>), String> {
    if !location.contains("://") {
        // scp-like git (`git@host:org/repo.git`): no scheme, a user@host, then a colon.
        if let Some((userhost, path)) = location.split_once(':') {
            if userhost.contains('@') && !userhost.contains('/') && !path.is_empty() {
                let kind = SourceKind::Git {
                    url: location.to_string(),
                };
                return Ok((kind, None));
            }
        }
        if let Some(scheme) = scheme_like(location) {
            return Err(format!(
                "`{scheme}:` looks like a URL scheme, but URLs need `://` (s3://bucket/prefix/, \
                 https://host/job.tar.gz); a local path that holds a colon needs a leading `./`"
            ));
        }
        return local_path(location).map(|(kind, shown)| (kind, Some(shown)));
    }
    let url = Url::parse(location).map_err(|e| format!("not a valid URL ({e})"))?;
    if url.scheme() == "file"
        && url
            .host_str()
            .is_some_and(|h| !h.is_empty() && h != "localhost")
    {
        return Err(
            "a file:// URL takes an absolute path (file:///srv/job/); a relative path needs no \
             scheme (./job)"
                .into(),
        );
    }
    Ok((classify_url(location, url)?, None))
}

/// The scheme a string without `://` starts with, if it looks like one (`s3:/bucket`).
fn scheme_like(location: &str) -> Option<&str> {
    let (head, _) = location.split_once(':')?;
    let mut chars = head.chars();
    let scheme = chars.next()?.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme.then_some(head)
}

/// A local path, absolute or relative to the working folder: a folder (with or without a
/// trailing `/`) or a file, which the object fetcher tells apart on disk.
fn local_path(location: &str) -> Result<(SourceKind, String), String> {
    let absolute = std::path::absolute(location)
        .map_err(|e| format!("cannot resolve `{location}` from the working folder: {e}"))?;
    // A trailing `/` says "a folder"; it is kept so that a file there is an error.
    let url = if location.ends_with('/') {
        Url::from_directory_path(&absolute)
    } else {
        Url::from_file_path(&absolute)
    }
    .map_err(|()| format!("`{location}` is not a usable path"))?;
    let mut shown = absolute.to_string_lossy().into_owned();
    if location.ends_with('/') && !shown.ends_with('/') {
        shown.push('/');
    }
    Ok((SourceKind::Object { url }, shown))
}

/// Which kind of source a URL with a scheme is.
fn classify_url(location: &str, url: Url) -> Result<SourceKind, String> {
    let scheme = url.scheme().to_ascii_lowercase();
    match scheme.as_str() {
        "git" | "ssh" => Ok(SourceKind::Git {
            url: location.to_string(),
        }),
        s if s.starts_with("git+") => {
            let inner = &location["git+".len()..];
            let inner_scheme = &s["git+".len()..];
            if !["https", "http", "ssh", "file", "git"].contains(&inner_scheme) {
                return Err(format!(
                    "`git+{inner_scheme}` is not supported; use git+https, git+http, git+ssh, git+file or git://"
                ));
            }
            Ok(SourceKind::Git {
                url: inner.to_string(),
            })
        }
        "http" | "https" => {
            if url.path().trim_end_matches('/').to_ascii_lowercase().ends_with(".git") {
                Ok(SourceKind::Git {
                    url: location.to_string(),
                })
            } else {
                Ok(SourceKind::Http { url })
            }
        }
        "s3" | "gs" | "az" | "azure" | "abfs" | "abfss" | "file" => {
            if scheme != "file" && url.host_str().is_none_or(str::is_empty) {
                return Err(format!("`{scheme}://` needs a bucket or container name"));
            }
            Ok(SourceKind::Object { url })
        }
        other => Err(format!(
            "unsupported scheme `{other}`; use https://, http://, git+https://, git+ssh://, git://, \
             git+file://, s3://, gs://, az:// or file://"
        )),
    }
}

fn parse_fragment(
    fragment: &str,
    kind: &SourceKind,
) -> Result<(SourceOptions, Option<String>), String> {
    let mut options = SourceOptions::default();
    let mut into = None;
    let is_git = matches!(kind, SourceKind::Git { .. });
    for pair in fragment.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            format!("option `{pair}` has no value; options look like key=value ({KNOWN_OPTIONS})")
        })?;
        let value = percent_decode(value);
        let git_only = |k: &str| -> Result<(), String> {
            if is_git {
                Ok(())
            } else {
                Err(format!("option `{k}` applies to git sources only"))
            }
        };
        let archive_only = |k: &str| -> Result<(), String> {
            if is_git {
                Err(format!(
                    "option `{k}` applies to archives, folders and object stores, not git"
                ))
            } else {
                Ok(())
            }
        };
        match key {
            "ref" => {
                git_only(key)?;
                validate_ref(&value)?;
                options.reference = Some(value);
            }
            "depth" => {
                git_only(key)?;
                options.depth = Some(value.parse().map_err(|_| {
                    format!("depth `{value}` is not a whole number (0 = full history)")
                })?);
            }
            "submodules" => {
                git_only(key)?;
                options.submodules = match value.as_str() {
                    "recursive" => Submodules::Recursive,
                    "none" => Submodules::None,
                    _ => {
                        return Err(format!(
                            "submodules `{value}` must be `recursive` or `none`"
                        ))
                    }
                };
            }
            "sha256" => {
                archive_only(key)?;
                let bytes = hex::decode(&value)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| format!("sha256 `{value}` is not 64 hexadecimal digits"))?;
                options.sha256 = Some(bytes);
            }
            "strip" => {
                archive_only(key)?;
                options.strip = value
                    .parse()
                    .map_err(|_| format!("strip `{value}` is not a whole number"))?;
            }
            "format" => {
                archive_only(key)?;
                options.format = Some(ArchiveFormat::parse(&value).ok_or_else(|| {
                    format!("format `{value}` is not one of tar, tar.gz, tgz, zip, none")
                })?);
            }
            "include" => {
                archive_only(key)?;
                options.filter.add_include(&value)?;
            }
            "exclude" => {
                archive_only(key)?;
                options.filter.add_exclude(&value)?;
            }
            "into" => into = Some(value),
            other => {
                return Err(format!(
                    "unknown option `{other}`; known options: {KNOWN_OPTIONS}"
                ))
            }
        }
    }
    Ok((options, into))
}

/// Refuses refs that a command line or a ref parser could misread: a leading `-` looks like a flag,
/// and control characters have no place in a ref name.
fn validate_ref(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("ref is empty".into());
    }
    if value.starts_with('-') {
        return Err(format!("ref `{value}` starts with `-`, which is refused"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err("ref contains control characters, which are refused".into());
    }
    Ok(())
}

fn default_into(kind: &SourceKind) -> Result<String, String> {
    let path = match kind {
        SourceKind::Git { url } => url
            .rsplit_once(':')
            .filter(|_| !url.contains("://"))
            .map(|(_, p)| p.to_string())
            .unwrap_or_else(|| {
                Url::parse(url)
                    .map(|u| u.path().to_string())
                    .unwrap_or_default()
            }),
        SourceKind::Http { url } | SourceKind::Object { url } => url.path().to_string(),
    };
    let last = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .map(percent_decode)
        .unwrap_or_default();
    let name = ArchiveFormat::strip_extension(&last).to_string();
    if name.is_empty() || name == "." || name == ".." {
        return Err("cannot derive a folder name from the URL; add #into=NAME".into());
    }
    Ok(name)
}

fn validate_into(into: &str) -> Result<(), String> {
    let path = Path::new(into);
    let ok = !into.is_empty()
        && !into.starts_with('.')
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "into `{into}` must be a relative folder name that does not start with `.` or climb with `..`"
        ))
    }
}

fn percent_decode(value: &str) -> String {
    url::form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_url(s: &SourceSpec) -> &str {
        match &s.kind {
            SourceKind::Git { url } => url,
            _ => panic!("not git: {s:?}"),
        }
    }

    #[test]
    fn git_forms() {
        let s =
            SourceSpec::parse("git+https://h.test/org/training-job.git#ref=v1.2&depth=3").unwrap();
        assert_eq!(git_url(&s), "https://h.test/org/training-job.git");
        assert_eq!(s.into, "training-job");
        assert_eq!(s.options.reference.as_deref(), Some("v1.2"));
        assert_eq!(s.options.depth, Some(3));
        assert_eq!(
            git_url(&SourceSpec::parse("https://h.test/x.git").unwrap()),
            "https://h.test/x.git"
        );
        assert_eq!(
            git_url(&SourceSpec::parse("git://h.test/x").unwrap()),
            "git://h.test/x"
        );
        let s = SourceSpec::parse("git@h.test:org/repo.git#submodules=none").unwrap();
        assert_eq!(git_url(&s), "git@h.test:org/repo.git");
        assert_eq!(
            (s.into.as_str(), s.options.submodules),
            ("repo", Submodules::None)
        );
        let s = SourceSpec::parse("git+file:///srv/repos/job#into=code").unwrap();
        assert_eq!(
            (git_url(&s), s.into.as_str()),
            ("file:///srv/repos/job", "code")
        );
        assert_eq!(
            git_url(&SourceSpec::parse("git+ssh://git@h.test/o/r.git").unwrap()),
            "ssh://git@h.test/o/r.git"
        );
    }

    #[test]
    fn archive_and_object_forms() {
        let sha = "ab".repeat(32);
        let s = SourceSpec::parse(&format!(
            "https://h.test/a/job.tar.gz?sig=x#sha256={sha}&strip=1"
        ))
        .unwrap();
        assert!(matches!(s.kind, SourceKind::Http { .. }));
        assert_eq!((s.into.as_str(), s.options.strip), ("job", 1));
        assert_eq!(s.options.sha256, Some([0xab; 32]));
        assert!(!s.display.contains("sig=x"));
        let s = SourceSpec::parse("s3://bucket/models/v1/").unwrap();
        assert!(matches!(s.kind, SourceKind::Object { .. }));
        assert_eq!(s.into, "v1");
        match SourceSpec::parse("/srv/jobs/training-job/").unwrap() {
            SourceSpec {
                kind: SourceKind::Object { url },
                into,
                ..
            } => {
                assert_eq!(
                    url.as_str(),
                    "file:///srv/jobs/training-job/",
                    "a folder stays a prefix"
                );
                assert_eq!(into, "training-job");
            }
            other => panic!("not an object source: {other:?}"),
        }
        let s = SourceSpec::parse("/srv/job.zip#format=zip").unwrap();
        assert!(matches!(s.kind, SourceKind::Object { .. }));
        assert_eq!(
            (s.into.as_str(), s.options.format),
            ("job", Some(ArchiveFormat::Zip))
        );
    }

    #[test]
    fn local_paths_with_or_without_slash_relative_or_not() {
        let cwd = std::env::current_dir().unwrap();
        for (raw, url_end, into) in [
            ("./myjob", "/myjob", "myjob"),
            ("myjob/", "/myjob/", "myjob"),
            ("myjob", "/myjob", "myjob"),
            ("sub/job.tar.gz#strip=1", "/sub/job.tar.gz", "job"),
        ] {
            let s = SourceSpec::parse(raw).unwrap();
            let SourceKind::Object { url } = &s.kind else {
                panic!("{raw} is not a local source");
            };
            let path = url.to_file_path().unwrap();
            assert!(path.starts_with(&cwd), "{raw}: {path:?}");
            assert!(url.as_str().ends_with(url_end), "{raw}: {url}");
            assert_eq!(s.into, into, "{raw}");
            assert!(
                s.display.starts_with(cwd.to_str().unwrap()),
                "{}",
                s.display
            );
        }
        let s = SourceSpec::parse("/srv/jobs/job").unwrap();
        assert_eq!(
            (s.display.as_str(), s.into.as_str()),
            ("/srv/jobs/job", "job")
        );
        let s = SourceSpec::parse("/srv/jobs/job/#into=code").unwrap();
        assert_eq!(s.display, "/srv/jobs/job/#into=code");
    }

    #[test]
    fn include_and_exclude_accumulate() {
        let s = SourceSpec::parse(
            "s3://b/models/m/#include=*.safetensors,*.json&include=tokenizer*&exclude=big*",
        )
        .unwrap();
        assert_eq!(
            s.options.filter.includes(),
            ["*.safetensors", "*.json", "tokenizer*"]
        );
        assert_eq!(s.options.filter.excludes(), ["big*"]);
        assert!(SourceSpec::parse("git+https://h.test/r.git#include=*.py").is_err());
        assert!(SourceSpec::parse("https://h.test/a.tar#include=[x").is_err());
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "git+https://h.test/r.git#ref=-upload-pack=evil",
            "git+https://h.test/r.git#ref=a%0Ab",
            "git+https://h.test/r.git#sha256=00",
            "https://h.test/a.tar#ref=main",
            "https://h.test/a.tar#sha256=zz",
            "https://h.test/a.tar#into=../escape",
            "https://h.test/a.tar#into=/abs",
            "https://h.test/a.tar#bogus=1",
            "https://h.test/a.tar#strip",
            "ftp://h.test/a.tar",
            "s3:/bucket/x",
            "https:h.test/a.tar",
            "file://myjob/",
            "..",
            "s3:///nobucket",
            "https://h.test/",
        ] {
            assert!(SourceSpec::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn errors_never_show_credentials() {
        let err = SourceSpec::parse("https://u:sekrit@h.test/a.tar#bogus=1").unwrap_err();
        assert!(!err.to_string().contains("sekrit"), "{err}");
    }
}
