use std::time::Duration;

/// Passive health: when an endpoint that keeps failing is taken out of
/// service, and for how long.
///
/// After [`consecutive_failures`](Self::consecutive_failures) failures in a
/// row (errors, and `5xx` when
/// [`server_errors_are_failures`](Self::server_errors_are_failures) is set),
/// the endpoint is ejected for a backoff that doubles with each ejection, from
/// [`base_ejection`](Self::base_ejection) up to
/// [`max_ejection`](Self::max_ejection). When the backoff is over, one trial
/// request decides: success puts it back, failure ejects it again for longer.
/// At most [`max_ejected_share`](Self::max_ejected_share) of the endpoints are
/// out at once, and when nothing is eligible the balancer fails open (it
/// picks among all of them) rather than refusing every request.
///
/// Failures count against an endpoint however fast they are: a host that
/// fails fast never looks "fast" (ingress-nginx #5540, Envoy #20907).
#[derive(Debug, Clone)]
#[must_use]
pub struct PassiveHealth {
    pub(crate) consecutive_failures: u32,
    pub(crate) server_errors: bool,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejection: Duration,
    pub(crate) max_ejected_share: f32,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl PassiveHealth {
    /// 5 consecutive failures eject for 1 s, doubling up to 60 s; at most
    /// half of the endpoints out; `5xx` responses are not failures.
    pub fn new() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            server_errors: false,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            max_ejected_share: 0.5,
        }
    }

    /// Never ejects (failures are still counted in the stats).
    pub fn disabled() -> Self {
        Self::new().consecutive_failures(0)
    }

    /// Failures in a row that eject an endpoint; 0 never ejects.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// Whether `5xx` responses count as failures (nginx's
    /// `proxy_next_upstream http_5xx`, Envoy's consecutive 5xx). They are
    /// never retried: a response was received.
    pub fn server_errors_are_failures(mut self, yes: bool) -> Self {
        self.server_errors = yes;
        self
    }

    /// The first ejection's length; each further one doubles it.
    pub fn base_ejection(mut self, d: Duration) -> Self {
        self.base_ejection = d;
        self
    }

    /// The longest ejection.
    pub fn max_ejection(mut self, d: Duration) -> Self {
        self.max_ejection = d;
        self
    }

    /// The largest share of endpoints (0.0 to 1.0) that may be ejected at
    /// once; one more failing endpoint stays in service. Clamped to 0..=1.
    pub fn max_ejected_share(mut self, share: f32) -> Self {
        self.max_ejected_share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// The backoff of the ejection after `previous` earlier ones.
    pub(crate) fn backoff(&self, previous: u32) -> Duration {
        let factor = 1u32.checked_shl(previous.min(31)).unwrap_or(u32::MAX);
        self.base_ejection
            .checked_mul(factor)
            .unwrap_or(self.max_ejection)
            .min(self.max_ejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let h = PassiveHealth::new()
            .base_ejection(Duration::from_millis(100))
            .max_ejection(Duration::from_millis(700));
        assert_eq!(h.backoff(0), Duration::from_millis(100));
        assert_eq!(h.backoff(1), Duration::from_millis(200));
        assert_eq!(h.backoff(2), Duration::from_millis(400));
        assert_eq!(h.backoff(3), Duration::from_millis(700));
        assert_eq!(h.backoff(200), Duration::from_millis(700));
    }

    #[test]
    fn share_is_clamped() {
        assert!(
            (PassiveHealth::new()
                .max_ejected_share(7.0)
                .max_ejected_share
                - 1.0)
                .abs()
                < f32::EPSILON
        );
        assert!(
            PassiveHealth::new()
                .max_ejected_share(f32::NAN)
                .max_ejected_share
                == 0.0
        );
    }
}
