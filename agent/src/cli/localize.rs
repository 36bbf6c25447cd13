//! `periscope localize`: flags, Submarine's `GIT_SYNC_*` compatibility, and the summary printed
//! when it is done.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use periscope::error::ErrorClass;
use periscope::localize::{self, FetchContext, GitAuth, Limits, Outcome, SourceSpec, TlsOptions};
use periscope::redact::Secret;
use periscope::retry::RetryPolicy;

use super::progress::Display;
use super::size::{human, parse_size};
use super::Failure;

/// Where sources land without --dest or GIT_SYNC_ROOT, if that folder exists.
const DEFAULT_DEST: &str = "/code";

const AFTER_HELP: &str = "\
Sources (options ride in the URL fragment, which is never sent to a server):
  git+https://host/org/repo.git#ref=v1.2      git over https (also https://…/repo.git, git+http://)
  git@host:org/repo.git#ref=main              git over ssh (also git+ssh://git@host/org/repo.git)
  git://host/repo#ref=3f2a9c…                 git daemon; a full commit SHA is fetched exactly
  git+file:///srv/repos/job                   a local repository
  https://host/job.tar.gz#sha256=HEX&strip=1  an archive (tar, tar.gz/tgz, zip), unpacked while it streams
  s3://bucket/jobs/job.tar.gz                 an archive in an object store (also gs://, az://, file://)
  s3://bucket/jobs/job-42/                    every object under a prefix
  ./job  job/  /srv/job  file:///srv/job/     a local folder, copied; or a local file (an archive is unpacked)

Local paths: anything without `scheme://` (and not user@host:path) is a path, absolute or relative
to the working folder; a bare word such as `job` is a path too. A folder is a folder with or
without the trailing `/` (with it, a file there is an error). A folder is checked like an archive:
links that leave it, devices, fifos and sockets refuse it; links inside it are kept as links. A
path that does not exist says `no such folder` (exit 3). `s3:/x` and other strings that start like
a scheme but lack `//` are refused (exit 2): a local path holding a colon needs a leading `./`.

Options: ref=BRANCH|TAG|SHA  depth=N (default 1, 0 = full)  submodules=recursive|none
         sha256=HEX  strip=N  format=tar|tar.gz|zip|none  into=FOLDER (default: the repo or file name)
         include=GLOB,GLOB…  exclude=GLOB,GLOB…  (archives, folders, object prefixes and saves)

