//! A response body's failure, passed on one poll late.
//!
//! A server writes a response's head and the first chunks into a buffer
//! and sends them when the body has nothing more ready. hyper's HTTP/1
//! server, polled a body that fails while that buffer is still full,
//! closes the connection and drops the buffer: the client gets no status
//! line at all, only a closed connection (curl's "empty reply", exit 52),
//! though the head and most of the body had been handed over. An upstream
//! that promised `Content-Length: 65537` and closed one byte short did
//! exactly that, now and then, under load (issue 8 §8).
//!
//! So the first poll that meets the failure keeps it, asks to be polled
//! again at once and says nothing is ready: the server writes what it
//! holds, then polls again and gets the failure, and aborts the connection
//! as before. The client sees the status and a cut-off body, never a
//! silent close (RFC 9112 §8: an incomplete message is known by its
//! length; a missing one cannot be told from a dead server).

use std::task::{Context, Poll};

/// Polls a body through `poll`, holding back a failure for one poll: see
/// the module docs. `held` is the body's own slot for the failure kept
/// between the two polls.
pub(crate) fn poll_late<T, E>(
    held: &mut Option<E>,
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<Option<Result<T, E>>>,
) -> Poll<Option<Result<T, E>>> {
    if let Some(error) = held.take() {
        return Poll::Ready(Some(Err(error)));
    }
    match poll(cx) {
        Poll::Ready(Some(Err(error))) => {
            *held = Some(error);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_failure_comes_one_poll_later_with_a_wake_between() {
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut items = vec![Err("cut"), Ok(1)];
        let mut held = None;
        let mut next =
            |cx: &mut Context<'_>| poll_late(&mut held, cx, |_| Poll::Ready(items.pop()));
        assert_eq!(next(&mut cx), Poll::Ready(Some(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert_eq!(next(&mut cx), Poll::Pending);
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "woken to be polled again"
        );
        assert_eq!(next(&mut cx), Poll::Ready(Some(Err("cut"))));
        assert_eq!(next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn data_and_the_end_pass_as_they_come() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut held: Option<()> = None;
        assert_eq!(
            poll_late(&mut held, &mut cx, |_| Poll::Ready(Some(Ok(7)))),
            Poll::Ready(Some(Ok(7)))
        );
        assert_eq!(
            poll_late(&mut held, &mut cx, |_| {
                Poll::<Option<Result<u8, ()>>>::Pending
            }),
            Poll::Pending
        );
        assert_eq!(
            poll_late(&mut held, &mut cx, |_| {
                Poll::<Option<Result<u8, ()>>>::Ready(None)
            }),
            Poll::Ready(None)
        );
    }
}
