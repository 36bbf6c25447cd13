//! Git servers and repositories for tests: bare repositories built with the real `git` command,
//! served by `git daemon`, by `git http-backend` behind a small HTTP(S) bridge, and by a real
//! `sshd`. Every server listens on 127.0.0.1 on a free port and stops when its handle is dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::free_port;
use super::tls::TestCa;

/// Runs `git` with a fixed identity and no user or system configuration; panics on failure and
/// returns stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.test")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.test")
        .output()
        .expect("cannot run git (tests/run installs it)");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A folder of bare repositories (what the servers export) plus a working clone of each, for
/// making commits.
pub struct Repos {
    dir: TempDir,
}

impl Default for Repos {
    fn default() -> Self {
        Repos::new()
    }
}

impl Repos {
    pub fn new() -> Repos {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("srv")).expect("mkdir srv");
        std::fs::create_dir_all(dir.path().join("work")).expect("mkdir work");
        Repos { dir }
    }

    /// The folder holding the bare repositories (`NAME.git`).
    pub fn base(&self) -> PathBuf {
        self.dir.path().join("srv")
    }

    /// Creates an empty bare repository `NAME.git` and a working clone of it.
    pub fn create(&self, name: &str) -> Repo {
        let bare = self.base().join(format!("{name}.git"));
        git(
            &self.base(),
            &["init", "-q", "--bare", &format!("{name}.git")],
        );
        let work = self.dir.path().join("work").join(name);
        git(&self.dir.path().join("work"), &["init", "-q", name]);
        git(
            &work,
            &[
                "remote",
                "add",
                "origin",
                bare.to_str().expect("utf-8 path"),
            ],
        );
        Repo { work, bare }
    }
}

/// A bare repository and the working clone that pushes to it.
pub struct Repo {
    pub work: PathBuf,
    pub bare: PathBuf,
}

