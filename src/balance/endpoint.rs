use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::health::PassiveHealth;
use super::strategy::{PowerOfTwo, Strategy};

/// The stable identity of an endpoint in an [`Endpoints`] set.
///
/// Ids are handed out by [`Endpoints::add`] and never reused within a set, so
/// an id kept across a removal cannot point at another endpoint (the stale
/// index bug of tower #856).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(u64);

impl EndpointId {
    /// The id as a number, for logs and metrics.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why an endpoint could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// Another endpoint already has this name. Names feed the consistent
    /// hashes, so two equal names would always tie.
    DuplicateName(String),
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::DuplicateName(n) => write!(f, "an endpoint named {n:?} already exists"),
        }
    }
}

impl std::error::Error for EndpointError {}

/// Milliseconds since the first call in this process: a cheap monotonic clock
/// that fits in an atomic.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

const HEALTHY: u32 = 0;
const EJECTED: u32 = 1;

/// Load, health and statistics of one endpoint, shared by every snapshot of
/// the set and by the requests in flight on it, so that changing the set
/// never forgets them.
pub(crate) struct EndpointState {
    pub(crate) id: EndpointId,
    pub(crate) name: Arc<str>,
    /// xxh3 of the name: the endpoint's identity in consistent hashes, equal
    /// in every process that names it alike.
    pub(crate) hash: u64,
    pub(crate) weight: AtomicU32,
    pub(crate) in_flight: AtomicUsize,
    // Passive health.
    consecutive_failures: AtomicU32,
    state: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    readmitted_at_ms: AtomicU64,
    trial: AtomicBool,
    // Active probes.
    pub(crate) probe_down: AtomicBool,
    // Statistics.
    requests: AtomicU64,
    failures: AtomicU64,
    latency_total_us: AtomicU64,
    latency_count: AtomicU64,
    /// This endpoint's metrics handles (see `crate::metrics`).
    pub(crate) metrics: crate::metrics::EndpointMetrics,
}

impl EndpointState {
    fn new(id: EndpointId, name: &str, weight: u32) -> Self {
        let hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        let name: Arc<str> = Arc::from(name);
        EndpointState {
            id,
            metrics: crate::metrics::EndpointMetrics::new(&name),
            name,
            hash,
            weight: AtomicU32::new(weight),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            state: AtomicU32::new(HEALTHY),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            readmitted_at_ms: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            probe_down: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency_total_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
        }
    }

    /// Not ejected, and not down by active probes.
    pub(crate) fn is_pickable(&self) -> bool {
        !self.is_ejected() && !self.probe_down.load(Ordering::Relaxed)
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.state.load(Ordering::Acquire) == EJECTED
    }

    /// Whether a new request may go here. An ejected endpoint whose backoff
    /// is over is eligible as a trial; the caller claims the trial with
    /// [`claim_trial`](Self::claim_trial) once it has picked it.
    pub(crate) fn is_healthy_for_pick(&self, now: &mut Option<u64>) -> bool {
        if self.probe_down.load(Ordering::Relaxed) {
            return false;
        }
        if self.state.load(Ordering::Acquire) == HEALTHY {
            return true;
        }
        // Only ejected endpoints pay for reading the clock.
        let now = *now.get_or_insert_with(now_ms);
        now >= self.ejected_until_ms.load(Ordering::Acquire) && !self.trial.load(Ordering::Acquire)
    }

