//! Turning a `--storage` value into a URL: object store URLs as they are, folders as `file://`.
//!
//! The rule, as `--help` states it: text that begins like a URL (`word:`) must be a URL of an
//! object store (`s3://`, `gs://`, `az://`, `file://`…), so `s3:/bucket/x` is refused rather than
//! taken for a folder named `s3:`; anything else is a folder, absolute or relative to the current
//! one (`./relative` always works).

use std::path::Path;

use periscope::error::ErrorClass;
use periscope::redact::redact_url;
use url::Url;

use super::Failure;

/// What every refusal of a storage location suggests.
const FORMS: &str = "write s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or \
                     file:///path; a local folder is an absolute path or ./relative";

/// `(scheme, rest)` when `text` begins like a URL: a letter, then letters, digits, `+`, `-` or
/// `.`, then `:`.
pub fn scheme_of(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some((scheme, rest))
}

/// Parses a storage location (see the module docs). A folder is created when missing.
pub fn parse(text: &str) -> Result<Url, Failure> {
    let usage = |message: String| Failure::new(ErrorClass::Usage, message, Some(FORMS.into()));
    if let Some((scheme, rest)) = scheme_of(text) {
        let shown = redact_url(text);
        if !rest.starts_with("//") {
            return Err(usage(format!(
                "storage `{shown}` begins like a URL but `{scheme}:` is not followed by `//`"
            )));
        }
        let url = Url::parse(text)
            .map_err(|e| usage(format!("storage `{shown}` is not a valid URL: {e}")))?;
        periscope::storage::locate(&url)?;
        return Ok(url);
    }
    let absolute = std::path::absolute(Path::new(text)).map_err(|e| {
        Failure::new(
            ErrorClass::Io,
            format!("cannot read the current folder: {e}"),
            None,
        )
    })?;
    std::fs::create_dir_all(&absolute).map_err(|e| {
        Failure::new(
            ErrorClass::Io,
            format!("cannot create `{}`: {e}", absolute.display()),
            None,
        )
    })?;
    Url::from_directory_path(&absolute)
        .map_err(|()| usage(format!("`{}` is not a usable folder", absolute.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_like_text_must_be_a_store_url_and_anything_else_is_a_folder() {
        for bad in [
            "s3:/bucket/x",
            "s3:bucket",
            "sss://bucket/x",
            "s3:///x",
            "gs:",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.class, ErrorClass::Usage, "{bad}: {}", e.message);
        }
        assert_eq!(parse("s3://bucket/x").unwrap().as_str(), "s3://bucket/x");
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("store");
        let url = parse(folder.to_str().unwrap()).unwrap();
        assert_eq!(url.to_file_path().unwrap(), folder);
        assert!(folder.is_dir());
        assert_eq!(scheme_of("./a:b"), None);
        assert_eq!(
            scheme_of("mysql+pymysql://x"),
            Some(("mysql+pymysql", "//x"))
        );
    }
}
