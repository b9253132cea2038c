//! The shared second tier on Redis (feature `redis`). Only [`RedisTier`],
//! a configuration of our own, is public: no type of the Redis client
//! leaves this folder, whose files [`conn`] (connections to a node or a
//! cluster) and [`keys`] (key names) sit beside this one.
//!
//! Layout in Redis, under a namespace (`tower-ssr` by default), on one
//! node (on Redis Cluster, `{ns}` below stands for a hash tag per bucket of
//! keys, and the log and epoch share a tag of their own: see
//! [`keys`]):
//!
//! - `{ns}:e:{key}`: a hash per cache key, one field per variant (`Vary`
//!   values and user key, hashed), each value a [`codec`](super::codec)
//!   entry; its TTL is the longest usable life of its variants (freshness
//!   plus the stale windows), so Redis drops it when no instance could use
//!   it any more.
//! - `{ns}:t:{tag}`: a sorted set of the entry keys tagged `tag`, each
//!   scored by its expiry (Redis time, ms), so that a purge by tag on any
//!   instance finds them; every write trims the members that expired, so
//!   the index holds about as many members as live entries.
//! - `{ns}:l:{key}`: the cross-instance render lock.
//! - `{ns}:g`: the purge generation, a counter every purge raises first (on
//!   a cluster, one per bucket, raised in every bucket the purge may
//!   cover); a write carries the generation read before its render and is
//!   refused if a purge came since, so a slow write never puts a purged
//!   page back.
//! - `{ns}:s`: the purge log, a Redis Stream (`XADD … MAXLEN ~ 10000`)
//!   that every instance follows (`XREAD BLOCK`) from the last id it read,
//!   so a purge issued while an instance was disconnected reaches it when
//!   it reconnects. Pub/sub would drop it.
//! - `{ns}:epoch`: a random value the first instance to connect sets; when
//!   Redis restarts empty (or is flushed), it changes, and every instance
//!   knows its log lost what it had not read yet.
//!
//! On a cluster, every script touches the keys of one bucket, hence one
//! slot; a purge by tag runs in each bucket (each has its own index), a
//! purge by path, prefix or of everything SCANs every master, and the log,
//! in one slot, is read by every instance as on one node.
//!
//! Purges are never lost. One accepted here is applied to this instance's
//! memory at once and queued; a background task (the pump) applies it in
//! Redis (generation first, then the deletions) and appends it to the log,
//! in order, retrying until Redis answers; only then is it taken off the
//! queue. While anything is queued, this instance does not read Redis (an
//! entry there may be one the queued purge will delete). An instance that
//! cannot know what it missed (the epoch changed, or the log was trimmed
//! past its last id) drops its whole memory tier: that covers any purge it
//! missed, at the cost of some renders.
//!
//! Failure is never the user's problem: every call has a timeout; an error
//! or a timeout drops the connection and the tier stays off for a short
//! back-off, during which the cache runs on memory alone; then it
//! reconnects by itself. The first failure is logged at `warn`, the
//! recovery at `info`, nothing in between.

mod config;
mod conn;
mod keys;
mod purge;
mod purge_log;
mod read;
mod refresh;
mod render_lock;
mod write;

pub use config::{InvalidRedisUrl, RedisKeys, RedisTier};
pub(crate) use purge::Purge;
pub(crate) use refresh::BeforeRefresh;
pub(crate) use render_lock::RenderLock;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use redis::{RedisError, RedisResult, Script};
use tokio::sync::Notify;

use super::handle::{Counters, Shared};
use crate::metrics::L2Outcome;
use conn::Conn;
use keys::Layout;
use purge::PURGE_TAG;
use purge_log::{Pending, LOG_STATE};
use read::READ;
use refresh::MAX_REFRESHING;
use render_lock::RELEASE;
use tracing::Instrument;
use write::WRITE;

#[derive(Default)]
struct ConnState {
    manager: Option<Conn>,
    /// Off until then, after a failure.
    retry_at: Option<Instant>,
    /// A connection attempt began then (one at a time).
    connecting_since: Option<Instant>,
}

