//! Where the reading commands (`metrics`, `runs`) find what `periscope run` and `periscope
//! sidecar` wrote when no flag says: in the one data folder both use by default.

use std::path::{Path, PathBuf};

use periscope::error::ErrorClass;
use periscope::metrics::{MetastoreUrl, SqliteStore};

use super::Failure;

/// The data folder every command defaults to.
pub const DEFAULT: &str = "periscope-data";

/// The metastore to read: `--metastore` (a URL or a path), else the first that exists of
/// `<data-dir>/metastore.db` (what `run` writes) and `<state-dir>/metastore.db` (the sidecar's
/// default, `<data-dir>/state` unless given).
pub fn metastore(
    flag: Option<&str>,
    data_dir: &Path,
    state_dir: Option<&Path>,
) -> Result<SqliteStore, Failure> {
    if let Some(flag) = flag.filter(|f| !f.trim().is_empty()) {
        return match MetastoreUrl::parse(flag.trim())? {
            MetastoreUrl::Sqlite(path) => open(&path, std::slice::from_ref(&path)),
            MetastoreUrl::Mlflow(server) => Err(Failure::new(
                ErrorClass::Usage,
                format!("Periscope reads the embedded SQLite metastore only, not {server}"),
                Some("read MLflow runs in the MLflow UI or with the mlflow client".into()),
            )),
            MetastoreUrl::MySql(url) => Err(Failure::new(
                ErrorClass::Usage,
                format!(
                    "Periscope reads the embedded SQLite metastore only, not {}",
                    url.shown()
                ),
                Some("query Submarine's metric and param tables with a MySQL client".into()),
            )),
        };
    }
    let state = state_dir.map_or_else(|| data_dir.join("state"), Path::to_path_buf);
    let tried = [data_dir.join("metastore.db"), state.join("metastore.db")];
    match tried.iter().find(|p| p.exists()) {
        Some(path) => open(path, &tried),
        None => open(&tried[0], &tried),
    }
}

/// Opens an existing SQLite metastore; a missing one is a not-found failure that names where
/// it looked and the flags that point elsewhere.
fn open(path: &Path, tried: &[PathBuf]) -> Result<SqliteStore, Failure> {
    if !path.exists() {
        let places: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        return Err(Failure::new(
            ErrorClass::NotFound,
            format!("no metastore at {}", places.join(" or ")),
            Some(
                "run `periscope run` or `periscope sidecar` first, or point at theirs with \
                 --data-dir DIR or --metastore PATH"
                    .into(),
            ),
        ));
    }
    Ok(SqliteStore::open_existing(path)?)
}
