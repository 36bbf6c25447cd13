//! `periscope localize` from git: git daemon, smart HTTP(S) through `git http-backend`, ssh through
//! a real sshd, and local `git+file://` repositories. Each test checks what a user would: the files
//! in the checkout, the commit recorded, `git log` inside it, exit codes and messages.

use std::path::{Path, PathBuf};

use crate::harness::archive::sha256_hex;
use crate::harness::git::{
    git, GitDaemon, GitHttp, GitHttp10, Repo, Repos, Sshd, HTTP_PASSWORD, HTTP_USER,
};
use crate::harness::lfs::LfsServer;
use crate::harness::localize::localize;
use crate::harness::tls::TestCa;
use crate::harness::{free_port, periscope, run};

/// The record entry for folder `into`.
fn recorded(dest: &Path, into: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dest.join(".periscope/localized.json"))
        .expect("localized.json exists");
    let record: serde_json::Value = serde_json::from_str(&text).expect("record is JSON");
    record["sources"]
        .as_array()
        .expect("sources array")
        .iter()
        .find(|e| e["into"] == into)
        .cloned()
        .unwrap_or_else(|| panic!("no entry for {into} in {text}"))
}

fn recorded_commit(dest: &Path, into: &str) -> String {
    let entry = recorded(dest, into);
    assert_eq!(entry["revision"]["kind"], "commit", "{entry}");
    entry["revision"]["id"].as_str().expect("id").to_string()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names in a folder, sorted, `.git` excluded.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".git")
        .collect();
    names.sort();
    names
}

/// Nothing left in the staging area after a run.
fn assert_no_staging(dest: &Path) {
    let staging = dest.join(".periscope/staging");
    if staging.exists() {
        assert_eq!(
            std::fs::read_dir(&staging).unwrap().count(),
            0,
            "staging left behind in {}",
            staging.display()
        );
    }
}

/// A repository `job` with three commits on `main`, a `dev` branch and an annotated tag `v1` on
/// the first commit. Returns the repo and the three SHAs.
fn three_commits(repos: &Repos) -> (Repo, [String; 3]) {
    let repo = repos.create("job");
    let first = repo.commit(&[("train.py", "print('v1')\n")], &[], "first");
    repo.git(&["tag", "-a", "v1", "-m", "release 1"]);
    let second = repo.commit(&[("data/config.yaml", "lr: 0.1\n")], &[], "second");
    let third = repo.commit(&[("train.py", "print('v3')\n")], &[], "third");
    repo.git(&["branch", "dev", &first]);
    repo.git(&["checkout", "-q", "dev"]);
    repo.commit(&[("dev.txt", "dev only\n")], &[], "dev work");
    repo.git(&["checkout", "-q", "main"]);
    repo.push();
    (repo, [first, second, third])
}

#[test]
fn default_head_over_git_daemon_is_a_shallow_checkout_with_history() {
    let repos = Repos::new();
    let (_repo, [_, _, third]) = three_commits(&repos);
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    let ran = localize(dest.path(), &daemon.url("job"), &[]);
    ran.expect_code(0).expect_output("localized");
    let out = dest.path().join("job");
    assert_eq!(listing(&out), ["data", "train.py"]);
    assert_eq!(read(out.join("train.py")), "print('v3')\n");
    assert_eq!(recorded_commit(dest.path(), "job"), third);
    // A real repository people can use: on branch main, one commit deep, origin set.
    assert_eq!(git(&out, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    assert_eq!(git(&out, &["rev-list", "--count", "HEAD"]), "1");
    assert_eq!(git(&out, &["log", "-1", "--format=%s"]), "third");
    assert_eq!(
        git(&out, &["remote", "get-url", "origin"]),
        daemon.url("job")
    );
    assert_eq!(git(&out, &["status", "--porcelain"]), "");
    assert_no_staging(dest.path());
}

#[test]
fn branch_and_annotated_tag_refs() {
    let repos = Repos::new();
    let (repo, [first, ..]) = three_commits(&repos);
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    let url = daemon.url("job");
    localize(dest.path(), &format!("{url}#ref=dev&into=dev"), &[]).expect_code(0);
    let dev = dest.path().join("dev");
    assert_eq!(listing(&dev), ["dev.txt", "train.py"]);
    assert_eq!(git(&dev, &["rev-parse", "--abbrev-ref", "HEAD"]), "dev");
    assert_eq!(
        recorded_commit(dest.path(), "dev"),
        repo.git(&["rev-parse", "dev"])
    );
    localize(dest.path(), &format!("{url}#ref=v1&into=tag"), &[]).expect_code(0);
    let tag = dest.path().join("tag");
    assert_eq!(listing(&tag), ["train.py"]);
    assert_eq!(read(tag.join("train.py")), "print('v1')\n");
    // The tag is recorded as the commit it names, not the tag object.
    assert_eq!(recorded_commit(dest.path(), "tag"), first);
    assert_eq!(git(&tag, &["rev-parse", "HEAD"]), first);
}

#[test]
fn depth_option_sets_how_much_history_is_fetched() {
    let repos = Repos::new();
    let (_repo, _) = three_commits(&repos);
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    let url = daemon.url("job");
    localize(dest.path(), &format!("{url}#depth=2&into=two"), &[]).expect_code(0);
    let two = dest.path().join("two");
    assert_eq!(git(&two, &["rev-list", "--count", "HEAD"]), "2");
    assert!(two.join(".git/shallow").exists());
    localize(dest.path(), &format!("{url}#depth=0&into=full"), &[]).expect_code(0);
    let full = dest.path().join("full");
    assert_eq!(git(&full, &["rev-list", "--count", "HEAD"]), "3");
    assert!(!full.join(".git/shallow").exists());
}

#[test]
fn full_sha_unreachable_at_depth_1_is_fetched_anyway() {
    let repos = Repos::new();
    let (_repo, [_, second, _]) = three_commits(&repos);
    // No ref points at `second`: a depth-1 fetch of any branch cannot reach it. The first daemon
    // refuses requests by SHA (git's default); the second allows them, as hosting services do.
    for allow_sha in [false, true] {
        let daemon = GitDaemon::start(&repos.base(), allow_sha);
        let dest = tempfile::tempdir().unwrap();
        localize(
            dest.path(),
            &format!("{}#ref={second}", daemon.url("job")),
            &[],
        )
        .expect_code(0);
        let out = dest.path().join("job");
        assert_eq!(listing(&out), ["data", "train.py"], "allow_sha={allow_sha}");
        assert_eq!(read(out.join("train.py")), "print('v1')\n");
        assert_eq!(recorded_commit(dest.path(), "job"), second);
        assert_eq!(git(&out, &["rev-parse", "HEAD"]), second);
        if allow_sha {
            // Asked for by SHA, the commit came alone, at depth 1.
            assert_eq!(git(&out, &["rev-list", "--count", "HEAD"]), "1");
        }
    }
}

#[test]
fn unknown_ref_exits_3_and_leaves_nothing() {
    let repos = Repos::new();
    three_commits(&repos);
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    localize(
        dest.path(),
        &format!("{}#ref=no-such-branch", daemon.url("job")),
        &[],
    )
    .expect_code(3)
    .expect_output("no-such-branch");
    assert!(!dest.path().join("job").exists());
    // A SHA the server does not have is not found either.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    localize(
        dest.path(),
        &format!("{}#ref={missing}", daemon.url("job")),
        &[],
    )
    .expect_code(3)
    .expect_output(missing);
    assert!(!dest.path().join("job").exists());
    assert_no_staging(dest.path());
}

#[test]
fn missing_repository_exits_3() {
    let repos = Repos::new();
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &daemon.url("nope"), &[])
        .expect_code(3)
        .expect_output("repository not found");
}

