//! Git's smart HTTP protocol, spoken through reqwest instead of libgit2's own HTTP client.
//!
//! libgit2's client reads a reply body only when the reply has a `Content-Length` or is chunked,
//! so a server that answers HTTP/1.0 and ends each reply by closing the connection (Python's
//! `http.server` in front of `git http-backend`, many small proxies) looks to it like an empty ref
//! list. reqwest reads such bodies to the end as curl (and so git) does, and brings the TLS
//! settings (`--ca-file`, `GIT_SSL_NO_VERIFY`), timeouts and proxy handling every other HTTP
//! download of Periscope has.
//!
//! libgit2 still speaks the git protocol; this module only carries its bytes: `GET
//! …/info/refs?service=git-upload-pack` for the ref list, one `POST …/git-upload-pack` per
//! negotiation round (the stateless RPC mode git uses over HTTP). Credentials are sent only to the
//! origin (scheme, host, port) of the source the user named, never to another host a repository
//! points at. libgit2 calls a transport on the thread that started the fetch, so the session in
//! force is handed over in a thread-local [`Scope`], and a failure is handed back the same way,
//! typed, through [`take_failure`].

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use git2::Remote;

use super::error::GitError;
use super::session::Session;
use crate::net::reqwest_text as chain;

thread_local! {
    /// The session of the fetch running on this thread, while a [`Scope`] lives.
    static CURRENT: RefCell<Option<Scoped>> = const { RefCell::new(None) };
    /// What the last failed request on this thread was, typed.
    static FAILURE: RefCell<Option<GitError>> = const { RefCell::new(None) };
}

/// The session and runtime the transport on this thread uses.
#[derive(Clone)]
struct Scoped {
    session: Session,
    runtime: tokio::runtime::Handle,
}

/// While alive, git over HTTP(S) on this thread uses `session`. Invariant: at most one per thread
/// (a fetch and its submodules run one after another on one thread).
pub struct Scope(());

impl Scope {
    /// Makes `session` the one git over HTTP(S) uses on this thread. Must run on a thread of the
    /// tokio runtime's blocking pool (the caller runs every git step there).
    pub fn enter(session: &Session) -> Result<Scope, GitError> {
        register()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| GitError::Internal("git over HTTP ran outside the runtime".into()))?;
        CURRENT.with(|c| {
            *c.borrow_mut() = Some(Scoped {
                session: session.clone(),
                runtime,
            })
        });
        FAILURE.with(|f| f.borrow_mut().take());
        Ok(Scope(()))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

/// The typed failure of the last HTTP request that failed on this thread, if any: it says more
/// than the message libgit2 keeps.
pub fn take_failure() -> Option<GitError> {
    FAILURE.with(|f| f.borrow_mut().take())
}

fn fail(error: GitError) -> io::Error {
    let message = error.to_string();
    FAILURE.with(|f| *f.borrow_mut() = Some(error));
    io::Error::other(message)
}

/// Installs this transport for `http://` and `https://` in libgit2, once per process.
fn register() -> Result<(), GitError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            for scheme in ["http", "https"] {
                // SAFETY: registration happens once, before the first remote of this process is
                // created (every git step enters a Scope first), so no transport is being looked
                // up while the list changes.
                unsafe { git2::transport::register(scheme, factory) }
                    .map_err(|e| e.message().to_string())?;
            }
            Ok(())
        })
        .clone()
        .map_err(GitError::Internal)
}

fn factory(remote: &Remote<'_>) -> Result<Transport, git2::Error> {
    Transport::smart(remote, true, SmartHttp::default())
}

/// One libgit2 transport (one remote connection). Invariant: `base` is the repository URL the
/// server answered the ref list at (after redirects), once it has.
#[derive(Default)]
struct SmartHttp {
    base: Arc<Mutex<Option<String>>>,
}

