//! The in-memory tier, on moka. Private: no moka type leaves this file.
//!
//! Its shape is the one a second tier (Redis, a later issue) would also
//! take: get / insert / remove by key, purge by path prefix, by tag, or all.
//! One key holds every variant of one URI (`Vary`, user key), so purging a
//! URI drops them all at once and a lookup is one map read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache as Moka;
use moka::Expiry;

use super::entry::Entry;
use super::key;

/// Variants of one URI kept side by side; more are rare, and the oldest goes
/// first so a header with unbounded values (a user agent) cannot grow one
/// key without limit.
pub(crate) const MAX_VARIANTS: usize = 32;

/// Every variant stored under one key.
#[derive(Debug)]
pub(crate) struct Variants {
    pub(crate) list: Box<[Arc<Entry>]>,
    weight: u32,
    keep_for: Duration,
}

impl Variants {
    fn new(list: Vec<Arc<Entry>>, key_len: usize) -> Self {
        let weight = list
            .iter()
            .map(|e| e.weight)
            .fold(key_len + 64, usize::saturating_add);
        let now = crate::date::monotonic_now();
        let keep_for = list
            .iter()
            .map(|e| {
                let resident = now.saturating_duration_since(e.fresh.stored_at);
                e.fresh.keep_for.saturating_sub(resident)
            })
            .max()
            .unwrap_or(Duration::ZERO);
        Variants {
            list: list.into_boxed_slice(),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            keep_for,
        }
    }
}

struct KeepFor;

impl Expiry<String, Arc<Variants>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Variants>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<Variants>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }
}

/// The memory tier.
pub(crate) struct Store {
    map: Moka<String, Arc<Variants>>,
    max_bytes: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.map.entry_count())
            .field("bytes", &self.map.weighted_size())
            .finish()
    }
}

impl Store {
    /// A tier bounded to `max_bytes` as counted by each entry's weight;
    /// `on_evict` hears of every entry dropped for lack of room.
    pub(crate) fn new(max_bytes: u64, on_evict: impl Fn() + Send + Sync + 'static) -> Self {
        let map = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &String, v: &Arc<Variants>| v.weight)
            .expire_after(KeepFor)
            .support_invalidation_closures()
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    on_evict();
                }
            })
            .build();
        Store { map, max_bytes }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Variants>> {
        self.map.get(key)
    }

    /// Stores `entry` beside the other variants of `key`, replacing the one
    /// it matches (same `Vary` values and user key); whether it was stored
    /// (not when the variants would outweigh the whole tier).
    pub(crate) fn insert(&self, key: &str, entry: Arc<Entry>) -> bool {
        let mut stored = false;
        self.map.entry_by_ref(key).and_compute_with(|current| {
            let mut list: Vec<Arc<Entry>> = Vec::new();
            if let Some(current) = current {
                list.extend(
                    current
                        .value()
                        .list
                        .iter()
                        .filter(|e| !same_variant(e, &entry))
                        .cloned(),
                );
            }
            if list.len() >= MAX_VARIANTS {
                list.remove(0);
            }
            list.push(entry);
            let variants = Variants::new(list, key.len());
            if u64::from(variants.weight) > self.max_bytes {
                // Could never be kept: moka would only evict it later,
                // after lookups had seen it.
                return moka::ops::compute::Op::Nop;
            }
            stored = true;
            moka::ops::compute::Op::Put(Arc::new(variants))
        });
        stored
    }

    /// Drops one variant, if it is still the one stored.
    pub(crate) fn remove_variant(&self, key: &str, entry: &Arc<Entry>) {
        self.map.entry_by_ref(key).and_compute_with(|current| {
            let Some(current) = current else {
                return moka::ops::compute::Op::Nop;
            };
            let list: Vec<Arc<Entry>> = current
                .value()
                .list
                .iter()
                .filter(|e| !Arc::ptr_eq(e, entry))
                .cloned()
                .collect();
            if list.len() == current.value().list.len() {
                moka::ops::compute::Op::Nop
            } else if list.is_empty() {
                moka::ops::compute::Op::Remove
            } else {
                moka::ops::compute::Op::Put(Arc::new(Variants::new(list, key.len())))
            }
        });
    }

    /// Drops every variant of `key`; whether anything was stored.
    pub(crate) fn remove(&self, key: &str) -> bool {
        self.map.remove(key).is_some()
    }

    /// Drops every key whose path-and-query starts with `prefix`.
    pub(crate) fn purge_prefix(&self, prefix: &str) {
        let prefix: Box<str> = prefix.into();
        self.invalidate_if(move |k, _| key::path_of(k).starts_with(&*prefix));
    }

    /// Drops every key whose path-and-query is exactly `path`, on any host.
    pub(crate) fn purge_path(&self, path: &str) {
        let path: Box<str> = path.into();
        self.invalidate_if(move |k, _| key::path_of(k) == &*path);
    }

    /// Drops every key one of whose variants carries `tag`.
    pub(crate) fn purge_tag(&self, tag: &str) {
        let tag: Box<str> = tag.into();
        self.invalidate_if(move |_, v| v.list.iter().any(|e| e.has_tag(&tag)));
    }

    /// Replaces every variant of the keys `predicate` picks with what
    /// `update` makes of it (revalidation: a copy marked stale). A walk
    /// over the whole tier, off the request path.
    pub(crate) fn update_if(
        &self,
        predicate: impl Fn(&str, &Variants) -> bool,
        update: impl Fn(&Arc<Entry>) -> Arc<Entry>,
    ) {
        for (key, value) in &self.map {
            if !predicate(&key, &value) {
                continue;
            }
            self.map
                .entry_by_ref(key.as_str())
                .and_compute_with(|current| {
                    let Some(current) = current else {
                        return moka::ops::compute::Op::Nop;
                    };
                    let list = current.value().list.iter().map(&update).collect();
                    moka::ops::compute::Op::Put(Arc::new(Variants::new(list, key.len())))
                });
        }
    }

    pub(crate) fn clear(&self) {
        self.map.invalidate_all();
    }

    fn invalidate_if(
        &self,
        predicate: impl Fn(&String, &Arc<Variants>) -> bool + Send + Sync + 'static,
    ) {
        // Enabled at build time, so this cannot fail; entries matched are
        // invisible to lookups at once and freed by moka's housekeeping.
        if self.map.invalidate_entries_if(predicate).is_err() {
            debug_assert!(false, "invalidation closures are enabled");
        }
    }

    /// Runs moka's pending housekeeping so sizes are exact.
    pub(crate) fn sync(&self) {
        self.map.run_pending_tasks();
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.map.weighted_size()
    }

    pub(crate) fn entries(&self) -> u64 {
        self.map.entry_count()
    }
}

fn same_variant(a: &Entry, b: &Entry) -> bool {
    a.extra == b.extra
        && a.vary.len() == b.vary.len()
        && a.vary.iter().zip(b.vary.iter()).all(|(x, y)| x == y)
}
