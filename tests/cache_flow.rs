//! Coalescing, streaming, memory bounds and failure handling of the
//! response cache, over real sockets where the network is involved.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get as route;
use axum::Router;
use bytes::Bytes;
use common::{get, serve, until, GUARD};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, Notify};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_ssr::cache::{CacheLayer, ResponseCache};

/// An origin whose every response waits for `gate`, counting calls.
fn gated_origin(
    calls: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    released: Arc<std::sync::atomic::AtomicBool>,
    chunked: bool,
) -> Router {
    Router::new().route(
        "/hot",
        route(move || {
            let calls = Arc::clone(&calls);
            let gate = Arc::clone(&gate);
            let released = Arc::clone(&released);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if !released.load(Ordering::SeqCst) {
                    gate.notified().await;
                }
                let body = if chunked {
                    let chunks =
                        (0..8).map(|i| Ok::<_, Infallible>(Bytes::from(format!("chunk{i};"))));
                    Body::from_stream(tokio_stream::iter(chunks))
                } else {
                    Body::from("whole body")
                };
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(body)
                    .unwrap()
            }
        }),
    )
}

async fn thousand_misses_reach_the_origin_once(chunked: bool) {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cache = ResponseCache::new();
    let app = gated_origin(
        Arc::clone(&calls),
        Arc::clone(&gate),
        Arc::clone(&released),
        chunked,
    )
    .layer(CacheLayer::new(cache.clone()));
    let addr = serve(app).await;
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(async move { get(addr, "/hot").await }))
        .collect();
    until("999 waiters", || cache.stats().coalesced >= 999).await;
    released.store(true, Ordering::SeqCst);
    gate.notify_one(); // stores a permit if the leader is not waiting yet
    let mut bodies = Vec::new();
    for t in tasks {
        let seen = tokio::time::timeout(GUARD, t).await.unwrap().unwrap();
        assert_eq!(seen.status, StatusCode::OK);
        bodies.push(seen.body);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    if chunked {
        assert!(bodies[0].starts_with(b"chunk0;chunk1;"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_misses_make_one_inner_call() {
    thousand_misses_reach_the_origin_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_misses_make_one_inner_call_with_a_chunked_body() {
    thousand_misses_reach_the_origin_once(true).await;
}

/// Issue 8 §8(c): with an executor (the `tokio` feature), the leader's
/// fetch runs as a task of its own, so when its client hangs up the render
/// goes on and the waiter gets it: one origin call, not two.
#[tokio::test]
async fn the_render_goes_on_for_a_waiter_when_the_leader_is_dropped() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let origin = {
        let calls = Arc::clone(&calls);
        let gate = Arc::clone(&gate);
        service_fn(move |_req: Request<Empty<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let gate = Arc::clone(&gate);
            async move {
                if n == 1 {
                    // The leader's call never completes on its own.
                    gate.notified().await;
                }
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(Full::new(Bytes::from(format!("call {n}"))))
                        .unwrap(),
                )
            }
        })
    };
    let cache = ResponseCache::new();
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .service(origin);
    let req = || {
        Request::get("http://h/x")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let leader = tokio::spawn(svc.clone().oneshot(req()));
    until("the leader's call", || calls.load(Ordering::SeqCst) == 1).await;
    let waiter = tokio::spawn(svc.clone().oneshot(req()));
    until("the waiter", || cache.stats().coalesced == 1).await;
    leader.abort(); // its client hung up
    assert!(leader.await.unwrap_err().is_cancelled());
    gate.notify_one(); // the render the leader started ends
    let res = tokio::time::timeout(GUARD, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["cache-status"],
        "tower-ssr; fwd=uri-miss; stored; collapsed"
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"call 1");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one origin call, not two");
    // No lock outlived its request: the next request is a plain hit.
    let res = svc.oneshot(req()).await.unwrap();
    assert!(res.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_key_is_remembered_so_requests_do_not_queue() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = {
        let calls = Arc::clone(&calls);
        Router::new().route(
            "/private",
            route(move || {
                let calls = Arc::clone(&calls);
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    // After the first, hold each response until ten are in
                    // flight at once: this hangs if they queue.
                    if n > 1 {
                        while calls.load(Ordering::SeqCst) < 11 {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    ([("cache-control", "private, max-age=60")], "mine")
                }
            }),
        )
    };
    let cache = ResponseCache::new();
    let addr = serve(app.layer(CacheLayer::new(cache.clone()))).await;
    get(addr, "/private").await;
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "/private").await }))
        .collect();
    for t in tasks {
        tokio::time::timeout(GUARD, t)
            .await
            .expect("requests queued")
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 11);
    assert_eq!(cache.stats().coalesced, 0);
}

/// A route whose body is fed by the test, chunk by chunk.
fn streaming_origin(cc: &'static str) -> (Router, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let app = Router::new().route(
        "/stream",
        route(move || {
            let rx = rx.lock().unwrap().take();
            async move {
                let rx = rx.expect("one request only");
                let stream =
                    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
                ([("cache-control", cc)], Body::from_stream(stream))
            }
        }),
    );
    (app, tx)
}

