//! Running `periscope localize` as the localize tests do.

use std::path::Path;

use super::{periscope, run, Ran};

/// Runs `periscope localize --dest DEST --source SRC` plus `extra`.
pub fn localize(dest: &Path, source: &str, extra: &[&str]) -> Ran {
    localize_env(&[], dest, source, extra)
}

/// [`localize`] with extra environment variables.
pub fn localize_env(env: &[(&str, String)], dest: &Path, source: &str, extra: &[&str]) -> Ran {
    let mut cmd = periscope();
    cmd.args(["localize", "--dest"])
        .arg(dest)
        .args(["--source", source])
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}
