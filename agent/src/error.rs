//! How failures are classified.
//!
//! Every library error type implements [`Classify`], so the CLI can turn any failure into a
//! documented exit code and a hint without knowing which module produced it. Library code decides
//! *what kind* of failure happened; only `main.rs` decides what number and words that becomes.

/// The kind of a failure, as a user acts on it. Each class has one exit code (see `main.rs` and
/// the README's exit-code table); adding a class means documenting a new code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad flags, a malformed URL or option, a missing setting: fix the command line.
    Usage,
    /// The server answered, but the thing is not there (404, unknown ref, missing object).
    NotFound,
    /// Credentials were missing or refused (401/403, git auth, unknown SSH host key).
    Auth,
    /// The data is wrong or unsafe: checksum mismatch, hostile archive entry, size over a limit.
    Integrity,
    /// The server could not be reached or kept failing after every retry.
    Network,
    /// A local filesystem operation failed (permissions, disk full).
    Io,
    /// Input was read to its end, but some of it was damaged (e.g. corrupt tf.events records).
    Damaged,
    /// A bug or an unexpected state inside Periscope.
    Internal,
}

/// Implemented by every error type the library returns.
pub trait Classify {
    /// What kind of failure this is.
    fn class(&self) -> ErrorClass;

    /// One sentence telling the user what to do about it, when there is something specific to say
    /// beyond the class's generic hint.
    fn hint(&self) -> Option<String> {
        None
    }
}

/// An error and its sources on one line, `outer: inner: innermost`, leaving out a source whose
/// text the line already holds (many errors repeat their source in their own message).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_chain_names_each_source_once() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(super::chain(&Outer(io())), "outer: disk full");
        assert_eq!(super::chain(&Repeats(io())), "outer: disk full");
    }
}
