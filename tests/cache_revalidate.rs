//! Revalidation (soft purge): entries marked stale are answered at once
//! while one background refresh per key renders the new page; entries
//! whose policy forbids stale serving are refreshed before they are
//! served. Over real sockets, with the default tokio executor.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::Response;
use axum::Router;
use common::{get, serve, until, GUARD};
use tokio::sync::Notify;
use tower_ssr::cache::{CacheLayer, ResponseCache};

/// Renders `v{n}` for the n-th render of a path-and-query; `cc` sets
/// `Cache-Control` (default `public, max-age=60`), `tag` a Surrogate-Key.
/// While `hold` is set, renders wait for `release`.
#[derive(Clone, Default)]
struct Origin {
    renders: Arc<Mutex<HashMap<String, usize>>>,
    hold: Arc<AtomicBool>,
    release: Arc<Notify>,
}

impl Origin {
    fn renders(&self, pq: &str) -> usize {
        self.renders.lock().unwrap().get(pq).copied().unwrap_or(0)
    }
}

async fn render(
    State(origin): State<Origin>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let pq = uri.path_and_query().unwrap().as_str().to_owned();
    let n = {
        let mut r = origin.renders.lock().unwrap();
        let n = r.entry(pq).or_insert(0);
        *n += 1;
        *n
    };
    while origin.hold.load(Ordering::SeqCst) {
        let released = origin.release.notified();
        if !origin.hold.load(Ordering::SeqCst) {
            break;
        }
        released.await;
    }
    let cc = q.get("cc").map_or("public, max-age=60", String::as_str);
    let mut res = Response::builder().header("cache-control", cc);
    if let Some(tag) = q.get("tag") {
        res = res.header("surrogate-key", tag.as_str());
    }
    res.body(Body::from(format!("v{n}"))).unwrap()
}

async fn app(origin: &Origin) -> (std::net::SocketAddr, ResponseCache) {
    let cache = ResponseCache::new();
    let app = Router::new()
        .fallback(render)
        .with_state(origin.clone())
        .layer(CacheLayer::new(cache.clone()));
    (serve(app).await, cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidated_page_is_served_stale_at_once_and_rendered_once() {
    let origin = Origin::default();
    let (addr, cache) = app(&origin).await;
    let page = "/p/1?tag=product-7";
    assert_eq!(get(addr, page).await.body, "v1");
    assert!(get(addr, page)
        .await
        .one("cache-status")
        .starts_with("tower-ssr; hit"));

    // Renders now wait, so any answer below that does not wait for one
    // came from the stale copy.
    origin.hold.store(true, Ordering::SeqCst);
    cache
        .revalidate_tag("product-7")
        .confirmed(GUARD)
        .await
        .unwrap();
    let burst: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, page).await }))
        .collect();
    for r in burst {
        let seen = r.await.unwrap();
        assert_eq!(seen.status, 200);
        assert_eq!(seen.body, "v1", "the stale copy, at once");
    }
    assert_eq!(cache.stats().stale, 20);
    until("the background refresh began", || origin.renders(page) == 2).await;
    origin.hold.store(false, Ordering::SeqCst);
    origin.release.notify_waiters();

    // After the refresh: the new page, fresh, and no further render.
    let mut polls = 0;
    while get(addr, page).await.body != "v2" {
        polls += 1;
        assert!(polls < 10_000, "the refresh never landed");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let seen = get(addr, page).await;
    assert_eq!(seen.body, "v2");
    assert!(seen.one("cache-status").starts_with("tower-ssr; hit"));
    assert_eq!(origin.renders(page), 2, "one refresh for the whole burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_forbids_stale_serving_is_refreshed_before_it_is_served() {
    let origin = Origin::default();
    let (addr, cache) = app(&origin).await;
    // s-maxage without stale-while-revalidate, must-revalidate, no-cache
    // (the last stored, but validated on every use anyway).
    let pages = [
        "/s?cc=public,%20s-maxage=60",
        "/m?cc=public,%20max-age=60,%20must-revalidate",
    ];
    for page in pages {
        assert_eq!(get(addr, page).await.body, "v1");
        assert_eq!(get(addr, page).await.body, "v1");
        cache.revalidate_path(page);
        let seen = get(addr, page).await;
        assert_eq!(seen.body, "v2", "{page}: refreshed before it was served");
        assert!(
            seen.one("cache-status").contains("fwd=stale"),
            "{page}: {:?}",
            seen.headers
        );
        assert_eq!(get(addr, page).await.body, "v2");
        assert_eq!(origin.renders(page), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidating_a_prefix_leaves_other_pages_fresh() {
    let origin = Origin::default();
    let (addr, cache) = app(&origin).await;
    for page in ["/a/1", "/a/2", "/b/1"] {
        get(addr, page).await;
    }
    cache.revalidate_prefix("/a/");
    let seen = get(addr, "/b/1").await;
    assert!(seen.one("cache-status").starts_with("tower-ssr; hit"));
    assert_eq!(cache.stats().stale, 0, "/b/1 was not marked");
    assert_eq!(get(addr, "/a/2").await.body, "v1", "stale, at once");
    assert_eq!(cache.stats().stale, 1);
    until("the refresh of /a/2", || origin.renders("/a/2") == 2).await;
    assert_eq!(origin.renders("/a/1"), 1, "not requested, not rendered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_renders_each_page_once_with_bounded_concurrency() {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;
    use tower::{service_fn, Layer, ServiceExt};

    let renders = Arc::new(AtomicUsize::new(0));
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let render = {
        let (renders, now, most) = (renders.clone(), now.clone(), most.clone());
        service_fn(move |req: http::Request<String>| {
            let (renders, now, most) = (renders.clone(), now.clone(), most.clone());
            async move {
                renders.fetch_add(1, Ordering::SeqCst);
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let cc = if req.uri().path() == "/private" {
                    "no-store"
                } else {
                    "public, max-age=60"
                };
                let res = http::Response::builder()
                    .header("cache-control", cc)
                    .body(format!("<p>{}</p>", req.uri()))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        })
    };
    let cache = ResponseCache::new();
    let svc = CacheLayer::new(cache.clone()).layer(render);
    let req = |p: String| {
        http::Request::get(p)
            .header("host", "shop.example")
            .body(String::new())
            .unwrap()
    };
    let pages: Vec<String> = (0..50).map(|i| format!("/posts/{i}")).collect();
    let mut all: Vec<_> = pages.iter().cloned().map(req).collect();
    all.push(req("/private".into()));
    let warmed = svc.warm(all, 4).await;
    assert_eq!(
        (
            warmed.requested,
            warmed.stored,
            warmed.not_stored,
            warmed.failed
        ),
        (51, 50, 1, 0),
        "{warmed:?}"
    );
    assert!(most.load(Ordering::SeqCst) <= 4, "at most 4 at a time");
    assert_eq!(renders.load(Ordering::SeqCst), 51);

    // Warming again stores nothing new: everything is cached.
    let again = svc.warm(pages.iter().cloned().map(req), 8).await;
    assert_eq!((again.stored, again.cached), (0, 50), "{again:?}");
    assert_eq!(renders.load(Ordering::SeqCst), 51);
    let hit = svc.clone().oneshot(req("/posts/7".into())).await.unwrap();
    assert!(hit.headers()["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("tower-ssr; hit"));
    assert_eq!(cache.stats().stores, 50);
}