#[test]
fn refs_that_look_like_options_are_refused() {
    let dest = tempfile::tempdir().unwrap();
    for bad in ["-upload-pack=touch%20/tmp/pwned", "--help", "main%0Aevil"] {
        localize(
            dest.path(),
            &format!("git://127.0.0.1:9/job.git#ref={bad}"),
            &[],
        )
        .expect_code(2);
    }
}

#[test]
fn unreachable_server_exits_6_after_retries() {
    let dest = tempfile::tempdir().unwrap();
    let url = format!("git://127.0.0.1:{}/job.git", free_port());
    let ran = localize(dest.path(), &url, &["--retries", "2"]);
    ran.expect_code(6).expect_output("cannot reach the server");
    // The first failure was retried before giving up.
    ran.expect_output("retrying");
    assert!(!dest.path().join("job").exists());
}

#[test]
fn submodules_are_checked_out_recursively_unless_none() {
    let repos = Repos::new();
    let leaf = repos.create("leaf");
    leaf.commit(&[("leaf.txt", "leaf\n")], &[], "leaf");
    let middle = repos.create("middle");
    middle.commit(&[("middle.txt", "middle\n")], &[], "middle");
    middle.git(&["submodule", "add", "-q", "../leaf.git", "deps/leaf"]);
    middle.commit(&[], &[], "add leaf");
    let top = repos.create("top");
    top.commit(&[("top.txt", "top\n")], &[], "top");
    top.git(&["submodule", "add", "-q", "../middle.git", "middle"]);
    top.commit(&[], &[], "add middle");
    // The leaf moves on after being recorded: the recorded commit must be the one checked out.
    leaf.commit(&[("later.txt", "later\n")], &[], "later");
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &daemon.url("top"), &[]).expect_code(0);
    let out = dest.path().join("top");
    assert_eq!(read(out.join("top.txt")), "top\n");
    assert_eq!(read(out.join("middle/middle.txt")), "middle\n");
    assert_eq!(read(out.join("middle/deps/leaf/leaf.txt")), "leaf\n");
    assert!(!out.join("middle/deps/leaf/later.txt").exists());
    // git agrees the submodules are initialised and at the recorded commits (`-` would mean not
    // initialised, `+` a different commit, `U` conflicts).
    let status = git(&out, &["submodule", "status", "--recursive"]);
    assert_eq!(status.lines().count(), 2, "{status}");
    assert!(
        status.lines().all(|l| !l.starts_with(['-', '+', 'U'])),
        "submodules not at their recorded commits:\n{status}"
    );
    let dest = tempfile::tempdir().unwrap();
    localize(
        dest.path(),
        &format!("{}#submodules=none", daemon.url("top")),
        &[],
    )
    .expect_code(0);
    let out = dest.path().join("top");
    assert_eq!(read(out.join("top.txt")), "top\n");
    assert_eq!(listing(&out.join("middle")), Vec::<String>::new());
}

#[test]
fn rerun_fetches_nothing_and_a_new_commit_replaces_the_old_atomically() {
    let repos = Repos::new();
    let repo = repos.create("job");
    let old = repo.commit(&[("a.txt", "a\n"), ("old.txt", "old\n")], &[], "one");
    let http = GitHttp::start(&repos.base());
    let dest = tempfile::tempdir().unwrap();
    let url = format!("git+{}", http.url("job"));
    localize(dest.path(), &url, &[]).expect_code(0);
    let fetches = http.fetches();
    assert!(fetches > 0, "the first run fetched nothing?");
    let before = recorded(dest.path(), "job");
    assert_eq!(before["revision"]["id"], old.as_str());

    // Same source, same commit: nothing fetched, record untouched.
    localize(dest.path(), &url, &[])
        .expect_code(0)
        .expect_output("unchanged");
    assert_eq!(http.fetches(), fetches, "a re-run fetched a pack");
    assert_eq!(recorded(dest.path(), "job"), before);

    // A new commit: the new tree replaces the old one, and the record follows.
    let new = repo.commit(&[("new.txt", "new\n")], &["old.txt"], "two");
    localize(dest.path(), &url, &[])
        .expect_code(0)
        .expect_output("localized");
    let out = dest.path().join("job");
    assert_eq!(listing(&out), ["a.txt", "new.txt"]);
    assert_eq!(recorded_commit(dest.path(), "job"), new);
    assert_eq!(git(&out, &["rev-parse", "HEAD"]), new);
    assert_no_staging(dest.path());
}

