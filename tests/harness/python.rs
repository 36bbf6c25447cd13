//! Runs the Python scripts in `tests/python/` with the test venv's interpreter (TensorBoard,
//! tensorboardX), so tests can make inputs with the real writers and check output against the
//! real readers.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// The path of a script in `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/python")
        .join(name)
}

/// Runs `tests/python/<name>` with `args` and returns its stdout; panics with its stderr when it
/// fails, so a broken tool never looks like a passing test.
pub fn run_script<I, S>(name: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(super::python())
        .arg(script(name))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("cannot start the venv's python");
    assert!(
        out.status.success(),
        "{name} failed ({})\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("script output is UTF-8")
}
