//! Purging the cache from an admin route: by path, by prefix, by tag (the
//! `Surrogate-Key` / `Cache-Tag` a `Rule` puts on responses), or all.
//! Runs a scripted check in-process (no network) and exits.
//!
//! ```text
//! cargo run --example purge_and_revalidate
//! ```
//!
//! With several instances, a purge route reaches the one instance that
//! received it, unless they share the Redis tier (feature `redis`): then a
//! purge on any instance reaches all of them (README, "Several instances").

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, Uri};
use axum::response::Html;
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceExt;
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::cache_control::{CacheControlLayer, Directives, Rule};

/// `POST /admin/purge?path=/p` (or `?prefix=/posts/`, `?tag=posts`, or
/// nothing: everything). Guard it (a token, a private listener) in a real
/// app: anyone who can call it can make every page render again.
async fn purge(State(cache): State<ResponseCache>, uri: Uri) -> StatusCode {
    let query = uri.query().unwrap_or("");
    let (what, value) = query.split_once('=').unwrap_or((query, ""));
    // The returned `Purged` can be awaited (`confirmed(within)`) when a
    // Redis tier must have applied it too; in memory it is applied already.
    let _purged = match what {
        "path" => cache.purge_path(value),
        "prefix" => cache.purge_prefix(value),
        "tag" => cache.purge_tag(value),
        "" => cache.purge_all(),
        _ => return StatusCode::BAD_REQUEST,
    };
    StatusCode::NO_CONTENT
}

/// `POST /admin/revalidate?path=/p` (or `?prefix=`, `?tag=`): a soft purge.
/// The stale page is served at once while one refresh per key renders the
/// new one (Next.js's `revalidatePath` / `revalidateTag`).
async fn revalidate(State(cache): State<ResponseCache>, uri: Uri) -> StatusCode {
    let query = uri.query().unwrap_or("");
    let Some((what, value)) = query.split_once('=') else {
        return StatusCode::BAD_REQUEST;
    };
    let _purged = match what {
        "path" => cache.revalidate_path(value),
        "prefix" => cache.revalidate_prefix(value),
        "tag" => cache.revalidate_tag(value),
        _ => return StatusCode::BAD_REQUEST,
    };
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = ResponseCache::builder().max_bytes(16 << 20).build();
    let policy = CacheControlLayer::new().rule(
        Rule::path("/posts/**")?
            .cache_control(
                Directives::new()
                    .public()
                    .s_maxage(Duration::from_secs(300)),
            )
            .tags(["posts"])?,
    );
    let pages = Router::new()
        .route("/posts/{id}", get(|| async { Html("<h1>a post</h1>") }))
        .layer(policy)
        // The simple form: the cache as a router layer (README).
        .layer(CacheLayer::new(cache.clone()));
    // Admin routes outside the cached part: never cached, never tagged.
    let app = Router::new()
        .route("/admin/purge", post(purge))
        .route("/admin/revalidate", post(revalidate))
        .with_state(cache.clone())
        .merge(pages);

    let status = |uri: &'static str| {
        let req = Request::get(uri)
            .header("host", "shop.test")
            .body(Body::empty());
        let svc = app.clone();
        async move {
            let res = svc
                .oneshot(req.expect("valid request"))
                .await
                .expect("infallible");
            res.headers()
                .get("cache-status")
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default()
        }
    };
    status("/posts/1").await;
    assert!(
        status("/posts/1").await.contains("hit"),
        "second request is a hit"
    );

    for purge_uri in [
        "/admin/purge?path=/posts/1",
        "/admin/purge?tag=posts",
        "/admin/purge?prefix=/posts/",
        "/admin/purge",
    ] {
        status("/posts/1").await; // stored again
        let req = Request::post(purge_uri)
            .header("host", "shop.test")
            .body(Body::empty())?;
        let res = app.clone().oneshot(req).await?;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let after = status("/posts/1").await;
        assert!(
            after.contains("fwd="),
            "{purge_uri}: purged page is rendered again ({after})"
        );
        println!("{purge_uri:<28} -> next request: {after}");
    }
    println!("purges: {}", cache.stats().purges);
    Ok(())
}
