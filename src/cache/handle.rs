//! The shared handle: the store, the flights in progress, the keys known
//! to be uncacheable, and the counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::entry::Entry;
use super::flight::{Flights, Lead};
#[cfg(feature = "redis")]
pub(crate) use super::l2::Purge;
#[cfg(feature = "redis")]
use super::l2::{RedisTier, Tier};
use super::purged::Purged;
use super::revalidate::{mark_stale, Scope};
use super::store::Store;
use crate::metrics::{CacheMetrics, PurgeKind};

/// Without the tier, purges stay local and this is never built.
#[cfg(not(feature = "redis"))]
#[allow(dead_code)]
pub(crate) enum Purge {
    Key(String),
    Path(String),
    Prefix(String),
    Tag(String),
    All,
    RevalidatePath(String),
    RevalidatePrefix(String),
    RevalidateTag(String),
}

/// Default capacity: 64 MiB of stored responses.
const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Keys remembered as uncacheable at most; past this the memory is cleared,
/// which only costs some queueing, never a wrong answer.
const MAX_UNCACHEABLE_KEYS: usize = 10_000;

/// A response cache: the storage behind one or more [`CacheLayer`]s, and
/// the handle to purge it and read its statistics.
///
/// Cloning is cheap and every clone is the same cache.
///
/// ```
/// use tower_ssr::cache::{CacheLayer, ResponseCache};
///
/// let cache = ResponseCache::builder().max_bytes(256 << 20).build();
/// let layer = CacheLayer::new(cache.clone());
/// # let _ = layer;
/// // Later, from an admin endpoint or a deploy hook:
/// cache.purge_prefix("/posts/");
/// cache.purge_tag("pages");
/// assert_eq!(cache.stats().hits, 0);
/// ```
///
/// [`CacheLayer`]: super::CacheLayer
#[derive(Clone)]
pub struct ResponseCache {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) flights: Arc<Flights>,
    uncacheable: Mutex<HashMap<Box<str>, Instant>>,
    pub(crate) counters: Arc<Counters>,
    /// The shared Redis tier, when configured.
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<Arc<Tier>>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) revalidations: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) purges: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) l2_misses: AtomicU64,
    pub(crate) l2_errors: AtomicU64,
    pub(crate) l2_timeouts: AtomicU64,
    pub(crate) l2_writes: AtomicU64,
    pub(crate) l2_representation_writes: AtomicU64,
    pub(crate) l2_writes_skipped: AtomicU64,
    pub(crate) remote_purges: AtomicU64,
    /// The store-level metrics (size, evictions, purges, Redis), named by
    /// the last `CacheLayer::cache_name` over this cache. Off the hit
    /// path: read on stores, evictions, purges and Redis calls.
    metrics: std::sync::RwLock<Arc<CacheMetrics>>,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The store-level metrics handles.
    pub(crate) fn metrics(&self) -> Arc<CacheMetrics> {
        Arc::clone(&self.metrics.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn name_metrics(&self, metrics: &Arc<CacheMetrics>) {
        *self.metrics.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(metrics);
    }
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl Default for ResponseCache {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// Builds a [`ResponseCache`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ResponseCacheBuilder {
    max_bytes: u64,
    #[cfg(feature = "redis")]
    redis: Option<RedisTier>,
}

impl ResponseCacheBuilder {
    /// The most memory the stored responses may take, in bytes (default
    /// 64 MiB). Each entry weighs its body, its headers, its `Vary` values
    /// and a fixed overhead; past the bound, the least useful entries are
    /// evicted (moka's TinyLFU). Stored bodies and header values are
    /// copies of their own, so the weight is what an entry holds; bodies
    /// of 64 KiB and more get an anonymous memory mapping each (weighed in
    /// whole 4 KiB pages), handed back to the system when evicted. Under a
    /// stream of new pages a process with glibc's malloc stays within
    /// about 1.2 × `bytes` plus its base for 1 and 10 KiB pages. With
    /// larger pages, glibc keeps what its heaps free once its mmap
    /// threshold has risen (it rises for good to the largest block freed:
    /// an encoder's buffers, a Redis value), 10–15 % of `bytes` more;
    /// run the process with `MALLOC_MMAP_THRESHOLD_=65536` in its
    /// environment (fixing the threshold turns the rise off), as the
    /// crate's `proxy` and `ssr` examples do for themselves (figures in
    /// `BENCHMARKS.md`, "Resident memory under load").
    ///
    /// An entry no longer worth keeping (past its freshness, its
    /// `stale-while-revalidate` / `stale-if-error` windows and, with a
    /// validator, [`CacheLayer::keep_stale`](super::CacheLayer::keep_stale))
    /// is never served; it is dropped by the next lookup of its key, or by
    /// a sweep at most once a minute (started by a store), and until then
    /// counts in `entries` and `bytes` like any other.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Adds a shared second tier on Redis behind the memory tier, for
    /// many instances of one app (feature `redis`): an L1 miss reads
    /// Redis before rendering, a stored response is written to both, a
    /// purge on any instance reaches every instance's memory through a
    /// purge log in Redis, even one issued while Redis was away.
    /// Redis being slow or down never fails a request: the cache goes on
    /// with memory alone and reconnects by itself. See [`RedisTier`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, tier: RedisTier) -> Self {
        self.redis = Some(tier);
        self
    }

    /// Builds the cache. With a Redis tier, built inside a tokio runtime,
    /// the purge listener starts at once; else on first use.
    #[must_use]
    pub fn build(self) -> ResponseCache {
        let counters = Arc::new(Counters::default());
        let evictions = Arc::clone(&counters);
        let store = Store::new(self.max_bytes, move || {
            Counters::bump(&evictions.evictions);
            evictions.metrics().evicted();
        });
        #[cfg(feature = "redis")]
        let l2 = self
            .redis
            .map(|cfg| Arc::new(Tier::new(cfg, Arc::clone(&counters))));
        let cache = ResponseCache {
            shared: Arc::new(Shared {
                store,
                flights: Arc::new(Flights::default()),
                uncacheable: Mutex::new(HashMap::new()),
                counters,
                #[cfg(feature = "redis")]
                l2,
            }),
        };
        #[cfg(feature = "redis")]
        if let Some(tier) = &cache.shared.l2 {
            tier.listen(&cache.shared);
        }
        cache
    }
}

/// A snapshot of a [`ResponseCache`]'s counters and size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests answered from the cache without going to the inner service,
    /// stale copies served under `stale-while-revalidate` included.
    pub hits: u64,
    /// Requests that went to the inner service (misses, revalidations,
    /// bypasses, unsafe methods).
    pub misses: u64,
    /// Stale responses served (`stale-while-revalidate`, `stale-if-error`,
    /// a client's `max-stale`).
    pub stale: u64,
    /// Stored responses confirmed by a `304 Not Modified` from the inner
    /// service.
    pub revalidations: u64,
    /// Requests that waited for another request for the same key instead of
    /// going to the inner service themselves.
    pub coalesced: u64,
    /// Responses stored.
    pub stores: u64,
    /// Live entries evicted for lack of room (an entry already past its
    /// keep time that size pushes out is not counted: it was dead).
    pub evictions: u64,
    /// Purge calls made.
    pub purges: u64,
    /// Requests answered from the shared Redis tier after a memory miss
    /// (feature `redis`; these count in `misses` too, which are memory
    /// misses, not in `hits`).
    pub l2_hits: u64,
    /// Redis lookups that found nothing usable.
    pub l2_misses: u64,
    /// Redis calls that failed (connection refused or dropped, bad reply).
    pub l2_errors: u64,
    /// Redis calls that took longer than the tier's timeout.
    pub l2_timeouts: u64,
    /// Entries written to Redis.
    pub l2_writes: u64,
    /// Entries written to Redis again with the representations made of
    /// their body (br, zstd, gzip; feature `compression`), over the value
    /// already counted in `l2_writes`.
    pub l2_representation_writes: u64,
    /// Writes to Redis not sent because
    /// [`RedisTier::max_in_flight_bytes`](crate::cache::RedisTier::max_in_flight_bytes)
    /// of values were already on their way (the entry stays in memory).
    pub l2_writes_skipped: u64,
    /// Purges heard from other instances through the Redis purge log and applied
    /// to this one's memory.
    pub remote_purges: u64,
    /// Weighted size of what is stored, in bytes.
    pub bytes: u64,
    /// Stored keys (each may hold several `Vary` variants).
    pub entries: u64,
}

