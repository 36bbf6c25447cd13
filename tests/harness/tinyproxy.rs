//! tinyproxy, a real HTTP proxy (Debian's, installed by `tests/run`), on 127.0.0.1, logging every
//! request it forwards, so a test can see which fetches went through it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::free_port;
use super::process::ServerProcess;
use super::rawhttp::wait_for_port;

/// A running tinyproxy. Stops when dropped.
pub struct Tinyproxy {
    _process: ServerProcess,
    _dir: tempfile::TempDir,
    log: PathBuf,
    pub port: u16,
}

impl Tinyproxy {
    /// Starts tinyproxy on a free port, accepting clients from 127.0.0.1 only, and CONNECT to any
    /// port (no `ConnectPort` line), as a cluster's egress proxy would.
    pub fn start() -> Tinyproxy {
        Tinyproxy::start_with("")
    }

    /// [`Tinyproxy::start`], asking clients for this user and password (HTTP 407 without them).
    pub fn start_with_auth(user: &str, password: &str) -> Tinyproxy {
        Tinyproxy::start_with(&format!("BasicAuth {user} {password}\n"))
    }

    fn start_with(extra: &str) -> Tinyproxy {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("tinyproxy.log");
            let port = free_port();
            let conf = dir.path().join("tinyproxy.conf");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nLogFile \"{}\"\n\
                     LogLevel Connect\nMaxClients 64\nTimeout 60\n{extra}",
                    log.display()
                ),
            )
            .unwrap();
            let mut process = ServerProcess::spawn(
                Command::new("tinyproxy").arg("-d").arg("-c").arg(&conf),
                "tinyproxy (tests/run installs it)",
            );
            wait_for_port(port, "tinyproxy", Duration::from_secs(10));
            if process.is_running() {
                return Tinyproxy {
                    _process: process,
                    _dir: dir,
                    log,
                    port,
                };
            }
        }
        panic!("tinyproxy did not start on a free port after 5 tries");
    }

    /// `http://127.0.0.1:PORT`, what `http_proxy` is set to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request line the proxy was sent so far (`GET http://host:port/path HTTP/1.1`, or
    /// `CONNECT host:port HTTP/1.1` for https).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once("): ").map(|(_, r)| r))
            .filter(|r| r.ends_with(" HTTP/1.1") || r.ends_with(" HTTP/1.0"))
            .map(str::to_string)
            .collect()
    }
}
