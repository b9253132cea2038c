//! An upstream's response body that fails once it stalls.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::{BoxError, ForwardFuture, ProxyError};

pin_project! {
    /// The body of an upstream's response as the proxy relays it: the
    /// upstream's own, failed when nothing of it arrives for the proxy's
    /// [`idle_timeout`](super::ProxyBuilder::idle_timeout) (nginx's
    /// `proxy_read_timeout`). The response timeout ends with the response
    /// headers; without this, an upstream that sent its headers and then
    /// nothing more held the client (and, behind the cache, every request
    /// that waited for the same page) for ever. The client then sees the
    /// status and a cut-off body, as for any body that breaks off.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        idle: Duration,
        // Armed at the first poll that finds nothing ready; moved only
        // when that happens again after some progress.
        timer: Option<Pin<Box<Sleep>>>,
        progressed: bool,
    }
}

impl UpstreamBody {
    pub(super) fn new(inner: Incoming, idle: Duration) -> Self {
        UpstreamBody {
            inner,
            idle,
            timer: None,
            progressed: false,
        }
    }
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// The error of an [`UpstreamBody`] that stalled.
#[derive(Debug)]
struct Stalled(Duration);

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the upstream's response body stalled for {:?}", self.0)
    }
}

impl std::error::Error for Stalled {}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.progressed = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            // Zero idle timeout: no limit, as for a tunnel.
            Poll::Pending if this.idle.is_zero() => Poll::Pending,
            Poll::Pending => {
                let idle = *this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if std::mem::take(this.progressed) {
                    timer.as_mut().reset(Instant::now() + idle);
                }
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(Stalled(idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// [`ForwardFuture`] with the response body in an [`UpstreamBody`].
    pub(super) struct Guarded {
        #[pin]
        fut: ForwardFuture,
        idle: Duration,
    }
}

impl Guarded {
    pub(super) fn new(fut: ForwardFuture, idle: Duration) -> Self {
        Guarded { fut, idle }
    }
}

impl Future for Guarded {
    type Output = Result<Response<UpstreamBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let idle = *this.idle;
        Poll::Ready(ready!(this.fut.poll(cx)).map(|res| res.map(|b| UpstreamBody::new(b, idle))))
    }
}
