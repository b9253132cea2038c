//! Bodies from 64 KiB up are stored in anonymous memory mappings of their
//! own (`entry::owned_body`), weighed in whole pages. Over real sockets, at
//! and around the size where that starts (64 KiB − 1, 64 KiB, 64 KiB + 1),
//! at 1 MiB and at the configured `max_body`: each stored and served byte
//! for byte, in identity and in every coding the cache makes, as HEAD, as
//! ranges (first, last, suffix, across 64 KiB), as 304s; streamed without
//! a length; freshened by a 304; and released when purged or evicted.
//! Nothing here depends on timing: waits poll for a state with a hang guard.
#![cfg(feature = "compression")]

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use common::{serve, Seen, GUARD};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower_ssr::cache::{CacheLayer, Compression, ResponseCache};

const KIB: usize = 1024;
/// The largest body stored here: odd, not a whole number of pages.
const MAX_BODY: usize = 1536 * KIB + 1;
/// Where mapped bodies start (`entry::MAPPED_BODY`).
const MAPPED: usize = 64 * KIB;

/// `n` bytes of markup in which every line names its offset, so any slice
/// is told apart from any other (and the page still compresses).
fn body_of(n: usize) -> Bytes {
    let mut out = String::with_capacity(n + 64);
    while out.len() < n {
        let at = out.len();
        out.push_str(&format!("<li data-at=\"{at}\">item</li>\n"));
    }
    out.truncate(n);
    Bytes::from(out)
}

/// Renders per path-and-query.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Origin {
    fn calls(&self, pq: &str) -> usize {
        self.calls.lock().unwrap().get(pq).copied().unwrap_or(0)
    }
}

/// `/page/N`: N bytes with a known length. `/chunked/N`: the same, streamed
/// in uneven chunks with no length. `/gzip/N`: N bytes of noise, sent
/// gzip-encoded although the cache asks for identity. `/revalidated/N`:
/// `no-cache`, and a 304 to its own entity tag.
async fn render(State(origin): State<Origin>, req: Request) -> Response {
    let pq = req.uri().path_and_query().unwrap().as_str().to_owned();
    *origin.calls.lock().unwrap().entry(pq).or_insert(0) += 1;
    let mut parts = req.uri().path().trim_start_matches('/').split('/');
    let kind = parts.next().unwrap().to_owned();
    let n: usize = parts.next().unwrap().parse().unwrap();
    let etag = format!("\"{kind}-{n}\"");
    let builder = Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .header("etag", etag.as_str());
    match kind.as_str() {
        "page" => builder
            .header("cache-control", "public, max-age=600")
            .body(Body::from(body_of(n)))
            .unwrap(),
        "chunked" => {
            let body = body_of(n);
            let mut chunks = Vec::new();
            let mut at = 0;
            let mut size = 1000;
            while at < n {
                let end = (at + size).min(n);
                chunks.push(Ok::<_, std::io::Error>(body.slice(at..end)));
                at = end;
                size = size * 3 / 2 + 7;
            }
            builder
                .header("cache-control", "public, max-age=600")
                .body(Body::from_stream(tokio_stream::iter(chunks)))
                .unwrap()
        }
        "gzip" => builder
            .header("cache-control", "public, max-age=600")
            .header("content-encoding", "gzip")
            .body(Body::from(gzip(&noise(n))))
            .unwrap(),
        "revalidated" => {
            if req
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v.as_bytes() == etag.as_bytes())
            {
                return builder
                    .status(304)
                    .header("cache-control", "public, no-cache, max-age=600")
                    .header("x-freshened", "yes")
                    .body(Body::empty())
                    .unwrap();
            }
            builder
                .header("cache-control", "public, no-cache, max-age=600")
                .body(Body::from(body_of(n)))
                .unwrap()
        }
        other => panic!("{other}"),
    }
}

/// Bytes that do not compress.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("{other}"),
    }
    out
}

