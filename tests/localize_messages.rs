//! What `periscope localize` says while it works and when it is done: one line per source, and
//! for a host that does not resolve, one short line per try naming it, whatever the source.

use crate::harness::git::{GitHttp, Repos};
use crate::harness::localize::{localize, localize_env};

/// A source already in place says when it was fetched, not how long a fetch took (nothing was
/// fetched); and each run says what became of the source once, not also in a log line.
#[test]
fn an_unchanged_source_says_when_it_was_fetched_and_each_source_is_said_once() {
    let repos = Repos::new();
    let repo = repos.create("job");
    repo.commit(&[("a.txt", "a\n")], &[], "one");
    let http = GitHttp::start(&repos.base());
    let dest = tempfile::tempdir().unwrap();
    let url = format!("git+{}", http.url("job"));

    let first = localize(dest.path(), &url, &[]);
    first.expect_code(0);
    let line = first.stdout.trim();
    assert!(
        line.starts_with("localized ") && line.ends_with("s)"),
        "{line}"
    );
    assert!(
        !first.stderr.contains("localized"),
        "the summary is said twice:\n{}",
        first.stderr
    );

    let again = localize(dest.path(), &url, &[]);
    again.expect_code(0);
    let line = again.stdout.trim();
    assert!(line.starts_with("unchanged "), "{line}");
    // The fetch time of the first run, as a date, not as if it had just taken that long.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        line.contains(&format!("localized {today} ")) && line.ends_with(" UTC)"),
        "{line}"
    );
    assert!(
        !again.stderr.contains("localized"),
        "the summary is said twice:\n{}",
        again.stderr
    );
}

/// A host name that can never resolve, refused by the system resolver itself (a label longer
/// than DNS allows), so no DNS server is asked: to Periscope it is a mistyped host like any
/// other. Plain http, because TLS refuses such a name before anything is resolved.
fn unresolvable_host() -> String {
    format!("mistyped-{}.test", "a".repeat(60))
}

/// A mistyped host is retried (a pod may start before DNS answers), one short line per failed
/// try naming the host, for git, archives and object stores alike, then exit 6.
#[test]
fn a_host_that_does_not_resolve_is_said_in_one_short_line_per_try() {
    let host = unresolvable_host();
    let dest = tempfile::tempdir().unwrap();
    let s3_env = [
        ("AWS_ENDPOINT_URL", format!("http://{host}:9000")),
        ("AWS_ACCESS_KEY_ID", "AKIDTESTTEST".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test-secret-key".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let none: &[(&str, String)] = &[];
    let cases = [
        ("git", format!("git+http://{host}/org/job.git"), none),
        ("archive", format!("http://{host}/job.tar.gz"), none),
        ("object store", "s3://jobs/job-1/".to_string(), &s3_env[..]),
    ];
    for (what, source, env) in cases {
        let ran = localize_env(env, dest.path(), &source, &["--retries", "3"]);
        ran.expect_code(6);
        let lines: Vec<&str> = ran.stderr.lines().collect();
        let said = |n| format!("cannot resolve host `{host}` (try {n} of 3");
        // Two retries: two lines, each short and naming the host; then the error and its hint.
        assert_eq!(lines.len(), 4, "{what}:\n{}", ran.stderr);
        for (line, n) in lines.iter().zip([1, 2]) {
            assert!(
                line.contains(" WARN ") && line.contains(&said(n)),
                "{what}: {line}"
            );
            assert!(line.len() < 200, "{what}: a long line: {line}");
        }
        assert!(lines[2].starts_with("error: "), "{what}: {}", lines[2]);
        if what != "object store" {
            assert!(
                lines[2].ends_with(&format!("cannot resolve host `{host}`")),
                "{what}: {}",
                lines[2]
            );
        }
    }
}
