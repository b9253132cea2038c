//! Tower middleware that lets a Rust HTTP server wrapping a server-side
//! renderer (SSR) take high traffic.
//!
//! A render costs milliseconds of CPU; a cached page costs microseconds. This
//! crate gives any [axum] `Router` or raw [hyper] service the pieces a
//! high-traffic SSR front needs, as [Tower] layers that work alone or
//! stacked:
//!
//! - [`cache_control`]: typed, status-aware `Cache-Control`,
//!   `CDN-Cache-Control` and `Surrogate-Control` policies by route, content
//!   type and status; content ETags and `304 Not Modified`.
//! - [`cache`]: a shared in-memory response cache
//!   (RFC 9111) that answers hits without running anything below it,
//!   coalesces concurrent misses and serves stale pages while it refreshes
//!   them.
//! - [`balance`]: upstream selection over renderer workers or processes
//!   (round robin, least in-flight, P2C, consistent hashing), passive and
//!   active health, retries; [`proxy`] forwards to upstream processes.
//!
//! # Layout
//!
//! Read in this order: [`cache_control::Directives`] (the typed header
//! value), [`cache_control::Rule`] (which responses get which policy), then
//! [`cache_control::CacheControlLayer`] (the middleware, with its ETag and
//! conditional-request handling).
//!
//! For caching: [`cache::ResponseCache`] (the shared handle: capacity,
//! purge, stats), then [`cache::CacheLayer`] (the middleware and its
//! options).
//!
//! Both the cache and the proxy take the request's authority from one
//! validated source, [`authority::normalize`] (RFC 9112 §3.2), and answer
//! `400` when there is none.
//!
//! For balancing: [`balance::Endpoints`] (the set and its health),
//! [`balance::Strategy`] and its built-ins, [`balance::Balance`] /
//! [`balance::BalanceLayer`] (the middleware), then [`proxy::ReverseProxy`]
//! (forwarding to upstream processes).
//!
//! # Layering order
//!
//! ```text
//! client ─▶ CacheLayer ─▶ CacheControlLayer ─▶ BalanceLayer ─▶ renderers
//!           (serves hits,  (sets Cache-Control,  (picks an upstream,
//!            coalesces      ETag, answers 304)     ejects failing ones)
//!            misses)
//! ```
//!
//! The cache sits outside so a hit costs one lookup and nothing below runs;
//! it reads the policy `CacheControlLayer` injected, so a route's `s-maxage`
//! is the cache's TTL. `CacheControlLayer` sits inside so every response,
//! cached or not, carries the same headers.
//!
//! # Feature flags
//!
//! | feature | default | what it enables |
//! |---|---|---|
//! | `cache-control` | yes | [`cache_control`] |
//! | `cache` | yes | [`cache`]: the RFC 9111 shared response cache |
//! | `tokio` | yes | the cache's background refreshes run on tokio; [`balance::ActiveProbes`] |
//! | `balance` | yes | [`balance`]: endpoint set, strategies, passive health, retries |
//! | `proxy` | yes | [`proxy`]: forwarding over pooled hyper client connections to `http://`, `h2c://` and `unix:` upstreams, [`proxy::serve`] (implies `balance`, `tokio`) |
//! | `tls` | yes | `https://` upstreams through rustls (ring, no OpenSSL), [`proxy::TlsRoots`] (implies `proxy`) |
//! | `axum` | no | `balance` reads axum's `ConnectInfo<SocketAddr>` as the client address |
//! | `metrics` | yes | [`metrics`]: counters, gauges and histograms through the `metrics` facade (no exporter) |
//! | `tracing` | no | spans and events from `balance` and `proxy` (the cache's are always on: `cache` uses `tracing`) |
//! | `redis` | no | a shared second cache tier on Redis for many instances |
//! | `redis-tls` | no | `rediss://` (Redis over TLS, rustls) for that tier |
//! | `compression` | yes | the cache's gzip / br / zstd representations ([`cache::Compression`]); implies `cache`, `tokio` |
//!
//! # Example
//!
//! The simple form: the cache and the policy as router layers. It compiles
//! under any other layer (`Router::layer` adapts body types):
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{response::Html, routing::get, Router};
//! use tower_ssr::cache::{CacheLayer, ResponseCache};
//! use tower_ssr::cache_control::{CacheControlLayer, Directives, Rule};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = CacheControlLayer::new()
//!     .rule(Rule::path("/assets/**")?.cache_control(Directives::immutable_asset()))
//!     .rule(Rule::content_type("text/html")?.cache_control(
//!         Directives::new().public().s_maxage(Duration::from_secs(60))
//!             .stale_while_revalidate(Duration::from_secs(300)),
//!     ));
//! let cache = ResponseCache::builder().max_bytes(256 << 20).build();
//! let app = Router::new()
//!     .route("/", get(|| async { Html("<h1>rendered</h1>") }))
//!     .layer(policy)
//!     .layer(CacheLayer::new(cache.clone())); // the last layer is the outermost
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The fastest form puts the cache outside the router, under tracing, with
//! compression inside it; the body mapping that `axum::serve` needs goes
//! **above every other layer** (below one, it fails with `E0271` at
//! `axum::serve`). The README's "The production stack" explains the
//! order; `examples/axum_app.rs` runs it:
//!
//! ```no_run
//! use axum::{response::Html, routing::get, Router, ServiceExt as _};
//! use tower::ServiceBuilder;
//! use tower_http::{compression::CompressionLayer, trace::TraceLayer};
//! use tower_ssr::cache::{CacheLayer, ResponseCache};
//! use tower_ssr::cache_control::CacheControlLayer;
//! use tower_ssr::ServiceBuilderExt as _;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let router = Router::new().route("/", get(|| async { Html("<h1>rendered</h1>") }));
//! let cache = ResponseCache::builder().max_bytes(256 << 20).build();
//! let app = ServiceBuilder::new()
//!     .map_request(|req: axum::extract::Request| req)
//!     .map_response(|res: http::Response<_>| res.map(axum::body::Body::new))
//!     .layer(TraceLayer::new_for_http())
//!     .cache(CacheLayer::new(cache.clone()))
//!     .cache_control(CacheControlLayer::new())
//!     .layer(CompressionLayer::new())
//!     .service(router);
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! More in [`docs::recipes`] and `examples/` (one program per task).
//!
//! [axum]: https://docs.rs/axum
//! [hyper]: https://docs.rs/hyper
//! [Tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod authority;
pub mod limits;

