//! The TLS crypto provider of every HTTPS client Periscope builds (reqwest, object_store).
//!
//! rustls needs a process-wide crypto provider. We ship *ring* rather than aws-lc-rs, the
//! default of reqwest and object_store: the static binary has a hard size limit and aws-lc-rs
//! costs about a megabyte more for no feature we use. reqwest built without a provider panics when
//! a client is built before one is installed, so every place that builds an HTTPS client calls
//! [`ensure_provider`] first; git over HTTP(S) is carried by reqwest too (libgit2 speaks only the
//! protocol over it).

/// Installs ring as the process's rustls provider; later calls (and a provider installed by
/// someone else first) are no-ops.
pub fn ensure_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_can_be_built_after_ensure_provider() {
        super::ensure_provider();
        super::ensure_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        reqwest::Client::builder()
            .build()
            .expect("client with ring");
    }
}
