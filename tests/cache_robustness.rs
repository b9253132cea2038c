//! Regression tests for the response cache's robustness audit: leaders that
//! never finish, inner bodies that fail half-way, responses heavier than
//! the memory bound. The cache is called as a tower service (it opens no
//! socket of its own) so each test controls exactly when the inner body
//! yields, stalls or fails. Concurrency is ordered with counters the origin
//! waits on, never with sleeps; every wait has a generous hang guard, and
//! no test asserts on a duration.
#![cfg(all(feature = "cache", feature = "tokio"))]

/// A `redis-server` of the binary's own when `TOWER_SSR_REDIS_URL` is unset.
#[cfg(feature = "redis")]
#[path = "common/redis.rs"]
mod redis_server;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::{Layer, Service, ServiceExt};
use tower_ssr::cache::{CacheLayer, ResponseBody, ResponseCache};

type B = UnsyncBoxBody<Bytes, io::Error>;
type Fut = Pin<Box<dyn Future<Output = Response<B>> + Send>>;
type Tx = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

/// Longer than anything here should take on a loaded machine: only a hang
/// reaches it.
const GUARD: Duration = Duration::from_secs(60);

fn full(b: impl Into<Bytes>) -> B {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// Five bytes, then an error.
fn failing() -> B {
    StreamBody::new(tokio_stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(b"12345"))),
        Err(io::Error::other("render failed")),
    ]))
    .boxed_unsync()
}

/// A streamed body of unknown length fed by the returned sender.
fn channel() -> (Tx, B) {
    let (tx, rx) = mpsc::channel(16);
    (tx, StreamBody::new(ReceiverStream::new(rx)).boxed_unsync())
}

fn resp(cc: &str, body: B) -> Response<B> {
    Response::builder()
        .header("cache-control", cc)
        .body(body)
        .unwrap()
}

/// An origin that numbers its calls and answers with `f(n)`.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    f: Arc<dyn Fn(usize) -> Fut + Send + Sync>,
}

impl Origin {
    fn new(f: impl Fn(usize) -> Fut + Send + Sync + 'static) -> Self {
        Origin {
            calls: Arc::default(),
            f: Arc::new(f),
        }
    }
}

impl Service<Request<()>> for Origin {
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst);
        let fut = (self.f)(n);
        Box::pin(async move { Ok(fut.await) })
    }
}

fn get(path: &str) -> Request<()> {
    Request::builder()
        .uri(format!("http://example.com{path}"))
        .body(())
        .unwrap()
}

/// Waits (polling) until `cond` holds; a hang fails the test at [`GUARD`].
async fn until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(GUARD, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("hang: still waiting for {what}"));
}

async fn guarded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("hang: {what}"))
}

