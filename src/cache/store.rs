//! The in-memory tier, on moka. Private: no moka type leaves this file.
//!
//! Its shape is the one a second tier (Redis, a later issue) would also
//! take: get / insert / remove by key, purge by path prefix, by tag, or all.
//! One key holds every variant of one URI (`Vary`, user key), so purging a
//! URI drops them all at once and a lookup is one map read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache as Moka;
use moka::Entry as MokaEntry;

use super::entry::Entry;
use super::key;

/// Variants of one URI kept side by side. When a new one finds the list
/// full, the least recently used variant that no one has asked for again
/// goes first, so a header with unbounded values (a user agent, a made-up
/// `Accept-Encoding`) churns only among values seen once and cannot push out
/// the variants real clients use (issue 8 §7).
pub(crate) const MAX_VARIANTS: usize = 32;

/// Fingerprints of the variants of one key stored most recently: a variant
/// stored again while its fingerprint is still here (it was evicted, or
/// refreshed) is one that clients ask for more than once.
const SEEN: usize = 256;

/// The fingerprints of the last [`SEEN`] variants stored under one key, a
/// ring. Shared by every version of the key's [`Variants`] (they are
/// replaced on each insert); only the miss path touches it.
#[derive(Debug)]
struct Seen {
    ring: Box<[u64]>,
    next: usize,
}

impl Seen {
    fn new() -> Self {
        Seen {
            ring: vec![0; SEEN].into_boxed_slice(),
            next: 0,
        }
    }

    /// Records `fp`; whether it was there already.
    fn record(&mut self, fp: u64) -> bool {
        let before = self.ring.contains(&fp);
        if let Some(slot) = self.ring.get_mut(self.next) {
            *slot = fp;
        }
        self.next = (self.next + 1) % SEEN;
        before
    }
}

/// A variant's identity (its `Vary` values and user key) as a fingerprint;
/// never 0, the ring's empty slot.
fn fingerprint(e: &Entry) -> u64 {
    let mut buf = Vec::with_capacity(64);
    if let Some(extra) = &e.extra {
        buf.extend_from_slice(extra.as_bytes());
    }
    for (name, value) in e.vary.iter() {
        buf.push(0);
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.push(1);
        if let Some(v) = value {
            buf.extend_from_slice(v.as_bytes());
        }
    }
    xxhash_rust::xxh3::xxh3_64(&buf).max(1)
}

/// Every variant stored under one key, with what eviction needs to know of
/// each: when it was last used (a per-key logical clock, so ties cannot
/// happen) and whether it is *hot* (answered a hit, or was stored before
/// while still remembered in [`Seen`]).
#[derive(Debug)]
pub(crate) struct Variants {
    pub(crate) list: Box<[Arc<Entry>]>,
    last: Box<[AtomicU64]>,
    hot: Box<[AtomicBool]>,
    clock: AtomicU64,
    /// Only for keys that can have more than one variant.
    seen: Option<Arc<Mutex<Seen>>>,
    weight: u32,
    /// When the last of the variants stops being worth keeping (`None`:
    /// past what the clock can say, never).
    expires_at: Option<Instant>,
}

/// One variant while the list is rebuilt.
struct Slot {
    entry: Arc<Entry>,
    last: u64,
    hot: bool,
}

impl Variants {
    fn new(slots: Vec<Slot>, clock: u64, seen: Option<Arc<Mutex<Seen>>>, key_len: usize) -> Self {
        let ring = if seen.is_some() {
            SEEN * std::mem::size_of::<u64>()
        } else {
            0
        };
        let weight = slots
            .iter()
            .map(|s| s.entry.weight.saturating_add(16))
            .fold(key_len + 64 + ring, usize::saturating_add);
        let expires_at = expires_at(&slots);
        Variants {
            last: slots.iter().map(|s| AtomicU64::new(s.last)).collect(),
            hot: slots.iter().map(|s| AtomicBool::new(s.hot)).collect(),
            list: slots.into_iter().map(|s| s.entry).collect(),
            clock: AtomicU64::new(clock),
            seen,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            expires_at,
        }
    }