use tokio_stream::StreamExt as _;

/// GETs `/stream` and returns its body once the head has arrived (a miss).
async fn open_stream(addr: std::net::SocketAddr) -> hyper::body::Incoming {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let res = client
        .request(
            Request::get(format!("http://{addr}/stream"))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.headers()["cache-status"], "tower-ssr; fwd=uri-miss");
    res.into_body()
}

/// The next data frame, within the hang guard.
async fn next_data<B>(body: &mut B) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    tokio::time::timeout(GUARD, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
}

#[tokio::test]
async fn uncacheable_responses_stream_through_unbuffered() {
    let (app, tx) = streaming_origin("no-store");
    let addr = serve(app.layer(CacheLayer::new(ResponseCache::new()))).await;
    let mut body = open_stream(addr).await;
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    // The first bytes arrive while the origin still holds the rest.
    assert_eq!(next_data(&mut body).await, "first");
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(GUARD, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.to_bytes(), "second");
}

#[tokio::test]
async fn body_over_the_cap_streams_on_and_is_not_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = {
        let calls = Arc::clone(&calls);
        Router::new().route(
            "/big",
            route(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    let chunks =
                        (0..16).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'x'; 1024])));
                    (
                        [("cache-control", "max-age=60")],
                        Body::from_stream(tokio_stream::iter(chunks)),
                    )
                }
            }),
        )
    };
    let cache = ResponseCache::new();
    let addr = serve(app.layer(CacheLayer::new(cache.clone()).max_body(4096))).await;
    let first = get(addr, "/big").await;
    assert_eq!(first.body.len(), 16 * 1024);
    let second = get(addr, "/big").await;
    assert_eq!(second.body.len(), 16 * 1024);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test]
async fn inner_body_error_before_anything_left_is_a_502_and_nothing_partial_is_stored() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = Arc::clone(&calls);
        service_fn(move |_req: Request<Empty<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                    Ok(Bytes::from_static(b"partial")),
                    Err(std::io::Error::other("renderer died")),
                ];
                let body = http_body_util::StreamBody::new(
                    tokio_stream::iter(chunks).map(|c| c.map(http_body::Frame::data)),
                );
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(body)
                        .unwrap(),
                )
            }
        })
    };
    let cache = ResponseCache::new();
    let mut svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .service(origin);
    for _ in 0..2 {
        let req = Request::get("http://h/e")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        // The body failed before anything had left (its chunks were all
        // ready at once): a clean 502 (issue 8 §8). Once bytes have left,
        // the error reaches the client as a body error instead.
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert!(res
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test]
async fn memory_stays_within_capacity_when_filled_ten_times_over() {
    let capacity: u64 = 1 << 20;
    let page = Bytes::from(vec![b'p'; 10 * 1024]);
    let origin = service_fn(move |_req: Request<Empty<Bytes>>| {
        let page = page.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=600")
                    .body(Full::new(page))
                    .unwrap(),
            )
        }
    });
    let cache = ResponseCache::builder().max_bytes(capacity).build();
    let mut svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .service(origin);
    for i in 0..1024 {
        let req = Request::get(format!("http://h/page/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let stats = cache.stats();
    assert_eq!(stats.stores, 1024);
    assert!(stats.bytes <= capacity, "{stats:?}");
    assert!(stats.bytes > capacity / 2, "{stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");
}

/// An in-process origin answering with `cache-control` and a body naming
/// the call, counting calls; calls after `gate_from` wait for `gate`.
fn counting_origin(
    cc: &'static str,
    calls: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    gate_from: usize,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<Empty<Bytes>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = Arc::clone(&gate);
        async move {
            if n >= gate_from {
                gate.notified().await;
            }
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", cc)
                    .body(Full::new(Bytes::from(format!("call {n}"))))
                    .unwrap(),
            )
        }
    })
}

async fn body_of(res: Response<tower_ssr::cache::ResponseBody<Full<Bytes>>>) -> Bytes {
    res.into_body().collect().await.unwrap().to_bytes()
}

