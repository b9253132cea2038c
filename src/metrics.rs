//! Counters, gauges and histograms through the [`metrics`] facade.
//!
//! The library only emits; the application installs a recorder (an
//! exporter) and serves it. With none installed every update is a no-op.
//! Names follow Prometheus conventions (`tower_ssr_…`, the unit in the
//! name, `_total` on counters); labels are bounded: the cache's name
//! ([`CacheLayer::cache_name`], default `tower-ssr`) and the endpoint's
//! name as given to [`Endpoints::add`] (an address for
//! [`proxy::ReverseProxy`]), never a URL or anything a client sends.
//!
//! [`CacheLayer::cache_name`]: crate::cache::CacheLayer::cache_name
//! [`Endpoints::add`]: crate::balance::Endpoints::add
//! [`proxy::ReverseProxy`]: crate::proxy::ReverseProxy
//!
//! # Install the recorder first
//!
//! A cache registers its handles on its first request, and an endpoint
//! when it is first picked; handles registered before a recorder is
//! installed stay bound to the no-op recorder (the `metrics` crate's own
//! rule). Install the recorder at the start of `main`, before serving.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // metrics-exporter-prometheus, in the application:
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
//!     .install_recorder()?;
//! tower_ssr::metrics::describe();
//! // ... build the layers, serve; on GET /metrics answer:
//! let text: String = prometheus.render();
//! # let _ = text;
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! | name | type | unit | labels | meaning |
//! |---|---|---|---|---|
//! | `tower_ssr_cache_requests_total` | counter | requests | `cache`, `outcome` | requests the cache answered, by [outcome](#outcomes) |
//! | `tower_ssr_cache_entries` | gauge | entries | `cache` | URIs held in memory (each with its variants); sampled at every store and every [`stats`](crate::cache::ResponseCache::stats) call, from moka's counts, which lag behind by its pending housekeeping |
//! | `tower_ssr_cache_bytes` | gauge | bytes | `cache` | weight of the memory tier (bodies, headers, keys); sampled with `_entries` |
//! | `tower_ssr_cache_evictions_total` | counter | entries | `cache` | entries evicted to stay within `max_bytes` (expiry and purges are not evictions) |
//! | `tower_ssr_cache_stores_total` | counter | responses | `cache` | responses stored or freshened in memory |
//! | `tower_ssr_cache_purges_total` | counter | purges | `cache`, `kind` | purge calls: `kind` is `key`, `path`, `prefix`, `tag`, `all`, or `remote` (received from another instance over Redis) |
//! | `tower_ssr_cache_l2_requests_total` | counter | calls | `cache`, `outcome` | Redis tier calls: `outcome` is `hit`, `miss`, `error`, `timeout` (reads), `write`, or `skipped` (a write not sent: [`max_in_flight_bytes`](crate::cache::RedisTier::max_in_flight_bytes) of values already on their way) |
//! | `tower_ssr_upstream_requests_total` | counter | attempts | `endpoint`, `status_class` | attempts on an endpoint by response status: `1xx` … `5xx`, or `error` when no response came |
//! | `tower_ssr_upstream_request_duration_seconds` | histogram | seconds | `endpoint` | from sending an attempt to its response headers (failed attempts included) |
//! | `tower_ssr_upstream_in_flight` | gauge | requests | `endpoint` | attempts sent and not finished (a streamed body counts until it ends) |
//! | `tower_ssr_upstream_ejections_total` | counter | ejections | `endpoint` | passive-health ejections |
//! | `tower_ssr_upstream_retries_total` | counter | retries | — | attempts sent again to another endpoint |
//! | `tower_ssr_upstream_healthy` | gauge | 0 or 1 | `endpoint` | 1 while the endpoint may be picked (not ejected, active probes passing) |
//!
//! # Outcomes
//!
//! `tower_ssr_cache_requests_total`'s `outcome`, the
//! [`CacheOutcome`](crate::cache::CacheOutcome) response extension and
//! the `Server-Timing` `desc` all use the same six words, defined against
//! the `Cache-Status` the cache sends (RFC 9211):
//!
//! | outcome | `Cache-Status` (RFC 9211) | meaning |
//! |---|---|---|
//! | `hit` | `hit`, `ttl` ≥ 0 | answered from a fresh stored response (memory or Redis), nothing forwarded |
//! | `stale` | `hit` with `ttl` < 0, or `fwd=stale` answered from the stored response | a stale response served: within `stale-while-revalidate` (refreshed in the background), allowed by the client's `max-stale`, or `stale-if-error` after the origin failed |
//! | `miss` | `fwd=uri-miss`, `vary-miss`, `request` or `stale`, with the origin's response | forwarded and the origin's response sent (stored or not) |
//! | `bypass` | `fwd=bypass` or `fwd=method` | not looked up: an unsafe or other method (RFC 9111 §4), or no usable key |
//! | `revalidated` | `fwd=stale; fwd-status=304` | the stored response validated with a conditional request and the origin answered 304 |
//! | `coalesced` | `fwd=…; stored; collapsed` | waited for another request's fetch of the same key and answered with what it stored (RFC 9211 `collapsed`) |
//!
//! A locally generated `504` to `only-if-cached` (RFC 9111 §5.2.1.7)
//! carries no `Cache-Status` member and counts as no outcome.

