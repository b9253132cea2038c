//! Issue 8, cache side: integrity of the response cache under attack and
//! failure, over real sockets on 127.0.0.1:0. Each named input of the issue
//! is a test here, and each kind has a wider test beside it. Entries are
//! made stale on arrival with an upstream `Age` larger than their lifetime,
//! so no test waits for a clock; concurrency is ordered with gates and
//! counters, never with sleeps.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use common::{get, get_with, serve, until, Seen, GUARD};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ssr::cache::{CacheLayer, ResponseCache};

/// A gate the origin waits at until the test opens it (for good).
#[derive(Clone, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Gate {
    async fn pass(&self) {
        while !self.open.load(Ordering::SeqCst) {
            self.notify.notified().await;
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

/// The requests an origin saw, in order.
#[derive(Clone, Default)]
struct Calls {
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

impl Calls {
    fn record(&self, headers: &HeaderMap, body: Bytes) -> usize {
        let mut all = self.requests.lock().unwrap();
        all.push((headers.clone(), body));
        all.len()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn nth(&self, n: usize) -> HeaderMap {
        self.requests.lock().unwrap()[n - 1].0.clone()
    }
}

fn text(seen: &Seen) -> &str {
    std::str::from_utf8(&seen.body).unwrap()
}

fn status_of(seen: &Seen) -> String {
    seen.headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn new_cache() -> ResponseCache {
    ResponseCache::builder().max_bytes(16 << 20).build()
}

async fn serve_cached(app: Router) -> (SocketAddr, ResponseCache) {
    let cache = new_cache();
    let addr = serve(app.layer(CacheLayer::new(cache.clone()))).await;
    (addr, cache)
}

/// One scripted answer of an origin.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    gated: bool,
}

fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
    Answer {
        status,
        headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        body: body.to_owned(),
        gated: false,
    }
}

/// An origin serving every path whose `n`th call (from 1) answers
/// `script(n, request headers, request body)`.
fn scripted(
    calls: Calls,
    gate: Gate,
    script: impl Fn(usize, &HeaderMap, &Bytes) -> Answer + Clone + Send + Sync + 'static,
) -> Router {
    Router::new().fallback(move |req: Request<Body>| {
        let (calls, gate, script) = (calls.clone(), gate.clone(), script.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let n = calls.record(&parts.headers, body.clone());
            let a = script(n, &parts.headers, &body);
            if a.gated {
                gate.pass().await;
            }
            let mut res = Response::builder().status(a.status);
            for (k, v) in &a.headers {
                res = res.header(*k, v.as_str());
            }
            res.body(Body::from(a.body)).unwrap()
        }
    })
}

// ---------------------------------------------------------------------------
// §2: the 304 merge reaches the client (RFC 9111 §4.3.4)
// ---------------------------------------------------------------------------

/// The named input: stored `public, max-age=1` with `ETag: "e1"`, the 304
/// to the revalidation says `no-store` (or `private`) and sets a cookie.
/// The client gets the 304's fields; the entry is dropped, and the next
/// client gets neither the cookie nor the old entry.
async fn a_304_that_forbids_storing(directive: &'static str) {
    let calls = Calls::default();
    let app = scripted(calls.clone(), Gate::default(), move |n, _, _| match n {
        1 => answer(
            200,
            &[
                ("cache-control", "public, max-age=1"),
                ("etag", "\"e1\""),
                ("age", "5"),
            ],
            "page one",
        ),
        2 => answer(
            304,
            &[
                ("cache-control", directive),
                ("etag", "\"e1\""),
                ("set-cookie", "session=u2; Path=/"),
            ],
            "",
        ),
        _ => answer(200, &[("cache-control", "no-store")], "page three"),
    });
    let (addr, cache) = serve_cached(app).await;

    let first = get(addr, "/home").await;
    assert!(status_of(&first).contains("stored"), "{first:?}");

    let second = get(addr, "/home").await;
    assert_eq!(calls.nth(2)["if-none-match"], "\"e1\"");
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(text(&second), "page one", "the stored body, validated");
    assert_eq!(second.one("cache-control"), directive, "{second:?}");
    assert_eq!(second.one("set-cookie"), "session=u2; Path=/");
    assert!(!status_of(&second).contains("stored"), "{second:?}");

    assert_eq!(
        cache.stats().entries,
        0,
        "the merged response is unstorable"
    );

    let third = get(addr, "/home").await;
    assert_eq!(calls.count(), 3, "nothing left to answer from");
    assert_eq!(text(&third), "page three");
    assert!(!third.has("set-cookie"), "never replayed: {third:?}");
}

#[tokio::test]
async fn a_304_with_no_store_and_a_cookie_reaches_the_client_and_drops_the_entry() {
    a_304_that_forbids_storing("no-store").await;
}

#[tokio::test]
async fn a_304_with_private_and_a_cookie_reaches_the_client_and_drops_the_entry() {
    a_304_that_forbids_storing("private").await;
}

/// Wider: every field of the 304 updates the stored and the served
/// response (RFC 9111 §3.2), except `Content-Length` and the fields never
/// stored; the updated entry then answers hits with them, body intact.
#[tokio::test]
async fn every_field_of_a_304_updates_the_served_and_the_stored_response() {
    let calls = Calls::default();
    let app = scripted(calls.clone(), Gate::default(), |n, _, _| match n {
        1 => answer(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"e1\""),
                ("age", "5"),
                ("x-version", "old"),
                ("content-language", "en"),
                ("link", "</a.css>; rel=preload"),
            ],
            "0123456789",
        ),
        _ => answer(
            304,
            &[
                ("cache-control", "public, max-age=600"),
                ("etag", "\"e1\""),
                ("x-version", "new"),
                ("x-added", "yes"),
                ("link", "</b.css>; rel=preload"),
                ("connection", "x-hop"),
                ("x-hop", "gone"),
            ],
            "",
        ),
    });
    let (addr, _cache) = serve_cached(app).await;

    get(addr, "/page").await;
    for (i, seen) in [get(addr, "/page").await, get(addr, "/page").await]
        .iter()
        .enumerate()
    {
        assert_eq!(text(seen), "0123456789", "{i}: {seen:?}");
        assert_eq!(seen.one("content-length"), "10", "{i}");
        assert_eq!(seen.one("cache-control"), "public, max-age=600", "{i}");
        assert_eq!(seen.one("x-version"), "new", "{i}");
        assert_eq!(seen.one("x-added"), "yes", "{i}");
        assert_eq!(seen.one("link"), "</b.css>; rel=preload", "{i}");
        assert_eq!(seen.one("content-language"), "en", "{i}: kept");
        assert!(!seen.has("x-hop"), "{i}: hop-by-hop is never stored");
    }
    assert_eq!(calls.count(), 2, "the third request was a hit");
}

/// Wider: a background (`stale-while-revalidate`) revalidation answered by
/// a 304 that forbids storing drops the entry too; one answered by an
/// updating 304 updates what later hits carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_revalidation_merges_the_304_or_drops_the_entry() {
    for forbid in [false, true] {
        let calls = Calls::default();
        let app = scripted(calls.clone(), Gate::default(), move |n, _, _| match n {
            1 => answer(
                200,
                &[
                    ("cache-control", "max-age=1, stale-while-revalidate=600"),
                    ("etag", "\"e1\""),
                    ("age", "5"),
                    ("x-version", "old"),
                ],
                "page",
            ),
            // The 304s name the stored tag: one without it selects no
            // stored response (RFC 9111 §4.3.4) and is sent again.
            2 if forbid => answer(
                304,
                &[
                    ("cache-control", "no-store"),
                    ("set-cookie", "s=1"),
                    ("etag", "\"e1\""),
                ],
                "",
            ),
            2 => answer(
                304,
                &[
                    ("cache-control", "max-age=600"),
                    ("x-version", "new"),
                    ("etag", "\"e1\""),
                ],
                "",
            ),
            _ => answer(200, &[("cache-control", "no-store")], "fresh"),
        });
        let (addr, cache) = serve_cached(app).await;
        get(addr, "/swr").await;
        let stale = get(addr, "/swr").await;
        assert_eq!(text(&stale), "page", "served stale at once");
        assert_eq!(stale.one("x-version"), "old");
        until("the background refresh", || calls.count() == 2).await;
        if forbid {
            until("the entry to go", || cache.stats().entries == 0).await;
            let next = get(addr, "/swr").await;
            assert_eq!(text(&next), "fresh", "{next:?}");
            assert!(!next.has("set-cookie"), "{next:?}");
            assert_eq!(calls.count(), 3);
        } else {
            let mut next = get(addr, "/swr").await;
            tokio::time::timeout(GUARD, async {
                while next.one("x-version") != "new" {
                    tokio::task::yield_now().await;
                    next = get(addr, "/swr").await;
                }
            })
            .await
            .expect("the refreshed entry");
            assert!(status_of(&next).contains("hit"), "{next:?}");
            assert_eq!(next.one("cache-control"), "max-age=600");
            assert_eq!(calls.count(), 2);
        }
    }
}