struct Site {
    addr: SocketAddr,
    origin: Origin,
    cache: ResponseCache,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// Low levels: what is under test is where the bytes live, not the ratio.
fn fast() -> Compression {
    Compression::new()
        .jobs(2)
        .br_level(1)
        .zstd_level(1)
        .gzip_level(1)
}

async fn start(max_bytes: u64, compression: Option<Compression>) -> Site {
    let origin = Origin::default();
    let cache = ResponseCache::builder().max_bytes(max_bytes).build();
    let layer = CacheLayer::new(cache.clone()).max_body(MAX_BODY);
    let layer = match compression {
        Some(c) => layer.compression(c),
        None => layer.no_compression(),
    };
    let app = Router::new()
        .fallback(render)
        .with_state(origin.clone())
        .layer(layer);
    Site {
        addr: serve(app).await,
        origin,
        cache,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Site {
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Seen {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = tokio::time::timeout(GUARD, self.client.request(req.body(Empty::new()).unwrap()))
            .await
            .expect("a request hung")
            .unwrap();
        let (parts, body) = res.into_parts();
        Seen {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Seen {
        self.send(Method::GET, path, headers).await
    }

    /// Polls until `path` is served in `coding`.
    async fn ready(&self, path: &str, coding: &str) -> Seen {
        tokio::time::timeout(GUARD, async {
            loop {
                let seen = self.get(path, &[("accept-encoding", coding)]).await;
                if seen
                    .headers
                    .get("content-encoding")
                    .is_some_and(|v| v == coding)
                {
                    return seen;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{path} never served in {coding}"))
    }
}

fn is_hit(seen: &Seen) -> bool {
    seen.one("cache-status").contains("hit")
}

/// Checks a 206 for `range` against `whole`.
fn check_range(seen: &Seen, whole: &Bytes, first: usize, last: usize, what: &str) {
    let n = whole.len();
    assert_eq!(seen.status, StatusCode::PARTIAL_CONTENT, "{what}: {seen:?}");
    assert_eq!(
        seen.one("content-range"),
        format!("bytes {first}-{last}/{n}"),
        "{what}"
    );
    assert_eq!(seen.one("content-length"), (last - first + 1).to_string());
    assert!(
        seen.body == whole.slice(first..=last),
        "{what}: wrong bytes"
    );
}

const SIZES: [usize; 5] = [MAPPED - 1, MAPPED, MAPPED + 1, 1024 * KIB, MAX_BODY];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_around_the_mapped_size_are_served_whole_in_every_coding() {
    let site = start(256 << 20, Some(fast())).await;
    for n in SIZES {
        let path = format!("/page/{n}");
        let whole = body_of(n);
        let miss = site.get(&path, &[]).await;
        assert_eq!(miss.status, StatusCode::OK);
        assert!(miss.body == whole, "{n}: the miss");
        let hit = site.get(&path, &[]).await;
        assert!(is_hit(&hit), "{n}: {:?}", hit.headers);
        assert!(hit.body == whole, "{n}: the identity hit");
        assert_eq!(hit.one("content-length"), n.to_string());
        site.ready(&path, "br").await;
        for coding in ["br", "zstd", "gzip"] {
            let seen = site.get(&path, &[("accept-encoding", coding)]).await;
            assert_eq!(seen.one("content-encoding"), coding, "{n}");
            assert_eq!(seen.one("content-length"), seen.body.len().to_string());
            assert!(decode(coding, &seen.body) == whole, "{n}: {coding}");
            assert_eq!(seen.one("etag"), format!("\"page-{n}-{coding}\""));
            // Its own validator answers a 304 without a body.
            let not_modified = site
                .get(
                    &path,
                    &[
                        ("accept-encoding", coding),
                        ("if-none-match", &format!("\"page-{n}-{coding}\"")),
                    ],
                )
                .await;
            assert_eq!(
                not_modified.status,
                StatusCode::NOT_MODIFIED,
                "{n} {coding}"
            );
            assert!(not_modified.body.is_empty());
        }
        // Identity again, now that the codings sit beside it.
        let plain = site.get(&path, &[("accept-encoding", "identity")]).await;
        assert!(!plain.has("content-encoding"));
        assert!(plain.body == whole, "{n}: identity after the codings");

        let head = site.send(Method::HEAD, &path, &[]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.one("content-length"), n.to_string(), "{n}: HEAD");
        assert!(head.body.is_empty());
        let head_br = site
            .send(Method::HEAD, &path, &[("accept-encoding", "br")])
            .await;
        assert_eq!(head_br.one("content-encoding"), "br");
        assert!(head_br.body.is_empty());

        let not_modified = site
            .get(&path, &[("if-none-match", &format!("\"page-{n}\""))])
            .await;
        assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED, "{n}");
        assert!(not_modified.body.is_empty());

        let ranges = [
            ("bytes=0-99".to_owned(), 0, 99),
            (format!("bytes={}-", n - 100), n - 100, n - 1),
            ("bytes=-100".to_owned(), n - 100, n - 1),
            (format!("bytes={}-{}", n - 1, n - 1), n - 1, n - 1),
            // Past the end: cut to the last byte.
            (format!("bytes={}-{}", n - 10, n + 1000), n - 10, n - 1),
            ("bytes=0-".to_owned(), 0, n - 1),
        ];
        for (range, first, last) in ranges {
            let seen = site.get(&path, &[("range", &range)]).await;
            check_range(&seen, &whole, first, last, &format!("{n}: {range}"));
            // Ranges are cut from identity even for a client taking br.
            let seen = site
                .get(
                    &path,
                    &[("range", &range), ("accept-encoding", "br, identity")],
                )
                .await;
            check_range(&seen, &whole, first, last, &format!("{n}: {range}, br"));
        }
        if n > MAPPED + 10 {
            for (first, last) in [
                (MAPPED - 10, MAPPED + 10),
                (MAPPED - 1, MAPPED),
                (MAPPED, MAPPED),
            ] {
                let range = format!("bytes={first}-{last}");
                let seen = site.get(&path, &[("range", &range)]).await;
                check_range(&seen, &whole, first, last, &format!("{n}: {range}"));
            }
        }
        let unsatisfiable = site.get(&path, &[("range", &format!("bytes={n}-"))]).await;
        assert_eq!(
            unsatisfiable.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{n}"
        );
        assert_eq!(site.origin.calls(&path), 1, "{n}: stored once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_over_max_body_is_passed_through_whole_and_not_stored() {
    let site = start(256 << 20, Some(fast())).await;
    let path = format!("/page/{}", MAX_BODY + 1);
    for _ in 0..2 {
        let seen = site.get(&path, &[("accept-encoding", "br")]).await;
        assert_eq!(seen.status, StatusCode::OK);
        assert!(seen.body == body_of(MAX_BODY + 1));
    }
    assert_eq!(site.origin.calls(&path), 2);
    assert_eq!(site.cache.stats().entries, 0);
    // The same through the chunked path.
    let path = format!("/chunked/{}", MAX_BODY + 1);
    for _ in 0..2 {
        let seen = site.get(&path, &[]).await;
        assert!(seen.body == body_of(MAX_BODY + 1));
    }
    assert_eq!(site.origin.calls(&path), 2);
    assert_eq!(site.cache.stats().entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_without_a_length_are_stored_whole() {
    let site = start(256 << 20, Some(fast())).await;
    for n in SIZES {
        let path = format!("/chunked/{n}");
        let whole = body_of(n);
        let miss = site.get(&path, &[]).await;
        assert!(miss.body == whole, "{n}: the miss");
        let hit = site.get(&path, &[]).await;
        assert!(is_hit(&hit), "{n}: {:?}", hit.headers);
        assert!(hit.body == whole, "{n}: the hit");
        assert_eq!(hit.one("content-length"), n.to_string());
        site.ready(&path, "zstd").await;
        let seen = site.get(&path, &[("accept-encoding", "zstd")]).await;
        assert!(decode("zstd", &seen.body) == whole, "{n}: zstd");
        let seen = site
            .get(&path, &[("range", &format!("bytes={}-", n - 3000))])
            .await;
        check_range(&seen, &whole, n - 3000, n - 1, &format!("{n}"));
        assert_eq!(site.origin.calls(&path), 1, "{n}");
    }
}

/// A renderer that sends gzip anyway: the body is stored as it came (its
/// encoded length decides where it lives) and served as it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_body_from_the_renderer_is_stored_and_served_as_sent() {
    let site = start(256 << 20, Some(fast())).await;
    for n in [MAPPED - 100, MAPPED + 100, 512 * KIB] {
        let path = format!("/gzip/{n}");
        let sent = gzip(&noise(n));
        for _ in 0..2 {
            let seen = site
                .get(&path, &[("accept-encoding", "gzip, br, zstd")])
                .await;
            assert_eq!(seen.one("content-encoding"), "gzip");
            assert!(seen.body == sent, "{n}");
            assert_eq!(decode("gzip", &seen.body), noise(n));
        }
        assert_eq!(site.origin.calls(&path), 1, "{n}");
    }
}

/// A 304 that freshens a stored mapped body keeps it (and its codings):
/// the freshened entry serves the same bytes, with the new headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_body_freshened_by_a_304_keeps_its_bytes_and_codings() {
    let site = start(256 << 20, Some(fast())).await;
    for n in [MAPPED, 300 * KIB + 3] {
        let path = format!("/revalidated/{n}");
        let whole = body_of(n);
        let first = site.get(&path, &[]).await;
        assert!(first.body == whole);
        site.ready(&path, "br").await;
        // Each request revalidates (no-cache) and is answered from the
        // freshened entry.
        for coding in ["identity", "br", "gzip", "zstd", "identity"] {
            let seen = site.get(&path, &[("accept-encoding", coding)]).await;
            assert_eq!(seen.status, StatusCode::OK);
            assert_eq!(seen.one("x-freshened"), "yes", "{n} {coding}");
            let body = if coding == "identity" {
                assert!(!seen.has("content-encoding"));
                seen.body.to_vec()
            } else {
                assert_eq!(seen.one("content-encoding"), coding, "{n}");
                decode(coding, &seen.body)
            };
            assert!(body == whole, "{n}: {coding}");
        }
        let seen = site
            .get(
                &path,
                &[("range", &format!("bytes={}-{}", MAPPED - 5, n - 1))],
            )
            .await;
        check_range(&seen, &whole, MAPPED - 5, n - 1, &format!("{n}"));
    }
}

/// Bytes of this process in anonymous mappings of at least 64 KiB that
/// are neither the heap nor a stack, from `/proc/self/smaps`: where
/// mapped bodies live (with other large mappings, which the test's
/// differences cancel).
fn mapped_rss() -> Option<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut total = 0;
    let mut anon_big = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let (a, b) = first.split_once('-').unwrap();
            let size = usize::from_str_radix(b, 16).ok()? - usize::from_str_radix(a, 16).ok()?;
            // Anonymous: no inode, no path.
            let rest: Vec<&str> = words.collect();
            anon_big = size >= MAPPED && rest.len() == 4 && rest[3] == "0";
        } else if first == "Rss:" && anon_big {
            total += words.next()?.parse::<usize>().ok()? * 1024;
        }
    }
    Some(total)
}

/// Purging or evicting mapped bodies gives their memory back. It stores
/// and drops 40 MiB, far more than the other tests of this binary store
/// meanwhile (a few MiB), so only a coarse change is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_and_evicted_mapped_bodies_give_their_memory_back() {
    let Some(start_rss) = mapped_rss() else {
        return; // not Linux
    };
    // No compression: only the bodies themselves.
    let site = start(48 << 20, None).await;
    const N: usize = 40;
    const SIZE: usize = 1024 * KIB;
    for i in 0..N {
        let path = format!("/page/{}", SIZE + i);
        assert_eq!(site.get(&path, &[]).await.body.len(), SIZE + i);
    }
    for i in 0..N {
        let path = format!("/page/{}", SIZE + i);
        assert!(is_hit(&site.get(&path, &[]).await), "{i}");
    }
    let stored = mapped_rss().unwrap();
    assert!(
        stored >= start_rss + N * SIZE / 2,
        "{N} MiB stored: {start_rss} -> {stored}"
    );
    for i in 0..N {
        let key = format!("http://{}/page/{}", site.addr, SIZE + i);
        site.cache.purge(&key);
    }
    assert_eq!(site.cache.stats().entries, 0, "purged by key");
    let purged = mapped_rss().unwrap();
    assert!(
        purged + N * SIZE / 2 <= stored,
        "{N} MiB purged: {stored} -> {purged}"
    );

    // Now more than fits: evictions make room, and what they drop goes.
    for i in 0..3 * N {
        let path = format!("/page/{}", SIZE + 100 + i);
        assert_eq!(site.get(&path, &[]).await.body.len(), SIZE + 100 + i);
    }
    let full = mapped_rss().unwrap();
    let stats = site.cache.stats();
    assert!(stats.bytes <= 48 << 20, "{stats:?}");
    // At most the bound, and room for what the process maps besides
    // (read buffers of 1 MiB bodies in flight, malloc's own large blocks,
    // the other tests of this binary): twice the bound. A leak of what
    // evictions drop would be the whole 120 MiB.
    assert!(
        full <= purged + 2 * (48 << 20),
        "{} MiB through a 48 MiB cache: {purged} -> {full}",
        3 * N
    );
}

/// The cache over the crate's reverse proxy to `upstream`, on hyper.
async fn serve_cached_proxy(upstream: SocketAddr) -> (SocketAddr, ResponseCache) {
    use tower_ssr::balance::{Endpoints, RoundRobin};
    use tower_ssr::proxy::ReverseProxy;
    let set = Endpoints::new(RoundRobin::new());
    set.add("up", format!("http://{upstream}").parse().unwrap())
        .unwrap();
    let cache = ResponseCache::builder().max_bytes(64 << 20).build();
    let svc = tower::Layer::layer(
        &CacheLayer::new(cache.clone())
            .max_body(MAX_BODY)
            .compression(fast()),
        ReverseProxy::builder(set).build(),
    );
    (common::raw::serve_svc(svc).await, cache)
}

/// A raw upstream that answers every request with `head` then `body`, and
/// closes: a `Content-Length` that lies.
async fn lying_upstream(head: String, body: Vec<u8>) -> SocketAddr {
    common::raw::canned_upstream(
        Box::leak(head.into_boxed_str()),
        Box::leak(body.into_boxed_slice()),
    )
    .await
}

/// One GET over a raw socket; the bytes until the server closes.
async fn raw_get(addr: SocketAddr, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("the reply ends");
    out
}

/// An upstream that promises more than it sends, around and above the
/// mapped size: a 502 when nothing had left, else a reply cut short
/// (never one that looks complete), and nothing stored, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_size_body_shorter_than_its_content_length_is_never_stored() {
    for (declared, sent) in [
        (MAPPED, MAPPED - 1),
        (MAPPED + 1, MAPPED),
        (200_000, 100_000),
        (MAX_BODY, MAX_BODY - 1),
    ] {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nContent-Type: text/html\r\n\
             Cache-Control: public, max-age=600\r\n\r\n"
        );
        let upstream = lying_upstream(head, body_of(sent).to_vec()).await;
        let (addr, cache) = serve_cached_proxy(upstream).await;
        for i in 0..5 {
            let reply = raw_get(addr, &format!("/short?{i}")).await;
            let text = String::from_utf8_lossy(&reply);
            if text.starts_with("HTTP/1.1 502") {
                continue;
            }
            assert!(
                text.starts_with("HTTP/1.1 200"),
                "{declared}/{sent}: {:?}",
                &text[..60.min(text.len())]
            );
            let at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            assert!(
                reply.len() - at < declared,
                "{declared}/{sent}: a reply that looks complete"
            );
        }
        // The same key again: still a miss.
        let again = raw_get(addr, "/short?0").await;
        assert!(!String::from_utf8_lossy(&again).contains("hit"));
        assert_eq!(cache.stats().stores, 0, "{declared}/{sent}");
        assert_eq!(cache.stats().entries, 0, "{declared}/{sent}");
    }
}

/// An upstream that sends more than it declared: only the declared bytes
/// are the response (the rest is no part of it), stored and served as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_the_content_length_are_no_part_of_the_stored_body() {
    for (declared, sent) in [(MAPPED, MAPPED + 5000), (MAPPED + 1, 200_000)] {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nContent-Type: text/html\r\n\
             Cache-Control: public, max-age=600\r\n\r\n"
        );
        let upstream = lying_upstream(head, body_of(sent).to_vec()).await;
        let (addr, cache) = serve_cached_proxy(upstream).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        for _ in 0..2 {
            let res = client
                .get(format!("http://{addr}/long").parse().unwrap())
                .await
                .unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert!(body == body_of(declared), "{declared}/{sent}");
        }
        assert_eq!(cache.stats().stores, 1, "{declared}/{sent}");
    }
}

/// A mapped-size page whose first request is a HEAD, or a range: the
/// cache fetches the whole body, stores it, answers the HEAD with the
/// length and no body, and the range from it; later GETs are hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_or_a_range_first_stores_the_whole_mapped_body() {
    let site = start(256 << 20, Some(fast())).await;
    for n in [MAPPED, 700 * KIB + 1] {
        let whole = body_of(n);
        let path = format!("/page/{n}");
        let head = site.send(Method::HEAD, &path, &[]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.one("content-length"), n.to_string());
        assert!(head.body.is_empty());
        let hit = site.get(&path, &[]).await;
        assert!(is_hit(&hit), "{n}: {:?}", hit.headers);
        assert!(hit.body == whole, "{n}: after a HEAD");

        let path = format!("/chunked/{n}");
        let range = format!("bytes={}-{}", MAPPED - 3, n - 1);
        let first = site.get(&path, &[("range", &range)]).await;
        if first.status == StatusCode::PARTIAL_CONTENT {
            check_range(&first, &whole, MAPPED - 3, n - 1, &format!("{n}: first"));
        } else {
            // A miss may answer a range with the whole body (RFC 9110 §14.2).
            assert!(first.body == whole, "{n}");
        }
        let again = site.get(&path, &[("range", &range)]).await;
        assert!(is_hit(&again), "{n}: {:?}", again.headers);
        check_range(&again, &whole, MAPPED - 3, n - 1, &format!("{n}: hit"));
        assert_eq!(site.origin.calls(&path), 1, "{n}");
    }
}