impl ResponseCache {
    /// A cache of the default size (64 MiB).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts building a cache.
    pub fn builder() -> ResponseCacheBuilder {
        ResponseCacheBuilder {
            max_bytes: DEFAULT_MAX_BYTES,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Drops every variant stored for one key, given as
    /// `scheme://host/path?query` the way the cache builds keys: the
    /// request's scheme (`http` for an origin-form target), its `Host`
    /// lowercased with any port, the path, and the query as configured
    /// (for example `http://example.com:8080/a?x=1`). The scheme's default
    /// port written or not (`http://a.test/x`, `http://a.test:80/x`), both
    /// spellings are dropped: they name one URI (RFC 9110 §4.2.3), though
    /// each is stored apart, under the `Host` text its requests sent.
    /// Returns whether anything was stored.
    #[allow(clippy::must_use_candidate)] // purging is the point; the flag is extra
    pub fn purge(&self, key: &str) -> bool {
        self.purged(PurgeKind::Key);
        let _ = self.cluster(|| Purge::Key(key.into()));
        self.shared.store.remove_uri(key)
    }

    /// Drops every entry whose path and query are exactly `path_and_query`
    /// (for example `/` or `/search?q=a`), on every host.
    ///
    /// Applied to this instance at once; the returned handle waits for
    /// Redis and the other instances (see [`Purged`]).
    #[allow(clippy::must_use_candidate)] // the handle is optional
    pub fn purge_path(&self, path_and_query: &str) -> Purged {
        self.purged(PurgeKind::Path);
        self.shared.store.purge_path(path_and_query);
        self.cluster(|| Purge::Path(path_and_query.into()))
    }

    /// Drops every entry whose path and query start with `prefix` (for
    /// example `/posts/`), on every host.
    ///
    /// Applied to this instance at once; the returned handle waits for
    /// Redis and the other instances (see [`Purged`]).
    #[allow(clippy::must_use_candidate)] // the handle is optional
    pub fn purge_prefix(&self, prefix: &str) -> Purged {
        self.purged(PurgeKind::Prefix);
        self.shared.store.purge_prefix(prefix);
        self.cluster(|| Purge::Prefix(prefix.into()))
    }

    /// Drops every entry tagged `tag` by a `Surrogate-Key` (space-separated)
    /// or `Cache-Tag` (comma-separated) response header.
    ///
    /// Applied to this instance at once; the returned handle waits for
    /// Redis and the other instances (see [`Purged`]).
    #[allow(clippy::must_use_candidate)] // the handle is optional
    pub fn purge_tag(&self, tag: &str) -> Purged {
        self.purged(PurgeKind::Tag);
        self.shared.store.purge_tag(tag);
        self.cluster(|| Purge::Tag(tag.into()))
    }

    /// Drops everything.
    ///
    /// Applied to this instance at once; the returned handle waits for
    /// Redis and the other instances (see [`Purged`]).
    #[allow(clippy::must_use_candidate)] // the handle is optional
    pub fn purge_all(&self) -> Purged {
        self.purged(PurgeKind::All);
        self.shared.store.clear();
        self.cluster(|| Purge::All)
    }

    /// Marks every entry tagged `tag` (`Surrogate-Key` / `Cache-Tag`)
    /// stale, without removing it: on-demand revalidation (Next.js
    /// `revalidateTag`), soft purge in Fastly's and Varnish's words.
    ///
    /// The next request for such an entry is answered at once from the
    /// stale copy (`Cache-Status: …; hit; …`, counted in `stale`) while
    /// one background refresh per key renders the new page, coalesced
    /// with every other request for the key (and across instances by the
    /// Redis render lock, when it is on); requests after it get the new
    /// page. An entry that names no `stale-while-revalidate` window may be
    /// served stale this way for 60 s while its refresh runs or fails. An
    /// entry whose policy forbids stale serving (`no-cache`,
    /// `must-revalidate`, `proxy-revalidate`, or `s-maxage` without
    /// `stale-while-revalidate`) is refreshed before it is served. Serving
    /// stale in the background needs the layer's executor (on with the
    /// `tokio` feature); without one, every marked entry is refreshed
    /// before it is served.
    ///
    /// Applied to this instance before it returns. With a Redis tier, the
    /// shared copies are removed from Redis (an instance holding no memory
    /// copy renders, under the render lock when it is on) and every other
    /// instance marks its memory copies the same way; the returned
    /// [`Purged`] waits for that. Like a purge, it is never lost while
    /// Redis is away.
    #[allow(clippy::must_use_candidate)] // the handle is optional
    pub fn revalidate_tag(&self, tag: &str) -> Purged {
        self.purged(PurgeKind::Tag);
        mark_stale(&self.shared.store, Scope::Tag(tag));
        self.cluster(|| Purge::RevalidateTag(tag.into()))
    }

    /// Marks every entry whose path and query are exactly `path_and_query`
    /// (for example `/` or `/search?q=a`), on every host, stale: see
    /// [`revalidate_tag`](Self::revalidate_tag).
    #[allow(clippy::must_use_candidate)] // the handle is optional
    pub fn revalidate_path(&self, path_and_query: &str) -> Purged {
        self.purged(PurgeKind::Path);
        mark_stale(&self.shared.store, Scope::Path(path_and_query));
        self.cluster(|| Purge::RevalidatePath(path_and_query.into()))
    }

    /// Marks every entry whose path and query start with `prefix` (for
    /// example `/posts/`), on every host, stale: see
    /// [`revalidate_tag`](Self::revalidate_tag).
    #[allow(clippy::must_use_candidate)] // the handle is optional
    pub fn revalidate_prefix(&self, prefix: &str) -> Purged {
        self.purged(PurgeKind::Prefix);
        mark_stale(&self.shared.store, Scope::Prefix(prefix));
        self.cluster(|| Purge::RevalidatePrefix(prefix.into()))
    }

    /// Queues `purge` for Redis and the other instances; starts the
    /// tier's pump and follower first if no request did yet (a cache built
    /// outside a runtime and purged before serving anything).
    fn cluster(&self, purge: impl FnOnce() -> Purge) -> Purged {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.shared.l2 {
            tier.listen(&self.shared);
        }
        self.shared.purge_cluster(purge)
    }

    fn purged(&self, kind: PurgeKind) {
        Counters::bump(&self.shared.counters.purges);
        self.shared.counters.metrics().purged(kind);
        tracing::debug!(?kind, "cache purge");
    }

    /// The counters and size now. Runs the store's pending housekeeping
    /// first, so `bytes` and `entries` are exact; call it for monitoring,
    /// not on every request.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        let s = &self.shared;
        s.store.sync();
        s.sample_size();
        let c = &s.counters;
        CacheStats {
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            stale: c.stale.load(Relaxed),
            revalidations: c.revalidations.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            stores: c.stores.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            purges: c.purges.load(Relaxed),
            l2_hits: c.l2_hits.load(Relaxed),
            l2_misses: c.l2_misses.load(Relaxed),
            l2_errors: c.l2_errors.load(Relaxed),
            l2_timeouts: c.l2_timeouts.load(Relaxed),
            l2_writes: c.l2_writes.load(Relaxed),
            l2_representation_writes: c.l2_representation_writes.load(Relaxed),
            l2_writes_skipped: c.l2_writes_skipped.load(Relaxed),
            remote_purges: c.remote_purges.load(Relaxed),
            bytes: s.store.bytes(),
            entries: s.store.entries(),
        }
    }
}

impl ResponseCache {
    /// Waits up to `within` for the Redis tier to be connected and
    /// listening for other instances' purges; `false` if it is not by
    /// then, or if no tier is configured. Requests never wait for this:
    /// it is for readiness probes and tests. Needs a tokio runtime.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub async fn redis_ready(&self, within: Duration) -> bool {
        let Some(tier) = &self.shared.l2 else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if tier.ready(&self.shared).await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Shared {
    /// Samples the memory tier's size into the metrics' gauges.
    pub(crate) fn sample_size(&self) {
        self.counters
            .metrics()
            .size(self.store.entries(), self.store.bytes());
    }

    /// Counts a response stored in memory.
    pub(crate) fn count_store(&self) {
        Counters::bump(&self.counters.stores);
        self.counters
            .metrics()
            .stored(self.store.entries(), self.store.bytes());
    }

    /// After a response is stored in memory: writes it to the shared tier,
    /// handing over the leader's render lock so it is released once the
    /// entry is there to be found.
    pub(crate) fn stored_l2(&self, key: &str, entry: &Arc<Entry>, lead: Option<&mut Lead>) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.l2 {
            let lock = lead.and_then(|l| l.render_lock.take());
            tier.write(key, entry, lock);
        }
        #[cfg(not(feature = "redis"))]
        let _ = (key, entry, lead);
    }

