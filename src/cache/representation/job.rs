//! The compression job: after a response is stored, its codings are made on
//! the blocking pool and the entry is stored again with them beside it, so
//! the store's weight counts them. Until then, and if the pool is full or
//! the entry was purged or replaced meanwhile, requests get what exists
//! (the identity body): nothing waits for a job. With a Redis tier the
//! entry is written there again with its codings, over the value of the
//! same body written at store time.

use std::sync::Arc;

use super::coding::Coding;
use super::compressible::{decide, Decision};
use super::config::Compression;
use super::pool::Pool;
use super::stored::make;
use crate::cache::entry::Entry;
use crate::cache::handle::Shared;

/// A layer's compression settings and the pool its jobs run on.
#[derive(Debug)]
pub(crate) struct Compressor {
    pub(crate) config: Compression,
    pool: Pool,
}

impl Compressor {
    pub(crate) fn new(config: Compression) -> Self {
        let pool = Pool::new(config.pool_size(), config.max_queue);
        Compressor { config, pool }
    }

    /// Whether the cache makes a stored response's codings itself: the
    /// renderer is then asked for identity, and the key does not vary on
    /// the raw `Accept-Encoding`.
    pub(crate) fn active(&self) -> bool {
        !self.config.codings.is_empty()
    }

    /// Queues the job that makes `entry`'s codings, when its body is worth
    /// compressing (see `compressible::decide`) and in identity. A full
    /// queue, or no runtime, leaves the entry as it is.
    pub(crate) fn queue(self: &Arc<Self>, shared: &Arc<Shared>, key: &str, entry: &Arc<Entry>) {
        if entry.reprs.is_some() {
            return;
        }
        match decide(entry.status, &entry.headers, entry.body.len(), &self.config) {
            Decision::Compress {
                source: Coding::Identity,
            } => {}
            Decision::Compress { .. } | Decision::Keep(_) => return,
        }
        // The job holds no entry: one evicted or purged while it waits is
        // freed at once, and skipped (with 200,000 pages through a 64 MiB
        // tier, a full queue held some 1,000 bodies nothing counted).
        let (this, shared, key) = (Arc::clone(self), Arc::clone(shared), key.to_owned());
        let weak = Arc::downgrade(entry);
        let body = (entry.body.as_ptr() as usize, entry.body.len());
        let queued = self.pool.spawn(move || {
            // The entry, or the one a 304 freshened it into since (the
            // same body, newer headers).
            let (entry, original) = match weak.upgrade() {
                Some(entry) => (entry, true),
                None => match shared.store.sharing_body(&key, body) {
                    Some(entry) => (entry, false),
                    None => return,
                },
            };
            let cap = entry.body.len();
            let Some(reprs) = make(
                &entry.headers,
                &entry.body,
                Coding::Identity,
                &this.config,
                cap,
            ) else {
                return;
            };
            if reprs.made.is_empty() {
                return;
            }
            // The entry itself, or the one a 304 freshened it into since
            // (same body, newer headers: the codings take those), or one a
            // revalidation marked stale.
            let mut own = false;
            let with = |current: &Entry| {
                own = original && std::ptr::eq(current, &*entry);
                let reprs = if own {
                    reprs
                } else {
                    reprs.rebase(&current.headers)
                };
                current.with_representations(Arc::new(reprs))
            };
            if let Some(stored) = shared.store.replace_variant(&key, &entry, with) {
                tracing::debug!(key = %key, "representations stored");
                // Other instances get them too, made once for all: over
                // the value written when this entry was stored. Not for
                // an entry changed since: a stale mark must not reach
                // Redis (a revalidation removed the shared copy, and the
                // refresh writes the new one), nor a 304's freshening
                // overwrite what another instance wrote since.
                if own {
                    shared.representations_l2(&key, &stored);
                }
            }
        });
        if let Err(why) = queued {
            tracing::debug!(?why, "compression job not queued");
        }
    }
}
