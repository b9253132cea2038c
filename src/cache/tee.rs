//! Storing a response while it streams to the client that asked for it.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};

use super::entry::{self, Entry, Policy};
use super::flight::{Lead, Outcome};
use super::handle::Shared;
use super::layer::Config;

/// A storable response on its way: what is needed to store it once its
/// body has ended. Dropped unfinished (the client hung up), it stores
/// nothing and its flight's waiters take over.
pub(crate) struct Pending {
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: Arc<Config>,
    pub(crate) key: String,
    pub(crate) flight_key: String,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) policy: Policy,
    pub(crate) request_headers: HeaderMap,
    pub(crate) extra: Option<Box<str>>,
    pub(crate) lead: Option<Lead>,
    pub(crate) chunks: Vec<Bytes>,
    pub(crate) len: usize,
    /// The `Content-Length` the response announced: a body that ends
    /// shorter or longer is incomplete (RFC 9111 §3.3) and never stored.
    pub(crate) declared: Option<u64>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("key", &self.key)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Keeps a chunk; `false` once the body is longer than may be stored.
    pub(crate) fn push(&mut self, data: &Bytes) -> bool {
        self.len = self.len.saturating_add(data.len());
        if self.len > self.config.max_body {
            return false;
        }
        if !data.is_empty() {
            // A reference count, not a copy.
            self.chunks.push(data.clone());
        }
        true
    }

    /// Stores the complete response and wakes the flight's waiters; the
    /// entry, and whether it was stored. One heavier than the memory tier
    /// can hold is not: it is handled as a body too long to store.
    pub(crate) fn store(self) -> (Arc<Entry>, bool) {
        let Pending {
            shared,
            config,
            key,
            flight_key,
            status,
            version,
            headers,
            policy,
            request_headers,
            extra,
            mut lead,
            chunks,
            len: _,
            declared: _,
        } = self;
        // Copied, never kept as received: see `entry::owned_body`.
        let body = entry::owned_body(&chunks);
        drop(chunks);
        let entry = Arc::new(entry::build(
            status,
            version,
            &headers,
            body,
            policy,
            &request_headers,
            extra,
            config.strip_field.as_ref(),
        ));
        if !shared.store.insert(&key, Arc::clone(&entry)) {
            // Waiters told `Stored` would find nothing and each fetch and
            // fail to store it again: let them go, and later requests too.
            shared.remember_uncacheable(&flight_key, config.uncacheable_for);
            tracing::debug!(key = %key, bytes = entry.body.len(), "response too heavy to store");
            if let Some(lead) = lead {
                lead.finish(Outcome::NotStorable);
            }
            return (entry, false);
        }
        shared.stored_l2(&key, &entry, lead.as_mut());
        // Its codings are made off the request path; meanwhile requests
        // get the identity body.
        #[cfg(feature = "compression")]
        if let Some(c) = config.compressor() {
            c.queue(&shared, &key, &entry);
        }
        shared.forget_uncacheable(&flight_key);
        shared.count_store();
        tracing::debug!(key = %key, bytes = entry.body.len(), "response stored");
        if let Some(lead) = lead {
            lead.finish(Outcome::Stored);
        }
        (entry, true)
    }

    /// Whether the body has all the bytes it announced: stored then, before
    /// the last chunk is handed on, so the next request finds it.
    pub(crate) fn has_all(&self) -> bool {
        self.declared == Some(self.len as u64)
    }

    /// The body ended: stores it when it is complete (as long as it
    /// announced), else ends the flight as failed.
    pub(crate) fn complete(self) {
        if self.declared.is_some_and(|n| n != self.len as u64) {
            tracing::debug!(key = %self.key, "body ended short of its Content-Length");
            self.fail();
        } else {
            self.store();
        }
    }

    /// The inner body failed: nothing partial is stored, and the flight
    /// ends as a failure, so waiters follow its rule (one takes over, once,
    /// then each goes alone) instead of taking over one by one as they do
    /// from a leader whose client hung up.
    pub(crate) fn fail(self) {
        tracing::debug!(key = %self.key, "inner body failed: not stored");
        if let Some(lead) = self.lead {
            lead.finish(Outcome::Failed);
        }
    }

    /// The body outgrew the cap: remember the key and let waiters go.
    pub(crate) fn too_long(self) {
        self.shared
            .remember_uncacheable(&self.flight_key, self.config.uncacheable_for);
        tracing::debug!(key = %self.key, "response too long to store");
        if let Some(lead) = self.lead {
            lead.finish(Outcome::NotStorable);
        }
    }
}
