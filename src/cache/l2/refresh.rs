//! Background refreshes (of a copy served stale within
//! `stale-while-revalidate`, or marked stale by an on-demand revalidation)
//! consult Redis before rendering: another instance may have refreshed the
//! entry already, or be refreshing it under the render lock. Unlike a
//! render a client waits for, a refresh never waits for another instance,
//! and only [`MAX_REFRESHING`] at a time consult Redis.

use std::sync::Arc;

use super::read::Wanted;

use super::render_lock::LockAttempt;
use super::{RenderLock, Tier};
use crate::cache::entry::{Entry, Reuse};
use crate::cache::flight::Lead;
use crate::cache::handle::Shared;

/// Background refreshes that consult Redis at once, per instance; more
/// wait their turn (no client waits on them).
pub(super) const MAX_REFRESHING: usize = 32;

/// What a background refresh should do, from [`Tier::before_refresh`].
pub(crate) enum BeforeRefresh {
    /// Redis holds a fresh entry: store it, render nothing.
    Found(Arc<Entry>),
    /// Render (holding the render lock, if it is on).
    Render,
    /// Another instance is rendering it: leave it to that one.
    Skip,
}

impl Tier {
    /// Before a background refresh on this instance: `Found` when Redis
    /// holds a fresh entry (another instance refreshed it), `Skip` when
    /// another instance holds the render lock (it is refreshing it: this
    /// instance goes on serving its stale copy, and a later request's
    /// refresh finds the new entry in Redis), else `Render`, with `lead`
    /// keeping the lock if taken and the purge generation. Never waits for
    /// another instance: after a revalidation of thousands of keys, that
    /// many waiting refreshes polling Redis would swamp it.
    pub(crate) async fn before_refresh(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        wanted: Wanted<'_>,
        lead: &mut Lead,
    ) -> BeforeRefresh {
        self.listen(shared);
        // Never closed, so this only waits.
        let _turn = self.refreshing.acquire().await;
        let mut generation = None;
        if let Some((entry, Reuse::Fresh)) = self.lookup(wanted, &mut generation).await {
            return BeforeRefresh::Found(entry);
        }
        let mut held = None;
        if self.cfg.lock_wait.is_some() {
            match self.try_lock(wanted.key, wanted.flight_key).await {
                LockAttempt::Taken(lkey, token) => {
                    // As in `find_or_lock`: it may have landed meanwhile.
                    if let Some((entry, Reuse::Fresh)) =
                        self.lookup_quiet(wanted, &mut generation).await
                    {
                        self.release(&lkey, &token).await;
                        return BeforeRefresh::Found(entry);
                    }
                    held = Some((lkey, token));
                }
                LockAttempt::Held => return BeforeRefresh::Skip,
                LockAttempt::Failed => {}
            }
        }
        if held.is_some() || generation.is_some() {
            lead.render_lock = Some(RenderLock {
                tier: Arc::clone(self),
                held,
                generation,
            });
        }
        BeforeRefresh::Render
    }
}
