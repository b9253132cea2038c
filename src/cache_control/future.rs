use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use super::layer::{Config, PathMatches};
use crate::etag::{not_modified_parts, BodyHasher, Condition, Conditionals, ETagMode};

/// What the service learned from the request before handing it on: the
/// request itself is consumed by the inner service.
#[derive(Debug)]
pub(crate) struct RequestContext {
    pub(crate) is_get: bool,
    pub(crate) conditionals: Option<Conditionals>,
    pub(crate) paths: PathMatches,
    pub(crate) config: Arc<Config>,
}

pin_project! {
    /// Response future of [`CacheControl`](super::CacheControl).
    pub struct ResponseFuture<F, B: Body> {
        #[pin]
        state: State<F, B>,
        ctx: RequestContext,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Inner { #[pin] future: F },
        Hashing {
            // The response head, held until the ETag is known.
            parts: Option<Parts>,
            // Boxed so that it can move into the response body afterwards,
            // whether or not the body type is `Unpin`.
            body: Option<Pin<Box<B>>>,
            chunks: VecDeque<Bytes>,
            len: usize,
            hasher: BodyHasher,
            weak: bool,
            trailers: Option<HeaderMap>,
        },
        Done,
    }
}

impl<F, B: Body> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B: Body> ResponseFuture<F, B> {
    pub(crate) fn new(future: F, ctx: RequestContext) -> Self {
        ResponseFuture {
            state: State::Inner { future },
            ctx,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            match this.state.project() {
                StateProj::Inner { future } => {
                    let (mut parts, body) = ready!(future.poll(cx))?.into_parts();
                    let ctx = &*this.ctx;
                    let mode = ctx
                        .config
                        .apply(&ctx.paths, parts.status, &mut parts.headers);
                    let weak = match mode {
                        ETagMode::Strong => false,
                        ETagMode::Off => {
                            return Poll::Ready(Ok(finish(
                                ctx,
                                parts,
                                ResponseBody::passthrough(body),
                            )))
                        }
                        _ => true,
                    };
                    if !should_hash(ctx, &parts, &body) {
                        return Poll::Ready(Ok(finish(
                            ctx,
                            parts,
                            ResponseBody::passthrough(body),
                        )));
                    }
                    self.as_mut().project().state.set(State::Hashing {
                        parts: Some(parts),
                        body: Some(Box::pin(body)),
                        chunks: VecDeque::new(),
                        len: 0,
                        hasher: BodyHasher::new(),
                        weak,
                        trailers: None,
                    });
                }
                StateProj::Hashing {
                    parts,
                    body,
                    chunks,
                    len,
                    hasher,
                    weak,
                    trailers,
                } => {
                    let cap = this.ctx.config.etag_max_body;
                    let Some(inner) = body.as_mut() else {
                        return Poll::Pending;
                    };
                    let outcome = loop {
                        match ready!(inner.as_mut().poll_frame(cx)) {
                            None => break Outcome::Complete,
                            Some(Ok(frame)) => match frame.into_data() {
                                Ok(data) => {
                                    *len = len.saturating_add(data.len());
                                    if *len > cap {
                                        chunks.push_back(data);
                                        break Outcome::TooLong;
                                    }
                                    hasher.update(&data);
                                    if !data.is_empty() {
                                        chunks.push_back(data);
                                    }
                                }
                                Err(frame) => {
                                    if let Ok(t) = frame.into_trailers() {
                                        *trailers = Some(t);
                                    }
                                }
                            },
                            Some(Err(e)) => break Outcome::Failed(e),
                        }
                    };
                    let Some(mut head) = parts.take() else {
                        return Poll::Pending;
                    };
                    let chunks = std::mem::take(chunks);
                    let trailers = trailers.take();
                    let body = match outcome {
                        Outcome::Complete => {
                            let hasher = std::mem::take(hasher);
                            head.headers
                                .insert(header::ETAG, hasher.finish(*weak).to_header_value());
                            ResponseBody::replay(chunks, trailers, None, None)
                        }
                        // Over the cap: stream the rest through untouched,
                        // without an ETag.
                        Outcome::TooLong => ResponseBody::replay(chunks, None, None, body.take()),
                        // Passed on to the client after what was read; no
                        // ETag for a body that never completed.
                        Outcome::Failed(e) => ResponseBody::replay(chunks, None, Some(e), None),
                    };
                    let response = finish(this.ctx, head, body);
                    self.as_mut().project().state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => return Poll::Pending,
            }
        }
    }
}

enum Outcome<E> {
    Complete,
    TooLong,
    Failed(E),
}

fn should_hash<B: Body>(ctx: &RequestContext, parts: &Parts, body: &B) -> bool {
    if !ctx.is_get || parts.status != StatusCode::OK || parts.headers.contains_key(header::ETAG) {
        return false;
    }
    let cap = ctx.config.etag_max_body as u64;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    declared.map_or(true, |n| n <= cap) && body.size_hint().lower() <= cap
}

/// Answers a satisfied conditional request with 304 (RFC 9110 §13.2.2).
fn finish<B: Body>(
    ctx: &RequestContext,
    parts: Parts,
    body: ResponseBody<B>,
) -> Response<ResponseBody<B>> {
    if let Some(cond) = &ctx.conditionals {
        if cond.evaluate(parts.status, &parts.headers) == Condition::NotModified {
            return Response::from_parts(not_modified_parts(parts), ResponseBody::empty());
        }
    }
    Response::from_parts(parts, body)
}
