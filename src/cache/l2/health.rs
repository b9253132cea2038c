//! Calls to Redis, and Redis being away: one connection shared by every
//! call, made on first use (one attempt at a time); every call under the
//! timeout. A timeout or a connection error drops the connection and
//! switches the tier off for the back-off, during which the cache runs on
//! memory alone; then the next call reconnects. Other errors are counted,
//! and the call alone goes without Redis. The first failure is logged at
//! `warn`, the recovery at `info`, nothing in between.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use redis::{RedisError, RedisResult};
use tracing::Instrument;

use super::conn::Conn;
use super::tier::lock;
use super::Tier;
use crate::cache::handle::{Counters, Shared};
use crate::metrics::L2Outcome;

/// The shared connection, and the back-off after a failure.
#[derive(Default)]
pub(super) struct ConnState {
    manager: Option<Conn>,
    /// Off until then, after a failure.
    retry_at: Option<Instant>,
    /// A connection attempt began then (one at a time).
    connecting_since: Option<Instant>,
}

impl Tier {
    /// A connection, or `None` while the tier is off.
    pub(super) async fn connection(&self) -> Option<Conn> {
        let now = Instant::now();
        {
            let mut s = lock(&self.conn);
            if let Some(m) = &s.manager {
                return Some(m.clone());
            }
            if s.retry_at.is_some_and(|t| now < t)
                || s.connecting_since
                    .is_some_and(|t| now < t + self.cfg.connect_timeout)
            {
                return None;
            }
            s.connecting_since = Some(now);
        }
        let made = tokio::time::timeout(
            self.cfg.connect_timeout,
            self.cfg
                .backend
                .connect(self.cfg.connect_timeout, self.cfg.timeout),
        )
        .await;
        let mut s = lock(&self.conn);
        s.connecting_since = None;
        match made {
            Ok(Ok(m)) => {
                s.manager = Some(m.clone());
                s.retry_at = None;
                drop(s);
                self.up();
                Some(m)
            }
            Ok(Err(e)) => {
                s.retry_at = Some(Instant::now() + self.cfg.retry_after);
                drop(s);
                Counters::bump(&self.counters.l2_errors);
                self.counters.metrics().l2(L2Outcome::Error);
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                s.retry_at = Some(Instant::now() + self.cfg.retry_after);
                drop(s);
                Counters::bump(&self.counters.l2_timeouts);
                self.counters.metrics().l2(L2Outcome::Timeout);
                self.failed("connecting timed out");
                None
            }
        }
    }

    /// Switches the tier off for the back-off: the next call reconnects.
    fn reset(&self) {
        let mut s = lock(&self.conn);
        s.manager = None;
        s.retry_at = Some(Instant::now() + self.cfg.retry_after);
    }

    fn failed(&self, why: &str) {
        if !self.down.swap(true, Relaxed) {
            tracing::warn!(
                error = why,
                "redis tier unavailable: the cache goes on with memory alone and reconnects by itself"
            );
        }
    }

    fn up(&self) {
        if self.down.swap(false, Relaxed) {
            tracing::info!("redis tier reconnected");
        }
    }

    /// Runs one call with the timeout; `None` on any failure, counted.
    pub(super) async fn call<'a, T, F, Fut>(&'a self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>> + 'a,
    {
        let conn = self.connection().await?;
        // One `debug` span per Redis call; free when nothing listens.
        let span = tracing::debug_span!(target: "tower_ssr::cache", "redis_call");
        match tokio::time::timeout(self.cfg.timeout, f(conn).instrument(span)).await {
            Ok(Ok(v)) => {
                self.up();
                Some(v)
            }
            Ok(Err(e)) => {
                Counters::bump(&self.counters.l2_errors);
                self.counters.metrics().l2(L2Outcome::Error);
                if is_connection_error(&e) {
                    self.reset();
                    self.failed(&e.to_string());
                } else {
                    tracing::debug!(error = %e, "redis call failed");
                }
                None
            }
            Err(_) => {
                Counters::bump(&self.counters.l2_timeouts);
                self.counters.metrics().l2(L2Outcome::Timeout);
                self.reset();
                self.failed("a call timed out");
                None
            }
        }
    }

    /// Whether the tier is connected and its purge log followed.
    pub(crate) async fn ready(self: &Arc<Self>, shared: &Arc<Shared>) -> bool {
        self.listen(shared);
        let pinged: Option<String> = self
            .call(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await;
        pinged.is_some() && self.subscribed.load(Relaxed)
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}
