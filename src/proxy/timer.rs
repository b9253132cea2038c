//! hyper's timer for one HTTP/1.1 connection of [`serve`](super::serve):
//! the header-read timeout on one tokio `Sleep` per connection.
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
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// A [`Timer`] for one HTTP/1.1 connection (see the module docs). Only
/// one of its sleeps is meant to be pending at a time, as hyper's
/// header-read timeout has.
#[derive(Clone)]
pub(super) struct ConnTimer {
    // The connection's one tokio sleep, pushed to each new deadline.
    shared: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnTimer {
    pub(super) fn new() -> Self {
        // Unregistered until first polled; a year is "never" here.
        let idle = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
        ConnTimer {
            shared: Arc::new(Mutex::new(Box::pin(idle))),
        }
    }
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(ConnSleep {
            deadline: deadline.into(),
            shared: Arc::clone(&self.shared),
        })
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
struct ConnSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut sleep = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if sleep.deadline() > self.deadline {
            // A sleep made before the last one: rare.
            sleep.as_mut().reset(self.deadline);
        }
        // In the steady state the shared sleep ends before this one (it
        // was set for an earlier request head): moved only when it ends,
        // about once per timeout instead of once per request.
        while sleep.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(self.deadline);
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
