//! What `periscope localize` says while it works and when it is done: one line per source, and
//! for a host that does not resolve, one short line per try naming it, whatever the source.

use crate::harness::git::{GitHttp, Repos};
use crate::harness::localize::localize;

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
