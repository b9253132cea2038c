//! A one-value channel from a coalescing leader's detached fetch to the
//! client future that started it (see `service::refresh::lead_fetch`).
//!
//! Written by hand, as the flights are: the cache needs no async runtime
//! (a user executor may drive the detached fetch). The sender can tell that
//! the receiver has gone (the leader's client hung up), so the fetch then
//! runs on for the waiters, bounded by the lock timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

struct State<T> {
    value: Option<T>,
    /// The receiver's waker, woken by a send or by the sender's drop.
    rx_waker: Option<Waker>,
    /// The sender's waker, woken when the receiver drops.
    tx_waker: Option<Waker>,
    rx_gone: bool,
    tx_gone: bool,
}

fn lock<T>(m: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Nothing here panics while holding the lock.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A channel for one value.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let state = Arc::new(Mutex::new(State {
        value: None,
        rx_waker: None,
        tx_waker: None,
        rx_gone: false,
        tx_gone: false,
    }));
    (
        Sender {
            state: Arc::clone(&state),
        },
        Receiver { state },
    )
}

pub(crate) struct Sender<T> {
    state: Arc<Mutex<State<T>>>,
}

pub(crate) struct Receiver<T> {
    state: Arc<Mutex<State<T>>>,
}

impl<T> Sender<T> {
    /// Hands `value` over; gives it back when the receiver has gone.
    pub(crate) fn send(self, value: T) -> Result<(), T> {
        let waker = {
            let mut state = lock(&self.state);
            if state.rx_gone {
                return Err(value);
            }
            state.value = Some(value);
            state.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether the receiver has gone; if not, `cx` is woken when it goes.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        let mut state = lock(&self.state);
        if state.rx_gone {
            return true;
        }
        state.tx_waker = Some(cx.waker().clone());
        false
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.state);
            state.tx_gone = true;
            state.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (waker, value) = {
            let mut state = lock(&self.state);
            state.rx_gone = true;
            (state.tx_waker.take(), state.value.take())
        };
        // A value sent but never received is dropped outside the lock.
        drop(value);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    /// The value, or `None` when the sender went without sending.
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = lock(&self.state);
        if let Some(v) = state.value.take() {
            return Poll::Ready(Some(v));
        }
        if state.tx_gone {
            return Poll::Ready(None);
        }
        state.rx_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    // `Waker::noop` needs Rust 1.85; the MSRV is older.
    fn noop_cx<R>(f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        f(&mut cx)
    }

    #[test]
    fn value_sent_is_received() {
        let (tx, mut rx) = channel::<u8>();
        assert!(tx.send(7).is_ok());
        noop_cx(|cx| assert_eq!(Pin::new(&mut rx).poll(cx), Poll::Ready(Some(7))));
    }

    #[test]
    fn send_to_a_dropped_receiver_gives_the_value_back() {
        let (tx, rx) = channel::<u8>();
        noop_cx(|cx| assert!(!tx.poll_closed(cx)));
        drop(rx);
        noop_cx(|cx| assert!(tx.poll_closed(cx)));
        assert_eq!(tx.send(3), Err(3));
    }

    #[test]
    fn dropped_sender_ends_the_wait_with_none() {
        let (tx, mut rx) = channel::<u8>();
        drop(tx);
        noop_cx(|cx| assert_eq!(Pin::new(&mut rx).poll(cx), Poll::Ready(None)));
    }
}
