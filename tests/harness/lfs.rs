//! A Git LFS server for tests: giftless (the Python LFS server, installed by `tests/run` into
//! `venv-lfs`), with its local storage backend, on 127.0.0.1. Anyone may read and write (the
//! authenticator in `giftless_anyone.py` beside this file); the git HTTP bridge (`git.rs`) puts
//! it behind Basic auth at `…/private/NAME.git/info/lfs` the way hosting services serve LFS beside
//! the repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, tool};

/// A running giftless, stopped (with its process group) when dropped.
pub struct LfsServer {
    child: std::process::Child,
    pub port: u16,
    dir: TempDir,
}

impl LfsServer {
    pub fn start() -> LfsServer {
        let flask = tool("venv-lfs/bin/flask");
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let config = dir.path().join("giftless.yaml");
        std::fs::write(
            &config,
            format!(
                "AUTH_PROVIDERS:\n  - giftless_anyone:anyone\nPRE_AUTHORIZED_ACTION_PROVIDER: null\n\
                 TRANSFER_ADAPTERS:\n  basic:\n    factory: giftless.transfer.basic_streaming:factory\n\
                 \x20   options:\n      storage_class: giftless.storage.local_storage:LocalStorage\n\
                 \x20     storage_options:\n        path: {}\n",
                storage.display()
            ),
        )
        .expect("giftless config");
        let port = free_port();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(flask)
                .args([
                    "--app",
                    "giftless.wsgi_entrypoint",
                    "run",
                    "--host",
                    "127.0.0.1",
                ])
                .args(["--port", &port.to_string()])
                .env("GIFTLESS_CONFIG_FILE", &config)
                .env(
                    "PYTHONPATH",
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/harness"),
                )
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("giftless.log")).expect("log"))
                .process_group(0)
                .spawn()
                .expect("cannot start giftless")
        };
        let server = LfsServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "giftless did not start:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The LFS endpoint of repository `ORG/NAME.git` on this server (anonymous).
    pub fn endpoint(&self, org: &str, name: &str) -> String {
        format!("http://127.0.0.1:{}/{org}/{name}.git/info/lfs", self.port)
    }

    /// The stored copy of the object with this sha256, wherever giftless keeps it.
    pub fn stored(&self, oid: &str) -> PathBuf {
        find(&self.dir.path().join("storage"), oid)
            .unwrap_or_else(|| panic!("object {oid} is not in giftless's storage"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("giftless.log")).unwrap_or_default()
    }
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

impl Drop for LfsServer {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of our own child (flask may fork a reloader).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
