//! Graceful shutdown for [`serve`](super::serve)'s connections, checked
//! with one atomic load per poll.
//!
//! hyper-util's `GracefulShutdown` polls a `watch` channel's `changed()`
//! every time a connection is polled (twice per request, about 450
//! instructions). Here a connection registers its task's waker once (again
//! only if the waker changes) and then reads a flag.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio::sync::Notify;

/// The connections of one server, and the signal to wind them down.
pub(super) struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    signalled: AtomicBool,
    // Every connection still open, with its task's waker once polled.
    conns: Mutex<Conns>,
    // Told when the last connection closes after the signal.
    idle: Notify,
}

#[derive(Default)]
struct Conns {
    next: u64,
    wakers: HashMap<u64, Option<Waker>>,
}

impl Inner {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Shutdown {
    pub(super) fn new() -> Self {
        Shutdown {
            inner: Arc::new(Inner {
                signalled: AtomicBool::new(false),
                conns: Mutex::new(Conns::default()),
                idle: Notify::new(),
            }),
        }
    }

    /// `conn`, wound down by `wind_down` (hyper-util's `graceful_shutdown`:
    /// HTTP/1.1 closes after the current response, HTTP/2 sends GOAWAY)
    /// when [`shutdown`](Self::shutdown) is called.
    pub(super) fn watch<C>(&self, conn: C, wind_down: fn(Pin<&mut C>)) -> Watched<C> {
        let id = {
            let mut conns = self.inner.conns();
            let id = conns.next;
            conns.next += 1;
            conns.wakers.insert(id, None);
            id
        };
        Watched {
            conn,
            wind_down,
            inner: Arc::clone(&self.inner),
            id,
            waker: None,
            winding_down: false,
        }
    }

    /// Tells every connection to wind down, then waits until all have
    /// closed.
    pub(super) async fn shutdown(self) {
        self.inner.signalled.store(true, Ordering::SeqCst);
        for waker in self.inner.conns().wakers.values().flatten() {
            waker.wake_by_ref();
        }
        // `notify_one` keeps a permit when nobody waits yet, so a close
        // between the check and the wait is not missed.
        while !self.inner.conns().wakers.is_empty() {
            self.inner.idle.notified().await;
        }
    }
}

pin_project! {
    /// A connection under a [`Shutdown`].
    pub(super) struct Watched<C> {
        #[pin]
        conn: C,
        wind_down: fn(Pin<&mut C>),
        inner: Arc<Inner>,
        id: u64,
        // The waker registered for the signal, to register again only
        // when it changes.
        waker: Option<Waker>,
        winding_down: bool,
    }

    impl<C> PinnedDrop for Watched<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut conns = this.inner.conns();
            conns.wakers.remove(this.id);
            if conns.wakers.is_empty() && this.inner.signalled.load(Ordering::SeqCst) {
                this.inner.idle.notify_one();
            }
        }
    }
}

impl<C: Future> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.winding_down {
            let mut signalled = this.inner.signalled.load(Ordering::SeqCst);
            if !signalled && !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                let waker = cx.waker().clone();
                this.inner
                    .conns()
                    .wakers
                    .insert(*this.id, Some(waker.clone()));
                *this.waker = Some(waker);
                // The signal may have come before the waker was in.
                signalled = this.inner.signalled.load(Ordering::SeqCst);
            }
            if signalled {
                *this.winding_down = true;
                (this.wind_down)(this.conn.as_mut());
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that ends once wound down.
    struct Conn {
        wound_down: bool,
    }

    impl Future for Conn {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            if self.wound_down {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn wind_down(mut conn: Pin<&mut Conn>) {
        conn.wound_down = true;
    }

    #[tokio::test]
    async fn shutdown_winds_down_every_connection_and_waits_for_them() {
        let shutdown = Shutdown::new();
        let polled = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let conn = shutdown.watch(Conn { wound_down: false }, wind_down);
            let told = Arc::clone(&polled);
            tasks.push(tokio::spawn(async move {
                let mut conn = std::pin::pin!(conn);
                std::future::poll_fn(|cx| {
                    let r = conn.as_mut().poll(cx);
                    told.notify_one();
                    r
                })
                .await;
            }));
            polled.notified().await;
        }
        // One connection never polled before the signal.
        let unpolled = shutdown.watch(Conn { wound_down: false }, wind_down);
        let late = tokio::spawn(unpolled);
        shutdown.shutdown().await;
        for t in tasks {
            t.await.unwrap();
        }
        late.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_without_connections_returns_at_once() {
        Shutdown::new().shutdown().await;
    }
}
