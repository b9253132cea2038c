//! Response futures of [`Forward`](super::Forward) and
//! [`ReverseProxy`](super::ReverseProxy): named types, so that the common
//! case (a request without a body) costs no boxed future per request.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Response, StatusCode, Uri};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::client::{SendError, Sending};
use super::forward::remove_hop_by_hop;
use super::service::{status_response, ToUpstream};
use super::upgrade::{self, Requested};
use super::{ProxyBody, ProxyError, ProxyResponseBody};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// Response future of [`Forward`](super::Forward).
    pub struct ForwardFuture {
        #[pin]
        kind: ForwardKind,
    }
}

pin_project! {
    #[project = ForwardProj]
    enum ForwardKind {
        // No request body: the response timeout runs from the start (the
        // transport keeps it).
        Plain { #[pin] fut: Sending },
        // A request body on its way, watched in phases; boxed, as it is
        // the rarer case and its state is large.
        Boxed { fut: BoxFuture<Result<Response<Incoming>, ProxyError>> },
    }
}

impl ForwardFuture {
    pub(super) fn plain(fut: Sending) -> Self {
        ForwardFuture {
            kind: ForwardKind::Plain { fut },
        }
    }

    pub(super) fn boxed<F>(fut: F) -> Self
    where
        F: Future<Output = Result<Response<Incoming>, ProxyError>> + Send + 'static,
    {
        ForwardFuture {
            kind: ForwardKind::Boxed { fut: Box::pin(fut) },
        }
    }
}

impl fmt::Debug for ForwardFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ForwardKind::Plain { .. } => "plain",
            ForwardKind::Boxed { .. } => "with body",
        };
        f.debug_struct("ForwardFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl Future for ForwardFuture {
    type Output = Result<Response<Incoming>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            ForwardProj::Plain { fut } => fut.poll(cx).map_err(SendError::into_proxy_error),
            ForwardProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

type Answer = Result<Response<ProxyResponseBody>, Infallible>;

pin_project! {
    /// Response future of [`ReverseProxy`](super::ReverseProxy).
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        // Answered without an upstream (431, 400): taken once.
        Ready { res: Option<Response<ProxyResponseBody>> },
        // With the balancer; the client's upgrade (if it asked for one)
        // waits here for the upstream's 101.
        Forwarding {
            #[pin]
            fut: crate::balance::ResponseFuture<Uri, ToUpstream, ProxyBody>,
            upgrade: Option<Requested>,
            // How long a tunnel may idle.
            idle_timeout: Duration,
        },
        // A small request body is read whole first (to replay it on a
        // retry): boxed, on that path only.
        Boxed { fut: BoxFuture<Answer> },
    }
}

impl ResponseFuture {
    pub(super) fn ready(res: Response<ProxyResponseBody>) -> Self {
        ResponseFuture {
            state: State::Ready { res: Some(res) },
        }
    }

    pub(super) fn forwarding(
        fut: crate::balance::ResponseFuture<Uri, ToUpstream, ProxyBody>,
        upgrade: Option<Requested>,
        idle_timeout: Duration,
    ) -> Self {
        ResponseFuture {
            state: State::Forwarding {
                fut,
                upgrade,
                idle_timeout,
            },
        }
    }

    pub(super) fn boxed<F>(fut: F) -> Self
    where
        F: Future<Output = Answer> + Send + 'static,
    {
        ResponseFuture {
            state: State::Boxed { fut: Box::pin(fut) },
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Ready { .. } => "ready",
            State::Forwarding { .. } => "forwarding",
            State::Boxed { .. } => "reading the request body",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for ResponseFuture {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.project().state.project() {
            StateProj::Ready { res } => Poll::Ready(Ok(res
                .take()
                .expect("proxy ResponseFuture polled after completion"))),
            StateProj::Forwarding {
                fut,
                upgrade,
                idle_timeout,
            } => {
                let res = ready!(fut.poll(cx));
                Poll::Ready(Ok(relay(res, upgrade.take(), *idle_timeout)))
            }
            StateProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// The balancer's answer as the client gets it: errors as statuses, a 101
/// only for the upgrade the client asked for, hop-by-hop fields removed.
pub(super) fn relay(
    res: Result<Response<ProxyResponseBody>, ProxyError>,
    upgrade: Option<Requested>,
    idle_timeout: Duration,
) -> Response<ProxyResponseBody> {
    let res = match res {
        Ok(res) => res,
        Err(ProxyError::Timeout) => return status_response(StatusCode::GATEWAY_TIMEOUT),
        // The client's own body failed or stalled, as in the buffered
        // path (RFC 9110 §15.5.1, §15.5.9).
        Err(ProxyError::RequestBody(_)) => return status_response(StatusCode::BAD_REQUEST),
        Err(ProxyError::RequestBodyTimeout) => return status_response(StatusCode::REQUEST_TIMEOUT),
        // RFC 9110 §15.5.15.
        Err(ProxyError::TargetTooLong) => return status_response(StatusCode::URI_TOO_LONG),
        Err(_) => return status_response(StatusCode::BAD_GATEWAY),
    };
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Relayed only as the upgrade the client asked for; an
        // unrequested one is a 502 (RFC 9110 §7.8, §15.2.2).
        return upgrade::switch(res, upgrade, idle_timeout);
    }
    let (mut parts, body) = res.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body)
}
