use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::endpoint::{EndpointId, EndpointState, Prepared};

/// How a balancer chooses an endpoint for a request.
///
/// [`prepare`](Strategy::prepare) runs once per change of the set (add,
/// remove, weight) and may build tables; [`pick`](Strategy::pick) runs per
/// request and should cost tens of nanoseconds. A pick only chooses among
/// [`Candidates::is_eligible`] endpoints; it returns `None` when there is
/// none, and the balancer then fails open or answers `503`.
pub trait Strategy: fmt::Debug + Send + Sync + 'static {
    /// Precomputes what picks need for this set: `weights[i]` (all above
    /// 0) and the stable name hash `hashes[i]` of each active endpoint.
    fn prepare(&self, weights: &[u32], hashes: &[u64]) -> Arc<dyn Any + Send + Sync> {
        let _ = (weights, hashes);
        Arc::new(())
    }

    /// Picks the index of an eligible candidate.
    fn pick(&self, candidates: &Candidates<'_>) -> Option<usize>;
}

/// The endpoints a [`Strategy`] picks from for one request.
pub struct Candidates<'a> {
    pub(crate) states: &'a [Arc<EndpointState>],
    pub(crate) weights: &'a [u32],
    pub(crate) hashes: &'a [u64],
    pub(crate) uniform: bool,
    pub(crate) prepared: &'a (dyn Any + Send + Sync),
    pub(crate) key: Option<u64>,
    pub(crate) tried: &'a [EndpointId],
    pub(crate) fail_open: bool,
    pub(crate) now: std::cell::Cell<Option<u64>>,
}

impl fmt::Debug for Candidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidates")
            .field("len", &self.states.len())
            .field("key", &self.key)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl<'a> Candidates<'a> {
    /// Number of endpoints, eligible or not.
    #[must_use]
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether there are no endpoints at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Whether endpoint `i` may take this request: not already tried by it,
    /// and healthy (unless every endpoint is out and the balancer fails
    /// open).
    #[must_use]
    pub fn is_eligible(&self, i: usize) -> bool {
        let s = &self.states[i];
        if !self.tried.is_empty() && self.tried.contains(&s.id) {
            return false;
        }
        if self.fail_open {
            return true;
        }
        let mut now = self.now.get();
        let ok = s.is_healthy_for_pick(&mut now);
        self.now.set(now);
        ok
    }

    /// Requests in flight on endpoint `i`, bodies included.
    #[must_use]
    pub fn in_flight(&self, i: usize) -> usize {
        self.states[i].in_flight.load(Ordering::Relaxed)
    }

    /// The weight of endpoint `i` (at least 1).
    #[must_use]
    pub fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }

    /// Whether all weights are equal.
    #[must_use]
    pub fn uniform_weights(&self) -> bool {
        self.uniform
    }

    /// The stable hash of endpoint `i`'s name (xxh3).
    #[must_use]
    pub fn endpoint_hash(&self, i: usize) -> u64 {
        self.hashes[i]
    }

    /// The request's hash key, if the balancer extracted one.
    #[must_use]
    pub fn key(&self) -> Option<u64> {
        self.key
    }

    /// What [`Strategy::prepare`] built, if it is a `P`.
    #[must_use]
    pub fn prepared<P: 'static>(&self) -> Option<&'a P> {
        self.prepared.downcast_ref::<P>()
    }

    /// The same candidates with another prepared value (for a strategy that
    /// delegates to another).
    #[must_use]
    pub fn with_prepared<'b>(&'b self, prepared: &'b (dyn Any + Send + Sync)) -> Candidates<'b> {
        Candidates {
            states: self.states,
            weights: self.weights,
            hashes: self.hashes,
            uniform: self.uniform,
            prepared,
            key: self.key,
            tried: self.tried,
            fail_open: self.fail_open,
            now: std::cell::Cell::new(self.now.get()),
        }
    }

    /// `a` has less load per unit of weight than `b`.
    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let (la, lb) = (self.in_flight(a) as u128, self.in_flight(b) as u128);
        la * u128::from(self.weights[b]) < lb * u128::from(self.weights[a])
    }

    fn same_load(&self, a: usize, b: usize) -> bool {
        let (la, lb) = (self.in_flight(a) as u128, self.in_flight(b) as u128);
        la * u128::from(self.weights[b]) == lb * u128::from(self.weights[a])
    }

    /// The first eligible index scanning from `start`, wrapping.
    fn first_eligible_from(&self, start: usize) -> Option<usize> {
        let n = self.len();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.is_eligible(i))
    }
}

