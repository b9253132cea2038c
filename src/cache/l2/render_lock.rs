//! The cross-instance render lock
//! ([`RedisTier::render_lock`](super::RedisTier::render_lock)): before a
//! render on this instance, the entry from Redis if there is one, else the
//! lock, or another instance's entry once it lands; a [`RenderLock`]
//! carries the lock, if taken, and the purge generation read before the
//! render to the write, and releases the lock when dropped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::read::Wanted;

use super::tier::random_id;
use super::Tier;
use crate::cache::entry::{Entry, Reuse};
use crate::cache::flight::Lead;
use crate::cache::handle::{Counters, Shared};
use crate::metrics::L2Outcome;

/// Deletes the lock only if it is still ours: it may have expired and been
/// taken by another instance since.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// What [`Tier::try_lock`] got.
pub(super) enum LockAttempt {
    /// The lock's key and token.
    Taken(String, String),
    Held,
    Failed,
}

/// What a render on this instance carries to its Redis write: the
/// cross-instance render lock if it holds one (dropping this releases it,
/// only if it is still ours, in the background) and the purge generation
/// read before the render.
pub(crate) struct RenderLock {
    pub(super) tier: Arc<Tier>,
    /// The lock's key and token.
    pub(super) held: Option<(String, String)>,
    pub(super) generation: Option<u64>,
}

impl std::fmt::Debug for RenderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderLock")
            .field("key", &self.held.as_ref().map(|(k, _)| k))
            .field("generation", &self.generation)
            .finish()
    }
}

impl Drop for RenderLock {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // it expires by itself
        };
        let Some((key, token)) = self.held.take() else {
            return;
        };
        let tier = Arc::clone(&self.tier);
        rt.spawn(async move { tier.release(&key, &token).await });
    }
}

impl Tier {
    /// Tries to take the render lock for `flight_key` (of cache key `key`,
    /// whose slot it shares): `Taken`, `Held` by
    /// another instance, or `Failed` when Redis refused or did not answer
    /// (out of memory, read-only replica, ...): then no one can publish an
    /// entry through Redis either, so waiting would only delay the render.
    pub(super) async fn try_lock(self: &Arc<Self>, key: &str, flight_key: &str) -> LockAttempt {
        let lkey = self.layout.lock(key, flight_key);
        let token = format!("{:016x}", random_id());
        let ttl = u64::try_from(self.cfg.lock_ttl.as_millis()).unwrap_or(u64::MAX);
        let (k, t) = (lkey.clone(), token.clone());
        let got: Option<Option<String>> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&t)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match got {
            Some(Some(_)) => LockAttempt::Taken(lkey, token),
            Some(None) => LockAttempt::Held,
            None => LockAttempt::Failed,
        }
    }

    /// Before a render on this instance: the entry from Redis if there is
    /// one, else, with the render lock on, another instance's entry once it
    /// lands. When this instance renders, `lead` keeps the render lock if
    /// taken and the purge generation read before the render, for the
    /// write.
    pub(crate) async fn before_render(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        wanted: Wanted<'_>,
        lead: &mut Lead,
    ) -> Option<(Arc<Entry>, Reuse)> {
        self.listen(shared);
        let mut generation = None;
        let mut held = None;
        let found = self.find_or_lock(wanted, &mut generation, &mut held).await;
        if held.is_some() || generation.is_some() {
            lead.render_lock = Some(RenderLock {
                tier: Arc::clone(self),
                held,
                generation,
            });
        }
        found
    }

    async fn find_or_lock(
        self: &Arc<Self>,
        wanted: Wanted<'_>,
        generation: &mut Option<u64>,
        held: &mut Option<(String, String)>,
    ) -> Option<(Arc<Entry>, Reuse)> {
        if let Some(found) = self.lookup(wanted, generation).await {
            return Some(found);
        }
        let wait = self.cfg.lock_wait?;
        let deadline = Instant::now() + wait;
        // Short polls: the entry usually lands within a render's time.
        let poll = (wait / 20).clamp(Duration::from_millis(5), Duration::from_millis(50));
        // A copy found while waiting that is not usable as is: still worth
        // validating when the wait ends without a fresh one.
        let mut stale = None;
        loop {
            match self.try_lock(wanted.key, wanted.flight_key).await {
                LockAttempt::Taken(lkey, token) => {
                    // The instance that rendered may have stored the entry
                    // and let go of the lock between our look and now:
                    // look once more, or this key renders twice.
                    if let Some((entry, how)) = self.lookup_quiet(wanted, generation).await {
                        if matches!(how, Reuse::Fresh | Reuse::StaleAccepted) {
                            Counters::bump(&self.counters.l2_hits);
                            self.counters.metrics().l2(L2Outcome::Hit);
                            self.release(&lkey, &token).await;
                            return Some((entry, how));
                        }
                    }
                    *held = Some((lkey, token));
                    return None;
                }
                LockAttempt::Failed => return None,
                LockAttempt::Held => {}
            }
            if self.down.load(Relaxed) || Instant::now() >= deadline {
                return stale;
            }
            tokio::time::sleep(poll).await;
            // Quiet: the first look counted this request's miss; a poll is
            // no request of its own.
            if let Some((entry, how)) = self.lookup_quiet(wanted, generation).await {
                if matches!(how, Reuse::Fresh | Reuse::StaleAccepted) {
                    Counters::bump(&self.counters.l2_hits);
                    self.counters.metrics().l2(L2Outcome::Hit);
                    return Some((entry, how));
                }
                stale = Some((entry, how));
            }
        }
    }

    pub(super) async fn release(&self, key: &str, token: &str) {
        let mut inv = self.release.key(key);
        inv.arg(token);
        let inv = &inv;
        let _: Option<i64> = self
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await;
    }
}