#[test]
fn https_needs_the_private_ca_and_trusts_it_with_ca_file() {
    let repos = Repos::new();
    let repo = repos.create("job");
    let sha = repo.commit(&[("a.txt", "a\n")], &[], "one");
    let ca = TestCa::new();
    let https = GitHttp::start_tls(&repos.base(), &ca);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &https.url("job"), &["--retries", "1"])
        .expect_code(4)
        .expect_output("--ca-file");
    assert!(!dest.path().join("job").exists());
    localize(
        dest.path(),
        &https.url("job"),
        &["--ca-file", ca.ca_cert.to_str().unwrap()],
    )
    .expect_code(0);
    assert_eq!(recorded_commit(dest.path(), "job"), sha);
    assert_eq!(read(dest.path().join("job/a.txt")), "a\n");
}

#[test]
fn basic_auth_right_password_works_wrong_one_exits_4_and_is_never_printed() {
    let repos = Repos::new();
    let repo = repos.create("job");
    let sha = repo.commit(&[("a.txt", "a\n")], &[], "one");
    let ca = TestCa::new();
    let https = GitHttp::start_tls(&repos.base(), &ca);
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("password");
    let ca_file = ca.ca_cert.to_str().unwrap();
    let dest = tempfile::tempdir().unwrap();

    // No credentials at all.
    localize(
        dest.path(),
        &https.private_url("job"),
        &["--ca-file", ca_file],
    )
    .expect_code(4)
    .expect_output("credentials");

    // A wrong password in the file: refused, and never shown.
    std::fs::write(&password_file, "wrong-password-42\n").unwrap();
    let args = [
        "--ca-file",
        ca_file,
        "--git-username",
        HTTP_USER,
        "--git-password-file",
        password_file.to_str().unwrap(),
    ];
    localize(dest.path(), &https.private_url("job"), &args)
        .expect_code(4)
        .refute_output("wrong-password-42");
    assert!(!dest.path().join("job").exists());

    // The file is re-read on every run: fixing the Secret fixes the next run.
    std::fs::write(&password_file, format!("{HTTP_PASSWORD}\n")).unwrap();
    localize(dest.path(), &https.private_url("job"), &args)
        .expect_code(0)
        .refute_output(HTTP_PASSWORD);
    assert_eq!(recorded_commit(dest.path(), "job"), sha);
    // Neither the record nor the checkout's git config holds the password.
    let record = read(dest.path().join(".periscope/localized.json"));
    assert!(!record.contains(HTTP_PASSWORD), "{record}");
    let config = read(dest.path().join("job/.git/config"));
    assert!(!config.contains(HTTP_PASSWORD), "{config}");

    // Credentials in the URL work too, and are redacted from everything printed.
    let dest = tempfile::tempdir().unwrap();
    let with_creds = https
        .private_url("job")
        .replace("https://", &format!("https://{HTTP_USER}:{HTTP_PASSWORD}@"));
    localize(dest.path(), &with_creds, &["--ca-file", ca_file])
        .expect_code(0)
        .refute_output(HTTP_PASSWORD);
    let config = read(dest.path().join("job/.git/config"));
    assert!(!config.contains(HTTP_PASSWORD), "{config}");
}

#[test]
fn file_urls_are_local_repositories() {
    let repos = Repos::new();
    let (_repo, [_, _, third]) = three_commits(&repos);
    let dest = tempfile::tempdir().unwrap();
    let url = format!("git+file://{}", repos.base().join("job.git").display());
    localize(dest.path(), &url, &[]).expect_code(0);
    assert_eq!(recorded_commit(dest.path(), "job"), third);
    assert_eq!(listing(&dest.path().join("job")), ["data", "train.py"]);
}

#[test]
fn ssh_with_key_and_known_hosts() {
    let repos = Repos::new();
    let (_repo, [_, _, third]) = three_commits(&repos);
    let sshd = Sshd::start();
    let url = format!("git+{}", sshd.url(&repos.base().join("job.git")));
    let key = sshd.client_key();
    let known = sshd.known_hosts();
    let dest = tempfile::tempdir().unwrap();
    let ran = localize(
        dest.path(),
        &url,
        &[
            "--ssh-key-file",
            key.to_str().unwrap(),
            "--known-hosts-file",
            known.to_str().unwrap(),
        ],
    );
    assert_eq!(ran.code, Some(0), "{ran:?}\nsshd log:\n{}", sshd.log());
    assert_eq!(recorded_commit(dest.path(), "job"), third);
    assert_eq!(read(dest.path().join("job/train.py")), "print('v3')\n");
}