#[cfg(feature = "metrics")]
pub use names::*;

/// The exported names, as constants.
#[cfg(feature = "metrics")]
mod names {
    /// Counter: requests answered by the cache, labels `cache`, `outcome`.
    pub const CACHE_REQUESTS_TOTAL: &str = "tower_ssr_cache_requests_total";
    /// Gauge: URIs held in memory, label `cache`.
    pub const CACHE_ENTRIES: &str = "tower_ssr_cache_entries";
    /// Gauge: bytes held in memory, label `cache`.
    pub const CACHE_BYTES: &str = "tower_ssr_cache_bytes";
    /// Counter: entries evicted for size, label `cache`.
    pub const CACHE_EVICTIONS_TOTAL: &str = "tower_ssr_cache_evictions_total";
    /// Counter: responses stored or freshened, label `cache`.
    pub const CACHE_STORES_TOTAL: &str = "tower_ssr_cache_stores_total";
    /// Counter: purges, labels `cache`, `kind`.
    pub const CACHE_PURGES_TOTAL: &str = "tower_ssr_cache_purges_total";
    /// Counter: Redis tier calls, labels `cache`, `outcome`.
    pub const CACHE_L2_REQUESTS_TOTAL: &str = "tower_ssr_cache_l2_requests_total";
    /// Counter: upstream attempts, labels `endpoint`, `status_class`.
    pub const UPSTREAM_REQUESTS_TOTAL: &str = "tower_ssr_upstream_requests_total";
    /// Histogram: seconds to response headers, label `endpoint`.
    pub const UPSTREAM_REQUEST_DURATION_SECONDS: &str =
        "tower_ssr_upstream_request_duration_seconds";
    /// Gauge: attempts in flight, label `endpoint`.
    pub const UPSTREAM_IN_FLIGHT: &str = "tower_ssr_upstream_in_flight";
    /// Counter: passive-health ejections, label `endpoint`.
    pub const UPSTREAM_EJECTIONS_TOTAL: &str = "tower_ssr_upstream_ejections_total";
    /// Counter: retries on another endpoint, no label.
    pub const UPSTREAM_RETRIES_TOTAL: &str = "tower_ssr_upstream_retries_total";
    /// Gauge: 1 when the endpoint may be picked, else 0, label `endpoint`.
    pub const UPSTREAM_HEALTHY: &str = "tower_ssr_upstream_healthy";
}

