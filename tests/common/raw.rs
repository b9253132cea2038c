//! A raw HTTP/1.1 client for tests that must send what no well-behaved
//! client would (two `Host` lines, odd bytes): the request as text, the
//! answer read to the end as text.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Guards against hangs only; never a timing assertion.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(super::GUARD, f).await.expect("hung")
}

/// Sends `request` and reads the answer to the end (the request must end
/// the connection: `Connection: close` or HTTP/1.0).
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    raw_bytes(addr, request.as_bytes()).await
}

/// [`raw`] with arbitrary bytes.
pub async fn raw_bytes(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may close before reading all of a refused request.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = within(s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET of `path` with `Host: host`, the connection closed after it.
pub async fn get_host(addr: SocketAddr, path: &str, host: &str) -> String {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// The status code of an answer, as text.
pub fn status(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

/// The body of an answer (chunked framing left as it is).
pub fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The first value of header `name` in an answer.
pub fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Whether the answer's `Cache-Status` says `hit`.
pub fn is_hit(answer: &str) -> bool {
    header(answer, "cache-status").is_some_and(|s| s.contains("hit"))
}

#[cfg(feature = "balance")]
/// Serves `svc` with hyper's HTTP/1 server, each connection's peer as the
/// client address, as examples/proxy.rs does.
pub async fn serve_svc<S, B>(svc: S) -> SocketAddr
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let svc = svc.clone();
            let handler =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(tower_ssr::balance::ClientAddr(peer));
                    let mut svc = svc.clone();
                    async move { svc.call(req).await }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    addr
}

/// A raw upstream: reads each request head, writes `head` and `body` as
/// they are (a `Content-Length` that lies, a body cut short), then closes
/// the connection.
#[allow(dead_code)] // not every test binary uses every helper
pub async fn canned_upstream(head: &'static str, body: &'static [u8]) -> SocketAddr {
    answering_upstream(head, body, false).await
}

/// [`canned_upstream`], but the connection then stays open and silent
/// until the peer closes it: a body that stalls, or a switched protocol
/// that never speaks.
#[allow(dead_code)]
pub async fn holding_upstream(head: &'static str, body: &'static [u8]) -> SocketAddr {
    answering_upstream(head, body, true).await
}

async fn answering_upstream(head: &'static str, body: &'static [u8], hold: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
                if hold {
                    let _ = s.read(&mut buf).await;
                } else {
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A body of `Content-Length: 300000` that sends 8 KiB, then has nothing
/// ready for `stalls` polls (waking itself each time), then has 16 KiB and
/// its failure ready at once.
pub struct BreaksOff {
    stalls: usize,
    step: usize,
}

impl BreaksOff {
    pub fn new(stalls: usize) -> Self {
        BreaksOff { stalls, step: 0 }
    }
}

impl http_body::Body for BreaksOff {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        let step = self.step;
        self.step += 1;
        let chunk = || {
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from(
                vec![b'x'; 8192],
            )))))
        };
        match step {
            0 => chunk(),
            n if n <= self.stalls => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            n if n <= self.stalls + 2 => chunk(),
            _ => std::task::Poll::Ready(Some(Err(std::io::Error::other("upstream closed")))),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(300_000)
    }
}
