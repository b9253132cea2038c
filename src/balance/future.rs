use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ResponseBody;
use super::endpoint::{EndpointId, Shared};
use super::retry::ReplayBody;
use super::service::{copy_request, pick, Attempt, Config, Connect};

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
        // What a retry needs: the set, the connector, the settings, the
        // request's key and a replayable copy of the request.
        shared: Arc<Shared<T>>,
        connect: Arc<C>,
        config: Arc<Config>,
        key: Option<u64>,
        spare: Option<Request<B>>,
        tried: Vec<EndpointId>,
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
        shared: Arc<Shared<T>>,
        connect: Arc<C>,
        config: Arc<Config>,
        key: Option<u64>,
        spare: Option<Request<B>>,
        req: Request<B>,
    ) -> Self {
        let (state, attempt, tried) = match pick(&shared, &*connect, key, &[], req) {
            Ok((attempt, svc, req)) => {
                let id = attempt.state().id;
                (
                    State::Ready {
                        svc,
                        req: Some(req),
                    },
                    Some(attempt),
                    vec![id],
                )
            }
            Err(_) => {
                crate::balance::trace!("no endpoint available: 503");
                (State::Unavailable, None, Vec::new())
            }
        };
        ResponseFuture {
            state,
            attempt,
            shared,
            connect,
            config,
            key,
            // No endpoint at all: nothing to retry on either.
            spare: if tried.is_empty() { None } else { spare },
            tried,
        }
    }
}

impl<T, C, B, ResB> Future for ResponseFuture<T, C, B>
where
    C: Connect<T, B>,
    C::Service: Service<Request<B>, Response = Response<ResB>>,
    B: ReplayBody,
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
                        let Some(attempt) = this.attempt.take() else {
                            // Unreachable: an attempt exists while calling.
                            return Poll::Ready(Ok(res.map(|_| ResponseBody::unavailable())));
                        };
                        let ok =
                            !(this.shared.health.server_errors && res.status().is_server_error());
                        let in_flight = attempt.finish(ok, this.shared);
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
            // The attempt failed before response headers.
            if let Some(attempt) = this.attempt.take() {
                drop(attempt.finish(false, this.shared));
            }
            let retries = &this.config.retries;
            let budget_ok = this.spare.is_some()
                && (this.tried.len() as u64) <= u64::from(retries.max)
                && retries.withdraw();
            let next = if budget_ok {
                // The last allowed retry sends the spare itself.
                let last = this.tried.len() as u64 == u64::from(retries.max);
                let req = if last {
                    this.spare.take()
                } else {
                    this.spare.as_ref().and_then(copy_request)
                };
                req.and_then(|req| {
                    pick(this.shared, &**this.connect, *this.key, this.tried, req).ok()
                })
            } else {
                None
            };
            match next {
                Some((attempt, svc, req)) => {
                    crate::balance::trace!(endpoint = %attempt.state().name, "retrying on another endpoint");
                    this.tried.push(attempt.state().id);
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
