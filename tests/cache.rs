//! The response cache through an axum server on 127.0.0.1:0.
//!
//! The origin is scripted by the query string (which is part of the cache
//! key, so each test uses its own URLs): `cc` is its Cache-Control, `etag`,
//! `lm`, `expires`, `date`, `age`, `vary`, `cookie`, `tag`, `cs` (an
//! upstream Cache-Status), `status` set the rest. It counts its calls per
//! URL and answers `If-None-Match` with 304 when the tag matches.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use common::{get, get_with, send, serve, Seen};
use tower_ssr::cache::{CacheLayer, ResponseCache};

#[derive(Clone, Default)]
struct Origin {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    seen: Arc<Mutex<Vec<(Method, HeaderMap)>>>,
}

impl Origin {
    fn calls(&self, path_and_query: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    fn last_request(&self) -> (Method, HeaderMap) {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

async fn script(
    State(origin): State<Origin>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let pq = uri.path_and_query().unwrap().as_str().to_owned();
    let n = {
        let mut calls = origin.calls.lock().unwrap();
        let n = calls.entry(pq.clone()).or_insert(0);
        *n += 1;
        *n
    };
    origin
        .seen
        .lock()
        .unwrap()
        .push((method.clone(), headers.clone()));
    let mut res = Response::builder();
    let pairs = [
        ("cc", "cache-control"),
        ("etag", "etag"),
        ("lm", "last-modified"),
        ("expires", "expires"),
        ("date", "date"),
        ("age", "age"),
        ("vary", "vary"),
        ("cookie", "set-cookie"),
        ("tag", "surrogate-key"),
        ("cs", "cache-status"),
        ("loc", "location"),
        ("cdn", "cdn-cache-control"),
        ("mine", "x-my-cc"),
    ];
    for (param, header) in pairs {
        if let Some(v) = q.get(param) {
            res = res.header(header, v.as_str());
        }
    }
    if let (Some(tag), Some(inm)) = (q.get("etag"), headers.get("if-none-match")) {
        if inm.to_str().unwrap() == tag {
            return res.status(304).body(Body::empty()).unwrap();
        }
    }
    let mut status: u16 = q.get("status").map_or(200, |s| s.parse().unwrap());
    if q.get("fail_after").is_some_and(|f| n > f.parse().unwrap()) {
        status = 500;
    }
    let lang = headers
        .get("accept-language")
        .map_or("", |v| v.to_str().unwrap());
    let body = format!("{method} {pq} #{n} {lang}");
    res.status(status).body(Body::from(body)).unwrap()
}

/// Percent-encodes a query of (name, value) pairs for `script`.
fn q(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = format!("{path}?");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

async fn start(
    layer: impl Fn(ResponseCache) -> CacheLayer,
) -> (std::net::SocketAddr, Origin, ResponseCache) {
    let origin = Origin::default();
    let cache = ResponseCache::builder().max_bytes(16 << 20).build();
    let app = Router::new()
        .fallback(script)
        .with_state(origin.clone())
        .layer(layer(cache.clone()));
    (serve(app).await, origin, cache)
}

async fn standard() -> (std::net::SocketAddr, Origin, ResponseCache) {
    start(CacheLayer::new).await
}

fn body(seen: &Seen) -> &str {
    std::str::from_utf8(&seen.body).unwrap()
}

#[tokio::test]
async fn second_get_is_a_hit_with_age_and_cache_status() {
    let (addr, origin, cache) = standard().await;
    let url = q("/page", &[("cc", "max-age=60")]);
    let first = get(addr, &url).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    let second = get(addr, &url).await;
    assert_eq!(second.body, first.body);
    assert_eq!(origin.calls(&url), 1);
    assert!(second
        .one("cache-status")
        .starts_with("tower-ssr; hit; ttl="));
    let age: u64 = second.one("age").parse().unwrap();
    assert!(age < 60);
    assert!(second.has("date"));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.stores), (1, 1));
}

#[tokio::test]
async fn query_is_part_of_the_key() {
    let (addr, origin, _) = standard().await;
    let a = q("/search", &[("cc", "max-age=60"), ("x", "1")]);
    let b = q("/search", &[("cc", "max-age=60"), ("x", "2")]);
    assert_ne!(get(addr, &a).await.body, get(addr, &b).await.body);
    get(addr, &a).await;
    get(addr, &b).await;
    assert_eq!((origin.calls(&a), origin.calls(&b)), (1, 1));
}

#[tokio::test]
async fn upstream_age_counts_towards_the_age_sent() {
    let (addr, _, _) = standard().await;
    let url = q("/aged", &[("cc", "max-age=600"), ("age", "100")]);
    get(addr, &url).await;
    let hit = get(addr, &url).await;
    let age: u64 = hit.one("age").parse().unwrap();
    assert!((100..600).contains(&age), "{age}");
    let ttl: i64 = hit
        .one("cache-status")
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl <= 500, "{ttl}");
}

#[tokio::test]
async fn post_is_never_answered_from_the_cache_and_invalidates_the_uri() {
    let (addr, origin, _) = standard().await;
    let url = q("/form", &[("cc", "max-age=60")]);
    let first_post = send(addr, Method::POST, &url, &[]).await;
    let second_post = send(addr, Method::POST, &url, &[]).await;
    assert_ne!(
        first_post.body, second_post.body,
        "second POST reached the origin"
    );
    assert_eq!(second_post.one("cache-status"), "tower-ssr; fwd=method");
    assert_eq!(origin.calls(&url), 2);

    get(addr, &url).await;
    assert!(get(addr, &url).await.one("cache-status").contains("hit"));
    send(addr, Method::POST, &url, &[]).await;
    let after = get(addr, &url).await;
    assert!(
        after.one("cache-status").contains("fwd=uri-miss"),
        "{after:?}"
    );
    assert_eq!(origin.calls(&url), 5);
}

#[tokio::test]
async fn unsafe_method_invalidates_its_location_on_the_same_origin() {
    let (addr, origin, _) = standard().await;
    let page = q("/item", &[("cc", "max-age=60")]);
    get(addr, &page).await;
    let post = q("/items", &[("loc", &page)]);
    send(addr, Method::POST, &post, &[]).await;
    get(addr, &page).await;
    assert_eq!(origin.calls(&page), 2);
}

#[tokio::test]
async fn set_cookie_response_is_never_stored_or_replayed() {
    let (addr, origin, _) = standard().await;
    let url = q(
        "/login",
        &[("cc", "public, max-age=60"), ("cookie", "sid=secret")],
    );
    get(addr, &url).await;
    let second = get(addr, &url).await;
    assert_eq!(origin.calls(&url), 2);
    assert!(second.one("cache-status").contains("fwd="));
    // Even a client that accepts anything stale never gets another's cookie.
    let third = get_with(addr, &url, &[("cache-control", "max-stale")]).await;
    assert_eq!(origin.calls(&url), 3);
    assert!(third.body.ends_with(b"#3 "));
}

/// A HEAD miss goes inward as a GET (issue 8 §3): the GET's answer is
/// stored, never an empty HEAD body, and the HEAD gets its head.
#[tokio::test]
async fn head_first_stores_the_get_answer_never_an_empty_body() {
    let (addr, origin, _) = standard().await;
    let url = q("/headfirst", &[("cc", "max-age=60")]);
    let head = send(addr, Method::HEAD, &url, &[]).await;
    assert!(head.body.is_empty());
    assert!(head.one("cache-status").contains("stored"), "{head:?}");
    let get1 = get(addr, &url).await;
    assert!(body(&get1).starts_with("GET /headfirst"), "{get1:?}");
    assert!(get1.one("cache-status").contains("hit"));
    assert_eq!(head.one("content-length"), get1.body.len().to_string());
    let head2 = send(addr, Method::HEAD, &url, &[]).await;
    assert!(head2.body.is_empty());
    assert!(head2.one("cache-status").contains("hit"));
    assert_eq!(head2.one("content-length"), get1.body.len().to_string());
    assert_eq!(origin.calls(&url), 1, "one GET for all");
}

#[tokio::test]
async fn never_stores_no_store_private_or_vary_star() {
    let (addr, origin, _) = standard().await;
    for cc in [
        "no-store, max-age=60",
        "private, max-age=60",
        "No-StOrE, max-age=60",
    ] {
        let url = q("/never", &[("cc", cc)]);
        get(addr, &url).await;
        let second = get(addr, &url).await;
        assert_eq!(origin.calls(&url), 2, "{cc}");
        assert!(!second.one("cache-status").contains("stored"));
    }
    let url = q("/never", &[("cc", "max-age=60"), ("vary", "*")]);
    get(addr, &url).await;
    get(addr, &url).await;
    assert_eq!(origin.calls(&url), 2);
}

#[tokio::test]
async fn vary_keeps_variants_side_by_side() {
    let (addr, origin, _) = standard().await;
    let url = q(
        "/i18n",
        &[("cc", "max-age=60"), ("vary", "Accept-Language")],
    );
    let en = get_with(addr, &url, &[("accept-language", "en")]).await;
    let fr = get_with(addr, &url, &[("accept-language", "fr")]).await;
    assert!(fr.one("cache-status").contains("fwd=vary-miss"));
    let en2 = get_with(addr, &url, &[("accept-language", "en")]).await;
    let fr2 = get_with(addr, &url, &[("accept-language", "fr")]).await;
    assert_eq!(en2.body, en.body);
    assert_eq!(fr2.body, fr.body);
    assert!(body(&fr2).ends_with("fr"));
    assert_eq!(origin.calls(&url), 2);
    // A request without the field matches only a variant stored without it.
    let none = get(addr, &url).await;
    assert!(none.one("cache-status").contains("fwd=vary-miss"));
}

#[tokio::test]
async fn old_date_forms_are_understood() {
    let (addr, origin, _) = standard().await;
    for (date, expires) in [
        (
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:50:37 GMT",
        ),
        ("Sun Nov  6 08:49:37 1994", "Sun Nov  6 08:50:37 1994"),
    ] {
        // Expires − Date = 60 s; the apparent age (decades) makes it stale
        // at once, so what proves the parse is the stored validator use.
        let url = q(
            "/olddate",
            &[("date", date), ("expires", expires), ("etag", "\"v1\"")],
        );
        let first = get(addr, &url).await;
        assert!(first.one("cache-status").contains("stored"), "{date}");
        let second = get(addr, &url).await;
        assert_eq!(
            second.one("cache-status"),
            "tower-ssr; fwd=stale; fwd-status=304; stored"
        );
        assert_eq!(second.body, first.body);
        assert_eq!(origin.calls(&url), 2);
    }
}

#[tokio::test]
async fn invalid_expires_means_already_expired() {
    let (addr, origin, _) = standard().await;
    let url = q("/badexp", &[("expires", "0")]);
    get(addr, &url).await;
    get(addr, &url).await;
    assert_eq!(origin.calls(&url), 2);
}

#[tokio::test]
async fn no_cache_response_is_revalidated_on_every_use() {
    let (addr, origin, cache) = standard().await;
    let url = q(
        "/nocache",
        &[("cc", "No-CaChE, max-age=600"), ("etag", "\"t\"")],
    );
    let first = get(addr, &url).await;
    let second = get(addr, &url).await;
    assert_eq!(second.body, first.body);
    assert_eq!(
        second.one("cache-status"),
        "tower-ssr; fwd=stale; fwd-status=304; stored"
    );
    let (_, seen) = origin.last_request();
    assert_eq!(seen["if-none-match"], "\"t\"");
    assert_eq!(origin.calls(&url), 2);
    assert_eq!(cache.stats().revalidations, 1);
}

#[tokio::test]
async fn client_conditionals_are_answered_from_the_cache() {
    let (addr, origin, _) = standard().await;
    let url = q("/cond", &[("cc", "max-age=60"), ("etag", "\"abc\"")]);
    get(addr, &url).await;
    let res = get_with(addr, &url, &[("if-none-match", "\"abc\"")]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert!(res.body.is_empty());
    assert_eq!(res.one("etag"), "\"abc\"");
    assert!(res.one("cache-status").contains("hit"));
    assert_eq!(origin.calls(&url), 1);
    // On a miss too: the origin is asked for the full response, which is
    // stored, and the client still gets its 304.
    let url2 = q("/cond2", &[("cc", "max-age=60"), ("etag", "\"abc\"")]);
    let res = get_with(addr, &url2, &[("if-none-match", "\"abc\"")]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert!(get(addr, &url2).await.body.starts_with(b"GET"));
    assert_eq!(origin.calls(&url2), 1);
}

#[tokio::test]
async fn cache_status_is_appended_after_an_upstream_member() {
    let (addr, _, _) = standard().await;
    let url = q(
        "/chain",
        &[("cc", "max-age=60"), ("cs", "origin-cache; hit")],
    );
    let first = get(addr, &url).await;
    let all: Vec<_> = first.headers.get_all("cache-status").iter().collect();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], "origin-cache; hit");
    assert_eq!(all[1], "tower-ssr; fwd=uri-miss; stored");
    // Our member is never stored: the hit does not replay the miss.
    let hit = get(addr, &url).await;
    let all: Vec<_> = hit.headers.get_all("cache-status").iter().collect();
    assert_eq!(all.len(), 2);
    assert!(all[1].to_str().unwrap().starts_with("tower-ssr; hit"));
}

#[tokio::test]
async fn only_if_cached_miss_is_a_local_504() {
    let (addr, origin, _) = standard().await;
    let url = q("/oic", &[("cc", "max-age=60")]);
    let res = get_with(addr, &url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(!res.has("cache-status"));
    assert_eq!(origin.calls(&url), 0);
    get(addr, &url).await;
    let res = get_with(addr, &url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn authorization_requests_share_only_what_the_response_allows() {
    let (addr, origin, _) = standard().await;
    let private = q("/me", &[("cc", "max-age=60")]);
    get_with(addr, &private, &[("authorization", "Bearer a")]).await;
    get_with(addr, &private, &[("authorization", "Bearer b")]).await;
    get(addr, &private).await;
    assert_eq!(origin.calls(&private), 3);
    let public = q("/pub", &[("cc", "public, max-age=60")]);
    get_with(addr, &public, &[("authorization", "Bearer a")]).await;
    get_with(addr, &public, &[("authorization", "Bearer b")]).await;
    assert_eq!(origin.calls(&public), 1);
}

#[tokio::test]
async fn client_no_cache_revalidates_unless_ignored() {
    let (addr, origin, _) = standard().await;
    let url = q("/reload", &[("cc", "max-age=60"), ("etag", "\"r\"")]);
    get(addr, &url).await;
    let reload = get_with(addr, &url, &[("cache-control", "no-cache")]).await;
    assert_eq!(
        reload.one("cache-status"),
        "tower-ssr; fwd=request; fwd-status=304; stored"
    );
    let pragma = get_with(addr, &url, &[("pragma", "no-cache")]).await;
    assert!(pragma.one("cache-status").contains("fwd=request"));
    assert_eq!(origin.calls(&url), 3);

    let (addr, origin, _) = start(|c| CacheLayer::new(c).ignore_client_no_cache(true)).await;
    get(addr, &url).await;
    let reload = get_with(addr, &url, &[("cache-control", "no-cache")]).await;
    assert!(reload.one("cache-status").contains("hit"));
    let reload = get_with(addr, &url, &[("cache-control", "max-age=0")]).await;
    assert!(reload.one("cache-status").contains("hit"));
    assert_eq!(origin.calls(&url), 1);
}

#[tokio::test]
async fn client_max_stale_never_overrides_must_revalidate() {
    let (addr, origin, _) = standard().await;
    let lax = q(
        "/lax",
        &[("cc", "max-age=1"), ("age", "5"), ("etag", "\"e\"")],
    );
    get(addr, &lax).await;
    let res = get_with(addr, &lax, &[("cache-control", "max-stale=100")]).await;
    assert!(res.one("cache-status").contains("hit; ttl=-"), "{res:?}");
    assert_eq!(origin.calls(&lax), 1);
    let strict = q(
        "/strict",
        &[
            ("cc", "max-age=1, must-revalidate"),
            ("age", "5"),
            ("etag", "\"e\""),
        ],
    );
    get(addr, &strict).await;
    let res = get_with(addr, &strict, &[("cache-control", "max-stale=100")]).await;
    assert!(res.one("cache-status").contains("fwd=stale"));
    assert_eq!(origin.calls(&strict), 2);
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_copy_on_5xx() {
    let (addr, origin, cache) = standard().await;
    let url = q(
        "/sie",
        &[
            ("cc", "max-age=1, stale-if-error=600"),
            ("age", "5"),
            ("fail_after", "1"),
        ],
    );
    let first = get(addr, &url).await;
    let second = get(addr, &url).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, first.body);
    assert_eq!(
        second.one("cache-status"),
        "tower-ssr; fwd=stale; fwd-status=500"
    );
    assert_eq!(origin.calls(&url), 2);
    assert_eq!(cache.stats().stale, 1);

    // s-maxage carries proxy-revalidate: the error goes through.
    let strict = q(
        "/sie-strict",
        &[
            ("cc", "s-maxage=1, stale-if-error=600"),
            ("age", "5"),
            ("fail_after", "1"),
        ],
    );
    get(addr, &strict).await;
    assert_eq!(
        get(addr, &strict).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_behind() {
    let (addr, origin, cache) = standard().await;
    let url = q(
        "/swr",
        &[
            ("cc", "s-maxage=1, stale-while-revalidate=600"),
            ("age", "5"),
        ],
    );
    let first = get(addr, &url).await;
    let second = get(addr, &url).await;
    assert_eq!(second.body, first.body, "the stale copy, at once");
    assert!(second.one("cache-status").contains("hit; ttl=-"));
    // The refresh runs in the background; wait for it to store.
    tokio::time::timeout(Duration::from_secs(30), async {
        while cache.stats().stores < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("background refresh stored");
    assert_eq!(origin.calls(&url), 2);
    let third = get(addr, &url).await;
    assert!(body(&third).contains("#2"), "{third:?}");
}

#[tokio::test]
async fn purge_by_path_prefix_tag_and_all() {
    let (addr, origin, cache) = standard().await;
    let a = q("/blog/a", &[("cc", "max-age=60"), ("tag", "blog all")]);
    let b = q("/blog/b", &[("cc", "max-age=60")]);
    let c = q("/about", &[("cc", "max-age=60"), ("tag", "all")]);
    for u in [&a, &b, &c] {
        get(addr, u).await;
    }
    cache.purge_prefix("/blog/");
    for u in [&a, &b, &c] {
        get(addr, u).await;
    }
    assert_eq!(
        (origin.calls(&a), origin.calls(&b), origin.calls(&c)),
        (2, 2, 1)
    );
    cache.purge_tag("all");
    get(addr, &a).await;
    get(addr, &b).await;
    get(addr, &c).await;
    assert_eq!(
        (origin.calls(&a), origin.calls(&b), origin.calls(&c)),
        (3, 2, 2)
    );
    cache.purge_path(&b);
    get(addr, &b).await;
    assert_eq!(origin.calls(&b), 3);
    let key = format!("http://{addr}{c}");
    assert!(cache.purge(&key));
    get(addr, &c).await;
    assert_eq!(origin.calls(&c), 3);
    cache.purge_all();
    get(addr, &a).await;
    assert_eq!(origin.calls(&a), 4);
    assert_eq!(cache.stats().purges, 5);
}

#[tokio::test]
async fn over_long_keys_bypass_the_cache() {
    let (addr, origin, _) = start(|c| CacheLayer::new(c).max_key(64)).await;
    let url = q("/long", &[("cc", "max-age=60"), ("pad", &"x".repeat(100))]);
    let res = get(addr, &url).await;
    assert_eq!(res.one("cache-status"), "tower-ssr; fwd=bypass");
    get(addr, &url).await;
    assert_eq!(origin.calls(&url), 2);
}

#[tokio::test]
async fn key_closure_separates_variants_or_bypasses() {
    let (addr, origin, _) = start(|c| {
        CacheLayer::new(c).key_with(|parts| {
            let cookie = parts.headers.get("cookie")?.to_str().ok()?;
            if cookie.contains("session=") {
                return None;
            }
            Some(cookie.to_owned())
        })
    })
    .await;
    let url = q("/loc", &[("cc", "max-age=60")]);
    let en = get_with(addr, &url, &[("cookie", "lang=en")]).await;
    let de = get_with(addr, &url, &[("cookie", "lang=de")]).await;
    assert_ne!(en.body, de.body);
    assert_eq!(
        get_with(addr, &url, &[("cookie", "lang=en")]).await.body,
        en.body
    );
    assert_eq!(origin.calls(&url), 2);
    let s = get_with(addr, &url, &[("cookie", "session=1")]).await;
    assert_eq!(s.one("cache-status"), "tower-ssr; fwd=bypass");
}

#[tokio::test]
async fn targeted_field_governs_only_when_configured() {
    let url = q("/cdn", &[("cc", "max-age=0"), ("cdn", "max-age=60")]);
    // Off by default: Cache-Control's max-age=0 (and no validator) wins.
    let (addr, origin, _) = standard().await;
    get(addr, &url).await;
    get(addr, &url).await;
    assert_eq!(origin.calls(&url), 2);

    let (addr, origin, _) = start(|c| {
        CacheLayer::new(c).targeted_field(http::HeaderName::from_static("cdn-cache-control"))
    })
    .await;
    get(addr, &url).await;
    let hit = get(addr, &url).await;
    assert!(hit.one("cache-status").contains("hit"));
    assert_eq!(hit.one("cdn-cache-control"), "max-age=60", "left for CDNs");
    assert_eq!(origin.calls(&url), 1);

    // A field of the user's own name is for this cache only.
    let mine = q("/mine", &[("cc", "max-age=0"), ("mine", "max-age=60")]);
    let (addr, origin, _) =
        start(|c| CacheLayer::new(c).targeted_field(http::HeaderName::from_static("x-my-cc")))
            .await;
    assert!(!get(addr, &mine).await.has("x-my-cc"));
    assert!(!get(addr, &mine).await.has("x-my-cc"));
    assert_eq!(origin.calls(&mine), 1);
}

#[tokio::test]
async fn failed_unsafe_request_invalidates_nothing() {
    let (addr, origin, _) = standard().await;
    let url = q("/keep", &[("cc", "max-age=60")]);
    get(addr, &url).await;
    // The same URL answering 404 to a DELETE: RFC 9111 §4.4 keeps the entry.
    let del = q("/keep", &[("cc", "max-age=60"), ("status", "404")]);
    send(addr, Method::DELETE, &del, &[]).await;
    let res = get(addr, &url).await;
    assert!(res.one("cache-status").contains("hit"));
    assert_eq!(origin.calls(&url), 1);
}

#[tokio::test]
async fn malformed_fields_are_handled_as_the_rfc_says_never_a_panic() {
    let (addr, origin, _) = standard().await;
    // Invalid Age counts as 0; a huge one caps at 2^31 and is stale at once.
    let bad_age = q("/bad", &[("cc", "max-age=60"), ("age", "abc")]);
    get(addr, &bad_age).await;
    assert!(get(addr, &bad_age)
        .await
        .one("cache-status")
        .contains("hit"));
    let huge_age = q(
        "/bad",
        &[("cc", "max-age=60"), ("age", "99999999999999999999")],
    );
    get(addr, &huge_age).await;
    get(addr, &huge_age).await;
    assert_eq!(origin.calls(&huge_age), 2);
    // max-age=abc reads as 0: stale, and without a validator never stored.
    let bad_cc = q("/bad", &[("cc", "max-age=abc, ,,=, public")]);
    get(addr, &bad_cc).await;
    get(addr, &bad_cc).await;
    assert_eq!(origin.calls(&bad_cc), 2);
    // A garbage Date is replaced with the receipt time.
    let bad_date = q("/bad", &[("cc", "max-age=60"), ("date", "yesterday")]);
    get(addr, &bad_date).await;
    assert!(get(addr, &bad_date)
        .await
        .one("cache-status")
        .contains("hit"));
    // An unparseable Vary is treated like Vary: * (never stored).
    let bad_vary = q("/bad", &[("cc", "max-age=60"), ("vary", "accept language")]);
    get(addr, &bad_vary).await;
    get(addr, &bad_vary).await;
    assert_eq!(origin.calls(&bad_vary), 2);
    // Malformed request directives and conditionals are ignored.
    let ok = q("/bad", &[("cc", "max-age=60"), ("etag", "\"e\"")]);
    get(addr, &ok).await;
    let res = get_with(
        addr,
        &ok,
        &[
            ("cache-control", "max-age=-1, max-stale=x, min-fresh"),
            ("if-none-match", "e, \"unterminated"),
            ("if-modified-since", "not a date"),
        ],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.one("cache-status").contains("hit"));
}

#[tokio::test]
async fn query_options_and_cache_name_are_configurable() {
    let (addr, origin, _) = start(|c| {
        CacheLayer::new(c)
            .query(tower_ssr::cache::QueryKey::Sort)
            .cache_name("edge 1")
    })
    .await;
    let ab = q("/sorted", &[("cc", "max-age=60"), ("a", "1")]) + "&b=2";
    let ba = "/sorted?b=2&".to_owned() + &ab["/sorted?".len()..ab.len() - "&b=2".len()];
    let first = get(addr, &ab).await;
    assert_eq!(
        first.one("cache-status"),
        "\"edge 1\"; fwd=uri-miss; stored"
    );
    let second = get(addr, &ba).await;
    assert_eq!(second.body, first.body, "{ba} shares {ab}'s entry");
    assert!(second.one("cache-status").starts_with("\"edge 1\"; hit"));
    assert_eq!(origin.calls(&ab) + origin.calls(&ba), 1);
}

#[tokio::test]
async fn location_on_another_origin_is_not_invalidated() {
    let (addr, origin, _) = standard().await;
    let page = q("/kept", &[("cc", "max-age=60")]);
    get(addr, &page).await;
    // RFC 9111 §4.4: MUST NOT invalidate a Location on another origin.
    let elsewhere = format!("http://other.example{page}");
    send(
        addr,
        Method::POST,
        &q("/things", &[("loc", &elsewhere)]),
        &[],
    )
    .await;
    assert!(get(addr, &page).await.one("cache-status").contains("hit"));
    assert_eq!(origin.calls(&page), 1);
}

#[tokio::test]
async fn request_no_store_response_is_not_stored() {
    let (addr, origin, _) = standard().await;
    let url = q("/private-ask", &[("cc", "max-age=60")]);
    let first = get_with(addr, &url, &[("cache-control", "no-store")]).await;
    assert!(!first.one("cache-status").contains("stored"), "{first:?}");
    // RFC 9111 §5.2.1.5: nothing of that exchange was kept.
    get(addr, &url).await;
    assert_eq!(origin.calls(&url), 2);
}

#[tokio::test]
async fn revalidation_sends_if_modified_since_from_last_modified() {
    let (addr, origin, _) = standard().await;
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let url = q("/dated", &[("cc", "no-cache, max-age=60"), ("lm", lm)]);
    get(addr, &url).await;
    get(addr, &url).await;
    // RFC 9111 §4.3.1: the stored Last-Modified goes out as If-Modified-Since.
    let (_, headers) = origin.last_request();
    assert_eq!(headers["if-modified-since"], lm);
}

#[tokio::test]
async fn request_min_fresh_and_max_age_ask_the_origin() {
    let (addr, origin, _) = standard().await;
    let url = q("/fresh-enough", &[("cc", "max-age=60")]);
    get(addr, &url).await;
    // RFC 9111 §5.2.1.3: 60 s of life cannot give 120 s of freshness.
    let res = get_with(addr, &url, &[("cache-control", "min-fresh=120")]).await;
    assert!(res.one("cache-status").contains("fwd="), "{res:?}");
    assert_eq!(origin.calls(&url), 2);
    // A fresh entry within the client's max-age is a hit (§5.2.1.1).
    let res = get_with(addr, &url, &[("cache-control", "max-age=30")]).await;
    assert!(res.one("cache-status").contains("hit"), "{res:?}");
}

#[tokio::test]
async fn only_if_cached_with_a_stale_entry_is_504_unless_max_stale_accepts_it() {
    let (addr, origin, _) = standard().await;
    // Stored although never fresh: it has a validator.
    let url = q("/stale-now", &[("cc", "max-age=0"), ("etag", "\"v1\"")]);
    get(addr, &url).await;
    // RFC 9111 §5.2.1.7: nothing suitable stored, so 504, and no forward.
    let res = get_with(addr, &url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.calls(&url), 1);
    let res = get_with(
        addr,
        &url,
        &[("cache-control", "only-if-cached, max-stale=60")],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(origin.calls(&url), 1);
}

#[tokio::test]
async fn proxy_revalidate_is_never_served_stale() {
    let (addr, origin, _) = standard().await;
    let url = q(
        "/strict",
        &[("cc", "max-age=0, proxy-revalidate"), ("etag", "\"v1\"")],
    );
    get(addr, &url).await;
    // RFC 9111 §5.2.2.8: a shared cache must validate once stale, whatever
    // the client's max-stale says (§4.2.4).
    get_with(addr, &url, &[("cache-control", "max-stale=600")]).await;
    assert_eq!(origin.calls(&url), 2);
}

#[tokio::test]
async fn expires_in_another_zone_means_already_expired() {
    let (addr, origin, _) = standard().await;
    let url = q(
        "/zoned",
        &[
            ("cc", "public"),
            ("expires", "Sun, 06 Nov 2094 08:49:37 UTC"),
        ],
    );
    get(addr, &url).await;
    get(addr, &url).await;
    // RFC 9111 §4.2 / §5.3: only GMT is valid; an invalid Expires is past.
    assert_eq!(origin.calls(&url), 2);
}
