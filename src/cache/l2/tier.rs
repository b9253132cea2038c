//! The running tier of one cache ([`Tier`]), made from its [`RedisTier`]
//! configuration when the cache is built: the state the files beside this
//! one share, each adding the methods of one concept (`health`: calls and
//! outages; `read`; `render_lock`; `refresh`; `write`; `purge`;
//! `purge_log`), and two small helpers they all use.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use redis::Script;
use tokio::sync::Notify;

use super::health::ConnState;
use super::keys::Layout;
use super::purge::PURGE_TAG;
use super::purge_log::{Pending, LOG_STATE};
use super::read::READ;
use super::refresh::MAX_REFRESHING;
use super::render_lock::RELEASE;
use super::write::WRITE;
use super::RedisTier;
use crate::cache::handle::Counters;

/// The running tier of one [`ResponseCache`](crate::cache::ResponseCache).
pub(crate) struct Tier {
    pub(super) cfg: RedisTier,
    /// Key names, from the namespace and whether Redis is a cluster.
    pub(super) layout: Layout,
    /// Tells this instance's own purge messages apart.
    pub(super) id: u64,
    pub(super) conn: Mutex<ConnState>,
    pub(super) down: AtomicBool,
    pub(super) listening: AtomicBool,
    pub(super) subscribed: AtomicBool,
    pub(super) counters: Arc<Counters>,
    pub(super) read: Script,
    pub(super) write: Script,
    pub(super) purge_tag: Script,
    pub(super) release: Script,
    pub(super) log_state: Script,
    /// Purges accepted here and not yet applied in Redis and logged,
    /// oldest first; only the pump takes the front off.
    pub(super) pending: Mutex<VecDeque<Pending>>,
    /// Whether `pending` holds anything: one load on every Redis lookup.
    pub(super) has_pending: AtomicBool,
    /// Wakes the pump when a purge is queued (shared, so that the pump
    /// waits on it without keeping the tier alive).
    pub(super) wake: Arc<Notify>,
    /// Background refreshes consulting Redis at once: after a
    /// revalidation of thousands of keys, unbounded, their calls would
    /// queue on the one connection past the timeout and switch the tier
    /// off, and every instance would render every key.
    pub(super) refreshing: tokio::sync::Semaphore,
    /// Bytes of encoded values written and not yet answered (see
    /// `RedisTier::max_in_flight_bytes`).
    pub(super) in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("cfg", &self.cfg)
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

/// Locks `m`, also when a panic elsewhere poisoned it.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A per-process, per-cache random id (no RNG dependency: the std hasher's
/// random keys, the clock and the pid).
pub(super) fn random_id() -> u64 {
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
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}