#[test]
fn ssh_unknown_host_key_exits_4_unless_allowed() {
    let repos = Repos::new();
    three_commits(&repos);
    let sshd = Sshd::start();
    let url = format!("git+{}", sshd.url(&repos.base().join("job.git")));
    let key = sshd.client_key();
    let empty = tempfile::tempdir().unwrap();
    let known = empty.path().join("known_hosts");
    std::fs::write(&known, "").unwrap();
    let dest = tempfile::tempdir().unwrap();
    let args = [
        "--ssh-key-file",
        key.to_str().unwrap(),
        "--known-hosts-file",
        known.to_str().unwrap(),
    ];
    localize(dest.path(), &url, &args)
        .expect_code(4)
        .expect_output("not in known_hosts")
        .expect_output("SHA256:");
    assert!(!dest.path().join("job").exists());
    let mut allowed = args.to_vec();
    allowed.push("--allow-unknown-host-keys");
    localize(dest.path(), &url, &allowed).expect_code(0);
    assert!(dest.path().join("job/train.py").exists());
}

#[test]
fn git_sync_environment_from_submarine() {
    let repos = Repos::new();
    let (repo, _) = three_commits(&repos);
    let http = GitHttp::start(&repos.base());
    let root = tempfile::tempdir().unwrap();
    // Submarine's code localizer passes the repository URL without `git+` and often without
    // `.git`; http-backend serves `job` as `job.git` only, so keep the suffix here.
    let ran = run(periscope()
        .arg("localize")
        .env("GIT_SYNC_REPO", http.private_url("job"))
        .env("GIT_SYNC_BRANCH", "dev")
        .env("GIT_SYNC_DEPTH", "1")
        .env("GIT_SYNC_ROOT", root.path())
        .env("GIT_SYNC_DEST", "code")
        .env("GIT_SYNC_USERNAME", HTTP_USER)
        .env("GIT_SYNC_PASSWORD", HTTP_PASSWORD));
    ran.expect_code(0).refute_output(HTTP_PASSWORD);
    let code = root.path().join("code");
    assert_eq!(listing(&code), ["dev.txt", "train.py"]);
    assert_eq!(
        recorded_commit(root.path(), "code"),
        repo.git(&["rev-parse", "dev"])
    );
    assert_eq!(git(&code, &["rev-list", "--count", "HEAD"]), "1");
}

#[test]
fn ssh_key_the_server_does_not_know_exits_4() {
    let repos = Repos::new();
    three_commits(&repos);
    let sshd = Sshd::start();
    let url = format!("git+{}", sshd.url(&repos.base().join("job.git")));
    let other = tempfile::tempdir().unwrap();
    let stranger = other.path().join("stranger");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dest = tempfile::tempdir().unwrap();
    localize(
        dest.path(),
        &url,
        &[
            "--ssh-key-file",
            stranger.to_str().unwrap(),
            "--known-hosts-file",
            sshd.known_hosts().to_str().unwrap(),
        ],
    )
    .expect_code(4)
    .expect_output("refused");
    assert!(!dest.path().join("job").exists());
}

#[test]
fn missing_repository_over_http_exits_3() {
    let repos = Repos::new();
    let http = GitHttp::start(&repos.base());
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &format!("git+{}", http.url("nope")), &[])
        .expect_code(3)
        .expect_output("repository not found");
}

#[test]
fn git_ssl_no_verify_skips_certificate_checks_for_git_sync() {
    let repos = Repos::new();
    let repo = repos.create("job");
    let sha = repo.commit(&[("a.txt", "a\n")], &[], "one");
    let ca = TestCa::new();
    let https = GitHttp::start_tls(&repos.base(), &ca);
    let root = tempfile::tempdir().unwrap();
    let sync = |no_verify: &str| {
        run(periscope()
            .args(["localize", "--retries", "1"])
            .env("GIT_SYNC_REPO", https.url("job"))
            .env("GIT_SYNC_ROOT", root.path())
            .env("GIT_SSL_NO_VERIFY", no_verify))
    };
    sync("false").expect_code(4);
    sync("true").expect_code(0);
    // git-sync names the folder after the last element of the repository URL.
    assert_eq!(recorded_commit(root.path(), "job.git"), sha);
}

#[test]
fn checkout_over_the_file_limit_exits_5_and_publishes_nothing() {
    let repos = Repos::new();
    let repo = repos.create("job");
    let files: Vec<(String, String)> = (0..20)
        .map(|i| (format!("f{i}.txt"), format!("{i}\n")))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    repo.commit(&refs, &[], "many");
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &daemon.url("job"), &["--max-files", "10"])
        .expect_code(5)
        .expect_output("--max-files");
    assert!(!dest.path().join("job").exists());
    assert_no_staging(dest.path());
    localize(dest.path(), &daemon.url("job"), &["--max-bytes", "16"])
        .expect_code(5)
        .expect_output("--max-bytes");
    assert!(!dest.path().join("job").exists());
}

#[test]
fn gitattributes_apply_like_git_and_plain_files_are_byte_exact() {
    let repos = Repos::new();
    let repo = repos.create("job");
    repo.commit(
        &[
            ("plain/data.bin", "line one\r\nline two\n"),
            ("win/run.bat", "echo hi\n"),
        ],
        &[],
        "files",
    );
    let plain_only = repo.git(&["rev-parse", "HEAD"]);
    repo.commit(&[("win/.gitattributes", "*.bat eol=crlf\n")], &[], "attrs");
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &daemon.url("job"), &[]).expect_code(0);
    // What `git clone` writes: the attribute converts run.bat, and nothing else changes.
    let clone = tempfile::tempdir().unwrap();
    git(clone.path(), &["clone", "-q", &daemon.url("job"), "c"]);
    for file in ["win/run.bat", "plain/data.bin"] {
        assert_eq!(
            std::fs::read(dest.path().join("job").join(file)).unwrap(),
            std::fs::read(clone.path().join("c").join(file)).unwrap(),
            "{file} differs from git's checkout"
        );
    }
    assert_eq!(
        read(dest.path().join("job/win/run.bat")),
        "echo hi\r\n",
        "eol=crlf not applied"
    );
    // Without any .gitattributes, bytes are exactly what was committed.
    localize(
        dest.path(),
        &format!("{}#ref={plain_only}&into=plain", daemon.url("job")),
        &[],
    )
    .expect_code(0);
    assert_eq!(
        read(dest.path().join("plain/plain/data.bin")),
        "line one\r\nline two\n"
    );
}

