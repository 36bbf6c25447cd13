//! `periscope localize`: flags, Submarine's `GIT_SYNC_*` compatibility, and the summary printed
//! when it is done.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use periscope::error::ErrorClass;
use periscope::lifecycle::Stop;
use periscope::localize::sync::hook::Hooks;
use periscope::localize::sync::SyncSettings;
use periscope::localize::{self, FetchContext, GitAuth, Limits, Outcome, SourceSpec, TlsOptions};
use periscope::redact::Secret;
use periscope::retry::RetryPolicy;

use super::progress::{summary_line, Display};
use super::size::parse_size;
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

Continuous sync (git-sync's main mode, for pods that live for days): with --period DURATION
(10s, 1m, 1h30m) localize keeps running and checks the sources again after each period. Each new
revision is fetched into DEST/.periscope/revisions/ and DEST/<into> becomes a relative symlink to
it, swapped in one rename: a reader sees the old tree or the new one, never a mix, and one that
holds the old tree open keeps reading it. The previous revision stays until the next new one
replaces it. After each new revision --exechook-command runs (in the revision's folder, no
arguments, GITSYNC_HASH set to the revision; killed after 30s) and --webhook-url is called (with
a Gitsync-Hash header); each is retried per --retries. --http-bind serves /healthz: 200 while the
last check succeeded, 503 before the first and after a failed one (the revision in place stays).
The first check must succeed; SIGTERM ends the sync at once, publishing nothing half-made (exit 0).

Proxies: git over http(s), archive downloads and object stores follow one rule, curl's and git's:
http_proxy for http:// URLs, https_proxy for https:// URLs (CONNECT), all_proxy for either when
its own is unset; no_proxy lists hosts reached directly (example.com also covers its subdomains;
IP addresses, CIDR blocks, `*`). Each name may be lowercase or uppercase, the lowercase one wins,
an empty value is unset, and nothing is exempt by default (not even localhost). A proxy is an
http:// URL (host:port means http://host:port); a user and password in it go to the proxy only.
git over ssh and git:// never use a proxy.

With no --source, git-sync's variables are read, v4 names first, then v3's (GIT_SYNC_REPO and the
rest, what Submarine sets): GITSYNC_REPO, GITSYNC_REF (v3 GIT_SYNC_BRANCH, GIT_SYNC_REV),
GITSYNC_DEPTH, GITSYNC_SUBMODULES, GITSYNC_ROOT, GITSYNC_LINK (v3 GIT_SYNC_DEST), GITSYNC_USERNAME,
GITSYNC_PASSWORD(_FILE), GITSYNC_SSH (key /etc/git-secret/ssh and /etc/git-secret/known_hosts
unless GITSYNC_SSH_KEY_FILE and GITSYNC_SSH_KNOWN_HOSTS_FILE say otherwise;
GITSYNC_SSH_KNOWN_HOSTS=false accepts unknown host keys), GIT_SSL_NO_VERIFY, and for continuous
sync GITSYNC_PERIOD (v3 GIT_SYNC_WAIT, seconds; GITSYNC_ONE_TIME=true fetches once),
GITSYNC_EXECHOOK_COMMAND, GITSYNC_WEBHOOK_URL, GITSYNC_WEBHOOK_METHOD and GITSYNC_HTTP_BIND.
Flags win over them.

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
    /// Tries per request, including the first, for transient failures (connect errors, a host
    /// that does not resolve yet, timeouts, 429, 5xx).
    #[arg(long, env = "PERISCOPE_RETRIES", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    retries: u32,
    /// Seconds allowed to connect.
    #[arg(long, env = "PERISCOPE_CONNECT_TIMEOUT", default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds of silence mid-transfer before the connection is dropped and resumed.
    #[arg(long, env = "PERISCOPE_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// Keep running: check the sources again every DURATION (10s, 1m, 1h30m) and publish each
    /// new revision as a symlink swap. Without it, localize fetches once and exits.
    #[arg(long, env = "PERISCOPE_PERIOD", value_name = "DURATION", value_parser = parse_duration)]
    period: Option<Duration>,
    /// With --period: a program run after each new revision (no arguments, in the revision's
    /// folder, GITSYNC_HASH and PERISCOPE_REVISION set to it).
    #[arg(long, env = "PERISCOPE_EXECHOOK_COMMAND", value_name = "PROGRAM")]
    exechook_command: Option<PathBuf>,
    /// With --period: a URL called after each new revision, with a Gitsync-Hash header.
    #[arg(long, env = "PERISCOPE_WEBHOOK_URL", value_name = "URL")]
    webhook_url: Option<String>,
    /// The webhook's HTTP method.
    #[arg(long, env = "PERISCOPE_WEBHOOK_METHOD", value_name = "METHOD")]
    webhook_method: Option<String>,
    /// With --period: serve /healthz at HOST:PORT (:PORT for every interface).
    #[arg(long, env = "PERISCOPE_HTTP_BIND", value_name = "ADDR")]
    http_bind: Option<String>,
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
    let git_sync_mode = specs.is_empty();
    if specs.is_empty() {
        let Some(spec) = env.source()? else {
            return Err(Failure::new(
                ErrorClass::Usage,
                "nothing to localize: no --source given and neither GITSYNC_REPO nor GIT_SYNC_REPO is set",
                Some("add --source URL (see `periscope localize --help`)".into()),
            ));
        };
        specs.push(spec);
        git.username = git.username.or(env.username.clone());
        git.password = git.password.or(env.password.clone().map(Secret::new));
        git.password_file = git.password_file.or(env.password_file.clone());
        git.ssh_key_file = git.ssh_key_file.or(env.ssh_key_file.clone());
        git.known_hosts_file = git.known_hosts_file.or(env.known_hosts_file.clone());
        if !env.verify_host_keys {
            tracing::warn!("GITSYNC_SSH_KNOWN_HOSTS=false: SSH host keys are not checked");
            git.allow_unknown_host_keys = true;
        }
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
    let display = Arc::new(Display::without_summary());
    let sync = sync_settings(&args, &env, git_sync_mode)?;
    let Some(sync) = sync else {
        let outcomes = localize::localize(&specs, &dest, &ctx, display).await?;
        print_outcomes(&outcomes, &dest, args.output);
        return Ok(ExitCode::SUCCESS);
    };
    let (requests, stop) = Stop::channel();
    requests.on_signals().map_err(|e| {
        Failure::new(
            ErrorClass::Internal,
            format!("cannot watch for signals: {e}"),
            None,
        )
    })?;
    let output = args.output;
    localize::sync::sync(
        &specs,
        &dest,
        &ctx,
        &sync,
        display,
        stop,
        |addr| tracing::info!("serving /healthz on {addr}"),
        |outcomes, first| {
            // Every source after the first pass; then only new revisions.
            let new: Vec<Outcome> = outcomes
                .iter()
                .filter(|o| first || !o.skipped)
                .cloned()
                .collect();
            print_outcomes(&new, &dest, output);
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The continuous sync the flags (or, in git-sync's place, its variables) ask for, if any.
fn sync_settings(
    args: &LocalizeArgs,
    env: &GitSyncEnv,
    git_sync_mode: bool,
) -> Result<Option<SyncSettings>, Failure> {
    let from_env = |v: &Option<String>| v.clone().filter(|_| git_sync_mode);
    let period = match args.period {
        Some(p) => Some(p),
        None if git_sync_mode && !env.one_time => env
            .period
            .as_deref()
            .map(|p| parse_duration(p).map_err(|e| usage(format!("GITSYNC_PERIOD: {e}"))))
            .transpose()?,
        None => None,
    };
    let command = args
        .exechook_command
        .clone()
        .or(from_env(&env.exechook_command).map(PathBuf::from));
    let webhook = args.webhook_url.clone().or(from_env(&env.webhook_url));
    let bind = args.http_bind.clone().or(from_env(&env.http_bind));
    let Some(period) = period else {
        if command.is_some() || webhook.is_some() || bind.is_some() {
            return Err(Failure::new(
                ErrorClass::Usage,
                "--exechook-command, --webhook-url and --http-bind need --period",
                Some("add --period DURATION (e.g. --period 1m) to keep the sources in sync".into()),
            ));
        }
        return Ok(None);
    };
    let webhook = webhook
        .map(|u| url::Url::parse(&u).map_err(|e| usage(format!("--webhook-url `{u}`: {e}"))))
        .transpose()?;
    let health = bind.map(|b| parse_bind(&b)).transpose()?;
    Ok(Some(SyncSettings {
        period,
        hooks: Hooks {
            command,
            webhook,
            webhook_method: args
                .webhook_method
                .clone()
                .or(from_env(&env.webhook_method))
                .unwrap_or_else(|| "POST".into())
                .to_ascii_uppercase(),
        },
        health,
    }))
}

fn usage(message: String) -> Failure {
    Failure::new(ErrorClass::Usage, message, None)
}

/// `HOST:PORT`, or git-sync's `:PORT` for every interface.
fn parse_bind(text: &str) -> Result<SocketAddr, Failure> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    full.parse().map_err(|_| {
        usage(format!(
            "--http-bind `{text}` is not HOST:PORT (e.g. 127.0.0.1:8080 or :8080)"
        ))
    })
}

/// A duration as git-sync writes one: `10s`, `1m30s`, `500ms`, `1h`; a bare number is seconds
/// (git-sync v3's GIT_SYNC_WAIT).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return positive(Duration::try_from_secs_f64(seconds).ok(), text);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => {
                return Err(format!(
                    "`{text}` is not a duration such as 10s, 1m or 1h30m"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration such as 10s, 1m or 1h30m"))?;
        total += Duration::try_from_secs_f64(value * scale)
            .map_err(|_| format!("`{text}` is out of range"))?;
        rest = next;
    }
    positive(Some(total), text)
}

fn positive(d: Option<Duration>, text: &str) -> Result<Duration, String> {
    d.filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{text}` is not a positive duration"))
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
                println!("{}", summary_line(e, o.skipped, Some(&dest.join(&e.into))));
            }
        }
    }
}

/// Where git-sync (and so Submarine's SSH mode) expects the mounted SSH Secret.
const GIT_SECRET_DIR: &str = "/etc/git-secret";

/// git-sync's variables, v4 (`GITSYNC_*`) and v3 (`GIT_SYNC_*`, what Submarine's code-localizer
/// initContainer sets), resolved as git-sync v4 resolves them. Invariant: each field holds the
/// first non-empty variable of its names, in git-sync's order.
struct GitSyncEnv {
    repo: Option<String>,
    reference: Option<String>,
    depth: Option<String>,
    submodules: Option<String>,
    root: Option<PathBuf>,
    link: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ssh_key_file: Option<PathBuf>,
    known_hosts_file: Option<PathBuf>,
    /// `GITSYNC_SSH_KNOWN_HOSTS` (default true): false accepts any host key, as git-sync does.
    verify_host_keys: bool,
    ssl_no_verify: bool,
    /// Continuous sync: `GITSYNC_PERIOD`, or v3's `GIT_SYNC_WAIT` (seconds).
    period: Option<String>,
    /// `GITSYNC_ONE_TIME`: fetch once even with a period.
    one_time: bool,
    exechook_command: Option<String>,
    webhook_url: Option<String>,
    webhook_method: Option<String>,
    http_bind: Option<String>,
}

impl GitSyncEnv {
    fn from_env() -> GitSyncEnv {
        GitSyncEnv::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(get: impl Fn(&str) -> Option<String>) -> GitSyncEnv {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|k| get(k).filter(|v| !v.trim().is_empty()))
        };
        let flag = |names: &[&str], default: bool| {
            var(names).map_or(default, |v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
            })
        };
        let not_head = |r: String| (r != "HEAD").then_some(r);
        // v4's --ref; else v3's --rev (unless HEAD) or --branch, as v4 maps them.
        let reference = var(&["GITSYNC_REF", "GIT_SYNC_REF"])
            .and_then(not_head)
            .or_else(|| var(&["GIT_SYNC_REV"]).and_then(not_head))
            .or_else(|| var(&["GIT_SYNC_BRANCH"]));
        let ssh = flag(&["GITSYNC_SSH", "GIT_SYNC_SSH"], false);
        let verify_host_keys = flag(
            &[
                "GITSYNC_SSH_KNOWN_HOSTS",
                "GIT_SYNC_KNOWN_HOSTS",
                "GIT_KNOWN_HOSTS",
            ],
            true,
        );
        // With --ssh, git-sync reads the key and known_hosts from the mounted Secret by default.
        let secret = |name: &str| ssh.then(|| format!("{GIT_SECRET_DIR}/{name}"));
        GitSyncEnv {
            repo: var(&["GITSYNC_REPO", "GIT_SYNC_REPO"]),
            reference,
            depth: var(&["GITSYNC_DEPTH", "GIT_SYNC_DEPTH"]),
            submodules: var(&["GITSYNC_SUBMODULES", "GIT_SYNC_SUBMODULES"]),
            root: var(&["GITSYNC_ROOT", "GIT_SYNC_ROOT"]).map(PathBuf::from),
            link: var(&["GITSYNC_LINK", "GIT_SYNC_LINK", "GIT_SYNC_DEST"]),
            username: var(&["GITSYNC_USERNAME", "GIT_SYNC_USERNAME"]),
            password: var(&["GITSYNC_PASSWORD", "GIT_SYNC_PASSWORD"]),
            password_file: var(&["GITSYNC_PASSWORD_FILE", "GIT_SYNC_PASSWORD_FILE"])
                .map(PathBuf::from),
            ssh_key_file: var(&[
                "GITSYNC_SSH_KEY_FILE",
                "GIT_SYNC_SSH_KEY_FILE",
                "GIT_SSH_KEY_FILE",
            ])
            .or_else(|| secret("ssh"))
            .map(PathBuf::from),
            known_hosts_file: var(&[
                "GITSYNC_SSH_KNOWN_HOSTS_FILE",
                "GIT_SYNC_SSH_KNOWN_HOSTS_FILE",
                "GIT_SSH_KNOWN_HOSTS_FILE",
            ])
            .or_else(|| secret("known_hosts"))
            .filter(|_| verify_host_keys)
            .map(PathBuf::from),
            verify_host_keys,
            ssl_no_verify: flag(&["GIT_SSL_NO_VERIFY"], false),
            period: var(&["GITSYNC_PERIOD", "GIT_SYNC_PERIOD", "GIT_SYNC_WAIT"]),
            one_time: flag(&["GITSYNC_ONE_TIME", "GIT_SYNC_ONE_TIME"], false),
            exechook_command: var(&["GITSYNC_EXECHOOK_COMMAND", "GIT_SYNC_EXECHOOK_COMMAND"]),
            webhook_url: var(&["GITSYNC_WEBHOOK_URL", "GIT_SYNC_WEBHOOK_URL"]),
            webhook_method: var(&["GITSYNC_WEBHOOK_METHOD", "GIT_SYNC_WEBHOOK_METHOD"]),
            http_bind: var(&["GITSYNC_HTTP_BIND", "GIT_SYNC_HTTP_BIND"]),
        }
    }

    /// The folder under the root the checkout lands in: `--link` (absolute, or relative to
    /// `--root`), else the last path element of the repository URL, as git-sync names it.
    fn link_folder(&self, repo: &str) -> Result<String, Failure> {
        let link = self.link.clone().unwrap_or_else(|| {
            repo.trim_matches('/')
                .rsplit(['/', ':'])
                .next()
                .unwrap_or_default()
                .to_string()
        });
        let link = PathBuf::from(link);
        let relative = match (&self.root, link.is_absolute()) {
            (_, false) => link,
            (Some(root), true) => match link.strip_prefix(root) {
                Ok(rest) => rest.to_path_buf(),
                Err(_) => {
                    return Err(Failure::new(
                        ErrorClass::Usage,
                        format!(
                            "GITSYNC_LINK `{}` is not under GITSYNC_ROOT `{}`",
                            link.display(),
                            root.display()
                        ),
                        Some("give GITSYNC_LINK relative to GITSYNC_ROOT".into()),
                    ))
                }
            },
            (None, true) => link,
        };
        Ok(relative.display().to_string())
    }

    /// The git source the variables describe, if `GITSYNC_REPO` (or `GIT_SYNC_REPO`) is set.
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
        match self.submodules.as_deref().map(str::trim) {
            None | Some("recursive") => {}
            Some("off") => fragment.push("submodules=none".into()),
            Some("shallow") => {
                tracing::warn!(
                    "GITSYNC_SUBMODULES=shallow: nested submodules are checked out too (recursive)"
                );
            }
            Some(other) => {
                return Err(Failure::new(
                    ErrorClass::Usage,
                    format!("GITSYNC_SUBMODULES `{other}` is not recursive, shallow or off"),
                    None,
                ))
            }
        }
        fragment.push(format!("into={}", enc(&self.link_folder(repo)?)));
        let raw = format!("{location}#{}", fragment.join("&"));
        Ok(Some(SourceSpec::parse(&raw)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> GitSyncEnv {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GitSyncEnv::from_vars(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn durations_read_as_git_sync_writes_them() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        for bad in ["", "0s", "ten", "5d", "-1"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_bind(":8080").unwrap(),
            "0.0.0.0:8080".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_bind("8080").is_err());
    }

    #[test]
    fn v4_names_win_over_v3_and_v3_refs_map_as_git_sync_maps_them() {
        let e = env(&[
            ("GITSYNC_REPO", "https://h.test/org/repo.git"),
            ("GIT_SYNC_REPO", "https://h.test/org/old.git"),
            ("GIT_SYNC_BRANCH", "dev"),
            ("GIT_SYNC_REV", "HEAD"),
        ]);
        assert_eq!(e.repo.as_deref(), Some("https://h.test/org/repo.git"));
        assert_eq!(e.reference.as_deref(), Some("dev"));
        assert_eq!(env(&[("GITSYNC_REF", "HEAD")]).reference, None);
        assert_eq!(
            env(&[("GIT_SYNC_REV", "v1"), ("GIT_SYNC_BRANCH", "dev")])
                .reference
                .as_deref(),
            Some("v1")
        );
    }

    #[test]
    fn the_link_is_relative_to_the_root_or_the_leaf_of_the_repo() {
        let e = env(&[("GITSYNC_ROOT", "/code")]);
        assert_eq!(
            e.link_folder("https://h.test/org/repo.git/").unwrap(),
            "repo.git"
        );
        assert_eq!(e.link_folder("git@h.test:job").unwrap(), "job");
        let e = env(&[("GITSYNC_ROOT", "/code"), ("GITSYNC_LINK", "/code/current")]);
        assert_eq!(e.link_folder("x").unwrap(), "current");
        let e = env(&[("GITSYNC_ROOT", "/code"), ("GITSYNC_LINK", "/elsewhere")]);
        assert!(e.link_folder("x").is_err());
        let e = env(&[("GITSYNC_ROOT", "/code"), ("GIT_SYNC_DEST", "job")]);
        assert_eq!(e.link_folder("x").unwrap(), "job");
    }

    #[test]
    fn ssh_mode_reads_the_mounted_secret_unless_told_otherwise() {
        let e = env(&[("GIT_SYNC_SSH", "true")]);
        assert_eq!(e.ssh_key_file, Some(PathBuf::from("/etc/git-secret/ssh")));
        assert_eq!(
            e.known_hosts_file,
            Some(PathBuf::from("/etc/git-secret/known_hosts"))
        );
        let e = env(&[
            ("GITSYNC_SSH", "true"),
            ("GITSYNC_SSH_KEY_FILE", "/k"),
            ("GITSYNC_SSH_KNOWN_HOSTS", "false"),
        ]);
        assert_eq!(e.ssh_key_file, Some(PathBuf::from("/k")));
        assert_eq!(e.known_hosts_file, None);
        assert!(!e.verify_host_keys);
        let e = env(&[]);
        assert_eq!((e.ssh_key_file, e.known_hosts_file), (None, None));
        assert!(e.verify_host_keys);
    }
}
