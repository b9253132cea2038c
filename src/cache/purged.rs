//! What a purge or revalidation hands back: a handle to wait until it is
//! applied everywhere it can be.

use std::time::Duration;

/// A purge or revalidation accepted by a [`ResponseCache`]: it is applied
/// to this instance's memory before the call returns. With a Redis tier
/// (feature `redis`) it is also queued for Redis and for every other
/// instance; [`confirmed`](Self::confirmed) waits for that. Dropping the
/// handle changes nothing: the purge goes on.
///
/// [`ResponseCache`]: super::ResponseCache
#[derive(Debug, Default)]
pub struct Purged {
    /// Hears once Redis applied and logged it; `None` without a tier.
    #[cfg(feature = "redis")]
    pub(crate) done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Purged {
    /// Waits up to `within` until the purge is applied in the shared Redis
    /// tier and appended to its purge log, from which every other instance
    /// applies it (instances connected now within moments; others when
    /// they reconnect, or they drop their memory tier). Without a Redis
    /// tier it is done already and this returns `Ok` at once. Needs a
    /// tokio runtime with the time driver when a tier is configured.
    ///
    /// # Errors
    ///
    /// [`PurgeError::TimedOut`] when Redis did not confirm within `within`
    /// (it is down or slow; the purge stays queued and is applied once it
    /// answers), [`PurgeError::Dropped`] when the cache was dropped first.
    #[cfg_attr(not(feature = "redis"), allow(clippy::unused_async))]
    pub async fn confirmed(self, within: Duration) -> Result<(), PurgeError> {
        #[cfg(feature = "redis")]
        if let Some(done) = self.done {
            return match tokio::time::timeout(within, done).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(PurgeError::Dropped),
                Err(_) => Err(PurgeError::TimedOut { within }),
            };
        }
        let _ = within;
        Ok(())
    }

    /// Whether Redis has applied and logged it already (`true` without a
    /// tier). Does not wait.
    #[must_use]
    pub fn is_confirmed(&mut self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(done) = &mut self.done {
            return matches!(done.try_recv(), Ok(()));
        }
        true
    }
}

/// Why [`Purged::confirmed`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PurgeError {
    /// Redis did not apply and log the purge within the given time; it
    /// stays queued on this instance and is applied once Redis answers
    /// (meanwhile this instance does not read Redis).
    TimedOut {
        /// The time waited.
        within: Duration,
    },
    /// The cache was dropped before Redis confirmed.
    Dropped,
}

impl std::fmt::Display for PurgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PurgeError::TimedOut { within } => write!(
                f,
                "redis did not confirm the purge within {within:?}; it stays queued"
            ),
            PurgeError::Dropped => {
                f.write_str("the cache was dropped before redis confirmed the purge")
            }
        }
    }
}

impl std::error::Error for PurgeError {}