/// Gives every metric its description and unit in the installed recorder
/// (Prometheus shows them as `# HELP`). Optional; call it once after
/// installing the recorder.
#[cfg(feature = "metrics")]
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        CACHE_REQUESTS_TOTAL,
        Unit::Count,
        "Requests answered by the cache, by outcome (hit, stale, miss, bypass, revalidated, coalesced)."
    );
    describe_gauge!(CACHE_ENTRIES, Unit::Count, "URIs held in the memory tier.");
    describe_gauge!(CACHE_BYTES, Unit::Bytes, "Bytes held in the memory tier.");
    describe_counter!(
        CACHE_EVICTIONS_TOTAL,
        Unit::Count,
        "Entries evicted to stay within max_bytes."
    );
    describe_counter!(
        CACHE_STORES_TOTAL,
        Unit::Count,
        "Responses stored or freshened in memory."
    );
    describe_counter!(CACHE_PURGES_TOTAL, Unit::Count, "Purges, by kind.");
    describe_counter!(
        CACHE_L2_REQUESTS_TOTAL,
        Unit::Count,
        "Redis tier calls, by outcome (hit, miss, error, timeout, write)."
    );
    describe_counter!(
        UPSTREAM_REQUESTS_TOTAL,
        Unit::Count,
        "Upstream attempts, by endpoint and status class."
    );
    describe_histogram!(
        UPSTREAM_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Seconds from sending an upstream attempt to its response headers."
    );
    describe_gauge!(
        UPSTREAM_IN_FLIGHT,
        Unit::Count,
        "Upstream attempts in flight."
    );
    describe_counter!(
        UPSTREAM_EJECTIONS_TOTAL,
        Unit::Count,
        "Passive-health ejections."
    );
    describe_counter!(
        UPSTREAM_RETRIES_TOTAL,
        Unit::Count,
        "Attempts sent again to another endpoint."
    );
    describe_gauge!(
        UPSTREAM_HEALTHY,
        Unit::Count,
        "1 while the endpoint may be picked, else 0."
    );
}

#[cfg(feature = "redis")]
pub(crate) use cache::L2Outcome;
#[cfg(feature = "cache")]
pub(crate) use cache::{CacheMetrics, PurgeKind};

#[cfg(feature = "balance")]
pub(crate) use upstream::{retried, EndpointMetrics};

/// The cache's handles, one set per cache name, registered on first use.
#[cfg(feature = "cache")]
mod cache {
    use std::sync::Arc;
    #[cfg(feature = "metrics")]
    use std::sync::OnceLock;

    use crate::cache::CacheOutcome;