/// The running tier of one [`ResponseCache`](super::ResponseCache).
pub(crate) struct Tier {
    cfg: RedisTier,
    /// Key names, from the namespace and whether Redis is a cluster.
    layout: Layout,
    /// Tells this instance's own purge messages apart.
    id: u64,
    conn: Mutex<ConnState>,
    down: AtomicBool,
    listening: AtomicBool,
    subscribed: AtomicBool,
    counters: Arc<Counters>,
    read: Script,
    write: Script,
    purge_tag: Script,
    release: Script,
    log_state: Script,
    /// Purges accepted here and not yet applied in Redis and logged,
    /// oldest first; only the pump takes the front off.
    pending: Mutex<VecDeque<Pending>>,
    /// Whether `pending` holds anything: one load on every Redis lookup.
    has_pending: AtomicBool,
    /// Wakes the pump when a purge is queued (shared, so that the pump
    /// waits on it without keeping the tier alive).
    wake: Arc<Notify>,
    /// Background refreshes consulting Redis at once: after a
    /// revalidation of thousands of keys, unbounded, their calls would
    /// queue on the one connection past the timeout and switch the tier
    /// off, and every instance would render every key.
    refreshing: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("cfg", &self.cfg)
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A per-process, per-cache random id (no RNG dependency: the std hasher's
/// random keys, the clock and the pid).
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Tier {
    pub(crate) fn new(cfg: RedisTier, counters: Arc<Counters>) -> Self {
        Tier {
            layout: cfg.layout(),
            cfg,
            id: random_id(),
            conn: Mutex::new(ConnState::default()),
            down: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            counters,
            read: Script::new(READ),
            write: Script::new(WRITE),
            purge_tag: Script::new(PURGE_TAG),
            release: Script::new(RELEASE),
            log_state: Script::new(LOG_STATE),
            pending: Mutex::new(VecDeque::new()),
            has_pending: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            refreshing: tokio::sync::Semaphore::new(MAX_REFRESHING),
        }
    }

    /// A connection, or `None` while the tier is off.
    async fn connection(&self) -> Option<Conn> {
        let now = Instant::now();
        {
            let mut s = lock(&self.conn);
            if let Some(m) = &s.manager {
                return Some(m.clone());
            }
            if s.retry_at.is_some_and(|t| now < t)
                || s.connecting_since
                    .is_some_and(|t| now < t + self.cfg.connect_timeout)
            {
                return None;
            }
            s.connecting_since = Some(now);
        }
        let made = tokio::time::timeout(
            self.cfg.connect_timeout,
            self.cfg
                .backend
                .connect(self.cfg.connect_timeout, self.cfg.timeout),
        )
        .await;
        let mut s = lock(&self.conn);
        s.connecting_since = None;
        match made {
            Ok(Ok(m)) => {
                s.manager = Some(m.clone());
                s.retry_at = None;
                drop(s);
                self.up();
                Some(m)
            }
            Ok(Err(e)) => {
                s.retry_at = Some(Instant::now() + self.cfg.retry_after);
                drop(s);
                Counters::bump(&self.counters.l2_errors);
                self.counters.metrics().l2(L2Outcome::Error);
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                s.retry_at = Some(Instant::now() + self.cfg.retry_after);
                drop(s);
                Counters::bump(&self.counters.l2_timeouts);
                self.counters.metrics().l2(L2Outcome::Timeout);
                self.failed("connecting timed out");
                None
            }
        }
    }

    /// Switches the tier off for the back-off: the next call reconnects.
    fn reset(&self) {
        let mut s = lock(&self.conn);
        s.manager = None;
        s.retry_at = Some(Instant::now() + self.cfg.retry_after);
    }

    fn failed(&self, why: &str) {
        if !self.down.swap(true, Relaxed) {
            tracing::warn!(
                error = why,
                "redis tier unavailable: the cache goes on with memory alone and reconnects by itself"
            );
        }
    }

    fn up(&self) {
        if self.down.swap(false, Relaxed) {
            tracing::info!("redis tier reconnected");
        }
    }

    /// Runs one call with the timeout; `None` on any failure, counted.
    async fn call<'a, T, F, Fut>(&'a self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>> + 'a,
    {
        let conn = self.connection().await?;
        // One `debug` span per Redis call; free when nothing listens.
        let span = tracing::debug_span!(target: "tower_ssr::cache", "redis_call");
        match tokio::time::timeout(self.cfg.timeout, f(conn).instrument(span)).await {
            Ok(Ok(v)) => {
                self.up();
                Some(v)
            }
            Ok(Err(e)) => {
                Counters::bump(&self.counters.l2_errors);
                self.counters.metrics().l2(L2Outcome::Error);
                if is_connection_error(&e) {
                    self.reset();
                    self.failed(&e.to_string());
                } else {
                    tracing::debug!(error = %e, "redis call failed");
                }
                None
            }
            Err(_) => {
                Counters::bump(&self.counters.l2_timeouts);
                self.counters.metrics().l2(L2Outcome::Timeout);
                self.reset();
                self.failed("a call timed out");
                None
            }
        }
    }

    /// Whether the tier is connected and its purge log followed.
    pub(crate) async fn ready(self: &Arc<Self>, shared: &Arc<Shared>) -> bool {
        self.listen(shared);
        let pinged: Option<String> = self
            .call(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await;
        pinged.is_some() && self.subscribed.load(Relaxed)
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}
