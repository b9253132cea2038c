use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::endpoint::EndpointState;

/// One request counted in an endpoint's in-flight gauge; dropping it
/// releases the count.
pub(crate) struct InFlight {
    state: Arc<EndpointState>,
}

impl InFlight {
    /// Counts a request; also returns how many requests the endpoint had
    /// been sent before this one.
    pub(crate) fn start(state: Arc<EndpointState>) -> (Self, u64) {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.metrics.started();
        let n = state.record_request();
        (InFlight { state }, n)
    }

    pub(crate) fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.state.metrics.ended();
    }
}

pin_project! {
    /// The response body of [`Balance`](super::Balance): the endpoint's body,
    /// which keeps the request counted as in flight on that endpoint until
    /// it ends or is dropped (SSR pages stream), or the empty body of a
    /// `503` when no endpoint was available.
    pub struct ResponseBody<B: Body> {
        #[pin]
        inner: Option<B>,
        // Released at the end of the stream, or when the body is dropped.
        in_flight: Option<InFlight>,
        // The endpoint's body failed: passed on at the next poll, once the
        // server has written what it holds (see `late_error`).
        failed: Option<B::Error>,
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("unavailable", &self.inner.is_none())
            .field("counted", &self.in_flight.is_some())
            .finish()
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(body: B, in_flight: Option<InFlight>) -> Self {
        ResponseBody {
            inner: Some(body),
            in_flight,
            failed: None,
        }
    }

    pub(crate) fn unavailable() -> Self {
        ResponseBody {
            inner: None,
            in_flight: None,
            failed: None,
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = std::task::ready!(crate::late_error::poll_late(this.failed, cx, |cx| {
            match inner.as_mut().as_pin_mut() {
                Some(inner) => inner.poll_frame(cx),
                None => Poll::Ready(None),
            }
        }));
        match &frame {
            None | Some(Err(_)) => {
                this.in_flight.take();
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.as_ref().map_or(true, Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::endpoint::EndpointId;

    fn state() -> Arc<EndpointState> {
        let set = crate::balance::Endpoints::<()>::new(crate::balance::RoundRobin::new());
        let id: EndpointId = set.add("a", ()).unwrap();
        let snap = set.shared.snapshot.load();
        assert_eq!(snap.states[0].id, id);
        Arc::clone(&snap.states[0])
    }

    #[test]
    fn dropping_the_body_releases_the_count() {
        let s = state();
        let body = ResponseBody::new(
            String::from("page"),
            Some(InFlight::start(Arc::clone(&s)).0),
        );
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 1);
        drop(body);
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reading_to_the_end_releases_the_count() {
        let s = state();
        let mut body = ResponseBody::new(
            String::from("page"),
            Some(InFlight::start(Arc::clone(&s)).0),
        );
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        let waker = std::task::Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        let mut pinned = Pin::new(&mut body);
        assert!(matches!(
            pinned.as_mut().poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 1);
        assert!(matches!(
            pinned.as_mut().poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        assert_eq!(s.in_flight.load(Ordering::Relaxed), 0);
    }
}
