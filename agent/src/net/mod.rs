//! What every HTTPS client of Periscope shares (reqwest's for archives, git over HTTP(S) and
//! MLflow, object_store's for the clouds): the TLS crypto provider ([`tls`]), CA bundles from PEM
//! files ([`ca`]), and error texts without the URLs reqwest puts in them ([`reqwest_text`]).

pub mod ca;
pub mod tls;

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
