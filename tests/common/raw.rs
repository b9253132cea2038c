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