// ---------------------------------------------------------------------------
// §4: requests the cache cannot key safely bypass it
// ---------------------------------------------------------------------------

/// Sends a request with content over a real socket: a `Content-Length`
/// body, or a chunked one (`Transfer-Encoding: chunked`).
async fn send_with_body(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &'static str,
    chunked: bool,
) -> Seen {
    let client = Client::builder(TokioExecutor::new()).build_http::<BoxBody<Bytes, Infallible>>();
    let body: BoxBody<Bytes, Infallible> = if chunked {
        let frames = vec![Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            body.as_bytes(),
        )))];
        StreamBody::new(tokio_stream::iter(frames)).boxed()
    } else {
        Full::new(Bytes::from_static(body.as_bytes())).boxed()
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/x-www-form-urlencoded");
    if chunked {
        // hyper frames a GET body of unknown length only when asked to.
        req = req.header("transfer-encoding", "chunked");
    }
    let req = req.body(body).unwrap();
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Seen {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// An origin that renders whatever form body it is sent into the page,
/// cacheable.
fn echoing(calls: Calls) -> Router {
    scripted(calls, Gate::default(), |n, _, body| {
        let page = format!("page {n} lang={}", String::from_utf8_lossy(body));
        answer(
            200,
            &[("cache-control", "public, max-age=600"), ("etag", "\"p\"")],
            &page,
        )
    })
}

/// The named input: `GET /home` with a form body is forwarded, but what it
/// rendered is not stored, and a plain `GET /home` never gets it.
#[tokio::test]
async fn a_get_with_a_form_body_is_never_stored_nor_served_to_a_plain_get() {
    let calls = Calls::default();
    let (addr, cache) = serve_cached(echoing(calls.clone())).await;

    let injected = "lang=<script>alert(document.cookie)</script>";
    let attack = send_with_body(addr, Method::GET, "/home", injected, false).await;
    assert!(
        text(&attack).contains("<script>"),
        "forwarded with its body"
    );
    assert!(status_of(&attack).contains("bypass"), "{attack:?}");

    assert_eq!(cache.stats().entries, 0);

    let plain = get(addr, "/home").await;
    assert!(!text(&plain).contains("<script>"), "{plain:?}");
    assert_eq!(calls.count(), 2);
}

/// Wider: GET and HEAD with content, by `Content-Length` or chunked, are
/// neither stored nor answered from a stored entry.
#[tokio::test]
async fn requests_with_content_neither_store_nor_hit() {
    let calls = Calls::default();
    let (addr, cache) = serve_cached(echoing(calls.clone())).await;
    let stored = get(addr, "/p").await;
    assert!(status_of(&stored).contains("stored"), "{stored:?}");
    let mut expected_calls = 1;
    for method in [Method::GET, Method::HEAD] {
        for chunked in [false, true] {
            let seen = send_with_body(addr, method.clone(), "/p", "x=1", chunked).await;
            expected_calls += 1;
            assert_eq!(calls.count(), expected_calls, "{method} chunked={chunked}");
            assert!(status_of(&seen).contains("bypass"), "{seen:?}");
            let (headers, body) = calls.requests.lock().unwrap().last().cloned().unwrap();
            assert_eq!(&body[..], b"x=1", "forwarded with its content");
            if chunked {
                assert!(headers.contains_key("transfer-encoding"));
            }
        }
    }
    // The stored entry is untouched and still answers plain requests.
    let hit = get(addr, "/p").await;
    assert!(status_of(&hit).contains("hit"), "{hit:?}");
    assert_eq!(text(&hit), "page 1 lang=");
    // An empty body (`Content-Length: 0`) is no content.
    let empty = get_with(addr, "/p", &[("content-length", "0")]).await;
    assert!(status_of(&empty).contains("hit"), "{empty:?}");

    assert_eq!(cache.stats().entries, 1);
}

// ---------------------------------------------------------------------------
// §5: transient failures never evict, never throttle hits
// ---------------------------------------------------------------------------

const TRANSIENT: [u16; 6] = [408, 425, 429, 500, 503, 504];

/// The named input and its kind: a 408, 425, 429 or 5xx to a revalidation
/// leaves the stored entry in place (the next request validates it again)
/// and does not mark the key uncacheable.
#[tokio::test]
async fn a_transient_answer_to_a_revalidation_keeps_the_entry() {
    for status in TRANSIENT {
        let calls = Calls::default();
        let app = scripted(calls.clone(), Gate::default(), move |n, _, _| match n {
            1 => answer(
                200,
                &[
                    ("cache-control", "max-age=1"),
                    ("etag", "\"e1\""),
                    ("age", "5"),
                ],
                "page",
            ),
            // What TimeoutLayer, rate limiters and CacheControlLayer send.
            2 => answer(status, &[("cache-control", "no-store")], "busy"),
            _ => answer(
                304,
                &[("etag", "\"e1\""), ("cache-control", "max-age=600")],
                "",
            ),
        });
        let (addr, cache) = serve_cached(app).await;
        get(addr, "/t").await;
        let failed = get(addr, "/t").await;
        assert_eq!(failed.status.as_u16(), status, "forwarded as is");

        assert_eq!(cache.stats().entries, 1, "{status}: entry kept");
        let after = get(addr, "/t").await;
        assert_eq!(
            calls.nth(3)["if-none-match"],
            "\"e1\"",
            "{status}: the kept entry is validated"
        );
        assert_eq!(text(&after), "page", "{status}");
        let hit = get(addr, "/t").await;
        assert!(status_of(&hit).contains("hit"), "{status}: {hit:?}");
        assert_eq!(calls.count(), 3);
    }
}

/// `stale-if-error` answers a 408, 425, 429 or 5xx with the stale copy.
#[tokio::test]
async fn stale_if_error_covers_timeouts_and_rate_limits() {
    for status in TRANSIENT {
        let calls = Calls::default();
        let app = scripted(calls.clone(), Gate::default(), move |n, _, _| match n {
            1 => answer(
                200,
                &[
                    ("cache-control", "max-age=1, stale-if-error=600"),
                    ("etag", "\"e1\""),
                    ("age", "5"),
                ],
                "page",
            ),
            _ => answer(status, &[("cache-control", "no-store")], "busy"),
        });
        let (addr, _cache) = serve_cached(app).await;
        get(addr, "/sie").await;
        let seen = get(addr, "/sie").await;
        assert_eq!(seen.status, StatusCode::OK, "{status}");
        assert_eq!(text(&seen), "page", "{status}");
        assert!(
            status_of(&seen).contains(&format!("fwd-status={status}")),
            "{status}: {seen:?}"
        );
    }
}

/// A transient answer to a first request (nothing stored) must not turn
/// coalescing off: during an overload, requests for one key still make one
/// call to the origin at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_answer_keeps_requests_coalesced() {
    for status in [408u16, 429] {
        let calls = Calls::default();
        let gate = Gate::default();
        let app = scripted(calls.clone(), gate.clone(), move |n, _, _| match n {
            1 => answer(status, &[], "busy"),
            _ => Answer {
                gated: true,
                ..answer(200, &[("cache-control", "max-age=600")], "page")
            },
        });
        let (addr, cache) = serve_cached(app).await;
        assert_eq!(get(addr, "/c").await.status.as_u16(), status);
        let a = tokio::spawn(async move { get(addr, "/c").await });
        let b = tokio::spawn(async move { get(addr, "/c").await });
        until("a wait or a second call", || {
            cache.stats().coalesced >= 1 || calls.count() >= 3
        })
        .await;
        assert_eq!(cache.stats().coalesced, 1, "{status}: not coalesced");
        gate.open();
        for t in [a, b] {
            let seen = tokio::time::timeout(GUARD, t).await.unwrap().unwrap();
            assert_eq!(text(&seen), "page", "{seen:?}");
        }
        assert_eq!(calls.count(), 2);
    }
}

/// Serves `svc` the way hyper servers and axum do: per request, a clone
/// made ready, then called (`oneshot`).
async fn serve_service<S>(svc: S) -> SocketAddr
where
    S: Service<
            Request<hyper::body::Incoming>,
            Response = Response<tower_ssr::cache::ResponseBody<Body>>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = svc.clone();
            let handler = hyper::service::service_fn(move |req| svc.clone().oneshot(req));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    addr
}