// ---------------------------------------------------------------------------
// Round robin (smooth weighted)

/// Round robin, weighted smoothly: nginx's algorithm, so weights 5, 1, 1
/// give `a a b a c a a`, never five `a` in a row. With equal weights it is
/// plain round robin.
///
/// The sequence is computed once per change of the set and walked with one
/// atomic counter, so a pick takes no lock. Weights are divided by their
/// greatest common divisor; a cycle longer than 65 536 picks is scaled down
/// proportionally (every endpoint keeps at least one slot).
///
/// When the endpoint whose turn it is cannot take the request (ejected,
/// draining, already tried), the turn goes to the eligible endpoints in
/// proportion to their weights, by a second rotation of their own; never
/// all to the next endpoint of the cycle, which would double its load.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
    // Turns given away by endpoints that could not take them.
    spill: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first endpoint.
    #[must_use]
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

const MAX_CYCLE: u64 = 1 << 16;

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// nginx's smooth weighted round robin, unrolled over one cycle.
pub(crate) fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g)).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_CYCLE {
        for x in &mut w {
            *x = (*x * MAX_CYCLE / total).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    let total_i = total as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        // One pass per slot (raise every weight and find the first largest)
        // rather than two: the build is O(cycle x n).
        let mut best = 0;
        let mut best_current = i64::MIN;
        for (i, c) in current.iter_mut().enumerate() {
            *c += w[i] as i64;
            if *c > best_current {
                best_current = *c;
                best = i;
            }
        }
        current[best] -= total_i;
        out.push(best as u32);
    }
    out
}

impl Strategy for RoundRobin {
    fn prepare(&self, weights: &[u32], _hashes: &[u64]) -> Arc<dyn Any + Send + Sync> {
        Arc::new(smooth_cycle(weights))
    }

    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        if c.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(cycle) = c.prepared::<Vec<u32>>().filter(|v| !v.is_empty()) else {
            return c.first_eligible_from(turn % c.len());
        };
        let i = cycle[turn % cycle.len()] as usize;
        if i < c.len() && c.is_eligible(i) {
            return Some(i);
        }
        let spill = self.spill.fetch_add(1, Ordering::Relaxed);
        weighted_turn(c, spill)
    }
}

/// The `turn`-th pick of a weighted rotation over the eligible endpoints
/// only: each gets `weight / eligible weight` of the turns. O(n), for turns
/// an ineligible endpoint gave away.
fn weighted_turn(c: &Candidates<'_>, turn: usize) -> Option<usize> {
    let total: u64 = (0..c.len())
        .filter(|&i| c.is_eligible(i))
        .map(|i| u64::from(c.weights[i]))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = turn as u64 % total;
    for i in 0..c.len() {
        if c.is_eligible(i) {
            let w = u64::from(c.weights[i]);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
    }
    // Eligibility changed between the two passes.
    c.first_eligible_from(0)
}

// ---------------------------------------------------------------------------
// Least in-flight

/// The endpoint with the fewest requests in flight per unit of weight (HAProxy
/// `leastconn`, nginx `least_conn`). Ties take turns among the tied
/// endpoints only, so equal endpoints share the traffic evenly, and an
/// ejected endpoint's share spreads over all the others. A pick reads
/// every endpoint's counter: prefer [`PowerOfTwo`] for large sets.
#[derive(Debug, Default)]
pub struct LeastInFlight {
    start: AtomicUsize,
}

impl LeastInFlight {
    /// A least-in-flight picker.
    #[must_use]
    pub fn new() -> Self {
        LeastInFlight::default()
    }
}

impl Strategy for LeastInFlight {
    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let turn = self.start.fetch_add(1, Ordering::Relaxed);
        // The least loaded, and how many share its load.
        let mut best: Option<usize> = None;
        let mut ties = 0usize;
        for i in 0..n {
            if !c.is_eligible(i) {
                continue;
            }
            match best {
                Some(b) if c.less_loaded(b, i) => {}
                Some(b) if c.same_load(i, b) => ties += 1,
                _ => {
                    best = Some(i);
                    ties = 1;
                }
            }
        }
        let b = best?;
        if ties <= 1 {
            return Some(b);
        }
        // Ties take turns among themselves only: an ineligible endpoint's
        // turn must not fall to its neighbour.
        let mut k = turn % ties;
        for i in b..n {
            if c.is_eligible(i) && c.same_load(i, b) {
                if k == 0 {
                    return Some(i);
                }
                k -= 1;
            }
        }
        Some(b)
    }
}

