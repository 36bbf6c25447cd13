//! `periscope localize`: fetch sources into a destination folder, safely and atomically.
//!
//! Data flows one way: **source → stage → publish**.
//!
//! * [`spec`] parses a `--source` string into a [`SourceSpec`] (the one URL grammar).
//! * A fetcher ([`git`], [`http`], [`object`]) writes the source into a fresh staging folder under
//!   `DEST/.periscope/staging/` and says which [`Revision`] it fetched. Archives go through
//!   [`unpack`], which refuses hostile entries and enforces the size and file-count limits.
//! * [`publish`] moves the staged tree to `DEST/<into>` in one rename (or, for [`sync`], swaps a
//!   symlink there to it), and [`record`] notes it in `DEST/.periscope/localized.json`.
//! * [`sync`] keeps a long-lived pod's sources current: it localizes again every period,
//!   publishes each new revision, runs hooks, and serves `/healthz`.
//!
//! Before fetching, the orchestrator asks the fetcher for a cheap fingerprint of the source (a
//! commit SHA from `ls-remote`, an ETag) and skips a source whose fingerprint matches what is
//! already published: a restarted initContainer does nothing. Any failure removes the staging
//! folder and leaves `DEST/<into>` as it was.

pub mod filter;
pub mod git;
pub mod http;
pub mod object;
pub mod progress;
pub mod publish;
pub mod spec;
pub mod sync;
pub mod unpack;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Classify, ErrorClass};
use crate::redact::Secret;
use crate::retry::RetryPolicy;

pub use crate::localized::{Entry, Patterns, Record, Revision, RevisionKind, META_DIR};
pub use filter::Filter;
pub use progress::{ProgressEvent, ProgressSink, SourceProgress};
pub use spec::{ArchiveFormat, SourceKind, SourceOptions, SourceSpec, Submodules};

/// Size limits for what a source may unpack to. Invariant: both are at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of regular files written.
    pub max_bytes: u64,
    /// Number of entries (files, folders, links) written.
    pub max_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 50 << 30,
            max_files: 1_000_000,
        }
    }
}

/// Git credentials and host-key policy. Secrets are wrapped so they never print.
#[derive(Debug, Clone, Default)]
pub struct GitAuth {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Read at fetch time (so a rotated Secret file is picked up by a restart); wins over
    /// `password`.
    pub password_file: Option<PathBuf>,
    pub ssh_key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    /// Accept SSH host keys that are not in `known_hosts`. Off by default.
    pub allow_unknown_host_keys: bool,
}

/// TLS settings shared by every HTTPS client (archives, git over https, object stores).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Extra CA certificates (PEM) to trust, for private CAs.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (only `GIT_SSL_NO_VERIFY`, for Submarine compatibility).
    pub insecure: bool,
}

/// Everything a fetcher may need besides the source itself.
#[derive(Debug, Clone)]
pub struct FetchContext {
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub tls: TlsOptions,
    pub git: GitAuth,
    /// Parallel transfers per source (object prefixes, ranged downloads).
    pub concurrency: usize,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Longest silence allowed mid-transfer before the connection counts as dead and is retried.
    pub idle_timeout: Duration,
}

impl Default for FetchContext {
    fn default() -> Self {
        FetchContext {
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            tls: TlsOptions::default(),
            git: GitAuth::default(),
            concurrency: 8,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What a fetcher produced in its staging folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub revision: Revision,
    /// The cheap identity [`probe`](git::probe) will return for the same content, if any.
    pub fingerprint: Option<String>,
    /// Bytes of regular files written.
    pub bytes: u64,
    /// Entries written.
    pub files: u64,
}

/// A failure of one source's fetch, from whichever module failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Git(#[from] git::GitError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Object(#[from] object::ObjectError),
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    /// The include and exclude patterns left no file of the source.
    #[error(
        "the include/exclude patterns leave nothing of the source (include: {}; exclude: {})",
        show_patterns(include),
        show_patterns(exclude)
    )]
    NothingKept {
        include: Vec<String>,
        exclude: Vec<String>,
    },
}

fn show_patterns(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "none".into()
    } else {
        patterns.join(", ")
    }
}

impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        match self {
            SourceError::Git(e) => e.class(),
            SourceError::Http(e) => e.class(),
            SourceError::Object(e) => e.class(),
            SourceError::Unpack(e) => e.class(),
            SourceError::Publish(e) => e.class(),
            SourceError::Checksum { .. } => ErrorClass::Integrity,
            SourceError::NothingKept { .. } => ErrorClass::Usage,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            SourceError::Git(e) => e.hint(),
            SourceError::Http(e) => e.hint(),
            SourceError::Object(e) => e.hint(),
            SourceError::Unpack(e) => e.hint(),
            SourceError::Publish(e) => e.hint(),
            SourceError::Checksum { .. } => Some(
                "the downloaded bytes are not the ones the #sha256= option names; check the URL and the checksum"
                    .into(),
            ),
            SourceError::NothingKept { .. } => Some(
                "a pattern without `/` matches file and folder names at any depth (*.safetensors); \
                 one with `/` matches paths from the source's top (model/*.bin)"
                    .into(),
            ),
        }
    }
}

/// A failure of `periscope localize` as a whole.
#[derive(Debug, thiserror::Error)]
pub enum LocalizeError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("two sources land in the same folder `{0}`")]
    DuplicateInto(String),
    #[error("{shown}: {error}")]
    Source {
        /// The redacted URL of the source that failed.
        shown: String,
        #[source]
        error: SourceError,
    },
    #[error(transparent)]
    Local(#[from] publish::PublishError),
}

impl Classify for LocalizeError {
    fn class(&self) -> ErrorClass {
        match self {
            LocalizeError::Spec(e) => e.class(),
            LocalizeError::DuplicateInto(_) => ErrorClass::Usage,
            LocalizeError::Source { error, .. } => error.class(),
            LocalizeError::Local(e) => e.class(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            LocalizeError::Spec(e) => e.hint(),
            LocalizeError::DuplicateInto(_) => {
                Some("give one of them a different #into=NAME".into())
            }
            LocalizeError::Source { error, .. } => error.hint(),
            LocalizeError::Local(e) => e.hint(),
        }
    }
}

/// What happened to one source.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The record entry now in force for this source.
    pub entry: Entry,
    /// True when the source was already published at this revision and nothing was fetched.
    pub skipped: bool,
}

/// How a fetched tree is made `DEST/<into>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Publish {
    /// The tree itself, renamed into place (an initContainer's one localize).
    #[default]
    InPlace,
    /// A symlink to the tree kept under `DEST/.periscope/revisions/`, swapped for each new
    /// revision, the previous one kept until the next swap ([`sync`], as git-sync does).
    Link,
}

/// Localizes every source into `dest`, one after another, and returns what each one became.
/// Stops at the first failure; sources published before it stay published and recorded.
pub async fn localize(
    specs: &[SourceSpec],
    dest: &Path,
    ctx: &FetchContext,
    sink: Arc<dyn ProgressSink>,
) -> Result<Vec<Outcome>, LocalizeError> {
    localize_as(specs, dest, ctx, sink, Publish::InPlace).await
}

