//! The production stack in one axum app: tracing, the response cache,
//! Cache-Control policies, compression, then the router.
//!
//! ```text
//! cargo run --example axum_app                 # 127.0.0.1:3000 (PORT=0: any free port)
//! curl -si http://127.0.0.1:3000/ | grep -i cache-status   # fwd=uri-miss; stored
//! curl -si http://127.0.0.1:3000/ | grep -i cache-status   # hit; ttl=…
//! ```
//!
//! Order, outside in (README "The production stack" says why):
//! body mapping → `TraceLayer` → `CompressionLayer` → `CacheLayer` →
//! `CacheControlLayer` → router. The cache makes br, zstd and gzip of each
//! stored page once; tower-http's `CompressionLayer` outside it skips those
//! (they carry `Content-Encoding`) and compresses only what the cache
//! passes through unstored.

use std::time::Duration;

use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Router, ServiceExt as _};
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::cache_control::{CacheControlLayer, Directives, Rule};
use tower_ssr::ServiceBuilderExt as _;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs one line per request (RUST_LOG=tower_http=debug for more).
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "tower_http=debug,tower_ssr=info".into()),
        )
        .init();

    let router = Router::new()
        .route("/", get(|| async { Html(page("home")) }))
        .route("/posts/{id}", get(post))
        .route(
            "/assets/app.js",
            get(|| async { ([("content-type", "text/javascript")], "console.log(1)") }),
        );

    // Route policies: one source of truth for browsers and for the cache
    // (the cache's TTL is the page's `s-maxage`).
    let policy = CacheControlLayer::new()
        .rule(Rule::path("/assets/**")?.cache_control(Directives::immutable_asset()))
        .rule(
            Rule::content_type("text/html")?.cache_control(
                Directives::new()
                    .public()
                    .max_age(Duration::ZERO)
                    .s_maxage(Duration::from_secs(60))
                    .stale_while_revalidate(Duration::from_secs(300)),
            ),
        );
    let cache = ResponseCache::builder().max_bytes(64 << 20).build();

    let app = ServiceBuilder::new()
        // Outermost: axum::serve wants axum's own Request and Response
        // types, so name the request type and turn every body back into
        // `axum::body::Body` here, above every other layer.
        .map_request(|req: axum::extract::Request| req)
        .map_response(|res: http::Response<_>| res.map(axum::body::Body::new))
        .layer(TraceLayer::new_for_http())
        // Outside the cache: it skips responses that already carry
        // `Content-Encoding` (the cache's own br / zstd / gzip), so hits are
        // never compressed again; it compresses what the cache passes on.
        .layer(CompressionLayer::new())
        .cache(CacheLayer::new(cache.clone()))
        .cache_control(policy)
        .service(router);

    let port = std::env::var("PORT").map_or(Ok(3000), |p| p.parse())?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("stats: {:?}", cache.stats());
    Ok(())
}

async fn post(axum::extract::Path(id): axum::extract::Path<u32>) -> impl IntoResponse {
    Html(page(&format!("post {id}")))
}

fn page(title: &str) -> String {
    // Big enough (> 1 KiB) for compression to be worth it.
    format!(
        "<!doctype html><h1>{title}</h1>{}",
        "<p>rendered</p>".repeat(100)
    )
}
