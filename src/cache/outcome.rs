//! What the cache did with a request, as a typed response extension.

use std::fmt;

/// What the cache did with a request: inserted into every response's
/// extensions by [`Cache`](super::Cache), so an access log or
/// `tower_http::trace::TraceLayer` can record it without parsing
/// `Cache-Status`.
///
/// The same six words are the `outcome` label of
/// `tower_ssr_cache_requests_total` and the `desc` of the `cache` entry
/// in `Server-Timing`. Each is defined against the `Cache-Status` member
/// the cache sends (RFC 9211); see the table in the crate's `metrics`
/// module docs.
///
/// ```
/// # use tower_ssr::cache::CacheOutcome;
/// # let res = http::Response::new(());
/// let outcome = res.extensions().get::<CacheOutcome>().map(|o| o.as_str());
/// # assert_eq!(outcome, None);
/// assert_eq!(CacheOutcome::Hit.as_str(), "hit");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Answered from a fresh stored response, in memory or from the Redis
    /// tier; nothing was forwarded (`Cache-Status: …; hit`, `ttl` ≥ 0).
    Hit,
    /// A stale stored response was served: within
    /// `stale-while-revalidate` (refreshed in the background), allowed by
    /// the client's `max-stale`, or under `stale-if-error` after the
    /// origin failed (RFC 5861).
    Stale,
    /// Forwarded, and the origin's response sent, stored or not
    /// (`fwd=uri-miss`, `vary-miss`, `request` or `stale`).
    Miss,
    /// Not looked up: an unsafe or other method (RFC 9111 §4), or a
    /// request with no usable key (`fwd=bypass` or `fwd=method`).
    Bypass,
    /// The stored response was validated with a conditional request and
    /// the origin answered `304 Not Modified` (`fwd-status=304`).
    Revalidated,
    /// Waited for another request's fetch of the same key and answered
    /// with what it stored (RFC 9211 `collapsed`).
    Coalesced,
}

impl CacheOutcome {
    /// Every outcome, in declaration order.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [CacheOutcome; 6] = [
        CacheOutcome::Hit,
        CacheOutcome::Stale,
        CacheOutcome::Miss,
        CacheOutcome::Bypass,
        CacheOutcome::Revalidated,
        CacheOutcome::Coalesced,
    ];

    /// The outcome as one lowercase word: `hit`, `stale`, `miss`,
    /// `bypass`, `revalidated` or `coalesced`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Coalesced => "coalesced",
        }
    }
}

impl fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order() {
        // The metrics handles are indexed by `outcome as usize`.
        for (i, o) in CacheOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o}");
        }
    }
}