// ---------------------------------------------------------------------------
// Power of two choices

/// wyrand (Wang Yi's generator): the state advances by a constant, so one
/// atomic add shared by every clone of the balancer gives each pick its own
/// number with no lock, and a seed makes runs repeatable.
#[derive(Debug)]
pub(crate) struct WyRand(AtomicU64);

impl WyRand {
    pub(crate) fn new(seed: u64) -> Self {
        WyRand(AtomicU64::new(seed))
    }

    pub(crate) fn next(&self) -> u64 {
        let s = self
            .0
            .fetch_add(0xa076_1d64_78bd_642f, Ordering::Relaxed)
            .wrapping_add(0xa076_1d64_78bd_642f);
        mum(s, s ^ 0xe703_7ed1_a0b4_28db)
    }
}

/// The 128-bit multiply-fold mixer of wyhash.
#[inline]
pub(crate) fn mum(a: u64, b: u64) -> u64 {
    let r = u128::from(a).wrapping_mul(u128::from(b));
    (r as u64) ^ ((r >> 64) as u64)
}

/// `x` in `0..n` without the bias of `%` (Lemire's multiply-shift).
#[inline]
fn below(x: u64, n: usize) -> usize {
    ((u128::from(x) * n as u128) >> 64) as usize
}

/// Power of two choices: two endpoints drawn at random, the one with fewer
/// requests in flight per unit of weight wins (tower's P2C over
/// `PendingRequests`, Envoy's least-request). Constant cost at any size,
/// and never herds onto one endpoint the way a stale "least" can.
#[derive(Debug)]
pub struct PowerOfTwo {
    rng: WyRand,
}

impl Default for PowerOfTwo {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerOfTwo {
    /// Seeded from the clock and the address of a local.
    #[must_use]
    pub fn new() -> Self {
        let local = 0u8;
        let addr = std::ptr::addr_of!(local) as u64;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::with_seed(mum(nanos ^ 0x9e37_79b9_7f4a_7c15, addr | 1))
    }

    /// A repeatable sequence of choices, for tests and benchmarks.
    #[must_use]
    pub fn with_seed(seed: u64) -> Self {
        PowerOfTwo {
            rng: WyRand::new(seed),
        }
    }
}

impl Strategy for PowerOfTwo {
    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        let n = c.len();
        match n {
            0 => return None,
            1 => return c.first_eligible_from(0),
            _ => {}
        }
        for _ in 0..3 {
            let r = self.rng.next();
            let a = below(r, n);
            // A second draw from the other n-1, so the two always differ.
            let b = (a + 1 + below(r.rotate_left(32), n - 1)) % n;
            match (c.is_eligible(a), c.is_eligible(b)) {
                (true, true) => {
                    let pick = if c.less_loaded(b, a) || (c.same_load(a, b) && r & 1 == 1) {
                        b
                    } else {
                        a
                    };
                    return Some(pick);
                }
                (true, false) => return Some(a),
                (false, true) => return Some(b),
                (false, false) => {}
            }
        }
        // Most endpoints are out: scan from a random place.
        c.first_eligible_from(below(self.rng.next(), n))
    }
}

// ---------------------------------------------------------------------------
// Consistent hashing

/// A bound on load for consistent hashing (Mirrokni et al., "Consistent
/// Hashing with Bounded Loads"): an endpoint takes a key only while its
/// requests in flight stay under `factor` × the mean; past that the key
/// goes to its next choice.
#[derive(Debug, Clone, Copy)]
struct Bound(f64);

impl Bound {
    /// The most requests in flight an endpoint may have to accept one more.
    fn limit(self, c: &Candidates<'_>) -> usize {
        let total: usize = (0..c.len()).map(|i| c.in_flight(i)).sum();
        let mean = (total + 1) as f64 / c.len().max(1) as f64;
        (mean * self.0).ceil() as usize
    }
}

fn bound_factor(factor: f64) -> Option<Bound> {
    // Below 1 no assignment could satisfy every endpoint; NaN means none.
    if factor.is_nan() {
        None
    } else {
        Some(Bound(factor.max(1.0)))
    }
}

/// Rendezvous (highest random weight) hashing: each key goes to the endpoint
/// with the highest hash of (key, endpoint name). When one of n endpoints
/// leaves, only its keys move (about 1/n of them), and every process that
/// names endpoints alike agrees.
///
/// Weighted with the logarithmic method (score = w / −ln u). A pick hashes
/// every endpoint: prefer [`Maglev`] beyond a few dozen endpoints. Requests
/// without a key go to the fallback strategy ([`PowerOfTwo`] unless set),
/// never all to one endpoint.
#[derive(Debug)]
pub struct Rendezvous {
    bound: Option<Bound>,
    fallback: Box<dyn Strategy>,
}