    /// A purge's `kind` label.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) enum PurgeKind {
        Key,
        Path,
        Prefix,
        Tag,
        All,
        Remote,
    }

    impl PurgeKind {
        #[cfg(feature = "metrics")]
        const ALL: [(PurgeKind, &'static str); 6] = [
            (PurgeKind::Key, "key"),
            (PurgeKind::Path, "path"),
            (PurgeKind::Prefix, "prefix"),
            (PurgeKind::Tag, "tag"),
            (PurgeKind::All, "all"),
            (PurgeKind::Remote, "remote"),
        ];
    }

    /// A Redis tier call's `outcome` label.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) enum L2Outcome {
        Hit,
        Miss,
        Error,
        Timeout,
        Write,
        Skipped,
    }

    impl L2Outcome {
        #[cfg(feature = "metrics")]
        const ALL: [(L2Outcome, &'static str); 6] = [
            (L2Outcome::Hit, "hit"),
            (L2Outcome::Miss, "miss"),
            (L2Outcome::Error, "error"),
            (L2Outcome::Timeout, "timeout"),
            (L2Outcome::Write, "write"),
            (L2Outcome::Skipped, "skipped"),
        ];
    }

    /// One cache's metrics, by its name. Cheap to build: nothing is
    /// registered with the recorder until the first update.
    pub(crate) struct CacheMetrics {
        /// The `cache` label: the name as configured (not quoted).
        #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
        name: Arc<str>,
        #[cfg(feature = "metrics")]
        handles: OnceLock<Handles>,
    }

    #[cfg(feature = "metrics")]
    struct Handles {
        // Indexed by `CacheOutcome as usize`.
        outcomes: [metrics::Counter; 6],
        entries: metrics::Gauge,
        bytes: metrics::Gauge,
        evictions: metrics::Counter,
        stores: metrics::Counter,
        purges: [metrics::Counter; 6],
        l2: [metrics::Counter; 6],
    }

    impl std::fmt::Debug for CacheMetrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CacheMetrics")
                .field("name", &self.name)
                .finish_non_exhaustive()
        }
    }

    impl Default for CacheMetrics {
        fn default() -> Self {
            CacheMetrics::new("tower-ssr")
        }
    }

    impl CacheMetrics {
        pub(crate) fn new(name: &str) -> Self {
            CacheMetrics {
                name: Arc::from(name),
                #[cfg(feature = "metrics")]
                handles: OnceLock::new(),
            }
        }

        #[cfg(feature = "metrics")]
        fn handles(&self) -> &Handles {
            self.handles.get_or_init(|| {
                let name = &self.name;
                let counter = |metric: &'static str| {
                    metrics::counter!(metric, "cache" => Arc::clone(name).to_string())
                };
                Handles {
                    outcomes: CacheOutcome::ALL.map(|o| {
                        metrics::counter!(
                            super::CACHE_REQUESTS_TOTAL,
                            "cache" => name.to_string(),
                            "outcome" => o.as_str()
                        )
                    }),
                    entries: metrics::gauge!(super::CACHE_ENTRIES, "cache" => name.to_string()),
                    bytes: metrics::gauge!(super::CACHE_BYTES, "cache" => name.to_string()),
                    evictions: counter(super::CACHE_EVICTIONS_TOTAL),
                    stores: counter(super::CACHE_STORES_TOTAL),
                    purges: PurgeKind::ALL.map(|(_, kind)| {
                        metrics::counter!(
                            super::CACHE_PURGES_TOTAL,
                            "cache" => name.to_string(),
                            "kind" => kind
                        )
                    }),
                    l2: L2Outcome::ALL.map(|(_, outcome)| {
                        metrics::counter!(
                            super::CACHE_L2_REQUESTS_TOTAL,
                            "cache" => name.to_string(),
                            "outcome" => outcome
                        )
                    }),
                }
            })
        }

        /// One request answered.
        #[inline]
        pub(crate) fn outcome(&self, outcome: CacheOutcome) {
            #[cfg(feature = "metrics")]
            self.handles().outcomes[outcome as usize].increment(1);
            #[cfg(not(feature = "metrics"))]
            let _ = outcome;
        }

        /// One response stored; samples the memory tier's size.
        pub(crate) fn stored(&self, entries: u64, bytes: u64) {
            #[cfg(feature = "metrics")]
            {
                let h = self.handles();
                h.stores.increment(1);
                h.entries.set(entries as f64);
                h.bytes.set(bytes as f64);
            }
            #[cfg(not(feature = "metrics"))]
            let _ = (entries, bytes);
        }

        /// Samples the memory tier's size.
        pub(crate) fn size(&self, entries: u64, bytes: u64) {
            #[cfg(feature = "metrics")]
            {
                let h = self.handles();
                h.entries.set(entries as f64);
                h.bytes.set(bytes as f64);
            }
            #[cfg(not(feature = "metrics"))]
            let _ = (entries, bytes);
        }

        pub(crate) fn evicted(&self) {
            #[cfg(feature = "metrics")]
            self.handles().evictions.increment(1);
        }

        pub(crate) fn purged(&self, kind: PurgeKind) {
            #[cfg(feature = "metrics")]
            self.handles().purges[kind as usize].increment(1);
            #[cfg(not(feature = "metrics"))]
            let _ = kind;
        }

        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        pub(crate) fn l2(&self, outcome: L2Outcome) {
            #[cfg(feature = "metrics")]
            self.handles().l2[outcome as usize].increment(1);
            #[cfg(not(feature = "metrics"))]
            let _ = outcome;
        }
    }
}

