//! A small hand-written HTTP/1.1 server (and HTTPS, with the test CA) that serves files from
//! memory with ETag and Range support, and misbehaves on request: a status (503 with
//! Retry-After, 429, 404…), a connection cut mid-body, a stall, a slow body. It records every
//! request so tests can count what was fetched. Bound to 127.0.0.1 only; stops when dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::tls::TestCa;

/// A file the server holds.
#[derive(Clone, Debug)]
pub struct Resource {
    pub body: Vec<u8>,
    /// Sent as the ETag header (quoted) and honoured in If-Range; `None` sends no ETag.
    pub etag: Option<String>,
    /// `(user, password)` required as HTTP basic auth; 401 otherwise.
    pub auth: Option<(String, String)>,
}

/// One misbehaviour, used up by one GET of its path.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and no body, with an optional `Retry-After: SECONDS`.
    Status { code: u16, retry_after: Option<u32> },
    /// Send the headers (full length) and this many body bytes, then close the connection.
    CutAfter(usize),
    /// Send this many body bytes, then go silent for the duration before sending the rest.
    StallAfter(usize, Duration),
    /// Send the body in pieces of this size with this delay between them.
    Slow(usize, Duration),
    /// Ignore a Range header and send the whole file again with 200.
    IgnoreRange,
    /// Replace the file with this body (and a new ETag) before answering, as a re-upload would.
    Replace(Vec<u8>),
    /// Answer HEAD with 403, as a URL presigned for GET does. Used up by the next HEAD.
    RefuseHead,
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Resource>,
    faults: HashMap<String, VecDeque<Fault>>,
    log: Vec<Request>,
}

/// A running server. Invariant: listening on 127.0.0.1:`port` until dropped.
pub struct HttpServer {
    pub port: u16,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// A plain HTTP server.
    pub fn start() -> HttpServer {
        HttpServer::launch(None)
    }

    /// An HTTPS server presenting the test CA's leaf for localhost / 127.0.0.1.
    pub fn start_tls(ca: &TestCa) -> HttpServer {
        HttpServer::launch(Some(tokio_rustls::TlsAcceptor::from(ca.server_config())))
    }

    fn launch(tls: Option<tokio_rustls::TlsAcceptor>) -> HttpServer {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let state = shared.clone();
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                match tls {
                                    Some(acceptor) => {
                                        if let Ok(s) = acceptor.accept(stream).await {
                                            serve(s, state).await;
                                        }
                                    }
                                    None => serve(stream, state).await,
                                }
                            });
                        }
                    }
                }
            });
        });
        HttpServer {
            port,
            scheme,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// The URL of `path` with credentials in it (`user:pass@`).
    pub fn url_with_auth(&self, userinfo: &str, path: &str) -> String {
        format!("{}://{userinfo}@127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// Serves `body` at `path` with an ETag derived from its content.
    pub fn put(&self, path: &str, body: Vec<u8>) {
        let etag = format!("{:016x}", fnv(&body));
        self.put_resource(
            path,
            Resource {
                body,
                etag: Some(etag),
                auth: None,
            },
        );
    }

    pub fn put_resource(&self, path: &str, resource: Resource) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), resource);
    }

    /// Queues a misbehaviour for the next GET of `path`.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(path.to_string())
            .or_default()
            .push_back(fault);
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many GET requests `path` received.
    pub fn gets(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: Arc<Mutex<State>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let (resource, fault) = {
        let mut s = state.lock().unwrap();
        s.log.push(request.clone());
        let queue = s.faults.get_mut(&request.path);
        let fault = match (request.method.as_str(), queue) {
            ("HEAD", Some(q)) if matches!(q.front(), Some(Fault::RefuseHead)) => q.pop_front(),
            ("GET", Some(q)) if !matches!(q.front(), Some(Fault::RefuseHead)) => q.pop_front(),
            _ => None,
        };
        if let Some(Fault::Replace(body)) = &fault {
            let etag = format!("{:016x}", fnv(body));
            if let Some(r) = s.files.get_mut(&request.path) {
                r.body = body.clone();
                r.etag = Some(etag);
            }
        }
        (s.files.get(&request.path).cloned(), fault)
    };
    let Some(resource) = resource else {
        let _ = respond_empty(&mut stream, 404, &[]).await;
        return;
    };
    if let Some((user, pass)) = &resource.auth {
        let expected = format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()));
        if request.authorization.as_deref() != Some(expected.as_str()) {
            let _ = respond_empty(
                &mut stream,
                401,
                &[("WWW-Authenticate", "Basic realm=\"test\"".into())],
            )
            .await;
            return;
        }
    }
    if let Some(Fault::RefuseHead) = &fault {
        let _ = respond_empty(&mut stream, 403, &[]).await;
        return;
    }
    if let Some(Fault::Status { code, retry_after }) = &fault {
        let headers: Vec<(&str, String)> = retry_after
            .iter()
            .map(|s| ("Retry-After", s.to_string()))
            .collect();
        let _ = respond_empty(&mut stream, *code, &headers).await;
        return;
    }
    let total = resource.body.len();
    let etag = resource.etag.as_ref().map(|e| format!("\"{e}\""));
    let mut start = 0usize;
    let mut status = 200;
    let range_allowed = !matches!(fault, Some(Fault::IgnoreRange));
    if let (Some(range), true) = (&request.range, range_allowed) {
        let validator_ok = match &request.if_range {
            Some(v) => Some(v) == etag.as_ref(),
            None => true,
        };
        if validator_ok {
            if let Some(from) = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<usize>().ok())
            {
                if from >= total {
                    let _ = respond_empty(
                        &mut stream,
                        416,
                        &[("Content-Range", format!("bytes */{total}"))],
                    )
                    .await;
                    return;
                }
                start = from;
                status = 206;
            }
        }
    }
    let body = &resource.body[start..];
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if let Some(e) = &etag {
        head.push_str(&format!("ETag: {e}\r\n"));
    }
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        ));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() || request.method == "HEAD" {
        let _ = stream.shutdown().await;
        return;
    }
    let _ = match fault {
        Some(Fault::CutAfter(n)) => {
            let n = n.min(body.len());
            let _ = stream.write_all(&body[..n]).await;
            let _ = stream.flush().await;
            // Dropping the stream without the rest: the client sees the connection end early.
            return;
        }
        Some(Fault::StallAfter(n, pause)) => {
            let n = n.min(body.len());
            let _ = stream.write_all(&body[..n]).await;
            let _ = stream.flush().await;
            tokio::time::sleep(pause).await;
            stream.write_all(&body[n..]).await
        }
        Some(Fault::Slow(piece, pause)) => {
            for part in body.chunks(piece.max(1)) {
                if stream.write_all(part).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                tokio::time::sleep(pause).await;
            }
            Ok(())
        }
        _ => stream.write_all(body).await,
    };
    let _ = stream.shutdown().await;
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Request> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut piece).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&piece[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut headers = HashMap::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Request {
        method,
        path,
        range: headers.get("range").cloned(),
        if_range: headers.get("if-range").cloned(),
        authorization: headers.get("authorization").cloned(),
    })
}

async fn respond_empty<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, String)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n",
        reason(status)
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Standard base64 (for the basic-auth check), to avoid a dependency for one line.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
