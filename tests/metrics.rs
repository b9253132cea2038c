//! Metrics through a test recorder, and the outcome / upstream extensions
//! and `Server-Timing` through real sockets.
#![cfg(all(feature = "metrics", feature = "proxy", feature = "cache"))]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::response::IntoResponse;
use axum::routing::get as route;
use axum::Router;
use common::{get, send, serve, serve_proxy, until, GUARD};
use http::{HeaderValue, Method, StatusCode, Uri};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::Notify;
use tower_ssr::balance::{Endpoints, PassiveHealth, Retries, RoundRobin, Upstream};
use tower_ssr::cache::{CacheLayer, CacheOutcome, ResponseCache};
use tower_ssr::proxy::ReverseProxy;

/// The recorder is process-wide and a snapshot drains it, so the tests of
/// this file take turns; each names its own cache and endpoints too.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn snapshotter() -> &'static Snapshotter {
    static SNAP: OnceLock<Snapshotter> = OnceLock::new();
    SNAP.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        snapshotter
    })
}

/// Everything recorded since the last call: `name{label=value,...}` (labels
/// sorted) to its value.
fn drain() -> HashMap<String, DebugValue> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn counter(m: &HashMap<String, DebugValue>, key: &str) -> u64 {
    match m.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        other => panic!("{key} is not a counter: {other:?}"),
    }
}

fn gauge(m: &HashMap<String, DebugValue>, key: &str) -> f64 {
    match m.get(key) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{key} is not a recorded gauge: {other:?}"),
    }
}

fn histogram_len(m: &HashMap<String, DebugValue>, key: &str) -> usize {
    match m.get(key) {
        Some(DebugValue::Histogram(v)) => v.len(),
        None => 0,
        other => panic!("{key} is not a histogram: {other:?}"),
    }
}

