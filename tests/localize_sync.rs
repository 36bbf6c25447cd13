//! `periscope localize --period`: continuous sync for long-lived pods, as git-sync does it. A new
//! commit pushed to a real git server (smart HTTP) while a reader holds the old checkout open is
//! published as a symlink swap; the reader keeps the old tree, the hooks hear of the new
//! revision, `/healthz` answers, and SIGTERM ends it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::git::{GitHttp, Repos};
use crate::harness::rawhttp::request;
use crate::harness::webhook::WebhookReceiver;
use crate::harness::{free_port, periscope};

/// A running `periscope localize --period …`, its output going to files. Killed if dropped.
struct Syncing {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Syncing {
    fn start(mut cmd: Command, logs: &Path) -> Syncing {
        let stdout = logs.join("stdout");
        let stderr = logs.join("stderr");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Syncing {
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> (String, String) {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (read(&self.stdout), read(&self.stderr))
    }

    /// Waits (at most 60 s) until `done` holds, failing with the output so far.
    fn wait_until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let (out, err) = self.output();
                panic!("the sync exited ({status}) before {what}\n{out}\n{err}");
            }
            if Instant::now() > deadline {
                let (out, err) = self.output();
                panic!("no {what} after 60 s\n--- stdout\n{out}\n--- stderr\n{err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit code (at most 20 s).
    fn terminate(&mut self) -> Option<i32> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "SIGTERM did not end the sync");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Syncing {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz(port: u16) -> Option<u16> {
    std::panic::catch_unwind(|| request(port, "GET", "/healthz", &[], b"").status).ok()
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A hook script that appends `$GITSYNC_HASH $PWD` to `log`.
fn hook_script(dir: &Path, log: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$GITSYNC_HASH $PWD\" >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn a_new_commit_is_swapped_in_while_a_reader_keeps_the_old_revision() {
    let repos = Repos::new();
    let repo = repos.create("job");
    let first = repo.commit(&[("train.py", "print('v1')\n")], &[], "one");
    let server = GitHttp::start(&repos.base());
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("code");
    let hook_log = work.path().join("hook.log");
    let hook = hook_script(work.path(), &hook_log);
    let webhook = WebhookReceiver::start();
    let health = free_port();

    let mut cmd = periscope();
    cmd.args(["localize", "--period", "200ms", "--dest"])
        .arg(&dest)
        .args(["--source", &format!("git+{}", server.url("job"))])
        .arg("--exechook-command")
        .arg(&hook)
        .args(["--webhook-url", &webhook.url("/synced")])
        .args(["--http-bind", &format!("127.0.0.1:{health}")]);
    let mut sync = Syncing::start(cmd, work.path());
    let train = dest.join("job/train.py");
    sync.wait_until("the first revision", || {
        read(&train).as_deref() == Some("print('v1')\n")
    });
    sync.wait_until("a healthy /healthz", || healthz(health) == Some(200));
    let link = dest.join("job");
    assert!(link.is_symlink(), "DEST/job is not a symlink");
    let target = std::fs::read_link(&link).unwrap();
    assert!(
        target.is_relative(),
        "{target:?}: a pod mounting the volume elsewhere breaks"
    );

    // A reader holds the first revision: an open file and the folder it resolved.
    let old = link.canonicalize().unwrap();
    let mut held = std::fs::File::open(old.join("train.py")).unwrap();

    let second = repo.commit(&[("train.py", "print('v2')\n")], &[], "two");
    sync.wait_until("the second revision", || {
        read(&train).as_deref() == Some("print('v2')\n")
    });
    let mut text = String::new();
    held.read_to_string(&mut text).unwrap();
    assert_eq!(text, "print('v1')\n", "the reader's open file changed");
    assert_eq!(
        read(&old.join("train.py")).as_deref(),
        Some("print('v1')\n"),
        "the previous revision must stay until the next one replaces it"
    );
    // The record is rewritten just after the swap: a reader quick enough sees it name the first
    // revision for that moment, then the second.
    let recorded = || -> Option<String> {
        let text = read(&dest.join(".periscope/localized.json"))?;
        let record: serde_json::Value = serde_json::from_str(&text).ok()?;
        record["sources"][0]["revision"]["id"]
            .as_str()
            .map(String::from)
    };
    sync.wait_until("the record of the second revision", || {
        recorded().as_deref() == Some(second.as_str())
    });

    // The hooks heard of each revision, in order, the command running in the revision's folder.
    sync.wait_until("the hooks of the second revision", || {
        webhook.received().len() >= 2 && read(&hook_log).is_some_and(|l| l.lines().count() >= 2)
    });
    let hooked: Vec<String> = read(&hook_log).unwrap().lines().map(String::from).collect();
    assert_eq!(hooked.len(), 2, "{hooked:?}");
    assert!(hooked[0].starts_with(&format!("{first} ")), "{hooked:?}");
    assert!(hooked[1].starts_with(&format!("{second} ")), "{hooked:?}");
    let ran_in = PathBuf::from(hooked[1].split_once(' ').unwrap().1);
    assert_eq!(ran_in, link.canonicalize().unwrap());
    let calls = webhook.received();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, "/synced");
    assert_eq!(calls[0].header("Gitsync-Hash"), Some(first.as_str()));
    assert_eq!(calls[1].header("Gitsync-Hash"), Some(second.as_str()));

    assert_eq!(sync.terminate(), Some(0));
    let (out, _) = sync.output();
    let said: Vec<&str> = out.lines().collect();
    assert_eq!(said.len(), 2, "one line per new revision:\n{out}");
    assert!(
        said[0].starts_with("localized ") && said[0].contains(&first[..12]),
        "{out}"
    );
    assert!(
        said[1].starts_with("localized ") && said[1].contains(&second[..12]),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(dest.join(".periscope/staging"))
            .unwrap()
            .count(),
        0
    );
}

/// git-sync v4's variables drive the same sync with no flags: a drop-in for its container.
#[test]
fn git_sync_variables_start_a_continuous_sync() {
    let repos = Repos::new();
    let repo = repos.create("job");
    let commit = repo.commit(&[("train.py", "print('v1')\n")], &[], "one");
    let server = GitHttp::start(&repos.base());
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let hook_log = work.path().join("hook.log");
    let hook = hook_script(work.path(), &hook_log);
    let webhook = WebhookReceiver::start();
    let health = free_port();

    let mut cmd = periscope();
    cmd.arg("localize")
        .env("GITSYNC_REPO", server.url("job"))
        .env("GITSYNC_ROOT", &root)
        .env("GITSYNC_LINK", "current")
        .env("GITSYNC_PERIOD", "1s")
        .env("GITSYNC_EXECHOOK_COMMAND", &hook)
        .env("GITSYNC_WEBHOOK_URL", webhook.url("/hook"))
        .env("GITSYNC_WEBHOOK_METHOD", "put")
        .env("GITSYNC_HTTP_BIND", format!("127.0.0.1:{health}"));
    let mut sync = Syncing::start(cmd, work.path());
    sync.wait_until("a healthy /healthz", || healthz(health) == Some(200));
    assert!(root.join("current").is_symlink());
    assert_eq!(
        read(&root.join("current/train.py")).as_deref(),
        Some("print('v1')\n")
    );
    sync.wait_until("the hooks", || {
        !webhook.received().is_empty() && read(&hook_log).is_some()
    });
    assert_eq!(webhook.received()[0].method, "PUT");
    assert!(read(&hook_log).unwrap().starts_with(&commit));
    assert_eq!(sync.terminate(), Some(0));
}

/// The flags of a sync without --period are a mistake, said before anything is fetched.
#[test]
fn hooks_without_a_period_are_a_usage_error() {
    let dest = tempfile::tempdir().unwrap();
    crate::harness::run(
        periscope()
            .args(["localize", "--dest"])
            .arg(dest.path())
            .args(["--source", "git+http://127.0.0.1:1/job.git"])
            .args(["--webhook-url", "http://127.0.0.1:1/x"]),
    )
    .expect_code(2)
    .expect_output("--period");
}
