use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use http::Method;
use http_body::Body;

use super::endpoint::now_ms;

/// When a failed request is sent again to another endpoint.
///
/// A retry happens only when the inner service failed before giving
/// response headers (a connection refused or reset, a timeout), the method
/// is idempotent (RFC 9110 §9.2.2: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
/// `DELETE`; never `POST` or `PATCH`), the body can be replayed
/// ([`ReplayBody`]), and the retry budget allows it. Each retry goes to an
/// endpoint this request has not tried yet.
///
/// The budget caps retries at [`ratio`](Self::budget) of recent requests
/// plus a floor per second, so a dead cluster costs at most that much extra
/// load instead of multiplying it.
#[derive(Debug)]
#[must_use]
pub struct Retries {
    pub(crate) max: u32,
    ratio: f64,
    floor: u32,
    /// Retry tokens in thousandths.
    tokens: AtomicI64,
    /// Second (of [`now_ms`]) of the last floor refill.
    refilled: AtomicU64,
}

impl Clone for Retries {
    fn clone(&self) -> Self {
        // A clone starts with a fresh budget: it is configuration.
        Retries::new()
            .max_retries(self.max)
            .budget(self.ratio, self.floor)
    }
}

impl Default for Retries {
    fn default() -> Self {
        Self::new()
    }
}

impl Retries {
    /// Up to 2 retries per request, within 20 % of requests plus 10 per
    /// second.
    pub fn new() -> Self {
        Retries {
            max: 2,
            ratio: 0.2,
            floor: 10,
            tokens: AtomicI64::new(10_000),
            refilled: AtomicU64::new(0),
        }
    }

    /// Never retries.
    pub fn none() -> Self {
        Self::new().max_retries(0)
    }

    /// The most retries of one request.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max = n;
        self
    }

    /// Retries may add `ratio` (0.0 to 1.0, clamped) of the requests, plus
    /// `floor_per_second` so that a quiet service can still retry.
    pub fn budget(mut self, ratio: f64, floor_per_second: u32) -> Self {
        self.ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.floor = floor_per_second;
        self.tokens = AtomicI64::new(i64::from(floor_per_second) * 1000);
        self
    }

    fn cap(&self) -> i64 {
        (i64::from(self.floor) + 100) * 1000
    }

    /// Every request adds `ratio` of a token.
    pub(crate) fn deposit(&self) {
        if self.max == 0 {
            return;
        }
        let add = (self.ratio * 1000.0) as i64;
        if add > 0 {
            let cap = self.cap();
            let _ = self
                .tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    (t < cap).then_some((t + add).min(cap))
                });
        }
    }

    /// Takes one token for a retry, if there is one.
    pub(crate) fn withdraw(&self) -> bool {
        self.withdraw_at(now_ms() / 1000)
    }

    fn withdraw_at(&self, sec: u64) -> bool {
        let last = self.refilled.load(Ordering::Relaxed);
        if sec != last
            && self
                .refilled
                .compare_exchange(last, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let floor = i64::from(self.floor) * 1000;
            let _ = self
                .tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    (t < floor).then_some(floor)
                });
        }
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

/// Idempotent methods (RFC 9110 §9.2.2): the only ones a proxy may retry on
/// its own.
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request body the balancer can send again to another endpoint.
///
/// Implemented for bodies held in memory (`String`, `Full`, `Empty`, ...),
/// and for streaming bodies that are already at their end (an empty body).
/// A streaming body with content is never replayed: its bytes are gone once
/// sent.
pub trait ReplayBody: Body + Sized {
    /// A copy to send on a retry, or `None` when this body cannot be sent
    /// twice.
    fn try_replay(&self) -> Option<Self>;
}

impl ReplayBody for String {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

#[cfg(feature = "proxy")]
mod util_impls {
    use super::ReplayBody;
    use bytes::Buf;

    impl<D: Buf> ReplayBody for http_body_util::Empty<D> {
        fn try_replay(&self) -> Option<Self> {
            Some(http_body_util::Empty::new())
        }
    }

    impl<D: Buf + Clone> ReplayBody for http_body_util::Full<D> {
        fn try_replay(&self) -> Option<Self> {
            Some(self.clone())
        }
    }
}

#[cfg(feature = "axum")]
impl ReplayBody for axum::body::Body {
    fn try_replay(&self) -> Option<Self> {
        self.is_end_stream().then(axum::body::Body::empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_are_retried() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn budget_allows_the_floor_then_the_ratio() {
        let r = Retries::new().budget(0.5, 2);
        assert!(r.withdraw_at(7));
        assert!(r.withdraw_at(7));
        assert!(!r.withdraw_at(7));
        // two requests earn one retry at 50 %
        r.deposit();
        r.deposit();
        assert!(r.withdraw_at(7));
        assert!(!r.withdraw_at(7));
        // a new second refills the floor
        assert!(r.withdraw_at(8));
    }

    #[test]
    fn deposits_are_capped() {
        let r = Retries::new().budget(1.0, 0);
        for _ in 0..10_000 {
            r.deposit();
        }
        let mut n = 0;
        while r.withdraw_at(0) {
            n += 1;
        }
        assert!((100..=101).contains(&n), "{n}");
    }
}
