//! Regression tests for RFC findings on the response cache, each through
//! the public API over a real socket on 127.0.0.1:0.
//!
//! Unlike the other cache tests these run on the real clock where a rule
//! depends on the wall clock (`Date`), since paused tokio time never moves
//! it. The sleeps are short and nothing asserts on how long anything took.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get as route;
use axum::Router;
use common::{get, serve};
use tower_ssr::cache::{CacheLayer, ResponseCache};

fn cache() -> ResponseCache {
    ResponseCache::builder().max_bytes(1 << 20).build()
}

/// RFC 9110 §6.6.1, RFC 9111 §4.3.4: a 304 without `Date` (an axum handler
/// sends none; hyper adds one only on the wire, outside the layer) freshens
/// the entry from the time it was received. Keeping the first response's
/// `Date` made the entry stale again at once, so every later request went
/// to the origin.
#[tokio::test]
async fn a_304_without_date_freshens_the_entry_from_its_receipt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let page = move |headers: HeaderMap| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let fields = [("cache-control", "max-age=2"), ("etag", "\"a\"")];
            if headers.get("if-none-match").is_some_and(|v| v == "\"a\"") {
                (StatusCode::NOT_MODIFIED, fields).into_response()
            } else {
                (fields, "page").into_response()
            }
        }
    };
    let app = Router::new()
        .route("/page", route(page))
        .layer(CacheLayer::new(cache()));
    let addr = serve(app).await;

    let first = get(addr, "/page").await;
    assert_eq!(first.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    // Past max-age=2 on the real clock, whatever the sub-second phase.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let validated = get(addr, "/page").await;
    assert_eq!(
        validated.one("cache-status"),
        "tower-ssr; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(validated.body, "page");
    assert_eq!(validated.one("age"), "0", "fresh from the 304");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let next = get(addr, "/page").await;
    assert!(
        next.one("cache-status").starts_with("tower-ssr; hit"),
        "{:?}",
        next.headers
    );
    assert_eq!(next.body, "page");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
