//! Regression tests for bugs found by the RFC audit of the response cache,
//! through an axum server on 127.0.0.1:0. Each test names the rule it holds
//! the cache to. Entries are made stale on arrival with an upstream `Age`
//! larger than their lifetime, so no test waits for a clock; concurrency is
//! ordered with gates and counters, never with sleeps.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get as route;
use axum::Router;
use common::{get, get_with, serve, until, Seen, GUARD};
use tokio::sync::Notify;
use tower_ssr::cache::{CacheLayer, ResponseCache};

/// A gate the origin waits at until the test opens it (for good: later
/// calls pass straight through).
#[derive(Clone, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Gate {
    async fn pass(&self) {
        if !self.open.load(Ordering::SeqCst) {
            self.notify.notified().await;
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        // Stores a permit if the origin is not waiting yet.
        self.notify.notify_one();
    }
}

/// The requests the origin saw, in order, and their count.
#[derive(Clone, Default)]
struct Seen2 {
    requests: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Seen2 {
    fn record(&self, headers: &HeaderMap) -> usize {
        let mut all = self.requests.lock().unwrap();
        all.push(headers.clone());
        all.len()
    }

    fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn nth(&self, n: usize) -> HeaderMap {
        self.requests.lock().unwrap()[n - 1].clone()
    }
}

fn text(seen: &Seen) -> &str {
    std::str::from_utf8(&seen.body).unwrap()
}

async fn serve_cached(app: Router) -> (std::net::SocketAddr, ResponseCache) {
    let cache = ResponseCache::builder().max_bytes(16 << 20).build();
    let addr = serve(app.layer(CacheLayer::new(cache.clone()))).await;
    (addr, cache)
}

/// Audit bug 1. RFC 9111 §4.2.4 and §5.2.2.2: a stale `must-revalidate`
/// response is never used without validation, and a collapsed waiter may
/// only get the leader's own response (RFC-CHECKLIST §4). Here the leader
/// fetches another variant (`fr`); the `en` waiter must not be handed its
/// own stale variant when the flight ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_never_gets_its_own_stale_variant_when_another_variant_was_fetched() {
    let origin = Seen2::default();
    let gate = Gate::default();
    let app = Router::new().route(
        "/v",
        route({
            let origin = origin.clone();
            let gate = gate.clone();
            move |headers: HeaderMap| async move {
                let n = origin.record(&headers);
                let lang = headers
                    .get("accept-language")
                    .map_or("", |v| v.to_str().unwrap())
                    .to_owned();
                if lang == "fr" {
                    gate.pass().await;
                }
                Response::builder()
                    // Stale on arrival (Age > max-age), and strict.
                    .header("cache-control", "max-age=1, must-revalidate")
                    .header("age", "5")
                    .header("vary", "accept-language")
                    .header("etag", format!("\"{lang}{n}\""))
                    .body(Body::from(format!("{lang} v{n}")))
                    .unwrap()
            }
        }),
    );
    let (addr, cache) = serve_cached(app).await;
    let en = [("accept-language", "en")];

    let first = get_with(addr, "/v", &en).await;
    assert_eq!(text(&first), "en v1");
    assert!(first.one("cache-status").contains("stored"), "{first:?}");

    // The fr request leads the flight for the URI and is held at the origin.
    let fr = tokio::spawn(async move { get_with(addr, "/v", &[("accept-language", "fr")]).await });
    until("fr to reach the origin", || origin.calls() == 2).await;
    // The en request finds its variant stale and waits on that flight.
    let waiter = tokio::spawn(async move { get_with(addr, "/v", &en).await });
    until("en to wait", || cache.stats().coalesced >= 1).await;
    gate.open();

