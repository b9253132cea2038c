//! Regression tests for bugs found by the RFC audit of the response cache,
//! through an axum server on 127.0.0.1:0. Each test names the rule it holds
//! the cache to. Entries are made stale on arrival with an upstream `Age`
//! larger than their lifetime, so no test waits for a clock; concurrency is
//! ordered with gates and counters, never with sleeps.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get as route;
use axum::Router;
use common::{get, get_with, serve, Seen};
use tokio::sync::Notify;
use tower_ssr::cache::{CacheLayer, ResponseCache};

/// Generous hang guard; never a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(GUARD, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

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