impl Default for Rendezvous {
    fn default() -> Self {
        Self::new()
    }
}

impl Rendezvous {
    /// Rendezvous hashing, with [`PowerOfTwo`] for requests without a key.
    #[must_use]
    pub fn new() -> Self {
        Rendezvous {
            bound: None,
            fallback: Box::new(PowerOfTwo::new()),
        }
    }

    /// Bounded load: an endpoint with more than `factor` × the mean requests
    /// in flight passes the key on to its next choice. 1.25 is a common
    /// choice; values below 1 count as 1.
    #[must_use]
    pub fn bounded_load(mut self, factor: f64) -> Self {
        self.bound = bound_factor(factor);
        self
    }

    /// The strategy for requests that carry no key.
    #[must_use]
    pub fn fallback(mut self, strategy: impl Strategy) -> Self {
        self.fallback = Box::new(strategy);
        self
    }
}

/// Rendezvous score of endpoint `i` for `key`; higher wins.
#[inline]
fn rendezvous_score(c: &Candidates<'_>, key: u64, i: usize) -> u64 {
    mum(
        key ^ 0x2d35_8dcc_aa6c_78a5,
        c.hashes[i] ^ 0x8bb8_4b93_962e_acc9,
    )
}

fn weighted_score(c: &Candidates<'_>, key: u64, i: usize) -> f64 {
    // u in (0, 1) from the top 53 bits; -ln(u) > 0.
    let u = ((rendezvous_score(c, key, i) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(c.weights[i]) / -u.ln()
}

struct WithFallback {
    fallback: Prepared,
}

impl Strategy for Rendezvous {
    fn prepare(&self, weights: &[u32], hashes: &[u64]) -> Arc<dyn Any + Send + Sync> {
        Arc::new(WithFallback {
            fallback: self.fallback.prepare(weights, hashes),
        })
    }

    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        let Some(key) = c.key() else {
            let fb = c.prepared::<WithFallback>().map(|p| &*p.fallback);
            return match fb {
                Some(p) => self.fallback.pick(&c.with_prepared(p)),
                None => self.fallback.pick(c),
            };
        };
        let limit = self.bound.map(|b| b.limit(c));
        if limit.is_none() && c.uniform_weights() {
            // Fast path: the highest score wins unless it is out, so check
            // health once, not for every new leader.
            let mut best = 0;
            let mut best_score = 0u64;
            for (i, &h) in c.hashes.iter().enumerate() {
                let s = mum(key ^ 0x2d35_8dcc_aa6c_78a5, h ^ 0x8bb8_4b93_962e_acc9);
                if s > best_score || i == 0 {
                    best = i;
                    best_score = s;
                }
            }
            if best < c.len() && c.is_eligible(best) {
                return Some(best);
            }
        }
        let under = |i: usize| limit.map_or(true, |l| c.in_flight(i) < l);
        let mut best: Option<usize> = None;
        if c.uniform_weights() {
            let mut best_score = 0u64;
            for i in 0..c.len() {
                let s = rendezvous_score(c, key, i);
                if (best.is_none() || s > best_score) && c.is_eligible(i) && under(i) {
                    best = Some(i);
                    best_score = s;
                }
            }
        } else {
            let mut best_score = f64::NEG_INFINITY;
            for i in 0..c.len() {
                let s = weighted_score(c, key, i);
                if (best.is_none() || s > best_score) && c.is_eligible(i) && under(i) {
                    best = Some(i);
                    best_score = s;
                }
            }
        }
        // Every endpoint over the bound (they all count the same load):
        // fall back to the plain choice rather than refuse.
        if best.is_none() && limit.is_some() {
            return Rendezvous {
                bound: None,
                fallback: Box::new(PowerOfTwo::with_seed(0)),
            }
            .pick(c);
        }
        best
    }
}

/// Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of a prime
/// size (≥ 100 slots per endpoint, up to 65 537) filled by each endpoint in
/// turn along its own permutation, weighted. A pick is one table read, at
/// any size; when one of n endpoints leaves, about 1/n of the keys move
/// (slightly more than rendezvous). When the chosen endpoint is out, the
/// key draws further slots (a function of the key alone), so its keys spread
/// over the others by weight. Requests without a key go to the
/// fallback strategy ([`PowerOfTwo`] unless set).
#[derive(Debug)]
pub struct Maglev {
    bound: Option<Bound>,
    fallback: Box<dyn Strategy>,
}

impl Default for Maglev {
    fn default() -> Self {
        Self::new()
    }
}

impl Maglev {
    /// Maglev hashing, with [`PowerOfTwo`] for requests without a key.
    #[must_use]
    pub fn new() -> Self {
        Maglev {
            bound: None,
            fallback: Box::new(PowerOfTwo::new()),
        }
    }

    /// Bounded load, as [`Rendezvous::bounded_load`].
    #[must_use]
    pub fn bounded_load(mut self, factor: f64) -> Self {
        self.bound = bound_factor(factor);
        self
    }

    /// The strategy for requests that carry no key.
    #[must_use]
    pub fn fallback(mut self, strategy: impl Strategy) -> Self {
        self.fallback = Box::new(strategy);
        self
    }
}

const MAGLEV_SIZES: [u64; 6] = [251, 1021, 4093, 16381, 32749, 65537];

/// Builds the Maglev lookup table; entries are endpoint indices.
pub(crate) fn maglev_table(weights: &[u32], hashes: &[u64]) -> Vec<u32> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let want = (n as u64).saturating_mul(100);
    let m = MAGLEV_SIZES
        .iter()
        .copied()
        .find(|&p| p >= want)
        .unwrap_or(MAGLEV_SIZES[MAGLEV_SIZES.len() - 1]);
    let offset: Vec<u64> = hashes
        .iter()
        .map(|&h| mum(h, 0x5851_f42d_4c95_7f2d) % m)
        .collect();
    let skip: Vec<u64> = hashes
        .iter()
        .map(|&h| mum(h, 0x1405_7b7e_f767_814f) % (m - 1) + 1)
        .collect();
    let max_w = u64::from(weights.iter().copied().max().unwrap_or(1).max(1));
    let mut next = vec![0u64; n];
    let mut credit = vec![0u64; n];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    'fill: loop {
        for i in 0..n {
            // Weighted turns: an endpoint places one entry per `max_w` of
            // accumulated weight, so shares follow the weights.
            credit[i] += u64::from(weights[i]);
            while credit[i] >= max_w {
                credit[i] -= max_w;
                loop {
                    let slot = ((offset[i] + next[i] * skip[i]) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

struct MaglevPrepared {
    table: Vec<u32>,
    fallback: Prepared,
}

/// How many table slots a pick walks past out-of-service endpoints before
/// falling back to the set's rendezvous order.
const MAGLEV_WALK: usize = 256;

impl Strategy for Maglev {
    fn prepare(&self, weights: &[u32], hashes: &[u64]) -> Arc<dyn Any + Send + Sync> {
        Arc::new(MaglevPrepared {
            table: maglev_table(weights, hashes),
            fallback: self.fallback.prepare(weights, hashes),
        })
    }

    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        let prepared = c.prepared::<MaglevPrepared>();
        let Some(key) = c.key() else {
            return match prepared {
                Some(p) => self.fallback.pick(&c.with_prepared(&*p.fallback)),
                None => self.fallback.pick(c),
            };
        };
        let table = match prepared {
            Some(p) if !p.table.is_empty() => &p.table,
            _ => return None,
        };
        let limit = self.bound.map(|b| b.limit(c));
        for k in 0..table.len().min(MAGLEV_WALK) {
            // The key's slot, then further slots drawn from the key alone:
            // a neighbouring slot would hand an ejected endpoint's keys to
            // whichever endpoint the fill put next to it (2.4x the share of
            // the others with four endpoints), a fresh draw hands them out
            // by table share, that is by weight.
            let slot = below(
                mum(
                    key ^ (k as u64).wrapping_mul(0xa076_1d64_78bd_642f),
                    0x9e37_79b9_7f4a_7c15,
                ),
                table.len(),
            );
            let i = table[slot] as usize;
            if i < c.len() && c.is_eligible(i) && limit.map_or(true, |l| c.in_flight(i) < l) {
                return Some(i);
            }
        }
        // Many endpoints out: the same stable order rendezvous would give.
        let rv = Rendezvous {
            bound: None,
            fallback: Box::new(PowerOfTwo::with_seed(0)),
        };
        rv.pick(c)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::balance::endpoint::Snapshot;

    /// Candidates over `n` fresh endpoints with these weights.
    pub(crate) struct Fixture {
        pub(crate) states: Vec<Arc<EndpointState>>,
        pub(crate) weights: Vec<u32>,
        pub(crate) hashes: Vec<u64>,
        pub(crate) prepared: Prepared,
    }

    impl Fixture {
        pub(crate) fn new(strategy: &dyn Strategy, weights: &[u32]) -> Self {
            let set = crate::balance::Endpoints::<()>::new(RoundRobin::new());
            for (i, w) in weights.iter().enumerate() {
                set.add_weighted(&format!("endpoint-{i}"), (), *w).unwrap();
            }
            let snap: Arc<Snapshot<()>> = set.shared.snapshot.load_full();
            let prepared = strategy.prepare(&snap.weights, &snap.hashes);
            Fixture {
                states: snap.states.clone(),
                weights: snap.weights.clone(),
                hashes: snap.hashes.clone(),
                prepared,
            }
        }

        pub(crate) fn candidates<'a>(
            &'a self,
            key: Option<u64>,
            tried: &'a [EndpointId],
        ) -> Candidates<'a> {
            Candidates {
                states: &self.states,
                weights: &self.weights,
                hashes: &self.hashes,
                uniform: self.weights.windows(2).all(|w| w[0] == w[1]),
                prepared: &*self.prepared,
                key,
                tried,
                fail_open: false,
                now: std::cell::Cell::new(None),
            }
        }

        fn load(&self, i: usize, n: usize) {
            self.states[i].in_flight.store(n, Ordering::Relaxed);
        }
    }

    fn counts(s: &dyn Strategy, f: &Fixture, picks: usize) -> Vec<usize> {
        let mut out = vec![0; f.states.len()];
        for _ in 0..picks {
            out[s.pick(&f.candidates(None, &[])).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let s = RoundRobin::new();
        let f = Fixture::new(&s, &[1, 1, 1]);
        let seq: Vec<_> = (0..7)
            .map(|_| s.pick(&f.candidates(None, &[])).unwrap())
            .collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn smooth_weighted_matches_nginx_sequence() {
        // The example from nginx's commit introducing smooth weighting.
        assert_eq!(smooth_cycle(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_cycle(&[2, 4]), [1, 0, 1]);
    }

    #[test]
    fn huge_weights_are_scaled_not_allocated() {
        let cycle = smooth_cycle(&[u32::MAX, 1, 3]);
        assert!(cycle.len() as u64 <= MAX_CYCLE + 3);
        assert!(cycle.contains(&1) && cycle.contains(&2));
    }

    #[test]
    fn round_robin_skips_tried_endpoints() {
        let s = RoundRobin::new();
        let f = Fixture::new(&s, &[1, 1, 1]);
        let tried = [f.states[0].id, f.states[1].id];
        for _ in 0..5 {
            assert_eq!(s.pick(&f.candidates(None, &tried)), Some(2));
        }
        let all = [f.states[0].id, f.states[1].id, f.states[2].id];
        assert_eq!(s.pick(&f.candidates(None, &all)), None);
    }

    #[test]
    fn least_in_flight_prefers_the_idle_endpoint() {
        let s = LeastInFlight::new();
        let f = Fixture::new(&s, &[1, 1, 1]);
        f.load(0, 4);
        f.load(1, 1);
        f.load(2, 9);
        for _ in 0..6 {
            assert_eq!(s.pick(&f.candidates(None, &[])), Some(1));
        }
    }

    #[test]
    fn least_in_flight_breaks_ties_fairly() {
        let s = LeastInFlight::new();
        let f = Fixture::new(&s, &[1, 1, 1, 1]);
        assert_eq!(counts(&s, &f, 400), [100, 100, 100, 100]);
    }

    #[test]
    fn least_in_flight_weighs_load_by_weight() {
        let s = LeastInFlight::new();
        let f = Fixture::new(&s, &[1, 4]);
        f.load(0, 1);
        f.load(1, 3);
        // 3/4 < 1/1
        assert_eq!(s.pick(&f.candidates(None, &[])), Some(1));
    }

    #[test]
    fn p2c_is_repeatable_with_a_seed() {
        let f = Fixture::new(&PowerOfTwo::new(), &[1; 8]);
        let a = PowerOfTwo::with_seed(42);
        let b = PowerOfTwo::with_seed(42);
        for _ in 0..100 {
            assert_eq!(
                a.pick(&f.candidates(None, &[])),
                b.pick(&f.candidates(None, &[]))
            );
        }
    }

    #[test]
    fn p2c_avoids_the_loaded_endpoint() {
        let s = PowerOfTwo::with_seed(7);
        let f = Fixture::new(&s, &[1, 1, 1]);
        f.load(0, 50);
        let c = counts(&s, &f, 3000);
        // The two draws always differ, so the loaded endpoint always loses.
        assert_eq!(c[0], 0);
        assert!(c[1] > 1000 && c[2] > 1000, "{c:?}");
    }

    #[test]
    fn p2c_spreads_over_all_when_idle() {
        let s = PowerOfTwo::with_seed(1);
        let f = Fixture::new(&s, &[1; 4]);
        let c = counts(&s, &f, 4000);
        assert!(c.iter().all(|&n| n > 800), "{c:?}");
    }

    fn keys_moved(make: &dyn Fn() -> Box<dyn Strategy>, n: usize) -> (usize, usize) {
        // Same names before and after; the last endpoint leaves.
        let s = make();
        let all = Fixture::new(&*s, &vec![1; n]);
        let s2 = make();
        let fewer = Fixture::new(&*s2, &vec![1; n - 1]);
        let mut moved = 0;
        let keys = 20_000;
        for k in 0..keys {
            let key = xxhash_rust::xxh3::xxh3_64(&(k as u64).to_le_bytes());
            let a = s.pick(&all.candidates(Some(key), &[])).unwrap();
            let b = s2.pick(&fewer.candidates(Some(key), &[])).unwrap();
            if a != b {
                moved += 1;
            }
        }
        (moved, keys)
    }

    #[test]
    fn rendezvous_moves_about_one_nth_of_keys_when_one_leaves() {
        let (moved, keys) = keys_moved(&|| Box::new(Rendezvous::new()), 8);
        let share = moved as f64 / keys as f64;
        assert!((0.10..0.15).contains(&share), "{share}");
    }

    #[test]
    fn maglev_moves_about_one_nth_of_keys_when_one_leaves() {
        let (moved, keys) = keys_moved(&|| Box::new(Maglev::new()), 8);
        let share = moved as f64 / keys as f64;
        assert!((0.10..0.17).contains(&share), "{share}");
    }

    #[test]
    fn hashing_keeps_a_key_on_one_endpoint() {
        for s in [
            Box::new(Rendezvous::new()) as Box<dyn Strategy>,
            Box::new(Maglev::new()),
        ] {
            let f = Fixture::new(&*s, &[1; 5]);
            let first = s.pick(&f.candidates(Some(99), &[]));
            for _ in 0..50 {
                assert_eq!(s.pick(&f.candidates(Some(99), &[])), first);
            }
        }
    }

    #[test]
    fn hashing_spreads_keys_by_weight() {
        for s in [
            Box::new(Rendezvous::new()) as Box<dyn Strategy>,
            Box::new(Maglev::new()),
        ] {
            let f = Fixture::new(&*s, &[1, 3]);
            let mut c = [0usize; 2];
            for k in 0..8000u64 {
                c[s.pick(&f.candidates(Some(mum(k, 0x1234_5678)), &[]))
                    .unwrap()] += 1;
            }
            let share = c[1] as f64 / 8000.0;
            assert!((0.70..0.80).contains(&share), "{s:?}: {c:?}");
        }
    }

    #[test]
    fn hashing_without_a_key_does_not_pile_onto_one_endpoint() {
        for s in [
            Box::new(Rendezvous::new()) as Box<dyn Strategy>,
            Box::new(Maglev::new()),
        ] {
            let f = Fixture::new(&*s, &[1; 4]);
            let c = counts(&*s, &f, 400);
            assert!(c.iter().filter(|&&n| n > 0).count() >= 3, "{c:?}");
        }
    }

    #[test]
    fn hashing_moves_a_key_off_a_tried_endpoint_only() {
        for s in [
            Box::new(Rendezvous::new()) as Box<dyn Strategy>,
            Box::new(Maglev::new()),
        ] {
            let f = Fixture::new(&*s, &[1; 4]);
            let first = s.pick(&f.candidates(Some(5), &[])).unwrap();
            let tried = [f.states[first].id];
            let second = s.pick(&f.candidates(Some(5), &tried)).unwrap();
            assert_ne!(first, second);
            // and the next pick without exclusions goes back
            assert_eq!(s.pick(&f.candidates(Some(5), &[])), Some(first));
        }
    }

    #[test]
    fn bounded_load_passes_a_hot_key_on() {
        for s in [
            Box::new(Rendezvous::new().bounded_load(1.25)) as Box<dyn Strategy>,
            Box::new(Maglev::new().bounded_load(1.25)),
        ] {
            let f = Fixture::new(&*s, &[1; 4]);
            let home = s.pick(&f.candidates(Some(77), &[])).unwrap();
            f.load(home, 10);
            let next = s.pick(&f.candidates(Some(77), &[])).unwrap();
            assert_ne!(home, next, "{s:?}");
            f.load(home, 0);
            assert_eq!(s.pick(&f.candidates(Some(77), &[])), Some(home));
        }
    }

    #[test]
    fn maglev_table_is_full_and_balanced() {
        let hashes: Vec<u64> = (0..5u64).map(|i| mum(i, 77)).collect();
        let t = maglev_table(&[1; 5], &hashes);
        assert_eq!(t.len(), 1021);
        let mut c = [0usize; 5];
        for &i in &t {
            c[i as usize] += 1;
        }
        assert!(c.iter().all(|&n| (200..=210).contains(&n)), "{c:?}");
    }

    /// Ejects endpoint `i` of the fixture for an hour.
    fn eject(f: &Fixture, i: usize) {
        let health = crate::balance::PassiveHealth::new()
            .base_ejection(std::time::Duration::from_secs(3600));
        f.states[i].eject_for(&health);
    }

    #[test]
    fn round_robin_spreads_an_ejected_endpoints_share_evenly() {
        // Issue 8 §9: 103 vs 197 of 300 when the neighbour took it all.
        let s = RoundRobin::new();
        let f = Fixture::new(&s, &[1, 1, 1]);
        eject(&f, 1);
        assert_eq!(counts(&s, &f, 300), vec![150, 0, 150]);
        for ejected in [0, 2] {
            let s = RoundRobin::new();
            let f = Fixture::new(&s, &[1, 1, 1]);
            eject(&f, ejected);
            let c = counts(&s, &f, 300);
            assert_eq!(c[ejected], 0);
            assert!(c.iter().all(|&n| n == 0 || n == 150), "{c:?}");
        }
    }

    #[test]
    fn round_robin_spreads_an_ejected_endpoints_share_by_weight() {
        let s = RoundRobin::new();
        let f = Fixture::new(&s, &[1, 1, 2, 4]);
        eject(&f, 1);
        // 8 turns per cycle; endpoint 1's one turn goes 1:2:4 to the rest.
        let c = counts(&s, &f, 8 * 7 * 10);
        assert_eq!(c, vec![80, 0, 160, 320]);
    }

    #[test]
    fn least_in_flight_spreads_an_ejected_endpoints_share_evenly() {
        let s = LeastInFlight::new();
        let f = Fixture::new(&s, &[1, 1, 1, 1]);
        eject(&f, 1);
        assert_eq!(counts(&s, &f, 300), vec![100, 0, 100, 100]);
    }

    #[test]
    fn p2c_spreads_an_ejected_endpoints_share_evenly() {
        let s = PowerOfTwo::with_seed(7);
        let f = Fixture::new(&s, &[1, 1, 1]);
        eject(&f, 1);
        let c = counts(&s, &f, 3000);
        assert_eq!(c[1], 0);
        assert!((1350..=1650).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn hashing_spreads_an_ejected_endpoints_keys_over_the_rest() {
        let strategies: [(&str, Box<dyn Strategy>); 4] = [
            ("rendezvous", Box::new(Rendezvous::new())),
            ("maglev", Box::new(Maglev::new())),
            (
                "rendezvous bounded",
                Box::new(Rendezvous::new().bounded_load(1.25)),
            ),
            ("maglev bounded", Box::new(Maglev::new().bounded_load(1.25))),
        ];
        for (name, s) in strategies {
            let f = Fixture::new(&*s, &[1, 1, 1, 1]);
            let keys: Vec<u64> = (0..4000u64)
                .map(|k| mum(k, 0x9e37_79b9_7f4a_7c15))
                .collect();
            let before: Vec<usize> = keys
                .iter()
                .map(|&k| s.pick(&f.candidates(Some(k), &[])).unwrap())
                .collect();
            eject(&f, 1);
            let mut moved_to = [0usize; 4];
            for (&k, &b) in keys.iter().zip(&before) {
                let after = s.pick(&f.candidates(Some(k), &[])).unwrap();
                if b == 1 {
                    moved_to[after] += 1;
                } else {
                    assert_eq!(after, b, "{name}: a key of a healthy endpoint moved");
                }
            }
            let moved: usize = moved_to.iter().sum();
            assert_eq!(moved_to[1], 0, "{name}");
            for i in [0, 2, 3] {
                // Each of the three takes about a third of them, never all.
                assert!(
                    moved_to[i] * 4 > moved && moved_to[i] * 5 < moved * 2,
                    "{name}: {moved_to:?}"
                );
            }
        }
    }
}