/// An endpoint's handles, registered when it is first picked.
#[cfg(feature = "balance")]
mod upstream {
    #[cfg(feature = "metrics")]
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    /// One endpoint's metrics, labelled with its name.
    pub(crate) struct EndpointMetrics {
        #[cfg(feature = "metrics")]
        name: Arc<str>,
        #[cfg(feature = "metrics")]
        handles: OnceLock<Handles>,
    }

    #[cfg(feature = "metrics")]
    struct Handles {
        // 1xx..5xx, then `error`.
        requests: [metrics::Counter; 6],
        duration: metrics::Histogram,
        in_flight: metrics::Gauge,
        ejections: metrics::Counter,
        healthy: metrics::Gauge,
    }

    #[cfg(feature = "metrics")]
    const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

    impl EndpointMetrics {
        #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
        pub(crate) fn new(name: &std::sync::Arc<str>) -> Self {
            EndpointMetrics {
                #[cfg(feature = "metrics")]
                name: Arc::clone(name),
                #[cfg(feature = "metrics")]
                handles: OnceLock::new(),
            }
        }

        #[cfg(feature = "metrics")]
        fn handles(&self) -> &Handles {
            self.handles.get_or_init(|| {
                let name = &self.name;
                let h = Handles {
                    requests: STATUS_CLASSES.map(|class| {
                        metrics::counter!(
                            super::UPSTREAM_REQUESTS_TOTAL,
                            "endpoint" => name.to_string(),
                            "status_class" => class
                        )
                    }),
                    duration: metrics::histogram!(
                        super::UPSTREAM_REQUEST_DURATION_SECONDS,
                        "endpoint" => name.to_string()
                    ),
                    in_flight: metrics::gauge!(super::UPSTREAM_IN_FLIGHT, "endpoint" => name.to_string()),
                    ejections: metrics::counter!(super::UPSTREAM_EJECTIONS_TOTAL, "endpoint" => name.to_string()),
                    healthy: metrics::gauge!(super::UPSTREAM_HEALTHY, "endpoint" => name.to_string()),
                };
                h.healthy.set(1.0);
                h
            })
        }

        /// An attempt sent.
        #[inline]
        pub(crate) fn started(&self) {
            #[cfg(feature = "metrics")]
            self.handles().in_flight.increment(1.0);
        }

        /// An attempt over (its body ended or was dropped).
        #[inline]
        pub(crate) fn ended(&self) {
            #[cfg(feature = "metrics")]
            self.handles().in_flight.decrement(1.0);
        }

        /// An attempt's answer: its status (`None`: no response) and the
        /// time to its response headers.
        #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
        pub(crate) fn answered(&self, status: Option<http::StatusCode>, elapsed: Option<Duration>) {
            #[cfg(feature = "metrics")]
            {
                let h = self.handles();
                let class = match status.map(|s| s.as_u16() / 100) {
                    Some(c @ 1..=5) => usize::from(c) - 1,
                    _ => 5,
                };
                h.requests[class].increment(1);
                if let Some(elapsed) = elapsed {
                    h.duration.record(elapsed.as_secs_f64());
                }
            }
        }

        /// Ejected by passive health.
        pub(crate) fn ejected(&self) {
            #[cfg(feature = "metrics")]
            {
                let h = self.handles();
                h.ejections.increment(1);
                h.healthy.set(0.0);
            }
        }

        /// Whether the endpoint may be picked (back in service, or probes
        /// changed their verdict).
        #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
        pub(crate) fn healthy(&self, healthy: bool) {
            #[cfg(feature = "metrics")]
            self.handles().healthy.set(if healthy { 1.0 } else { 0.0 });
        }
    }

    /// A retry sent to another endpoint.
    pub(crate) fn retried() {
        #[cfg(feature = "metrics")]
        metrics::counter!(super::UPSTREAM_RETRIES_TOTAL).increment(1);
    }
}
