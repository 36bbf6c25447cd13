//! Turning a `--storage` value into a URL: object store URLs as they are, bare paths as `file://`.

use std::path::Path;

use periscope::error::ErrorClass;
use url::Url;

use super::Failure;

/// Parses a storage location. A relative path is taken from the current folder.
pub fn parse(text: &str) -> Result<Url, Failure> {
    if text.contains("://") {
        return Url::parse(text).map_err(|e| {
            Failure::new(
                ErrorClass::Usage,
                format!("storage `{}` is not a valid URL: {e}", periscope::redact::redact_url(text)),
                Some("use s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///path".into()),
            )
        });
    }
    let path = Path::new(text);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| {
                Failure::new(
                    ErrorClass::Io,
                    format!("cannot read the current folder: {e}"),
                    None,
                )
            })?
            .join(path)
    };
    std::fs::create_dir_all(&absolute).map_err(|e| {
        Failure::new(
            ErrorClass::Io,
            format!("cannot create `{}`: {e}", absolute.display()),
            None,
        )
    })?;
    Url::from_directory_path(&absolute).map_err(|()| {
        Failure::new(
            ErrorClass::Usage,
            format!("`{}` is not a usable folder", absolute.display()),
            None,
        )
    })
}
