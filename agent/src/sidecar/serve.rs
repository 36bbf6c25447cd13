//! The sidecar's HTTP listeners, each with its own limits: header, body and idle timeouts and a
//! most number of open connections.
//!
//! The probes (`/healthz`, `/readyz`, `/metrics`) and the MLflow-compatible endpoint listen on
//! separate sockets with separate limits, so a client that floods one (holds hundreds of
//! sockets, sends headers a byte at a time, never finishes a body) never delays the other, and
//! never takes the file descriptors the shipping loop needs: beyond the limit, connections wait in
//! the kernel's accept queue, which costs this process nothing.
//!
//! * header timeout: a request's head must arrive within it, counted from when the connection
//!   waits for a request, so a kept-alive connection that sends nothing is closed after it too;
//! * body timeout: a request's body must arrive within it, counted from its head; the handler
//!   sees a failed body (and answers 400) before it has done anything, so a retry cannot double
//!   what it logs;
//! * idle timeout: a connection on which nothing is read or written for this long is closed (a
//!   client that stops reading its answers).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use super::error::SidecarError;

/// The kernel's queue of connections not yet accepted (capped by `net.core.somaxconn`).
const ACCEPT_QUEUE: u32 = 1024;

/// The limits of one listener. Invariant: durations are non-zero; `max_connections >= 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// The MLflow-compatible endpoint's: a training script keeps a few connections; 64 leave room
    /// for several processes of one job.
    pub const MLFLOW: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: 64,
    };

    /// The probes': the kubelet and a Prometheus scraper.
    pub const PROBES: Limits = Limits {
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_connections: 16,
    };
}

/// A bound socket, served once its routes are assembled. Invariant: `addr` is the socket's.
pub struct Listener {
    socket: TcpListener,
    pub addr: SocketAddr,
    /// What it serves, for log lines.
    what: &'static str,
    limits: Limits,
}

impl Listener {
    /// Binds `addr` (port 0: any free port).
    pub fn bind(
        addr: SocketAddr,
        what: &'static str,
        limits: Limits,
    ) -> Result<Listener, SidecarError> {
        let listen_error = |source| SidecarError::Listen { addr, source };
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(listen_error)?;
        socket.set_reuseaddr(true).map_err(listen_error)?;
        socket.bind(addr).map_err(listen_error)?;
        // Connections beyond the limit wait in this queue, which costs no file descriptor.
        let socket = socket.listen(ACCEPT_QUEUE).map_err(listen_error)?;
        let addr = socket.local_addr().map_err(listen_error)?;
        Ok(Listener {
            socket,
            addr,
            what,
            limits,
        })
    }

    /// Serves `app` in the background, within the limits; returns the address.
    pub fn serve(self, app: Router) -> SocketAddr {
        let (addr, what, limits) = (self.addr, self.what, self.limits);
        tracing::info!(%addr, max_connections = limits.max_connections,
            header_timeout_s = limits.header_timeout.as_secs_f64(), "serving {what}");
        let app = app.layer(axum::middleware::from_fn_with_state(
            limits.body_timeout,
            body_deadline,
        ));
        tokio::spawn(accept_loop(self.socket, app, what, limits));
        addr
    }
}

async fn accept_loop(socket: TcpListener, app: Router, what: &'static str, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut full_since: Option<Instant> = None;
    let mut error_logged: Option<Instant> = None;
    loop {
        if permits.available_permits() == 0 && full_since.is_none() {
            tracing::warn!(
                what,
                max_connections = limits.max_connections,
                "connection limit reached; new connections wait until one closes"
            );
            full_since = Some(Instant::now());
        }
        // The semaphore is never closed: acquiring fails only if it were.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        if let Some(since) = full_since.take() {
            tracing::info!(
                what,
                waited_s = since.elapsed().as_secs_f64(),
                "accepting connections again"
            );
        }
        let stream = match socket.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin, and say so once a
                // minute at most.
                if error_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(what, error = %e, "cannot accept a connection");
                    error_logged = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let io = TokioIo::new(Idle::new(stream, limits.idle_timeout));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            if let Err(e) = http.serve_connection(io, service).await {
                tracing::debug!(what, error = %e, "connection ended");
            }
        });
    }
}

/// Gives the request's body a deadline, `body_timeout` from now (its head has arrived).
async fn body_deadline(
    State(limit): State<Duration>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    let req = req.map(|body| {
        Body::new(Deadline {
            inner: body,
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit,
        })
    });
    next.run(req).await
}

/// A request body that fails once its deadline passes.
struct Deadline {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    limit: Duration,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            let message = format!("the request body did not arrive within {:?}", self.limit);
            return Poll::Ready(Some(Err(message.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection that fails once nothing was read or written on it for `limit`.
struct Idle {
    stream: TcpStream,
    sleep: Pin<Box<Sleep>>,
    limit: Duration,
}

impl Idle {
    fn new(stream: TcpStream, limit: Duration) -> Idle {
        Idle {
            stream,
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }

    /// Something moved: the idle time starts again.
    fn active(&mut self) {
        let next = Instant::now() + self.limit;
        self.sleep.as_mut().reset(next);
    }

    /// Nothing moved: whether the idle time is over (then the connection fails).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed")
}

impl AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