/// [`localize`], publishing each new tree as `publish` says.
pub async fn localize_as(
    specs: &[SourceSpec],
    dest: &Path,
    ctx: &FetchContext,
    sink: Arc<dyn ProgressSink>,
    publish: Publish,
) -> Result<Vec<Outcome>, LocalizeError> {
    let mut seen = std::collections::HashSet::new();
    for spec in specs {
        if !seen.insert(spec.into.as_str()) {
            return Err(LocalizeError::DuplicateInto(spec.into.clone()));
        }
    }
    let meta = dest.join(META_DIR);
    let staging_root = meta.join("staging");
    std::fs::create_dir_all(&meta).map_err(|error| publish::PublishError::Io {
        action: "cannot create",
        path: meta.clone(),
        error,
    })?;
    let _lock = publish::DestLock::acquire(&meta)?;
    publish::clean_stale_staging(&staging_root)?;
    let mut record = Record::load(dest);
    let mut outcomes = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let progress = SourceProgress::new(sink.clone(), index);
        progress.send(ProgressEvent::Started {
            label: spec.display.clone(),
        });
        let outcome = localize_one(
            spec,
            dest,
            &staging_root,
            &mut record,
            ctx,
            &progress,
            publish,
        )
        .await
        .map_err(|error| LocalizeError::Source {
            shown: spec.display.clone(),
            error,
        })?;
        progress.send(ProgressEvent::Done {
            entry: Box::new(outcome.entry.clone()),
            skipped: outcome.skipped,
        });
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

async fn localize_one(
    spec: &SourceSpec,
    dest: &Path,
    staging_root: &Path,
    record: &mut Record,
    ctx: &FetchContext,
    progress: &SourceProgress,
    mode: Publish,
) -> Result<Outcome, SourceError> {
    let target = dest.join(&spec.into);
    if let Some(entry) = already_published(spec, dest, record, ctx).await? {
        // The caller says it to people (the summary line); this is for debugging.
        tracing::debug!(source = %spec.display, revision = %entry.revision.id, "already localized at this revision");
        return Ok(Outcome {
            entry,
            skipped: true,
        });
    }
    let started = Instant::now();
    let stage = publish::new_stage(staging_root, &spec.into)?;
    let fetched = fetch(spec, &stage, ctx, progress).await;
    let fetched = fetched.and_then(
        |f| match spec.options.filter.is_active() && is_empty(&stage) {
            true => Err(SourceError::NothingKept {
                include: spec.options.filter.includes(),
                exclude: spec.options.filter.excludes(),
            }),
            false => Ok(f),
        },
    );
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            publish::remove_tree(&stage)?;
            return Err(e);
        }
    };
    let published = match mode {
        Publish::InPlace => publish::publish(&stage, dest, &spec.into),
        Publish::Link => publish::publish_link(&stage, dest, &spec.into, &fetched.revision.id),
    };
    if let Err(e) = published {
        publish::remove_tree(&stage)?;
        return Err(e.into());
    }
    let entry = Entry {
        into: spec.into.clone(),
        url: spec.display.clone(),
        kind: spec.kind.name().to_string(),
        revision: fetched.revision,
        fingerprint: fetched.fingerprint,
        patterns: spec.options.filter.patterns(),
        bytes: fetched.bytes,
        files: fetched.files,
        seconds: started.elapsed().as_secs_f64(),
        localized_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    record.upsert(entry.clone());
    record
        .save(dest)
        .map_err(|error| publish::PublishError::Io {
            action: "cannot write",
            path: Record::path(dest),
            error,
        })?;
    tracing::debug!(source = %spec.display, into = %target.display(), revision = %entry.revision.id,
        bytes = entry.bytes, files = entry.files, "localized");
    Ok(Outcome {
        entry,
        skipped: false,
    })
}

/// The recorded entry, when `DEST/<into>` already holds this source at its current revision.
async fn already_published(
    spec: &SourceSpec,
    dest: &Path,
    record: &Record,
    ctx: &FetchContext,
) -> Result<Option<Entry>, SourceError> {
    let Some(entry) = record.get(&spec.into) else {
        return Ok(None);
    };
    let same_patterns = entry.patterns == spec.options.filter.patterns();
    if entry.url != spec.display || !same_patterns || !dest.join(&spec.into).is_dir() {
        return Ok(None);
    }
    // Content named by checksum: no need to ask the server anything.
    if let Some(sha) = spec.options.sha256 {
        let same =
            entry.revision.kind == RevisionKind::Sha256 && entry.revision.id == hex::encode(sha);
        return Ok(same.then(|| entry.clone()));
    }
    let Some(recorded) = &entry.fingerprint else {
        return Ok(None);
    };
    let current = match &spec.kind {
        SourceKind::Git { url } => git::probe(url, &spec.options, ctx).await?,
        SourceKind::Http { url } => http::probe(url, &spec.options, ctx).await?,
        SourceKind::Object { url } => object::probe(url, &spec.options, dest, ctx).await?,
    };
    Ok((current.as_deref() == Some(recorded.as_str())).then(|| entry.clone()))
}

/// True when a staging folder holds nothing (or cannot be read, which publishing would report).
fn is_empty(stage: &Path) -> bool {
    std::fs::read_dir(stage).is_ok_and(|mut entries| entries.next().is_none())
}

async fn fetch(
    spec: &SourceSpec,
    stage: &Path,
    ctx: &FetchContext,
    progress: &SourceProgress,
) -> Result<Fetched, SourceError> {
    match &spec.kind {
        SourceKind::Git { url } => git::fetch(url, &spec.options, stage, ctx, progress).await,
        SourceKind::Http { url } => http::fetch(url, &spec.options, stage, ctx, progress).await,
        SourceKind::Object { url } => object::fetch(url, &spec.options, stage, ctx, progress).await,
    }
}