    /// Gives the shared tier, when there is one, `entry` with the
    /// representations just made of its body (see
    /// `l2::Tier::write_representations`).
    #[cfg(feature = "compression")]
    pub(crate) fn representations_l2(&self, key: &str, entry: &Entry) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.l2 {
            tier.write_representations(key, entry);
        }
        #[cfg(not(feature = "redis"))]
        let _ = (key, entry);
    }

    /// Queues a purge for Redis and every other instance, when there is a
    /// tier (it is never lost: see `l2/purge_log.rs`); the handle to wait for it.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn purge_cluster(&self, purge: impl FnOnce() -> Purge) -> Purged {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.l2 {
            return Purged {
                done: Some(tier.purge(purge())),
            };
        }
        Purged::default()
    }

    /// Remembers `key` as uncacheable until `for_` has passed, so requests
    /// for it go straight through instead of queueing behind each other.
    pub(crate) fn remember_uncacheable(&self, key: &str, for_: Duration) {
        if for_.is_zero() {
            return;
        }
        let now = crate::date::monotonic_now();
        let mut map = self
            .uncacheable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_UNCACHEABLE_KEYS {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_UNCACHEABLE_KEYS {
                map.clear();
            }
        }
        match map.get_mut(key) {
            Some(until) => *until = now + for_,
            None => {
                map.insert(key.into(), now + for_);
            }
        }
    }

    /// Forgets `key` (it was stored after all, or invalidated).
    pub(crate) fn forget_uncacheable(&self, key: &str) {
        let mut map = self
            .uncacheable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !map.is_empty() {
            map.remove(key);
        }
    }

    pub(crate) fn is_uncacheable(&self, key: &str) -> bool {
        let map = self
            .uncacheable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return false;
        }
        map.get(key)
            .is_some_and(|until| *until > crate::date::monotonic_now())
    }
}
