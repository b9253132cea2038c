//! Helpers shared by the benches: drive services that never wait, without
//! a runtime, so that what is measured is the service itself.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http_body::Body;

#[cfg(feature = "cache")]
pub(crate) mod hit;

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Drives a future that never waits (every service here is ready at once).
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Reads a body to its end, as the server would; returns its length.
pub(crate) fn drain<B: Body<Data = Bytes>>(body: B) -> usize {
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut body = pin!(body);
    let mut n = 0;
    while let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) {
        if let Ok(data) = frame.into_data() {
            n += data.len();
        }
    }
    n
}
