//! What every HTTPS client of Periscope shares (reqwest's for archives, git over HTTP(S) and
//! MLflow, object_store's for the clouds): the TLS crypto provider ([`tls`]), CA bundles from PEM
//! files ([`ca`]), the proxy rule ([`proxy`]), object_store's HTTP client built by that rule
//! ([`store_client`]), error texts without the URLs reqwest puts in them ([`reqwest_text`]), and
//! the one short line said for a host that does not resolve ([`warn_unresolved`]).

pub mod ca;
pub mod proxy;
pub mod store_client;
pub mod tls;

use std::time::Duration;

/// A reqwest error and its sources on one line, without the URL reqwest adds (it may hold a
/// token in its query; callers name what they fetched themselves).
pub fn reqwest_text(e: &reqwest::Error) -> String {
    let text = crate::error::chain(e);
    text.split(": ")
        .map(|part| match part.find(" for url (") {
            Some(i) => &part[..i],
            None => part,
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// Whether `error` or one of its causes says that a host name did not resolve (reqwest's and
/// hyper's `dns error`, the resolver's own text, libgit2's `failed to resolve address`).
pub fn is_dns_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if says_dns_failure(&e.to_string()) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Whether a message says that a host name did not resolve.
pub fn says_dns_failure(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "dns error",
        "failed to lookup address",
        "failed to resolve address",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// The one line said when a try failed because `host` did not resolve and another will follow:
/// short, naming the host, for git, archives and object stores alike. A pod may start before
/// cluster DNS answers, so such a failure is retried like any network failure.
pub fn warn_unresolved(host: &str, attempt: u32, attempts: u32, wait: Option<Duration>) {
    let attempt = attempt.min(attempts);
    match wait {
        Some(wait) => tracing::warn!(
            "cannot resolve host `{host}` (try {attempt} of {attempts}; next in {:.1}s)",
            wait.as_secs_f64()
        ),
        None => tracing::warn!("cannot resolve host `{host}` (try {attempt} of {attempts})"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns_failures_are_told_apart_from_other_connect_errors() {
        assert!(super::says_dns_failure(
            "error sending request: client error (Connect): dns error: failed to lookup address \
             information: Name or service not known"
        ));
        assert!(super::says_dns_failure(
            "failed to resolve address for no-such-host.invalid: Name or service not known"
        ));
        assert!(!super::says_dns_failure(
            "error sending request: client error (Connect): tcp connect error: Connection refused"
        ));
    }
}
