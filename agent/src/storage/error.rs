//! How storage failures are classified and shown: one error type for every store, its class
//! decided from object_store's error ([`classify`]), its text free of credentials ([`scrub`]).

use super::service::Service;
use crate::error::{Classify, ErrorClass};
use crate::redact::redact_url;

/// A store that could not be built or a request that failed. The message is already free of
/// credentials (see [`scrub`]).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL cannot name an object store location.
    #[error("`{shown}` is not a usable object store URL: {reason}")]
    BadUrl { shown: String, reason: String },
    /// The environment does not configure the service well enough to build a client.
    #[error("cannot configure {} for `{shown}`: {message}", service.name())]
    Config {
        service: Service,
        shown: String,
        message: String,
    },
    /// A request failed; `class` was decided by [`classify`].
    #[error("{} `{what}`: {message}", service.name())]
    Request {
        service: Service,
        class: ErrorClass,
        /// The object, prefix or URL the request was about.
        what: String,
        message: String,
    },
}

impl StorageError {
    /// Wraps an object_store failure about `what` (a key or redacted URL).
    pub fn request(service: Service, what: impl Into<String>, error: &object_store::Error) -> Self {
        StorageError::Request {
            service,
            class: classify(error),
            what: what.into(),
            message: scrub(&crate::error::chain(error)),
        }
    }
}

impl Classify for StorageError {
    fn class(&self) -> ErrorClass {
        match self {
            StorageError::BadUrl { .. } | StorageError::Config { .. } => ErrorClass::Usage,
            StorageError::Request { class, .. } => *class,
        }
    }

    fn hint(&self) -> Option<String> {
        let text = match self {
            StorageError::BadUrl { .. } => {
                "object store URLs look like s3://bucket/prefix/, gs://bucket/key, az://container/key or file:///path"
                    .to_string()
            }
            StorageError::Config { service, .. } => {
                format!("set the standard environment: {}", service.credential_hint())
            }
            StorageError::Request {
                service,
                class,
                message,
                ..
            } => match class {
                ErrorClass::NotFound => {
                    "check the bucket and key; a prefix must end with `/`".to_string()
                }
                ErrorClass::Auth if asked_metadata_service(message) => {
                    service.no_credentials_hint().to_string()
                }
                ErrorClass::Auth => service.credential_hint().to_string(),
                ErrorClass::Network => service.endpoint_hint().to_string(),
                ErrorClass::Usage => service.endpoint_hint().to_string(),
                _ => return None,
            },
        };
        Some(text)
    }
}

/// What kind of failure an object_store error is, as a user acts on it.
///
/// object_store keeps HTTP statuses of some requests (listing, for one) inside a private error
/// type, visible only in its message; the message is the only stable place left to read them from.
pub fn classify(error: &object_store::Error) -> ErrorClass {
    use object_store::Error as E;
    // Only a client without configured credentials asks the metadata service; that it failed
    // (unreachable off the cloud, most often) means the user gave no usable credentials.
    if asked_metadata_service(&crate::error::chain(error)) {
        return ErrorClass::Auth;
    }
    match error {
        E::NotFound { .. } => return ErrorClass::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => return ErrorClass::Auth,
        E::InvalidPath { .. } => return ErrorClass::Integrity,
        E::UnknownConfigurationKey { .. } | E::NotSupported { .. } | E::NotImplemented { .. } => {
            return ErrorClass::Usage
        }
        E::Precondition { .. } | E::NotModified { .. } => return ErrorClass::Network,
        _ => {}
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<object_store::client::HttpError>()
            .is_some()
        {
            return ErrorClass::Network;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::NotFound => ErrorClass::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorClass::Io,
                _ => ErrorClass::Io,
            };
        }
        if let Some(status) = status_in(&e.to_string()) {
            return match status {
                404 => ErrorClass::NotFound,
                401 | 403 => ErrorClass::Auth,
                // A wrong region or a malformed request: the configuration is wrong.
                400 | 301 | 307 => ErrorClass::Usage,
                _ => ErrorClass::Network,
            };
        }
        source = e.source();
    }
    // The server answered something we could not use (an unexpected body, a redirect loop).
    ErrorClass::Network
}

/// Whether an error came from a request to a cloud metadata service for credentials: AWS
/// instance metadata (IMDSv2 token or role credentials), Azure managed identity, GCE metadata.
fn asked_metadata_service(message: &str) -> bool {
    const PATHS: [&str; 4] = [
        "/latest/api/token",
        "/latest/meta-data/iam/security-credentials",
        "/metadata/identity/oauth2/token",
        "/computeMetadata/v1/",
    ];
    PATHS.iter().any(|p| message.contains(p))
}

fn status_in(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

/// Removes credentials from an error text: every URL in it goes through [`redact_url`] (which hides
/// query values such as SAS signatures), and the text is cut to one line.
pub fn scrub(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    one_line
        .split(' ')
        .map(|word| {
            if word.contains("://") {
                redact_url(word)
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses_hidden_in_messages() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.to_string().into(),
        };
        let cases = [
            (
                "Server returned non-2xx status code: 404 Not Found: NoSuchBucket",
                ErrorClass::NotFound,
            ),
            (
                "Server returned non-2xx status code: 403 Forbidden: ",
                ErrorClass::Auth,
            ),
            (
                "Server returned non-2xx status code: 503 Service Unavailable",
                ErrorClass::Network,
            ),
            (
                "Server returned non-2xx status code: 400 Bad Request",
                ErrorClass::Usage,
            ),
        ];
        for (msg, class) in cases {
            assert_eq!(classify(&generic(msg)), class, "{msg}");
        }
    }

    #[test]
    fn a_failed_metadata_credential_request_means_no_credentials() {
        let imds = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://169.254.169.254/latest/api/token in 2s, after 7 retries: HTTP error: error sending request".into(),
        };
        assert_eq!(classify(&imds), ErrorClass::Auth);
        let e = StorageError::request(Service::S3, "s3://b/k", &imds);
        let hint = e.hint().unwrap_or_default();
        assert!(hint.starts_with("no AWS credentials were found"), "{hint}");
        // A refused request to the bucket itself keeps the ordinary credentials hint.
        let denied = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 403 Forbidden: ".into(),
        };
        let e = StorageError::request(Service::S3, "s3://b/k", &denied);
        assert!(e
            .hint()
            .unwrap_or_default()
            .starts_with("check AWS_ACCESS_KEY_ID"));
    }

    #[test]
    fn scrub_hides_query_secrets() {
        let shown = scrub(
            "Error performing GET https://acct.blob.core.windows.net/c/k?sig=SECRET&sv=1 in 2s",
        );
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("acct.blob.core.windows.net"), "{shown}");
    }
}
