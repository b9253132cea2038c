use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ResponseBody;
use super::endpoint::EndpointId;
use super::retry::Spare;
use super::service::{pick, Attempt, Connect, Inner};
use super::upstream::Upstream;

pin_project! {
    /// Response future of [`Balance`](super::Balance).
    pub struct ResponseFuture<T, C, B>
    where
        C: Connect<T, B>,
    {
        #[pin]
        state: State<C::Service, <C::Service as Service<Request<B>>>::Future, B>,
        // The attempt in progress: its in-flight count is released when the
        // attempt fails, or moves into the response body.
        attempt: Option<Attempt>,
        // What a retry needs: the set, the connector and the settings, the
        // request's key, a replayable copy of the request, and the
        // endpoints that failed it (allocated on the first failure only).
        inner: Arc<Inner<T, C>>,
        key: Option<u64>,
        // Inline, not boxed: one allocation less per request (the future
        // lives in its caller's state and is not moved after the first poll).
        spare: Option<Spare<B>>,
        tried: Vec<EndpointId>,
        // The caller's start of the response's extension map: `Upstream`
        // goes in, then it is merged into the endpoint's (moved whole when
        // the endpoint's is empty, as hyper's client responses are).
        extensions: http::Extensions,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, B> {
        // Waiting for the chosen endpoint's service to be ready.
        Ready { svc: S, req: Option<Request<B>> },
        Calling { #[pin] future: F },
        Unavailable,
        Done,
    }
}

impl<T, C, B> std::fmt::Debug for ResponseFuture<T, C, B>
where
    C: Connect<T, B>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("tried", &self.tried)
            .finish_non_exhaustive()
    }
}

impl<T, C, B> ResponseFuture<T, C, B>
where
    C: Connect<T, B>,
{
    pub(crate) fn start(
        inner: Arc<Inner<T, C>>,
        key: Option<u64>,
        may_retry: bool,
        req: Request<B>,
        extensions: http::Extensions,
    ) -> Self
    where
        B: 'static,
    {
        let mut spare = None;
        let spare_slot = may_retry.then_some(&mut spare);
        let (state, attempt) = match pick(&inner, key, &[], req, spare_slot) {
            Ok((attempt, svc, req)) => (
                State::Ready {
                    svc,
                    req: Some(req),
                },
                Some(attempt),
            ),
            Err(_) => {
                crate::balance::trace!("no endpoint available: 503");
                (State::Unavailable, None)
            }
        };
        ResponseFuture {
            state,
            attempt,
            inner,
            key,
            spare,
            tried: Vec::new(),
            extensions,
        }
    }
}

impl<T, C, B, ResB> Future for ResponseFuture<T, C, B>
where
    C: Connect<T, B>,
    C::Service: Service<Request<B>, Response = Response<ResB>>,
    ResB: http_body::Body,
    B: 'static,
{
    type Output = Result<Response<ResponseBody<ResB>>, <C::Service as Service<Request<B>>>::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let error = match this.state.as_mut().project() {
                StateProj::Ready { svc, req } => match svc.poll_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        let Some(req) = req.take() else {
                            // Only reachable if polled after a panic.
                            this.state.set(State::Done);
                            continue;
                        };
                        let future = svc.call(req);
                        this.state.set(State::Calling { future });
                        continue;
                    }
                    Poll::Ready(Err(e)) => e,
                },
                StateProj::Calling { future } => match future.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(res)) => {
                        this.state.set(State::Done);
                        let Some(mut attempt) = this.attempt.take() else {
                            // Unreachable: an attempt exists while calling.
                            return Poll::Ready(Ok(res.map(|_| ResponseBody::unavailable())));
                        };
                        let shared = &*this.inner.endpoints.shared;
                        attempt.answered(this.tried.len() + 1, Some(res.status()));
                        let mut res = res;
                        let mut extensions = std::mem::take(this.extensions);
                        extensions.insert(Upstream::of(attempt.state()));
                        res.extensions_mut().extend(extensions);
                        let ok = !(shared.health.server_errors && res.status().is_server_error());
                        let in_flight = attempt.finish(ok, shared);
                        return Poll::Ready(Ok(res.map(|b| ResponseBody::new(b, in_flight))));
                    }
                    Poll::Ready(Err(e)) => e,
                },
                StateProj::Unavailable => {
                    this.state.set(State::Done);
                    let mut res = Response::new(ResponseBody::unavailable());
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Poll::Ready(Ok(res));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            // Not the endpoint's fault (the client's own body failed): no
            // verdict on the endpoint, and no retry, since what failed
            // would fail the same way anywhere. Dropping the attempt
            // releases its in-flight count and gives back a trial.
            if !this.inner.connect.is_endpoint_failure(&error) {
                drop(this.attempt.take());
                this.state.set(State::Done);
                return Poll::Ready(Err(error));
            }
            // The attempt failed before response headers.
            if let Some(mut attempt) = this.attempt.take() {
                attempt.answered(this.tried.len() + 1, None);
                this.tried.push(attempt.state().id);
                drop(attempt.finish(false, &this.inner.endpoints.shared));
            }
            let retries = &this.inner.config.retries;
            let budget_ok = this.spare.is_some()
                && (this.tried.len() as u64) <= u64::from(retries.max)
                && retries.withdraw();
            let next = if budget_ok {
                // The last allowed retry sends the spare itself.
                let last = this.tried.len() as u64 == u64::from(retries.max);
                let req = if last {
                    this.spare.take().map(Spare::into_request)
                } else {
                    this.spare
                        .as_ref()
                        .and_then(|s| s.request(&this.inner.config.retries))
                };
                req.and_then(|req| pick(this.inner, *this.key, this.tried, req, None).ok())
            } else {
                None
            };
            match next {
                Some((attempt, svc, req)) => {
                    crate::balance::trace!(endpoint = %attempt.state().name, "retrying on another endpoint");
                    crate::metrics::retried();
                    *this.attempt = Some(attempt);
                    this.state.set(State::Ready {
                        svc,
                        req: Some(req),
                    });
                }
                None => {
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}