    let fr = tokio::time::timeout(GUARD, fr).await.unwrap().unwrap();
    assert_eq!(text(&fr), "fr v2");
    let en = tokio::time::timeout(GUARD, waiter).await.unwrap().unwrap();
    assert_eq!(en.status, StatusCode::OK);
    assert_ne!(text(&en), "en v1", "stale en served unvalidated: {en:?}");
    assert_eq!(text(&en), "en v3");
    assert_eq!(origin.calls(), 3);
    // The origin was asked to validate the stored en variant.
    assert_eq!(origin.nth(3)["if-none-match"], "\"en1\"");
}

/// An origin at `path` answering every GET with `cache_control` (and an
/// ETag), counting what it sees; a `Range` gets a 206, an `If-Match` a 412,
/// as a real origin would answer them.
fn plain_origin(path: &str, cache_control: &'static str, origin: Seen2) -> Router {
    Router::new().route(
        path,
        route(move |headers: HeaderMap| async move {
            let n = origin.record(&headers);
            let res = Response::builder()
                .header("cache-control", cache_control)
                .header("age", "5")
                .header("etag", format!("\"{n}\""));
            if headers.contains_key("range") {
                return res
                    .status(206)
                    .header("content-range", "bytes 0-0/4")
                    .body(Body::from("p"))
                    .unwrap();
            }
            if headers.contains_key("if-match") {
                return res.status(412).body(Body::empty()).unwrap();
            }
            res.body(Body::from(format!("page {n}"))).unwrap()
        }),
    )
}

/// Audit bug 4. RFC 9111 §5.2.1.5: a request's `no-store` concerns that
/// request and its response only; it does not purge what is stored for
/// everyone else.
#[tokio::test]
async fn a_client_no_store_request_does_not_evict_the_stored_entry() {
    let origin = Seen2::default();
    // Fresh for ten minutes despite the Age of 5.
    let app = plain_origin("/ns", "max-age=600", origin.clone());
    let (addr, cache) = serve_cached(app).await;

    assert_eq!(text(&get(addr, "/ns").await), "page 1");
    let bust = get_with(addr, "/ns", &[("cache-control", "no-store, no-cache")]).await;
    assert_eq!(text(&bust), "page 2");
    let after = get(addr, "/ns").await;
    assert_eq!(text(&after), "page 1", "{after:?}");
    assert!(after.one("cache-status").contains("hit"), "{after:?}");
    assert_eq!(origin.calls(), 2);
    assert_eq!(cache.stats().entries, 1);
}

/// Audit bug 4. The stale-while-revalidate refresh is the cache's own
/// request (RFC 5861 §3): a plain GET validated with the stored validators
/// (RFC 9111 §4.3.1), never the client's range, preconditions or
/// directives, whose answers (206, 412, not stored) would evict the entry.
#[tokio::test]
async fn the_background_refresh_is_a_clean_get_whatever_the_client_sent() {
    let origin = Seen2::default();
    // Stale on arrival, within its stale-while-revalidate window.
    let app = plain_origin(
        "/swr",
        "max-age=1, stale-while-revalidate=600",
        origin.clone(),
    );
    let (addr, cache) = serve_cached(app).await;

    assert_eq!(text(&get(addr, "/swr").await), "page 1");
    // (`If-Match` and `If-Unmodified-Since` are never answered from the
    // cache: see `origin_only_preconditions_are_forwarded_even_on_a_hit`.)
    let client = [
        ("range", "bytes=0-0"),
        ("if-range", "\"1\""),
        ("if-none-match", "\"other\""),
        ("cache-control", "no-store"),
        ("pragma", "no-cache"),
    ];
    let stale = get_with(addr, "/swr", &client).await;
    assert!(stale.one("cache-status").contains("hit"), "{stale:?}");

    until("the refresh to reach the origin", || origin.calls() == 2).await;
    let refresh = origin.nth(2);
    for (name, _) in client.iter().filter(|(n, _)| *n != "if-none-match") {
        assert!(
            !refresh.contains_key(*name),
            "refresh sent {name}: {refresh:?}"
        );
    }
    assert_eq!(refresh["if-none-match"], "\"1\"", "the stored validator");

    until("the refresh to store", || cache.stats().stores == 2).await;
    let after = get(addr, "/swr").await;
    // Stale again on arrival, so served while another refresh starts.
    assert_eq!(text(&after), "page 2", "{after:?}");
    assert!(after.one("cache-status").contains("hit"), "{after:?}");
}

