//! The command line itself: help, version, usage errors and their exit codes.

use crate::harness::{periscope, run};

#[test]
fn version_prints_the_crate_version() {
    run(periscope().arg("version"))
        .expect_code(0)
        .expect_output(concat!("periscope ", env!("CARGO_PKG_VERSION")));
}

#[test]
fn localize_help_teaches_the_source_grammar() {
    let ran = run(periscope().args(["localize", "--help"]));
    ran.expect_code(0)
        .expect_output("git+https://")
        .expect_output("sha256=")
        .expect_output("GIT_SYNC_REPO")
        .expect_output("PERISCOPE_DEST");
}

#[test]
fn bad_source_is_a_usage_error_with_exit_2_and_no_secret() {
    let dest = tempfile::tempdir().unwrap();
    let ran = run(periscope().args([
        "localize",
        "--dest",
        dest.path().to_str().unwrap(),
        "--source",
        "https://bob:hunter2@h.invalid/job.tar.gz#colour=blue",
    ]));
    ran.expect_code(2)
        .expect_output("unknown option `colour`")
        .refute_output("hunter2");
}

#[test]
fn no_source_at_all_is_a_usage_error() {
    let dest = tempfile::tempdir().unwrap();
    run(periscope().args(["localize", "--dest", dest.path().to_str().unwrap()]))
        .expect_code(2)
        .expect_output("no --source");
}

#[test]
fn final_error_goes_to_the_termination_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    run(periscope()
        .args(["localize", "--dest"])
        .arg(dir.path().join("dest"))
        .args(["--source", "ftp://h.invalid/x.tar", "--termination-log"])
        .arg(&log))
    .expect_code(2);
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("unsupported scheme `ftp`"), "{written}");
}

#[test]
fn test_ca_signs_a_leaf_for_localhost() {
    let ca = crate::harness::tls::TestCa::new();
    // The leaf verifies against the CA for the names our test servers use.
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca.ca_cert)
        .args(["-verify_hostname", "localhost", "-verify_ip", "127.0.0.1"])
        .arg(&ca.leaf_cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _config = ca.server_config();
}

/// Every environment variable a command reads is in the README's configuration reference, so the
/// reference cannot fall behind the flags.
#[test]
fn readme_lists_every_environment_variable_the_cli_reads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut missing = Vec::new();
    for command in [
        vec!["--help"],
        vec!["localize", "--help"],
        vec!["exec", "--help"],
        vec!["sidecar", "--help"],
        vec!["run", "--help"],
        vec!["logs", "--help"],
        vec!["tfevents", "scalars", "--help"],
        vec!["metrics", "--help"],
        vec!["runs", "--help"],
        vec!["install", "--help"],
        vec!["artifacts", "push", "--help"],
    ] {
        let help = run(periscope().args(&command)).stdout;
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !readme.contains(&format!("`{name}`")) {
                missing.push(format!("{name} ({})", command.join(" ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the README's configuration reference: {missing:?}"
    );
}