fn cache_status(res: &Response<impl http_body::Body>) -> String {
    res.headers()
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn body(res: Response<ResponseBody<B>>) -> Bytes {
    guarded("a body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes()
}

/// Senders of bodies that must stay open (stalled) for a whole test.
static STALLED: Mutex<Vec<Tx>> = Mutex::new(Vec::new());

// Audit P1: a streamed leader sends one chunk and stalls with its client
// still connected. A request for the same key waits at most the lock
// timeout, then goes to the origin itself, and what it gets is not stored
// (the leader may still store its own response).
#[tokio::test]
async fn a_waiter_on_a_stalled_leader_goes_to_the_origin_after_the_lock_timeout() {
    let (tx, stalled) = channel();
    let stalled = Mutex::new(Some(stalled));
    let origin = Origin::new(move |n| {
        let body = if n == 0 {
            stalled.lock().unwrap().take().unwrap()
        } else {
            full("second")
        };
        Box::pin(async move { resp("max-age=60", body) })
    });
    let calls = Arc::clone(&origin.calls);
    let cache = ResponseCache::new();
    let svc = CacheLayer::new(cache.clone())
        .lock_timeout(Duration::from_millis(100))
        .layer(origin);

    let leader = svc.clone().oneshot(get("/s")).await.unwrap();
    let mut leader_body = leader.into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
        .await
        .unwrap();
    let first = guarded("leader's first chunk", leader_body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");

    let waiter = guarded("a waiter on a stalled leader", async {
        let res = svc.clone().oneshot(get("/s")).await.unwrap();
        let status = cache_status(&res);
        (status, res.into_body().collect().await.unwrap().to_bytes())
    })
    .await;
    assert_eq!(waiter.1, "second");
    assert!(!waiter.0.contains("stored"), "{}", waiter.0);
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(
        cache.stats().stores,
        0,
        "the waiter's response is not stored"
    );

    // The leader, still streaming, completes and stores its own response.
    tx.send(Ok(Frame::data(Bytes::from_static(b"-end"))))
        .await
        .unwrap();
    drop(tx);
    let rest = guarded("the leader's rest", leader_body.collect()).await;
    assert_eq!(rest.unwrap().to_bytes(), "-end");
    assert_eq!(cache.stats().stores, 1);
    let hit = svc.clone().oneshot(get("/s")).await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes(),
        "first-end"
    );
}

// Audit P4: a stale-while-revalidate refresh gets a body that never ends.
// Once the entry can no longer be served stale, requests join that refresh's
// flight; no client is attached to it, so only a time limit on the refresh
// ends it. The request then leads, and its response is stored.
#[tokio::test(start_paused = true)]
async fn a_background_refresh_whose_body_never_ends_is_given_up() {
    let origin = Origin::new(|n| {
        Box::pin(async move {
            let cc = "max-age=1, stale-while-revalidate=1";
            match n {
                0 => resp(cc, full("v1")),
                1 => {
                    let (tx, body) = channel();
                    tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
                        .await
                        .unwrap();
                    STALLED.lock().unwrap().push(tx);
                    resp(cc, body)
                }
                _ => resp(cc, full("v3")),
            }
        })
    });
    let calls = Arc::clone(&origin.calls);
    let svc = CacheLayer::new(ResponseCache::new())
        .lock_timeout(Duration::from_millis(300))
        .layer(origin);

    let first = svc.clone().oneshot(get("/swr")).await.unwrap();
    assert_eq!(body(first).await, "v1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = svc.clone().oneshot(get("/swr")).await.unwrap();
    assert!(
        cache_status(&stale).contains("hit"),
        "{}",
        cache_status(&stale)
    );
    assert_eq!(body(stale).await, "v1");
    until("the background refresh to start", || {
        calls.load(SeqCst) == 2
    })
    .await;
    // Past the stale window: the entry may no longer be served.
    tokio::time::sleep(Duration::from_millis(2000)).await;

    let after = guarded("a request after the stale window", async {
        let res = svc.clone().oneshot(get("/swr")).await.unwrap();
        (cache_status(&res), body(res).await)
    })
    .await;
    assert_eq!(after.1, "v3", "{}", after.0);
    assert!(after.0.contains("stored"), "{}", after.0);
    assert_eq!(calls.load(SeqCst), 3);
    let hit = svc.clone().oneshot(get("/swr")).await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(body(hit).await, "v3");
    STALLED.lock().unwrap().clear();
}

// Audit P2: an inner body that fails half-way ends the flight as a failure,
// so the waiters follow the failure rule (one takes over once, then each
// goes alone) rather than taking over one at a time. The origin's third
// call waits until every request has reached it: one at a time, it never
// would.
async fn a_body_failing_half_way(declared: bool) {
    let cache = ResponseCache::new();
    let stats = cache.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&started);
    let origin = Origin::new(move |n| {
        let stats = stats.clone();
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            seen.fetch_add(1, SeqCst);
            match n {
                // The first leader fails once the 19 others wait for it.
                0 => until("19 waiters", || stats.stats().coalesced >= 19).await,
                // The one that takes over fails once the 18 others wait.
                1 => until("18 more waiters", || stats.stats().coalesced >= 37).await,
                _ => until("all 20 requests at the origin", || seen.load(SeqCst) >= 20).await,
            }
            let mut res = resp("max-age=60", failing());
            if declared {
                res.headers_mut()
                    .insert("content-length", "10".parse().unwrap());
            }
            res
        })
    });
    // No lock timeout: it would let stuck waiters go, hiding the order.
    let svc = CacheLayer::new(cache.clone())
        .lock_timeout(Duration::MAX)
        .layer(origin);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(get("/err")).await.unwrap();
            // Issue 8 §8: a body of known length that breaks off before
            // anything was sent is a 502; a streamed one aborts.
            res.status() == http::StatusCode::BAD_GATEWAY
                || res.into_body().collect().await.is_err()
        }));
    }
    for task in tasks {
        let failed = guarded("a request for a failing page", task).await.unwrap();
        assert!(failed, "the body's failure reaches every client");
    }
    assert_eq!(started.load(SeqCst), 20);
    assert_eq!(cache.stats().stores, 0, "nothing partial is stored");
}

