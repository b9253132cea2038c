//! Request coalescing: one request per key goes to the inner service, the
//! others wait for it (RFC 9111 §4 allows collapsing).
//!
//! The leader holds a [`Lead`] guard. However the leader ends (it stored the
//! response, found it unstorable, failed, or was dropped because its client
//! hung up) the guard wakes every waiter with the outcome, and removes the
//! key, so no waiter ever waits on a dead leader and no lock outlives its
//! request. No async runtime is needed: wakers are kept by hand.
//!
//! A leader can also stall without ending (its body stops half-way while
//! its client stays connected, or a background refresh with no client at
//! all): a waiter then gives up after a deadline (with the `tokio` feature)
//! and goes to the inner service alone, as nginx does after
//! `proxy_cache_lock_timeout`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How a flight ended, as its waiters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response was stored: look it up.
    Stored,
    /// The response may not be shared: forward on your own.
    NotStorable,
    /// The inner service failed: serve stale if allowed, else forward.
    Failed,
    /// The leader went away before an answer: one waiter takes over.
    Abandoned,
    /// This waiter's deadline passed first: it goes alone, storing
    /// nothing (the leader still may). Never set by a leader.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    TimedOut,
}

#[derive(Debug, Default)]
struct State {
    outcome: Option<Outcome>,
    wakers: Vec<Option<Waker>>,
}

#[derive(Debug, Default)]
struct Flight {
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can panic while holding a lock; if it ever did, the data
    // (a map of flights, a waker list) is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The flights in progress, by key.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Box<str>, Arc<Flight>>>,
}

/// Either lead the flight for a key, or wait for its leader.
#[derive(Debug)]
pub(crate) enum Join {
    Lead(Lead),
    Wait(Wait),
}

impl Flights {
    /// Leads the flight for `key`, or joins the one in progress.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(key) {
            return Join::Wait(Wait {
                flight: Arc::clone(flight),
                slot: None,
                #[cfg(feature = "tokio")]
                deadline: None,
            });
        }
        let flight = Arc::new(Flight::default());
        map.insert(key.into(), Arc::clone(&flight));
        Join::Lead(Lead {
            flights: Arc::clone(self),
            key: key.into(),
            flight,
            done: false,
            #[cfg(feature = "redis")]
            render_lock: None,
        })
    }

    /// Leads the flight for `key` only if none is in progress (one
    /// background refresh per key).
    pub(crate) fn try_lead(self: &Arc<Self>, key: &str) -> Option<Lead> {
        match self.join(key) {
            Join::Lead(lead) => Some(lead),
            Join::Wait(_) => None,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// The leader's guard: ends the flight when finished or dropped.
#[derive(Debug)]
pub(crate) struct Lead {
    flights: Arc<Flights>,
    key: Box<str>,
    flight: Arc<Flight>,
    done: bool,
    /// The cross-instance render lock, when this leader holds one: released
    /// when the flight ends, unless the store took it to release after its
    /// Redis write.
    #[cfg(feature = "redis")]
    pub(crate) render_lock: Option<super::l2::RenderLock>,
}

impl Lead {
    /// Whether requests wait on this flight: each `Wait` holds the flight,
    /// besides the map and this guard.
    pub(crate) fn has_waiters(&self) -> bool {
        Arc::strong_count(&self.flight) > 2
    }

    /// Ends the flight with `outcome` and wakes every waiter.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        {
            let mut map = lock(&self.flights.map);
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
        let wakers = {
            let mut state = lock(&self.flight.state);
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        // The leader's future was dropped (its client hung up) or it
        // returned without saying: a waiter takes over.
        self.end(Outcome::Abandoned);
    }
}

/// A waiter's future: resolves with the flight's outcome, or
/// [`Outcome::TimedOut`] once its deadline passes.
#[derive(Debug)]
pub(crate) struct Wait {
    flight: Arc<Flight>,
    slot: Option<usize>,
    /// Boxed: only waiters pay for it.
    #[cfg(feature = "tokio")]
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Wait {
    /// Gives up waiting after `limit`. Needs tokio's timer: without the
    /// `tokio` feature, or outside a tokio runtime, the wait has no
    /// deadline.
    #[cfg_attr(not(feature = "tokio"), allow(unused_mut))]
    pub(crate) fn limit(mut self, limit: Option<Duration>) -> Self {
        #[cfg(feature = "tokio")]
        if let Some(limit) = limit {
            if tokio::runtime::Handle::try_current().is_ok() {
                self.deadline = Some(Box::pin(tokio::time::sleep(limit)));
            }
        }
        #[cfg(not(feature = "tokio"))]
        let _ = limit;
        self
    }
}

impl Future for Wait {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        let mut state = lock(&this.flight.state);
        if let Some(outcome) = state.outcome {
            return Poll::Ready(outcome);
        }
        match this.slot {
            Some(i) => match &mut state.wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                this.slot = Some(state.wakers.len());
                state.wakers.push(Some(cx.waker().clone()));
            }
        }
        drop(state);
        #[cfg(feature = "tokio")]
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Outcome::TimedOut);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        // Free the waker of a waiter whose client hung up.
        if let Some(i) = self.slot {
            let mut state = lock(&self.flight.state);
            if let Some(slot) = state.wakers.get_mut(i) {
                *slot = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn poll_once(w: &mut Wait) -> Poll<Outcome> {
        let waker = Waker::from(Arc::new(Noop));
        Pin::new(w).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_waiter_counts_while_it_waits() {
        let flights = Arc::new(Flights::default());
        let Join::Lead(lead) = flights.join("k") else {
            panic!("first join leads")
        };
        assert!(!lead.has_waiters());
        let wait = flights.join("k");
        assert!(lead.has_waiters());
        drop(wait);
        assert!(!lead.has_waiters());
    }

    #[test]
    fn second_join_waits_and_sees_the_outcome() {
        let flights = Arc::new(Flights::default());
        let Join::Lead(lead) = flights.join("k") else {
            panic!("first join leads")
        };
        let Join::Wait(wait) = flights.join("k") else {
            panic!("second join waits")
        };
        let mut wait = wait.limit(None);
        assert!(poll_once(&mut wait).is_pending());
        assert!(lead.has_waiters());
        lead.finish(Outcome::Stored);
        assert_eq!(poll_once(&mut wait), Poll::Ready(Outcome::Stored));
        assert_eq!(flights.len(), 0);
    }

    #[cfg(feature = "tokio")]
    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_deadline_and_the_leader_keeps_the_key() {
        let flights = Arc::new(Flights::default());
        let lead = flights.try_lead("k").unwrap();
        let Join::Wait(wait) = flights.join("k") else {
            panic!()
        };
        let outcome = wait.limit(Some(Duration::from_secs(5))).await;
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(flights.try_lead("k").is_none(), "the leader still leads");
        drop(lead);
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn dropped_leader_releases_waiters_and_the_key() {
        let flights = Arc::new(Flights::default());
        let lead = flights.try_lead("k").unwrap();
        assert!(flights.try_lead("k").is_none());
        let Join::Wait(mut wait) = flights.join("k") else {
            panic!()
        };
        drop(lead);
        assert_eq!(poll_once(&mut wait), Poll::Ready(Outcome::Abandoned));
        assert!(
            flights.try_lead("k").is_some(),
            "no lock outlives its leader"
        );
    }
}
