//! A shared response cache (RFC 9111) for SSR servers, with request
//! coalescing and stale serving.
//!
//! [`CacheLayer`] answers repeated requests from memory: a hit is served
//! synchronously from a response prepared once at store time (headers
//! built, body a shared `Bytes`), without calling anything below. Misses
//! for one key are coalesced into one call to the inner service. Freshness
//! comes from the response's own headers — `s-maxage`, `max-age`,
//! `Expires` — so the policy that
//! [`CacheControlLayer`](crate::cache_control::CacheControlLayer) injected
//! is the cache's TTL. [`ResponseCache`] is the storage, bounded in bytes,
//! and the handle to purge it and read its [`CacheStats`].
//!
//! # Example
//!
//! ```
//! use http::{header, Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ssr::cache::{CacheLayer, ResponseCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = ResponseCache::builder().max_bytes(64 << 20).build();
//! let renderer = service_fn(|_req: Request<()>| async {
//!     let page = Response::builder()
//!         .header(header::CACHE_CONTROL, "public, s-maxage=60")
//!         .body(String::from("<h1>rendered</h1>"))?;
//!     Ok::<_, http::Error>(page)
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(CacheLayer::new(cache.clone()))
//!     .service(renderer);
//!
//! let req = || Request::get("http://example.com/posts/1").body(()).unwrap();
//! let miss = svc.clone().oneshot(req()).await?;
//! assert_eq!(miss.headers()["cache-status"], "tower-ssr; fwd=uri-miss; stored");
//!
//! let hit = svc.oneshot(req()).await?;
//! assert_eq!(hit.headers()["cache-status"], "tower-ssr; hit; ttl=60");
//! assert_eq!(hit.headers()[header::AGE], "0");
//! assert_eq!(cache.stats().hits, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! | request / response | what the cache does | `Cache-Status` |
//! |---|---|---|
//! | GET, fresh entry | answers from memory with `Age`; the client's `If-None-Match` / `If-Modified-Since` get a 304 | `hit; ttl=N` |
//! | GET, nothing stored | one request per key goes inward, the others wait for it; a storable response is stored (up to [`max_body`](CacheLayer::max_body)), a streamed one as it passes to the first client; should that one fail (an error or a 5xx), one waiter takes over, once | `fwd=uri-miss; stored` (`fwd=uri-miss` while a streamed one is still passing; `; collapsed` for the waiters) |
//! | GET, another request for the key stalls past [`lock_timeout`](CacheLayer::lock_timeout) (5 s) | the waiter goes inward alone, its response not stored; a `stale-while-revalidate` refresh past that limit is dropped | `fwd=uri-miss; collapsed=?0` |
//! | GET, stored for other `Vary` values | as a miss; variants live side by side | `fwd=vary-miss` |
//! | GET, stale or `no-cache` entry | revalidated inward with `If-None-Match` / `If-Modified-Since`; a 304 refreshes the stored headers and the stored body is sent | `fwd=stale; fwd-status=304; stored` |
//! | GET with `Range`, fresh entry | `206` with one range, `416` when none is satisfiable, the whole when `If-Range` fails or the ranges are several (RFC 9110 §14); cut from identity when the client accepts it | `hit; ttl=N` |
//! | GET with `Range`, nothing stored | as nginx's `proxy_cache`: asked inward without `Range` and `If-Range`, read whole (up to [`max_body`](CacheLayer::max_body)) and stored when storable, then the range is cut from it; a response not storable has the range cut as it streams through (or is sent whole when its length is unknown), and once the key is remembered uncacheable the client's `Range` goes inward as sent; a `206` from inward is passed on, never stored | `fwd=uri-miss; stored` |
//! | GET, stale within `stale-while-revalidate` | served at once; one background refresh per key | `hit; ttl=-N` |
//! | GET, stale, inner error or 500/502/503/504, within `stale-if-error` | the stale copy | `fwd=stale; fwd-status=503` |
//! | GET with `no-cache`, `max-age=0` or `Pragma: no-cache` | revalidated (unless [`ignore_client_no_cache`](CacheLayer::ignore_client_no_cache)) | `fwd=request` |
//! | GET with `only-if-cached`, nothing usable | `504`, generated locally | none |
//! | HEAD | answered from the GET entry, headers only; a miss goes inward as HEAD and is not stored | as GET |
//! | POST, PUT, DELETE, … | forwarded; a 2xx/3xx invalidates the URI and its same-origin `Location` / `Content-Location` | `fwd=method` |
//! | response not storable | streamed through as it arrives, never buffered; the key is remembered for [`uncacheable_for`](CacheLayer::uncacheable_for) so requests stop queueing; a 5xx, or a request's own `no-store`, neither marks the key nor drops the stored entry | `fwd=uri-miss` |
//!
//! Never stored: responses with `no-store`, `private` (qualified or not),
//! `Set-Cookie`, `Vary: *`; 206, 304 and 1xx; responses to requests with
//! `Authorization` unless `public`, `s-maxage` or `must-revalidate` allow
//! it (RFC 9111 §3.5); responses to requests with `no-store`; statuses not
//! cacheable by default without explicit freshness; bodies over the cap or
//! cut short. Hop-by-hop fields, the fields `Connection` names, `Age` and
//! proxy authentication fields are not stored (§3.1). A response with no
//! explicit lifetime is not stored unless you opt in to
//! [`default_ttl`](CacheLayer::default_ttl) or
//! [`heuristic_freshness`](CacheLayer::heuristic_freshness).
//!
//! # Decisions
//!
//! - **`stale-while-revalidate` beside `s-maxage`** is honoured. Strictly,
//!   `s-maxage` forbids a shared cache to serve stale (RFC 9111
//!   §5.2.2.10), yet `s-maxage=N, stale-while-revalidate=M` is what SSR
//!   frameworks emit to ask for exactly that; we read the explicit
//!   directive as the origin's consent. Everything else stays strict: with
//!   `s-maxage`, `proxy-revalidate`, `must-revalidate` or `no-cache`, no
//!   stale copy is served on errors and a client's `max-stale` never
//!   overrides them; with `no-cache` or `*-revalidate`, no
//!   `stale-while-revalidate` either.
//! - **A client's `no-cache`** is honoured by default, so a reload shows
//!   the current page; coalescing bounds the cost to one inner request per
//!   key at a time. Any anonymous client can still keep the renderer busy,
//!   so public deployments usually set
//!   [`ignore_client_no_cache(true)`](CacheLayer::ignore_client_no_cache),
//!   as Varnish, nginx and Traffic Server do by default.
//! - **Duplicate directives**: the first occurrence wins, as everywhere in
//!   the crate. An invalid `Expires` means already expired.
//! - **Client conditionals on a miss** are not forwarded: the inner
//!   service is asked for the full response, which is stored, and the
//!   client's `If-None-Match` / `If-Modified-Since` are answered here.
//! - **Targeted fields** (RFC 9213) are honoured only when configured with
//!   [`targeted_field`](CacheLayer::targeted_field).
//!
//! # Ordering
//!
//! Put the cache outermost, outside the router if you can, so a hit costs
//! one lookup and nothing below runs:
//! `CacheLayer` → `CacheControlLayer` → your router. The cache then reads
//! the policy `CacheControlLayer` set, and stores responses carrying the
//! same headers as those it forwards. Put compression outside the cache
//! only if responses say `Vary: Accept-Encoding`.
//!
//! # Several cores, several processes
//!
//! One [`ResponseCache`] serves every thread of a runtime; clone the
//! handle, not the builder, so every layer shares it. Each process keeps
//! its own cache: behind a load balancer, N instances render each page up
//! to N times, unless they share a second tier on Redis (feature `redis`,
//! `ResponseCacheBuilder::redis` with a `RedisTier`): an L1 miss then reads
//! Redis before rendering (`Cache-Status: …; hit; ttl=N; detail=redis`), a
//! stored response goes to both tiers, a purge on any instance reaches
//! every instance through a purge log in Redis (never lost while Redis is
//! away), and an optional render lock lets one
//! instance render a page while the others wait for it. Redis being slow
//! or down never fails a request: every call has a timeout and the cache
//! goes on with memory alone until it reconnects by itself. When one Redis
//! node is not enough, `RedisTier::cluster` runs the same tier on Redis
//! Cluster (hash-tagged keys, one slot per script). Hits are
//! cheapest when the layer wraps the router rather than a handler, since
//! nothing else runs.

mod body;
#[cfg(feature = "redis")]
mod codec;
mod entry;
mod executor;
mod fields;
mod flight;
mod future;
mod handle;
mod handoff;
mod key;
#[cfg(feature = "redis")]
mod l2;
mod layer;
mod observe;
mod outcome;
mod purged;
mod representation;
mod revalidate;
mod service;
mod sf;
mod status;
mod store;
mod tee;
mod validation;
mod warm;

pub use body::ResponseBody;
pub use executor::{Executor, Task};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[allow(deprecated)]
pub use executor::{TokioExecutor, TokioSpawner};
pub use future::ResponseFuture;
pub use handle::{CacheStats, ResponseCache, ResponseCacheBuilder};
pub use key::QueryKey;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use l2::{InvalidRedisUrl, RedisKeys, RedisTier};
pub use layer::CacheLayer;
pub use outcome::CacheOutcome;
pub use purged::{PurgeError, Purged};
pub use representation::Coding;
#[cfg(feature = "compression")]
#[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
pub use representation::Compression;
pub use service::Cache;
pub use warm::Warmed;
