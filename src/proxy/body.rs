//! The request body on its way to an upstream, and the watch that tells
//! the client's faults from the upstream's.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

use crate::balance::ReplayBody;

/// Errors a body or client may return, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an upstream: held in memory (replayable on
/// a retry) or streamed from the client (sent once).
pub struct ProxyBody {
    pub(super) kind: Kind,
    // Set by `Forward` for the attempt that sends this body: how the
    // sending goes, to tell the client's faults from the upstream's.
    pub(super) watch: Option<Arc<BodyWatch>>,
}

/// How a request body's sending goes, shared between the body (inside
/// hyper's connection task) and the attempt's future.
pub(super) struct BodyWatch {
    // The body has ended: the response timeout starts from here.
    pub(super) sent: AtomicBool,
    // The client's body failed (it hung up, or sent a broken chunk).
    pub(super) failed: AtomicBool,
    // The last poll of the body found nothing ready: it is the client we
    // are waiting for, not an upstream that stopped reading.
    pub(super) waiting_on_client: AtomicBool,
    last_progress: Mutex<tokio::time::Instant>,
    waker: Mutex<Option<Waker>>,
}

impl BodyWatch {
    pub(super) fn new() -> Self {
        BodyWatch {
            sent: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
            last_progress: Mutex::new(tokio::time::Instant::now()),
            waker: Mutex::new(None),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn progress(&self) {
        self.waiting_on_client.store(false, Ordering::Release);
        *Self::lock(&self.last_progress) = tokio::time::Instant::now();
    }

    pub(super) fn last_progress(&self) -> tokio::time::Instant {
        *Self::lock(&self.last_progress)
    }

    fn end(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        if let Some(w) = Self::lock(&self.waker).take() {
            w.wake();
        }
    }

    pub(super) fn register(&self, waker: &Waker) {
        let mut slot = Self::lock(&self.waker);
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    pub(super) fn ended(&self) -> bool {
        self.sent.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire)
    }
}

pub(super) enum Kind {
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_struct("ProxyBody")
                .field("full", &b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream(_) => f.debug_struct("ProxyBody").field("stream", &true).finish(),
        }
    }
}

impl ProxyBody {
    /// An empty body.
    #[must_use]
    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
            watch: None,
        }
    }

    /// A body held in memory.
    #[must_use]
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            watch: None,
        }
    }

    /// A body streamed from elsewhere.
    pub fn stream<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ProxyBody {
            kind: Kind::Stream(body.map_err(Into::into).boxed_unsync()),
            watch: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(s) => Pin::new(s).poll_frame(cx),
        };
        if let Some(watch) = &this.watch {
            match &polled {
                Poll::Pending => watch.waiting_on_client.store(true, Ordering::Release),
                Poll::Ready(Some(Ok(_))) => {
                    watch.progress();
                    if this.kind_is_end_stream() {
                        watch.end(&watch.sent);
                    }
                }
                Poll::Ready(Some(Err(_))) => watch.end(&watch.failed),
                Poll::Ready(None) => watch.end(&watch.sent),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind_is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(s) => s.size_hint(),
        }
    }
}

impl ProxyBody {
    pub(super) fn kind_is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(s) => s.is_end_stream(),
        }
    }
}

impl ReplayBody for ProxyBody {
    fn try_replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Full(b) => Some(ProxyBody {
                kind: Kind::Full(b.clone()),
                watch: None,
            }),
            Kind::Stream(s) if s.is_end_stream() => Some(ProxyBody::empty()),
            Kind::Stream(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_bodies_replay_streams_do_not() {
        let full = ProxyBody::full(Bytes::from_static(b"abc"));
        assert!(full.try_replay().is_some());
        let stream = ProxyBody::stream(http_body_util::Full::new(Bytes::from_static(b"abc")));
        assert!(stream.try_replay().is_none());
        let ended = ProxyBody::stream(http_body_util::Empty::<Bytes>::new());
        assert!(ended.try_replay().is_some());
    }
}