    /// Claims the single trial request of an ejected endpoint whose backoff
    /// is over. `Ok(false)`: healthy, no trial needed. `Err(())`: another
    /// request holds the trial, or the backoff is not over.
    pub(crate) fn claim_trial(&self) -> Result<bool, ()> {
        if !self.is_ejected() {
            return Ok(false);
        }
        if now_ms() < self.ejected_until_ms.load(Ordering::Acquire) {
            return Err(());
        }
        self.trial
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| true)
            .map_err(|_| ())
    }

    /// Gives back a trial claimed by a request that ended undecided.
    pub(crate) fn release_trial(&self) {
        self.trial.store(false, Ordering::Release);
    }

    pub(crate) fn record_latency(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_total_us.fetch_add(us, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts an outcome for passive health. Returns `true` when this
    /// failure ejected the endpoint.
    pub(crate) fn record_outcome<T>(
        &self,
        ok: bool,
        trial: bool,
        health: &PassiveHealth,
        set: &Shared<T>,
    ) -> bool {
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            if trial {
                self.readmitted_at_ms.store(now_ms(), Ordering::Relaxed);
                self.state.store(HEALTHY, Ordering::Release);
                self.trial.store(false, Ordering::Release);
                super::upstream::readmitted(self);
            }
            return false;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        if trial {
            // The trial decides: one failure sends it back out, for longer.
            self.eject_for(health);
            self.trial.store(false, Ordering::Release);
            return true;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if health.consecutive_failures == 0 || n < health.consecutive_failures || self.is_ejected()
        {
            return false;
        }
        // Serialise ejections on the set's lock so that two endpoints failing
        // at once cannot both pass the share check.
        let _guard = set.lock_list();
        if self.is_ejected() {
            return false;
        }
        let snapshot = set.snapshot.load();
        let total = snapshot.states.len();
        let out = snapshot.states.iter().filter(|s| s.is_ejected()).count();
        let allowed = (total as f64 * f64::from(health.max_ejected_share)).floor() as usize;
        if out + 1 > allowed {
            crate::balance::trace!(endpoint = %self.name, "not ejected: max ejected share reached");
            return false;
        }
        self.eject_for(health);
        true
    }

    pub(crate) fn eject_for(&self, health: &PassiveHealth) {
        let now = now_ms();
        // A long healthy spell forgets earlier ejections, so the backoff
        // grows only for an endpoint that keeps failing.
        let readmitted = self.readmitted_at_ms.load(Ordering::Relaxed);
        let cap_ms = u64::try_from(health.max_ejection.as_millis()).unwrap_or(u64::MAX);
        if readmitted != 0 && now.saturating_sub(readmitted) > cap_ms {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed);
        let backoff = health.backoff(n);
        let until = now.saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until_ms.store(until, Ordering::Release);
        self.state.store(EJECTED, Ordering::Release);
        super::upstream::ejected(self, backoff);
    }

    fn stats(&self) -> EndpointStats {
        let count = self.latency_count.load(Ordering::Relaxed);
        let total = self.latency_total_us.load(Ordering::Relaxed);
        EndpointStats {
            id: self.id,
            name: self.name.to_string(),
            weight: self.weight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            ejected: self.is_ejected(),
            probe_healthy: !self.probe_down.load(Ordering::Relaxed),
            latency_average: total.checked_div(count).map(Duration::from_micros),
        }
    }
}

/// A point-in-time view of one endpoint, from [`Endpoints::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// The endpoint's id.
    pub id: EndpointId,
    /// The name it was added with.
    pub name: String,
    /// Its weight; 0 means drained.
    pub weight: u32,
    /// Requests sent to it (retries included).
    pub requests: u64,
    /// Requests that failed: errors, and `5xx` when
    /// [`PassiveHealth::server_errors_are_failures`] is set.
    pub failures: u64,
    /// Requests whose response (body included) has not finished yet.
    pub in_flight: usize,
    /// Whether passive health has taken it out of service for now.
    pub ejected: bool,
    /// Whether active probes, if any, consider it healthy.
    pub probe_healthy: bool,
    /// Mean time to response headers, measured on one request in 8 (and
    /// on every trial).
    pub latency_average: Option<Duration>,
}

/// What a strategy may precompute for one version of the set.
pub(crate) type Prepared = Arc<dyn Any + Send + Sync>;

/// One immutable version of the set's active (weight > 0) endpoints, read
/// without locks by every pick.
pub(crate) struct Snapshot<T> {
    pub(crate) states: Vec<Arc<EndpointState>>,
    pub(crate) values: Vec<T>,
    pub(crate) weights: Vec<u32>,
    pub(crate) hashes: Vec<u64>,
    pub(crate) uniform: bool,
    pub(crate) prepared: Prepared,
}

pub(crate) struct Shared<T> {
    pub(crate) snapshot: ArcSwap<Snapshot<T>>,
    /// Every endpoint, drained ones included, in the order added.
    list: Mutex<List<T>>,
    /// The generation of the list the snapshot was built from: snapshots
    /// are built outside the list's lock (a strategy's `prepare` may take a
    /// while, and ejections need that lock), so an older build finishing
    /// late must not replace a newer one.
    published: Mutex<u64>,
    pub(crate) strategy: Box<dyn Strategy>,
    pub(crate) health: PassiveHealth,
}

struct List<T> {
    entries: Vec<(Arc<EndpointState>, T)>,
    next_id: u64,
    generation: u64,
}

/// What a snapshot is built from, copied under the list's lock.
struct Draft<T> {
    generation: u64,
    states: Vec<Arc<EndpointState>>,
    values: Vec<T>,
    weights: Vec<u32>,
    hashes: Vec<u64>,
}

impl<T> Shared<T> {
    fn lock_list(&self) -> MutexGuard<'_, List<T>> {
        // A panic while holding the lock cannot leave the list inconsistent
        // (every change is one push, remove or store), so recover.
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The set of endpoints a balancer picks from, with their weights, health
/// and load; a cheap handle (`Clone` shares the set).
///
/// Endpoints are added, removed, re-weighted and drained at run time through
/// any handle; every other endpoint keeps its counters and health. Weight 0
/// means drained: no new requests, the ones in flight finish.
///
/// ```
/// use tower_ssr::balance::{Endpoints, RoundRobin};
///
/// let set = Endpoints::new(RoundRobin::new());
/// let a = set.add("a", "worker a")?;
/// let b = set.add_weighted("b", "worker b", 2)?;
/// assert_eq!(set.len(), 2);
/// set.drain(a);
/// assert_eq!(set.len(), 1); // still listed in stats, but picks skip it
/// assert_eq!(set.stats().len(), 2);
/// set.remove(b);
/// assert!(set.is_empty());
/// # Ok::<(), tower_ssr::balance::EndpointError>(())
/// ```
pub struct Endpoints<T> {
    pub(crate) shared: Arc<Shared<T>>,
}

impl<T> Clone for Endpoints<T> {
    fn clone(&self) -> Self {
        Endpoints {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> fmt::Debug for Endpoints<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.shared.snapshot.load();
        f.debug_struct("Endpoints")
            .field("active", &snap.states.len())
            .field("strategy", &self.shared.strategy)
            .field("health", &self.shared.health)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Endpoints`] set with a strategy and health settings.
#[derive(Debug)]
#[must_use]
pub struct EndpointsBuilder {
    strategy: Box<dyn Strategy>,
    health: PassiveHealth,
}

impl EndpointsBuilder {
    /// How a request's endpoint is chosen. Default: [`PowerOfTwo`].
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.strategy = Box::new(strategy);
        self
    }

    /// When failing endpoints are taken out. Default: [`PassiveHealth::new`].
    pub fn health(mut self, health: PassiveHealth) -> Self {
        self.health = health;
        self
    }

    /// Builds the empty set.
    #[must_use]
    pub fn build<T: Clone>(self) -> Endpoints<T> {
        let prepared = self.strategy.prepare(&[], &[]);
        Endpoints {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(Snapshot {
                    states: Vec::new(),
                    values: Vec::new(),
                    weights: Vec::new(),
                    hashes: Vec::new(),
                    uniform: true,
                    prepared,
                }),
                list: Mutex::new(List {
                    entries: Vec::new(),
                    next_id: 0,
                    generation: 0,
                }),
                published: Mutex::new(0),
                strategy: self.strategy,
                health: self.health,
            }),
        }
    }
}

impl Endpoints<()> {
    /// A builder for a set with non-default health settings; the type of
    /// the endpoints is chosen by [`build`](EndpointsBuilder::build).
    pub fn builder() -> EndpointsBuilder {
        EndpointsBuilder {
            strategy: Box::new(PowerOfTwo::new()),
            health: PassiveHealth::new(),
        }
    }
}

impl<T: Clone> Endpoints<T> {
    /// An empty set that picks with `strategy` and default health settings.
    pub fn new(strategy: impl Strategy) -> Self {
        Endpoints::builder().strategy(strategy).build()
    }

    /// Adds an endpoint of weight 1.
    ///
    /// # Errors
    ///
    /// When another endpoint has the same name.
    pub fn add(&self, name: &str, value: T) -> Result<EndpointId, EndpointError> {
        self.add_weighted(name, value, 1)
    }

    /// Adds an endpoint with a weight (its share relative to the others;
    /// 0 adds it drained).
    ///
    /// # Errors
    ///
    /// When another endpoint has the same name.
    pub fn add_weighted(
        &self,
        name: &str,
        value: T,
        weight: u32,
    ) -> Result<EndpointId, EndpointError> {
        let mut list = self.shared.lock_list();
        if list.entries.iter().any(|(s, _)| &*s.name == name) {
            return Err(EndpointError::DuplicateName(name.to_owned()));
        }
        let id = EndpointId(list.next_id);
        list.next_id += 1;
        list.entries
            .push((Arc::new(EndpointState::new(id, name, weight)), value));
        let draft = Self::draft(&mut list);
        drop(list);
        self.publish(draft);
        Ok(id)
    }

    /// Removes an endpoint; requests in flight on it finish. Returns whether
    /// it was there.
    #[allow(clippy::must_use_candidate)] // called for its effect
    pub fn remove(&self, id: EndpointId) -> bool {
        let mut list = self.shared.lock_list();
        let before = list.entries.len();
        list.entries.retain(|(s, _)| s.id != id);
        let found = list.entries.len() != before;
        if found {
            let draft = Self::draft(&mut list);
            drop(list);
            self.publish(draft);
        }
        found
    }

    /// Changes an endpoint's weight, keeping its load and health. Weight 0
    /// drains it. Returns whether it was there.
    #[allow(clippy::must_use_candidate)] // called for its effect
    pub fn set_weight(&self, id: EndpointId, weight: u32) -> bool {
        let mut list = self.shared.lock_list();
        let Some((state, _)) = list.entries.iter().find(|(s, _)| s.id == id) else {
            return false;
        };
        state.weight.store(weight, Ordering::Relaxed);
        let draft = Self::draft(&mut list);
        drop(list);
        self.publish(draft);
        true
    }

    /// Stops sending new requests to an endpoint (weight 0); the ones in
    /// flight finish. Returns whether it was there.
    #[allow(clippy::must_use_candidate)] // called for its effect
    pub fn drain(&self, id: EndpointId) -> bool {
        self.set_weight(id, 0)
    }

    /// The id of the endpoint with this name.
    #[must_use]
    pub fn id_of(&self, name: &str) -> Option<EndpointId> {
        let list = self.shared.lock_list();
        list.entries
            .iter()
            .find(|(s, _)| &*s.name == name)
            .map(|(s, _)| s.id)
    }

    /// Copies what the next snapshot needs, under the list's lock.
    fn draft(list: &mut List<T>) -> Draft<T> {
        list.generation += 1;
        let active: Vec<_> = list
            .entries
            .iter()
            .filter(|(s, _)| s.weight.load(Ordering::Relaxed) > 0)
            .collect();
        Draft {
            generation: list.generation,
            weights: active
                .iter()
                .map(|(s, _)| s.weight.load(Ordering::Relaxed))
                .collect(),
            hashes: active.iter().map(|(s, _)| s.hash).collect(),
            states: active.iter().map(|(s, _)| Arc::clone(s)).collect(),
            values: active.iter().map(|(_, v)| v.clone()).collect(),
        }
    }

    /// Builds and stores a snapshot, outside the list's lock: a strategy's
    /// `prepare` (a long weighted cycle, a Maglev table) must not stall
    /// ejections, stats or other changes to the set.
    fn publish(&self, draft: Draft<T>) {
        let prepared = self.shared.strategy.prepare(&draft.weights, &draft.hashes);
        let snapshot = Snapshot {
            states: draft.states,
            values: draft.values,
            uniform: draft.weights.windows(2).all(|w| w[0] == w[1]),
            weights: draft.weights,
            hashes: draft.hashes,
            prepared,
        };
        let mut published = self
            .shared
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if draft.generation > *published {
            *published = draft.generation;
            self.shared.snapshot.store(Arc::new(snapshot));
        }
    }
}

impl<T> Endpoints<T> {
    /// Active endpoints: those with a weight above 0, healthy or not.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.snapshot.load().states.len()
    }

    /// Whether no endpoint is active (every request would get a `503`).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The endpoint a request with this key would go to now, without
    /// sending anything or counting it in flight (a round robin still
    /// advances). `None` when no endpoint is eligible.
    ///
    /// ```
    /// use tower_ssr::balance::{hash_key, Endpoints, Rendezvous};
    ///
    /// let set = Endpoints::new(Rendezvous::new());
    /// for name in ["a", "b", "c"] {
    ///     set.add(name, ())?;
    /// }
    /// let home = set.pick(Some(hash_key(b"user-42")));
    /// assert_eq!(set.pick(Some(hash_key(b"user-42"))), home);
    /// # Ok::<(), tower_ssr::balance::EndpointError>(())
    /// ```
    #[must_use]
    pub fn pick(&self, key: Option<u64>) -> Option<EndpointId> {
        let snap = self.shared.snapshot.load();
        for fail_open in [false, true] {
            let candidates = crate::balance::strategy::Candidates {
                states: &snap.states,
                weights: &snap.weights,
                hashes: &snap.hashes,
                uniform: snap.uniform,
                prepared: &*snap.prepared,
                key,
                tried: &[],
                fail_open,
                now: std::cell::Cell::new(None),
            };
            if let Some(i) = self.shared.strategy.pick(&candidates) {
                return snap.states.get(i).map(|s| s.id);
            }
        }
        None
    }

    /// Statistics of every endpoint, drained ones included, in the order
    /// they were added.
    #[must_use]
    pub fn stats(&self) -> Vec<EndpointStats> {
        let list = self.shared.lock_list();
        list.entries.iter().map(|(s, _)| s.stats()).collect()
    }

    /// Statistics of one endpoint.
    #[must_use]
    pub fn stats_of(&self, id: EndpointId) -> Option<EndpointStats> {
        let list = self.shared.lock_list();
        list.entries
            .iter()
            .find(|(s, _)| s.id == id)
            .map(|(s, _)| s.stats())
    }

    /// Every endpoint with its value, for probes.
    #[cfg(feature = "tokio")]
    pub(crate) fn entries(&self) -> Vec<(Arc<EndpointState>, T)>
    where
        T: Clone,
    {
        let list = self.shared.lock_list();
        list.entries.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::RoundRobin;

    #[test]
    fn duplicate_names_are_refused() {
        let set = Endpoints::new(RoundRobin::new());
        set.add("a", 1).unwrap();
        assert_eq!(
            set.add("a", 2),
            Err(EndpointError::DuplicateName("a".into()))
        );
    }

    #[test]
    fn ids_are_never_reused_after_removal() {
        let set = Endpoints::new(RoundRobin::new());
        let a = set.add("a", 1).unwrap();
        assert!(set.remove(a));
        let b = set.add("a", 1).unwrap();
        assert_ne!(a, b);
        assert!(!set.remove(a));
    }

    #[test]
    fn weight_zero_drains_without_forgetting_state() {
        let set = Endpoints::new(RoundRobin::new());
        let a = set.add("a", 1).unwrap();
        set.add("b", 2).unwrap();
        let state = Arc::clone(&set.shared.snapshot.load().states[0]);
        state.in_flight.fetch_add(3, Ordering::Relaxed);
        assert!(set.drain(a));
        assert_eq!(set.len(), 1);
        assert!(set.set_weight(a, 5));
        let snap = set.shared.snapshot.load();
        let again = snap.states.iter().find(|s| s.id == a).unwrap();
        assert!(Arc::ptr_eq(again, &state));
        assert_eq!(set.stats_of(a).unwrap().in_flight, 3);
        assert_eq!(set.stats_of(a).unwrap().weight, 5);
    }

    #[test]
    fn adding_with_weight_zero_is_drained_not_a_panic() {
        let set = Endpoints::new(crate::balance::Maglev::new());
        set.add_weighted("a", 1, 0).unwrap();
        assert!(set.is_empty());
        assert_eq!(set.stats().len(), 1);
    }

    #[test]
    fn name_hash_is_stable_xxh3() {
        let s = EndpointState::new(EndpointId(0), "http://127.0.0.1:9001", 1);
        assert_eq!(s.hash, xxhash_rust::xxh3::xxh3_64(b"http://127.0.0.1:9001"));
    }
}