/// Copies the typed extensions into headers, as an access log would read
/// them, so the client on the other side of the socket can see them.
async fn expose(mut res: axum::response::Response) -> axum::response::Response {
    let outcome = res.extensions().get::<CacheOutcome>().map(|o| o.as_str());
    if let Some(o) = outcome {
        res.headers_mut()
            .insert("x-outcome", HeaderValue::from_static(o));
    }
    let upstream = res
        .extensions()
        .get::<Upstream>()
        .map(|u| u.name().to_owned());
    if let Some(u) = upstream {
        res.headers_mut()
            .insert("x-served-by", HeaderValue::from_str(&u).unwrap());
    }
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_outcomes_are_counted_tagged_and_timed() {
    let _turn = TURN.lock().await;
    drain();
    let release = Arc::new(Notify::new());
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/page",
            route(|| async {
                (
                    [
                        ("cache-control", "public, s-maxage=60"),
                        ("server-timing", "render;dur=7"),
                    ],
                    "page",
                )
            }),
        )
        .route(
            "/swr",
            route(|| async {
                (
                    // Already stale when it arrives, within its
                    // stale-while-revalidate window.
                    [
                        (
                            "cache-control",
                            "public, s-maxage=60, stale-while-revalidate=600",
                        ),
                        ("age", "100"),
                    ],
                    "swr",
                )
            }),
        )
        .route(
            "/etag",
            route(|headers: http::HeaderMap| async move {
                if headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
                    return (StatusCode::NOT_MODIFIED, [("etag", "\"v1\"")]).into_response();
                }
                (
                    [("cache-control", "public, max-age=0"), ("etag", "\"v1\"")],
                    "etag",
                )
                    .into_response()
            }),
        )
        .route(
            "/slow",
            route({
                let release = Arc::clone(&release);
                let slow_calls = Arc::clone(&slow_calls);
                move || async move {
                    slow_calls.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    ([("cache-control", "public, s-maxage=60")], "slow")
                }
            })
            .post(|| async { "posted" }),
        );
    let cache = ResponseCache::new();
    let layer = CacheLayer::new(cache.clone())
        .cache_name("t-outcomes")
        .server_timing(true);
    let addr = serve(
        app.layer(layer)
            .layer(axum::middleware::map_response(expose)),
    )
    .await;

    // miss, then hit; the app's own Server-Timing entry is kept.
    let first = get(addr, "/page").await;
    assert_eq!(first.one("x-outcome"), "miss");
    let timing = first.one("server-timing");
    assert!(
        timing.starts_with("render;dur=7, cache;desc=miss, upstream;dur="),
        "{timing}"
    );
    let second = get(addr, "/page").await;
    assert_eq!(second.one("x-outcome"), "hit");
    assert_eq!(second.one("server-timing"), "render;dur=7, cache;desc=hit");

    // miss, then stale (stale-while-revalidate; the background refresh
    // answers no client and is not counted).
    assert_eq!(get(addr, "/swr").await.one("x-outcome"), "miss");
    let stale = get(addr, "/swr").await;
    assert_eq!(stale.one("x-outcome"), "stale");
    assert_eq!(stale.one("server-timing"), "cache;desc=stale");

    // miss, then revalidated with a 304.
    assert_eq!(get(addr, "/etag").await.one("x-outcome"), "miss");
    let reval = get(addr, "/etag").await;
    assert_eq!(reval.one("x-outcome"), "revalidated");
    assert!(reval
        .one("server-timing")
        .starts_with("cache;desc=revalidated, upstream;dur="));

    // bypass: an unsafe method.
    let post = send(addr, Method::POST, "/slow", &[]).await;
    assert_eq!(post.one("x-outcome"), "bypass");

    // coalesced: a second request waits for the first one's fetch.
    let leader = tokio::spawn(async move { get(addr, "/slow").await });
    until("the leader in the handler", || {
        slow_calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiter = tokio::spawn(async move { get(addr, "/slow").await });
    until("the waiter joined the flight", || {
        cache.stats().coalesced == 1
    })
    .await;
    release.notify_one();
    let leader = tokio::time::timeout(GUARD, leader).await.unwrap().unwrap();
    let waiter = tokio::time::timeout(GUARD, waiter).await.unwrap().unwrap();
    assert_eq!(leader.one("x-outcome"), "miss");
    assert_eq!(waiter.one("x-outcome"), "coalesced");
    assert_eq!(slow_calls.load(Ordering::SeqCst), 1);

    let m = drain();
    let outcome = |o: &str| {
        counter(
            &m,
            &format!("tower_ssr_cache_requests_total{{cache=t-outcomes,outcome={o}}}"),
        )
    };
    assert_eq!(outcome("miss"), 4, "{m:#?}");
    assert_eq!(outcome("hit"), 1);
    assert_eq!(outcome("stale"), 1);
    assert_eq!(outcome("revalidated"), 1);
    assert_eq!(outcome("bypass"), 1);
    assert_eq!(outcome("coalesced"), 1);
    // /page, /swr, /etag, /slow stored; /etag freshened by its 304; the
    // background refresh of /swr stores once more, maybe not yet.
    let stores = counter(&m, "tower_ssr_cache_stores_total{cache=t-outcomes}");
    assert!((5..=6).contains(&stores), "stores {stores}");
    assert!(gauge(&m, "tower_ssr_cache_bytes{cache=t-outcomes}") > 0.0);
    assert!(gauge(&m, "tower_ssr_cache_entries{cache=t-outcomes}") >= 1.0);
}

#[tokio::test]
async fn purges_and_evictions_are_counted_by_cache_name() {
    let _turn = TURN.lock().await;
    drain();
    let app = Router::new().route(
        "/{n}",
        route(|| async { ([("cache-control", "public, s-maxage=60")], "x".repeat(2000)) }),
    );
    // Room for a few 2 KB pages only.
    let cache = ResponseCache::builder().max_bytes(8 * 1024).build();
    let layer = CacheLayer::new(cache.clone()).cache_name("t-purges");
    let addr = serve(app.layer(layer)).await;
    for n in 0..20 {
        get(addr, &format!("/{n}")).await;
    }
    cache.purge_path("/1");
    cache.purge_tag("nothing");
    cache.purge_all();
    let stats = cache.stats();
    assert!(stats.evictions > 0, "{stats:?}");
    let m = drain();
    assert_eq!(
        counter(&m, "tower_ssr_cache_evictions_total{cache=t-purges}"),
        stats.evictions
    );
    assert_eq!(
        counter(&m, "tower_ssr_cache_purges_total{cache=t-purges,kind=path}"),
        1
    );
    assert_eq!(
        counter(&m, "tower_ssr_cache_purges_total{cache=t-purges,kind=tag}"),
        1
    );
    assert_eq!(
        counter(&m, "tower_ssr_cache_purges_total{cache=t-purges,kind=all}"),
        1
    );
    assert_eq!(
        counter(&m, "tower_ssr_cache_purges_total{cache=t-purges,kind=key}"),
        0
    );
    assert_eq!(
        counter(&m, "tower_ssr_cache_stores_total{cache=t-purges}"),
        stats.stores
    );
}

fn uri(addr: std::net::SocketAddr) -> Uri {
    format!("http://{addr}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_attempts_ejections_and_retries_are_counted() {
    let _turn = TURN.lock().await;
    drain();
    let live = serve(Router::new().route("/", route(|| async { "up" }))).await;
    // A port with nothing listening: connections are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (live_name, dead_name) = (format!("live-{live}"), format!("dead-{dead}"));
    let set = Endpoints::builder()
        .health(PassiveHealth::new().consecutive_failures(1))
        .strategy(RoundRobin::new())
        .build();
    set.add(&live_name, uri(live)).unwrap();
    set.add(&dead_name, uri(dead)).unwrap();
    let proxy = ReverseProxy::builder(set)
        .retries(Retries::new().max_retries(1))
        .build();
    let addr = serve_proxy(proxy.clone()).await;
    for _ in 0..6 {
        let res = get(addr, "/").await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(&res.body[..], b"up");
    }

    let m = drain();
    let live_ok =
        format!("tower_ssr_upstream_requests_total{{endpoint={live_name},status_class=2xx}}");
    let dead_err =
        format!("tower_ssr_upstream_requests_total{{endpoint={dead_name},status_class=error}}");
    assert_eq!(counter(&m, &live_ok), 6, "{m:#?}");
    assert_eq!(counter(&m, &dead_err), 1);
    assert_eq!(
        counter(
            &m,
            &format!("tower_ssr_upstream_ejections_total{{endpoint={dead_name}}}")
        ),
        1
    );
    assert_eq!(counter(&m, "tower_ssr_upstream_retries_total{}"), 1);
    assert_eq!(
        histogram_len(
            &m,
            &format!("tower_ssr_upstream_request_duration_seconds{{endpoint={live_name}}}")
        ),
        6
    );
    assert_eq!(
        gauge(
            &m,
            &format!("tower_ssr_upstream_healthy{{endpoint={dead_name}}}")
        ),
        0.0
    );
    // Every body was read to the end: nothing left in flight.
    let stats = proxy.endpoints().stats();
    assert!(stats.iter().all(|s| s.in_flight == 0), "{stats:?}");
}

#[tokio::test]
async fn the_chosen_endpoint_is_a_response_extension() {
    let _turn = TURN.lock().await;
    let live = serve(Router::new().route("/", route(|| async { "up" }))).await;
    let set = Endpoints::new(RoundRobin::new());
    let id = set.add("renderer-a", uri(live)).unwrap();
    let mut proxy = ReverseProxy::builder(set).build();
    let req = http::Request::get("/")
        .header("host", "app.test")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(&mut proxy, req).await.unwrap();
    let upstream = res
        .extensions()
        .get::<Upstream>()
        .expect("an Upstream extension");
    assert_eq!(upstream.name(), "renderer-a");
    assert_eq!(upstream.id(), id);
}