/// An origin at `path` whose `n`th call answers `script(n)`: a status, its
/// Cache-Control, and whether to wait at `gate` first.
fn scripted(
    path: &str,
    origin: Seen2,
    gate: Gate,
    script: fn(usize) -> (u16, &'static str, bool),
) -> Router {
    Router::new().route(
        path,
        route(move |headers: HeaderMap| async move {
            let n = origin.record(&headers);
            let (status, cache_control, gated) = script(n);
            if gated {
                gate.pass().await;
            }
            Response::builder()
                .status(status)
                .header("cache-control", cache_control)
                .header("etag", "\"e\"")
                .body(Body::from(format!("page {n}")))
                .unwrap()
        }),
    )
}

/// Audit bug 5. RFC 9111 §4.3.3: a 5xx to a validation may be forwarded, or
/// the cache may act as if the origin did not answer; nothing calls for
/// dropping the stored response. Here the 5xx carries `no-store`, as
/// `CacheControlLayer` sends by default.
#[tokio::test]
async fn a_server_error_does_not_evict_the_stored_entry() {
    let origin = Seen2::default();
    let app = scripted("/down", origin.clone(), Gate::default(), |n| match n {
        2 => (500, "no-store", false),
        _ => (200, "max-age=600", false),
    });
    let (addr, cache) = serve_cached(app).await;

    assert_eq!(text(&get(addr, "/down").await), "page 1");
    let reload = get_with(addr, "/down", &[("cache-control", "no-cache")]).await;
    assert_eq!(reload.status, StatusCode::INTERNAL_SERVER_ERROR);
    let after = get(addr, "/down").await;
    assert_eq!(text(&after), "page 1", "{after:?}");
    assert!(after.one("cache-status").contains("hit"), "{after:?}");
    assert_eq!(origin.calls(), 2);
    assert_eq!(cache.stats().entries, 1);
}

/// Audit bug 5. A 5xx says nothing about whether the resource is storable,
/// so it must not mark the URI uncacheable: during an outage, requests for
/// one key still make one call to the origin at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_keeps_requests_coalesced() {
    let origin = Seen2::default();
    let gate = Gate::default();
    let app = scripted("/outage", origin.clone(), gate.clone(), |n| match n {
        1 => (503, "no-store", false),
        _ => (200, "max-age=600", true),
    });
    let (addr, cache) = serve_cached(app).await;

    assert_eq!(
        get(addr, "/outage").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let a = tokio::spawn(async move { get(addr, "/outage").await });
    let b = tokio::spawn(async move { get(addr, "/outage").await });
    // Either the second request waits on the first, or (the bug) both reach
    // the origin; whichever happens first, the test then knows.
    until("a wait or a second call", || {
        cache.stats().coalesced >= 1 || origin.calls() >= 3
    })
    .await;
    assert_eq!(cache.stats().coalesced, 1, "not coalesced");
    gate.open();
    for t in [a, b] {
        let seen = tokio::time::timeout(GUARD, t).await.unwrap().unwrap();
        assert_eq!(text(&seen), "page 2", "{seen:?}");
    }
    assert_eq!(origin.calls(), 2);
}

/// Audit bug 5, related. When the leader's request fails, one waiter takes
/// over and the others wait for it, instead of every waiter calling the
/// origin at once: a single failure (a 503 here) is retried once, not
/// multiplied by the number of waiters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_leader_one_waiter_takes_over() {
    let origin = Seen2::default();
    let gate = Gate::default();
    let app = scripted("/blip", origin.clone(), gate.clone(), |n| match n {
        1 => (503, "no-store", true),
        _ => (200, "max-age=600", false),
    });
    let (addr, cache) = serve_cached(app).await;

    let first = tokio::spawn(async move { get(addr, "/blip").await });
    until("the leader to reach the origin", || origin.calls() == 1).await;
    let waiters: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/blip").await }))
        .collect();
    until("three waiters", || cache.stats().coalesced >= 3).await;
    gate.open();

    let first = tokio::time::timeout(GUARD, first).await.unwrap().unwrap();
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    for t in waiters {
        let seen = tokio::time::timeout(GUARD, t).await.unwrap().unwrap();
        assert_eq!(text(&seen), "page 2", "{seen:?}");
    }
    assert_eq!(origin.calls(), 2, "one take-over, not one call per waiter");
}