    /// Whether every variant is past its keep time at `now`: never served
    /// again, and dropped by the next lookup or sweep.
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The variants and their state, for a rebuild.
    fn slots(&self) -> Vec<Slot> {
        self.list
            .iter()
            .zip(self.last.iter().zip(self.hot.iter()))
            .map(|(e, (last, hot))| Slot {
                entry: Arc::clone(e),
                last: last.load(Relaxed),
                hot: hot.load(Relaxed),
            })
            .collect()
    }

    /// Notes that variant `i` answered a request. Cheap enough for the hit
    /// path: no allocation, and once a variant is hot and the last one used
    /// (the steady state of a hot page), only two relaxed loads; a key with
    /// one variant has nothing to rank and skips the clock.
    pub(crate) fn touch(&self, i: usize) {
        if let Some(hot) = self.hot.get(i) {
            if !hot.load(Relaxed) {
                hot.store(true, Relaxed);
            }
        }
        if self.list.len() < 2 {
            return;
        }
        if let Some(last) = self.last.get(i) {
            if last.load(Relaxed) != self.clock.load(Relaxed) {
                last.store(self.clock.fetch_add(1, Relaxed) + 1, Relaxed);
            }
        }
    }
}

/// When the last of `slots` stops being worth keeping (each entry's
/// `keep_for` past its `stored_at`); `None` when one lies past what the
/// clock can say.
fn expires_at(slots: &[Slot]) -> Option<Instant> {
    let mut latest: Option<Instant> = None;
    for s in slots {
        let at = s
            .entry
            .fresh
            .stored_at
            .checked_add(s.entry.fresh.keep_for)?;
        latest = Some(latest.map_or(at, |l| l.max(at)));
    }
    latest
}

/// The variant to drop from a full list: the least recently used of those
/// not hot, or the least recently used of all when every one is hot.
fn victim(slots: &[Slot]) -> Option<usize> {
    let lru = |hot_too: bool| {
        slots
            .iter()
            .enumerate()
            .filter(|(_, s)| hot_too || !s.hot)
            .min_by_key(|(_, s)| s.last)
            .map(|(i, _)| i)
    };
    lru(false).or_else(|| lru(true))
}

/// The memory tier.
///
/// Entries are not expired by moka's per-entry timers (its read path then
/// costs every hit about 5 %, BENCHMARKS.md "The hit path mended"): a
/// lookup finds an entry past its keep time gone and drops it, and a sweep
/// at most once a [`SWEEP_EVERY`], started by a store, drops those no one
/// asks for; until then they only wait to be pushed out by size.
pub(crate) struct Store {
    map: Moka<String, Arc<Variants>>,
    max_bytes: u64,
    /// When the tier was made: the origin of the sweep times.
    born: Instant,
    /// Milliseconds past `born` before which no sweep starts.
    next_sweep: AtomicU64,
    /// Milliseconds past `born` of the last sweep.
    last_sweep: AtomicU64,
    /// A live entry was pushed out for room since the last sweep: entries
    /// past their keep time may be taking it, so a sweep is due early.
    pressed: Arc<AtomicBool>,
    /// The last sweep dropped something (or none ran yet). A full tier of
    /// live entries evicts all the time; once a sweep finds nothing, the
    /// next waits its [`SWEEP_EVERY`] rather than walking every entry
    /// every [`SWEEP_PRESSED`].
    productive: Arc<AtomicBool>,
}