/// Every entry under `dir` (`.git` excluded) as a user would inspect it: kind, permission bits,
/// link target or bytes.
fn tree_state(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut state = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if name == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                pending.push(path);
                format!("folder {mode:o}")
            } else {
                let bytes = std::fs::read(&path).unwrap();
                format!("file {mode:o} {}", String::from_utf8_lossy(&bytes))
            };
            state.insert(name, what);
        }
    }
    state
}

#[test]
fn a_checkout_is_what_git_clone_writes_and_git_finds_it_clean() {
    let repos = Repos::new();
    let repo = repos.create("job");
    repo.commit(
        &[
            ("README.md", "# job\n"),
            ("run.sh", "#!/bin/sh\necho run\n"),
            ("lib/model.py", "class Model: pass\n"),
            ("empty.txt", ""),
            ("data/données.csv", "a,b\n1,2\n"),
            ("deep/a/b/c/d.txt", "deep\n"),
            // Tree order and index order must agree around `/`.
            ("a.b", "dot\n"),
            ("a/c", "slash\n"),
            ("a0", "zero\n"),
            (".gitignore", "*.pyc\n"),
            (".git-blame-ignore-revs", "\n"),
        ],
        &[],
        "files",
    );
    let work = &repo.work;
    std::os::unix::fs::symlink("model.py", work.join("lib/latest.py")).unwrap();
    std::os::unix::fs::symlink("../README.md", work.join("deep/readme")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    repo.commit(&[], &[], "links and modes");
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &daemon.url("job"), &[]).expect_code(0);
    // One connection lists the refs and fetches, as `git clone` does.
    assert_eq!(daemon.upload_packs(), 1, "ls-remote and fetch were not one");
    let clone = tempfile::tempdir().unwrap();
    git(clone.path(), &["clone", "-q", &daemon.url("job"), "c"]);
    let ours = tree_state(&dest.path().join("job"));
    assert_eq!(ours, tree_state(&clone.path().join("c")));
    assert!(
        ours["run.sh"].starts_with("file 7") && ours["lib/latest.py"] == "link -> model.py",
        "{ours:#?}"
    );
    // The index matches the files without git reading them: `diff-files` trusts stat data alone.
    let out = dest.path().join("job");
    assert_eq!(git(&out, &["diff-files", "--name-only"]), "");
    assert_eq!(git(&out, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&out, &["ls-files", "-s", "run.sh", "lib/latest.py"]),
        git(
            &clone.path().join("c"),
            &["ls-files", "-s", "run.sh", "lib/latest.py"]
        )
    );
}

/// Runs git in `dir` with `input` on stdin; returns its output, trimmed.
fn git_with_input(dir: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_tree_that_writes_into_dot_git_is_refused_with_exit_5() {
    // A commit git itself would never make: a `.git/hooks/post-checkout` entry in the tree, as a
    // hostile server could send (CVE-2014-9390 and its kin).
    let repos = Repos::new();
    let repo = repos.create("evil");
    let bare = &repo.bare;
    let hook = git_with_input(
        bare,
        &["hash-object", "-w", "--stdin"],
        "#!/bin/sh\necho pwned\n",
    );
    let code = git_with_input(bare, &["hash-object", "-w", "--stdin"], "print(1)\n");
    let hooks = git_with_input(
        bare,
        &["mktree"],
        &format!("100755 blob {hook}\tpost-checkout\n"),
    );
    let dot_git = git_with_input(bare, &["mktree"], &format!("040000 tree {hooks}\thooks\n"));
    let root = git_with_input(
        bare,
        &["mktree"],
        &format!("040000 tree {dot_git}\t.git\n100644 blob {code}\ttrain.py\n"),
    );
    let commit = git_with_input(
        bare,
        &[
            "-c",
            "user.name=x",
            "-c",
            "user.email=x@example.test",
            "commit-tree",
            &root,
            "-m",
            "evil",
        ],
        "",
    );
    git(bare, &["update-ref", "refs/heads/main", &commit]);
    git(bare, &["symbolic-ref", "HEAD", "refs/heads/main"]);
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &daemon.url("evil"), &[])
        .expect_code(5)
        .expect_output("refuses to write")
        .expect_output(".git/hooks/post-checkout");
    assert!(
        !dest.path().join("evil").exists(),
        "something was published"
    );
    assert_no_staging(dest.path());
}

#[test]
fn a_server_that_answers_http_1_0_and_closes_each_connection_works_as_with_git() {
    let repos = Repos::new();
    let (_repo, [_, _, third]) = three_commits(&repos);
    let server = GitHttp10::start(&repos.base());
    // git itself clones from it: the server is sound.
    let scratch = tempfile::tempdir().unwrap();
    git(
        scratch.path(),
        &["clone", "-q", "--depth", "1", &server.url("job"), "by-git"],
    );
    let dest = tempfile::tempdir().unwrap();
    localize(
        dest.path(),
        &format!("{}#depth=1", server.url("job")),
        &["--retries", "1"],
    )
    .expect_code(0);
    let out = dest.path().join("job");
    assert_eq!(recorded_commit(dest.path(), "job"), third);
    assert_eq!(tree_state(&out), tree_state(&scratch.path().join("by-git")));
    assert_eq!(git(&out, &["rev-list", "--count", "HEAD"]), "1");
    // The ref list and the pack came from this server, on connections it closed.
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("POST /job.git/git-upload-pack")),
        "{requests:?}"
    );
}