/// An origin whose first answer (stale on arrival) carries `validators`,
/// whose answers to a conditional request are `304` with `not_modified`,
/// and whose unconditional answers after the first are a new page `v2`
/// with `ETag: "n"`.
fn revalidating_origin(
    validators: &'static [(&'static str, &'static str)],
    not_modified: &'static [(&'static str, &'static str)],
    origin: Seen2,
) -> Router {
    Router::new().route(
        "/p",
        route(move |headers: HeaderMap| {
            let origin = origin.clone();
            async move {
                let n = origin.record(&headers);
                let conditional = headers.contains_key("if-none-match")
                    || headers.contains_key("if-modified-since");
                let mut res = Response::builder();
                if n == 1 {
                    res = res.header("cache-control", "max-age=1").header("age", "5");
                    for (k, v) in validators {
                        res = res.header(*k, *v);
                    }
                    return res.body(Body::from("v1")).unwrap();
                }
                if conditional {
                    res = res.status(304).header("cache-control", "max-age=60");
                    for (k, v) in not_modified {
                        res = res.header(*k, *v);
                    }
                    return res.body(Body::empty()).unwrap();
                }
                res.header("cache-control", "max-age=60")
                    .header("etag", "\"n\"")
                    .body(Body::from("v2"))
                    .unwrap()
            }
        }),
    )
}

const LM: (&str, &str) = ("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT");

/// Model finding (issue 8 §11). RFC 9111 §4.3.4: a `304` whose validators
/// select no stored response updates none, and is no answer for the stored
/// one: the cache sends the request again without its validators (RFC
/// 2616 §10.3.5) and serves and stores that answer.
#[tokio::test]
async fn a_304_that_selects_no_stored_response_is_followed_by_an_unconditional_request() {
    let cases: &[(&[(&str, &str)], &[(&str, &str)])] = &[
        // Validated by Last-Modified alone; the 304 names a strong tag.
        (&[LM], &[("etag", "\"n\"")]),
        // A strong tag selects only the same strong tag.
        (&[("etag", "W/\"x\"")], &[("etag", "\"x\"")]),
        (&[("etag", "\"x\"")], &[("etag", "\"y\"")]),
    ];
    for (validators, not_modified) in cases {
        let origin = Seen2::default();
        let (addr, _) = serve_cached(revalidating_origin(
            validators,
            not_modified,
            origin.clone(),
        ))
        .await;
        assert_eq!(text(&get(addr, "/p").await), "v1");
        let again = get(addr, "/p").await;
        let case = format!("stored {validators:?}, 304 {not_modified:?}");
        assert_eq!(text(&again), "v2", "{case}: {again:?}");
        assert_eq!(origin.calls(), 3, "{case}");
        let sent = origin.nth(3);
        assert!(
            !sent.contains_key("if-none-match") && !sent.contains_key("if-modified-since"),
            "{case}: sent again with validators {sent:?}"
        );
        let hit = get(addr, "/p").await;
        assert_eq!(text(&hit), "v2", "{case}");
        assert!(hit.one("cache-status").contains("hit"), "{case}: {hit:?}");
        assert_eq!(origin.calls(), 3, "{case}");
    }
}

