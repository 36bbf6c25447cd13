//! Extra CA certificates from a PEM bundle, for private endpoints.

use std::path::Path;

use reqwest::Certificate;

/// The certificates of the PEM bundle at `path`, for reqwest's `tls_certs_merge`. The error says
/// why (unreadable, malformed, no certificate in it) without the path, which callers add.
pub fn certs(path: &Path) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs = Certificate::from_pem_bundle(&pem).map_err(|e| super::reqwest_text(&e))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert_eq!(
            super::certs(&empty).unwrap_err(),
            "no PEM certificate in it"
        );
        assert!(super::certs(&dir.path().join("missing.pem")).is_err());
    }
}
