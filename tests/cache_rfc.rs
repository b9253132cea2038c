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

/// The documented stack, `CacheLayer` outside `CacheControlLayer`, over a
/// handler that sends no `Date`: the layer's content ETag answers the
/// revalidation with a 304 without `Date`, and that 304 must keep the page
/// cached for another `s-maxage` rather than leave it stale for good.
#[tokio::test]
async fn the_documented_stack_keeps_caching_after_the_first_expiry() {
    use tower_ssr::cache_control::{CacheControlLayer, Rule};
    use tower_ssr::Directives;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let render = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { "page" }
    };
    let policy = Directives::new()
        .public()
        .max_age(Duration::ZERO)
        .s_maxage(Duration::from_secs(2));
    let app = Router::new()
        .route("/page", route(render))
        .layer(CacheControlLayer::new().rule(Rule::any().cache_control(policy)))
        .layer(CacheLayer::new(cache()));
    let addr = serve(app).await;

    get(addr, "/page").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let validated = get(addr, "/page").await;
    assert_eq!(
        validated.one("cache-status"),
        "tower-ssr; fwd=stale; fwd-status=304; stored"
    );
    let next = get(addr, "/page").await;
    assert!(
        next.one("cache-status").starts_with("tower-ssr; hit"),
        "{:?}",
        next.headers
    );
    assert_eq!(next.body, "page");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Generous hang guard for raw exchanges; never a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

/// A raw HTTP/1.1 exchange, for requests a client library would refuse to
/// send: returns the `cache-status` value (if any) and the whole response.
async fn raw(addr: std::net::SocketAddr, head: &str) -> (Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let out = tokio::time::timeout(GUARD, exchange).await.expect("hang");
    let head_end = out.find("\r\n\r\n").unwrap_or(out.len());
    let status = out[..head_end].lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("cache-status")
            .then(|| value.trim().to_owned())
    });
    (status, out)
}

/// RFC 9111 §2, §4; RFC 9110 §4.2.4, §7.2: the key's authority comes from a
/// `Host` (or absolute-form authority) that parses as one, without userinfo.
/// A `Host` holding a path used to be pasted in front of the request's
/// path, so `GET /` with `Host: victim.com/admin` was stored as the page
/// `/admin/` of `victim.com`, and served to its next visitor.
#[tokio::test]
async fn a_host_that_is_not_an_authority_is_refused() {
    let app = Router::new()
        .fallback(|uri: axum::http::Uri| async move {
            (
                [("cache-control", "max-age=60")],
                format!("rendered path [{}]", uri.path()),
            )
        })
        .layer(CacheLayer::new(cache()));
    let addr = serve(app).await;
    let req = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };

    // Refused outright now (RFC 9112 §3.2, issue 8 §1), not forwarded.
    let (status, attack) = raw(addr, &req("/", "victim.com/admin")).await;
    assert!(attack.starts_with("HTTP/1.1 400"), "{attack}");
    assert!(!attack.contains("rendered path"), "{attack}");
    assert_eq!(status, None, "{attack}");

    let (status, page) = raw(addr, &req("/admin/", "victim.com")).await;
    assert!(page.contains("rendered path [/admin/]"), "{page}");
    assert_eq!(
        status.as_deref(),
        Some("tower-ssr; fwd=uri-miss; stored"),
        "{page}"
    );
    // A sound Host still caches.
    let (status, page) = raw(addr, &req("/admin/", "Victim.COM")).await;
    assert!(page.contains("rendered path [/admin/]"), "{page}");
    assert!(status.unwrap().starts_with("tower-ssr; hit"), "{page}");

    // Userinfo names no resource (and hides the real host): not keyed.
    for host in [
        "x@victim.com",
        "victim.com?x",
        "victim.com#x",
        "vic tim.com",
    ] {
        let (status, res) = raw(addr, &req("/admin/", host)).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{res}");
        assert_eq!(status, None, "{res}");
    }
    // Two Host lines are a bad request (RFC 9112 §3.2): never keyed.
    let two =
        "GET /admin/ HTTP/1.1\r\nHost: victim.com\r\nHost: evil.com\r\nConnection: close\r\n\r\n";
    let (status, res) = raw(addr, two).await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert_eq!(status, None, "{res}");
}

/// RFC 9213 §2.1, RFC 8941 §4.2: a targeted field is a structured-field
/// Dictionary. A field that fails to parse is ignored as a whole, and the
/// cache falls back to `Cache-Control`; a repeated key keeps its last
/// value. The field used to be read with the `Cache-Control` parser, so
/// `Max-Age=600` overrode the origin's `no-store`.
#[tokio::test]
async fn the_targeted_field_is_read_as_a_structured_dictionary() {
    let calls: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let counter = Arc::clone(&calls);
    let origin = move |uri: axum::http::Uri| {
        let path = uri.path().to_owned();
        *counter.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
        async move {
            let (cc, cdn): (&str, &[&str]) = match path.as_str() {
                // Invalid Dictionaries: Cache-Control's no-store governs.
                "/upper" => ("no-store", &["Max-Age=600"]),
                "/trailing-comma" => ("no-store", &["max-age=600,"]),
                "/sixteen-digits" => ("no-store", &["max-age=1234567890123456"]),
                "/bad-second-line" => ("no-store", &["max-age=600", "Private"]),
                // Valid ones govern, Cache-Control ignored.
                "/last-wins" => ("no-store", &["max-age=1, max-age=600"]),
                "/two-lines" => ("no-store", &["max-age=1", "max-age=600;p=1"]),
                "/decimal" => ("max-age=600", &["max-age=1.5"]),
                _ => ("no-store", &[]),
            };
            let mut res = (([("cache-control", cc)]), "page").into_response();
            for line in cdn {
                res.headers_mut()
                    .append("cdn-cache-control", line.parse().unwrap());
            }
            res
        }
    };
    let layer = CacheLayer::new(cache())
        .targeted_field(axum::http::HeaderName::from_static("cdn-cache-control"));
    let addr = serve(Router::new().fallback(origin).layer(layer)).await;
    let calls = |path: &str| calls.lock().unwrap().get(path).copied().unwrap_or(0);

    for path in [
        "/upper",
        "/trailing-comma",
        "/sixteen-digits",
        "/bad-second-line",
        // Valid, but max-age=1.5 is no Integer: ignored, not coerced, and
        // nothing else gives freshness (§2.1 "SHOULD NOT accept").
        "/decimal",
    ] {
        get(addr, path).await;
        let again = get(addr, path).await;
        assert!(
            !again.one("cache-status").contains("hit"),
            "{path}: {:?}",
            again.headers
        );
        assert_eq!(calls(path), 2, "{path}");
    }
    for path in ["/last-wins", "/two-lines"] {
        let first = get(addr, path).await;
        assert_eq!(first.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
        let hit = get(addr, path).await;
        let status = hit.one("cache-status");
        let ttl: i64 = status
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("{path}: {status}"));
        assert!(ttl > 500, "{path}: max-age=600 governs, got {status}");
        assert_eq!(calls(path), 1, "{path}");
    }
}