/// The other side of §4.3.4: a `304` that selects the stored response
/// freshens it, and nothing is sent again.
#[tokio::test]
async fn a_304_that_selects_the_stored_response_freshens_it() {
    let cases: &[(&[(&str, &str)], &[(&str, &str)])] = &[
        (&[("etag", "\"x\"")], &[("etag", "\"x\"")]),
        // A weak tag selects by weak comparison.
        (&[("etag", "\"x\"")], &[("etag", "W/\"x\"")]),
        (&[("etag", "W/\"x\"")], &[("etag", "W/\"x\"")]),
        // Without a tag, the response that was validated (origins that
        // leave ETag out of a 304 are common).
        (&[LM], &[]),
        (&[("etag", "\"x\""), LM], &[]),
    ];
    for (validators, not_modified) in cases {
        let origin = Seen2::default();
        let (addr, _) = serve_cached(revalidating_origin(
            validators,
            not_modified,
            origin.clone(),
        ))
        .await;
        get(addr, "/p").await;
        let again = get(addr, "/p").await;
        let case = format!("stored {validators:?}, 304 {not_modified:?}");
        assert_eq!(text(&again), "v1", "{case}: {again:?}");
        assert!(
            again.one("cache-status").contains("fwd-status=304"),
            "{case}: {again:?}"
        );
        assert_eq!(origin.calls(), 2, "{case}");
        let hit = get(addr, "/p").await;
        assert!(hit.one("cache-status").contains("hit"), "{case}: {hit:?}");
        assert_eq!(origin.calls(), 2, "{case}");
    }
}

/// Review finding. RFC 9111 §4.3.4 and RFC 9110 §15.4.5: when a `304`
/// selects no stored response, the cache sends the request again without
/// validators; a `304` to that unconditional request answers nothing the
/// client asked (it had no validators either, or its own were taken off),
/// so it never reaches the client as is. The client gets the stored
/// response the first `304` vouched for, as when the request cannot be
/// sent again.
#[tokio::test]
async fn a_304_to_the_unconditional_resend_is_not_forwarded() {
    let origin = Seen2::default();
    let app = Router::new().route(
        "/p",
        route({
            let origin = origin.clone();
            move |headers: HeaderMap| {
                let origin = origin.clone();
                async move {
                    let n = origin.record(&headers);
                    if n == 1 {
                        return Response::builder()
                            .header("cache-control", "max-age=1")
                            .header("age", "5")
                            .header("etag", "\"x\"")
                            .body(Body::from("v1"))
                            .unwrap();
                    }
                    // A broken origin: a 304 naming another tag, to the
                    // validation and to the request sent again alike.
                    Response::builder()
                        .status(304)
                        .header("cache-control", "max-age=60")
                        .header("etag", "\"y\"")
                        .body(Body::empty())
                        .unwrap()
                }
            }
        }),
    );
    let (addr, _) = serve_cached(app).await;
    assert_eq!(text(&get(addr, "/p").await), "v1");
    let again = get(addr, "/p").await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(text(&again), "v1", "{again:?}");
    assert!(
        again.one("cache-status").contains("fwd-status=304"),
        "{again:?}"
    );
    assert_eq!(origin.calls(), 3, "validated, then sent once again");
    assert!(!origin.nth(3).contains_key("if-none-match"));
}