/// Every file under `dir/.git` (and the `.git` folders of submodules) that holds `needle`, with
/// its mode.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    use std::os::unix::fs::PermissionsExt;
                    found.push(format!(
                        "{} ({:o})",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn a_password_in_the_url_is_nowhere_under_dot_git_with_submodules_too() {
    let repos = Repos::new();
    let leaf = repos.create("leaf");
    leaf.commit(&[("leaf.txt", "leaf\n")], &[], "leaf");
    let top = repos.create("top");
    top.commit(&[("top.txt", "top\n")], &[], "top");
    top.git(&["submodule", "add", "-q", "../leaf.git", "deps/leaf"]);
    top.commit(&[], &[], "add leaf");
    top.git(&["tag", "v1"]);
    top.push();
    let http = GitHttp::start(&repos.base());
    let with_creds = http
        .private_url("top")
        .replace("http://", &format!("http://{HTTP_USER}:{HTTP_PASSWORD}@"));
    for reference in ["", "#ref=v1", "#depth=0"] {
        let dest = tempfile::tempdir().unwrap();
        localize(dest.path(), &format!("git+{with_creds}{reference}"), &[])
            .expect_code(0)
            .refute_output(HTTP_PASSWORD);
        let out = dest.path().join("top");
        // The relative submodule on the same server was fetched with the parent's credentials.
        assert_eq!(read(out.join("deps/leaf/leaf.txt")), "leaf\n");
        for needle in [HTTP_PASSWORD, HTTP_USER] {
            let found = files_holding(&out, needle);
            assert!(found.is_empty(), "{needle} ({reference}) is in {found:?}");
        }
        let found = files_holding(dest.path(), HTTP_PASSWORD);
        assert!(found.is_empty(), "password ({reference}) is in {found:?}");
        // Yet the checkout is an ordinary clone: origin is the server, without credentials.
        assert_eq!(
            git(&out, &["remote", "get-url", "origin"]),
            http.private_url("top")
        );
    }
}

#[test]
fn relative_submodule_urls_under_a_file_parent_resolve_as_git_does() {
    let repos = Repos::new();
    let leaf = repos.create("leaf");
    let leaf_sha = leaf.commit(&[("leaf.txt", "leaf\n")], &[], "leaf");
    let top = repos.create("top");
    top.commit(&[("top.txt", "top\n")], &[], "top");
    top.git(&["submodule", "add", "-q", "../leaf.git", "deps/leaf"]);
    top.commit(&[], &[], "add leaf");
    let parent = format!("file://{}", repos.base().join("top.git").display());
    // git itself checks it out.
    let scratch = tempfile::tempdir().unwrap();
    git(
        scratch.path(),
        &["clone", "-q", "--recurse-submodules", &parent, "by-git"],
    );
    assert_eq!(
        read(scratch.path().join("by-git/deps/leaf/leaf.txt")),
        "leaf\n"
    );
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &format!("git+{parent}"), &[]).expect_code(0);
    let out = dest.path().join("top");
    assert_eq!(read(out.join("deps/leaf/leaf.txt")), "leaf\n");
    assert_eq!(
        git(&out.join("deps/leaf"), &["rev-parse", "HEAD"]),
        leaf_sha
    );
    // The submodule's origin is where it came from, as in git's clone.
    assert_eq!(
        git(&out.join("deps/leaf"), &["remote", "get-url", "origin"]),
        format!("file://{}", repos.base().join("leaf.git").display())
    );
}

#[test]
fn a_submodule_name_that_climbs_out_of_modules_exits_5_and_publishes_nothing() {
    let repos = Repos::new();
    let leaf = repos.create("leaf");
    let leaf_sha = leaf.commit(&[("leaf.txt", "leaf\n")], &[], "leaf");
    let top = repos.create("top");
    // git refuses to make such a submodule; a hostile repository writes .gitmodules by hand.
    top.commit(
        &[
            ("top.txt", "top\n"),
            (
                ".gitmodules",
                "[submodule \"../../modules/evil\"]\n\tpath = evil\n\turl = ../leaf.git\n",
            ),
        ],
        &[],
        "top",
    );
    top.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{leaf_sha},evil"),
    ]);
    top.git(&["commit", "-q", "-m", "evil submodule"]);
    top.push();
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &daemon.url("top"), &[])
        .expect_code(5)
        .expect_output("../../modules/evil")
        .expect_output("nothing was published");
    assert!(!dest.path().join("top").exists());
    assert!(!dest.path().join("modules").exists());
    assert_no_staging(dest.path());
}

#[test]
fn git_sync_v4_variables_with_a_password_file() {
    let repos = Repos::new();
    let (repo, _) = three_commits(&repos);
    let http = GitHttp::start(&repos.base());
    let root = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("password");
    std::fs::write(&password_file, format!("{HTTP_PASSWORD}\n")).unwrap();
    let ran = run(periscope()
        .arg("localize")
        .env("GITSYNC_REPO", http.private_url("job"))
        // v4 names win over the v3 ones beside them.
        .env("GIT_SYNC_REPO", http.private_url("nope"))
        .env("GITSYNC_REF", "dev")
        .env("GITSYNC_DEPTH", "1")
        .env("GITSYNC_ROOT", root.path())
        .env("GITSYNC_LINK", root.path().join("current"))
        .env("GITSYNC_USERNAME", HTTP_USER)
        .env("GITSYNC_PASSWORD_FILE", &password_file));
    ran.expect_code(0).refute_output(HTTP_PASSWORD);
    let code = root.path().join("current");
    assert_eq!(listing(&code), ["dev.txt", "train.py"]);
    assert_eq!(
        recorded_commit(root.path(), "current"),
        repo.git(&["rev-parse", "dev"])
    );
    assert_eq!(git(&code, &["rev-list", "--count", "HEAD"]), "1");
}

