//! The tier's configuration: [`RedisTier`], the builder an application
//! gives to [`ResponseCacheBuilder::redis`](crate::cache::ResponseCacheBuilder::redis),
//! the [`RedisKeys`] it names for operators, and [`InvalidRedisUrl`].
//! Nothing connects here: the running tier ([`Tier`](super::Tier))
//! is made from it when the cache is built.

use std::time::Duration;

use redis::Client;

use super::conn::Backend;
use super::keys::Layout;

/// Values larger than this stay in memory only, by default.
const DEFAULT_MAX_VALUE: usize = 1024 * 1024;
/// Default bound on the encoded values on their way to Redis: 16 MiB.
const DEFAULT_MAX_IN_FLIGHT: usize = 16 * 1024 * 1024;

/// The shared Redis tier's configuration, given to
/// [`ResponseCacheBuilder::redis`](crate::cache::ResponseCacheBuilder::redis).
///
/// ```
/// use std::time::Duration;
/// use tower_ssr::cache::{RedisTier, ResponseCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tier = RedisTier::new("redis://127.0.0.1:6379")?
///     .namespace("shop")
///     .timeout(Duration::from_millis(50))
///     .render_lock(Duration::from_secs(2));
/// // Nothing connects yet; with no Redis there, the cache runs on memory.
/// let cache = ResponseCache::builder().redis(tier).build();
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisTier {
    pub(super) backend: Backend,
    pub(super) namespace: String,
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) retry_after: Duration,
    pub(super) max_value: usize,
    pub(super) max_in_flight: usize,
    pub(super) lock_wait: Option<Duration>,
    pub(super) lock_ttl: Duration,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may carry a password.
        f.debug_struct("RedisTier")
            .field("cluster", &self.backend.is_cluster())
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_after", &self.retry_after)
            .field("max_value_bytes", &self.max_value)
            .field("max_in_flight_bytes", &self.max_in_flight)
            .field("render_lock", &self.lock_wait)
            .field("lock_ttl", &self.lock_ttl)
            .finish()
    }
}

/// The Redis keys of one cache key, from [`RedisTier::keys_for`].
///
/// Read-only information: writing to these keys by hand is possible (the
/// tier treats what it cannot decode as a miss) but not a supported API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisKeys {
    /// The hash of the key's stored variants, one field per variant.
    pub entry: String,
    /// The render lock of a request without a user key
    /// ([`CacheLayer::key_with`](crate::cache::CacheLayer::key_with) adds one to the name).
    pub lock: String,
    /// The purge generation a write of this key is checked against.
    pub generation: String,
    /// What the index of a tag starts with: the tag follows (a sorted set
    /// of entry names, in this key's bucket on a cluster).
    pub tag_index_prefix: String,
    /// The purge log, a stream every instance follows.
    pub log: String,
}

impl RedisKeys {
    /// The index of entries tagged `tag` that holds this key's entry.
    #[must_use]
    pub fn tag_index(&self, tag: &str) -> String {
        format!("{}{tag}", self.tag_index_prefix)
    }
}

/// A Redis URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRedisUrl {
    reason: String,
}

impl std::fmt::Display for InvalidRedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid Redis URL: {}", self.reason)
    }
}

impl std::error::Error for InvalidRedisUrl {}

impl RedisTier {
    /// A tier on the Redis at `url` (`redis://[:password@]host[:port][/db]`,
    /// or `rediss://` for TLS, which needs the `redis-tls` feature). Only the URL is
    /// checked here; the connection is made on first use, and a Redis that
    /// is not there only means the cache runs on memory alone.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL, or is `rediss://` without the
    /// `redis-tls` feature.
    pub fn new(url: &str) -> Result<Self, InvalidRedisUrl> {
        let client = Client::open(url).map_err(|e| InvalidRedisUrl {
            reason: e.to_string(),
        })?;
        Ok(Self::on(Backend::Single(client)))
    }