impl Repo {
    /// Runs git in the working clone.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.work, args)
    }

    /// Writes `files` (path, content), removes `remove`, commits everything and pushes the current
    /// branch. Returns the new commit's SHA.
    pub fn commit(&self, files: &[(&str, &str)], remove: &[&str], message: &str) -> String {
        for (path, content) in files {
            let path = self.work.join(path);
            std::fs::create_dir_all(path.parent().expect("file has a folder")).expect("mkdir");
            std::fs::write(path, content).expect("write file");
        }
        for path in remove {
            self.git(&["rm", "-q", path]);
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.push();
        self.git(&["rev-parse", "HEAD"])
    }

    /// Pushes every branch and tag.
    pub fn push(&self) {
        self.git(&["push", "-q", "--force", "origin", "--all"]);
        self.git(&["push", "-q", "--force", "origin", "--tags"]);
    }
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `git daemon` exporting a folder of bare repositories over `git://`.
pub struct GitDaemon {
    _child: Killed,
    pub port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl GitDaemon {
    /// Starts a daemon exporting `base`. `allow_sha`: also let clients ask for any reachable
    /// commit by SHA (`uploadpack.allowReachableSHA1InWant`), as large hosting services do.
    pub fn start(base: &Path, allow_sha: bool) -> GitDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("daemon.log");
        let port = free_port();
        // `git daemon` would run git-daemon as a child that outlives a killed `git`: start the
        // daemon itself, so dropping the handle stops it.
        let exec_path = git(base, &["--exec-path"]);
        let mut cmd = Command::new(Path::new(&exec_path).join("git-daemon"));
        if allow_sha {
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "uploadpack.allowReachableSHA1InWant")
                .env("GIT_CONFIG_VALUE_0", "true");
        }
        let child = cmd
            .args(["--export-all", "--reuseaddr", "--verbose"])
            .arg(format!("--base-path={}", base.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("cannot start git daemon");
        let child = Killed(child);
        wait_for_port(port, "git daemon");
        GitDaemon {
            _child: child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The `git://` URL of repository `NAME.git`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }

    /// How many upload-pack requests (ls-remote or fetch) the daemon has served.
    pub fn upload_packs(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Request upload-pack"))
            .count()
    }
}

/// What the HTTP bridge counts, for tests that check what a client asked for.
#[derive(Default)]
pub struct HttpCounts {
    /// `GET …/info/refs?service=git-upload-pack`: ref advertisements (ls-remote).
    pub ref_listings: AtomicUsize,
    /// `POST …/git-upload-pack`: pack negotiations, i.e. actual fetches.
    pub fetches: AtomicUsize,
    /// Requests refused for missing or wrong credentials.
    pub unauthorized: AtomicUsize,
    /// Git LFS requests passed on to the LFS server (`…/info/lfs/…`).
    pub lfs: AtomicUsize,
}

/// Git smart HTTP: `git http-backend` behind a small CGI bridge, over HTTP or HTTPS. Paths under
/// `/private/` require Basic auth with `user`/`password`; everything else is public.
pub struct GitHttp {
    runtime: Option<tokio::runtime::Runtime>,
    pub port: u16,
    scheme: &'static str,
    pub counts: Arc<HttpCounts>,
}

/// The credentials the `/private/` route accepts.
pub const HTTP_USER: &str = "trainer";
pub const HTTP_PASSWORD: &str = "s3cr3t-t0ken-xyzzy";

impl GitHttp {
    /// Serves `base` over plain HTTP.
    pub fn start(base: &Path) -> GitHttp {
        GitHttp::serve(base, None, None)
    }

    /// Serves `base` over HTTPS with `ca`'s leaf certificate for localhost / 127.0.0.1.
    pub fn start_tls(base: &Path, ca: &TestCa) -> GitHttp {
        GitHttp::serve(base, Some(ca), None)
    }

    /// Serves `base` over plain HTTP, and passes Git LFS requests (`REPO.git/info/lfs/…`, after
    /// the same Basic auth check under `/private/`) to the LFS server on `lfs_port`, as a hosting
    /// service serves LFS beside its repositories.
    pub fn start_with_lfs(base: &Path, lfs_port: u16) -> GitHttp {
        GitHttp::serve(base, None, Some(lfs_port))
    }

    fn serve(base: &Path, ca: Option<&TestCa>, lfs: Option<u16>) -> GitHttp {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let counts = Arc::new(HttpCounts::default());
        let acceptor = ca.map(|ca| tokio_rustls::TlsAcceptor::from(ca.server_config()));
        let base = base.to_path_buf();
        let c = counts.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (base, counts, acceptor) = (base.clone(), c.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = serve_one(tls, &base, &counts, lfs).await;
                            }
                        }
                        None => {
                            let _ = serve_one(stream, &base, &counts, lfs).await;
                        }
                    }
                });
            }
        });
        GitHttp {
            runtime: Some(runtime),
            port,
            scheme: if ca.is_some() { "https" } else { "http" },
            counts,
        }
    }

    /// The URL of repository `NAME.git`, public.
    pub fn url(&self, name: &str) -> String {
        format!("{}://127.0.0.1:{}/{name}.git", self.scheme, self.port)
    }

    /// The URL of repository `NAME.git` behind Basic auth.
    pub fn private_url(&self, name: &str) -> String {
        format!(
            "{}://127.0.0.1:{}/private/{name}.git",
            self.scheme, self.port
        )
    }

    pub fn fetches(&self) -> usize {
        self.counts.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Serves one request on a connection, then closes it (libgit2 reconnects as needed).
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    base: &Path,
    counts: &HttpCounts,
    lfs: Option<u16>,
) -> std::io::Result<()> {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body).await?;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut stream = reader.into_inner();
    let path_info = match path.strip_prefix("/private") {
        Some(rest) => {
            let expected = format!(
                "Basic {}",
                base64(format!("{HTTP_USER}:{HTTP_PASSWORD}").as_bytes())
            );
            if header("authorization").as_deref() != Some(expected.as_str()) {
                counts.unauthorized.fetch_add(1, Ordering::SeqCst);
                stream
                    .write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                          Content-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await?;
                return stream.shutdown().await;
            }
            rest.to_string()
        }
        None => path.to_string(),
    };
    if let (Some(port), true) = (lfs, path_info.contains("/info/lfs/")) {
        counts.lfs.fetch_add(1, Ordering::SeqCst);
        // The LFS server sees the whole path (`/private/NAME.git/…` is its org and repository)
        // and its own host, so the download links it hands out point at itself.
        let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        for name in ["content-type", "accept"] {
            if let Some(value) = header(name) {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        request.push_str("\r\n");
        upstream.write_all(request.as_bytes()).await?;
        upstream.write_all(&body).await?;
        let mut reply = Vec::new();
        upstream.read_to_end(&mut reply).await?;
        stream.write_all(&reply).await?;
        return stream.shutdown().await;
    }
    if method == "POST" && path_info.ends_with("/git-upload-pack") {
        counts.fetches.fetch_add(1, Ordering::SeqCst);
    }
    if path_info.ends_with("/info/refs") && query.contains("git-upload-pack") {
        counts.ref_listings.fetch_add(1, Ordering::SeqCst);
    }
    let mut cgi = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path_info)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = cgi.stdin.take().expect("piped stdin");
    let writer = async move {
        let _ = stdin.write_all(&body).await;
        drop(stdin);
    };
    let (_, out) = tokio::join!(writer, cgi.wait_with_output());
    let out = out?.stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (head, body) = match split {
        Some((i, n)) => (
            String::from_utf8_lossy(&out[..i]).to_string(),
            &out[i + n..],
        ),
        None => (String::new(), &out[..]),
    };
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    for h in head.lines() {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => {
                response.extend_from_slice(h.as_bytes());
                response.extend_from_slice(b"\r\n");
            }
            None => {}
        }
    }
    let mut full = format!("HTTP/1.1 {status}\r\n").into_bytes();
    full.extend_from_slice(&response);
    full.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    full.extend_from_slice(body);
    stream.write_all(&full).await?;
    stream.shutdown().await
}