/// Review finding. RFC 9110 §8.6, §9.3.2: a `Content-Length` in the answer
/// to a HEAD is the length the GET's content would have. A HEAD goes
/// inward as a GET; when that response is not stored (longer than
/// `max_body`, or not storable) only its head is sent, and the empty body
/// must not pass for the GET's (axum's router writes `Content-Length: 0`
/// for a body that says it is empty): the known length, or none.
#[tokio::test]
async fn a_head_passed_through_keeps_the_length_of_the_get() {
    let page = "0123456789abcdef".repeat(1250);
    let app = Router::new().fallback({
        let page = page.clone();
        move |uri: axum::http::Uri| {
            let page = page.clone();
            async move {
                let res = Response::builder().header("etag", "\"e\"");
                match uri.path() {
                    // Longer than max_body.
                    "/long" => res.header("cache-control", "max-age=600"),
                    "/private" => res.header("cache-control", "private, max-age=600"),
                    // Of unknown length, longer than max_body.
                    _ => {
                        let chunks = [page[..7000].to_owned(), page[7000..].to_owned()];
                        let stream = tokio_stream::iter(chunks.map(Ok::<_, std::io::Error>));
                        return res
                            .header("cache-control", "max-age=600")
                            .body(Body::from_stream(stream))
                            .unwrap();
                    }
                }
                .body(Body::from(page))
                .unwrap()
            }
        }
    });
    let cache = ResponseCache::builder().max_bytes(16 << 20).build();
    let addr = serve(app.layer(CacheLayer::new(cache).max_body(10_000))).await;
    for (path, length) in [
        ("/long", Some("20000")),
        ("/private", Some("20000")),
        ("/stream", None),
    ] {
        // The first HEAD leads a flight; the second finds the key known
        // uncacheable and goes straight through.
        for round in 0..2 {
            let head = common::send(addr, axum::http::Method::HEAD, path, &[]).await;
            assert_eq!(head.status, StatusCode::OK, "{path}");
            assert!(head.body.is_empty());
            assert_eq!(
                head.headers
                    .get("content-length")
                    .map(|v| v.to_str().unwrap()),
                length,
                "{path} round {round}: {head:?}"
            );
        }
        let get = get(addr, path).await;
        assert_eq!(get.body.len(), 20_000, "{path}");
    }
}

/// RFC 9111 §4.3.2: `If-Match` and `If-Unmodified-Since` apply to the
/// origin only, so a request carrying one is forwarded even when a fresh
/// response is stored: a download resumed against an older version gets
/// the origin's 412, not a range of the stored newer one.
#[tokio::test]
async fn origin_only_preconditions_are_forwarded_even_on_a_hit() {
    let origin = Seen2::default();
    let app = Router::new().route(
        "/f",
        route({
            let origin = origin.clone();
            move |headers: HeaderMap| async move {
                origin.record(&headers);
                let stale_tag = headers
                    .get("if-match")
                    .is_some_and(|v| v.as_bytes() != b"\"v2\"");
                let since = headers.contains_key("if-unmodified-since");
                let status = if stale_tag || since { 412 } else { 200 };
                Response::builder()
                    .status(status)
                    .header("cache-control", "max-age=600")
                    .header("etag", "\"v2\"")
                    .body(Body::from("0123456789"))
                    .unwrap()
            }
        }),
    );
    let (addr, _) = serve_cached(app).await;
    assert!(get(addr, "/f").await.one("cache-status").contains("stored"));
    for precondition in [
        ("if-match", "\"v1\""),
        ("if-unmodified-since", "Thu, 01 Jan 2026 00:00:00 GMT"),
    ] {
        let before = origin.calls();
        let seen = get_with(addr, "/f", &[precondition, ("range", "bytes=0-3")]).await;
        assert_eq!(
            seen.status,
            StatusCode::PRECONDITION_FAILED,
            "{precondition:?}: {seen:?}"
        );
        assert_eq!(origin.calls(), before + 1, "{precondition:?}");
    }
    // Without them, the stored page answers.
    let hit = get_with(addr, "/f", &[("range", "bytes=0-3")]).await;
    assert_eq!(hit.status, StatusCode::PARTIAL_CONTENT);
    assert!(hit.one("cache-status").contains("hit"), "{hit:?}");
}
