use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use http_body::Body;

use super::body::ResponseBody;

/// The boxed miss path: boxing is allowed there only (a miss already costs
/// a call to the inner service, which dwarfs one allocation).
pub(crate) type MissFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send + 'static>>;

/// Response future of [`Cache`](super::Cache): ready at once on a hit,
/// the miss path otherwise.
pub struct ResponseFuture<B: Body, E> {
    kind: Kind<B, E>,
}

enum Kind<B: Body, E> {
    // A hit: the response was built synchronously in `call`.
    Ready(Option<Response<ResponseBody<B>>>),
    Miss(MissFuture<B, E>),
}

impl<B: Body, E> std::fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Ready(_) => "Ready",
            Kind::Miss(_) => "Miss",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<B: Body, E> ResponseFuture<B, E> {
    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        ResponseFuture {
            kind: Kind::Ready(Some(response)),
        }
    }

    pub(crate) fn miss(future: MissFuture<B, E>) -> Self {
        ResponseFuture {
            kind: Kind::Miss(future),
        }
    }
}

// Neither state is self-referential (the miss future is boxed), so no
// pin projection is needed.
impl<B: Body, E> Unpin for ResponseFuture<B, E> {}

impl<B: Body, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.kind {
            Kind::Ready(response) => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled after completion: stay pending rather than panic.
                None => Poll::Pending,
            },
            Kind::Miss(future) => future.as_mut().poll(cx),
        }
    }
}