/// A hit never waits for the inner service's readiness: with tower's
/// `ConcurrencyLimit` of 1 inside the cache, saturated by a slow miss, a
/// stored page is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_concurrency_limit_does_not_hold_back_hits() {
    let calls = Calls::default();
    let gate = Gate::default();
    let origin = scripted(calls.clone(), gate.clone(), |_, headers, _| {
        let slow = headers.contains_key("x-slow");
        Answer {
            gated: slow,
            ..answer(200, &[("cache-control", "max-age=600")], "page")
        }
    });
    let cache = new_cache();
    let stack = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .concurrency_limit(1)
        .service(origin);
    let addr = serve_service(stack).await;

    assert!(status_of(&get(addr, "/hot").await).contains("stored"));
    let slow = tokio::spawn(async move { get_with(addr, "/slow", &[("x-slow", "1")]).await });
    until("the slow miss to hold the only permit", || {
        calls.count() == 2
    })
    .await;

    let hit = tokio::time::timeout(GUARD, get(addr, "/hot"))
        .await
        .expect("a hit waited for the inner service's readiness");
    assert!(status_of(&hit).contains("hit"), "{hit:?}");
    assert_eq!(text(&hit), "page");

    // A miss does wait for the permit, inside its future.
    let other = tokio::spawn(async move { get(addr, "/other").await });
    until("the other miss to be counted", || cache.stats().misses >= 3).await;
    assert_eq!(calls.count(), 2, "the limit still holds misses");
    gate.open();
    let slow = tokio::time::timeout(GUARD, slow).await.unwrap().unwrap();
    assert_eq!(text(&slow), "page");
    let other = tokio::time::timeout(GUARD, other).await.unwrap().unwrap();
    assert_eq!(text(&other), "page");
    assert_eq!(calls.count(), 3);
}