/// Standard base64 with padding (for Basic auth).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A real OpenSSH server on 127.0.0.1 with its own host key, accepting one client key for the
/// current user. Repositories are reached by absolute path.
pub struct Sshd {
    _child: Killed,
    pub port: u16,
    user: String,
    dir: TempDir,
}

impl Sshd {
    /// Starts `sshd` (Debian's openssh-server, installed by `tests/run`).
    pub fn start() -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "/usr/sbin/sshd is missing: run `tests/run` once to install openssh-server"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let keygen = |file: &str| {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(file))
                .output()
                .expect("cannot run ssh-keygen");
            assert!(out.status.success(), "ssh-keygen failed");
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let port = free_port();
        let user = String::from_utf8(
            Command::new("id")
                .arg("-un")
                .output()
                .expect("id -un")
                .stdout,
        )
        .expect("utf-8 user")
        .trim()
        .to_string();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let mut fields = host_pub.split_whitespace();
        let (ty, key) = (
            fields.next().expect("key type"),
            fields.next().expect("key"),
        );
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {ty} {key}\n"),
        )
        .expect("known_hosts");
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                d = d.display()
            ),
        )
        .expect("sshd_config");
        // sshd's privilege-separation folder; missing on a machine that never ran sshd.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).expect("sshd log"))
            .spawn()
            .expect("cannot start sshd");
        let child = Killed(child);
        wait_for_port(port, "sshd");
        // The port accepts before sshd is ready to talk; wait for its banner.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = String::new();
                if BufReader::new(s).read_line(&mut banner).is_ok() && banner.starts_with("SSH-") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "sshd did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd {
            _child: child,
            port,
            user,
            dir,
        }
    }

    /// The `ssh://` URL of the bare repository at `path`.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    /// The client's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A known_hosts file holding this server's host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// sshd's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

/// Git smart HTTP as the simplest servers answer it: `git http-backend` behind Python's
/// `http.server` (`git_http10.py` beside this file), replying HTTP/1.0 with `Connection: close`
/// and no Content-Length, so every reply ends when the server closes the connection.
pub struct GitHttp10 {
    _child: Killed,
    pub port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl GitHttp10 {
    /// Serves the bare repositories in `base`.
    pub fn start(base: &Path) -> GitHttp10 {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_file = dir.path().join("port");
        let log = dir.path().join("requests.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/harness/git_http10.py");
        let child = Command::new("python3")
            .arg(&script)
            .arg(&port_file)
            .arg(base)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("request log"))
            .spawn()
            .expect("cannot start python3 (tests/run installs it)");
        let child = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "the HTTP/1.0 git server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        GitHttp10 {
            _child: child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The URL of repository `NAME.git`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}.git", self.port)
    }

    /// The requests served, one `METHOD PATH` line each.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}