fn req(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://h{path}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn entries_go_stale_when_their_lifetime_has_passed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = counting_origin(
        "max-age=10",
        Arc::clone(&calls),
        Arc::new(Notify::new()),
        usize::MAX,
    );
    let svc = CacheLayer::new(ResponseCache::new()).layer(origin);
    assert_eq!(
        body_of(svc.clone().oneshot(req("/t")).await.unwrap()).await,
        "call 1"
    );
    tokio::time::advance(Duration::from_secs(9)).await;
    let res = svc.clone().oneshot(req("/t")).await.unwrap();
    assert_eq!(res.headers()["age"], "9");
    assert_eq!(res.headers()["cache-status"], "tower-ssr; hit; ttl=1");
    // §4.2: stale once the age reaches the lifetime; with no validator and
    // no stale window nothing can be done with it, so it is not kept.
    tokio::time::advance(Duration::from_secs(1)).await;
    let res = svc.clone().oneshot(req("/t")).await.unwrap();
    assert_eq!(
        res.headers()["cache-status"],
        "tower-ssr; fwd=uri-miss; stored"
    );
    assert_eq!(body_of(res).await, "call 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stale_entry_with_a_validator_is_kept_for_keep_stale_and_then_dropped() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = service_fn({
        let calls = Arc::clone(&calls);
        move |_req: Request<Empty<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "max-age=10")
                        .header("etag", format!("\"v{n}\""))
                        .body(Full::new(Bytes::from(format!("call {n}"))))
                        .unwrap(),
                )
            }
        }
    });
    let cache = ResponseCache::new();
    let svc = CacheLayer::new(cache.clone())
        .keep_stale(Duration::from_secs(30))
        .layer(origin);
    body_of(svc.clone().oneshot(req("/k")).await.unwrap()).await;
    // Stale, within keep_stale: still there to revalidate (the origin
    // answers the conditional request with a new 200).
    tokio::time::advance(Duration::from_secs(39)).await;
    let res = svc.clone().oneshot(req("/k")).await.unwrap();
    assert_eq!(
        res.headers()["cache-status"],
        "tower-ssr; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(body_of(res).await, "call 2");
    // The new response's keep time (10 s fresh + 30 s) passes: gone on the
    // next lookup, which says so (uri-miss), not stale.
    tokio::time::advance(Duration::from_secs(40)).await;
    let res = svc.clone().oneshot(req("/k")).await.unwrap();
    assert_eq!(
        res.headers()["cache-status"],
        "tower-ssr; fwd=uri-miss; stored"
    );
    assert_eq!(body_of(res).await, "call 3");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_makes_one_refresh_per_key_on_the_given_executor() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let origin = counting_origin(
        "max-age=10, stale-while-revalidate=100",
        Arc::clone(&calls),
        Arc::clone(&gate),
        2,
    );
    let spawned = Arc::new(AtomicUsize::new(0));
    let cache = ResponseCache::new();
    let svc = {
        let spawned = Arc::clone(&spawned);
        CacheLayer::new(cache.clone())
            .executor(move |task| {
                spawned.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(task);
            })
            .layer(origin)
    };
    body_of(svc.clone().oneshot(req("/swr")).await.unwrap()).await;
    // The first miss's fetch ran on the executor too (issue 8 §8(c)).
    let before = spawned.load(Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(15)).await;
    // Fifty stale requests: each answered at once, one refresh behind them.
    for _ in 0..50 {
        let res = svc.clone().oneshot(req("/swr")).await.unwrap();
        assert_eq!(res.headers()["cache-status"], "tower-ssr; hit; ttl=-5");
        assert_eq!(res.headers()["age"], "15");
        assert_eq!(body_of(res).await, "call 1");
    }
    assert_eq!(spawned.load(Ordering::SeqCst) - before, 1);
    until("the refresh to reach the origin", || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    gate.notify_one();
    until("the refresh to store", || cache.stats().stores == 2).await;
    let res = svc.oneshot(req("/swr")).await.unwrap();
    assert!(res.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit; ttl=10"));
    assert_eq!(body_of(res).await, "call 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn default_ttl_and_heuristic_freshness_are_opt_in() {
    let calls = Arc::new(AtomicUsize::new(0));
    let never = Arc::new(Notify::new());
    // No freshness information at all: not stored by default.
    let origin = counting_origin("public", Arc::clone(&calls), Arc::clone(&never), usize::MAX);
    let svc = CacheLayer::new(ResponseCache::new()).layer(origin.clone());
    svc.clone().oneshot(req("/d")).await.unwrap();
    svc.oneshot(req("/d")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let svc = CacheLayer::new(ResponseCache::new())
        .default_ttl(Duration::from_secs(30))
        .layer(origin);
    svc.clone().oneshot(req("/d")).await.unwrap();
    let res = svc.oneshot(req("/d")).await.unwrap();
    assert_eq!(res.headers()["cache-status"], "tower-ssr; hit; ttl=30");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Heuristic: 10 % of Date − Last-Modified, capped.
    let lm = service_fn(|_req: Request<Empty<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header(
                    "date",
                    httpdate::fmt_http_date(std::time::SystemTime::now()),
                )
                .header(
                    "last-modified",
                    httpdate::fmt_http_date(
                        std::time::SystemTime::now() - Duration::from_secs(1000),
                    ),
                )
                .body(Full::new(Bytes::from_static(b"page")))
                .unwrap(),
        )
    });
    let svc = CacheLayer::new(ResponseCache::new())
        .heuristic_freshness(Duration::from_secs(3600))
        .layer(lm);
    svc.clone().oneshot(req("/h")).await.unwrap();
    let res = svc.oneshot(req("/h")).await.unwrap();
    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(
        status == "tower-ssr; hit; ttl=100" || status == "tower-ssr; hit; ttl=99",
        "{status}"
    );
}

#[tokio::test]
async fn storable_streamed_response_reaches_the_client_before_it_ends_and_is_stored() {
    let (app, tx) = streaming_origin("max-age=60");
    let cache = ResponseCache::new();
    let addr = serve(app.layer(CacheLayer::new(cache.clone()))).await;
    let mut body = open_stream(addr).await;
    tx.send(Bytes::from_static(b"<head>")).await.unwrap();
    assert_eq!(next_data(&mut body).await, "<head>");
    assert_eq!(cache.stats().stores, 0, "not stored before the end");
    tx.send(Bytes::from_static(b"<body>")).await.unwrap();
    drop(tx);
    let rest = tokio::time::timeout(GUARD, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.to_bytes(), "<body>");
    until("the store", || cache.stats().stores == 1).await;
    // The origin's route serves one request only: this must be a hit.
    let hit = get(addr, "/stream").await;
    assert_eq!(hit.body, "<head><body>");
    assert!(hit.one("cache-status").contains("hit"));
}

#[tokio::test]
async fn client_hanging_up_mid_stream_stores_nothing_and_frees_the_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let senders = Arc::new(Mutex::new(Vec::new()));
    let origin = {
        let calls = Arc::clone(&calls);
        let senders = Arc::clone(&senders);
        service_fn(move |_req: Request<Empty<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            senders.lock().unwrap().push(tx);
            async move {
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
                    .map(|b| Ok::<_, Infallible>(http_body::Frame::data(b)));
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(http_body_util::StreamBody::new(stream))
                        .unwrap(),
                )
            }
        })
    };
    let cache = ResponseCache::new();
    let svc = CacheLayer::new(cache.clone()).layer(origin);
    let res = svc.clone().oneshot(req("/s")).await.unwrap();
    let tx = senders.lock().unwrap()[0].clone();
    tx.send(Bytes::from_static(b"part")).await.unwrap();
    let mut body = res.into_body();
    assert_eq!(next_data(&mut body).await, "part");
    drop(body); // the client hangs up
    drop(tx);
    // The next request finds no entry and no stuck flight.
    let next = tokio::time::timeout(GUARD, svc.oneshot(req("/s")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.headers()["cache-status"], "tower-ssr; fwd=uri-miss");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test(start_paused = true)]
async fn entries_no_one_asks_for_are_swept_once_past_their_keep_time() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = counting_origin("max-age=10", calls, Arc::new(Notify::new()), usize::MAX);
    let cache = ResponseCache::new();
    let svc = CacheLayer::new(cache.clone()).layer(origin);
    for path in ["/a", "/b", "/c"] {
        body_of(svc.clone().oneshot(req(path)).await.unwrap()).await;
    }
    assert_eq!(cache.stats().entries, 3);
    // Past their keep time (10 s) but not yet a sweep's due time (60 s
    // after the cache was made): still counted, never served.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(cache.stats().entries, 3);
    // A store after the due time sweeps the others.
    tokio::time::advance(Duration::from_secs(40)).await;
    body_of(svc.clone().oneshot(req("/d")).await.unwrap()).await;
    assert_eq!(cache.stats().entries, 1);
}