Include and exclude: globs (* ? [abc] **) matched against each file's path under DEST/<into>
(after strip=). A pattern without `/` matches a file or folder name at any depth (*.safetensors,
checkpoints); one with `/` matches from the top (model/*.bin); a trailing `/` matches folders only.
A file is kept when no include is given or one matches, and no exclude matches. Every entry is
still checked; a save's files that are loaded are still verified against its manifest. The
patterns are recorded in localized.json: other patterns fetch again. Example:
  s3://hub/bert/#include=*.safetensors,*.json&exclude=onnx/

Each source lands at DEST/<into>, staged under DEST/.periscope/ and published with one rename.
DEST/.periscope/localized.json records the exact revision. Running again with the same sources
fetches nothing; a new revision replaces the old one atomically.

With no --source, Submarine's git-sync variables are read: GIT_SYNC_REPO, GIT_SYNC_BRANCH (or
GIT_SYNC_REF), GIT_SYNC_DEPTH, GIT_SYNC_ROOT, GIT_SYNC_DEST, GIT_SYNC_USERNAME, GIT_SYNC_PASSWORD
and GIT_SSL_NO_VERIFY.

Examples:
  periscope localize --source 'git+https://github.example/org/training-job.git#ref=v1.2' --dest /code
  periscope localize --source 'https://files.example/job.tar.gz#sha256=9f86d0…&strip=1' --dest /code
  AWS_ENDPOINT_URL=http://127.0.0.1:9000 periscope localize --source s3://models/resnet/ --dest /code";

/// Fetch code into a folder: git, HTTP(S) archives, object stores.
#[derive(clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct LocalizeArgs {
    /// What to fetch (repeatable). See the forms below.
    #[arg(
        long = "source",
        env = "PERISCOPE_SOURCE",
        value_delimiter = ' ',
        value_name = "SRC"
    )]
    sources: Vec<String>,
    /// The folder sources land in; created if missing. [default: $GIT_SYNC_ROOT, or /code where
    /// it exists, as the pod's mounted volume]
    #[arg(long, env = "PERISCOPE_DEST", value_name = "DIR")]
    dest: Option<PathBuf>,
    /// Refuse a source that unpacks to more than this many bytes.
    #[arg(long, env = "PERISCOPE_MAX_BYTES", default_value = "50GiB", value_parser = parse_size)]
    max_bytes: u64,
    /// Refuse a source that unpacks to more than this many files and folders.
    #[arg(long, env = "PERISCOPE_MAX_FILES", default_value_t = 1_000_000)]
    max_files: u64,
    /// PEM file of extra CA certificates to trust (private CAs); TLS verification stays on.
    #[arg(long, env = "PERISCOPE_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// User name for git over http(s).
    #[arg(long, env = "PERISCOPE_GIT_USERNAME")]
    git_username: Option<String>,
    /// Password or token for git over http(s). Prefer --git-password-file.
    #[arg(long, env = "PERISCOPE_GIT_PASSWORD", hide_env_values = true)]
    git_password: Option<String>,
    /// File holding the git password or token (e.g. a mounted Secret); read on every run.
    #[arg(long, env = "PERISCOPE_GIT_PASSWORD_FILE", value_name = "FILE")]
    git_password_file: Option<PathBuf>,
    /// SSH private key for git over ssh.
    #[arg(long, env = "PERISCOPE_SSH_KEY_FILE", value_name = "FILE")]
    ssh_key_file: Option<PathBuf>,
    /// known_hosts file for git over ssh; unknown host keys are refused.
    #[arg(long, env = "PERISCOPE_KNOWN_HOSTS_FILE", value_name = "FILE")]
    known_hosts_file: Option<PathBuf>,
    /// Accept SSH host keys that are not in known_hosts (insecure; for first contact only).
    #[arg(long, env = "PERISCOPE_ALLOW_UNKNOWN_HOST_KEYS")]
    allow_unknown_host_keys: bool,
    /// Parallel transfers per source (object prefixes, ranged downloads).
    #[arg(long, env = "PERISCOPE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Tries per request, including the first, for transient failures (connect errors, timeouts,
    /// 429, 5xx).
    #[arg(long, env = "PERISCOPE_RETRIES", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    retries: u32,
    /// Seconds allowed to connect.
    #[arg(long, env = "PERISCOPE_CONNECT_TIMEOUT", default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds of silence mid-transfer before the connection is dropped and resumed.
    #[arg(long, env = "PERISCOPE_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// What to print when done: a line per source for people, or one JSON object per source.
    #[arg(long, env = "PERISCOPE_OUTPUT", value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Runs `periscope localize`.
pub async fn run(args: LocalizeArgs) -> Result<ExitCode, Failure> {
    let env = GitSyncEnv::from_env();
    let mut specs = args
        .sources
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| SourceSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut git = GitAuth {
        username: args.git_username.clone(),
        password: args.git_password.clone().map(Secret::new),
        password_file: args.git_password_file.clone(),
        ssh_key_file: args.ssh_key_file.clone(),
        known_hosts_file: args.known_hosts_file.clone(),
        allow_unknown_host_keys: args.allow_unknown_host_keys,
    };
    let mut insecure = false;
    if specs.is_empty() {
        let Some(spec) = env.source()? else {
            return Err(Failure::new(
                ErrorClass::Usage,
                "nothing to localize: no --source given and GIT_SYNC_REPO is not set",
                Some("add --source URL (see `periscope localize --help`)".into()),
            ));
        };
        specs.push(spec);
        git.username = git.username.or(env.username.clone());
        git.password = git.password.or(env.password.clone().map(Secret::new));
        insecure = env.ssl_no_verify;
    }
    let dest = match args.dest.clone().or(env.root.clone()) {
        Some(dest) => dest,
        None => default_dest()?,
    };
    let ctx = FetchContext {
        limits: Limits {
            max_bytes: args.max_bytes.max(1),
            max_files: args.max_files.max(1),
        },
        retry: RetryPolicy {
            attempts: args.retries,
            ..RetryPolicy::default()
        },
        tls: TlsOptions {
            ca_file: args.ca_file.clone(),
            insecure,
        },
        git,
        concurrency: usize::from(args.concurrency),
        connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
    };
    let display = Arc::new(Display::for_stderr());
    let outcomes = localize::localize(&specs, &dest, &ctx, display).await?;
    print_outcomes(&outcomes, &dest, args.output);
    Ok(ExitCode::SUCCESS)
}

/// The pod's code volume when no destination is given: `/code`, only where it already exists
/// (mounted by the pod). Creating it at the root of a laptop's filesystem is never what was meant.
fn default_dest() -> Result<PathBuf, Failure> {
    let code = PathBuf::from(DEFAULT_DEST);
    if code.is_dir() {
        return Ok(code);
    }
    Err(Failure::new(
        ErrorClass::Usage,
        "no --dest given, and /code (the pod's code volume) does not exist here",
        Some("add --dest DIR, the folder to localize into (created if missing)".into()),
    ))
}

fn print_outcomes(outcomes: &[Outcome], dest: &std::path::Path, output: Output) {
    for o in outcomes {
        let e = &o.entry;
        match output {
            Output::Json => {
                let mut value = serde_json::to_value(e).unwrap_or_default();
                if let Some(map) = value.as_object_mut() {
                    map.insert("skipped".into(), o.skipped.into());
                    map.insert(
                        "path".into(),
                        dest.join(&e.into).display().to_string().into(),
                    );
                }
                println!("{value}");
            }
            Output::Text => {
                let verb = if o.skipped { "unchanged" } else { "localized" };
                println!(
                    "{verb} {} -> {} ({} {}, {} files, {}, {:.1}s)",
                    e.url,
                    dest.join(&e.into).display(),
                    e.kind,
                    short(&e.revision.id),
                    e.files,
                    human(e.bytes),
                    e.seconds
                );
            }
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The variables Submarine sets on its git-sync code-localizer initContainer.
struct GitSyncEnv {
    repo: Option<String>,
    reference: Option<String>,
    depth: Option<String>,
    root: Option<PathBuf>,
    dest: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ssl_no_verify: bool,
}

impl GitSyncEnv {
    fn from_env() -> GitSyncEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        GitSyncEnv {
            repo: var("GIT_SYNC_REPO"),
            reference: var("GIT_SYNC_REF")
                .or_else(|| var("GIT_SYNC_REV").filter(|r| r != "HEAD"))
                .or_else(|| var("GIT_SYNC_BRANCH")),
            depth: var("GIT_SYNC_DEPTH"),
            root: var("GIT_SYNC_ROOT").map(PathBuf::from),
            dest: var("GIT_SYNC_DEST"),
            username: var("GIT_SYNC_USERNAME"),
            password: var("GIT_SYNC_PASSWORD"),
            ssl_no_verify: var("GIT_SSL_NO_VERIFY").is_some_and(|v| v == "true" || v == "1"),
        }
    }

    /// The git source the variables describe, if `GIT_SYNC_REPO` is set.
    fn source(&self) -> Result<Option<SourceSpec>, Failure> {
        let Some(repo) = &self.repo else {
            return Ok(None);
        };
        // git-sync treats any URL as a repository; so must we, even without `.git`.
        let location =
            if repo.starts_with("git+") || repo.starts_with("git://") || !repo.contains("://") {
                repo.clone()
            } else {
                format!("git+{repo}")
            };
        let mut fragment = Vec::new();
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        if let Some(r) = &self.reference {
            fragment.push(format!("ref={}", enc(r)));
        }
        if let Some(d) = &self.depth {
            fragment.push(format!("depth={}", enc(d)));
        }
        if let Some(d) = &self.dest {
            fragment.push(format!("into={}", enc(d)));
        }
        let raw = if fragment.is_empty() {
            location
        } else {
            format!("{location}#{}", fragment.join("&"))
        };
        Ok(Some(SourceSpec::parse(&raw)?))
    }
}