#[tokio::test]
async fn a_streamed_body_failing_half_way_fails_the_flight() {
    a_body_failing_half_way(false).await;
}

#[tokio::test]
async fn a_declared_body_failing_half_way_fails_the_flight() {
    a_body_failing_half_way(true).await;
}

// Audit P3: a response heavier than the memory bound (though under
// `max_body`) is not stored; it was counted as stored and waiters were told
// to look it up. Now the key is remembered as uncacheable, so the next
// round of requests goes to the origin side by side: the origin holds each
// call of the second round until all 30 have arrived.
#[tokio::test]
async fn a_response_heavier_than_the_memory_bound_is_not_stored() {
    let cache = ResponseCache::builder().max_bytes(20_000).build();
    let stats = cache.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&started);
    let origin = Origin::new(move |n| {
        let stats = stats.clone();
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            seen.fetch_add(1, SeqCst);
            if n == 0 {
                until("29 waiters", || stats.stats().coalesced >= 29).await;
            } else if n >= 30 {
                until("30 requests side by side", || seen.load(SeqCst) >= 60).await;
            }
            resp("max-age=60", full(vec![b'x'; 50_000]))
        })
    });
    let svc = CacheLayer::new(cache.clone())
        .lock_timeout(Duration::MAX)
        .layer(origin);
    for round in 0..2 {
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let res = svc.oneshot(get("/big")).await.unwrap();
                let status = cache_status(&res);
                (status, res.into_body().collect().await.unwrap().to_bytes())
            }));
        }
        for task in tasks {
            let (status, body) = guarded("a request for a heavy page", task).await.unwrap();
            assert_eq!(body.len(), 50_000);
            assert!(!status.contains("stored"), "round {round}: {status}");
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.stores, stats.entries), (0, 0), "{stats:?}");
}

// From reading: an entry read from the Redis tier went into memory without
// the `max_body` check every response of this instance gets. An instance
// with a smaller cap now fetches the page as if Redis had none, and keeps
// nothing in memory.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tower_ssr_redis),
    ignore = "needs redis-server on PATH or TOWER_SSR_REDIS_URL"
)]
async fn an_entry_from_redis_longer_than_max_body_stays_out_of_memory() {
    use tower_ssr::cache::RedisTier;
    let url = redis_server::redis_url();
    let namespace = format!(
        "test-robust-max-body-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let origin = Origin::new(|_| Box::pin(async { resp("max-age=60", full(vec![b'x'; 30_000])) }));
    let calls = Arc::clone(&origin.calls);
    let instance = |max_body: usize| {
        let tier = RedisTier::new(&url).unwrap().namespace(&namespace);
        let cache = ResponseCache::builder().redis(tier).build();
        let svc = CacheLayer::new(cache.clone())
            .max_body(max_body)
            .layer(origin.clone());
        (cache, svc)
    };
    let (big, big_svc) = instance(1 << 20);
    let (small, small_svc) = instance(10_000);
    for cache in [&big, &small] {
        assert!(
            cache.redis_ready(GUARD).await,
            "redis at {url} is not reachable"
        );
    }

    let first = big_svc.oneshot(get("/long")).await.unwrap();
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    assert_eq!(body(first).await.len(), 30_000);
    until("the write to reach redis", || big.stats().l2_writes == 1).await;

    let other = small_svc.oneshot(get("/long")).await.unwrap();
    let status = cache_status(&other);
    assert_eq!(body(other).await.len(), 30_000);
    assert!(
        !status.contains("redis") && !status.contains("stored"),
        "{status}"
    );
    let stats = small.stats();
    assert_eq!((stats.entries, stats.stores), (0, 0), "{stats:?}");
    assert_eq!(calls.load(SeqCst), 2);
}