/// `ssh-keyscan -H` of the server: what a user puts in the known_hosts Secret (hashed names).
fn keyscan_hashed(sshd: &Sshd) -> String {
    let out = std::process::Command::new("ssh-keyscan")
        .args([
            "-H",
            "-t",
            "ed25519",
            "-p",
            &sshd.port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("ssh-keyscan (openssh-client) runs");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("|1|"), "not hashed: {text}");
    text
}

#[test]
fn git_sync_v4_ssh_with_a_hashed_known_hosts_file() {
    let repos = Repos::new();
    let (_repo, [_, _, third]) = three_commits(&repos);
    let sshd = Sshd::start();
    let secrets = tempfile::tempdir().unwrap();
    let known = secrets.path().join("known_hosts");
    std::fs::write(&known, keyscan_hashed(&sshd)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let sync = |known: &Path| {
        run(periscope()
            .args(["localize", "--retries", "1"])
            .env("GITSYNC_REPO", sshd.url(&repos.base().join("job.git")))
            .env("GITSYNC_ROOT", root.path())
            .env("GITSYNC_LINK", "code")
            .env("GITSYNC_SSH", "true")
            .env("GITSYNC_SSH_KEY_FILE", sshd.client_key())
            .env("GITSYNC_SSH_KNOWN_HOSTS_FILE", known))
    };
    let ran = sync(&known);
    assert_eq!(ran.code, Some(0), "{ran:?}\nsshd log:\n{}", sshd.log());
    assert_eq!(recorded_commit(root.path(), "code"), third);
    // A hashed line for another host does not vouch for this one.
    let other = secrets.path().join("other_hosts");
    let scanned = keyscan_hashed(&sshd);
    let (name, rest) = scanned.split_once(' ').unwrap();
    let (salt, _) = name.trim_start_matches("|1|").split_once('|').unwrap();
    std::fs::write(
        &other,
        format!("|1|{salt}|AAAAAAAAAAAAAAAAAAAAAAAAAAA= {rest}"),
    )
    .unwrap();
    let root2 = tempfile::tempdir().unwrap();
    run(periscope()
        .args(["localize", "--retries", "1"])
        .env("GITSYNC_REPO", sshd.url(&repos.base().join("job.git")))
        .env("GITSYNC_ROOT", root2.path())
        .env("GITSYNC_SSH_KEY_FILE", sshd.client_key())
        .env("GITSYNC_SSH_KNOWN_HOSTS_FILE", &other))
    .expect_code(4)
    .expect_output("not in known_hosts");
}

/// Files at git-sync's default Secret mount, `/etc/git-secret/`, removed when dropped.
struct GitSecretMount;

const GIT_SECRET: &str = "/etc/git-secret";
const GIT_SECRET_MARK: &str = "/etc/git-secret/.made-by-periscope-tests";

impl GitSecretMount {
    fn with(files: &[(&str, &[u8])]) -> GitSecretMount {
        let dir = Path::new(GIT_SECRET);
        assert!(
            !dir.exists() || Path::new(GIT_SECRET_MARK).exists(),
            "{GIT_SECRET} exists and was not made by these tests: move it away to run this test"
        );
        std::fs::create_dir_all(dir).expect("create /etc/git-secret (tests run as root)");
        std::fs::write(GIT_SECRET_MARK, "").unwrap();
        for (name, bytes) in files {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(name))
                .unwrap();
            std::io::Write::write_all(&mut f, bytes).unwrap();
        }
        GitSecretMount
    }
}

impl Drop for GitSecretMount {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(GIT_SECRET);
    }
}

#[test]
fn submarine_ssh_mode_reads_the_key_and_known_hosts_from_etc_git_secret() {
    let repos = Repos::new();
    let (repo, _) = three_commits(&repos);
    let sshd = Sshd::start();
    // What Submarine's SSH localizer mounts: the key as `ssh`, known_hosts from `ssh-keyscan -H`.
    let _mount = GitSecretMount::with(&[
        ("ssh", &std::fs::read(sshd.client_key()).unwrap()),
        ("known_hosts", keyscan_hashed(&sshd).as_bytes()),
    ]);
    let root = tempfile::tempdir().unwrap();
    let ran = run(periscope()
        .arg("localize")
        .env("GIT_SYNC_REPO", sshd.url(&repos.base().join("job.git")))
        .env("GIT_SYNC_BRANCH", "dev")
        .env("GIT_SYNC_ROOT", root.path())
        .env("GIT_SYNC_DEST", "code")
        .env("GIT_SYNC_SSH", "true"));
    assert_eq!(ran.code, Some(0), "{ran:?}\nsshd log:\n{}", sshd.log());
    assert_eq!(
        recorded_commit(root.path(), "code"),
        repo.git(&["rev-parse", "dev"])
    );
    assert_eq!(listing(&root.path().join("code")), ["dev.txt", "train.py"]);
}

