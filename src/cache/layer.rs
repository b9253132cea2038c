use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use tower_layer::Layer;

use super::entry::StoreRules;
use super::executor::Executor;
use super::handle::ResponseCache;
use super::key::QueryKey;
#[cfg(feature = "compression")]
use super::representation::{job::Compressor, Compression};
use super::service::Cache;
use super::status::{fwd, hit, member_name, Fwd};
use crate::metrics::CacheMetrics;

/// Bodies up to this size are stored by default.
const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
/// Keys longer than this bypass the cache by default.
const DEFAULT_MAX_KEY: usize = 4096;
/// How long a key whose response was not storable skips coalescing.
const DEFAULT_UNCACHEABLE_FOR: Duration = Duration::from_secs(10);
/// How long a request waits for another one fetching the same key, and how
/// long a background refresh may take (nginx's `proxy_cache_lock_timeout`).
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an entry with a validator is kept past its usable life, to be
/// revalidated with a cheap 304 instead of fetched whole.
const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(60);

/// The user's key closure: `None` bypasses the cache for the request.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Caches responses in a [`ResponseCache`]; see the
/// [module docs](crate::cache).
///
/// The layer is its own builder: every setter takes and returns `self`, and
/// building never fails.
#[derive(Clone)]
pub struct CacheLayer {
    config: Arc<Config>,
    cache: ResponseCache,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) rules: StoreRules,
    pub(crate) max_body: usize,
    pub(crate) max_key: usize,
    pub(crate) query: QueryKey,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) name: String,
    pub(crate) ignore_client_no_cache: bool,
    pub(crate) uncacheable_for: Duration,
    pub(crate) lock_timeout: Duration,
    pub(crate) executor: Option<Arc<dyn Executor>>,
    /// A user-named targeted field, removed before responses leave.
    pub(crate) strip_field: Option<HeaderName>,
    /// Keep the forwarding-header family on requests (see
    /// `CacheLayer::trust_forwarding_headers`).
    pub(crate) trust_forwarding_headers: bool,
    /// `name; hit; ttl=N` for N up to ten minutes, formatted on first use:
    /// a hit then clones a value instead of formatting one.
    pub(crate) hit_members: Arc<[OnceLock<HeaderValue>]>,
    /// `name; fwd=X` and `name; fwd=X; stored` for every reason, formatted
    /// once: the common forward members.
    pub(crate) fwd_members: Arc<[HeaderValue]>,
    /// The `cache` label's handles (see `crate::metrics`).
    pub(crate) metrics: Arc<CacheMetrics>,
    /// Adds `Server-Timing` entries to every answer.
    pub(crate) server_timing: bool,
    /// The cache's own content coding (issue 9); `None` when off.
    #[cfg(feature = "compression")]
    pub(crate) compression: Option<Arc<Compressor>>,
}

impl Config {
    /// The compression settings when the cache makes codings itself.
    #[cfg(feature = "compression")]
    pub(crate) fn compressor(&self) -> Option<&Arc<Compressor>> {
        self.compression.as_ref().filter(|c| c.active())
    }
}

fn fwd_members(name: &str) -> Arc<[HeaderValue]> {
    Fwd::ALL
        .iter()
        .flat_map(|f| {
            [
                fwd(name, *f, None, false, None),
                fwd(name, *f, None, true, None),
            ]
        })
        .collect()
}

const HIT_MEMBERS: usize = 601;

fn hit_members() -> Arc<[OnceLock<HeaderValue>]> {
    (0..HIT_MEMBERS).map(|_| OnceLock::new()).collect()
}

impl Config {
    /// The `Cache-Status` member of a hit with `ttl` seconds left.
    pub(crate) fn hit_member(&self, ttl: i64) -> HeaderValue {
        match usize::try_from(ttl)
            .ok()
            .and_then(|i| self.hit_members.get(i))
        {
            Some(slot) => slot.get_or_init(|| hit(&self.name, ttl)).clone(),
            None => hit(&self.name, ttl),
        }
    }

