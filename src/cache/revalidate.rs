//! Soft purge: revalidation marks stored entries stale instead of dropping
//! them, so the next request is answered at once from the stale copy while
//! one background refresh per key renders the new page (the ordinary
//! `stale-while-revalidate` path: coalesced per key by the flights, and
//! across instances by the Redis render lock when it is on).
//!
//! An entry is marked by storing a copy whose freshness lifetime is its
//! current age: stale from now on, with nothing to compare on the hit path.
//! An entry whose policy allows stale serving but names no
//! `stale-while-revalidate` window is given [`WINDOW`]; one whose policy
//! forbids it (`no-cache`, `must-revalidate`, `proxy-revalidate`, or
//! `s-maxage` without `stale-while-revalidate`, see DESIGN.md) keeps its
//! policy and is refreshed before it is served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::entry::Entry;
use super::key;
use super::store::Store;

/// The `stale-while-revalidate` window a revalidated entry gets when its
/// policy allows stale serving but names none, in seconds: how long its
/// stale copy may stand in while the refresh runs (or keeps failing).
pub(crate) const WINDOW: u64 = 60;

/// What a revalidation covers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// Entries tagged so.
    Tag(&'a str),
    /// Keys whose path and query are exactly this.
    Path(&'a str),
    /// Keys whose path and query start with this.
    Prefix(&'a str),
}

/// Marks every entry in `scope` stale in `store`.
pub(crate) fn mark_stale(store: &Store, scope: Scope<'_>) {
    let now = crate::date::monotonic_now();
    store.update_if(
        |k, v| match scope {
            Scope::Tag(t) => v.list.iter().any(|e| e.has_tag(t)),
            Scope::Path(p) => key::path_of(k) == p,
            Scope::Prefix(p) => key::path_of(k).starts_with(p),
        },
        |e| marked(e, now),
    );
}

/// A copy of `entry` that is stale from `now` on.
pub(crate) fn marked(entry: &Arc<Entry>, now: Instant) -> Arc<Entry> {
    let mut copy = Entry::clone(entry);
    let f = &mut copy.fresh;
    // ttl = lifetime − age = 0: stale (fresh needs ttl > 0), and
    // `stale-while-revalidate` counts its window from here.
    f.lifetime = f.lifetime.min(f.age(now));
    if f.swr.is_none() && !f.no_cache && !f.must_revalidate && !f.s_maxage {
        f.swr = Some(WINDOW);
    }
    // Kept long enough for the window to be usable.
    let resident = now.saturating_duration_since(f.stored_at);
    let window = Duration::from_secs(f.swr.unwrap_or(0));
    f.keep_for = f.keep_for.max(resident + window);
    Arc::new(copy)
}