/// The least time between two sweeps of entries past their keep time.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The least time between two sweeps when live entries are being pushed
/// out for room.
const SWEEP_PRESSED: Duration = Duration::from_secs(1);

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
        let pressed = Arc::new(AtomicBool::new(false));
        let press = Arc::clone(&pressed);
        let map = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &String, v: &Arc<Variants>| v.weight)
            .support_invalidation_closures()
            .eviction_listener(move |_k, v: Arc<Variants>, cause| {
                // An entry past its keep time pushed out for room was dead
                // already: no shortage of room, so no eviction.
                if cause == RemovalCause::Size && !v.expired(crate::date::monotonic_now()) {
                    press.store(true, Relaxed);
                    on_evict();
                }
            })
            .build();
        Store {
            map,
            max_bytes,
            born: crate::date::monotonic_now(),
            next_sweep: AtomicU64::new(SWEEP_EVERY.as_millis() as u64),
            last_sweep: AtomicU64::new(0),
            pressed,
            productive: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The variants of `key`, unless all are past their keep time at `now`
    /// (then they are dropped, unless replaced meanwhile).
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<Arc<Variants>> {
        let variants = self.map.get(key)?;
        if !variants.expired(now) {
            return Some(variants);
        }
        self.remove_if(key, |current| Arc::ptr_eq(current, &variants));
        None
    }

    /// Drops, in moka's housekeeping, every key past its keep time: at
    /// most once a [`SWEEP_EVERY`], or once a [`SWEEP_PRESSED`] while live
    /// entries are being pushed out for room (dead ones may hold it: they
    /// were popular, so the admission policy keeps them over new pages).
    fn sweep_if_due(&self, now: Instant) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let at = ms(now.saturating_duration_since(self.born));
        let due = self.next_sweep.load(Relaxed);
        let pressed = self.pressed.load(Relaxed)
            && self.productive.load(Relaxed)
            && at
                >= self
                    .last_sweep
                    .load(Relaxed)
                    .saturating_add(ms(SWEEP_PRESSED));
        if at < due && !pressed {
            return;
        }
        // One caller wins the sweep.
        let next = at.saturating_add(ms(SWEEP_EVERY));
        if self
            .next_sweep
            .compare_exchange(due, next, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        self.last_sweep.store(at, Relaxed);
        self.pressed.store(false, Relaxed);
        self.productive.store(false, Relaxed);
        let productive = Arc::clone(&self.productive);
        self.invalidate_if(move |_, v| {
            let dead = v.expired(now);
            if dead {
                productive.store(true, Relaxed);
            }
            dead
        });
    }

    /// Stores `entry` beside the other variants of `key`, replacing the one
    /// it matches (same `Vary` values and user key); whether it was stored
    /// (not when the variants would outweigh the whole tier).
    pub(crate) fn insert(&self, key: &str, entry: Arc<Entry>) -> bool {
        self.sweep_if_due(crate::date::monotonic_now());
        let mut stored = false;
        self.compute(key, |current| {
            let current = current.map(|c| c.into_value());
            let mut slots = current.as_ref().map_or_else(Vec::new, |c| c.slots());
            let mut clock = current.as_ref().map_or(0, |c| c.clock.load(Relaxed));
            // Keys whose responses vary keep a memory of the variants
            // stored, so a value asked for again is recognised.
            let seen = current.as_ref().and_then(|c| c.seen.clone()).or_else(|| {
                (!entry.vary.is_empty() || entry.extra.is_some())
                    .then(|| Arc::new(Mutex::new(Seen::new())))
            });
            let mut hot = false;
            slots.retain(|s| {
                let same = same_variant(&s.entry, &entry);
                // A refreshed variant keeps its standing.
                hot |= same && s.hot;
                !same
            });
            if let Some(seen) = &seen {
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                hot |= seen.record(fingerprint(&entry));
            }
            if slots.len() >= MAX_VARIANTS {
                if let Some(i) = victim(&slots) {
                    slots.remove(i);
                }
            }
            clock += 1;
            slots.push(Slot {
                entry,
                last: clock,
                hot,
            });
            let variants = Variants::new(slots, clock, seen, key.len());
            if u64::from(variants.weight) > self.max_bytes {
                // Could never be kept: moka would only evict it later,
                // after lookups had seen it.
                return Op::Nop;
            }
            stored = true;
            Op::Put(Arc::new(variants))
        });
        stored
    }

    /// Drops one variant, if it is still the one stored.
    pub(crate) fn remove_variant(&self, key: &str, entry: &Arc<Entry>) {
        self.compute(key, |current| {
            let Some(current) = current else {
                return Op::Nop;
            };
            let current = current.value();
            let mut slots = current.slots();
            slots.retain(|s| !Arc::ptr_eq(&s.entry, entry));
            if slots.len() == current.list.len() {
                Op::Nop
            } else if slots.is_empty() {
                Op::Remove
            } else {
                let clock = current.clock.load(Relaxed);
                let seen = current.seen.clone();
                Op::Put(Arc::new(Variants::new(slots, clock, seen, key.len())))
            }
        });
    }

    /// Puts `with(current)` in the place of `old`, or of the entry that
    /// replaced it with the same body (a 304 freshened it, RFC 9111
    /// §4.3.4, sharing the body's bytes) and nothing made yet: same slot,
    /// same standing. Nothing when neither is stored any more: a purge,
    /// an eviction or a new response in between wins. The entry put in
    /// its place, if any (none when the variants would then outweigh the
    /// whole tier).
    #[cfg(feature = "compression")]
    pub(crate) fn replace_variant(
        &self,
        key: &str,
        old: &Arc<Entry>,
        with: impl FnOnce(&Entry) -> Entry,
    ) -> Option<Arc<Entry>> {
        let mut replaced = None;
        self.compute(key, |current| {
            let Some(current) = current else {
                return Op::Nop;
            };
            let current = current.value();
            let mut slots = current.slots();
            let same_body = |e: &Entry| {
                e.reprs.is_none()
                    && e.body.len() == old.body.len()
                    && e.body.as_ptr() == old.body.as_ptr()
                    && same_variant(e, old)
            };
            let Some(slot) = slots
                .iter_mut()
                .find(|s| Arc::ptr_eq(&s.entry, old) || same_body(&s.entry))
            else {
                return Op::Nop;
            };
            let new = Arc::new(with(&slot.entry));
            slot.entry = Arc::clone(&new);
            let clock = current.clock.load(Relaxed);
            let variants = Variants::new(slots, clock, current.seen.clone(), key.len());
            if u64::from(variants.weight) > self.max_bytes {
                return Op::Nop;
            }
            replaced = Some(new);
            Op::Put(Arc::new(variants))
        });
        replaced
    }

    /// The variant of `key` whose body is `body` (its address and length)
    /// and that has no codings made yet: what a 304 freshened an entry
    /// into keeps its body's bytes.
    #[cfg(feature = "compression")]
    pub(crate) fn sharing_body(&self, key: &str, body: (usize, usize)) -> Option<Arc<Entry>> {
        self.variant_where(key, |e| {
            e.reprs.is_none() && e.body.as_ptr() as usize == body.0 && e.body.len() == body.1
        })
    }

    /// The variant of `key` with codings made whose body has the same
    /// bytes as `body`: the same allocation (a compression job stored them
    /// while a revalidation of the entry it started from was in flight),
    /// or a copy (a newer value of the same page read back from Redis by a
    /// refresh). Codings are a function of the body's bytes alone, so they
    /// carry over to either.
    pub(crate) fn coded_with_body(&self, key: &str, body: &bytes::Bytes) -> Option<Arc<Entry>> {
        self.variant_where(key, |e| {
            e.reprs.is_some()
                && e.body.len() == body.len()
                && (e.body.as_ptr() == body.as_ptr() || e.body == *body)
        })
    }

    /// The first variant of `key` for which `found` holds.
    fn variant_where(&self, key: &str, found: impl Fn(&Entry) -> bool) -> Option<Arc<Entry>> {
        let variants = self.map.get(key)?;
        variants.list.iter().find(|e| found(e)).cloned()
    }

    /// Drops every variant of `key`; whether anything was stored.
    ///
    /// Under the key's own lock (moka's compute), like every write here: a
    /// store that read the key's variants before the removal and writes
    /// them back after it would otherwise bring the removed ones back.
    pub(crate) fn remove(&self, key: &str) -> bool {
        self.remove_if(key, |_| true)
    }

    /// Drops `key` if its current variants still satisfy `matches`, under
    /// the key's lock; whether it did.
    fn remove_if(&self, key: &str, matches: impl Fn(&Arc<Variants>) -> bool) -> bool {
        let mut removed = false;
        self.compute(key, |current| match current {
            Some(c) if matches(c.value()) => {
                removed = true;
                Op::Remove
            }
            _ => Op::Nop,
        });
        removed
    }

    /// Writes `key`'s new value as `f` makes it of the current one (none
    /// when absent), under the key's lock: every write here goes through
    /// it, so a purge's removal (also under the key's lock, see
    /// [`Store::purge_where`]) falls before or after a whole write, never
    /// between its read and its write.
    fn compute(
        &self,
        key: &str,
        f: impl FnOnce(Option<MokaEntry<String, Arc<Variants>>>) -> Op<Arc<Variants>>,
    ) {
        self.map.entry_by_ref(key).and_compute_with(f);
    }

    /// Drops `key` in every spelling of its scheme's default port (one URI,
    /// RFC 9110 §4.2.3; see `key::spellings`); whether anything was stored.
    pub(crate) fn remove_uri(&self, key: &str) -> bool {
        key::spellings(key)
            .iter()
            .fold(false, |any, k| self.remove(k) | any)
    }

    /// Drops every key whose path-and-query starts with `prefix`.
    pub(crate) fn purge_prefix(&self, prefix: &str) {
        self.purge_where(|k, _| key::path_of(k).starts_with(prefix));
    }

    /// Drops every key whose path-and-query is exactly `path`, on any host.
    pub(crate) fn purge_path(&self, path: &str) {
        self.purge_where(|k, _| key::path_of(k) == path);
    }

    /// Drops every key one of whose variants carries `tag`.
    pub(crate) fn purge_tag(&self, tag: &str) {
        self.purge_where(|_, v| v.list.iter().any(|e| e.has_tag(tag)));
    }

    /// Drops every key `matches` picks, before it returns: a walk over the
    /// tier, each key it picks checked again and removed under the key's
    /// own lock.
    ///
    /// Not moka's `invalidate_entries_if`, which lost purges (issue 8: a
    /// purged page served as a `hit`) in three ways: a write that read a
    /// key before the purge and wrote what it made of it after got a newer
    /// timestamp than the purge, which then no longer applied to it; moka's
    /// housekeeping dropped a purge once its scan was done, skipping
    /// entries whose last write it had not recorded yet; and a purge made
    /// while the scan for an earlier one was under way was scanned only
    /// from where that scan stood, then dropped. Here a write in progress
    /// on a key holds the key's lock, so the check runs on what it wrote,
    /// and a write after the removal finds the key gone. It costs a walk
    /// (about 450 ns per entry, `benches/cache.rs` `purge/*`), as
    /// [`Store::update_if`] does.
    fn purge_where(&self, matches: impl Fn(&str, &Variants) -> bool) {
        for (key, value) in &self.map {
            if matches(&key, &value) {
                self.remove_if(&key, |current| matches(&key, current));
            }
        }
    }

    /// Replaces every variant of the keys `predicate` picks with what
    /// `update` makes of it (revalidation: a copy marked stale). A walk
    /// over the whole tier, off the request path.
    pub(crate) fn update_if(
        &self,
        predicate: impl Fn(&str, &Variants) -> bool,
        update: impl Fn(&Arc<Entry>) -> Arc<Entry>,
    ) {
        let now = crate::date::monotonic_now();
        for (key, value) in &self.map {
            if value.expired(now) || !predicate(&key, &value) {
                continue;
            }
            self.compute(key.as_str(), |current| {
                // Past its keep time, an entry is dead (never served):
                // marking it would give it a stale window again.
                let Some(current) = current.filter(|c| !c.value().expired(now)) else {
                    return Op::Nop;
                };
                let current = current.value();
                let slots = current
                    .slots()
                    .into_iter()
                    .map(|s| Slot {
                        entry: update(&s.entry),
                        ..s
                    })
                    .collect();
                let clock = current.clock.load(Relaxed);
                let seen = current.seen.clone();
                Op::Put(Arc::new(Variants::new(slots, clock, seen, key.len())))
            });
        }
    }

    /// Drops everything, as [`Store::purge_where`] does (moka's
    /// `invalidate_all` has the first of its races: a write that read a key
    /// before it and wrote after it is newer than it).
    pub(crate) fn clear(&self) {
        self.purge_where(|_, _| true);
    }

    /// moka's lazy invalidation, for the sweep of dead entries only: an
    /// entry it misses (see [`Store::purge_where`]) is never served
    /// anyway, as lookups check the keep time themselves.
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

#[cfg(all(test, feature = "compression"))]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, StatusCode, Version};

    use super::*;
    use crate::cache::entry::{build, storable, RequestDirectives, StoreRules};
    use crate::cache::representation::coding::Coding;
    use crate::cache::representation::stored::{headers_for, Made, Representations};

    fn entry(body: &'static [u8]) -> Arc<Entry> {
        let now = crate::date::monotonic_now();
        let mut h = HeaderMap::new();
        h.insert("cache-control", HeaderValue::from_static("max-age=60"));
        h.insert("etag", HeaderValue::from_static("\"v1\""));
        h.insert("surrogate-key", HeaderValue::from_static("news"));
        let rules = StoreRules {
            default_ttl: None,
            heuristic_max: None,
            targeted: None,
            keep_stale: Duration::from_secs(60),
        };
        let policy = storable(
            StatusCode::OK,
            &h,
            &RequestDirectives::default(),
            false,
            &rules,
            now,
            (now, SystemTime::now()),
        )
        .unwrap();
        Arc::new(build(
            StatusCode::OK,
            Version::HTTP_11,
            &h,
            Bytes::from_static(body),
            policy,
            &HeaderMap::new(),
            None,
            None,
        ))
    }

    fn with_gzip(e: &Entry) -> Entry {
        let body = Bytes::from(vec![7u8; 5000]);
        let made = Made {
            coding: Coding::Gzip,
            headers: headers_for(&e.headers, Coding::Identity, Coding::Gzip, body.len()),
            body,
        };
        e.with_representations(Arc::new(Representations {
            origin: Coding::Identity,
            made: vec![made].into_boxed_slice(),
        }))
    }

    #[test]
    fn replace_variant_swaps_only_the_entry_still_stored_and_counts_it() {
        let store = Store::new(1 << 30, || {});
        let old = entry(b"page");
        assert!(store.insert("k", Arc::clone(&old)));
        store.sync();
        let before = store.bytes();
        assert!(with_gzip(&old).weight > old.weight + 5000);
        assert!(store.replace_variant("k", &old, with_gzip).is_some());
        store.sync();
        assert!(store.bytes() >= before + 5000, "the codings are weighed");
        let got = store.get("k", crate::date::monotonic_now()).unwrap();
        assert!(got.list[0].reprs.is_some());
        // Done once: the old one is gone and the new one has its codings.
        assert!(store.replace_variant("k", &old, with_gzip).is_none());

        // Freshened by a 304 meanwhile (same body bytes): that one gets them.
        let old = entry(b"page");
        assert!(store.insert("r", Arc::clone(&old)));
        let mut freshened = with_gzip(&old);
        freshened.reprs = None;
        let freshened = Arc::new(freshened);
        assert!(store.insert("r", Arc::clone(&freshened)));
        assert!(store.replace_variant("r", &old, with_gzip).is_some());
        assert!(
            store.get("r", crate::date::monotonic_now()).unwrap().list[0]
                .reprs
                .is_some()
        );

        // Purged in between: the job's entry is not stored back.
        let old = entry(b"page");
        assert!(store.insert("p", Arc::clone(&old)));
        assert!(store.remove("p"));
        assert!(store.replace_variant("p", &old, with_gzip).is_none());
        assert!(store.get("p", crate::date::monotonic_now()).is_none());

        // A newer response in between wins.
        let old = entry(b"page");
        assert!(store.insert("n", Arc::clone(&old)));
        let newer = entry(b"newer");
        assert!(store.insert("n", Arc::clone(&newer)));
        assert!(store.replace_variant("n", &old, with_gzip).is_none());
        assert!(Arc::ptr_eq(
            &store.get("n", crate::date::monotonic_now()).unwrap().list[0],
            &newer
        ));
    }

    #[test]
    fn codings_are_found_for_the_same_bytes_in_a_copy_but_not_for_other_bytes() {
        let store = Store::new(1 << 30, || {});
        let coded = Arc::new(with_gzip(&entry(b"page")));
        assert!(store.insert("k", Arc::clone(&coded)));
        // The same allocation, and a copy of the same bytes (a value read
        // back from Redis).
        let same = store.coded_with_body("k", &coded.body).unwrap();
        assert!(Arc::ptr_eq(&same, &coded));
        let copy = Bytes::copy_from_slice(b"page");
        assert_ne!(copy.as_ptr(), coded.body.as_ptr());
        assert!(store.coded_with_body("k", &copy).is_some());
        assert!(store
            .coded_with_body("k", &Bytes::from_static(b"pagE"))
            .is_none());
        assert!(store
            .coded_with_body("k", &Bytes::from_static(b"pag"))
            .is_none());
        assert!(store.coded_with_body("other", &copy).is_none());
        // Without codings, nothing is found.
        assert!(store.insert("u", entry(b"page")));
        assert!(store.coded_with_body("u", &copy).is_none());
    }

    #[test]
    fn replace_variant_refuses_what_the_tier_cannot_hold() {
        let old = entry(b"page");
        let store = Store::new((old.weight + 1000) as u64, || {});
        assert!(store.insert("k", Arc::clone(&old)));
        assert!(store.replace_variant("k", &old, with_gzip).is_none());
        assert!(Arc::ptr_eq(
            &store.get("k", crate::date::monotonic_now()).unwrap().list[0],
            &old
        ));
    }

    /// Every way of purging a key, as `(name, purge)`.
    fn purges() -> [(&'static str, fn(&Store)); 5] {
        [
            ("uri", |s| assert!(s.remove_uri("http://h/p"))),
            ("path", |s| s.purge_path("/p")),
            ("prefix", |s| s.purge_prefix("/")),
            ("tag", |s| s.purge_tag("news")),
            ("all", Store::clear),
        ]
    }

    /// Each purge, made while `write` (on another thread) rewrites the
    /// key `http://h/p` it read before the purge: the names of the purges
    /// after which the key is still there.
    fn purges_lost_to(write: fn(&Store, &Arc<Entry>, &dyn Fn())) -> Vec<&'static str> {
        let mut lost = Vec::new();
        for (name, purge) in purges() {
            let store = Arc::new(Store::new(1 << 30, || {}));
            let old = entry(b"page");
            assert!(store.insert("http://h/p", Arc::clone(&old)));
            let (reading, read) = std::sync::mpsc::channel();
            let writer = {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    write(&store, &old, &|| {
                        reading.send(()).unwrap();
                        // Long enough for the purge to start meanwhile.
                        std::thread::sleep(Duration::from_millis(100));
                    });
                })
            };
            read.recv().unwrap();
            purge(&store);
            writer.join().unwrap();
            store.sync();
            if store
                .get("http://h/p", crate::date::monotonic_now())
                .is_some()
            {
                lost.push(name);
            }
        }
        lost
    }

    #[test]
    fn a_purge_while_a_store_rewrites_the_key_still_drops_it() {
        // The store (a compression job putting the codings in) read the
        // key before the purge and writes after it. With moka's lazy
        // invalidation the page came back as a hit (issue 8).
        let lost = purges_lost_to(|store, old, pause| {
            store.replace_variant("http://h/p", old, |e| {
                pause();
                with_gzip(e)
            });
        });
        assert!(lost.is_empty(), "purges lost: {lost:?}");
    }

    #[test]
    fn a_purge_while_a_soft_purge_rewrites_the_key_still_drops_it() {
        let lost = purges_lost_to(|store, _, pause| {
            store.update_if(
                |_, _| true,
                |e| {
                    pause();
                    Arc::new(with_gzip(e))
                },
            );
        });
        assert!(lost.is_empty(), "purges lost: {lost:?}");
    }

    #[test]
    fn a_purge_made_while_moka_scans_for_an_earlier_one_still_drops_its_keys() {
        // moka scans for registered purges a batch per housekeeping run,
        // from a cursor it resets only once no purge is left. A purge
        // registered while the scan for an earlier one is under way was
        // scanned from where that scan ended, skipping the keys before
        // it, then forgotten: those keys were served again.
        let store = Store::new(1 << 30, || {});
        let now = crate::date::monotonic_now;
        assert!(store.insert("http://h/a/0", entry(b"page")));
        // More keys than one housekeeping run scans.
        for i in 0..1000 {
            assert!(store.insert(&format!("http://h/b/{i}"), entry(b"page")));
        }
        store.sync();
        store.purge_prefix("/none/");
        store.sync(); // the scan for it is under way
        store.purge_prefix("/a/");
        assert!(store.get("http://h/a/0", now()).is_none());
        for _ in 0..10 {
            store.sync();
        }
        assert!(
            store.get("http://h/a/0", now()).is_none(),
            "the purged key is back"
        );
    }

    #[test]
    fn purges_drop_only_what_they_name() {
        let store = Store::new(1 << 30, || {});
        for k in ["http://h/p", "http://h/q", "https://g/p?x"] {
            assert!(store.insert(k, entry(b"page")));
        }
        let left = |s: &Store| {
            let now = crate::date::monotonic_now();
            ["http://h/p", "http://h/q", "https://g/p?x"]
                .into_iter()
                .filter(|k| s.get(k, now).is_some())
                .collect::<Vec<_>>()
        };
        store.purge_path("/p");
        assert_eq!(left(&store), ["http://h/q", "https://g/p?x"]);
        store.purge_prefix("/p");
        assert_eq!(left(&store), ["http://h/q"]);
        store.purge_tag("sports");
        assert_eq!(left(&store), ["http://h/q"]);
        store.clear();
        assert!(left(&store).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_tier_of_live_entries_does_not_sweep_every_second() {
        // Room for about three entries: every store evicts a live one.
        let store = Store::new(16 * 1024, || {});
        let body: &'static [u8] = &[b'x'; 4000];
        let mut n = 0;
        let mut store_one = || {
            n += 1;
            store.insert(&format!("http://h/{n}"), entry(body));
            store.sync();
        };
        for _ in 0..8 {
            store_one();
        }
        assert!(
            store.pressed.load(Relaxed),
            "live entries were evicted: {} entries, {} bytes",
            store.entries(),
            store.bytes()
        );
        // Pressed and nothing swept yet: the first early sweep runs, and
        // finds nothing dead (max-age=60).
        tokio::time::advance(Duration::from_secs(2)).await;
        store_one();
        let first = store.last_sweep.load(Relaxed);
        assert!(first >= 2_000, "an early sweep ran: {first}");
        store.sync();
        assert!(!store.productive.load(Relaxed));
        // Still pressed, but the last sweep found nothing: no sweep until
        // the minute is up.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(2)).await;
            store_one();
        }
        assert_eq!(store.last_sweep.load(Relaxed), first);
    }
}