#[cfg(feature = "cache-control")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache-control")))]
pub mod cache_control;

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub mod cache;

#[cfg(feature = "balance")]
#[cfg_attr(docsrs, doc(cfg(feature = "balance")))]
pub mod balance;

#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
// Without the feature, the same handles as no-ops, so the instrumented
// code has no `cfg` of its own.
#[cfg(not(feature = "metrics"))]
#[allow(dead_code)]
mod metrics;

/// Guides longer than an item's docs.
#[cfg(all(
    feature = "cache",
    feature = "cache-control",
    feature = "balance",
    feature = "tokio"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(
        feature = "cache",
        feature = "cache-control",
        feature = "balance",
        feature = "tokio"
    )))
)]
pub mod docs {
    #[doc = include_str!("docs/recipes.md")]
    pub mod recipes {}
}

mod builder;
#[cfg_attr(
    not(any(feature = "cache-control", feature = "cache")),
    allow(dead_code)
)]
mod date;
#[cfg_attr(not(feature = "cache-control"), allow(dead_code))]
mod directives;
#[cfg_attr(not(feature = "cache-control"), allow(dead_code, unreachable_pub))]
mod etag;
#[cfg_attr(not(any(feature = "cache", feature = "balance")), allow(dead_code))]
mod late_error;

pub use builder::ServiceBuilderExt;
pub use directives::{Directives, InvalidDirective};
#[cfg_attr(
    not(any(feature = "cache-control", feature = "cache")),
    allow(unused_macros, unused_imports)
)]
mod macros;
#[cfg(test)]
mod test_helpers;

/// Compiles the README's examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
