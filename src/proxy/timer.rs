//! Timers of one HTTP/1.1 connection on one tokio `Sleep`: hyper's
//! header-read timeout on a connection of [`serve`](super::serve), and the
//! response timeout of the requests sent on a pooled upstream connection
//! (`pool`), each one request at a time.
//!
//! hyper asks its timer for a new boxed sleep for every request head and
//! drops it once the head is in. With `TokioTimer` each of those registers
//! a timer entry with the runtime when first polled and removes it when
//! dropped (about 800 instructions per request). Here every sleep of a
//! connection shares one tokio `Sleep`, registered once: a sleep whose
//! deadline is later than the shared one's (the next request head's, in
//! the steady state) waits on it as it is, and moves it to its own
//! deadline only when it ends early, about once per timeout instead of
//! once per request. A dropped sleep leaves that timer running; it then
//! wakes the connection at most once, for nothing, when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// A [`Timer`] for one HTTP/1.1 connection (see the module docs). Only
/// one of its sleeps is meant to be pending at a time, as hyper's
/// header-read timeout has.
#[derive(Clone)]
pub(super) struct ConnTimer {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    // The connection's one tokio sleep, pushed to each new deadline.
    sleep: Pin<Box<tokio::time::Sleep>>,
    // The waker it was last polled with: while the sleep has not ended,
    // that task will be woken when it does, and polling it again with the
    // same waker (hyper's header-read timeout, each request head of a
    // connection) would only register that waker again (about 130
    // instructions).
    waker: Option<Waker>,
}

impl ConnTimer {
    pub(super) fn new() -> Self {
        // Unregistered until first polled; a year is "never" here.
        let idle = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
        ConnTimer {
            shared: Arc::new(Mutex::new(Shared {
                sleep: Box::pin(idle),
                waker: None,
            })),
        }
    }

    /// A sleep until `deadline` on this connection's one timer, unboxed.
    pub(super) fn until(&self, deadline: tokio::time::Instant) -> ConnSleep {
        ConnSleep {
            deadline,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(self.until(deadline.into()))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<ConnSleep>() {
            Some(mut s) => s.deadline = new_deadline.into(),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> Instant {
        // tokio's clock, so that tests with paused time see the timeout.
        tokio::time::Instant::now().into_std()
    }
}

/// One sleep of a [`ConnTimer`]: its own deadline, on the shared sleep.
pub(super) struct ConnSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Shared>>,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let Shared { sleep, waker } = &mut *shared;
        if sleep.deadline() > self.deadline {
            // A sleep made before the last one: rare.
            sleep.as_mut().reset(self.deadline);
        } else if !sleep.is_elapsed() && waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered for this task already (every reset below is
            // followed by a poll, which registers again).
            return Poll::Pending;
        }
        // In the steady state the shared sleep ends before this one (it
        // was set for an earlier request head): moved only when it ends,
        // about once per timeout instead of once per request.
        while sleep.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= self.deadline {
                *waker = None;
                return Poll::Ready(());
            }
            sleep.as_mut().reset(self.deadline);
        }
        // A poll that found the task's coop budget spent registered
        // nothing: tokio's sleep wakes the task at once instead, and the
        // next poll must reach the sleep again (a pending poll that did
        // register gives its unit of budget back, so the budget is then
        // not spent).
        if !tokio::task::coop::has_budget_remaining() {
            *waker = None;
            return Poll::Pending;
        }
        match waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Sleep for ConnSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_sleep_ends_at_its_own_deadline() {
        let timer = ConnTimer::new();
        let start = tokio::time::Instant::now();
        let first = timer.sleep(Duration::from_secs(30));
        drop(first);
        // A later sleep of the same connection moves the shared one.
        tokio::time::advance(Duration::from_secs(10)).await;
        timer.sleep(Duration::from_secs(30)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        // An earlier one after a later one, and a reset.
        let later = timer.sleep(Duration::from_secs(60));
        let mut earlier = timer.sleep(Duration::from_secs(5));
        drop(later);
        timer.reset(&mut earlier, timer.now() + Duration::from_secs(7));
        earlier.await;
        assert_eq!(start.elapsed(), Duration::from_secs(47));
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_polled_again_by_one_task_end_on_time() {
        // As hyper's header-read timeout: one sleep per request head, each
        // polled several times by the connection's task; the polls after
        // the first find the waker registered and skip tokio's timer.
        let timer = ConnTimer::new();
        let start = tokio::time::Instant::now();
        for round in 1..=3u32 {
            let mut sleep = timer.sleep(Duration::from_secs(10));
            for _ in 0..2 {
                let polled = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
                assert!(polled.is_pending());
                tokio::time::advance(Duration::from_secs(1)).await;
            }
            sleep.await;
            assert_eq!(start.elapsed(), Duration::from_secs(10) * round);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_first_polled_out_of_coop_budget_is_woken_at_its_deadline() {
        // tokio's sleep, polled by a task whose budget is spent, returns
        // pending without registering the task (and wakes it at once): the
        // next poll by that task must not take it for registered.
        let timer = ConnTimer::new();
        let mut sleep = timer.sleep(Duration::from_secs(30));
        let waited = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut spent = false;
            std::future::poll_fn(|cx| {
                if !std::mem::replace(&mut spent, true) {
                    while Box::pin(tokio::task::coop::consume_budget())
                        .as_mut()
                        .poll(cx)
                        .is_ready()
                    {}
                }
                sleep.as_mut().poll(cx)
            })
            .await;
            start.elapsed()
        });
        let waited = tokio::time::timeout(Duration::from_secs(3600), waited).await;
        assert_eq!(
            waited.expect("never woken").unwrap(),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_sleep_is_woken_at_its_deadline() {
        let timer = ConnTimer::new();
        let sleep = timer.sleep(Duration::from_secs(30));
        let waited = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            sleep.await;
            start.elapsed()
        });
        assert_eq!(waited.await.unwrap(), Duration::from_secs(30));
    }
}