impl SmartSubtransport for SmartHttp {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let scoped = CURRENT.with(|c| c.borrow().clone()).ok_or_else(|| {
            git2::Error::from_str("internal error: git over HTTP without a session")
        })?;
        let repo = url.trim_end_matches('/').to_string();
        let call = match action {
            Service::UploadPackLs => Call::RefList {
                url: format!("{repo}/info/refs?service=git-upload-pack"),
            },
            Service::UploadPack => {
                let base = self
                    .base
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or(repo);
                Call::Negotiate {
                    url: format!("{base}/git-upload-pack"),
                }
            }
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(git2::Error::from_str("Periscope never pushes"));
            }
        };
        Ok(Box::new(Exchange {
            scoped,
            call,
            request: Vec::new(),
            response: None,
            pending: Bytes::new(),
            base: self.base.clone(),
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// Which request an exchange makes.
enum Call {
    RefList { url: String },
    Negotiate { url: String },
}

/// One request and its reply, as the byte stream libgit2 reads and writes. Invariant: nothing is
/// written after the request was sent (the first read sends it).
struct Exchange {
    scoped: Scoped,
    call: Call,
    request: Vec<u8>,
    response: Option<reqwest::Response>,
    /// Bytes of the reply received and not yet read.
    pending: Bytes,
    base: Arc<Mutex<Option<String>>>,
}

impl Write for Exchange {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.response.is_some() {
            return Err(fail(GitError::Internal(
                "git wrote to an HTTP request already sent".into(),
            )));
        }
        self.request.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Exchange {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            let response = self.send().map_err(fail)?;
            self.response = Some(response);
        }
        while self.pending.is_empty() {
            let Some(response) = self.response.as_mut() else {
                return Ok(0);
            };
            match self.scoped.runtime.block_on(response.chunk()) {
                Ok(Some(chunk)) => self.pending = chunk,
                // The body ended: by its length, its last chunk, or the server closing.
                Ok(None) => return Ok(0),
                Err(e) => return Err(fail(transfer_error(&e))),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

impl Exchange {
    fn send(&mut self) -> Result<reqwest::Response, GitError> {
        let session = &self.scoped.session;
        let client = session.http_client();
        let (url, expected) = match &self.call {
            Call::RefList { url } => (url, "application/x-git-upload-pack-advertisement"),
            Call::Negotiate { url } => (url, "application/x-git-upload-pack-result"),
        };
        let parsed = url::Url::parse(url).map_err(|e| GitError::Internal(e.to_string()))?;
        let mut request = match &self.call {
            Call::RefList { .. } => client.get(parsed.clone()),
            Call::Negotiate { .. } => client
                .post(parsed.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-git-upload-pack-request",
                )
                .header(reqwest::header::ACCEPT, expected)
                .body(std::mem::take(&mut self.request)),
        };
        let credentials = session.http_credentials(&parsed);
        if let Some((user, password)) = &credentials {
            request = request.basic_auth(user, Some(password.expose()));
        }
        let again = request.try_clone();
        let runtime = &self.scoped.runtime;
        let response = match (runtime.block_on(request.send()), again) {
            // A kept-alive connection that the server or a proxy had closed without saying so
            // (tinyproxy closes each one after its reply) breaks before the reply. Every git
            // request over HTTP only reads, so it is sent once more on a new connection, as git
            // (curl) does.
            (Err(e), Some(again)) if !e.is_connect() && !e.is_timeout() => {
                tracing::debug!(error = %chain(&e), "the connection broke before the reply; sending the request again");
                runtime.block_on(again.send())
            }
            (result, _) => result,
        }
        .map_err(|e| send_error(&e))?;
        if let Some(error) = status_error(response.status().as_u16(), credentials.is_some()) {
            return Err(error);
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with(expected) {
            return Err(GitError::RepoNotFound {
                detail: format!(
                    "the server answered `{content_type}` rather than git's smart HTTP protocol"
                ),
            });
        }
        if let Call::RefList { .. } = self.call {
            // Negotiate with the repository where the ref list came from, as git does after a
            // redirect.
            let mut at = response.url().clone();
            at.set_query(None);
            if let Some(repo) = at.as_str().strip_suffix("/info/refs") {
                *self.base.lock().unwrap_or_else(|p| p.into_inner()) = Some(repo.to_string());
            }
        }
        Ok(response)
    }
}

/// What an HTTP status other than success means for a git or Git LFS request; `None` for success.
/// `sent_credentials`: whether the request carried a user name and password.
pub(super) fn status_error(status: u16, sent_credentials: bool) -> Option<GitError> {
    Some(match status {
        200..=299 => return None,
        401 | 403 => GitError::AuthRefused {
            detail: if sent_credentials {
                format!("the server refused the user name and password (HTTP {status})")
            } else {
                format!(
                    "the server asks for a password and none was given (--git-password-file) \
                     (HTTP {status})"
                )
            },
        },
        407 => GitError::AuthRefused {
            detail: "the proxy asks for credentials: put them in the proxy URL \
                     (http://user:password@proxy:port) (HTTP 407)"
                .into(),
        },
        404 | 410 => GitError::RepoNotFound {
            detail: format!("HTTP {status}"),
        },
        _ => GitError::Remote {
            detail: format!("HTTP {status}"),
        },
    })
}

/// A request that got no reply.
pub(super) fn send_error(e: &reqwest::Error) -> GitError {
    if crate::net::is_dns_failure(e) {
        let host = e.url().and_then(|u| {
            crate::net::proxy::Proxies::from_env()
                .ok()?
                .host_to_resolve(u.as_str())
        });
        if let Some(host) = host {
            return GitError::Resolve { host };
        }
    }
    let detail = chain(e);
    if detail.to_ascii_lowercase().contains("certificate") {
        GitError::Certificate { detail }
    } else if e.is_connect() || e.is_timeout() {
        GitError::Unreachable { detail }
    } else {
        GitError::Remote { detail }
    }
}

/// A reply that broke off.
pub(super) fn transfer_error(e: &reqwest::Error) -> GitError {
    GitError::Unreachable {
        detail: format!("the reply broke off: {}", chain(e)),
    }
}
