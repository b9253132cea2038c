//! Caching headers and validators for SSR responses.
//!
//! [`CacheControlLayer`] puts a typed, status-aware policy on each response:
//! `Cache-Control` for browsers, `CDN-Cache-Control` (RFC 9213) and
//! `Surrogate-Control` for CDNs, `Expires` for HTTP/1.0 caches, `Vary`, and
//! purge tags. It hashes the body into an ETag every replica computes alike,
//! and answers `If-None-Match` / `If-Modified-Since` with `304 Not Modified`.
//! [`Directives`] is the typed `Cache-Control` value it is built from, and
//! also a lenient parser for the values others send.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{header, Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ssr::cache_control::{CacheControlLayer, Directives, Rule};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = CacheControlLayer::new()
//!     // The first rule that matches wins, in the order added.
//!     .rule(Rule::path("/assets/**")?.cache_control(Directives::immutable_asset()))
//!     .rule(Rule::path("/**")?.cache_control(
//!         Directives::new()
//!             .public()
//!             .max_age(Duration::ZERO)
//!             .s_maxage(Duration::from_secs(60))
//!             .stale_while_revalidate(Duration::from_secs(300)),
//!     ));
//!
//! let renderer = service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("<h1>hello</h1>")))
//! });
//! let svc = ServiceBuilder::new().layer(layer).service(renderer);
//!
//! let res = svc.clone().oneshot(Request::get("/posts/1").body(())?).await?;
//! assert_eq!(
//!     res.headers()[header::CACHE_CONTROL],
//!     "public, max-age=0, s-maxage=60, stale-while-revalidate=300"
//! );
//! let etag = res.headers()[header::ETAG].clone();
//! assert!(etag.to_str()?.starts_with("W/\""));
//!
//! // The browser asks again with its tag: 304, validators and policy kept.
//! let req = Request::get("/posts/1").header(header::IF_NONE_MATCH, etag.clone()).body(())?;
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
//! assert_eq!(res.headers()[header::ETAG], etag);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! | response | what the layer does |
//! |---|---|
//! | 2xx, 3xx | the first matching [`Rule`] sets its headers; the handler's own header wins unless the rule says [`override_existing`](Rule::override_existing) |
//! | 4xx | only rules that name the status (or carry `no-store`) apply: a 404 never inherits a one-year policy |
//! | 5xx | rules that name the status, else `Cache-Control: no-store` ([`server_errors`](CacheControlLayer::server_errors)) |
//! | any with `Set-Cookie` | `public` becomes `private`; `s-maxage`, `CDN-Cache-Control`, `Surrogate-Control` removed |
//! | `200` to `GET` without `ETag` | weak ETag from an xxh3-128 hash of the body, if it is at most [`etag_max_body`](CacheControlLayer::etag_max_body) |
//! | `200` to `GET`/`HEAD` with a matching `If-None-Match` (or, without it, `If-Modified-Since`) | `304`, keeping `Cache-Control`, `Content-Location`, `Date`, `ETag`, `Expires`, `Vary`, `Last-Modified` |
//!
//! Conditional requests follow RFC 9110 §13.2.2: `If-None-Match` (weak
//! comparison, lists, `*`) first, then `If-Modified-Since` only when
//! `If-None-Match` is absent. Malformed conditional headers are ignored.
//! `If-Match` and `If-Unmodified-Since` guard state-changing methods and must
//! be checked before the handler acts, so this layer (which runs after it)
//! leaves them to the handler. `HEAD` responses carry no body to hash: they
//! get an ETag only from the handler.
//!
//! # Ordering
//!
//! Put the response cache outside this layer, so what it stores carries the
//! same headers as what it forwards:
//! `CacheLayer` → `CacheControlLayer` → your router. Put this layer outside
//! any compression layer, so that the hash covers the bytes as sent and the
//! ETag differs per content coding (RFC 9110 §8.8.3.3); or keep weak tags.

mod body;
mod future;
mod glob;
mod layer;
mod rules;
mod service;

pub use crate::directives::{Directives, InvalidDirective};
pub use crate::etag::{ETag, ETagMode, InvalidETag};
pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use glob::{GlobErrorKind, InvalidGlob, PathGlob};
pub use layer::CacheControlLayer;
pub use rules::{InvalidRule, Rule, RuleErrorKind};
pub use service::CacheControl;