    /// The `Cache-Status` member of a forwarded response.
    pub(crate) fn fwd_member(
        &self,
        reason: Fwd,
        fwd_status: Option<u16>,
        stored: bool,
        collapsed: Option<bool>,
    ) -> HeaderValue {
        if fwd_status.is_none() && collapsed.is_none() {
            if let Some(i) = Fwd::ALL.iter().position(|f| *f == reason) {
                return self.fwd_members[2 * i + usize::from(stored)].clone();
            }
        }
        fwd(&self.name, reason, fwd_status, stored, collapsed)
    }
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("config", &self.config)
            .field("cache", &self.cache)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("rules", &self.rules)
            .field("max_body", &self.max_body)
            .field("max_key", &self.max_key)
            .field("query", &self.query)
            .field(
                "key_fn",
                &self.key_fn.as_ref().map(|_| "Fn(&Parts) -> Option<String>"),
            )
            .field("name", &self.name)
            .field("ignore_client_no_cache", &self.ignore_client_no_cache)
            .field("uncacheable_for", &self.uncacheable_for)
            .field("lock_timeout", &self.lock_timeout)
            .field("executor", &self.executor.as_ref().map(|_| "dyn Executor"))
            .field("strip_field", &self.strip_field)
            .field("trust_forwarding_headers", &self.trust_forwarding_headers)
            .field("metrics", &self.metrics)
            .field("server_timing", &self.server_timing)
            .finish()
    }
}

impl CacheLayer {
    /// A layer storing into `cache`, with the safe defaults: no heuristic
    /// freshness and no default TTL (only responses with explicit freshness
    /// are stored), bodies up to 8 MiB, the query kept in the key, client
    /// `no-cache` honoured, `Cache-Status` named `tower-ssr`, and (with the
    /// `tokio` feature) background refreshes on tokio.
    #[must_use]
    pub fn new(cache: ResponseCache) -> Self {
        CacheLayer {
            config: Arc::new(Config {
                rules: StoreRules {
                    default_ttl: None,
                    heuristic_max: None,
                    targeted: None,
                    keep_stale: DEFAULT_KEEP_STALE,
                },
                max_body: DEFAULT_MAX_BODY,
                max_key: DEFAULT_MAX_KEY,
                query: QueryKey::Keep,
                key_fn: None,
                name: member_name("tower-ssr"),
                ignore_client_no_cache: false,
                uncacheable_for: DEFAULT_UNCACHEABLE_FOR,
                lock_timeout: DEFAULT_LOCK_TIMEOUT,
                #[cfg(feature = "tokio")]
                executor: Some(Arc::new(super::executor::TokioSpawner)),
                #[cfg(not(feature = "tokio"))]
                executor: None,
                strip_field: None,
                trust_forwarding_headers: false,
                hit_members: hit_members(),
                fwd_members: fwd_members("tower-ssr"),
                metrics: Arc::new(CacheMetrics::new("tower-ssr")),
                server_timing: false,
                #[cfg(feature = "compression")]
                compression: Some(Arc::new(Compressor::new(Compression::default()))),
            }),
            cache,
        }
    }

    /// The handle of the cache this layer stores into.
    #[must_use]
    pub fn cache(&self) -> &ResponseCache {
        &self.cache
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The largest body stored, in bytes (default 8 MiB). A longer response
    /// streams through after the part already read, and is not stored.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config().max_body = bytes;
        self
    }

    /// The longest key, in bytes (default 4096); a request with a longer
    /// one bypasses the cache (`Cache-Status: …; fwd=bypass`).
    #[must_use]
    pub fn max_key(mut self, bytes: usize) -> Self {
        self.config().max_key = bytes;
        self
    }