/// Bytes no pointer or text could be mistaken for: `len` bytes from a simple generator.
fn weights(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed) | 0x9e37_0000;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Where a test repository's LFS objects go.
enum LfsAt<'a> {
    /// This LFS server, configured in the pushing clone only (clients derive it from the URL).
    Server(&'a str),
    /// This LFS server, named in the committed `.lfsconfig`.
    LfsConfig(&'a str),
    /// The bare repository's own `lfs/objects/`, as git-lfs pushes to a local path.
    Local,
}

/// A repository `NAME` whose `*.bin` files are Git LFS files, committed and pushed with the real
/// git-lfs client. Returns the repository and the LFS files' contents by path.
fn lfs_repo(repos: &Repos, name: &str, at: LfsAt<'_>) -> (Repo, Vec<(String, Vec<u8>)>) {
    let repo = repos.create(name);
    repo.git(&["lfs", "install", "--local"]);
    match at {
        LfsAt::Server(url) => {
            repo.git(&["config", "lfs.url", url]);
        }
        LfsAt::LfsConfig(url) => {
            std::fs::write(
                repo.work.join(".lfsconfig"),
                format!("[lfs]\n\turl = {url}\n"),
            )
            .unwrap();
        }
        LfsAt::Local => {}
    }
    repo.git(&["lfs", "track", "*.bin"]);
    let files = vec![
        ("model/weights.bin".to_string(), weights(1, 300_000)),
        ("data/sample.bin".to_string(), weights(2, 4_097)),
        // The same object twice: fetched once, written to both files.
        ("data/copy.bin".to_string(), weights(2, 4_097)),
    ];
    for (path, bytes) in &files {
        let path = repo.work.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    repo.commit(&[("train.py", "print('train')\n")], &[], "weights in LFS");
    // What the server stores is a pointer, as git-lfs wrote it.
    let stored = git(&repo.bare, &["show", "HEAD:model/weights.bin"]);
    assert!(stored.starts_with("version https://git-lfs"), "{stored}");
    (repo, files)
}

fn assert_lfs_files(out: &Path, files: &[(String, Vec<u8>)]) {
    for (path, bytes) in files {
        let got = std::fs::read(out.join(path)).unwrap();
        assert!(
            got == *bytes,
            "{path}: {} bytes, not the LFS file",
            got.len()
        );
    }
    assert_eq!(read(out.join("train.py")), "print('train')\n");
}

#[test]
fn git_lfs_files_are_fetched_with_the_repository_credentials() {
    let repos = Repos::new();
    let lfs = LfsServer::start();
    let (_repo, files) = lfs_repo(
        &repos,
        "job",
        LfsAt::Server(&lfs.endpoint("private", "job")),
    );
    let http = GitHttp::start_with_lfs(&repos.base(), lfs.port);
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("password");
    std::fs::write(&password_file, HTTP_PASSWORD).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let ran = localize(
        dest.path(),
        &format!("git+{}", http.private_url("job")),
        &[
            "--git-username",
            HTTP_USER,
            "--git-password-file",
            password_file.to_str().unwrap(),
        ],
    );
    assert_eq!(ran.code, Some(0), "{ran:?}\ngiftless:\n{}", lfs.log());
    let out = dest.path().join("job");
    assert_lfs_files(&out, &files);
    // The batch API was asked beside the repository, behind the same Basic auth.
    assert!(http.counts.lfs.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let record = recorded(dest.path(), "job");
    // The record counts the files, not their pointers.
    let attributes = std::fs::metadata(out.join(".gitattributes")).unwrap().len();
    assert_eq!(
        record["bytes"].as_u64().unwrap(),
        300_000 + 2 * 4_097 + 15 + attributes
    );
    assert!(!out.join(".git/lfs").exists());
}

#[test]
fn lfsconfig_names_the_lfs_server_and_a_wrong_or_missing_object_publishes_nothing() {
    let repos = Repos::new();
    let lfs = LfsServer::start();
    let (_repo, files) = lfs_repo(
        &repos,
        "job",
        LfsAt::LfsConfig(&lfs.endpoint("public", "job")),
    );
    // Over git://, the LFS server named in .lfsconfig is used.
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    let ran = localize(dest.path(), &daemon.url("job"), &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}\ngiftless:\n{}", lfs.log());
    assert_lfs_files(&dest.path().join("job"), &files);

    // Same length, other bytes: only the sha256 can tell. Exit 5, nothing published.
    let stored = lfs.stored(&sha256_hex(&files[0].1));
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &daemon.url("job"), &[])
        .expect_code(5)
        .expect_output("model/weights.bin")
        .expect_output("sha256");
    assert!(!dest.path().join("job").exists());
    assert_no_staging(dest.path());

    // Gone from the server: exit 3, nothing published.
    std::fs::remove_file(&stored).unwrap();
    localize(dest.path(), &daemon.url("job"), &[])
        .expect_code(3)
        .expect_output("model/weights.bin");
    assert!(!dest.path().join("job").exists());
    assert_no_staging(dest.path());
}

#[test]
fn git_lfs_without_an_http_server_is_refused_over_git_and_read_from_a_local_repository() {
    let repos = Repos::new();
    let (_repo, files) = lfs_repo(&repos, "job", LfsAt::Local);
    let daemon = GitDaemon::start(&repos.base(), false);
    let dest = tempfile::tempdir().unwrap();
    // Pointer files are never published silently.
    localize(dest.path(), &daemon.url("job"), &[])
        .expect_code(2)
        .expect_output("Git LFS")
        .expect_output("GIT_LFS_SKIP_SMUDGE");
    assert!(!dest.path().join("job").exists());
    // Unless asked for, with git-lfs's own switch.
    run(periscope()
        .args(["localize", "--dest"])
        .arg(dest.path())
        .args(["--source", &daemon.url("job")])
        .env("GIT_LFS_SKIP_SMUDGE", "1"))
    .expect_code(0)
    .expect_output("GIT_LFS_SKIP_SMUDGE");
    let pointer = read(dest.path().join("job/model/weights.bin"));
    assert!(pointer.starts_with("version https://git-lfs"), "{pointer}");
    // A local repository keeps its objects beside it: they are read from there.
    let dest = tempfile::tempdir().unwrap();
    let url = format!("git+file://{}", repos.base().join("job.git").display());
    localize(dest.path(), &url, &[]).expect_code(0);
    assert_lfs_files(&dest.path().join("job"), &files);
}
