//! A TCP proxy on 127.0.0.1 in front of a real server, that can be taken down and brought back on
//! the same port: the way tests make storage or a metastore unreachable for a while without
//! losing the server's data. It also counts the bytes clients send upstream, so a test can tell
//! how much a client uploaded.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Forwards `127.0.0.1:port` to `upstream`. Invariant: while `down`, nothing listens on the port and
/// every connection that was open has been shut down.
pub struct Proxy {
    pub port: u16,
    upstream: SocketAddr,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// Bytes forwarded from clients to the upstream server, request headers included.
    sent_upstream: Arc<AtomicU64>,
    /// Client-to-upstream copies still running: a client that died may leave bytes in its socket
    /// that the proxy is still forwarding.
    forwarding: Arc<AtomicUsize>,
}

impl Proxy {
    /// Starts forwarding to `upstream` on a free port.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let proxy = Proxy {
            port,
            upstream,
            down: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            sent_upstream: Arc::new(AtomicU64::new(0)),
            forwarding: Arc::new(AtomicUsize::new(0)),
        };
        proxy.serve(listener);
        proxy
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes clients have sent upstream so far.
    pub fn sent_upstream(&self) -> u64 {
        self.sent_upstream.load(Ordering::SeqCst)
    }

    /// Waits until no client connection is open any more and everything clients sent has been
    /// forwarded, so `sent_upstream` no longer grows from clients that are gone.
    pub fn wait_until_clients_gone(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.forwarding.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy still forwards for a client after 60 s"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops listening and cuts every open connection.
    pub fn take_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wait until the port really refuses connections.
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("proxy port {} still accepts connections", self.port);
    }

    /// Listens again on the same port.
    pub fn bring_up(&self) {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("rebind proxy port: {e}"),
            }
        };
        self.down.store(false, Ordering::SeqCst);
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (down, conns, stop, upstream, counter, forwarding) = (
            self.down.clone(),
            self.conns.clone(),
            self.stop.clone(),
            self.upstream,
            self.sent_upstream.clone(),
            self.forwarding.clone(),
        );
        thread::spawn(move || {
            for client in listener.incoming() {
                if down.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut list = conns.lock().unwrap();
                    list.push(client.try_clone().expect("clone"));
                    list.push(server.try_clone().expect("clone"));
                }
                forwarding.fetch_add(1, Ordering::SeqCst);
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    Some((counter.clone(), forwarding.clone())),
                );
                pipe(server, client, None);
            }
        });
    }
}

/// Copies `from` to `to` until either side closes, adding what it forwards to the byte counter and
/// taking itself off the count of running copies when it ends.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    counter: Option<(Arc<AtomicU64>, Arc<AtomicUsize>)>,
) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match io::Read::read(&mut from, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if io::Write::write_all(&mut to, &buf[..n]).is_err() {
                break;
            }
            if let Some((bytes, _)) = &counter {
                bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        if let Some((_, running)) = &counter {
            running.fetch_sub(1, Ordering::SeqCst);
        }
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}