    /// A freshness lifetime for responses that carry no explicit one
    /// (`max-age`, `s-maxage`, `Expires`), for renderers that send no
    /// caching headers at all. Off by default: without it such responses
    /// are not stored. Rounded down to whole seconds. `no-store`,
    /// `private`, `Set-Cookie` and the other exclusions still apply.
    #[must_use]
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config().rules.default_ttl = Some(ttl.as_secs());
        self
    }

    /// Heuristic freshness (RFC 9111 §4.2.2) for responses without an
    /// explicit lifetime but with `Last-Modified`: 10% of the time since
    /// then, at most `max`. Off by default, because SSR pages rarely carry
    /// a meaningful `Last-Modified` and a guessed lifetime serves outdated
    /// pages.
    #[must_use]
    pub fn heuristic_freshness(mut self, max: Duration) -> Self {
        self.config().rules.heuristic_max = Some(max.as_secs());
        self
    }

    /// How the query string takes part in the key (default
    /// [`QueryKey::Keep`]).
    #[must_use]
    pub fn query(mut self, query: QueryKey) -> Self {
        self.config().query = query;
        self
    }

    /// Adds a value of your own to the key, for example a locale read from
    /// a cookie; requests with different values get different entries of
    /// the same URI. Returning `None` bypasses the cache for the request
    /// (for example for a logged-in user's session cookie).
    #[must_use]
    pub fn key_with<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config().key_fn = Some(Arc::new(f));
        self
    }

    /// The identifier of this cache in `Cache-Status` (default
    /// `tower-ssr`). A name that is not an RFC 8941 token is sent quoted.
    ///
    /// It is also the `cache` label of the metrics (feature `metrics`,
    /// unquoted). Layers sharing one [`ResponseCache`] should share one
    /// name: the store's own metrics (size, evictions, purges, Redis)
    /// take the last name given.
    #[must_use]
    pub fn cache_name(mut self, name: &str) -> Self {
        let metrics = Arc::new(CacheMetrics::new(name));
        // The store's own metrics (evictions, size, purges, Redis) carry
        // the name too: the last one given to a layer over this cache.
        self.cache.shared.counters.name_metrics(&metrics);
        let config = self.config();
        config.name = member_name(name);
        config.hit_members = hit_members();
        config.fwd_members = fwd_members(&config.name);
        config.metrics = metrics;
        self
    }

    /// Whether to ignore the client's `Cache-Control: no-cache` and
    /// `max-age`, and `Pragma: no-cache` (default `false`: honoured).
    ///
    /// Honoured, they make the cache revalidate with the inner service
    /// before answering (RFC 9111 §5.2.1): a reload in a browser sees the
    /// current page. Coalescing bounds the cost to one request per key at a
    /// time, but any anonymous client can still keep the renderer busy with
    /// one request after another. Public deployments usually turn this on,
    /// as Varnish, nginx and Apache Traffic Server do by default.
    #[must_use]
    pub fn ignore_client_no_cache(mut self, ignore: bool) -> Self {
        self.config().ignore_client_no_cache = ignore;
        self
    }

    /// Honours a targeted field (RFC 9213) ahead of `Cache-Control`: when a
    /// response carries it, non-empty, its directives alone decide storing
    /// and freshness, and `Expires` is ignored. Use
    /// `CDN-Cache-Control` to give browsers `max-age=0` and this cache a
    /// long life; that field is left on responses for CDNs downstream. A
    /// field of any other name is for this cache only and is removed
    /// before responses leave. Off by default. The value is read as an
    /// RFC 8941 Dictionary (RFC 9213 §2.1): keys are lowercase, a repeated
    /// key keeps its last value, a member of the wrong type (`max-age=1.5`)
    /// is ignored, and a field that fails to parse (`Max-Age=60`, a trailing
    /// comma, a 16-digit integer) is ignored as a whole, so `Cache-Control`
    /// and `Expires` govern again.
    #[must_use]
    pub fn targeted_field(mut self, name: HeaderName) -> Self {
        let strip = name != HeaderName::from_static("cdn-cache-control");
        let config = self.config();
        config.strip_field = strip.then(|| name.clone());
        config.rules.targeted = Some(name);
        self
    }

    /// How long a key whose response could not be stored is remembered as
    /// uncacheable (default 10 s). Meanwhile its requests go to the inner
    /// service at once, side by side, instead of queueing behind each other
    /// to learn, one at a time, that the response cannot be shared.
    /// `Duration::ZERO` turns the memory off.
    #[must_use]
    pub fn uncacheable_for(mut self, duration: Duration) -> Self {
        self.config().uncacheable_for = duration;
        self
    }

    /// How long a request waits for another request already fetching the
    /// same key (default 5 s, as nginx's `proxy_cache_lock_timeout`), and
    /// how long a `stale-while-revalidate` refresh may take, body
    /// included. A waiter whose time is up goes to the inner service
    /// itself and its response is not stored (the request it waited for
    /// may still store its own); a refresh whose time is up is dropped and
    /// a later request fetches the page. This bounds the wait behind a
    /// render that stalls, a streamed body that stops half-way while its
    /// client stays connected, or a refresh that never ends.
    /// `Duration::MAX` waits as long as the other request lasts.
    ///
    /// Needs the `tokio` feature (and a tokio runtime with its timer):
    /// without it there is no timer to enforce a limit, waits last as long
    /// as the other request, and setting anything but `Duration::MAX` logs
    /// a `warn` event once per call (as [`ActiveProbes::try_spawn`] returns
    /// an error without tokio).
    ///
    /// [`ActiveProbes::try_spawn`]: https://docs.rs/tower-ssr/latest/tower_ssr/balance/struct.ActiveProbes.html#method.try_spawn
    #[must_use]
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        #[cfg(not(feature = "tokio"))]
        if timeout != Duration::MAX {
            tracing::warn!(
                ?timeout,
                "CacheLayer::lock_timeout has no effect without the `tokio` feature"
            );
        }
        self.config().lock_timeout = timeout;
        self
    }

    /// How long an entry that carries a validator (`ETag`,
    /// `Last-Modified`) is kept once it can no longer be served, so the
    /// next request revalidates it with a cheap `304` instead of fetching
    /// it whole (default 60 s). Memory pressure may evict it sooner; past
    /// it, the entry is dropped by the next lookup of its key or by the
    /// next sweep (at most once a minute).
    #[must_use]
    pub fn keep_stale(mut self, duration: Duration) -> Self {
        self.config().rules.keep_stale = duration;
        self
    }

    /// Whether requests keep the forwarding headers of
    /// [`authority::FORWARDING_HEADERS`](crate::authority::FORWARDING_HEADERS)
    /// (`Forwarded`, `X-Forwarded-Host`, `X-Real-IP`, `X-Original-URL`, …)
    /// on their way to the inner service. Default `false`: they are
    /// removed, and so are the method-override headers on all but `POST`,
    /// because the key cannot see them while an application may build the
    /// page from them (axum's `Host` extractor reads `X-Forwarded-Host`
    /// first): one client could store a page for everyone. Set `true` only
    /// when every request reaches this layer through a proxy that
    /// overwrites all of them. A [`ReverseProxy`](crate::proxy::ReverseProxy)
    /// inside this layer writes its own from the connection.
    #[must_use]
    pub fn trust_forwarding_headers(mut self, trust: bool) -> Self {
        self.config().trust_forwarding_headers = trust;
        self
    }

    /// Adds a W3C `Server-Timing` entry to every answer (default off):
    /// `cache;desc=hit` on a hit, `cache;desc=miss, upstream;dur=12.3` on
    /// a forwarded request (milliseconds the inner service took to answer
    /// the response head), `desc=stale`, `bypass`, `revalidated` or
    /// `coalesced` likewise (see [`CacheOutcome`](super::CacheOutcome)).
    /// Entries the application set are kept, ahead of these, in one field
    /// line. Browsers' developer tools show them on every page; they also
    /// tell anyone which pages are cached, so leave it off where that
    /// matters.
    #[must_use]
    pub fn server_timing(mut self, enabled: bool) -> Self {
        self.config().server_timing = enabled;
        self
    }

    /// How the cache compresses what it stores (RFC 9110 §8.4, §12.5.3).
    /// Default: on, with [`Compression::default`] (br, zstd, gzip at their
    /// highest levels, for compressible types of at least 1 KiB).
    ///
    /// With compression on, the cache asks the inner service for identity
    /// (`Accept-Encoding: identity` on every request it forwards to fill
    /// the cache), makes the codings once per stored response, off the
    /// request path on a bounded pool of its own threads, and answers each client
    /// with the best coding its `Accept-Encoding` accepts: a coding is its
    /// own representation, with `Content-Encoding`, `Content-Length` and a
    /// strong `ETag` of its own (`"abc"` → `"abc-br"`; a weak one is kept),
    /// and every answer from such an entry says `Vary: Accept-Encoding`.
    /// The key no longer varies on the raw `Accept-Encoding` value, so a
    /// flood of made-up values is one stored response. Until a response's
    /// codings are made (or when the pool's queue is full), it is served
    /// in identity. A response with `Cache-Control: no-transform`, with a
    /// `Content-Encoding` of its own, of another type or smaller than the
    /// minimum is stored and served as it came; a request with
    /// `no-transform` gets identity.
    ///
    /// Layer order: tower-http's `CompressionLayer`, if any, goes *outside*
    /// the cache. It skips responses that carry `Content-Encoding`, so
    /// hits are never compressed twice, and it still compresses what the
    /// cache passes through unstored. `CacheControlLayer` stays inside:
    /// its content `ETag` is the identity one, from which the cache
    /// derives the others.
    #[cfg(feature = "compression")]
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.config().compression = Some(Arc::new(Compressor::new(compression)));
        self
    }

    /// Turns the cache's compression off: the inner service's
    /// `Accept-Encoding` handling is used as is, and the key varies on
    /// `Accept-Encoding` whenever the response's `Vary` says so.
    #[cfg(feature = "compression")]
    #[must_use]
    pub fn no_compression(mut self) -> Self {
        self.config().compression = None;
        self
    }

    /// Where `stale-while-revalidate` refreshes and coalescing leaders'
    /// fetches run. Default: tokio, with the `tokio` feature; without an
    /// executor, a stale entry is revalidated in the foreground (the
    /// request waits), and when a leader's client hangs up, one of the
    /// requests waiting for it calls the inner service again. With one, the
    /// leader's fetch goes on for the waiters (within
    /// [`lock_timeout`](Self::lock_timeout)): one call to the inner
    /// service, not two.
    #[must_use]
    pub fn executor<E: Executor>(mut self, executor: E) -> Self {
        self.config().executor = Some(Arc::new(executor));
        self
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::from_parts(inner, Arc::clone(&self.config), self.cache.clone())
    }
}
