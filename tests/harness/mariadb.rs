//! A real MariaDB server (Debian's `mariadbd`) on 127.0.0.1 with Submarine's metastore tables,
//! for tests/metrics_mysql.rs.
//!
//! `mariadb-install-db` runs once per test build into a template data folder (seconds); each
//! server copies it, starts `mariadbd` in its own process group with its own data folder, socket
//! and port, and creates a database, a user with a password and Submarine's `experiment`,
//! `metric` and `param` tables (Submarine's DDL, `submarine.sql`). [`MariaDb::stop`] and
//! [`MariaDb::start`] restart it on the same port and data; dropping the handle kills it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::ServerProcess;

pub const USER: &str = "submarine";
pub const PASSWORD: &str = "s3cret-pw";
pub const DATABASE: &str = "submarine";

/// Submarine's DDL for the three tables Periscope writes (from Submarine's `submarine.sql`),
/// kept in a file of its own that bench/metrics loads too.
pub const SUBMARINE_DDL: &str = include_str!("submarine-tables.sql");

/// Small InnoDB files: startup and the template copy stay fast.
const SERVER_ARGS: &[&str] = &[
    "--no-defaults",
    "--user=root",
    "--bind-address=127.0.0.1",
    "--skip-log-bin",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=8M",
    "--performance-schema=OFF",
];

/// The installed system tables, made once per test build (by whichever test gets there first).
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let done = root.join("mariadb-template");
        if done.join("mysql").is_dir() {
            return done;
        }
        let staging = root.join(format!("mariadb-template.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let out = Command::new("mariadb-install-db")
            .args(SERVER_ARGS)
            .arg(format!("--datadir={}", staging.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .expect("cannot run mariadb-install-db: run tests/run (it installs mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db failed\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another test process may have won the race; either template is good.
        if std::fs::rename(&staging, &done).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        done
    })
}

/// A running (or stopped) MariaDB. Invariant: `port`, `dir` and `extra_args` stay the same across
/// restarts.
pub struct MariaDb {
    // Dropped first: the server is killed before its folder is removed.
    server: Option<ServerProcess>,
    dir: tempfile::TempDir,
    pub port: u16,
    extra_args: Vec<String>,
}

impl MariaDb {
    /// Starts a server with the database, user and Submarine's tables.
    pub fn start_with_submarine_tables() -> MariaDb {
        Self::start_with_args(Vec::new())
    }

    /// The same, offering TLS with the test CA's leaf certificate (valid for 127.0.0.1).
    pub fn start_with_submarine_tables_and_tls(ca: &super::tls::TestCa) -> MariaDb {
        Self::start_with_args(vec![
            format!("--ssl-cert={}", ca.leaf_cert.display()),
            format!("--ssl-key={}", ca.leaf_key.display()),
            format!("--ssl-ca={}", ca.ca_cert.display()),
        ])
    }

    /// The same, with more `mariadbd` options (e.g. `--character-set-server=gbk`).
    pub fn start_with_submarine_tables_and_server_args(args: &[&str]) -> MariaDb {
        Self::start_with_args(args.iter().map(|a| a.to_string()).collect())
    }

    fn start_with_args(extra_args: Vec<String>) -> MariaDb {
        let dir = tempfile::Builder::new().prefix("mdb").tempdir().unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(dir.path().join("data"))
            .status()
            .unwrap();
        assert!(status.success(), "cannot copy the MariaDB template");
        let mut db = MariaDb {
            server: None,
            dir,
            port: super::free_port(),
            extra_args,
        };
        db.start();
        db.admin(&format!(
            "CREATE DATABASE {DATABASE}; \
             CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON {DATABASE}.* TO '{USER}'@'%';"
        ));
        db.sql(SUBMARINE_DDL);
        db
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Starts `mariadbd` and waits until it answers.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "already running");
        let data = self.dir.path().join("data");
        // Debian installs it in /usr/sbin, which a non-root PATH may lack.
        let bin = ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mariadbd");
        let mut cmd = Command::new(bin);
        cmd.args(SERVER_ARGS)
            .args(&self.extra_args)
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.path().join("error.log").display()
            ));
        let mut server = ServerProcess::spawn(&mut cmd, "mariadbd");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_admin("SELECT 1").is_ok() {
                break;
            }
            assert!(
                server.is_running() && Instant::now() < deadline,
                "mariadbd did not start\n{}",
                std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.server = Some(server);
    }

    /// Stops the server at once (SIGKILL of its group: InnoDB recovers on the next start, and
    /// clients see the connection drop as in a crash) and waits until the port is free.
    pub fn stop(&mut self) {
        self.server.take();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "mariadbd still listens");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The metastore URL for `scheme` (`mysql` or `mysql+pymysql`) and `password`.
    pub fn url_with(&self, scheme: &str, password: &str) -> String {
        format!(
            "{scheme}://{USER}:{password}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    /// The metastore URL with the right password.
    pub fn url(&self) -> String {
        self.url_with("mysql", PASSWORD)
    }

    /// The `mariadb` client, as root over the server's socket.
    fn root_client(&self) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "--batch", "--skip-column-names", "-uroot"])
            .arg(format!("--socket={}", self.socket().display()));
        cmd
    }

    /// Runs SQL as root; the client's stderr when it fails.
    pub fn try_admin(&self, sql: &str) -> Result<String, String> {
        let out = self
            .root_client()
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL as root; panics when it fails.
    pub fn admin(&self, sql: &str) -> String {
        self.try_admin(sql)
            .unwrap_or_else(|e| panic!("{sql}\nfailed: {e}"))
    }

    /// Opens a root session in the database and runs `sql` in it (a transaction that takes
    /// locks, say); returns once it has run. The session stays open, its transaction with it,
    /// until the handle is dropped, which commits.
    pub fn hold(&self, sql: &str) -> Held {
        let mut client = self
            .root_client()
            .args(["--unbuffered", DATABASE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run the mariadb client");
        let mut stdin = client.stdin.take().expect("piped");
        writeln!(stdin, "{sql};\nSELECT 'held';").expect("the mariadb client's input");
        let stdout = client.stdout.take().expect("piped");
        let ran = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "held");
        assert!(ran, "{sql}\ndid not run");
        Held {
            client,
            stdin: Some(stdin),
        }
    }

    /// Runs SQL in the database with the real `mariadb` client over TCP, as the Submarine user;
    /// returns the rows, tab-separated, one per line (NULL as `NULL`).
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "--batch",
                "--skip-column-names",
                "-h",
                "127.0.0.1",
            ])
            .arg(format!("-P{}", self.port))
            .arg(format!("-u{USER}"))
            .arg(format!("-p{PASSWORD}"))
            .arg(DATABASE)
            .args(["-e", sql])
            .output()
            .expect("cannot run the mariadb client");
        assert!(
            out.status.success(),
            "{sql}\nfailed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A session of [`MariaDb::hold`]; dropping it commits and ends the session.
pub struct Held {
    client: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "COMMIT;");
            // Closing the input ends the client, and its session.
        }
        let _ = self.client.wait();
    }
}