    /// A tier on the Redis Cluster that `seeds` belong to: URLs of some of
    /// its nodes (`redis://[:password@]host:port`, `rediss://` with the
    /// `redis-tls` feature), one is enough; the others are learnt from it,
    /// and so are the nodes added later. As with [`new`](Self::new), only
    /// the URLs are checked here and nothing connects yet.
    ///
    /// Keys carry hash tags so that each Redis call touches one slot; a
    /// purge fans out over 256 buckets spread evenly over the slots (see
    /// [`keys_for`](Self::keys_for)). Everything else behaves as on one
    /// node: the purge log lives in one slot and every instance follows
    /// it. A cluster and a single node never share entries or purges, even
    /// under one namespace: their layouts differ.
    ///
    /// ```
    /// use tower_ssr::cache::RedisTier;
    ///
    /// let tier = RedisTier::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])?
    ///     .namespace("shop");
    /// # let _ = tier;
    /// # Ok::<(), tower_ssr::cache::InvalidRedisUrl>(())
    /// ```
    ///
    /// # Errors
    ///
    /// When `seeds` is empty, a seed is not a Redis URL (or is `rediss://`
    /// without the `redis-tls` feature), or the seeds carry different
    /// credentials.
    pub fn cluster<I, S>(seeds: I) -> Result<Self, InvalidRedisUrl>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let backend = Backend::cluster(seeds).map_err(|e| InvalidRedisUrl {
            reason: e.to_string(),
        })?;
        Ok(Self::on(backend))
    }

    fn on(backend: Backend) -> Self {
        RedisTier {
            backend,
            namespace: "tower-ssr".into(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(500),
            retry_after: Duration::from_secs(1),
            max_value: DEFAULT_MAX_VALUE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            lock_wait: None,
            lock_ttl: Duration::from_secs(10),
        }
    }

    /// Where this tier keeps what it stores under `cache_key` (the key a
    /// [`CacheLayer`](crate::cache::CacheLayer) computed, e.g.
    /// `http://shop.example/posts/1`): for operators looking with
    /// `redis-cli`, and for tests. On one node every name starts with the
    /// namespace; on a cluster with the hash tag of the key's bucket, so
    /// that the entry, its render lock, its bucket's purge generation and
    /// tag indexes share one slot. Works the names out afresh (about a
    /// millisecond for a cluster tier): not for a request path.
    #[must_use]
    pub fn keys_for(&self, cache_key: &str) -> RedisKeys {
        let layout = self.layout();
        let bucket = layout.bucket(cache_key);
        RedisKeys {
            entry: layout.entry(cache_key),
            lock: layout.lock(cache_key, cache_key),
            generation: layout.generation(bucket),
            tag_index_prefix: layout.tag_index(bucket, ""),
            log: layout.log(),
        }
    }

    pub(super) fn layout(&self) -> Layout {
        if self.backend.is_cluster() {
            Layout::cluster(&self.namespace)
        } else {
            Layout::single(&self.namespace)
        }
    }

    /// The prefix of every Redis key and of the purge log (default
    /// `tower-ssr`): instances share entries only within one namespace. On
    /// a cluster it opens every key's hash tag (`{tower-ssr:…}`), with `{`
    /// and `}` read as `_`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long one Redis call may take before the request goes on
    /// without it (default 100 ms). A timeout also switches the tier off
    /// for [`retry_after`](Self::retry_after).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take (default 500 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the tier stays off after a failure before reconnecting
    /// (default 1 s); meanwhile requests use memory alone and pay nothing.
    pub fn retry_after(mut self, pause: Duration) -> Self {
        self.retry_after = pause;
        self
    }

    /// Encoded entries larger than this stay in memory only (default
    /// 1 MiB): one huge value would stall Redis for every instance.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value = bytes;
        self
    }

    /// The most bytes of encoded values on their way to Redis at once
    /// (written and not yet answered; default 16 MiB). Past it an entry is
    /// not written: it stays in this instance's memory, other instances
    /// render it themselves, and the skip is counted
    /// ([`CacheStats::l2_writes_skipped`](crate::cache::CacheStats::l2_writes_skipped),
    /// metric outcome `skipped`). Writes are fire and forget, so without a
    /// bound a Redis that answers slowly but within
    /// [`timeout`](Self::timeout) would hold the store rate times its
    /// latency in values the memory tier's `max_bytes` does not count.
    /// At least one value is always let through when none is in flight.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight = bytes;
        self
    }

    /// Coalesces misses across instances: the first instance to miss a key
    /// takes a Redis lock and renders; the others wait up to `wait` for its
    /// entry to appear in Redis, then render themselves. Off by default.
    pub fn render_lock(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// How long a render lock lives at most (default 10 s): an instance
    /// that crashed while holding one blocks no one for longer.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_a_clear_error_and_debug_hides_the_url() {
        let err = RedisTier::new("http://nope").unwrap_err();
        assert!(err.to_string().starts_with("invalid Redis URL"), "{err}");
        let tier = RedisTier::new("redis://:secret@127.0.0.1:6379").unwrap();
        assert!(!format!("{tier:?}").contains("secret"));
    }

    #[test]
    fn cluster_seeds_are_checked_and_debug_hides_them() {
        let none: [&str; 0] = [];
        assert!(RedisTier::cluster(none).is_err());
        let err = RedisTier::cluster(["redis://127.0.0.1:7000", "http://nope"]).unwrap_err();
        assert!(err.to_string().starts_with("invalid Redis URL"), "{err}");
        let err = RedisTier::cluster(["redis://:a@127.0.0.1:7000", "redis://:b@127.0.0.1:7001"]);
        assert!(err.is_err(), "two passwords");
        let tier = RedisTier::cluster(["redis://:secret@127.0.0.1:7000"]).unwrap();
        let debug = format!("{tier:?}");
        assert!(
            !debug.contains("secret") && debug.contains("cluster: true"),
            "{debug}"
        );
    }

    #[test]
    fn keys_for_names_the_single_node_layout_and_one_slot_on_a_cluster() {
        let one = RedisTier::new("redis://127.0.0.1:6379")
            .unwrap()
            .namespace("shop")
            .keys_for("http://a/x");
        assert_eq!(one.entry, "shop:e:http://a/x");
        assert_eq!(one.lock, "shop:l:http://a/x");
        assert_eq!(one.generation, "shop:g");
        assert_eq!(one.tag_index("news"), "shop:t:news");
        assert_eq!(one.log, "shop:s");
        let many = RedisTier::cluster(["redis://127.0.0.1:7000"])
            .unwrap()
            .namespace("shop")
            .keys_for("http://a/x");
        let slot = |k: &str| super::super::keys::slot(k.as_bytes());
        assert!(many.entry.starts_with("{shop:"), "{}", many.entry);
        for k in [&many.lock, &many.generation, &many.tag_index("news")] {
            assert_eq!(slot(k), slot(&many.entry), "{k}");
        }
        assert_eq!(many.log, "{shop}:s");
    }
}
