//! Issue 9: the cache compresses what it stores, once, and answers each
//! client with the coding it accepts. Over real sockets: a cache served on
//! 127.0.0.1:0 in front of a renderer that counts its calls and records the
//! `Accept-Encoding` it was sent. Nothing here depends on timing: waits
//! poll for a state with a generous hang guard.
#![cfg(feature = "compression")]

mod common;

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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

#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    accept_encoding: Arc<Mutex<Vec<Option<String>>>>,
    /// Each request's `Range` and `If-Range`, as received.
    ranges: Arc<Mutex<Vec<(Option<String>, Option<String>)>>>,
    /// `/slow` answers once notified here.
    gate: Arc<tokio::sync::Notify>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A page that compresses well: 20 KB of markup.
fn page() -> Bytes {
    "<li class=\"item\">render hydrate island</li>\n"
        .repeat(460)
        .into()
}

/// Bytes that do not compress.
fn noise() -> Bytes {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..20_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn render(State(origin): State<Origin>, req: Request) -> Response {
    origin.calls.fetch_add(1, Ordering::SeqCst);
    origin.accept_encoding.lock().unwrap().push(
        req.headers()
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    // Read now: the request is not `Sync`, so no borrow of it may live
    // across an await.
    let (range, if_range) = {
        let text = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        (text("range"), text("if-range"))
    };
    origin
        .ranges
        .lock()
        .unwrap()
        .push((range.clone(), if_range));
    match req.uri().path() {
        // Never storable; answers a `Range` itself (one `first-last`).
        "/private" => {
            let page = page();
            let builder = Response::builder()
                .header("content-type", "text/html")
                .header("cache-control", "private, max-age=600")
                .header("etag", "\"p1\"");
            if let Some(range) = range {
                let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                return builder
                    .status(206)
                    .header("content-range", format!("bytes {a}-{b}/{}", page.len()))
                    .body(Body::from(page.slice(a..=b)))
                    .unwrap();
            }
            return builder.body(Body::from(page)).unwrap();
        }
        // A broken origin: a 206 to every request, `Range` or not.
        "/always-206" => {
            let page = page();
            return Response::builder()
                .status(206)
                .header("content-type", "text/html")
                .header("cache-control", "public, max-age=600")
                .header("content-range", format!("bytes 0-9/{}", page.len()))
                .body(Body::from(page.slice(0..10)))
                .unwrap();
        }
        // Streamed, of unknown length, in three chunks.
        "/stream" => {
            let page = page();
            let chunks = [
                page.slice(..7000),
                page.slice(7000..15000),
                page.slice(15000..),
            ];
            let stream = tokio_stream::iter(chunks.map(Ok::<_, std::io::Error>));
            return Response::builder()
                .header("content-type", "text/html")
                .header("cache-control", "public, max-age=600")
                .header("etag", "\"v1\"")
                .body(Body::from_stream(stream))
                .unwrap();
        }
        "/slow" => {
            origin.gate.notified().await;
        }
        _ => {}
    }
    if req.uri().path() == "/revalidated" {
        let n = origin.calls();
        let builder = Response::builder()
            .header("content-type", "text/html")
            .header("cache-control", "public, no-cache, max-age=600")
            .header("etag", "\"v1\"")
            .header("x-generation", n.to_string());
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return builder.status(304).body(Body::empty()).unwrap();
        }
        return builder.body(Body::from(page())).unwrap();
    }
    let (ty, cc, body) = match req.uri().path() {
        "/png" => ("image/png", "public, max-age=600", noise()),
        "/no-transform" => ("text/html", "public, max-age=600, no-transform", page()),
        _ => ("text/html; charset=utf-8", "public, max-age=600", page()),
    };
    Response::builder()
        .header("content-type", ty)
        .header("cache-control", cc)
        .header("etag", "\"v1\"")
        .header("vary", "Accept-Encoding")
        .body(Body::from(body))
        .unwrap()
}

struct Site {
    addr: SocketAddr,
    origin: Origin,
    cache: ResponseCache,
    client: Client<HttpConnector, Empty<Bytes>>,
}

async fn start(layer: impl Fn(ResponseCache) -> CacheLayer) -> Site {
    let origin = Origin::default();
    let cache = ResponseCache::builder().max_bytes(64 << 20).build();
    let app = Router::new()
        .fallback(render)
        .with_state(origin.clone())
        .layer(layer(cache.clone()));
    Site {
        addr: serve(app).await,
        origin,
        cache,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

/// One job at a time: jobs then finish in the order they were queued.
async fn compressing() -> Site {
    start(|c| CacheLayer::new(c).compression(Compression::new().jobs(1))).await
}

impl Site {
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Seen {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        Seen {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str, ae: &str) -> Seen {
        self.send(Method::GET, path, &[("accept-encoding", ae)])
            .await
    }

    /// Polls until `path` is served in `coding` to a client accepting it.
    async fn ready(&self, path: &str, coding: &str) -> Seen {
        tokio::time::timeout(GUARD, async {
            loop {
                let seen = self.get(path, coding).await;
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

fn varies_on_accept_encoding(seen: &Seen) -> bool {
    seen.headers.get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap()
            .split(',')
            .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding"))
    })
}

#[tokio::test]
async fn the_renderer_is_asked_for_identity_and_each_coding_decodes_to_it() {
    let site = compressing().await;
    let first = site.get("/", "gzip, deflate, br, zstd").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(!first.has("content-encoding"), "{:?}", first.headers);
    assert_eq!(first.body, page());
    assert!(varies_on_accept_encoding(&first));
    site.ready("/", "br").await;
    for coding in ["gzip", "br", "zstd"] {
        let seen = site.get("/", coding).await;
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(seen.one("content-encoding"), coding);
        assert_eq!(seen.one("etag"), format!("\"v1-{coding}\""));
        assert_eq!(seen.one("content-length"), seen.body.len().to_string());
        assert!(seen.body.len() < page().len() / 4, "{coding} is smaller");
        assert!(varies_on_accept_encoding(&seen));
        assert_eq!(decode(coding, &seen.body), page(), "{coding}");
    }
    // The best coding the client accepts, by weight then the server's
    // order (br, zstd, gzip); identity for a client without the field.
    let best = site.get("/", "gzip, deflate, br, zstd").await;
    assert_eq!(best.one("content-encoding"), "br");
    let weighted = site.get("/", "br;q=0.5, gzip").await;
    assert_eq!(weighted.one("content-encoding"), "gzip");
    let none = site.send(Method::GET, "/", &[]).await;
    assert!(!none.has("content-encoding"));
    assert_eq!(none.one("etag"), "\"v1\"");
    assert_eq!(none.body, page());
    let unknown = site.get("/", "compress, x-gzip-ish").await;
    assert!(!unknown.has("content-encoding"));
    assert_eq!(unknown.body, page());
    // A client asking for no-transform (RFC 9111 §5.2.1.6) gets what the
    // origin sent.
    let nt = site
        .send(
            Method::GET,
            "/",
            &[("accept-encoding", "br"), ("cache-control", "no-transform")],
        )
        .await;
    assert!(!nt.has("content-encoding"));
    assert_eq!(nt.body, page());

    assert_eq!(site.origin.calls(), 1);
    let sent = site.origin.accept_encoding.lock().unwrap().clone();
    assert_eq!(sent, [Some("identity".to_owned())]);
}

#[tokio::test]
async fn a_flood_of_accept_encoding_values_is_one_origin_call_and_one_entry() {
    let site = compressing().await;
    // What the entry weighs without its codings, from a twin whose
    // bodies are never compressed (none is large enough): not read on
    // `site` between the store and the job, as the job runs on a thread of
    // its own at once and may be done by then.
    let twin =
        start(|c| CacheLayer::new(c).compression(Compression::new().min_size(usize::MAX))).await;
    twin.get("/", "gzip").await;
    let identity_only = twin.cache.stats().bytes;
    assert!(identity_only > 0);
    site.get("/", "gzip").await;
    site.ready("/", "gzip").await;
    // The codings are counted in the store's weight (polled for: the store
    // counts the swap a moment after a hit can see it).
    tokio::time::timeout(GUARD, async {
        while site.cache.stats().bytes <= identity_only {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{:?} vs {identity_only}: the codings never counted",
            site.cache.stats()
        )
    });
    let stored = site.cache.stats();
    assert_eq!(stored.entries, 1);
    for i in 0..2_000 {
        let ae = format!(
            "gzip;q=0.{:03}, x-made-up-{i}, br;q=0.{:03}",
            i % 1000,
            (i + 7) % 1000
        );
        let seen = site.get("/", &ae).await;
        assert_eq!(seen.status, StatusCode::OK, "{ae}");
        let coding = seen
            .headers
            .get("content-encoding")
            .map_or("identity", |v| v.to_str().unwrap());
        if coding == "identity" {
            assert_eq!(seen.body, page(), "{ae}");
        } else {
            assert_eq!(decode(coding, &seen.body), page(), "{ae}");
        }
    }
    assert_eq!(site.origin.calls(), 1);
    let after = site.cache.stats();
    assert_eq!(after.entries, 1);
    assert_eq!(after.bytes, stored.bytes, "one set of representations");
}

#[tokio::test]
async fn head_and_304_are_per_representation() {
    let site = compressing().await;
    site.get("/", "br").await;
    let br = site.ready("/", "br").await;
    let gzip = site.get("/", "gzip").await;
    assert_eq!(gzip.one("content-encoding"), "gzip");

    for (ae, full) in [("br", &br), ("gzip", &gzip)] {
        let head = site
            .send(Method::HEAD, "/", &[("accept-encoding", ae)])
            .await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        assert_eq!(head.one("content-encoding"), ae);
        assert_eq!(head.one("content-length"), full.body.len().to_string());
        assert_eq!(head.one("etag"), full.one("etag"));
    }
    let head = site.send(Method::HEAD, "/", &[]).await;
    assert!(!head.has("content-encoding"));
    assert_eq!(head.one("content-length"), page().len().to_string());

    // The brotli tag validates the brotli copy only.
    let inm = |ae: &'static str, tag: &'static str| {
        let site = &site;
        async move {
            site.send(
                Method::GET,
                "/",
                &[("accept-encoding", ae), ("if-none-match", tag)],
            )
            .await
        }
    };
    let nm = inm("br", "\"v1-br\"").await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
    assert_eq!(nm.one("etag"), "\"v1-br\"");
    assert!(nm.body.is_empty());
    let other = inm("gzip", "\"v1-br\"").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.one("etag"), "\"v1-gzip\"");
    assert_eq!(decode("gzip", &other.body), page());
    let identity = inm("identity", "\"v1\"").await;
    assert_eq!(identity.status, StatusCode::NOT_MODIFIED);
    assert_eq!(identity.one("etag"), "\"v1\"");
    let stale_tag = inm("identity", "\"v1-br\"").await;
    assert_eq!(stale_tag.status, StatusCode::OK);
    assert_eq!(stale_tag.body, page());
    assert_eq!(site.origin.calls(), 1);
}

#[tokio::test]
async fn no_transform_and_incompressible_types_are_never_compressed() {
    let site = compressing().await;
    for path in ["/no-transform", "/png"] {
        let first = site.get(path, "br, gzip, zstd").await;
        assert!(!first.has("content-encoding"), "{path}");
    }
    // One job at a time, in order: once this page is compressed, any job
    // queued before it has run.
    site.get("/", "br").await;
    site.ready("/", "br").await;
    for path in ["/no-transform", "/png"] {
        let seen = site.get(path, "br, gzip, zstd").await;
        assert_eq!(seen.status, StatusCode::OK);
        assert!(!seen.has("content-encoding"), "{path}: {:?}", seen.headers);
    }
    assert_eq!(site.get("/no-transform", "br").await.body, page());
    assert_eq!(site.get("/png", "br").await.body, noise());
    assert_eq!(site.origin.calls(), 3);
}

#[tokio::test]
async fn without_compression_the_renderer_sees_the_client_value_and_the_key_varies() {
    let site = start(|c| CacheLayer::new(c).no_compression()).await;
    let a = site.get("/", "br").await;
    let b = site.get("/", "gzip").await;
    let c = site.get("/", "br").await;
    for seen in [&a, &b, &c] {
        assert!(!seen.has("content-encoding"));
        assert_eq!(seen.body, page());
    }
    assert_eq!(site.origin.calls(), 2, "one per Accept-Encoding value");
    let sent = site.origin.accept_encoding.lock().unwrap().clone();
    assert_eq!(sent, [Some("br".to_owned()), Some("gzip".to_owned())]);
}

#[tokio::test]
async fn a_304_from_the_origin_keeps_the_codings_with_the_new_headers() {
    let site = compressing().await;
    // `no-cache`: every request is validated with the origin, which
    // answers 304; the codings made survive, their headers updated.
    let first = site.get("/revalidated", "br").await;
    assert!(!first.has("content-encoding"));
    let br = site.ready("/revalidated", "br").await;
    assert_eq!(decode("br", &br.body), page());
    let again = site.get("/revalidated", "br").await;
    assert_eq!(again.one("content-encoding"), "br");
    assert_eq!(again.one("etag"), "\"v1-br\"");
    assert_eq!(again.body, br.body);
    // The field the last 304 carried, not the one of the first response.
    let generation: usize = again.one("x-generation").parse().unwrap();
    assert_eq!(generation, site.origin.calls());
    assert!(generation > 1);
    // The renderer got identity requests and our validator only.
    let sent = site.origin.accept_encoding.lock().unwrap().clone();
    assert!(
        sent.iter().all(|v| v.as_deref() == Some("identity")),
        "{sent:?}"
    );
}

#[tokio::test]
async fn ranges_are_cut_from_the_stored_identity() {
    let site = compressing().await;
    site.get("/", "br").await;
    site.ready("/", "br").await;
    let page = page();
    let len = page.len();
    let range = |value: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let site = &site;
        async move {
            let mut headers = vec![("accept-encoding", "gzip, br, zstd"), ("range", value)];
            headers.extend_from_slice(extra);
            site.send(Method::GET, "/", &headers).await
        }
    };
    let cases: [(&str, std::ops::Range<usize>); 4] = [
        ("bytes=0-99", 0..100),
        ("bytes=100-", 100..len),
        ("bytes=-50", len - 50..len),
        ("bytes=5-5", 5..6),
    ];
    for (value, want) in cases {
        let seen = range(value, &[]).await;
        assert_eq!(seen.status, StatusCode::PARTIAL_CONTENT, "{value}");
        assert!(!seen.has("content-encoding"), "ranges come from identity");
        assert_eq!(seen.body, page.slice(want.clone()), "{value}");
        assert_eq!(
            seen.one("content-range"),
            format!("bytes {}-{}/{len}", want.start, want.end - 1)
        );
        assert_eq!(seen.one("content-length"), want.len().to_string());
        assert_eq!(seen.one("etag"), "\"v1\"");
    }
    let unsatisfiable = range("bytes=999999-", &[]).await;
    assert_eq!(unsatisfiable.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(unsatisfiable.one("content-range"), format!("bytes */{len}"));
    assert!(unsatisfiable.body.is_empty());
    // If-Range with the identity tag: the range; with another: the whole.
    let held = range("bytes=0-9", &[("if-range", "\"v1\"")]).await;
    assert_eq!(held.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(held.body, page.slice(0..10));
    let changed = range("bytes=0-9", &[("if-range", "\"v0\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body, page, "the whole identity it would have cut");
    // Identity refused: a range of the coding chosen, its own tag.
    let br = site.get("/", "br").await.body;
    let coded = site
        .send(
            Method::GET,
            "/",
            &[
                ("accept-encoding", "br, identity;q=0"),
                ("range", "bytes=0-9"),
            ],
        )
        .await;
    assert_eq!(coded.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(coded.one("content-encoding"), "br");
    assert_eq!(coded.one("etag"), "\"v1-br\"");
    assert_eq!(coded.body, br.slice(0..10));
    // A HEAD is never cut; nor are several ranges (sent whole).
    let head = site
        .send(Method::HEAD, "/", &[("range", "bytes=0-9")])
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.one("content-length"), len.to_string());
    let several = range("bytes=0-9, 20-29", &[]).await;
    assert_eq!(several.status, StatusCode::OK);
    assert_eq!(several.body, page);
    assert_eq!(site.origin.calls(), 1);
}

/// What the origin received as `Range` on each call.
fn ranges_seen(origin: &Origin) -> Vec<Option<String>> {
    origin
        .ranges
        .lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r.clone())
        .collect()
}

#[tokio::test]
async fn a_range_miss_fetches_the_whole_stores_it_and_cuts_the_range() {
    let site = compressing().await;
    let page = page();
    let len = page.len();
    let cases: [(&str, &str, Option<std::ops::Range<usize>>); 5] = [
        ("/first", "bytes=0-99", Some(0..100)),
        ("/last", "bytes=100-", Some(100..len)),
        ("/suffix", "bytes=-50", Some(len - 50..len)),
        ("/unsatisfiable", "bytes=999999-", None),
        // Streamed with no length: read whole, stored, then cut.
        ("/stream", "bytes=7990-8009", Some(7990..8010)),
    ];
    for (round, (path, value, want)) in cases.iter().enumerate() {
        for visit in ["miss", "hit"] {
            let seen = site
                .send(
                    Method::GET,
                    path,
                    &[
                        ("accept-encoding", "gzip, deflate, br, zstd"),
                        ("range", value),
                    ],
                )
                .await;
            let status = seen.one("cache-status");
            if visit == "miss" {
                assert!(
                    status.contains("fwd=uri-miss") && status.contains("stored"),
                    "{path}: {status}"
                );
            } else {
                assert!(status.contains("hit"), "{path}: {status}");
            }
            match want {
                Some(want) => {
                    assert_eq!(seen.status, StatusCode::PARTIAL_CONTENT, "{path} {visit}");
                    assert_eq!(seen.body, page.slice(want.clone()), "{path} {visit}");
                    assert_eq!(
                        seen.one("content-range"),
                        format!("bytes {}-{}/{len}", want.start, want.end - 1)
                    );
                    assert_eq!(seen.one("content-length"), want.len().to_string());
                }
                None => {
                    assert_eq!(
                        seen.status,
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "{path} {visit}"
                    );
                    assert_eq!(seen.one("content-range"), format!("bytes */{len}"));
                    assert!(seen.body.is_empty());
                }
            }
            assert!(!seen.has("content-encoding"), "ranges come from identity");
        }
        assert_eq!(site.origin.calls(), round + 1, "{path}: one origin call");
        // What was stored is the whole page, for every client.
        let whole = site.get(path, "").await;
        assert_eq!(whole.status, StatusCode::OK);
        assert_eq!(whole.body, page, "{path}");
        assert_eq!(site.origin.calls(), round + 1);
    }
    assert!(
        ranges_seen(&site.origin).iter().all(Option::is_none),
        "the origin was asked for the whole every time"
    );
}

#[tokio::test]
async fn if_range_on_a_miss_is_checked_against_the_whole_response() {
    let site = compressing().await;
    let page = page();
    let held = site
        .send(
            Method::GET,
            "/held",
            &[("range", "bytes=0-9"), ("if-range", "\"v1\"")],
        )
        .await;
    assert_eq!(held.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(held.body, page.slice(0..10));
    let changed = site
        .send(
            Method::GET,
            "/changed",
            &[("range", "bytes=0-9"), ("if-range", "\"v0\"")],
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "If-Range fails: the whole");
    assert_eq!(changed.body, page);
    assert!(changed.one("cache-status").contains("stored"));
    assert_eq!(site.origin.calls(), 2);
    // Neither field reached the origin, and both pages are stored.
    let seen = site.origin.ranges.lock().unwrap().clone();
    assert_eq!(seen, vec![(None, None), (None, None)]);
    for path in ["/held", "/changed"] {
        assert!(site.get(path, "").await.one("cache-status").contains("hit"));
    }
    assert_eq!(site.origin.calls(), 2);
}

#[tokio::test]
async fn an_unstorable_response_lets_the_origin_answer_the_range() {
    let site = compressing().await;
    let page = page();
    // First seen: asked whole (it might have been storable), not stored,
    // and the range cut from the stream on its way through.
    let first = site
        .send(Method::GET, "/private", &[("range", "bytes=10-19")])
        .await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(first.body, page.slice(10..20));
    assert_eq!(
        first.one("content-range"),
        format!("bytes 10-19/{}", page.len())
    );
    assert!(!first.one("cache-status").contains("stored"));
    // Now known to be uncacheable: the client's `Range` goes through, and
    // the origin's own 206 comes back.
    let second = site
        .send(Method::GET, "/private", &[("range", "bytes=20-29")])
        .await;
    assert_eq!(second.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(second.body, page.slice(20..30));
    assert_eq!(
        ranges_seen(&site.origin),
        vec![None, Some("bytes=20-29".to_owned())]
    );
}

#[tokio::test]
async fn an_upstream_206_is_never_stored() {
    let site = compressing().await;
    let page = page();
    for (n, range) in [Some("bytes=0-9"), None, Some("bytes=0-9")]
        .into_iter()
        .enumerate()
    {
        let headers: &[(&str, &str)] = match range {
            Some(r) => &[("range", r)],
            None => &[],
        };
        let seen = site.send(Method::GET, "/always-206", headers).await;
        assert_eq!(seen.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(seen.body, page.slice(0..10));
        assert!(!seen.one("cache-status").contains("stored"));
        assert!(!seen.one("cache-status").contains("hit"));
        assert_eq!(
            site.origin.calls(),
            n + 1,
            "every request goes to the origin"
        );
    }
    assert_eq!(site.cache.stats().stores, 0);
}

/// Sends `first`, waits until it reached the origin, sends `second`, waits
/// until it joined the flight, then lets the origin answer.
async fn coalesced(
    site: &Site,
    first: &[(&'static str, &'static str)],
    second: &[(&'static str, &'static str)],
) -> (Seen, Seen) {
    let send = |headers: Vec<(&'static str, &'static str)>| {
        let (client, addr) = (site.client.clone(), site.addr);
        tokio::spawn(async move {
            let mut req = http::Request::get(format!("http://{addr}/slow"));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let res = client
                .request(req.body(Empty::new()).unwrap())
                .await
                .unwrap();
            let (parts, body) = res.into_parts();
            Seen {
                status: parts.status,
                headers: parts.headers,
                body: body.collect().await.unwrap().to_bytes(),
            }
        })
    };
    let leader = send(first.to_vec());
    common::until("the leader reaches the origin", || site.origin.calls() == 1).await;
    let waiter = send(second.to_vec());
    common::until("the second request waits for the first", || {
        site.cache.stats().coalesced == 1
    })
    .await;
    site.origin.gate.notify_one();
    (leader.await.unwrap(), waiter.await.unwrap())
}

#[tokio::test]
async fn a_range_and_a_full_get_share_one_origin_call_either_way() {
    let page = page();
    for range_leads in [false, true] {
        let site = compressing().await;
        let ranged: &[(&str, &str)] = &[("range", "bytes=5-14")];
        let full: &[(&str, &str)] = &[("accept-encoding", "br")];
        let (a, b) = if range_leads {
            coalesced(&site, ranged, full).await
        } else {
            coalesced(&site, full, ranged).await
        };
        let (part, whole) = if range_leads { (a, b) } else { (b, a) };
        assert_eq!(
            part.status,
            StatusCode::PARTIAL_CONTENT,
            "range leads: {range_leads}"
        );
        assert_eq!(part.body, page.slice(5..15));
        assert_eq!(
            part.one("content-range"),
            format!("bytes 5-14/{}", page.len())
        );
        assert_eq!(whole.status, StatusCode::OK);
        assert_eq!(whole.body, page, "the whole, identity until br is made");
        assert_eq!(site.origin.calls(), 1);
        assert_eq!(ranges_seen(&site.origin), vec![None]);
    }
}

/// Review finding. RFC 9110 §13.1.5: `If-Range` without `Range` is
/// ignored, so a hit answers it as it answers the same request without it:
/// in the coding the client prefers, not the identity a range is cut from.
#[tokio::test]
async fn if_range_without_range_is_ignored_on_a_hit() {
    let site = compressing().await;
    site.get("/", "br").await;
    let br = site.ready("/", "br").await;
    for if_range in [
        "\"v1\"",
        "\"v1-br\"",
        "\"v0\"",
        "Thu, 01 Jan 2026 00:00:00 GMT",
    ] {
        let seen = site
            .send(
                Method::GET,
                "/",
                &[("accept-encoding", "br"), ("if-range", if_range)],
            )
            .await;
        assert_eq!(seen.status, StatusCode::OK, "{if_range}");
        assert!(seen.one("cache-status").contains("hit"), "{if_range}");
        assert_eq!(seen.one("content-encoding"), "br", "{if_range}: {seen:?}");
        assert_eq!(seen.body, br.body, "{if_range}");
    }
    assert_eq!(site.origin.calls(), 1);
}