// ---------------------------------------------------------------------------
// §7: unique Vary values cannot push out real clients
// ---------------------------------------------------------------------------

/// One keep-alive client for many requests.
struct Browser {
    client:
        Client<hyper_util::client::legacy::connect::HttpConnector, http_body_util::Empty<Bytes>>,
    addr: SocketAddr,
}

impl Browser {
    fn new(addr: SocketAddr) -> Self {
        Browser {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Seen {
        let mut req = Request::builder().uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .client
            .request(req.body(http_body_util::Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        Seen {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

/// An origin whose page varies on `field`, and says which value it was
/// rendered for.
fn varying(calls: Calls, field: &'static str) -> Router {
    scripted(calls, Gate::default(), move |_, headers, _| {
        let value = headers
            .get(field)
            .map_or("-", |v| v.to_str().unwrap())
            .to_owned();
        answer(
            200,
            &[("cache-control", "public, max-age=600"), ("vary", field)],
            &format!("for {value}"),
        )
    })
}

/// Runs `uniques` one-off values of `field`, with one request of a real
/// client (in turn from `browsers`) after every `every` of them; the real
/// clients' hits and requests.
async fn vary_flood(
    field: &'static str,
    browsers: &[&str],
    uniques: usize,
    every: usize,
) -> (usize, usize) {
    let calls = Calls::default();
    // The origin's own negotiation (the cache's compression off): with it
    // on, the renderer is asked for identity and the key no longer varies
    // on the raw `Accept-Encoding` (tests/cache_representations.rs).
    let layer = CacheLayer::new(new_cache());
    #[cfg(feature = "compression")]
    let layer = layer.no_compression();
    let addr = serve(varying(calls, field).layer(layer)).await;
    let client = Browser::new(addr);
    let (mut hits, mut asked) = (0, 0);
    for u in 0..uniques {
        let value = format!("attack-{u}");
        let seen = client.get("/home", &[(field, &value)]).await;
        assert_eq!(text(&seen), format!("for {value}"));
        if (u + 1) % every == 0 {
            let b = browsers[asked % browsers.len()];
            let seen = client.get("/home", &[(field, b)]).await;
            assert_eq!(text(&seen), format!("for {b}"), "never another's page");
            asked += 1;
            if status_of(&seen).contains("hit") {
                hits += 1;
            }
        }
    }
    (hits, asked)
}

/// The named input: `Vary: Accept-Encoding`, three browser values
/// interleaved 1:9 with 2,000 unique values from one client. Before: the
/// browsers' hits fell from 197/200 to 101/200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_accept_encodings_do_not_push_out_the_browsers() {
    let browsers = [
        "gzip, deflate, br, zstd",
        "gzip, deflate, br",
        "gzip, deflate",
    ];
    let (hits, asked) = vary_flood("accept-encoding", &browsers, 2000, 9).await;
    assert!(hits * 100 >= asked * 95, "{hits}/{asked} browser hits");
}

/// Wider: `Vary: User-Agent` and a sparser interleaving (1:20), which would
/// defeat a plain LRU of 32 variants: the browsers' values are recognised
/// as asked for again and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_user_agents_do_not_push_out_the_browsers() {
    let browsers = [
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    ];
    let (hits, asked) = vary_flood("user-agent", &browsers, 4000, 20).await;
    assert!(hits * 100 >= asked * 95, "{hits}/{asked} browser hits");
}

/// Eviction drops the least recently used variant, not the oldest stored:
/// a variant stored first but used since outlives 32 newer ones stored
/// after its use, and the oldest unused one goes instead.
#[tokio::test]
async fn a_full_variant_list_drops_the_least_recently_used() {
    let calls = Calls::default();
    let (addr, _cache) = serve_cached(varying(calls.clone(), "accept-language")).await;
    let client = Browser::new(addr);
    let lang = |i: usize| format!("l{i}");
    for i in 0..32 {
        client.get("/v", &[("accept-language", &lang(i))]).await;
    }
    // l0 is the oldest stored, and now the most recently used.
    let used = client.get("/v", &[("accept-language", "l0")]).await;
    assert!(status_of(&used).contains("hit"));
    client.get("/v", &[("accept-language", "l32")]).await;
    let before = calls.count();
    let kept = client.get("/v", &[("accept-language", "l0")]).await;
    assert!(status_of(&kept).contains("hit"), "{kept:?}");
    let dropped = client.get("/v", &[("accept-language", "l1")]).await;
    assert!(!status_of(&dropped).contains("hit"), "{dropped:?}");
    assert_eq!(calls.count(), before + 1);
}

// ---------------------------------------------------------------------------
// §3: same request, same answer, cached or not
// ---------------------------------------------------------------------------

const LAST_MODIFIED: &str = "Tue, 01 Oct 2024 10:00:00 GMT";

/// An origin that never answers conditionals itself, with explicit
/// validators; or (`content_etag`) one whose weak ETag `CacheControlLayer`
/// makes from the body, which an empty HEAD body would change.
fn validated(calls: Calls, content_etag: bool) -> Router {
    let app = scripted(calls, Gate::default(), move |_, _, _| {
        let mut headers = vec![
            ("cache-control", "public, max-age=600"),
            ("last-modified", LAST_MODIFIED),
        ];
        if !content_etag {
            headers.push(("etag", "\"e1\""));
        }
        answer(200, &headers, "<html>the page</html>")
    });
    if content_etag {
        app.layer(tower_ssr::cache_control::CacheControlLayer::new())
    } else {
        app
    }
}

/// Status and validators, the part of an answer that must not depend on
/// the cache's state.
fn outcome(seen: &Seen) -> (StatusCode, Option<String>, Option<String>) {
    let h = |n: &str| seen.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    (seen.status, h("etag"), h("last-modified"))
}

/// Every conditional request, GET and HEAD, gets the same status and
/// validators cold (a miss, forwarded) and warm (a hit), and a HEAD the
/// validators its GET gets.
#[tokio::test]
async fn conditional_requests_get_the_same_answer_cold_and_warm() {
    for content_etag in [false, true] {
        // The validator a 304 can match: the origin's own, or the one
        // CacheControlLayer made.
        let etag = {
            let (addr, _) = serve_cached(validated(Calls::default(), content_etag)).await;
            get(addr, "/").await.one("etag").to_owned()
        };
        let strong = etag.trim_start_matches("W/").to_owned();
        let weak = format!("W/{strong}");
        let cases: Vec<Vec<(&str, String)>> = vec![
            vec![],
            vec![("if-none-match", etag.clone())],
            vec![("if-none-match", strong.clone())],
            vec![("if-none-match", weak.clone())],
            vec![("if-none-match", "\"other\"".into())],
            vec![("if-none-match", format!("\"other\", {etag}"))],
            vec![("if-none-match", "*".into())],
            vec![("if-modified-since", LAST_MODIFIED.into())],
            vec![("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT".into())],
            vec![("if-modified-since", "Wed, 01 Jan 2025 00:00:00 GMT".into())],
            vec![("if-modified-since", "not a date".into())],
            vec![
                ("if-none-match", "\"other\"".into()),
                ("if-modified-since", LAST_MODIFIED.into()),
            ],
            vec![
                ("if-none-match", etag.clone()),
                ("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT".into()),
            ],
        ];
        for case in &cases {
            let headers: Vec<(&str, &str)> = case.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut by_method = Vec::new();
            for method in [Method::GET, Method::HEAD] {
                let (cold_addr, _) = serve_cached(validated(Calls::default(), content_etag)).await;
                let cold = common::send(cold_addr, method.clone(), "/", &headers).await;
                let calls = Calls::default();
                let (warm_addr, _) = serve_cached(validated(calls.clone(), content_etag)).await;
                get(warm_addr, "/").await;
                let warm = common::send(warm_addr, method.clone(), "/", &headers).await;
                assert!(status_of(&warm).contains("hit"), "{warm:?}");
                assert_eq!(calls.count(), 1);
                assert_eq!(
                    outcome(&cold),
                    outcome(&warm),
                    "{method} {case:?} content_etag={content_etag}\ncold {cold:?}\nwarm {warm:?}"
                );
                if method == Method::HEAD {
                    assert!(cold.body.is_empty() && warm.body.is_empty());
                }
                by_method.push(outcome(&cold));
            }
            assert_eq!(by_method[0], by_method[1], "GET and HEAD differ: {case:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// §8: upstream failures give clean, bounded answers (cache side)
// ---------------------------------------------------------------------------

type Chunk = Result<Bytes, std::io::Error>;

/// An origin whose body comes from a channel the test feeds, announcing
/// `Content-Length: length`; each call takes the next receiver.
fn fed(length: usize, bodies: Vec<tokio::sync::mpsc::Receiver<Chunk>>, calls: Calls) -> Router {
    let bodies = Arc::new(Mutex::new(bodies.into_iter()));
    Router::new().fallback(move |req: Request<Body>| {
        let (bodies, calls) = (bodies.clone(), calls.clone());
        async move {
            calls.record(req.headers(), Bytes::new());
            let rx = bodies.lock().unwrap().next().expect("one body per call");
            Response::builder()
                .header("cache-control", "public, max-age=600")
                .header("content-length", length)
                .body(Body::from_stream(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .unwrap()
        }
    })
}

/// Opens a GET and returns the response head and body as they arrive.
async fn open(addr: SocketAddr, path: &str) -> hyper::Response<hyper::body::Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let req = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    tokio::time::timeout(GUARD, client.request(req))
        .await
        .expect("response head")
        .unwrap()
}

/// With a known `Content-Length`, a storable response reaches the client
/// while it is read, not once it is whole: the first half arrives before
/// the origin is allowed to send the second; then it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_a_known_length_streams_while_it_is_stored() {
    // Over 64 KiB: smaller known-length bodies are read whole first.
    const HALF: usize = 50_000;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let calls = Calls::default();
    let (addr, _cache) = serve_cached(fed(2 * HALF, vec![rx], calls.clone())).await;
    tx.send(Ok(Bytes::from(vec![b'a'; HALF]))).await.unwrap();
    let res = open(addr, "/known").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut first = Vec::new();
    while first.len() < HALF {
        let frame = tokio::time::timeout(GUARD, body.frame())
            .await
            .expect("the first half before the second was sent")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        first.extend_from_slice(&frame);
    }
    assert_eq!(first, vec![b'a'; HALF]);
    tx.send(Ok(Bytes::from(vec![b'b'; HALF]))).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], &vec![b'b'; HALF][..]);
    let hit = get(addr, "/known").await;
    assert!(status_of(&hit).contains("hit"), "{:?}", hit.headers);
    assert_eq!(hit.body.len(), 2 * HALF);
    assert_eq!(calls.count(), 1);
}

/// The named input: the upstream promises `Content-Length: 1000` and breaks
/// off after 100 bytes, before anything reached the client: a 502, not a
/// reply without a status, and nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_before_anything_was_sent_gets_a_502() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    let calls = Calls::default();
    let (addr, cache) = serve_cached(fed(1000, vec![rx, rx2], calls.clone())).await;
    tx.send(Ok(Bytes::from(vec![b'x'; 100]))).await.unwrap();
    tx.send(Err(std::io::Error::other("upstream closed")))
        .await
        .unwrap();
    let seen = get(addr, "/cut").await;
    assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{seen:?}");
    assert!(seen.body.is_empty());
    assert_eq!(cache.stats().entries, 0, "never stored");
    // A body that simply ends short is as incomplete.
    tx2.send(Ok(Bytes::from(vec![b'x'; 100]))).await.unwrap();
    drop(tx2);
    let short = get(addr, "/cut").await;
    assert_eq!(short.status, StatusCode::BAD_GATEWAY, "{short:?}");
    assert_eq!(cache.stats().entries, 0, "never stored");
    assert_eq!(calls.count(), 2);
}

/// Once bytes have left, a body that breaks off aborts the client's
/// connection (it never looks complete) and is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_after_bytes_left_aborts_and_is_not_stored() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let calls = Calls::default();
    // Over 64 KiB, so it streams (smaller ones are read whole first).
    let (addr, cache) = serve_cached(fed(100_000, vec![rx], calls.clone())).await;
    tx.send(Ok(Bytes::from(vec![b'x'; 100]))).await.unwrap();
    let res = open(addr, "/late").await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first.len(), 100);
    tx.send(Err(std::io::Error::other("upstream closed")))
        .await
        .unwrap();
    let rest = tokio::time::timeout(GUARD, body.collect()).await.unwrap();
    assert!(rest.is_err(), "the client sees the failure");
    assert_eq!(cache.stats().entries, 0, "never stored");
}

/// A body that breaks off with what comes before the failure all ready at
/// once: however many empty polls come between its start and the rest
/// (before the headers left or after), the client gets a status line (a
/// 502, or a 200 cut short), never a connection closed without one. The
/// server used to drop the head and chunks it still held when it met the
/// failure (issue 8 §8, seen under load with a proxied upstream one byte
/// short of its `Content-Length`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_off_always_leaves_its_status_line() {
    for stalls in 0..10 {
        let app = Router::new().fallback(move || async move {
            Response::builder()
                .header("cache-control", "public, max-age=600")
                .body(Body::new(common::raw::BreaksOff::new(stalls)))
                .unwrap()
        });
        let (addr, cache) = serve_cached(app).await;
        let reply = raw_get(addr, "/breaks-off").await;
        assert!(
            reply.starts_with("HTTP/1.1 502") || reply.starts_with("HTTP/1.1 200"),
            "{stalls} stalls: {:?}",
            &reply[..reply.len().min(40)]
        );
        let at = reply.find("\r\n\r\n").unwrap() + 4;
        assert!(reply.len() - at < 300_000, "{stalls}: looks complete");
        assert_eq!(cache.stats().entries, 0, "{stalls}: never stored");
    }
}

// ---------------------------------------------------------------------------
// §8(c): the coalescing leader's client goes away; the render goes on
// ---------------------------------------------------------------------------

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Serves `app` behind the cache, behind a layer that sets `gone` once the
/// response (future, then body) of the request marked `x-leader` is
/// dropped: the test knows the leader's client is gone without a timer.
async fn serve_watched(app: Router, gone: Arc<AtomicBool>) -> (SocketAddr, ResponseCache) {
    let cache = new_cache();
    let watch =
        axum::middleware::from_fn(move |req: Request<Body>, next: axum::middleware::Next| {
            let gone = gone.clone();
            async move {
                let guard = req
                    .headers()
                    .contains_key("x-leader")
                    .then(|| SetOnDrop(gone));
                let (parts, body) = next.run(req).await.into_parts();
                let body = body.map_frame(move |f| {
                    let _ = &guard;
                    f
                });
                Response::from_parts(parts, Body::new(body))
            }
        });
    let app = app.layer(CacheLayer::new(cache.clone())).layer(watch);
    (serve(app).await, cache)
}

/// Sends the leader's request over a raw socket, which the test drops to
/// hang up.
async fn leader(addr: SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-leader: 1\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream
}

/// The named input: the leader's client disconnects while the origin
/// renders; the waiters still get the page, from one origin call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_render_goes_on_for_the_waiters_when_the_leader_hangs_up() {
    let (calls, gate, gone) = (Calls::default(), Gate::default(), Arc::default());
    let app = scripted(calls.clone(), gate.clone(), |_, _, _| Answer {
        gated: true,
        ..answer(200, &[("cache-control", "public, max-age=600")], "page")
    });
    let (addr, cache) = serve_watched(app, Arc::clone(&gone)).await;
    let stream = leader(addr, "/page").await;
    until("the origin is called", || calls.count() == 1).await;
    let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(get(addr, "/page"))).collect();
    until("three waiters", || cache.stats().coalesced == 3).await;
    drop(stream);
    until("the leader's response dropped", || {
        gone.load(Ordering::SeqCst)
    })
    .await;
    gate.open();
    for w in waiters {
        let seen = tokio::time::timeout(GUARD, w).await.unwrap().unwrap();
        assert_eq!(seen.status, StatusCode::OK);
        assert_eq!(text(&seen), "page");
    }
    assert_eq!(calls.count(), 1, "one origin call, not two");
    let after = get(addr, "/page").await;
    assert!(status_of(&after).contains("hit"), "{}", status_of(&after));
    assert_eq!(calls.count(), 1);
}

/// The leader's client leaves mid-body (a streamed, known-length body): the
/// rest is read in the background and stored, and the waiters get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_hangs_up_mid_body_still_stores_the_page_for_the_waiters() {
    use tokio::io::AsyncReadExt as _;
    // Over 64 KiB, so it streams (smaller ones are read whole first).
    const LEN: usize = 100_000;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // A second origin call (the old behaviour) would get a whole body.
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    tx2.send(Ok(Bytes::from(vec![b'z'; LEN]))).await.unwrap();
    drop(tx2);
    let (calls, gone) = (Calls::default(), Arc::new(AtomicBool::new(false)));
    let app = fed(LEN, vec![rx, rx2], calls.clone());
    let (addr, cache) = serve_watched(app, Arc::clone(&gone)).await;
    tx.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
    let mut stream = leader(addr, "/mid").await;
    let rest = vec![b'r'; LEN - 5];
    let mut whole = b"first".to_vec();
    whole.extend_from_slice(&rest);
    let mut seen = Vec::new();
    tokio::time::timeout(GUARD, async {
        while !seen.ends_with(b"first") {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the leader's head and first bytes");
    let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(get(addr, "/mid"))).collect();
    until("three waiters", || cache.stats().coalesced == 3).await;
    drop(stream);
    until("the leader's body dropped", || gone.load(Ordering::SeqCst)).await;
    // Fails (the receiver is gone) when the leader's body was dropped unread.
    let _ = tx.send(Ok(Bytes::from(rest))).await;
    drop(tx);
    for w in waiters {
        let seen = tokio::time::timeout(GUARD, w).await.unwrap().unwrap();
        assert_eq!(seen.status, StatusCode::OK);
        assert!(seen.body[..] == whole[..], "the whole page");
    }
    assert_eq!(calls.count(), 1, "one origin call, not two");
    let after = get(addr, "/mid").await;
    assert!(status_of(&after).contains("hit"), "{}", status_of(&after));
    assert!(after.body[..] == whole[..]);
}

// ---------------------------------------------------------------------------
// §8(b) through the proxy: `CacheLayer` over `ReverseProxy`, as
// examples/proxy stacks them, over an upstream that breaks off
// ---------------------------------------------------------------------------

/// Serves `CacheLayer` over a `ReverseProxy` to `upstream`.
#[cfg(feature = "proxy")]
async fn serve_cached_proxy(upstream: SocketAddr) -> (SocketAddr, ResponseCache) {
    use tower_ssr::balance::{Endpoints, RoundRobin};
    use tower_ssr::proxy::ReverseProxy;
    let set = Endpoints::new(RoundRobin::new());
    set.add("up", format!("http://{upstream}").parse().unwrap())
        .unwrap();
    let cache = new_cache();
    let svc = tower::Layer::layer(
        &CacheLayer::new(cache.clone()),
        ReverseProxy::builder(set).build(),
    );
    (common::raw::serve_svc(svc).await, cache)
}

/// A GET over a raw socket; what came back before the close.
async fn raw_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("the reply ends");
    String::from_utf8_lossy(&out).into_owned()
}

/// The named input, through the real proxy: `Content-Length: 1000`, 100
/// bytes, close. Nothing had reached the client: 502, nothing stored. Run
/// many times, as the close races the first bytes.
#[cfg(feature = "proxy")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_body_through_the_proxy_gets_a_502_every_time() {
    const HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\
                        Cache-Control: public, max-age=600\r\n\r\n";
    let upstream = common::raw::canned_upstream(HEAD, &[b'x'; 100]).await;
    let (addr, cache) = serve_cached_proxy(upstream).await;
    for i in 0..50 {
        let reply = raw_get(addr, &format!("/short?{i}")).await;
        assert!(reply.starts_with("HTTP/1.1 502"), "try {i}: {reply:?}");
    }
    assert_eq!(cache.stats().stores, 0);
}
