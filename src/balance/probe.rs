use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::endpoint::{EndpointId, Endpoints};

/// Active health probes: a check per endpoint at an interval, on the tokio
/// runtime (feature `tokio`).
///
/// An endpoint that fails [`unhealthy_threshold`](Self::unhealthy_threshold)
/// checks in a row (a check that returns `false` or outlasts
/// [`timeout`](Self::timeout)) takes no new requests until it passes
/// [`healthy_threshold`](Self::healthy_threshold) checks in a row. Endpoints
/// start healthy, so traffic flows before the first round. Probes and
/// passive health combine: an endpoint must pass both. When every endpoint
/// is down the balancer fails open.
///
/// ```
/// use std::time::Duration;
/// use tower_ssr::balance::{ActiveProbes, Endpoints, RoundRobin};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let set = Endpoints::new(RoundRobin::new());
/// set.add("a", "10.0.0.5:3000").unwrap();
/// let probes = ActiveProbes::new()
///     .interval(Duration::from_secs(5))
///     .spawn(&set, |addr: &'static str| async move {
///         // for example: connect, GET /healthz, expect a 200
///         !addr.is_empty()
///     });
/// drop(probes); // stops probing
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ActiveProbes {
    interval: Duration,
    timeout: Duration,
    healthy: u32,
    unhealthy: u32,
}

impl Default for ActiveProbes {
    fn default() -> Self {
        Self::new()
    }
}

impl ActiveProbes {
    /// Every 10 s, 2 s timeout, down after 3 failures, up after 2 passes.
    pub fn new() -> Self {
        ActiveProbes {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            healthy: 2,
            unhealthy: 3,
        }
    }

    /// Time between rounds of checks.
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d.max(Duration::from_millis(1));
        self
    }

    /// How long one check may take before it counts as failed.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Passes in a row that bring a down endpoint back (at least 1).
    pub fn healthy_threshold(mut self, n: u32) -> Self {
        self.healthy = n.max(1);
        self
    }

    /// Failures in a row that take an endpoint down (at least 1).
    pub fn unhealthy_threshold(mut self, n: u32) -> Self {
        self.unhealthy = n.max(1);
        self
    }

    /// Starts probing every endpoint of `endpoints` (those added later
    /// too) with `check`, until the returned handle is dropped. Dropping it
    /// also brings back every endpoint the probes had taken down: with
    /// nothing left to bring them back, they would stay out for good.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn spawn<T, F, Fut>(self, endpoints: &Endpoints<T>, check: F) -> ProbeHandle
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let endpoints = endpoints.clone();
        // Held while a verdict is written, and set by the handle's drop: a
        // task aborted in the middle of a round cannot take an endpoint
        // down after the drop has cleared the state.
        let stopped = Arc::new(Mutex::new(false));
        let task_stopped = Arc::clone(&stopped);
        let task_endpoints = endpoints.clone();
        let task = tokio::spawn(async move {
            let endpoints = task_endpoints;
            let stopped = task_stopped;
            // (passes, failures) in a row, per endpoint.
            let mut streaks: HashMap<EndpointId, (u32, u32)> = HashMap::new();
            let mut ticker = tokio::time::interval(self.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let entries = endpoints.entries();
                let checks: Vec<_> = entries
                    .iter()
                    .map(|(_, value)| {
                        let fut = check(value.clone());
                        let timeout = self.timeout;
                        tokio::spawn(async move {
                            tokio::time::timeout(timeout, fut).await.unwrap_or(false)
                        })
                    })
                    .collect();
                for ((state, _), handle) in entries.iter().zip(checks) {
                    // A check that panicked counts as failed.
                    let ok = handle.await.unwrap_or(false);
                    let gate = stopped.lock().unwrap_or_else(PoisonError::into_inner);
                    if *gate {
                        return;
                    }
                    let streak = streaks.entry(state.id).or_insert((0, 0));
                    if ok {
                        *streak = (streak.0.saturating_add(1), 0);
                        if streak.0 >= self.healthy
                            && state.probe_down.swap(false, Ordering::AcqRel)
                        {
                            crate::balance::upstream::probed(state, true);
                        }
                    } else {
                        *streak = (0, streak.1.saturating_add(1));
                        if streak.1 >= self.unhealthy
                            && !state.probe_down.swap(true, Ordering::AcqRel)
                        {
                            crate::balance::upstream::probed(state, false);
                        }
                    }
                }
                streaks.retain(|id, _| entries.iter().any(|(s, _)| s.id == *id));
            }
        });
        let clear = move || {
            let mut stopped = stopped.lock().unwrap_or_else(PoisonError::into_inner);
            *stopped = true;
            for (state, _) in endpoints.entries() {
                state.probe_down.store(false, Ordering::Release);
            }
        };
        ProbeHandle {
            task,
            clear: Box::new(clear),
        }
    }
}

/// Keeps active probes running; dropping it stops them and clears their
/// verdicts (every endpoint counts as probe-healthy again; passive health
/// still applies).
pub struct ProbeHandle {
    task: tokio::task::JoinHandle<()>,
    clear: Box<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for ProbeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeHandle")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.task.abort();
        (self.clear)();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::RoundRobin;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn failing_checks_take_an_endpoint_down_and_passes_bring_it_back() {
        let set = Endpoints::new(RoundRobin::new());
        let up = Arc::new(AtomicBool::new(true));
        let a = set.add("a", Arc::clone(&up)).unwrap();
        let _probes = ActiveProbes::new()
            .interval(Duration::from_secs(1))
            .unhealthy_threshold(2)
            .healthy_threshold(2)
            .spawn(&set, |flag: Arc<AtomicBool>| async move {
                flag.load(Ordering::SeqCst)
            });
        let healthy = || set.stats_of(a).unwrap().probe_healthy;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(healthy());
        up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(healthy(), "one failure is not enough");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!healthy());
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_times_out_as_failed() {
        let set = Endpoints::new(RoundRobin::new());
        let a = set.add("a", ()).unwrap();
        let _probes = ActiveProbes::new()
            .interval(Duration::from_secs(1))
            .timeout(Duration::from_millis(100))
            .unhealthy_threshold(1)
            .spawn(&set, |()| std::future::pending::<bool>());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!set.stats_of(a).unwrap().probe_healthy);
    }
}
